"""The ledger under faults, through a running llmgate: nothing lost, nothing pending.

- values that used to kill the writer thread, then ordinary calls: every row is there;
- a fault injected into the writer thread: nothing lost, the health page says so;
- a full disk (a 1 MB tmpfs when this host can mount one, else the writer's
  disk-full test hook): `refuse` answers 503 and sends nothing upstream, `serve`
  answers and counts the loss;
- SIGTERM and kill -9 with streams in flight: no row stays `pending`, quota
  reservations are settled or released, and a second live process sharing the
  ledger keeps its own calls.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from addon.ledger import journal
from addon.ledger.recovery import instances_dir
from tests.conftest import CALLER_KEY, UPSTREAM_KEYS
from tests.emulator import Emulator
from tests.hostile import REQUEST_ID, assert_error_format, exchange, http_request
from tests.proxy import ROOT, Proxy

HELLO = [{"role": "user", "content": "Say hello"}]


def write_policies(directory: Path, emulator: Emulator, extra: str = "") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "routes.yaml").write_text(
        textwrap.dedent(
            f"""\
            routes:
              - {{id: openai, model_pattern: "gpt-*", provider: openai,
                 endpoint: "{emulator.url}", api_key_secret: UPSTREAM_OPENAI_KEY}}
              - {{id: gemini, model_pattern: "gemini-*", provider: gemini,
                 endpoint: "{emulator.url}", api_key_secret: UPSTREAM_GEMINI_KEY}}
            """
        )
        + textwrap.dedent(extra)
    )
    (directory / "pricing.yaml").write_text((ROOT / "policies" / "pricing.yaml").read_text())
    return directory


def start_proxy(
    policies: Path, db: Path, confdir: Path, emulator: Emulator, log: Path | None = None, **env: str
) -> Proxy:
    return Proxy(
        policies, db, confdir, upstream_ca=emulator.ca_path, env={**UPSTREAM_KEYS, **env},
        log_path=log,
    ).start()  # fmt: skip


def chat(proxy: Proxy, model: str = "gpt-4o-mini", **headers: str) -> httpx2.Response:
    with proxy.http_client(timeout=30) as client:
        return client.post(
            "https://api.openai.com/v1/chat/completions",
            json={"model": model, "messages": HELLO},
            headers={"authorization": f"Bearer {CALLER_KEY}", **headers},
        )


def health(proxy: Proxy) -> dict:
    with httpx2.Client(proxy=proxy.url, timeout=10) as client:
        response = client.get("http://llmgate.internal/health")
    assert response.status_code == 200, response.text
    return response.json()


def ledger(db: Path, sql: str, *params: object) -> list[tuple]:
    conn = sqlite3.connect(db, timeout=10)
    try:
        return conn.execute(sql, params).fetchall()
    finally:
        conn.close()


def wait_for(condition, timeout: float = 15, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# --- the writer survives ----------------------------------------------------------------


def test_values_that_killed_the_writer_then_100_calls_leave_101_rows(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    policies = write_policies(tmp_path / "policies", emulator)
    db = tmp_path / "audit.db"
    proxy = start_proxy(policies, db, confdir, emulator)
    try:
        # 10**20 output tokens: sqlite3 raised OverflowError in the writer thread.
        killer = chat(proxy, **{"x-emulator-output-tokens": str(10**20)})
        assert killer.status_code == 200
        # A raw 0xFF in a Gemini model path; a lone surrogate in a model name.
        target = b"/v1beta/models/gemini-\xff:generateContent"
        host = "generativelanguage.googleapis.com"
        raw = http_request("POST", target, host, b"{}", {"x-goog-api-key": CALLER_KEY})
        odd_path = exchange(proxy, f"{host}:443", raw, sni=host)
        with proxy.http_client(timeout=30) as client:
            odd_model = client.post(
                "https://api.openai.com/v1/chat/completions",
                content=b'{"model": "gpt-\\ud800x", "messages": []}',
                headers={
                    "authorization": f"Bearer {CALLER_KEY}",
                    "content-type": "application/json",
                },
            )
        assert (odd_path.status_code, odd_model.status_code) == (400, 400)
        ids = [chat(proxy).headers[REQUEST_ID] for _ in range(100)]
        ids += [killer.headers[REQUEST_ID], odd_path.headers[REQUEST_ID]]
        ids.append(odd_model.headers[REQUEST_ID])
        closed = wait_for(
            lambda: (
                (rows := proxy.query("select id from requests where status != 'pending'"))
                and len(rows) >= len(ids)
                and rows
            ),
            what="every row",
        )
        assert {r["id"] for r in closed} == set(ids)  # 103 calls, 103 rows
        big = proxy.row(killer.headers[REQUEST_ID])
        # Beyond SQLite's int64 the count is stored as NULL, and the row is kept.
        assert big["status"] == "completed" and big["output_tokens"] is None
        report = health(proxy)["ledger"]
        assert report["alive"] and report["rows_lost"] == 0, report
    finally:
        proxy.stop()


def test_a_fault_injected_into_the_writer_loses_nothing(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    policies = write_policies(tmp_path / "policies", emulator)
    db = tmp_path / "audit.db"
    proxy = start_proxy(policies, db, confdir, emulator, LLMGATE_TEST_FAULTS="ledger_raise_once")
    try:
        ids = [chat(proxy).headers[REQUEST_ID] for _ in range(20)]
        for request_id in ids:
            assert proxy.row(request_id)["status"] == "completed"
        report = health(proxy)["ledger"]
        assert report["alive"] and report["rows_lost"] == 0, report
        assert report["last_error"], report  # the fault happened, and was seen
    finally:
        proxy.stop()


# --- a full disk ------------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path) -> Iterator[dict[str, str]]:
    """A 2 MB tmpfs at `path` when this host lets us mount one; else the writer's
    disk-full hook (env). Yields the env to start the proxy with, and fills the disk
    when `fill()` is called."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = (
        shutil.which("mount") is not None
        and os.geteuid() == 0
        and subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield {} if mounted else {"LLMGATE_TEST_FAULTS": "ledger_disk_full"}
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> None:
    """Fill the file system under `path` to the last byte."""
    with contextlib.suppress(OSError), open(path / "filler", "wb") as filler:
        while True:
            filler.write(b"\0" * 65536)
            filler.flush()
    with contextlib.suppress(OSError), open(path / "filler-small", "wb") as filler:
        while True:
            filler.write(b"\0" * 512)
            filler.flush()


