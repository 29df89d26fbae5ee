"""`http://llmgate.internal/health` through the proxy: the running process's health.

A plain HTTP request to this name, sent to llmgate as a proxy, is answered by
llmgate itself and goes nowhere else. It shows counters only (the ledger
writer's queue, rows written, reduced and lost, calls in flight, whether the hook
table is on), never a value from a call, so any client of the proxy may read it;
`llmgate doctor` does.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from mitmproxy import http

from addon.call import INSTANCE_ID

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

HEALTH_HOST = "llmgate.internal"


class HealthPage:
    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway

    def report(self) -> dict:
        gateway = self.gateway
        writer = gateway.audit.health() if gateway.audit is not None else {"alive": False}
        return {
            "instance_id": INSTANCE_ID,
            "audit_on_failure": gateway.config.audit.on_failure,
            "calls_in_flight": sum(1 for c in gateway.calls.values() if not c.closed),
            "dispatcher_in_flight": gateway.handoff.dispatcher.in_flight,
            "hook_table": gateway.hook_table.table is not None,
            "ledger": writer,
        }

    def page(self, flow: http.HTTPFlow) -> http.Response:
        if flow.request.path.split("?")[0] not in ("/health", "/"):
            return http.Response.make(
                404, b'{"error": "try /health"}\n', {"content-type": "application/json"}
            )
        body = json.dumps(self.report(), indent=2, sort_keys=True, default=str) + "\n"
        return http.Response.make(200, body.encode(), {"content-type": "application/json"})
