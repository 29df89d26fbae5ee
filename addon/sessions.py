"""Which agent session a call belongs to, and which client made it.

A session id is taken only from a signal the client sent; a call with none has
no session, never a made-up one. The signals, strongest first:

1. header `x-llmgate-session`: any client (stripped before the upstream);
2. header `x-claude-code-session-id`: Claude Code;
3. headers `session-id` / `session_id`, then `thread-id` / `conversation_id`: Codex;
4. body `metadata.user_id` holding `session_<uuid>` or `{"session_id": ...}`: Claude Code;
5. body `client_metadata.session_id`: Codex over the Responses API;
6. body `metadata.session_id` / `conversation_id` / `thread_id`: OpenAI callers.

OpenAI's `user` field is not a session: it names an end user, who may hold
many conversations. `prompt_cache_key` is not one either: it is a cache hint.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from addon.ledger.store import storable_text

SESSION_HEADER = "x-llmgate-session"
_HEADER_SIGNALS = (
    SESSION_HEADER,
    "x-claude-code-session-id",
    "session-id",
    "session_id",
    "thread-id",
    "conversation_id",
    "conversation-id",
)
_METADATA_KEYS = ("session_id", "conversation_id", "thread_id")
# Claude Code's metadata.user_id: "user_<hash>_account_<uuid>_session_<uuid>".
_EMBEDDED_SESSION = re.compile(r"session_([0-9A-Za-z-]{8,64})")
# The first product token of a user agent: "claude-cli/2.1.332", "OpenAI/Python 2.3.0".
_PRODUCT = re.compile(r"[A-Za-z][\w.+-]*/[\w.+-]+(?: [\w.+-]+/?[\w.+-]*)?")
_MAX_ID = 128


@dataclass(frozen=True)
class Attribution:
    session_id: str | None
    client: str | None


def attribute(headers: Iterable[tuple[bytes, bytes]], body: Any) -> Attribution:
    """The session and client of one call, from its headers and parsed body."""
    named = {
        name.decode("latin-1").lower(): value.decode("latin-1", "replace")
        for name, value in headers
    }
    return Attribution(_session(named, body), client_of(named.get("user-agent")))


def client_of(user_agent: str | None) -> str | None:
    """The client and its version, as its user agent names it first.

    OpenAI's and Anthropic's SDKs say `OpenAI/Python 2.3.0` (two words), most
    others `name/version`; both are kept whole.
    """
    if not user_agent:
        return None
    found = _PRODUCT.match(user_agent.strip())
    if found is None:
        return _clean(user_agent.split(" ", 1)[0])
    product = found.group(0)
    if " " in product and "/" in product.split(" ", 1)[1]:
        product = product.split(" ", 1)[0]  # "codex_exec/0.171.0 (Debian..." keeps one token
    return _clean(product)


def _session(headers: dict[str, str], body: Any) -> str | None:
    for name in _HEADER_SIGNALS:
        value = headers.get(name)
        if value and value.strip():
            return _clean(value.strip())
    if not isinstance(body, dict):
        return None
    metadata = body.get("metadata")
    if isinstance(metadata, dict):
        embedded = _from_user_id(metadata.get("user_id"))
        if embedded:
            return embedded
    for holder in (body.get("client_metadata"), metadata):
        if isinstance(holder, dict):
            for key in _METADATA_KEYS:
                value = holder.get(key)
                if isinstance(value, str) and value.strip():
                    return _clean(value.strip())
    return None


def _from_user_id(user_id: Any) -> str | None:
    if not isinstance(user_id, str) or not user_id:
        return None
    if user_id.startswith("{"):
        try:
            parsed = json.loads(user_id)
        except ValueError:
            parsed = None
        if isinstance(parsed, dict) and isinstance(parsed.get("session_id"), str):
            return _clean(parsed["session_id"]) or None
    found = _EMBEDDED_SESSION.search(user_id)
    return _clean(found.group(1)) if found else None


def _clean(value: str) -> str | None:
    text = storable_text(value)[:_MAX_ID]
    return text or None
