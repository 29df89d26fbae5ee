"""The `safety:` section of the policy files: actions per category or detector.

Strict on purpose: a misspelt category (`secret:` for `secrets:`) or detector
would otherwise leave what it meant to tighten at its default, with no error.
"""

from __future__ import annotations

import difflib
import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from addon.safety.detectors import CATEGORIES
from addon.schema import Problem, Strict, problems_error

SafetyAction = Literal["log", "redact", "block"]
# The default: block secrets in requests, redact card numbers, log the rest.
DEFAULT_REQUEST_ACTIONS: dict[str, SafetyAction] = {
    "secrets": "block", "credit_card": "redact", "pii": "log", "jailbreak": "log", "custom": "log",
}  # fmt: skip
# Replies are logged by default: a rewriting scanner must hold back a little text,
# and the default should not slow any stream down.
DEFAULT_RESPONSE_ACTIONS: dict[str, SafetyAction] = {
    "secrets": "log", "pii": "log", "jailbreak": "log", "custom": "log",
}  # fmt: skip
SAFETY_CATEGORIES = (*CATEGORIES, "custom")
DETECTOR_CATEGORY = {name: cat for cat, names in CATEGORIES.items() for name in names}


def merge_actions(
    defaults: dict[str, SafetyAction], overrides: dict[str, SafetyAction]
) -> dict[str, SafetyAction]:
    """A phase's map written by the user, over the defaults.

    A category the user sets also drops the defaults' entries for its detectors:
    `pii: block` must block card numbers too, not leave the default
    `credit_card: redact` in force.
    """
    merged = {k: v for k, v in defaults.items() if DETECTOR_CATEGORY.get(k) not in overrides}
    merged.update(overrides)
    return merged


class CustomPattern(Strict):
    name: str
    regex: str

    @field_validator("regex")
    @classmethod
    def _compiles(cls, value: str) -> str:
        try:
            re.compile(value)
        except re.error as exc:
            # re.error is no ValueError: pydantic would let it escape as a traceback.
            raise ValueError(f"not a valid regular expression: {exc}") from None
        return value


class SafetySettings(Strict):
    """Actions by category or detector name (a detector's action beats its category's).

    A phase's map is merged over that phase's default map (`merge_actions`), so
    `{pii: redact}` keeps `secrets: block`. Its keys are the categories, the
    built-in detector names and the custom patterns' names; any other key is an
    error, because a misspelt one would leave its category at a weaker action.
    """

    enabled: bool = True
    request: dict[str, SafetyAction] = Field(default_factory=lambda: dict(DEFAULT_REQUEST_ACTIONS))
    response: dict[str, SafetyAction] = Field(
        default_factory=lambda: dict(DEFAULT_RESPONSE_ACTIONS)
    )
    custom_patterns: list[CustomPattern] = Field(default_factory=list)
    jailbreak_phrases: list[str] | None = None

    @field_validator("request")
    @classmethod
    def _request_over_defaults(cls, value: dict[str, SafetyAction]) -> dict[str, SafetyAction]:
        return merge_actions(DEFAULT_REQUEST_ACTIONS, value)

    @field_validator("response")
    @classmethod
    def _response_over_defaults(cls, value: dict[str, SafetyAction]) -> dict[str, SafetyAction]:
        return merge_actions(DEFAULT_RESPONSE_ACTIONS, value)

    @field_validator("jailbreak_phrases")
    @classmethod
    def _phrases_have_words(cls, value: list[str] | None) -> list[str] | None:
        empty = [i for i, phrase in enumerate(value or []) if not phrase.split()]
        if empty:
            raise problems_error(
                [Problem((i,), "a phrase must have at least one word") for i in empty]
            )
        return value

    @model_validator(mode="after")
    def _names_are_known(self) -> SafetySettings:
        problems: list[Problem] = []
        builtin = {*SAFETY_CATEGORIES, *DETECTOR_CATEGORY}
        names = [p.name for p in self.custom_patterns]
        for i, name in enumerate(names):
            if name in builtin:
                # An action keyed by it would also apply to the built-in one.
                problems.append(
                    Problem(
                        ("custom_patterns", i, "name"),
                        f"{name!r} is a built-in name; choose another",
                    )
                )
            elif name in names[:i]:
                problems.append(Problem(("custom_patterns", i, "name"), f"{name!r} is used twice"))
        known = builtin | set(names)
        for phase in ("request", "response"):
            for key in getattr(self, phase):
                if key not in known:
                    problems.append(Problem((phase, key), _unknown_safety_key(key, known, names)))
        if problems:
            raise problems_error(problems)
        return self

    def rewrites_responses(self) -> bool:
        """Whether a reply may need editing (so streams must pass through the scanner)."""
        return any(action != "log" for action in self.response.values())

    def action(self, phase: str, category: str, detector: str) -> SafetyAction:
        actions = self.request if phase == "request" else self.response
        return actions.get(detector) or actions.get(category) or "log"


def _unknown_safety_key(key: str, known: set[str], custom: list[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return (
        f"unknown safety category or detector {key!r}{hint}; categories: "
        f"{', '.join(SAFETY_CATEGORIES)}; detectors: {', '.join(DETECTOR_CATEGORY)}"
        + (f"; custom patterns: {', '.join(custom)}" if custom else "")
    )
