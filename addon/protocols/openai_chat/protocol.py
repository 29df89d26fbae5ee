"""OpenAI Chat Completions as one `WireProtocol`: its request and reply readers, joined."""

from __future__ import annotations

from addon.protocols.openai_chat.reply import OpenAIChatReplies
from addon.protocols.openai_chat.request import OpenAIChatRequests


class OpenAIChat(OpenAIChatRequests, OpenAIChatReplies):
    name = "openai_chat"
    provider = "openai"
    credential_header = "authorization"
