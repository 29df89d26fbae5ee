"""OpenAI Chat Completions (`POST .../chat/completions`).

Also spoken by OpenAI-compatible vendors (OpenRouter, Groq, vLLM, ...), so the
reader accepts their common extensions: `reasoning` / `reasoning_content` deltas
and an `event: error` in the middle of a 200 stream.

Reading (the `WireProtocol`): `request` and `reply`, joined in `protocol`; `content`
is what both read. Translating (the codec, loaded by `addon.translate.registry` on
first use, so not from here): `codec`, `stream_codec`, and `pieces`, what both share.
"""

from addon.protocols.openai_chat.protocol import OpenAIChat
from addon.protocols.openai_chat.reply import (
    chat_finish,
    chat_usage,
    first_choice,
    openai_error_body,
    openai_usage,
)

__all__ = ["OpenAIChat", "chat_finish", "chat_usage", "first_choice"]
__all__ += ["openai_error_body", "openai_usage"]
