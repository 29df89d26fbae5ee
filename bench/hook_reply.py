"""`mitmdump -s` script for the bench's `floor` case: every request is answered in the
request hook with the fake upstream's own chat completion, and nothing goes upstream.

This is the least any mitmproxy addon that answers from its request hook can cost, as
llmgate does for buffered calls (it exchanges them with the upstream itself, see
ARCHITECTURE.md, "Buffered calls skip the listener"): mitmproxy reads the request,
runs every addon's hooks and writes the reply, and the hook does nothing else.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from mitmproxy import http

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.upstream import _JSON_REPLY  # noqa: E402 - needs the path above

_HEADERS = ((b"content-type", b"application/json"), (b"content-length", b"%d" % len(_JSON_REPLY)))


class HookReply:
    def request(self, flow: http.HTTPFlow) -> None:
        now = time.time()
        flow.response = http.Response(
            b"HTTP/1.1", 200, b"OK", http.Headers(_HEADERS), _JSON_REPLY, None, now, now
        )


addons = [HookReply()]
