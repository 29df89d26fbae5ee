"""OpenAI Responses (`POST /v1/responses`).

The input is a list of typed items rather than chat messages, and a stream is a
sequence of named events that ends with `response.completed` (or `.incomplete`
/ `.failed`) carrying the whole response, usage included.

Reading (the `WireProtocol`): `request` and `reply`, joined in `protocol`; `content`
is what both read. Translating (the codec, loaded by `addon.translate.registry` on
first use, so not from here): `codec`, `stream_codec`, and `pieces`, what both share.
"""

from addon.protocols.openai_responses.protocol import OpenAIResponses
from addon.protocols.openai_responses.reply import responses_usage

__all__ = ["OpenAIResponses", "responses_usage"]
