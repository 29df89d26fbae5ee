"""The codec of each wire protocol, by name."""

from __future__ import annotations

import functools

from addon.translate.codec import Codec


@functools.cache
def _codecs() -> dict[str, Codec]:
    # Imported on first use: a process that never translates never loads them.
    from addon.translate.anthropic_messages import AnthropicCodec
    from addon.translate.gemini import GeminiCodec
    from addon.translate.openai_chat import OpenAIChatCodec
    from addon.translate.openai_responses import OpenAIResponsesCodec

    codecs: list[Codec] = [
        OpenAIChatCodec(),
        OpenAIResponsesCodec(),
        AnthropicCodec(),
        GeminiCodec(),
    ]
    return {codec.protocol: codec for codec in codecs}


def codec(protocol: str) -> Codec:
    return _codecs()[protocol]
