"""Anthropic Messages as one `WireProtocol`: its request and reply readers, joined."""

from __future__ import annotations

from addon.protocols.anthropic_messages.reply import AnthropicMessagesReplies
from addon.protocols.anthropic_messages.request import AnthropicMessagesRequests


class AnthropicMessages(AnthropicMessagesRequests, AnthropicMessagesReplies):
    name = "anthropic_messages"
    provider = "anthropic"
    credential_header = "x-api-key"
