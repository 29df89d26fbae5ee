"""`llmgate check`: every foot-gun in a policy directory is an error or a warning.

Errors exit 1 and name the file, the entry and the field; warnings exit 0.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from addon.checks import config_warnings, covers
from addon.cli import main
from addon.config import ConfigError, load_config
from addon.credentials import SecretStore
from addon.ledger.pricing import load_pricing
from addon.routes import match_route
from tests.proxy import ROOT

SECRET = "LLMGATE_TEST_CHECK_SECRET"
Check = Callable[..., tuple[int, str, str]]


@pytest.fixture
def check(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Check:
    monkeypatch.delenv("LLMGATE_SECRETS", raising=False)
    monkeypatch.delenv(SECRET, raising=False)

    def run(*args: str) -> tuple[int, str, str]:
        try:
            main(["check", *args])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        out, err = capsys.readouterr()
        return code, out, err

    return run


def policies(tmp_path: Path, files: dict[str, str], with_default: bool = False) -> Path:
    directory = tmp_path / "policies"
    directory.mkdir(parents=True)
    if with_default:
        (directory / "default.yaml").write_text((ROOT / "policies" / "default.yaml").read_text())
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def route(id: str, pattern: str, provider: str = "openai", extra: str = "") -> str:
    return (
        f"  - {{id: {id}, model_pattern: '{pattern}', provider: {provider}, "
        f"endpoint: https://{id}.example{extra}}}\n"
    )


def test_the_shipped_policies_check_clean(check: Check) -> None:
    code, out, err = check(str(ROOT / "policies"))
    assert code == 0 and out.startswith("OK: 3 routes (3 fallback)") and err == ""


# --- errors ------------------------------------------------------------------------


def test_a_misspelt_safety_category_fails_the_check(check: Check, tmp_path: Path) -> None:
    directory = policies(tmp_path, {"safety.yaml": "safety:\n  request: {secret: block}\n"}, True)
    code, out, err = check(str(directory))
    assert code == 1 and "OK" not in out
    assert "safety.yaml: safety.request.secret: unknown safety category" in err
    assert "did you mean 'secrets'?" in err


def test_an_unknown_detector_fails_the_check(check: Check, tmp_path: Path) -> None:
    directory = policies(tmp_path, {"s.yaml": "safety:\n  request: {aws_key: block}\n"})
    code, _, err = check(str(directory))
    assert code == 1 and "s.yaml: safety.request.aws_key: unknown" in err


def test_an_unknown_action_fails_the_check(check: Check, tmp_path: Path) -> None:
    directory = policies(tmp_path, {"s.yaml": "safety:\n  response: {secrets: mask}\n"})
    code, _, err = check(str(directory))
    assert code == 1 and "s.yaml: safety.response.secrets: Input should be 'log'" in err


def test_a_bad_regex_fails_the_check_without_a_traceback(check: Check, tmp_path: Path) -> None:
    text = "safety:\n  custom_patterns: [{name: codename, regex: '[unclosed'}]\n"
    code, _, err = check(str(policies(tmp_path, {"s.yaml": text})))
    assert code == 1 and "Traceback" not in err
    assert "safety.custom_patterns[0] (name=codename).regex: not a valid regular expression" in err


def test_a_partial_safety_map_keeps_the_defaults(check: Check, tmp_path: Path) -> None:
    directory = policies(tmp_path, {"s.yaml": "safety:\n  request: {pii: redact}\n"}, True)
    code, out, _ = check(str(directory))
    assert code == 0 and out.startswith("OK")
    safety = load_config(directory).safety
    assert safety.action("request", "secrets", "openai_key") == "block"
    assert safety.action("request", "pii", "email") == "redact"


# --- the shipped catch-alls rank below the user's files -----------------------------


def test_a_user_file_sorting_after_default_yaml_still_wins(check: Check, tmp_path: Path) -> None:
    directory = policies(tmp_path, {"team.yaml": "routes:\n" + route("mine", "gpt-*")}, True)
    code, out, err = check(str(directory))
    assert code == 0 and "shadowed" not in err
    assert match_route(load_config(directory).routes, "gpt-4o", "openai_chat").id == "mine"


def test_the_team_example_copied_beside_default_yaml_is_live(check: Check, tmp_path: Path) -> None:
    team = (ROOT / "policies" / "examples" / "team.yaml").read_text()
    directory = policies(tmp_path, {"team.yaml": team}, True)
    code, _, err = check(str(directory))
    assert code == 0 and "shadowed" not in err
    routes = load_config(directory).routes
    assert match_route(routes, "gpt-5", "openai_chat").id == "openai-team"
    assert match_route(routes, "claude-sonnet-4-5", "anthropic_messages").id == "anthropic-team"


# --- warnings ----------------------------------------------------------------------


def test_a_shadowed_route_is_a_warning(check: Check, tmp_path: Path) -> None:
    text = (
        "routes:\n"
        + route("all", "*")
        + route("exact", "gpt-4o", extra=", pricing: {input: 1, output: 1}")
    )
    code, out, err = check(str(policies(tmp_path, {"r.yaml": text})))
    assert code == 0 and out.startswith("OK with 1 warning(s)")
    assert "warning: route 'exact' (model_pattern 'gpt-4o') is shadowed" in err
    assert "route 'all' (model_pattern '*')" in err


def test_an_unset_secret_is_a_warning_until_it_is_set(
    check: Check, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = policies(
        tmp_path,
        {"r.yaml": "routes:\n" + route("team", "gpt-*", extra=f", api_key_secret: {SECRET}")},
    )
    code, _, err = check(str(directory))
    assert code == 0 and f"warning: secret {SECRET} is not set" in err and "'team'" in err
    secrets_file = tmp_path / "secrets.env"
    secrets_file.write_text(f"{SECRET}=sk-from-the-file\n")
    assert check(str(directory), "--secrets", str(secrets_file))[2] == ""
    monkeypatch.setenv("LLMGATE_SECRETS", str(secrets_file))
    assert check(str(directory))[2] == ""
    monkeypatch.delenv("LLMGATE_SECRETS")
    monkeypatch.setenv(SECRET, "sk-from-the-environment")
    assert check(str(directory))[2] == ""


def test_a_missing_secrets_file_is_an_error(check: Check, tmp_path: Path) -> None:
    code, _, err = check(str(ROOT / "policies"), "--secrets", str(tmp_path / "nope.env"))
    assert code == 1 and "secrets file not found" in err


def test_a_model_without_a_price_is_a_warning(check: Check, tmp_path: Path) -> None:
    text = "routes:\n" + "".join(
        [
            route("exact", "my-model"),
            route("rewritten", "alias", extra=", upstream_model: mystery-2"),
            route("priced", "own-model", extra=", pricing: {input: 1, output: 2}"),
            route("known", "team", extra=", upstream_model: gpt-4o-mini"),
            route("pattern", "local-*"),
        ]
    )
    code, _, err = check(str(policies(tmp_path, {"r.yaml": text})))
    assert code == 0
    assert "route 'exact': no price for model 'my-model'" in err
    assert "route 'rewritten': no price for model 'mystery-2'" in err
    assert err.count("warning:") == 2


def test_a_custom_policies_directory_still_prices_gpt_4o_mini(check: Check, tmp_path: Path) -> None:
    directory = policies(tmp_path, {"r.yaml": "routes:\n" + route("mini", "gpt-4o-mini")})
    assert not (directory / "pricing.yaml").exists()
    price = load_pricing(directory / "pricing.yaml").price_for("gpt-4o-mini-2024-07-18")
    assert price is not None and price.input == 0.15
    code, out, err = check(str(directory))
    assert code == 0 and "no price" not in err and "28 priced models" in out


def test_a_user_pricing_yaml_overlays_the_built_in_table(tmp_path: Path) -> None:
    overlay = tmp_path / "pricing.yaml"
    overlay.write_text(
        "models:\n  gpt-4o: {input: 1, output: 2}\n  my-fine-tune: {input: 3, output: 4}\n"
    )
    table = load_pricing(overlay)
    assert table.price_for("gpt-4o-2024-08-06").input == 1  # the user's entry wins
    assert table.price_for("my-fine-tune-v2").output == 4  # the user's entry is added
    assert table.price_for("gpt-4o-mini").input == 0.15  # the longer built-in prefix stays
    assert table.price_for("claude-sonnet-4-5").input == 3  # the rest of the table stays


def test_check_exits_0_on_warnings_and_1_on_errors_as_a_real_command(tmp_path: Path) -> None:
    llmgate = Path(sys.executable).parent / "llmgate"
    warn = policies(tmp_path, {"r.yaml": "routes:\n" + route("a", "*") + route("b", "*")})
    result = subprocess.run([llmgate, "check", str(warn)], capture_output=True, text=True)
    assert result.returncode == 0 and "warning: route 'b'" in result.stderr
    (warn / "s.yaml").write_text("safety:\n  request: {secret: block}\n")
    result = subprocess.run([llmgate, "check", str(warn)], capture_output=True, text=True)
    assert result.returncode == 1 and "safety.request.secret" in result.stderr


# --- the warning logic, as the gateway would call it --------------------------------


@pytest.mark.parametrize(
    ("earlier", "later", "shadowed"),
    [
        ("*", "anything", True),
        ("*", "gpt-*", True),
        ("gpt-*", "gpt-4*", True),
        ("gpt-*", "gpt-4o", True),
        ("gpt-*", "gpt-", True),
        ("gpt-4o", "gpt-4o", True),
        ("*-mini", "gpt-4o-mini", True),
        ("*-mini", "*o-mini", True),
        ("gpt-*", "gpt-*", True),
        ("gpt-4*", "gpt-*", False),
        ("gpt-*", "*", False),
        ("gpt-*", "*-mini", False),
        ("*-mini", "gpt-*", False),
        ("gpt-4o", "gpt-4o*", False),
        ("gpt-4o", "gpt-4o-mini", False),
        ("gpt-?o", "gpt-4o", False),  # fnmatch's other wildcards: not reasoned about
        ("gpt-*", "gpt-[45]o", False),
    ],
)
def test_covers_is_certain_or_silent(earlier: str, later: str, shadowed: bool) -> None:
    assert covers(earlier, later) is shadowed


def test_config_warnings_ignore_other_callers_and_fallbacks_hidden_by_user_routes(
    tmp_path: Path,
) -> None:
    claude_only = ", callers: [anthropic_messages]"
    directory = policies(
        tmp_path,
        {
            "r.yaml": "routes:\n"
            + route("claude", "*", "anthropic", claude_only)
            + route("gpt", "*")
        },
        with_default=True,
    )
    warnings = config_warnings(load_config(directory), load_pricing(None), SecretStore())
    assert warnings == []  # default.yaml's fallbacks are meant to be hidden by these
    # Without `callers`, a catch-all route translates every caller: the next one is dead.
    wide = policies(
        tmp_path / "w",
        {"r.yaml": "routes:\n" + route("claude", "*", "anthropic") + route("gpt", "*")},
    )
    shadowed = config_warnings(load_config(wide), load_pricing(None), SecretStore())
    assert [w.split(" (")[0] for w in shadowed] == ["route 'gpt'"]
    text = "fallback_routes:\n" + route("one", "*") + route("two", "gpt-*")
    config = load_config(policies(tmp_path / "b", {"f.yaml": text}))
    assert [w.split(" (")[0] for w in config_warnings(config, load_pricing(None), {})] == [
        "route 'two'"
    ]


def test_the_route_table_shows_each_routes_timeouts(check: Check, tmp_path: Path) -> None:
    timeouts = ", connect_timeout_s: 3, first_byte_timeout_s: 42, idle_timeout_s: 7.5"
    directory = policies(
        tmp_path, {"r.yaml": "routes:\n" + route("slowpoke", "gpt-*", extra=timeouts)}
    )
    code, out, _ = check(str(directory))
    assert code == 0
    assert (
        "  slowpoke: gpt-* -> openai https://slowpoke.example (key: the caller's); "
        "timeouts: connect 3 s, first byte 42 s, idle 7.5 s"
    ) in out.splitlines()
    assert "audit.on_failure: refuse" in out.replace("\n", " ")


def test_the_route_table_says_which_callers_each_route_serves_and_translates(
    check: Check, tmp_path: Path
) -> None:
    text = (
        "routes:\n"
        + route("claude", "claude-*", "anthropic", ", fallbacks: [local]")
        + route("local", "llama-*", "openai_chat")
        + route("gem", "gemini-*", "gemini", ", callers: [gemini]")
    )
    code, out, _ = check(str(policies(tmp_path, {"r.yaml": text})))
    assert code == 0
    lines = out.splitlines()
    assert (
        "    serves: openai_chat (translated to anthropic_messages), openai_responses "
        "(translated to anthropic_messages), anthropic_messages, gemini (translated to "
        "anthropic_messages)"
    ) in lines
    assert "    fallbacks: local" in lines
    assert (
        "    serves: openai_chat, openai_responses (translated to openai_chat), "
        "anthropic_messages (translated to openai_chat), gemini (translated to openai_chat)"
    ) in lines
    assert "    serves: gemini" in lines


def test_a_fallback_must_name_another_existing_route(tmp_path: Path) -> None:
    text = "routes:\n" + route("a", "x", extra=", fallbacks: [a, nowhere]")
    with pytest.raises(ConfigError) as raised:
        load_config(policies(tmp_path, {"r.yaml": text}))
    message = str(raised.value)
    assert "routes[0] (id=a).fallbacks[0]: a route cannot be its own fallback" in message
    assert "routes[0] (id=a).fallbacks[1]: no route has the id 'nowhere'" in message
