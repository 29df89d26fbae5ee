"""The mitmproxy side of llmgate: the only package that knows flows.

`http_hooks.Gateway` is the addon mitmproxy loads; it owns the options and the
stores, and decides HTTP calls. `websocket_hooks.WebSocketCalls`, its child
addon, decides each message of the Responses API over WebSocket.
`flow_masking` keeps credentials off the flows that mitmweb shows and `-w` saves.
"""

from addon.gateway.http_hooks import REQUEST_ID_HEADER, Gateway

addons = [Gateway()]

__all__ = ["REQUEST_ID_HEADER", "Gateway", "addons"]
