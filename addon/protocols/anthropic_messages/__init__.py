"""Anthropic Messages (`POST /v1/messages`).

Usage needs care here: Anthropic's `input_tokens` counts only uncached prompt
tokens, and with server-side compaction the top-level counts leave out the
compaction pass, which is reported in `usage.iterations` and billed all the same.

Reading (the `WireProtocol`): `request` and `reply`, joined in `protocol`; `content`
is what both read. Translating (the codec, loaded by `addon.translate.registry` on
first use, so not from here): `codec`, `stream_codec`, and `pieces`, what both share.
"""

from addon.protocols.anthropic_messages.content import NAME
from addon.protocols.anthropic_messages.protocol import AnthropicMessages
from addon.protocols.anthropic_messages.reply import anthropic_usage, finish_of

__all__ = ["anthropic_usage", "AnthropicMessages", "finish_of", "NAME"]
