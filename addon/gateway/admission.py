"""Checks on a flow before llmgate decides anything about the call it carries.

Where a request claims to go (TLS SNI, the Host header) against where its
tunnel goes, whether its target is readable, and whether its body is within
bounds. Plain functions over a flow: the gateway refuses what they return.
"""

from __future__ import annotations

import functools
from urllib.parse import urlsplit

from mitmproxy import http

from addon.call import Rejection
from addon.hosts import HostSet


def too_large(flow: http.HTTPFlow, limit: int) -> Rejection | None:
    if len(flow.request.raw_content or b"") <= limit:
        return None
    return Rejection(
        413,
        "request_too_large",
        f"the request body is larger than llmgate's limit of {limit} bytes "
        "(limits.max_request_bytes)",
    )


def misdirected(flow: http.HTTPFlow, hosts: HostSet) -> Rejection | None:
    """A call that names an LLM host (TLS SNI, Host header) on a tunnel to another host:
    sending it on would hand an LLM call to whoever that host is."""
    for name in claimed_names(flow):
        if name in hosts and not hosts.same(name, flow.request.host):
            return Rejection(
                421,
                "misdirected_request",
                f"this request names {name}, an LLM host, but its connection was opened "
                "to another host; llmgate refuses it. Connect to the host you name.",
                "denied",
            )
    return None


def claimed_names(flow: http.HTTPFlow) -> list[str]:
    """The host names a request claims besides where it goes: TLS SNI, the Host header."""
    names = [flow.client_conn.sni] if flow.client_conn.sni else []
    header = flow.request.host_header
    if header:
        names.append(header_host(header))
    return names


@functools.lru_cache(maxsize=1024)
def header_host(header: str) -> str:
    """The host of a Host header value (port and IPv6 brackets removed)."""
    try:
        return urlsplit("//" + header).hostname or header
    except ValueError:
        return header


def bad_target(path: str) -> Rejection | None:
    """mitmproxy decodes a raw non-UTF-8 byte as a lone surrogate; such a target is refused."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        return Rejection(400, "invalid_request_target", "the request path is not valid UTF-8")
    return None
