"""The codec of each wire protocol, by name."""

from __future__ import annotations

import functools

from addon.protocols.codec import Codec


@functools.cache
def _codecs() -> dict[str, Codec]:
    # Imported on first use: a process that never translates never loads them.
    from addon.protocols.anthropic_messages.codec import AnthropicCodec
    from addon.protocols.gemini.codec import GeminiCodec
    from addon.protocols.openai_chat.codec import OpenAIChatCodec
    from addon.protocols.openai_responses.codec import OpenAIResponsesCodec

    codecs: list[Codec] = [
        OpenAIChatCodec(),
        OpenAIResponsesCodec(),
        AnthropicCodec(),
        GeminiCodec(),
    ]
    return {codec.protocol: codec for codec in codecs}


def codec(protocol: str) -> Codec:
    return _codecs()[protocol]
