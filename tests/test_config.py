"""Policy files: validation errors name the file, the entry and the field."""

from __future__ import annotations

from pathlib import Path

import pytest

from addon.config import ConfigError, SafetySettings, load_config
from addon.credentials import read_secrets_file, storable_headers, strip_credential_params
from addon.routes import match_route, upstream_for
from tests.proxy import ROOT
from tests.strict import nonempty_glob

EXAMPLES = nonempty_glob(ROOT / "policies" / "examples", "*.yaml")


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


def test_first_matching_route_wins_whatever_protocol_its_provider_speaks(tmp_path: Path) -> None:
    config = load_config(
        write(
            tmp_path,
            "p.yaml",
            "routes:\n"
            "  - {id: claude, model_pattern: 'claude-*', provider: anthropic, endpoint: https://a.example}\n"
            "  - {id: exact, model_pattern: gpt-4o, provider: openai, endpoint: https://b.example}\n"
            "  - {id: suffix, model_pattern: '*-mini', provider: openai, endpoint: https://c.example}\n"
            "  - {id: prefix, model_pattern: 'gpt-*', provider: openai, endpoint: https://d.example}\n"
            "  - {id: all, model_pattern: '*', provider: openai, endpoint: https://e.example}\n"
            "  - {id: gem, model_pattern: '*', provider: gemini, endpoint: https://f.example,\n"
            "     callers: [gemini]}\n",
        )
    )
    pick = lambda model, caller="openai_chat": match_route(config.routes, model, caller).id  # noqa: E731
    assert pick("gpt-4o") == "exact"
    assert pick("gpt-4o-mini") == "suffix"
    assert pick("gpt-5") == "prefix"
    assert pick("claude-x") == "claude"  # translated: Chat in, Anthropic Messages out
    assert pick("claude-x", "anthropic_messages") == "claude"
    assert pick("gemini-2.5", "gemini") == "all"  # the first match, translated to Chat
    assert pick("gemini-2.5", "anthropic_messages") == "all"
    # A WebSocket's messages are not translated: only a route that speaks Responses.
    assert match_route(config.routes, "claude-x", "openai_responses", translate=False).id == "all"
    # `callers` narrows a route to the protocols it names.
    narrowed = load_config(
        write(
            tmp_path,
            "q.yaml",
            "routes:\n"
            "  - {id: gem, model_pattern: '*', provider: gemini, endpoint: https://f.example,\n"
            "     callers: [gemini]}\n",
        )
    )
    assert match_route(narrowed.routes, "x", "openai_chat") is None
    assert match_route(narrowed.routes, "x", "gemini").id == "gem"


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


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_policy_loads(example: Path) -> None:
    assert load_config(example).routes


# --- safety settings cannot silently weaken protection -------------------------------


def safety_error(tmp_path: Path, safety: str) -> str:
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "safety.yaml", f"safety:\n{safety}"))
    return str(err.value)


def test_a_misspelt_safety_category_is_an_error_naming_file_entry_and_field(
    tmp_path: Path,
) -> None:
    message = safety_error(tmp_path, "  request: {secret: block}\n")
    assert "safety.yaml: safety.request.secret: unknown safety category" in message
    assert "did you mean 'secrets'?" in message


def test_an_unknown_detector_is_an_error(tmp_path: Path) -> None:
    message = safety_error(tmp_path, "  response: {openai_keys: redact}\n")
    assert "safety.yaml: safety.response.openai_keys: unknown" in message
    assert "did you mean 'openai_key'?" in message


def test_an_unknown_action_is_an_error(tmp_path: Path) -> None:
    message = safety_error(tmp_path, "  request: {secrets: blok}\n")
    assert "safety.yaml: safety.request.secrets:" in message
    assert "'log', 'redact' or 'block'" in message


def test_a_bad_custom_regex_is_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    message = safety_error(tmp_path, "  custom_patterns: [{name: codename, regex: 'a(b'}]\n")
    assert "safety.custom_patterns[0] (name=codename).regex: not a valid regular expression" in (
        message
    )