@pytest.mark.parametrize("on_failure", ["refuse", "serve"])
def test_a_full_disk(tmp_path: Path, confdir: Path, emulator: Emulator, on_failure: str) -> None:
    disk = tmp_path / "disk"
    with small_disk(disk) as env:
        policies = write_policies(
            tmp_path / "policies", emulator, f"audit: {{on_failure: {on_failure}}}\n"
        )
        db = disk / "audit.db"
        # mitmproxy's own log elsewhere: a write to a full disk fails it, not llmgate.
        proxy = start_proxy(policies, db, confdir, emulator, tmp_path / "proxy.log", **env)
        try:
            served = 0
            if not env:
                assert chat(proxy).status_code == 200  # a working ledger first
                served = 1
                fill(disk)
            if on_failure == "refuse":
                # SQLite may still commit a row or two into WAL pages it already has
                # (the journal steps aside on a full disk); from the first call whose
                # row it cannot commit on, every call is refused.
                for _ in range(20):
                    answer = chat(proxy)
                    if answer.status_code != 200:
                        break
                    served += 1
                assert_error_format("openai", answer, 503, "audit_unavailable")
                hits = len(emulator.hits)
                for answer in [chat(proxy) for _ in range(5)]:
                    assert_error_format("openai", answer, 503, "audit_unavailable")
                assert len(emulator.hits) == hits  # nothing went upstream
                # Every call that was served has its row.
                assert ledger(db, "select count(*) from requests")[0][0] == served
            else:
                hits = len(emulator.hits)
                answers = [chat(proxy) for _ in range(5)]
                assert [a.status_code for a in answers] == [200] * 5
                assert len(emulator.hits) == hits + 5
                report = wait_for(
                    lambda: (r := health(proxy)["ledger"])["rows_lost"] > 0 and r,
                    what="a loss count",
                )
                assert report["last_error"], report
        finally:
            proxy.stop()
            with contextlib.suppress(OSError):
                for name in ("filler", "filler-small"):
                    (disk / name).unlink(missing_ok=True)


# --- crash and shutdown -----------------------------------------------------------------

QUOTA = """\
policies:
  - name: everyone
    applies_to: {users: ["*"]}
    quota_windows:
      - {window_seconds: 3600, max_output_tokens: 100000000}
audit: {drain_seconds: 1}
"""


