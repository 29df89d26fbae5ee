"""A streamed reply as canonical deltas: what every stream decoder emits and every
stream encoder consumes.

Decoders number tool calls 0, 1, 2, ... in the order they start, whatever the
provider's own indexes are; text and thinking carry no index, because each
encoder decides its own block layout. `UsageUpdate` is cumulative (a later one
replaces an earlier one), and `Finish` may come before the last usage: encoders
hold both and write them when the stream closes, where each caller's SDK
expects them.
"""

from __future__ import annotations

from dataclasses import dataclass

from addon.protocols.canonical import Finish, Usage


@dataclass(slots=True)
class MessageStart:
    id: str | None = None
    model: str | None = None


@dataclass(slots=True)
class TextDelta:
    text: str


@dataclass(slots=True)
class ThinkingDelta:
    text: str = ""
    # A signature ends a thinking block (Anthropic's signature_delta, Gemini's
    # thoughtSignature); `redacted` marks opaque reasoning with no readable text.
    signature: str | None = None
    redacted: bool = False


@dataclass(slots=True)
class ToolCallStart:
    index: int
    id: str
    name: str
    signature: str | None = None  # Gemini's thought signature on a function call


@dataclass(slots=True)
class ToolCallDelta:
    index: int
    arguments: str  # a fragment of the JSON text of the arguments


@dataclass(slots=True)
class UsageUpdate:
    usage: Usage


@dataclass(slots=True)
class FinishDelta:
    finish: Finish
    stop_reason: str | None = None  # the provider's own word


@dataclass(slots=True)
class StreamFailure:
    """The upstream reported an error inside the stream."""

    status: int
    kind: str
    message: str


Delta = (
    MessageStart
    | TextDelta
    | ThinkingDelta
    | ToolCallStart
    | ToolCallDelta
    | UsageUpdate
    | FinishDelta
    | StreamFailure
)
