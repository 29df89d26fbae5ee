"""What counts as "an LLM host", and when two spellings name the same host.

A host name is compared after normalisation: lower case, no trailing dot, and
IDNA (punycode) for non-ASCII labels, so `API.OpenAI.com.` is `api.openai.com`.
An IP literal is compared as an address (`[::ffff:127.0.0.1]` is `127.0.0.1`).
A route endpoint also matches by address: the names it resolved to when the
configuration loaded, and the loopback names (`localhost` is `127.0.0.1` and
`::1`). Host names are never resolved per request: that would put DNS on the
hot path of every unrelated plain-HTTP call.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import socket
from collections.abc import Iterable

_LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback")
_LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")


@functools.lru_cache(maxsize=4096)
def normalise_host(host: str) -> str:
    """The canonical spelling of a host name or IP literal; '' when it cannot have one."""
    host = host.strip().strip("[]").rstrip(".").lower()
    address = _address(host)
    if address is not None:
        return address
    if host.isascii():
        return host
    try:
        return host.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


_LEGACY_IPV4 = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$")


def _address(host: str) -> str | None:
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        if not _LEGACY_IPV4.match(host):
            return None
        # 127.1, 2130706433, 0x7f000001, 0177.0.0.1: spellings inet_aton (and so every
        # socket API a client uses) reads as an IPv4 address.
        try:
            return socket.inet_ntoa(socket.inet_aton(host))
        except OSError:
            return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.compressed


def _is_loopback(address: str) -> bool:
    # 0.0.0.0 and :: reach this machine's listeners too, as any 127/8 address may.
    ip = ipaddress.ip_address(address)
    return ip.is_loopback or ip.is_unspecified


class HostSet:
    """The hosts llmgate intercepts, by name and by address.

    `resolve` names the hosts whose addresses count too (route endpoints and
    `intercept_hosts`; the public provider names are left out, because their
    addresses are shared CDN addresses that serve many other sites).
    """

    def __init__(self, hosts: Iterable[str], *, resolve: Iterable[str] = ()) -> None:
        self.names: set[str] = set()
        self.addresses: set[str] = set()
        for raw in hosts:
            host = normalise_host(raw)
            if not host:
                continue
            (self.addresses if _address(host) is not None else self.names).add(host)
        for raw in resolve:
            host = normalise_host(raw)
            if host and _address(host) is None:
                self.addresses.update(_resolve(host))
        names_loopback = bool(self.names & set(_LOOPBACK_NAMES))
        if names_loopback or any(_is_loopback(a) for a in self.addresses):
            # A route to 127.0.0.1 is a route to localhost, whichever the caller spells.
            self.names.update(_LOOPBACK_NAMES)
            self.addresses.update(_LOOPBACK_ADDRESSES)
        self.loopback = "127.0.0.1" in self.addresses

    def __contains__(self, host: object) -> bool:
        if not isinstance(host, str):
            return False
        return self.canonical(host) is not None

    def canonical(self, host: str) -> str | None:
        """The normalised host when it is one of ours, else None."""
        normal = normalise_host(host)
        if not normal:
            return None
        if normal in self.names or normal in self.addresses:
            return normal
        if self.loopback and _address(normal) is not None and _is_loopback(normal):
            return normal
        return None

    def same(self, a: str, b: str) -> bool:
        """Whether two spellings name the same intercepted host."""
        na, nb = normalise_host(a), normalise_host(b)
        return na == nb or (self._is_local(na) and self._is_local(nb))

    @staticmethod
    def _is_local(host: str) -> bool:
        if host in _LOOPBACK_NAMES:
            return True
        return _address(host) is not None and _is_loopback(host)

    def allow_patterns(self) -> list[str]:
        """mitmproxy `allow_hosts` regexes: every name (trailing dot too) and address."""
        patterns = [rf"^{re.escape(n)}\.?(:\d+)?$" for n in sorted(self.names)]
        if self.loopback:
            patterns += [r"^127(\.\d{1,3}){3}(:\d+)?$", r"^0\.0\.0\.0(:\d+)?$"]
        for address in sorted(self.addresses):
            literal = f"[{address}]" if ":" in address else address
            patterns.append(rf"^{re.escape(literal)}(:\d+)?$")
            if ":" in address:
                patterns.append(rf"^{re.escape(address)}(:\d+)?$")
        return patterns


def _resolve(name: str) -> set[str]:
    """Addresses of a configured host; none when DNS cannot answer (offline is normal)."""
    try:
        infos = socket.getaddrinfo(name, None, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        return set()
    found = {_address(str(info[4][0])) for info in infos}
    return {a for a in found if a}