def test_custom_pattern_names_act_as_detectors_and_may_not_reuse_built_in_names(
    tmp_path: Path,
) -> None:
    config = load_config(
        write(
            tmp_path,
            "ok.yaml",
            "safety:\n  request: {codename: block}\n"
            "  custom_patterns: [{name: codename, regex: 'ZEBRA'}]\n",
        )
    )
    assert config.safety.action("request", "custom", "codename") == "block"
    message = safety_error(tmp_path, "  custom_patterns: [{name: email, regex: x}]\n")
    assert "safety.custom_patterns[0] (name=email).name: 'email' is a built-in name" in message


def test_an_empty_jailbreak_phrase_is_an_error(tmp_path: Path) -> None:
    message = safety_error(tmp_path, "  jailbreak_phrases: ['ignore me', ' ']\n")
    assert "safety.jailbreak_phrases[1]: a phrase must have at least one word" in message


def test_a_partial_safety_map_merges_over_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "p.yaml", "safety:\n  request: {pii: redact}\n"))
    action = config.safety.action
    assert action("request", "secrets", "openai_key") == "block"
    assert action("request", "pii", "email") == "redact"
    assert action("request", "pii", "credit_card") == "redact"
    assert action("response", "secrets", "openai_key") == "log"


def test_a_category_the_user_sets_beats_a_default_for_one_of_its_detectors() -> None:
    # The defaults redact card numbers; `pii: block` must block them, not redact them.
    settings = SafetySettings(request={"pii": "block"})
    assert settings.action("request", "pii", "credit_card") == "block"
    assert settings.action("request", "secrets", "jwt") == "block"
    assert SafetySettings(request={"credit_card": "log"}).request["secrets"] == "block"


# --- fallback routes rank below every user route ------------------------------------


def test_a_user_file_sorting_after_default_yaml_still_wins(tmp_path: Path) -> None:
    (tmp_path / "default.yaml").write_text((ROOT / "policies" / "default.yaml").read_text())
    route = "{id: team, model_pattern: 'gpt-*', provider: openai, endpoint: https://t.example}"
    write(tmp_path, "zz-team.yaml", f"routes:\n  - {route}\n")
    config = load_config(tmp_path)
    assert match_route(config.routes, "gpt-4o", "openai_chat").id == "team"
    assert match_route(config.routes, "o3", "openai_chat").id == "openai"  # the fallback
    assert [r.id for r in config.fallback_routes] == ["openai", "anthropic", "gemini"]


def test_the_team_example_copied_beside_default_yaml_is_live(tmp_path: Path) -> None:
    for source in (ROOT / "policies" / "default.yaml", ROOT / "policies/examples/team.yaml"):
        (tmp_path / source.name).write_text(source.read_text())
    config = load_config(tmp_path)
    assert match_route(config.routes, "gpt-4.1", "openai_chat").id == "openai-team"
    assert match_route(config.routes, "claude-default", "anthropic_messages").id == "claude-default"
    assert match_route(config.routes, "gemini-2.5-pro", "gemini").id == "gemini"


@pytest.mark.parametrize("example", EXAMPLES)
def test_every_example_loads_beside_the_shipped_default(tmp_path: Path, example: Path) -> None:
    (tmp_path / "default.yaml").write_text((ROOT / "policies" / "default.yaml").read_text())
    (tmp_path / example.name).write_text(example.read_text())
    assert load_config(tmp_path).user_routes


def test_route_ids_are_unique_across_routes_and_fallback_routes(tmp_path: Path) -> None:
    write(tmp_path, "a.yaml", "fallback_routes:\n"
          "  - {id: same, provider: openai, endpoint: https://a.example}\n")  # fmt: skip
    write(tmp_path, "b.yaml", "routes:\n"
          "  - {id: same, provider: openai, endpoint: https://b.example}\n")  # fmt: skip
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path)
    assert "a.yaml: fallback_routes[0] (id=same).id: route id 'same' is used twice" in str(
        err.value
    )
    assert "(first in " in str(err.value) and "b.yaml: routes[0] (id=same))" in str(err.value)
