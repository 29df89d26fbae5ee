"""The last line: no connection to an LLM host's address that llmgate did not decide.

Host names are matched when a request arrives, but a name llmgate has never
heard of can still point at an LLM host (an /etc/hosts alias, a CNAME, a DNS
name for a local model server). Such a CONNECT is not decrypted, so no request
hook ever sees it. Before mitmproxy opens any upstream connection this addon
resolves its address, and refuses it when the address is an intercepted host's
and the connection was not one a decided call asked for.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import TYPE_CHECKING

from mitmproxy import connection, http
from mitmproxy.proxy import server_hooks

from addon.call import Call, Rejection, new_request_id
from addon.hosts import normalise_host

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

log = logging.getLogger("llmgate")

_Target = tuple[str, str, int]  # (client connection id, normalised host, port)


class ConnectionGuard:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self._decided: set[_Target] = set()

    def allow(self, flow: http.HTTPFlow) -> None:
        """The flow's request, as it now stands, is a call llmgate decided to send."""
        target = normalise_host(flow.request.host), flow.request.port
        self._decided.add((flow.client_conn.id, *target))

    def client_disconnected(self, client: connection.Client) -> None:
        self._decided = {t for t in self._decided if t[0] != client.id}

    async def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.error or data.server.address is None:
            return
        host, port = data.server.address[0], data.server.address[1]
        if (data.client.id, normalise_host(host), port) in self._decided:
            return
        try:
            addresses = await _addresses(host, port)
            covered = host in self.gateway.hosts or any(a in self.gateway.hosts for a in addresses)
        except Exception:  # noqa: BLE001 - a check that cannot run refuses
            covered = True
        if not covered:
            return
        data.server.error = (
            f"llmgate refused a connection to {host}:{port}, an LLM host, that no decided "
            "call asked for"
        )
        log.warning("llmgate refused an undecided connection to an LLM host %s:%s", host, port)
        self._record(data, host)

    def _record(self, data: server_hooks.ServerConnectionHookData, host: str) -> None:
        call = Call(
            id=new_request_id(),
            started_at=time.time(),
            protocol_name="other",
            host=host,
            path="",
            client_ip=data.client.peername[0] if data.client.peername else None,
        )
        refusal = Rejection(403, "undecided_connection", data.server.error or "refused", "denied")
        self.gateway.recorder.record_refusal(call, refusal)


async def _addresses(host: str, port: int) -> set[str]:
    normal = normalise_host(host)
    if not normal:
        return set()
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(normal, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        return set()  # nothing to connect to: mitmproxy's own attempt fails as well
    return {normalise_host(str(info[4][0])) for info in infos}
