"""Applying the safety scanners to calls: where to look, what to do, what to store.

`addon.safety` finds things in text; this module knows calls. It scans every
prompt location (system, each message, tool calls and tool results) and each
reply, decides block / redact / log from the policy, edits bodies without
re-serialising them, and turns findings into `findings` rows that hold a masked
excerpt and an HMAC of the value, never the value itself.
"""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from addon.config import SafetyAction, SafetySettings
from addon.private_files import FILE_MODE, private_dir, tighten
from addon.protocols import jsonedit
from addon.protocols.canonical import CanonicalRequest, part_texts
from addon.safety.scanner import Finding, Scanner, value_hmac

TOKEN = "[REDACTED:{category}]"


@dataclass(frozen=True)
class Located:
    finding: Finding
    location: str
    action: SafetyAction


@dataclass
class Screening:
    items: list[Located] = field(default_factory=list)

    @property
    def blocking(self) -> Located | None:
        return next((i for i in self.items if i.action == "block"), None)

    def values(self, *actions: SafetyAction) -> dict[str, str]:
        """Found value -> its redaction token, for the findings with these actions (all if none)."""
        return {
            i.finding.value: TOKEN.format(category=i.finding.category)
            for i in self.items
            if not actions or i.action in actions
        }

    def block_message(self, phase: str) -> str:
        hit = self.blocking
        assert hit is not None
        what = f"{hit.finding.category} ({hit.finding.detector})"
        return f"llmgate blocked this {phase}: it contains {what} in {hit.location}"


def build_scanner(settings: SafetySettings) -> Scanner:
    return Scanner(
        [(p.name, p.regex) for p in settings.custom_patterns],
        settings.jailbreak_phrases,
    )


def request_locations(request: CanonicalRequest) -> list[tuple[str, str]]:
    """(location, text) for every place a prompt can carry text."""
    out: list[tuple[str, str]] = []
    if request.system:
        out.append(("system", request.system))
    for index, message in enumerate(request.messages):
        for text in part_texts(message.content):
            if text:
                out.append((f"messages[{index}] ({message.role})", text))
    return out


def screen(
    scanner: Scanner, settings: SafetySettings, phase: str, locations: list[tuple[str, str]]
) -> Screening:
    result = Screening()
    for location, text in locations:
        for finding in scanner.scan(text):
            action = settings.action(phase, finding.category, finding.detector)
            result.items.append(Located(finding, location, action))
    return result


def redact_json(raw: bytes, values: dict[str, str]) -> bytes:
    """Replace each value inside a JSON document's strings, leaving every other byte alone.

    Values are looked up in their JSON-escaped spellings. A body that spells them
    some other way (say with \\u escapes) falls back to editing the parsed JSON and
    re-serialising only the top-level keys that changed.
    """
    if not values:
        return raw
    text = raw.decode("utf-8", errors="surrogateescape")
    for value, token in values.items():
        for spelling in {json.dumps(value, ensure_ascii=False)[1:-1], json.dumps(value)[1:-1]}:
            text = text.replace(spelling, token)
    edited = text.encode("utf-8", errors="surrogateescape")
    try:
        document = json.loads(edited)
    except (ValueError, RecursionError):
        return edited
    if not any(value in json.dumps(document, ensure_ascii=False) for value in values):
        return edited
    if not isinstance(document, dict):
        return json.dumps(_replace_strings(document, values)).encode()
    for key, sub in document.items():
        replaced = _replace_strings(sub, values)
        if replaced != sub:
            edited = jsonedit.set_top_level(edited, key, replaced)
    return edited


def _replace_strings(node: Any, values: dict[str, str]) -> Any:
    if isinstance(node, str):
        for value, token in values.items():
            node = node.replace(value, token)
        return node
    if isinstance(node, list):
        return [_replace_strings(item, values) for item in node]
    if isinstance(node, dict):
        return {k: _replace_strings(v, values) for k, v in node.items()}
    return node


def finding_rows(
    request_id: str, phase: str, items: list[Located], hmac_key: bytes
) -> list[dict[str, Any]]:
    now = time.time()
    return [
        {
            "request_id": request_id,
            "phase": phase,
            "location": item.location,
            "category": item.finding.category,
            "detector": item.finding.detector,
            "action": item.action,
            "excerpt": item.finding.masked(),
            "value_hmac": value_hmac(hmac_key, item.finding.value),
            "created_at": now,
        }
        for item in items
    ]


def load_hmac_key(path: Path) -> bytes:
    """The local HMAC key, made on first run; kept beside the ledger, not in it.

    A key stored in the database would let anyone holding the file test guesses
    of low-entropy values (an SSN, a card number) against the stored HMACs.
    """
    private_dir(path.parent)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        # Made earlier, or by another llmgate process starting at the same moment.
        tighten(path)
        for _ in range(50):
            text = path.read_text().strip()
            if len(text) == 64:
                return bytes.fromhex(text)
            time.sleep(0.01)
        raise ValueError(f"{path}: not an llmgate HMAC key; remove it to make a new one") from None
    key = secrets.token_bytes(32)
    try:
        os.write(descriptor, key.hex().encode())
    finally:
        os.close(descriptor)
    return key
