"""Route table matching and the upstream URL a route sends a call to."""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from addon.config import Route

# Callers reach providers under vendor prefixes (/openai/v1/..., /api/v1/...);
# the part from the version segment on is what every provider understands.
_VERSION_SEGMENT = re.compile(r"/v1(?:beta1?|alpha)?/")


@dataclass(frozen=True)
class Upstream:
    scheme: str
    host: str
    port: int
    path: str


def match_route(routes: list[Route], model: str, provider: str) -> Route | None:
    """The first route whose pattern matches and whose provider speaks the caller's protocol.

    llmgate does not translate between wire protocols, so a route for another
    provider can never serve the call and is skipped rather than chosen.
    """
    for route in routes:
        if route.provider == provider and route.matches(model):
            return route
    return None


def upstream_for(route: Route, caller_path: str) -> Upstream:
    """Join the route's base URL with the caller's path from its version segment on."""
    base = urlsplit(route.endpoint)
    bare, sep, query = caller_path.partition("?")
    found = _VERSION_SEGMENT.search(bare)
    tail = bare[found.start() :] if found else bare
    path = base.path.rstrip("/") + tail + (sep + query if sep else "")
    port = base.port or (443 if base.scheme == "https" else 80)
    return Upstream(scheme=base.scheme, host=base.hostname or "", port=port, path=path)
