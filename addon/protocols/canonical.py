"""The canonical request and response every wire protocol is parsed into.

Policy, quota, safety and the ledger only ever see these objects. The canonical
form exists for deciding, auditing and translating; it is never used to
re-serialise a call that goes to an upstream of the same protocol.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Protocol = Literal["openai_chat", "openai_responses", "anthropic_messages", "gemini", "other"]
Role = Literal["system", "user", "assistant", "tool"]


class _Part(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(_Part):
    type: Literal["text"] = "text"
    text: str


class ImagePart(_Part):
    type: Literal["image"] = "image"
    media_type: str | None = None
    url: str | None = None
    has_inline_data: bool = False
    # The base64 bytes of an inline image. Translation needs them; nothing else
    # may see them, so they are left out of every dump and repr (the audit keeps
    # the caller's own bytes, capped, as for any body).
    data: str | None = Field(default=None, exclude=True, repr=False)


class ToolUsePart(_Part):
    type: Literal["tool_use"] = "tool_use"
    id: str | None = None
    name: str
    arguments: Any = None  # parsed JSON when the wire format gave JSON, else the raw string
    # Gemini's thought signature rides on the call; only its issuer can read it.
    signature: str | None = Field(default=None, repr=False)
    issuer: str | None = None


class ToolResultPart(_Part):
    type: Literal["tool_result"] = "tool_result"
    tool_use_id: str | None = None
    name: str | None = None
    content: list[TextPart | ImagePart] = Field(default_factory=list)
    is_error: bool = False


class ThinkingPart(_Part):
    type: Literal["thinking"] = "thinking"
    text: str = ""
    redacted: bool = False
    # Opaque proof of the reasoning (Anthropic's signature or redacted data,
    # Gemini's thought signature, Responses' encrypted_content). It is only
    # meaningful to the provider that issued it: `issuer` is that wire protocol,
    # and an encoder for another protocol drops it (and says so in the log).
    signature: str | None = Field(default=None, repr=False)
    issuer: str | None = None
    item_id: str | None = None  # Responses' reasoning item id, needed to send it back


ContentPart = Annotated[
    TextPart | ImagePart | ToolUsePart | ToolResultPart | ThinkingPart,
    Field(discriminator="type"),
]


class Message(BaseModel):
    role: Role
    content: list[ContentPart] = Field(default_factory=list)


class Tool(BaseModel):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoice(BaseModel):
    """`auto`: the model decides; `none`: no tool; `required`: some tool; `tool`: `name`."""

    mode: Literal["auto", "none", "required", "tool"] = "auto"
    name: str | None = None


class ResponseFormat(BaseModel):
    """JSON mode (`json_object`) or structured output (`json_schema` with `schema`)."""

    type: Literal["json_object", "json_schema"]
    name: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None

    model_config = ConfigDict(populate_by_name=True)


class Reasoning(BaseModel):
    """How hard the model should think: an effort level, a token budget, or off."""

    enabled: bool = True
    effort: Literal["minimal", "low", "medium", "high"] | None = None
    budget_tokens: int | None = None


class CanonicalRequest(BaseModel):
    protocol: Protocol
    model: str
    system: str | None = None
    messages: list[Message] = Field(default_factory=list)
    tools: list[Tool] = Field(default_factory=list)
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    reasoning: Reasoning | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: list[str] = Field(default_factory=list)
    stream: bool = False
    metadata: dict[str, Any] = Field(default_factory=dict)

    def texts(self) -> list[str]:
        """Every piece of text a human or tool put into the prompt, in order."""
        out: list[str] = [self.system] if self.system else []
        for message in self.messages:
            out.extend(part_texts(message.content))
        return out


class Usage(BaseModel):
    """Token counts normalised across providers.

    `input_tokens` counts every prompt token, cached ones included, and
    `output_tokens` every generated token, reasoning included, so that
    `cost = (input - cache_read - cache_write) * in + cache_read * cr
    + cache_write * cw + output * out` holds for every protocol.
    """

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0


# Why generation stopped, in words every protocol can map to and from.
Finish = Literal["stop", "length", "tool_calls", "content_filter", "error"]


class CanonicalResponse(BaseModel):
    id: str | None = None
    model: str | None = None
    content: list[ContentPart] = Field(default_factory=list)
    stop_reason: str | None = None  # the provider's own word, for the audit
    finish: Finish | None = None  # the same, mapped
    usage: Usage | None = None

    def text(self) -> str:
        return "".join(part_texts(self.content))


def part_texts(parts: list[Any]) -> list[str]:
    out: list[str] = []
    for part in parts:
        if isinstance(part, TextPart | ThinkingPart):
            out.append(part.text)
        elif isinstance(part, ToolUsePart):
            args = part.arguments
            if args is None:
                # No arguments is not the text "null": that would skew estimates and scans.
                continue
            out.append(args if isinstance(args, str) else json.dumps(args, ensure_ascii=False))
        elif isinstance(part, ToolResultPart):
            out.extend(part_texts(part.content))
    return out


class ProtocolError(ValueError):
    """The body is not a valid call in the protocol it was sent as."""