def start_streams(proxy: Proxy, count: int, pause_ms: int = 1500) -> list[threading.Thread]:
    """`count` streamed calls that stay in flight: the emulator pauses between events."""

    def one() -> None:
        body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True}
        headers = {
            "authorization": f"Bearer {CALLER_KEY}",
            "x-emulator-pause-ms": str(pause_ms),
            "x-emulator-chunks": "20",
        }
        url = "https://api.openai.com/v1/chat/completions"
        with (
            contextlib.suppress(Exception),
            proxy.http_client(timeout=60) as client,
            client.stream("POST", url, json=body, headers=headers) as response,
        ):
            for _ in response.iter_bytes():
                pass

    threads = [threading.Thread(target=one, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    return threads


def pending(db: Path) -> list[tuple]:
    return ledger(db, "select id from requests where status = 'pending'")


def unsettled_reservations(db: Path) -> int:
    quota = db.with_name(db.name + ".quota")
    return ledger(quota, "select count(*) from quota_ledger where settled = 0")[0][0]


def test_sigterm_during_six_streams_leaves_them_interrupted_with_partial_usage(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    policies = write_policies(tmp_path / "policies", emulator, QUOTA)
    db = tmp_path / "audit.db"
    proxy = start_proxy(policies, db, confdir, emulator)
    try:
        start_streams(proxy, 6)
        wait_for(lambda: len(pending(db)) == 6, what="six streams in flight")
        wait_for(lambda: sum(len(h.events_sent) for h in emulator.hits) >= 12, what="first events")
    finally:
        proxy.stop()  # SIGTERM, then mitmdump exits after the drain
    assert pending(db) == []
    rows = ledger(
        db, "select status, reason, output_tokens, usage_source from requests where stream = 1"
    )
    assert len(rows) == 6
    for status, reason, output_tokens, usage_source in rows:
        assert (status, reason, usage_source) == ("interrupted", "shutdown", "estimated")
        assert output_tokens > 0  # the text that did arrive
    assert unsettled_reservations(db) == 0


def test_kill_9_then_restart_closes_the_dead_process_rows_and_spares_a_live_one(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    policies = write_policies(tmp_path / "policies", emulator, QUOTA)
    db = tmp_path / "audit.db"
    victim = start_proxy(policies, db, confdir, emulator)
    survivor = start_proxy(policies, db, confdir, emulator)
    try:
        start_streams(victim, 6, pause_ms=2000)
        wait_for(lambda: len(pending(db)) == 6, what="six streams in flight")
        victim.kill()
        dead = {r[0] for r in pending(db)}
        assert len(dead) == 6 and unsettled_reservations(db) == 6
        # The survivor's own calls are in flight when the restart recovers the ledger.
        start_streams(survivor, 2, pause_ms=500)
        wait_for(lambda: len(pending(db)) == 8, what="the survivor's streams")
        restarted = start_proxy(policies, db, confdir, emulator)
        try:
            still_pending = {r[0] for r in pending(db)}
            assert not (still_pending & dead)
            assert len(still_pending) == 2  # the live process's calls are untouched
            closed = ledger(
                db,
                f"select status, reason from requests where id in ({','.join('?' * 6)})",
                *dead,
            )
            assert set(closed) == {("interrupted", "process_ended")}
            wait_for(lambda: pending(db) == [], timeout=30, what="the survivor's calls")
            assert unsettled_reservations(db) == 0
        finally:
            restarted.stop()
    finally:
        survivor.stop()
        victim.stop()
    assert json.dumps(ledger(db, "select count(*) from requests where status = 'pending'")) == (
        "[[0]]"
    )


def test_a_strict_calls_row_is_in_the_journal_when_it_reaches_upstream_and_survives_kill_9(
    tmp_path: Path, confdir: Path, emulator: Emulator
) -> None:
    policies = write_policies(tmp_path / "policies", emulator, QUOTA)
    db = tmp_path / "audit.db"
    victim = start_proxy(policies, db, confdir, emulator)
    try:
        assert chat(victim).status_code == 200  # the ledger's first commit: journal on
        hits = len(emulator.hits)
        start_streams(victim, 1, pause_ms=3000)
        wait_for(lambda: len(emulator.hits) > hits, what="the stream upstream")
        # The call has left: its opening row is on disk in the process's journal.
        ((instance, segments),) = journal.segments(instances_dir(db)).items()
        journaled = [json.loads(line) for s in segments for line in s.read_bytes().splitlines()]
        ((table, row),) = [entry for entry in journaled if entry[1]["stream"] == 1]
        assert (table, row["status"], row["instance_id"]) == ("requests", "pending", instance)
        victim.kill()
    finally:
        victim.stop()
    restarted = start_proxy(policies, db, confdir, emulator)
    try:
        # Folded in (if the writer had not got to it) and closed as the dead process's.
        assert ledger(db, "select status, reason from requests where id = ?", row["id"]) == [
            ("interrupted", "process_ended")
        ]
        assert instance not in journal.segments(instances_dir(db))
    finally:
        restarted.stop()
