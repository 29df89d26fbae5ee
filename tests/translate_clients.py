"""Each caller protocol's official SDK, driven the same way: a text call, buffered or
streamed, and a full tool round trip. The end-to-end translation tests run every
caller against every provider protocol with these.

Each method returns what the SDK assembled and the llmgate request id of every
call it made, so the test can read the rows.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import anthropic
import openai
from google import genai
from google.genai import types as gt

from tests.conftest import CALLER_KEY
from tests.emulator import HEADER_TOOL_ARGS, HEADER_TOOL_CALL
from tests.proxy import Proxy

REQUEST_ID = "x-llmgate-request-id"
TOOL = "get_weather"
TOOL_ARGS = {"city": "Paris", "unit": "celsius", "note": "crème brûlée ☕"}
TOOL_RESULT = "18 degrees and sunny"
SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "note": {"type": "string"},
    },
    "required": ["city"],
}


def tool_headers() -> dict[str, str]:
    return {HEADER_TOOL_CALL: TOOL, HEADER_TOOL_ARGS: json.dumps(TOOL_ARGS)}


@dataclass
class Outcome:
    text: str
    request_ids: list[str] = field(default_factory=list)
    tool_calls: list[tuple[str, Any]] = field(default_factory=list)  # (name, parsed args)
    finish: str | None = None
    usage: Any = None
    thinking: str = ""


class ChatCaller:
    protocol = "openai_chat"

    def __init__(self, proxy: Proxy) -> None:
        self.client = openai.OpenAI(
            api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0
        )

    def text(self, model: str, prompt: str, stream: bool, headers: dict[str, str]) -> Outcome:
        messages: Any = [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": prompt},
        ]
        if not stream:
            raw = self.client.chat.completions.with_raw_response.create(
                model=model, messages=messages, max_tokens=200, extra_headers=headers
            )
            done = raw.parse()
            return Outcome(
                done.choices[0].message.content or "",
                [raw.headers[REQUEST_ID]],
                finish=done.choices[0].finish_reason,
                usage=done.usage,
            )
        with self.client.chat.completions.with_streaming_response.create(
            model=model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            extra_headers=headers,
        ) as response:
            text, finish, usage = [], None, None
            for chunk in response.parse():
                for choice in chunk.choices:
                    text.append(choice.delta.content or "")
                    finish = choice.finish_reason or finish
                usage = chunk.usage or usage
            return Outcome(
                "".join(text), [response.headers[REQUEST_ID]], finish=finish, usage=usage
            )

    def tool_round_trip(self, model: str) -> Outcome:
        tools: Any = [
            {
                "type": "function",
                "function": {"name": TOOL, "description": "Weather", "parameters": SCHEMA},
            }
        ]
        messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
        ids: list[str] = []
        with self.client.chat.completions.stream(
            model=model, messages=messages, tools=tools, extra_headers=tool_headers()
        ) as stream:
            first = stream.get_final_completion()
            ids.append(stream._response.headers[REQUEST_ID])
        message = first.choices[0].message
        calls = [(c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls]
        messages.append(message.model_dump(exclude_none=True))
        for call in message.tool_calls or []:
            messages.append({"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT})
        raw = self.client.chat.completions.with_raw_response.create(
            model=model, messages=messages, tools=tools, extra_headers=tool_headers()
        )
        ids.append(raw.headers[REQUEST_ID])
        final = raw.parse()
        return Outcome(
            final.choices[0].message.content or "",
            ids,
            calls,
            first.choices[0].finish_reason,
        )

    def reply(self, model: str, stream: bool, headers: dict[str, str]) -> Outcome:
        """Whatever the upstream answers, as the SDK assembled it: text, tool calls, thinking."""
        messages: Any = [{"role": "user", "content": "go"}]
        if stream:
            with self.client.chat.completions.stream(
                model=model, messages=messages, extra_headers=headers
            ) as assembling:
                done = assembling.get_final_completion()
                rid = assembling._response.headers[REQUEST_ID]
        else:
            raw = self.client.chat.completions.with_raw_response.create(
                model=model, messages=messages, extra_headers=headers
            )
            done, rid = raw.parse(), raw.headers[REQUEST_ID]
        message = done.choices[0].message
        calls = [
            (c.function.name, json.loads(c.function.arguments)) for c in message.tool_calls or []
        ]
        thinking = (message.model_extra or {}).get("reasoning_content") or ""
        return Outcome(
            message.content or "", [rid], calls, done.choices[0].finish_reason, thinking=thinking
        )


class ResponsesCaller:
    protocol = "openai_responses"

    def __init__(self, proxy: Proxy) -> None:
        self.client = openai.OpenAI(
            api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0
        )

    def text(self, model: str, prompt: str, stream: bool, headers: dict[str, str]) -> Outcome:
        if not stream:
            raw = self.client.responses.with_raw_response.create(
                model=model,
                instructions="Be brief.",
                input=prompt,
                max_output_tokens=200,
                extra_headers=headers,
            )
            done = raw.parse()
            return Outcome(done.output_text, [raw.headers[REQUEST_ID]], usage=done.usage)
        with self.client.responses.stream(
            model=model, instructions="Be brief.", input=prompt, extra_headers=headers
        ) as stream:
            final = stream.get_final_response()
            return Outcome(
                final.output_text,
                [stream._response.headers[REQUEST_ID]],
                finish=final.status,
                usage=final.usage,
            )

    def tool_round_trip(self, model: str) -> Outcome:
        tools: Any = [{"type": "function", "name": TOOL, "parameters": SCHEMA, "strict": False}]
        items: Any = [{"role": "user", "content": "Weather in Paris?"}]
        with self.client.responses.stream(
            model=model, input=items, tools=tools, extra_headers=tool_headers()
        ) as stream:
            first = stream.get_final_response()
            rid = stream._response.headers[REQUEST_ID]
        calls = [item for item in first.output if item.type == "function_call"]
        items += [item.model_dump(exclude_none=True) for item in first.output]
        items += [
            {"type": "function_call_output", "call_id": c.call_id, "output": TOOL_RESULT}
            for c in calls
        ]
        raw = self.client.responses.with_raw_response.create(
            model=model, input=items, tools=tools, extra_headers=tool_headers()
        )
        final = raw.parse()
        return Outcome(
            final.output_text,
            [rid, raw.headers[REQUEST_ID]],
            [(c.name, json.loads(c.arguments)) for c in calls],
        )

    def reply(self, model: str, stream: bool, headers: dict[str, str]) -> Outcome:
        if stream:
            with self.client.responses.stream(model=model, input="go", extra_headers=headers) as s:
                done = s.get_final_response()
                rid = s._response.headers[REQUEST_ID]
        else:
            raw = self.client.responses.with_raw_response.create(
                model=model, input="go", extra_headers=headers
            )
            done, rid = raw.parse(), raw.headers[REQUEST_ID]
        calls = [
            (item.name, json.loads(item.arguments))
            for item in done.output
            if item.type == "function_call"
        ]
        thinking = "".join(
            part.text for item in done.output if item.type == "reasoning" for part in item.summary
        )
        return Outcome(done.output_text, [rid], calls, done.status, thinking=thinking)


class AnthropicCaller:
    protocol = "anthropic_messages"

    def __init__(self, proxy: Proxy) -> None:
        self.client = anthropic.Anthropic(
            api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0
        )

    def text(self, model: str, prompt: str, stream: bool, headers: dict[str, str]) -> Outcome:
        messages: Any = [{"role": "user", "content": prompt}]
        if not stream:
            raw = self.client.messages.with_raw_response.create(
                model=model,
                system="Be brief.",
                max_tokens=200,
                messages=messages,
                extra_headers=headers,
            )
            done = raw.parse()
            text = "".join(b.text for b in done.content if b.type == "text")
            return Outcome(
                text, [raw.headers[REQUEST_ID]], finish=done.stop_reason, usage=done.usage
            )
        with self.client.messages.stream(
            model=model,
            system="Be brief.",
            max_tokens=200,
            messages=messages,
            extra_headers=headers,
        ) as stream:
            final = stream.get_final_message()
            rid = stream.response.headers[REQUEST_ID]
        text = "".join(b.text for b in final.content if b.type == "text")
        return Outcome(text, [rid], finish=final.stop_reason, usage=final.usage)

    def tool_round_trip(self, model: str) -> Outcome:
        tools: Any = [{"name": TOOL, "description": "Weather", "input_schema": SCHEMA}]
        messages: Any = [{"role": "user", "content": "Weather in Paris?"}]
        with self.client.messages.stream(
            model=model,
            max_tokens=200,
            messages=messages,
            tools=tools,
            extra_headers=tool_headers(),
        ) as stream:
            first = stream.get_final_message()
            rid = stream.response.headers[REQUEST_ID]
        uses = [b for b in first.content if b.type == "tool_use"]
        messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
        messages.append(
            {
                "role": "user",
                "content": [
                    {"type": "tool_result", "tool_use_id": b.id, "content": TOOL_RESULT}
                    for b in uses
                ],
            }
        )
        raw = self.client.messages.with_raw_response.create(
            model=model,
            max_tokens=200,
            messages=messages,
            tools=tools,
            extra_headers=tool_headers(),
        )
        final = raw.parse()
        return Outcome(
            "".join(b.text for b in final.content if b.type == "text"),
            [rid, raw.headers[REQUEST_ID]],
            [(b.name, b.input) for b in uses],
            first.stop_reason,
        )

    def reply(self, model: str, stream: bool, headers: dict[str, str]) -> Outcome:
        messages: Any = [{"role": "user", "content": "go"}]
        if stream:
            with self.client.messages.stream(
                model=model, max_tokens=4096, messages=messages, extra_headers=headers
            ) as assembling:
                done = assembling.get_final_message()
                rid = assembling.response.headers[REQUEST_ID]
        else:
            raw = self.client.messages.with_raw_response.create(
                model=model, max_tokens=4096, messages=messages, extra_headers=headers
            )
            done, rid = raw.parse(), raw.headers[REQUEST_ID]
        return Outcome(
            "".join(b.text for b in done.content if b.type == "text"),
            [rid],
            [(b.name, b.input) for b in done.content if b.type == "tool_use"],
            done.stop_reason,
            thinking="".join(b.thinking for b in done.content if b.type == "thinking"),
        )


class GeminiCaller:
    protocol = "gemini"

    def __init__(self, proxy: Proxy) -> None:
        self.client = genai.Client(
            api_key=CALLER_KEY,
            http_options=gt.HttpOptions(
                httpx_client=proxy.http_client(),
                retry_options=gt.HttpRetryOptions(attempts=1),
            ),
        )

    @staticmethod
    def _config(headers: dict[str, str], **extra: Any) -> gt.GenerateContentConfig:
        return gt.GenerateContentConfig(
            http_options=gt.HttpOptions(headers=headers),
            system_instruction="Be brief.",
            **extra,
        )

    def text(self, model: str, prompt: str, stream: bool, headers: dict[str, str]) -> Outcome:
        config = self._config(headers, max_output_tokens=200)
        if not stream:
            done = self.client.models.generate_content(model=model, contents=prompt, config=config)
            assert done.sdk_http_response is not None and done.sdk_http_response.headers
            return Outcome(
                done.text or "",
                [done.sdk_http_response.headers[REQUEST_ID]],
                finish=str(done.candidates[0].finish_reason) if done.candidates else None,
                usage=done.usage_metadata,
            )
        chunks = list(
            self.client.models.generate_content_stream(model=model, contents=prompt, config=config)
        )
        first = chunks[0].sdk_http_response
        assert first is not None and first.headers
        return Outcome(
            "".join(c.text or "" for c in chunks),
            [first.headers[REQUEST_ID]],
            usage=chunks[-1].usage_metadata,
        )

    def tool_round_trip(self, model: str) -> Outcome:
        declaration = gt.FunctionDeclaration(
            name=TOOL, description="Weather", parameters_json_schema=SCHEMA
        )
        config = self._config(
            tool_headers(),
            tools=[gt.Tool(function_declarations=[declaration])],
            automatic_function_calling=gt.AutomaticFunctionCallingConfig(disable=True),
        )
        contents: list[Any] = [gt.Content(role="user", parts=[gt.Part(text="Weather in Paris?")])]
        chunks = list(
            self.client.models.generate_content_stream(
                model=model, contents=contents, config=config
            )
        )
        first_http = chunks[0].sdk_http_response
        assert first_http is not None and first_http.headers
        calls = [call for chunk in chunks for call in (chunk.function_calls or [])]
        model_parts = [
            part
            for chunk in chunks
            if chunk.candidates and chunk.candidates[0].content
            for part in chunk.candidates[0].content.parts or []
        ]
        contents.append(gt.Content(role="model", parts=model_parts))
        contents.append(
            gt.Content(
                role="user",
                parts=[
                    gt.Part(
                        function_response=gt.FunctionResponse(
                            id=call.id, name=call.name, response={"output": TOOL_RESULT}
                        )
                    )
                    for call in calls
                ],
            )
        )
        final = self.client.models.generate_content(model=model, contents=contents, config=config)
        assert final.sdk_http_response is not None and final.sdk_http_response.headers
        return Outcome(
            final.text or "",
            [first_http.headers[REQUEST_ID], final.sdk_http_response.headers[REQUEST_ID]],
            [(call.name, call.args) for call in calls],
        )

    def reply(self, model: str, stream: bool, headers: dict[str, str]) -> Outcome:
        config = gt.GenerateContentConfig(
            http_options=gt.HttpOptions(headers=headers),
            automatic_function_calling=gt.AutomaticFunctionCallingConfig(disable=True),
        )
        if stream:
            chunks = list(
                self.client.models.generate_content_stream(
                    model=model, contents="go", config=config
                )
            )
        else:
            chunks = [
                self.client.models.generate_content(model=model, contents="go", config=config)
            ]
        http = chunks[0].sdk_http_response
        assert http is not None and http.headers
        parts = [
            part
            for chunk in chunks
            if chunk.candidates and chunk.candidates[0].content
            for part in chunk.candidates[0].content.parts or []
        ]
        return Outcome(
            "".join(p.text or "" for p in parts if not p.thought),
            [http.headers[REQUEST_ID]],
            [(p.function_call.name, p.function_call.args) for p in parts if p.function_call],
            thinking="".join(p.text or "" for p in parts if p.thought),
        )


CALLERS = {
    "openai_chat": ChatCaller,
    "openai_responses": ResponsesCaller,
    "anthropic_messages": AnthropicCaller,
    "gemini": GeminiCaller,
}
