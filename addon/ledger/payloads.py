"""What one call leaves in the ledger: its payload halves and its findings.

Every value a scanner found is replaced before a body is stored, whatever the
action was, and headers that can carry credentials are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from addon.credentials import replace_found, storable_headers
from addon.ledger.store import cap_body, json_text
from addon.ledger.writer import AuditWriter
from addon.safety.screening import Located, finding_rows, redact_json


def write_half(
    audit: AuditWriter,
    side: Literal["request", "response"],
    request_id: str,
    headers: Iterable[tuple[bytes, bytes]] | None,
    body: bytes,
    *,
    findings: list[Located],
    hidden: dict[str, str],
    hmac_key: bytes,
    cap: int,
    upstream_body: bytes | None = None,
) -> None:
    """The request half opens the payload row; the response half completes it."""
    if findings:
        audit.insert_many("findings", finding_rows(request_id, side, findings, hmac_key))
    if headers is None:
        return
    stored, truncated = cap_body(redact_json(body, hidden) if hidden else body, cap)
    kept_headers = storable_headers(headers)
    if hidden:
        # A header value the scanner found something in is stored with it replaced.
        kept_headers = {name: replace_found(value, hidden) for name, value in kept_headers.items()}
    fields = {
        f"{side}_headers": json_text(kept_headers),
        f"{side}_body": stored,
        f"{side}_truncated": int(truncated),
    }
    if upstream_body is not None:
        upstream, upstream_truncated = cap_body(
            redact_json(upstream_body, hidden) if hidden else upstream_body, cap
        )
        fields |= {
            "upstream_request_body": upstream,
            "upstream_request_truncated": int(upstream_truncated),
        }
    if side == "request":
        audit.insert("payloads", {"request_id": request_id, **fields})
    else:
        audit.update("payloads", request_id, fields)
