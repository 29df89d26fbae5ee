"""Policy files: validation errors name the file, the entry and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from addon.config import ConfigError, load_config
from addon.credentials import read_secrets_file, storable_headers, strip_credential_params
from addon.routes import match_route, upstream_for
from tests.proxy import ROOT


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_default_policy_loads_and_intercepts_the_providers() -> None:
    config = load_config(ROOT / "policies")
    assert {r.provider for r in config.routes} == {"openai", "anthropic", "gemini"}
    assert all(r.api_key_secret is None for r in config.routes)
    assert "api.anthropic.com" in config.intercepted_hosts()


def test_unknown_key_names_file_entry_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.yaml",
        "routes:\n  - {id: ok, provider: openai, endpoint: https://a.example}\n"
        "  - {id: typo, provider: openai, endpoint: https://a.example, modle_pattern: x}\n",
    )
    with pytest.raises(ConfigError) as err:
        load_config(path)
    message = str(err.value)
    assert "bad.yaml" in message and "routes[1] (id=typo)" in message
    assert "modle_pattern" in message and "unknown field" in message


def test_errors_in_a_directory_name_the_file_the_entry_came_from(tmp_path: Path) -> None:
    write(
        tmp_path, "a.yaml", "routes:\n  - {id: a, provider: openai, endpoint: https://a.example}\n"
    )
    write(tmp_path, "b.yaml", "routes:\n  - {id: b, provider: nope, endpoint: https://b.example}\n")
    with pytest.raises(ConfigError, match=r"b\.yaml: routes\[1\] \(id=b\)\.provider"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "snippet",
    [
        "{id: x, provider: openai, endpoint: not-a-url}",
        "{id: x, provider: openai, endpoint: https://a.example, model_pattern: 'a*b*'}",
        "{id: x, provider: openai, endpoint: https://a.example, model_pattern: 'a*b'}",
    ],
)
def test_bad_route_values_are_rejected(tmp_path: Path, snippet: str) -> None:
    with pytest.raises(ConfigError, match="routes"):
        load_config(write(tmp_path, "p.yaml", f"routes:\n  - {snippet}\n"))


def test_duplicate_route_ids_are_rejected(tmp_path: Path) -> None:
    route = "{id: same, provider: openai, endpoint: https://a.example}"
    with pytest.raises(ConfigError, match="used twice"):
        load_config(write(tmp_path, "p.yaml", f"routes:\n  - {route}\n  - {route}\n"))


def test_first_matching_route_of_the_callers_provider_wins(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "p.yaml",
            "routes:\n"
            "  - {id: claude, model_pattern: 'claude-*', provider: anthropic, endpoint: https://a.example}\n"
            "  - {id: exact, model_pattern: gpt-4o, provider: openai, endpoint: https://b.example}\n"
            "  - {id: suffix, model_pattern: '*-mini', provider: openai, endpoint: https://c.example}\n"
            "  - {id: prefix, model_pattern: 'gpt-*', provider: openai, endpoint: https://d.example}\n"
            "  - {id: all, model_pattern: '*', provider: openai, endpoint: https://e.example}\n",
        )
    )
    pick = lambda model, provider="openai": match_route(config.routes, model, provider).id  # noqa: E731
    assert pick("gpt-4o") == "exact"
    assert pick("gpt-4o-mini") == "suffix"
    assert pick("gpt-5") == "prefix"
    assert pick("claude-x") == "all"  # an anthropic route never serves an OpenAI call
    assert pick("claude-x", "anthropic") == "claude"
    assert match_route(config.routes, "gemini-2.5", "gemini") is None


def test_upstream_url_joins_base_path_and_the_versioned_tail(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "p.yaml",
            "routes:\n  - {id: r, provider: openai, endpoint: 'http://127.0.0.1:9000/proxy/'}\n",
        )
    )
    up = upstream_for(config.routes[0], "/openai/v1/chat/completions?x=1")
    assert (up.scheme, up.host, up.port, up.path) == (
        "http", "127.0.0.1", 9000, "/proxy/v1/chat/completions?x=1",
    )  # fmt: skip


def test_credentials_are_never_kept(tmp_path: Path) -> None:
    headers = {"Authorization": "Bearer sk-1", "X-Api-Key": "k", "x-goog-api-key": "g",
               "Cookie": "c", "content-type": "application/json"}  # fmt: skip
    assert storable_headers(headers) == {"content-type": "application/json"}
    assert strip_credential_params("/v1beta/models/m:generateContent?key=AIza1&alt=sse") == (
        "/v1beta/models/m:generateContent?alt=sse"
    )
    secrets = write(tmp_path, "secrets.env", "# comment\nexport A=1\nB='two'\n")
    assert read_secrets_file(secrets) == {"A": "1", "B": "two"}
    with pytest.raises(ValueError) as err:
        read_secrets_file(write(tmp_path, "bad.env", "sk-live-not-a-pair\n"))
    assert "sk-live" not in str(err.value)


@pytest.mark.parametrize("example", sorted((ROOT / "policies" / "examples").glob("*.yaml")))
def test_every_example_policy_loads(example: Path) -> None:
    assert load_config(example).routes
