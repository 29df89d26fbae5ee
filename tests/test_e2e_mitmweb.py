"""mitmweb as a conversation inspector, in a real headless browser.

A real `mitmweb` runs llmgate against the emulator; the official openai SDK makes
a buffered call and the anthropic SDK a streamed one through it. Debian's
chromium, driven by playwright from pip, then opens mitmweb's UI, selects each
flow and must see, in the "LLM conversation" view picked automatically, the
prompt on the request and the reply (for the stream, reassembled) on the
response, and the comment llmgate left in the flow list. The test saves the
screenshot the README shows (docs/mitmweb-conversation.png, remade with LLMGATE_SCREENSHOT=1).

It never skips: without chromium it installs it (`apt-get install chromium`, as
`./run.sh test` does first), or fails saying why.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import anthropic
import openai
import pytest
from playwright.sync_api import Page, expect, sync_playwright

from tests.conftest import CALLER_KEY, UPSTREAM_KEYS, emulator_policy
from tests.emulator import HEADER_REPLY, Emulator
from tests.proxy import MITMWEB, ROOT, Proxy, free_port

CHROMIUM = Path("/usr/bin/chromium")
# The README's screenshot is remade only on request (LLMGATE_SCREENSHOT=1): every run
# would otherwise leave the committed picture changed (ports, times).
SCREENSHOT = ROOT / "docs" / "mitmweb-conversation.png"
WEB_PASSWORD = "llmgate-e2e-web"
# mitmweb's default columns, and the comment llmgate writes (as `./run.sh web` sets).
COLUMNS = ["tls", "icon", "path", "method", "status", "size", "time", "comment"]

BUFFERED_PROMPT = "Which city is the capital of Peru?"
BUFFERED_REPLY = "Lima is the capital of Peru, on the Pacific coast."
STREAMED_PROMPT = "Name the river that flows through Cairo."
STREAMED_REPLY = "The Nile flows through Cairo on its way to the Mediterranean."
# Logged (pii: log): the call completes, with a finding.
PHONE = "+1 415 555 0134"
PHONE_PROMPT = f"Draft a text to {PHONE} about the Lima trip."
# Blocked (secrets: block): the call is denied.
AWS_ID = "AKIA" + "Q3EXAMPLE7RT2ZKD"


def ensure_chromium() -> Path:
    """Debian's chromium, installed now if missing; a failure says why (never a skip)."""
    if CHROMIUM.exists():
        return CHROMIUM
    apt = shutil.which("apt-get")
    if apt is None or os.geteuid() != 0:
        pytest.fail(
            f"{CHROMIUM} is missing and this test cannot install it (needs root and apt-get): "
            "run `apt-get update && apt-get install -y chromium` (./run.sh test does)."
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for args in ([apt, "update"], [apt, "install", "-y", "chromium"]):
        done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            pytest.fail(
                f"`{' '.join(args)}` failed, so chromium is missing:\n{done.stderr[-2000:]}"
            )
    if not CHROMIUM.exists():
        pytest.fail(f"apt-get installed chromium, yet {CHROMIUM} does not exist")
    return CHROMIUM


@pytest.fixture(scope="module")
def mitmweb(
    tmp_path_factory: pytest.TempPathFactory, confdir: Path, emulator_server: Emulator
) -> Iterator[tuple[Proxy, int]]:
    policies_dir = tmp_path_factory.mktemp("mitmweb-policies")
    # Calls from this machine are alice's, so the comments name a user.
    routes = emulator_policy(emulator_server.url) + "identity:\n  client_addresses:\n"
    (policies_dir / "routes.yaml").write_text(routes + "    127.0.0.1/32: alice\n")
    (policies_dir / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    web_port = free_port()
    columns = [arg for column in COLUMNS for arg in ("--set", f"web_columns={column}")]
    db = tmp_path_factory.mktemp("mitmweb-ledger") / "audit.db"
    web = Proxy(
        policies_dir,
        db,
        confdir,
        upstream_ca=emulator_server.ca_path,
        env=UPSTREAM_KEYS,
        binary=MITMWEB,
        extra_args=[
            "--set", "web_open_browser=false",
            "--set", f"web_port={web_port}",
            "--set", f"web_password={WEB_PASSWORD}",
            *columns,
        ],
    )  # fmt: skip
    with web:
        yield web, web_port


def make_calls(proxy: Proxy) -> None:
    """One buffered call (openai SDK) and one streamed call (anthropic SDK); then one
    with a safety finding and one denied."""
    client = openai.OpenAI(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
    reply = client.chat.completions.create(
        model="gpt-4o-mini",
        messages=[{"role": "user", "content": BUFFERED_PROMPT}],
        extra_headers={HEADER_REPLY: BUFFERED_REPLY},
    )
    assert reply.choices[0].message.content == BUFFERED_REPLY

    claude = anthropic.Anthropic(api_key=CALLER_KEY, http_client=proxy.http_client(), max_retries=0)
    with claude.messages.stream(
        model="claude-haiku-4-5",
        max_tokens=200,
        messages=[{"role": "user", "content": STREAMED_PROMPT}],
        extra_headers={HEADER_REPLY: STREAMED_REPLY},
    ) as stream:
        assert "".join(stream.text_stream) == STREAMED_REPLY

    found = client.chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": PHONE_PROMPT}]
    )
    assert found.choices[0].message.content
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="gpt-4.1", messages=[{"role": "user", "content": f"my key is {AWS_ID}"}]
        )


def open_flow(page: Page, path: str) -> None:
    page.locator("tbody tr", has_text=path).click()


def show_tab(page: Page, name: str) -> None:
    page.locator(".nav-tabs a", has_text=name).first.click()


def test_mitmweb_shows_the_conversation_of_a_buffered_and_a_streamed_call(
    mitmweb: tuple[Proxy, int], tmp_path: Path
) -> None:
    chromium = ensure_chromium()
    proxy, web_port = mitmweb
    make_calls(proxy)

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1680, "height": 720})
            page.goto(f"http://127.0.0.1:{web_port}/?token={WEB_PASSWORD}")
            rows = page.locator("tbody tr")
            buffered_row = rows.filter(has_text="gpt-4o-mini")
            streamed_row = rows.filter(has_text="/v1/messages")
            finding_row = rows.filter(has_text="· gpt-4o ·")
            denied_row = rows.filter(has_text="llmgate denied")

            # The flow list says who called which host, with what, at what cost.
            expect(buffered_row).to_contain_text(
                "api.openai.com · alice · gpt-4o-mini · ", timeout=15_000
            )
            expect(buffered_row).to_contain_text(" tok · $")
            expect(buffered_row).to_contain_text("completed")
            expect(streamed_row).to_contain_text("api.anthropic.com · alice · claude-haiku-4-5")
            # Marks: a finding is a warning, a denial a no-entry sign.
            expect(finding_row.locator(".marker")).to_contain_text("⚠")
            expect(denied_row.locator(".marker")).to_contain_text("⛔")
            expect(denied_row).to_contain_text("denied: safety_block")
            expect(buffered_row.locator(".marker")).to_have_text("")
            for row in (buffered_row, streamed_row, finding_row, denied_row):
                text = row.inner_text()
                assert CALLER_KEY not in text and AWS_ID not in text and PHONE not in text
                assert UPSTREAM_KEYS["UPSTREAM_OPENAI_KEY"] not in text

            view = page.locator(".contentview")
            for row, prompt, reply in (
                (buffered_row, BUFFERED_PROMPT, BUFFERED_REPLY),
                (streamed_row, STREAMED_PROMPT, STREAMED_REPLY),
            ):
                row.click()
                show_tab(page, "Request")
                expect(view.locator("h5")).to_have_text("LLM conversation")
                expect(view).to_contain_text("LLM request")
                expect(view).to_contain_text("[user]")
                expect(view).to_contain_text(prompt)
                show_tab(page, "Response")
                expect(view.locator("h5")).to_have_text("LLM conversation")
                expect(view).to_contain_text("[assistant]")
                expect(view).to_contain_text(reply)
                expect(view).to_contain_text("cost: $")
                assert "Content is missing" not in view.inner_text()
            # The streamed reply was put back together from its events.
            expect(view).to_contain_text("streamed (")
            _widen_the_comment_column(page)

            shot = SCREENSHOT if os.environ.get("LLMGATE_SCREENSHOT") else tmp_path / "shot.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000  # a real picture of the page
        finally:
            browser.close()


def _widen_the_comment_column(page: Page) -> None:
    """For the screenshot: a wider flow list, and room in it for the comments."""
    _drag(page, ".splitter-x", 200)
    _drag(page, "th.col-comment .col-resize-handle", 420)
    _drag(page, "th.col-path .col-resize-handle", -330)


def _drag(page: Page, selector: str, dx: float) -> None:
    box = page.locator(selector).first.bounding_box()
    assert box is not None, f"no {selector} in mitmweb's page"
    x, y = box["x"] + box["width"] / 2, box["y"] + min(box["height"] / 2, 20)
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + dx, y, steps=8)
    page.mouse.up()
