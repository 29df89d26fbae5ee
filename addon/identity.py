"""Who is calling."""

from __future__ import annotations

from typing import Any

DEFAULT_USER = "anonymous"


def identify(metadata: dict[str, Any], default_user: str | None = DEFAULT_USER) -> str | None:
    """The proxy-auth user name when the caller authenticated to the proxy, else the default."""
    auth = metadata.get("proxyauth")
    if auth and auth[0]:
        return str(auth[0])
    return default_user
