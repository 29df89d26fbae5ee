"""Sealed signatures: a provider's reasoning signature, handed to a caller of another protocol.

The caller sends it back unchanged in a later turn, and unsealing it tells the
request decoder who issued it, so that it reaches that provider again and no
other. Standard base64, because Gemini's SDK holds thought signatures as bytes
and re-encodes them. Every wire format's request decoder unseals; its codec seals.
"""

from __future__ import annotations

import base64
import binascii

_SEAL = b"llmgate1:"


def seal(issuer: str, signature: str) -> str:
    return base64.b64encode(_SEAL + issuer.encode() + b":" + signature.encode()).decode()


def unseal(value: str, own_protocol: str) -> tuple[str, str]:
    """(issuer, signature) of a signature a caller sent back; unsealed values are its own."""
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return own_protocol, value
    if not raw.startswith(_SEAL):
        return own_protocol, value
    issuer, _, signature = raw[len(_SEAL) :].decode("utf-8", "replace").partition(":")
    return issuer, signature
