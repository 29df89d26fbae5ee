"""Wire protocols llmgate understands, by name."""

from __future__ import annotations

from addon.protocols.anthropic_messages import AnthropicMessages
from addon.protocols.base import StreamEvent, StreamState, WireProtocol
from addon.protocols.gemini import Gemini
from addon.protocols.openai_chat import OpenAIChat
from addon.protocols.openai_responses import OpenAIResponses

PROTOCOLS: dict[str, WireProtocol] = {
    p.name: p for p in (OpenAIChat(), OpenAIResponses(), AnthropicMessages(), Gemini())
}

__all__ = ["PROTOCOLS", "StreamEvent", "StreamState", "WireProtocol"]
