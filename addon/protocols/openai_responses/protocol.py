"""OpenAI Responses as one `WireProtocol`: its request and reply readers, joined."""

from __future__ import annotations

from addon.protocols.openai_responses.content import NAME
from addon.protocols.openai_responses.reply import OpenAIResponsesReplies
from addon.protocols.openai_responses.request import OpenAIResponsesRequests


class OpenAIResponses(OpenAIResponsesRequests, OpenAIResponsesReplies):
    name = NAME
    provider = "openai"
    credential_header = "authorization"
