"""Credentials never rest on a flow: what mitmweb shows and `-w` saves is masked.

mitmweb's view and the save addon read the flow after llmgate's hooks (scripts
run before them), so the caller's credentials are masked in `requestheaders`,
put back only for the moment a forwarded call is sent, and masked again (with
the route secret's name) by the first hook after the request has left.

Between the `request` hook and that moment the outgoing request, secret
included, must stay on the flow, because mitmproxy sends what the flow holds.
But mitmproxy fires `update` right after every hook, and mitmweb broadcasts the
flow from its `update`. So `ViewShade`, a child of llmgate's addon (which runs
before mitmweb's view), masks a sending flow in `update`, and `ViewShadeLifter`,
an addon llmgate appends after every other, lifts the shade again before the send.
Both are installed only where a view reads flows in `update` (mitmweb, the
console): mitmproxy invokes every `update` hook after every hook of every flow,
four times a call, and in mitmdump nothing there would read the flow.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.flow import Flow

from addon.credentials import Fields, mask_fields, mask_query, unmask_fields


@dataclass(frozen=True)
class _Held:
    """The caller's credentials as sent, kept off the flow."""

    originals: Fields
    path: str


class FlowMasking:
    def __init__(self) -> None:
        self._held: dict[str, _Held] = {}
        self._sending: dict[str, str] = {}  # flow id -> whose credential went out
        self._shaded: dict[str, _Held] = {}

    def hide(self, flow: http.HTTPFlow, found: Callable[[bytes], bool] = lambda _: False) -> None:
        """Mask the caller's credentials (and header values `found` flags), keeping the
        originals here."""
        fields, originals = mask_fields(flow.request.headers.fields, "caller key", found)
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

    def sending(self, flow: http.HTTPFlow, label: str) -> None:
        """The flow now holds the outgoing request, credentials and all, until it left."""
        self._sending[flow.id] = label

    def mask_sent(self, flow: http.HTTPFlow, label: str) -> None:
        """After the request left: only masked credentials stay on the flow."""
        self._sending.pop(flow.id, None)
        _mask(flow, label)

    def shade(self, flow: http.HTTPFlow) -> None:
        label = self._sending.get(flow.id)
        if label is None or flow.id in self._shaded:
            return
        self._shaded[flow.id] = _Held(flow.request.headers.fields, flow.request.path)
        _mask(flow, label)

    def lift(self, flow: http.HTTPFlow) -> None:
        shaded = self._shaded.pop(flow.id, None)
        if shaded is not None:
            flow.request.headers.fields = shaded.originals
            flow.request.path = shaded.path


def _mask(flow: http.HTTPFlow, label: str) -> None:
    flow.request.headers.fields = mask_fields(flow.request.headers.fields, label)[0]
    flow.request.path = mask_query(flow.request.path, label)


class ViewShade:
    """First in llmgate's chain for `update`: a sending flow is masked before the view
    reads it."""

    def __init__(self, masking: FlowMasking) -> None:
        self.masking = masking

    def update(self, flows: Sequence[Flow]) -> None:
        # Before mitmweb's view broadcasts them; ViewShadeLifter undoes it after.
        for flow in flows:
            if isinstance(flow, http.HTTPFlow):
                self.masking.shade(flow)


class ViewShadeLifter:
    """Appended after mitmweb's view and every other addon: puts back what
    `FlowMasking.shade` masked for them, before mitmproxy sends the request."""

    name = "llmgate-view-shade-lifter"

    def __init__(self, masking: FlowMasking) -> None:
        self.masking = masking

    def update(self, flows: Sequence[Flow]) -> None:
        for flow in flows:
            if isinstance(flow, http.HTTPFlow):
                self.masking.lift(flow)
