"""Who is calling: a virtual key, proxy auth, the client address, or the default user.

Precedence, most specific first: an llmgate virtual key in the provider
credential slot, the proxy-auth user name, the longest client-address prefix
that matches, then `identity.default_user`. With no default user, an
unidentified caller is refused.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import parse_qsl

from addon.config import IdentitySettings
from addon.credentials import CREDENTIAL_HEADERS, CREDENTIAL_PARAMS, key_shaped
from addon.keys import KEY_PREFIX, KeyStore

_KEY_HEADERS = frozenset(CREDENTIAL_HEADERS)
_KEY_PARAMS = frozenset(CREDENTIAL_PARAMS)
# Any spelling a provider SDK might send: an optional scheme word (Bearer, BEARER,
# Token, ...) then the key, with any whitespace between them.
_SCHEME_AND_KEY = re.compile(r"^\s*(?:[A-Za-z]+\s+)?(\S+)\s*$")


@dataclass(frozen=True)
class Caller:
    user: str | None
    groups: tuple[str, ...] = ()
    source: str = "default"  # virtual_key | proxy_auth | client_address | default | none
    virtual_key: bool = False
    bad_key: bool = False
    stray_key: bool = False  # a key-shaped value outside every credential slot


def _looks_like_key(value: str) -> bool:
    return value[: len(KEY_PREFIX)].lower() == KEY_PREFIX


def find_virtual_key(headers: Iterable[tuple[bytes, bytes]], path: str) -> str | None:
    """An llmgate key in a provider credential slot; `headers` are raw (name, value) pairs.

    Slots: the credential headers, in any scheme spelling, and the credential query
    parameters, percent-decoded. Anything shaped like a key counts, valid or not,
    so that a mistyped key is refused rather than forwarded.
    """
    for name, raw in headers:
        if name.lower().decode("latin-1") not in _KEY_HEADERS:
            continue
        found = _SCHEME_AND_KEY.match(raw.decode("latin-1"))
        if found and _looks_like_key(found.group(1)):
            return found.group(1)
    _, sep, query = path.partition("?")
    if sep:
        for param, value in parse_qsl(query, keep_blank_values=True):
            if param.lower() in _KEY_PARAMS and _looks_like_key(value.strip()):
                return value.strip()
    return None


def has_stray_key(headers: Iterable[tuple[bytes, bytes]], path: str) -> bool:
    """Whether a key-shaped value sits outside every credential slot (header or query)."""
    if any(
        key_shaped(raw)
        for name, raw in headers
        if name.lower().decode("latin-1") not in _KEY_HEADERS
    ):
        return True
    _, sep, query = path.partition("?")
    return bool(sep) and any(
        param.lower() not in _KEY_PARAMS and key_shaped(value.encode("utf-8", "replace"))
        for param, value in parse_qsl(query, keep_blank_values=True)
    )


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
        headers = list(headers)
        if has_stray_key(headers, path):
            return Caller(None, source="none", stray_key=True)
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
