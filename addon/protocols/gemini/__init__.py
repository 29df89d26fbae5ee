"""Google Gemini `generateContent` / `streamGenerateContent`, direct and on Vertex AI.

The model lives in the URL, not the body. Bodies may spell fields in camelCase or
in the protobuf snake_case (the Google SDKs and Vertex send either), so every
lookup goes through `_get`. A stream is SSE with `alt=sse`, else one JSON array
whose elements arrive one by one; either way each event is one response object.

Reading (the `WireProtocol`): `request` and `reply`, joined in `protocol`; `content`
(Gemini parts) and `fields` (camelCase or snake_case) are what both read. Translating
(the codec, loaded by `addon.translate.registry` on first use, so not from here):
`codec`, `stream_codec`, and `pieces`, what both share.
"""

from addon.protocols.gemini.protocol import Gemini
from addon.protocols.gemini.reply import gemini_finish, gemini_usage

__all__ = ["Gemini", "gemini_finish", "gemini_usage"]
