"""Who is calling: a virtual key, proxy auth, the client address, or the default user.

Precedence, most specific first: an llmgate virtual key in the provider
credential slot, the proxy-auth user name, the longest client-address prefix
that matches, then `identity.default_user`. With no default user, an
unidentified caller is refused.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from addon.config import IdentitySettings
from addon.keys import KEY_PREFIX, KeyStore

_KEY_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
_KEY_BYTES = KEY_PREFIX.encode()


@dataclass(frozen=True)
class Caller:
    user: str | None
    groups: tuple[str, ...] = ()
    source: str = "default"  # virtual_key | proxy_auth | client_address | default | none
    virtual_key: bool = False
    bad_key: bool = False


def find_virtual_key(headers: Iterable[tuple[bytes, bytes]], path: str) -> str | None:
    """An llmgate key in a provider credential slot; `headers` are raw (name, value) pairs."""
    for name, raw in headers:
        # Cheap byte test first: this runs on every call, and almost none carry a key.
        if _KEY_BYTES not in raw or name.lower().decode("latin-1") not in _KEY_HEADERS:
            continue
        value = raw.decode("latin-1").strip()
        value = value.removeprefix("Bearer ").removeprefix("bearer ").strip()
        if value.startswith(KEY_PREFIX):
            return value
    if "key=" + KEY_PREFIX in path:
        for name, value in parse_qsl(path.partition("?")[2]):
            if name == "key" and value.startswith(KEY_PREFIX):
                return value
    return None


class Identifier:
    def __init__(self, settings: IdentitySettings, keys: KeyStore | None) -> None:
        self.settings = settings
        self.keys = keys
        # Longest prefix first, so a /24 beats the /8 it sits in.
        self._networks = sorted(
            (
                (ipaddress.ip_network(c, strict=False), u)
                for c, u in settings.client_addresses.items()
            ),
            key=lambda item: item[0].prefixlen,
            reverse=True,
        )

    def _groups(self, user: str, extra: tuple[str, ...] = ()) -> tuple[str, ...]:
        return tuple(dict.fromkeys((*extra, *self.settings.groups.get(user, []))))

    def identify(
        self,
        headers: Iterable[tuple[bytes, bytes]],
        path: str,
        proxy_user: str | None,
        client_ip: str | None,
    ) -> Caller:
        key = find_virtual_key(headers, path)
        if key is not None:
            found = self.keys.lookup(key) if self.keys else None
            if found is None:
                return Caller(None, source="virtual_key", virtual_key=True, bad_key=True)
            return Caller(found.user, self._groups(found.user, found.groups), "virtual_key", True)
        if proxy_user:
            return Caller(proxy_user, self._groups(proxy_user), "proxy_auth")
        if client_ip and self._networks:
            try:
                address = ipaddress.ip_address(client_ip)
            except ValueError:
                address = None
            for network, user in self._networks:
                if address is not None and address in network:
                    return Caller(user, self._groups(user), "client_address")
        default = self.settings.default_user
        if default is None:
            return Caller(None, source="none")
        return Caller(default, self._groups(default), "default")
