"""Building blocks of the policy-file models: the strict base, errors with locations."""

from __future__ import annotations

from typing import NamedTuple

from pydantic import BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """A policy file is wrong; the message names the file, the entry and the field."""


class Strict(BaseModel):
    """Unknown keys are errors: a misspelt option must never be silently ignored."""

    model_config = ConfigDict(extra="forbid", frozen=True)


Loc = tuple[str | int, ...]


class Problem(NamedTuple):
    """One problem a validator found, at `loc` below the model it validates.

    A validator that finds several reports each where it is (and `see`, another
    entry it conflicts with); `config.load_config` names the file of each.
    """

    loc: Loc
    message: str
    see: Loc | None = None


def problems_error(problems: list[Problem]) -> PydanticCustomError:
    return PydanticCustomError(
        "config_problems", "{summary}", {"summary": problems[0].message, "problems": problems}
    )
