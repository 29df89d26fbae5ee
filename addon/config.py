"""The policy files: pydantic models, loading, validation with precise errors.

`LLMGATE_POLICIES` names a file or a directory. In a directory every `*.yaml`
except `pricing.yaml` is a policy file, read in name order; `routes`,
`fallback_routes`, `intercept_hosts` and `policies` lists are concatenated in
that order and any other top-level section may appear in one file only.
`fallback_routes` are tried after every file's `routes`, so the shipped
catch-alls never shadow a user's routes whatever the file names.
`pricing.yaml` beside the policies overlays the built-in price table.

Nothing in a policy file may weaken protection by being misread: unknown keys,
safety categories, detector names and actions are errors that name the file,
the entry and the field.
"""

from __future__ import annotations

import fnmatch
import ipaddress
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator
from pydantic_core import ErrorDetails

from addon.safety.settings import DEFAULT_REQUEST_ACTIONS as DEFAULT_REQUEST_ACTIONS
from addon.safety.settings import DEFAULT_RESPONSE_ACTIONS as DEFAULT_RESPONSE_ACTIONS
from addon.safety.settings import SafetyAction as SafetyAction
from addon.safety.settings import SafetySettings
from addon.schema import ConfigError, Loc, Problem, problems_error
from addon.schema import Strict as _Strict

# `openai` speaks Chat Completions and Responses; `openai_chat` is an
# OpenAI-compatible server that speaks only Chat Completions (vLLM, Ollama,
# llama.cpp), so a Responses caller is translated for it.
Provider = Literal["openai", "openai_chat", "anthropic", "gemini"]
CallerProtocol = Literal["openai_chat", "openai_responses", "anthropic_messages", "gemini"]

# Hosts intercepted even when no route names them: callers talk to these.
PROVIDER_BY_HOST = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gemini",
}
PROVIDER_HOSTS = tuple(PROVIDER_BY_HOST)


