"""Gemini as one `WireProtocol`: its request and reply readers, joined."""

from __future__ import annotations

from addon.protocols.gemini.reply import GeminiReplies
from addon.protocols.gemini.request import GeminiRequests


class Gemini(GeminiRequests, GeminiReplies):
    name = "gemini"
    provider = "gemini"
    credential_header = "x-goog-api-key"
