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

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}{self.path}"


# What each provider speaks natively; any other caller protocol is translated
# to the provider's own protocol.
NATIVE_PROTOCOLS: dict[str, tuple[str, ...]] = {
    "openai": ("openai_chat", "openai_responses"),
    "openai_chat": ("openai_chat",),
    "anthropic": ("anthropic_messages",),
    "gemini": ("gemini",),
}
PROVIDER_PROTOCOL = {
    "openai": "openai_chat",
    "openai_chat": "openai_chat",
    "anthropic": "anthropic_messages",
    "gemini": "gemini",
}
TRANSLATABLE = ("openai_chat", "openai_responses", "anthropic_messages", "gemini")


def upstream_protocol(provider: str, caller: str) -> str:
    """The wire protocol a call of protocol `caller` is sent in to `provider`."""
    return caller if caller in NATIVE_PROTOCOLS[provider] else PROVIDER_PROTOCOL[provider]


def serves(route: Route, caller: str, *, translate: bool = True) -> bool:
    """Whether `route` can carry a call of protocol `caller`.

    `translate` False (a WebSocket, whose messages llmgate does not translate)
    admits only routes that speak the caller's protocol natively.
    """
    if route.callers is not None and caller not in route.callers:
        return False
    if caller in NATIVE_PROTOCOLS[route.provider]:
        return True
    return translate and caller in TRANSLATABLE


def served_callers(route: Route) -> list[tuple[str, str]]:
    """(caller protocol, upstream protocol) for every caller the route serves."""
    return [(c, upstream_protocol(route.provider, c)) for c in TRANSLATABLE if serves(route, c)]


def match_route(
    routes: list[Route], model: str, caller: str, *, translate: bool = True
) -> Route | None:
    """The first route whose pattern matches and that can carry the caller's protocol."""
    for route in routes:
        if route.matches(model) and serves(route, caller, translate=translate):
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
