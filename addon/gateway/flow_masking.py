"""Credentials never rest on a flow: what mitmweb shows and `-w` saves is masked.

mitmweb's view and the save addon read the flow after llmgate's hooks (scripts
run before them), so the caller's credentials are masked in `requestheaders`,
put back only for the moment a forwarded call is sent, and masked again (with
the route secret's name) by the first hook after the request has left.
"""

from __future__ import annotations

from dataclasses import dataclass

from mitmproxy import http

from addon.credentials import Fields, mask_fields, mask_query, unmask_fields


@dataclass(frozen=True)
class _Held:
    """The caller's credentials as sent, kept off the flow."""

    originals: Fields
    path: str


class FlowMasking:
    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}

    def hide(self, flow: http.HTTPFlow) -> None:
        """Mask the caller's credentials, keeping the originals here."""
        fields, originals = mask_fields(flow.request.headers.fields, "caller key")
        path = flow.request.path
        flow.request.headers.fields = fields
        flow.request.path = mask_query(path, "caller key")
        self._held[flow.id] = _Held(originals, path)

    def caller_fields(self, flow: http.HTTPFlow) -> Fields:
        """The request headers as the caller sent them, credentials included."""
        held = self._held.get(flow.id)
        fields = flow.request.headers.fields
        return unmask_fields(fields, held.originals) if held else fields

    def caller_path(self, flow: http.HTTPFlow) -> str:
        held = self._held.get(flow.id)
        return held.path if held else flow.request.path

    def release(self, flow: http.HTTPFlow) -> None:
        """The call goes upstream: the caller's headers and path as sent, then any rewrite."""
        held = self._held.pop(flow.id, None)
        if held is not None:
            flow.request.headers.fields = unmask_fields(flow.request.headers.fields, held.originals)
            flow.request.path = held.path

    def forget(self, flow: http.HTTPFlow) -> None:
        """Nothing leaves: the flow keeps its masked copy."""
        self._held.pop(flow.id, None)

    @staticmethod
    def mask_sent(flow: http.HTTPFlow, label: str) -> None:
        """After the request left: only masked credentials stay on the flow."""
        flow.request.headers.fields = mask_fields(flow.request.headers.fields, label)[0]
        flow.request.path = mask_query(flow.request.path, label)