class Pricing(_Strict):
    """US dollars per million tokens."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    cache_read: float | None = Field(default=None, ge=0)
    cache_write: float | None = Field(default=None, ge=0)


class Route(_Strict):
    id: str
    model_pattern: str = "*"
    provider: Provider
    endpoint: str
    api_key_secret: str | None = None
    upstream_model: str | None = None
    extra_headers: dict[str, str] = Field(default_factory=dict)
    pricing: Pricing | None = None
    # Long generations are normal, dead peers are not: a buffered reply's headers
    # come only when the whole generation is done, so first_byte waits as long as
    # the official SDKs do (600 s); a stream that goes quiet for idle_timeout_s
    # (between events, or between the chunks of a buffered body) is a dead peer.
    connect_timeout_s: float = Field(default=10.0, gt=0)
    first_byte_timeout_s: float = Field(default=600.0, gt=0)
    idle_timeout_s: float = Field(default=300.0, gt=0)
    # The caller protocols this route serves; absent, every one (translated when
    # the provider speaks another protocol). A pass-through route forwarding the
    # caller's own key should name its own protocols: a key is only good at the
    # provider it was made for.
    callers: list[CallerProtocol] | None = None
    # Route ids tried in order when this route's upstream cannot be reached, times
    # out before its first byte, or answers 429/500/502/503/504 before anything
    # reached the caller. Only this route's list is followed, never a fallback's.
    fallbacks: list[str] = Field(default_factory=list)

    @field_validator("endpoint")
    @classmethod
    def _endpoint_is_a_base_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be a base URL such as https://api.openai.com")
        if parts.query or parts.fragment:
            raise ValueError("must not carry a query or fragment")
        return value.rstrip("/")

    @field_validator("model_pattern")
    @classmethod
    def _pattern_is_supported(cls, value: str) -> str:
        stars = value.count("*")
        if stars > 1 or (stars == 1 and not (value.startswith("*") or value.endswith("*"))):
            raise ValueError("use 'exact', 'prefix*', '*suffix' or '*'")
        return value

    def matches(self, model: str) -> bool:
        return fnmatch.fnmatchcase(model, self.model_pattern)

    @property
    def host(self) -> str:
        return urlsplit(self.endpoint).hostname or ""


class QuotaWindow(_Strict):
    """A sliding window of `window_seconds`; any limit left out is not enforced."""

    window_seconds: int = Field(gt=0)
    scope: Literal["user", "group", "global"] = "user"
    max_requests: int | None = Field(default=None, ge=0)
    max_input_tokens: int | None = Field(default=None, ge=0)
    max_output_tokens: int | None = Field(default=None, ge=0)
    max_cost_usd: float | None = Field(default=None, ge=0)
    name: str | None = None

    @property
    def label(self) -> str:
        return self.name or f"{self.scope}-{self.window_seconds}s"


class AuditSettings(_Strict):
    payload_max_bytes: int = Field(default=262_144, ge=0)
    # refuse: a call whose opening row cannot be committed is answered 503 and
    # never forwarded. serve: it goes through, and the loss is counted and logged.
    on_failure: Literal["refuse", "serve"] = "refuse"
    # SQLite's synchronous setting in WAL mode. normal: a committed row survives
    # the process dying (kill -9); full: it also survives power loss (one fsync per
    # group commit).
    synchronous: Literal["normal", "full"] = "normal"
    # On SIGTERM/SIGINT, in-flight calls get this long to finish before they are
    # closed as `interrupted`.
    drain_seconds: float = Field(default=5.0, ge=0)


class LimitSettings(_Strict):
    """Bounds on what one call may make llmgate hold in memory."""

    # Well above a 1 MB prompt (with images, several MB); past it: 413.
    max_request_bytes: int = Field(default=32 * 1024 * 1024, gt=0)
    # One SSE event or one streamed JSON element; past it the stream is ended
    # with an error event and the row is failed/event_too_large.
    max_event_bytes: int = Field(default=8 * 1024 * 1024, gt=0)


class AppliesTo(_Strict):
    users: list[str] = Field(default_factory=list)
    groups: list[str] = Field(default_factory=list)


class OutputCap(_Strict):
    limit: int = Field(gt=0)
    action: Literal["clamp", "deny"] = "clamp"


class PolicyRule(_Strict):
    """One entry of `policies:`. A field left out (None) inherits from less specific rules."""

    name: str
    applies_to: AppliesTo = Field(default_factory=lambda: AppliesTo(users=["*"]))
    allowed_models: list[str] | None = None
    denied_models: list[str] | None = None
    max_input_tokens_per_call: int | None = Field(default=None, gt=0)
    max_output_tokens: OutputCap | None = None
    allowed_routes: list[str] | None = None
    allowed_providers: list[Provider] | None = None
    allow_unparsed: bool | None = None
    # Path globs (e.g. "/v1/batches*") of unparsed endpoints that may carry an
    # llmgate credential; see policy.check_unparsed.
    allowed_endpoints: list[str] | None = None
    quota_windows: list[QuotaWindow] = Field(default_factory=list)


class IdentitySettings(_Strict):
    default_user: str | None = "anonymous"
    client_addresses: dict[str, str] = Field(default_factory=dict)
    groups: dict[str, list[str]] = Field(default_factory=dict)
    proxy_auth: str | None = None

    @field_validator("client_addresses")
    @classmethod
    def _cidrs_parse(cls, value: dict[str, str]) -> dict[str, str]:
        for cidr in value:
            ipaddress.ip_network(cidr, strict=False)
        return value


class QuotaSettings(_Strict):
    default_output_reservation: int = Field(default=4096, gt=0)
    # Where the quota counters live: absent, SQLite beside the ledger (<db>.quota);
    # redis://host:port/db (or rediss://, unix://) shares them across a fleet.
    # The LLMGATE_QUOTA environment variable (option llmgate_quota) wins over this.
    store: str | None = None
    # Redis only: how long an unsettled reservation counts at most (a crashed
    # process's expire on their own). Absent: 2 x the longest first_byte_timeout_s
    # of the routes + 60 s. It must exceed the longest call (see the README).
    reservation_ttl_s: float | None = Field(default=None, gt=0)
    # The store cannot be reached: refuse the call (503 quota_unavailable), or
    # "allow" it unmetered (logged per call). Refusing is the default: a budget
    # that cannot be checked is not granted.
    on_unavailable: Literal["refuse", "allow"] = "refuse"

    @field_validator("store")
    @classmethod
    def _a_redis_url(cls, value: str | None) -> str | None:
        if value is not None and urlsplit(value).scheme not in ("redis", "rediss", "unix"):
            raise ValueError("quota.store must be a redis://, rediss:// or unix:// URL")
        return value


class GatewayConfig(_Strict):
    """The merged policy files. `routes` is what routing sees: the files' `routes`,
    then their `fallback_routes` (the section is `routes` in YAML; `user_routes` here)."""

    user_routes: list[Route] = Field(default_factory=list, alias="routes")
    fallback_routes: list[Route] = Field(default_factory=list)
    intercept_hosts: list[str] = Field(default_factory=list)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    identity: IdentitySettings = Field(default_factory=IdentitySettings)
    policies: list[PolicyRule] = Field(default_factory=list)
    quota: QuotaSettings = Field(default_factory=QuotaSettings)
    limits: LimitSettings = Field(default_factory=LimitSettings)
    safety: SafetySettings = Field(default_factory=SafetySettings)
    # Built once: routing reads it on every call.
    _routes: list[Route] = PrivateAttr(default_factory=list)
    _by_id: dict[str, Route] = PrivateAttr(default_factory=dict)

    @model_validator(mode="after")
    def _ids_are_unique_and_fallbacks_last(self) -> GatewayConfig:
        first: dict[str, Loc] = {}
        problems: list[Problem] = []
        sections = (("routes", self.user_routes), ("fallback_routes", self.fallback_routes))
        for section, routes in sections:
            for i, route in enumerate(routes):
                if route.id in first:
                    message = f"route id {route.id!r} is used twice"
                    problems.append(Problem((section, i, "id"), message, first[route.id]))
                else:
                    first[route.id] = (section, i)
        for section, routes in sections:
            for i, route in enumerate(routes):
                for j, target in enumerate(route.fallbacks):
                    if target == route.id:
                        message = "a route cannot be its own fallback"
                        problems.append(Problem((section, i, "fallbacks", j), message))
                    elif target not in first:
                        message = f"no route has the id {target!r}"
                        problems.append(Problem((section, i, "fallbacks", j), message))
        if problems:
            raise problems_error(problems)
        self._routes = [*self.user_routes, *self.fallback_routes]
        self._by_id = {route.id: route for route in self._routes}
        return self

    def route(self, route_id: str) -> Route:
        return self._by_id[route_id]

    @property
    def routes(self) -> list[Route]:
        return self._routes

    def intercepted_hosts(self) -> list[str]:
        hosts = [*PROVIDER_HOSTS, *self.intercept_hosts, *(r.host for r in self.routes)]
        return list(dict.fromkeys(h.lower() for h in hosts))


_LIST_SECTIONS = ("routes", "fallback_routes", "intercept_hosts", "policies")


def policy_files(path: Path) -> list[Path]:
    if path.is_dir():
        files = sorted(p for p in path.glob("*.yaml") if p.name != "pricing.yaml")
        if not files:
            raise ConfigError(f"{path}: no policy files (*.yaml) in this directory")
        return files
    if not path.exists():
        raise ConfigError(f"{path}: no such file or directory (set LLMGATE_POLICIES)")
    return [path]


def _read_yaml(file: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{file}: not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{file}: the top level must be a mapping")
    return data


def _describe(loc: tuple[Any, ...], raw: dict[str, Any]) -> str:
    """('routes', 2, 'modle') -> "routes[2] (id=foo) field 'modle'"."""
    out: list[str] = []
    node: Any = raw
    for part in loc:
        if isinstance(part, int):
            out[-1] += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and ("id" in node or "name" in node):
                key = "id" if "id" in node else "name"
                out[-1] += f" ({key}={node[key]})"
        else:
            out.append(str(part))
            node = node.get(part) if isinstance(node, dict) else None
    return ".".join(out)


def load_config(path: Path) -> GatewayConfig:
    merged: dict[str, Any] = {}
    origin: dict[str | tuple[str, int], Path] = {}
    for file in policy_files(path):
        for key, value in _read_yaml(file).items():
            if key in _LIST_SECTIONS and isinstance(value, list):
                start = len(merged.setdefault(key, []))
                merged[key] = [*merged[key], *value]
                origin.update({(key, start + i): file for i in range(len(value))})
            elif key in merged:
                raise ConfigError(f"{file}: section '{key}' is already set in {origin[key]}")
            else:
                merged[key] = value
            origin.setdefault(key, file)
    try:
        return GatewayConfig.model_validate(merged)
    except ValidationError as exc:
        lines = []
        for problem in (p for err in exc.errors() for p in _problems_of(err)):
            where = f"{_file_of(problem.loc, origin, path)}: {_describe(problem.loc, merged)}"
            line = f"{where}: {problem.message}"
            if problem.see is not None:
                first = f"{_file_of(problem.see, origin, path)}: {_describe(problem.see, merged)}"
                line += f" (first in {first})"
            lines.append(line)
        raise ConfigError("\n".join(lines)) from None


def _problems_of(err: ErrorDetails) -> list[Problem]:
    loc = tuple(err["loc"])
    if err["type"] == "config_problems":
        return [
            Problem((*loc, *p.loc), p.message, None if p.see is None else (*loc, *p.see))
            for p in err.get("ctx", {})["problems"]
        ]
    if err["type"] == "extra_forbidden":
        return [Problem(loc, "unknown field")]
    return [Problem(loc, err["msg"].removeprefix("Value error, "))]


def _file_of(loc: Loc, origin: dict[str | tuple[str, int], Path], default: Path) -> Path:
    """The file an entry of a concatenated list came from, else the file of its section."""
    if len(loc) > 1 and isinstance(loc[1], int):
        entry = origin.get((str(loc[0]), loc[1]))
        if entry is not None:
            return entry
    return origin.get(str(loc[0]), default) if loc else default
