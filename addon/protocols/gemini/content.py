"""Gemini parts in canonical form, read alike in a request's history and in a reply."""

from __future__ import annotations

import json
from typing import Any

from addon.protocols.base import TextSlot, as_str
from addon.protocols.canonical import (
    ContentPart,
    ImagePart,
    ProtocolError,
    TextPart,
    ThinkingPart,
    ToolResultPart,
    ToolUsePart,
)
from addon.protocols.gemini.fields import _get, _get_dict
from addon.protocols.signatures import unseal

# Part kinds `_part` reads before code parts: one of these is never reply text.
_NON_TEXT_PARTS = ("functionCall", "functionResponse", "inlineData", "fileData")


def _signed(part: dict[str, Any]) -> tuple[str | None, str | None]:
    """(signature, issuer) of a part's thoughtSignature, unsealed when llmgate sealed it."""
    raw = as_str(_get(part, "thoughtSignature"))
    if not raw:
        return None, None
    issuer, signature = unseal(raw, "gemini")
    return signature, issuer


def _media(data: dict[str, Any], *, inline: bool) -> ImagePart | None:
    mime = as_str(_get(data, "mimeType"))
    if not (mime or "").startswith("image/"):
        # Audio, video and documents have no canonical part; skip them.
        return None
    if inline:
        return ImagePart(media_type=mime, has_inline_data=True, data=as_str(_get(data, "data")))
    return ImagePart(media_type=mime, url=as_str(_get(data, "fileUri")))


def _function_response(data: dict[str, Any]) -> ToolResultPart:
    response = _get(data, "response")
    content: list[TextPart | ImagePart] = []
    if response:
        content.append(TextPart(text=json.dumps(response, ensure_ascii=False)))
    content += [
        p for p in _parts(_get(data, "parts"), "functionResponse") if isinstance(p, ImagePart)
    ]
    # By convention a failed call answers {"error": ...} instead of {"output": ...}.
    failed = isinstance(response, dict) and "error" in response
    return ToolResultPart(
        tool_use_id=as_str(_get(data, "id")),
        name=as_str(_get(data, "name")),
        content=content,
        is_error=failed,
    )


def _text_slot(part: dict[str, Any]) -> TextSlot | None:
    """Where a part keeps reply text: its text unless it is a thought, else the code
    the model wrote or what running it printed, which are conversation text too."""
    if isinstance(_get(part, "text"), str):
        return None if _get(part, "thought") is True else (part, "text")
    if any(isinstance(_get(part, key), dict) for key in _NON_TEXT_PARTS):
        return None
    for key, field in (("executableCode", "code"), ("codeExecutionResult", "output")):
        holder = _get_dict(part, key)
        if isinstance(holder.get(field), str) and holder[field]:
            return (holder, field)
    return None


def _part(part: dict[str, Any]) -> ContentPart | None:
    text = _get(part, "text")
    if isinstance(text, str) and _get(part, "thought") is True:
        signature, issuer = _signed(part)
        return ThinkingPart(text=text, signature=signature, issuer=issuer)
    slot = _text_slot(part)
    if slot is not None:
        holder, key = slot
        return TextPart(text=holder[key]) if holder[key] else None
    call = _get(part, "functionCall")
    if isinstance(call, dict):
        signature, issuer = _signed(part)
        return ToolUsePart(
            id=as_str(_get(call, "id")),
            name=as_str(_get(call, "name")) or "",
            arguments=_get(call, "args"),
            signature=signature,
            issuer=issuer,
        )
    response = _get(part, "functionResponse")
    if isinstance(response, dict):
        return _function_response(response)
    for key, inline in (("inlineData", True), ("fileData", False)):
        data = _get(part, key)
        if isinstance(data, dict):
            return _media(data, inline=inline)
    return None


def _parts(parts: Any, where: str, *, keep_signatures: bool = False) -> list[ContentPart]:
    """`keep_signatures`: a signature on a part that has no slot for one (text) becomes an
    empty signed thinking part in front of it, so it can travel back to Gemini."""
    if parts is None:
        return []
    if not isinstance(parts, list):
        raise ProtocolError(f"'{where}.parts' must be a list")
    out: list[ContentPart] = []
    for part in parts:
        if not isinstance(part, dict):
            raise ProtocolError(f"'{where}.parts' has a part that is not an object")
        converted = _part(part)
        if keep_signatures and isinstance(converted, ThinkingPart):
            last = out[-1] if out else None
            if isinstance(last, ThinkingPart) and not last.signature and last.text:
                # One thought streamed as several parts is one thinking block: its
                # signature (on a later part) covers all of it.
                last.text += converted.text
                if converted.signature:
                    last.signature, last.issuer = converted.signature, converted.issuer
                continue
            if not converted.text:
                if converted.signature:
                    end_thinking(out, converted.signature, converted.issuer)
                continue
        if keep_signatures and not isinstance(converted, ThinkingPart | ToolUsePart):
            signature, issuer = _signed(part)
            if signature:
                end_thinking(out, signature, issuer)
        if converted is not None:
            out.append(converted)
    return out


def end_thinking(parts: list[ContentPart], signature: str, issuer: str | None) -> None:
    """A signature that ends the thinking before it: onto that thinking when it has
    none yet, else an empty thinking part of its own."""
    last = parts[-1] if parts else None
    if isinstance(last, ThinkingPart) and not last.signature:
        last.signature, last.issuer = signature, issuer
    else:
        parts.append(ThinkingPart(signature=signature, issuer=issuer))
