"""(host, path) -> wire protocol.

Detection goes by path, because a route may send a protocol to any host (a
local emulator, an OpenAI-compatible vendor under a path prefix). The host only
decides whether llmgate intercepts the connection at all.
"""

from __future__ import annotations

import re

# Gemini puts the model in the path; Vertex AI nests it under a project.
_GEMINI = re.compile(
    r"/v1(?:beta1?|alpha|)?/(?:projects/[^/]+/locations/[^/]+/publishers/google/)?"
    r"models/[^/:]+:(?:generateContent|streamGenerateContent)$"
)


def detect_protocol(method: str, path: str) -> str:
    """Return the protocol name for a request, or "other" for anything llmgate does not parse."""
    if method != "POST":
        return "other"
    bare = path.split("?", 1)[0].rstrip("/")
    if bare.endswith("/chat/completions"):
        return "openai_chat"
    if bare.endswith("/v1/responses"):
        return "openai_responses"
    if bare.endswith("/v1/messages"):
        return "anthropic_messages"
    if _GEMINI.search(bare):
        return "gemini"
    return "other"


_PROVIDER_PROTOCOL = {
    "api.openai.com": "openai_chat",
    "api.anthropic.com": "anthropic_messages",
    "generativelanguage.googleapis.com": "gemini",
    "aiplatform.googleapis.com": "gemini",
}


def error_protocol(protocol: str, host: str, path: str) -> str:
    """The wire format to answer a refusal in, for any call, parsed or not.

    An endpoint llmgate does not parse still belongs to a provider whose SDK reads
    that provider's error shape: known hosts say which, else the path does.
    """
    if protocol != "other":
        return protocol
    known = _PROVIDER_PROTOCOL.get(host) or _PROVIDER_PROTOCOL.get(host.rsplit(":", 1)[0])
    if known:
        return known
    bare = path.split("?", 1)[0]
    if bare.startswith("/v1/messages") or "/v1/messages/" in bare:
        return "anthropic_messages"
    if "/v1beta/" in bare or ":generateContent" in bare or ":streamGenerateContent" in bare:
        return "gemini"
    return "openai_chat"
