"""`./run.sh` starts the proxy with the embedded defaults and prints the client set-up."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
from pathlib import Path

import httpx2

from tests.proxy import ROOT, free_port


def test_run_sh_starts_the_default_proxy_and_prints_the_exports(tmp_path: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "LLMGATE_PORT": str(port),
        "LLMGATE_CONFDIR": str(tmp_path / "conf"),
        "LLMGATE_DB": str(tmp_path / "audit.db"),
    }
    env.pop("LLMGATE_POLICIES", None)
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["./run.sh"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        ca = tmp_path / "conf" / "mitmproxy-ca-cert.pem"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            raise AssertionError(f"./run.sh did not listen within 120 s: {log.read_text()}")
        assert ca.exists()
        banner = log.read_text()
        for line in (
            f"export HTTPS_PROXY=http://127.0.0.1:{port}",
            f"export SSL_CERT_FILE={ca}",
            f"export REQUESTS_CA_BUNDLE={ca}",
            f"export NODE_EXTRA_CA_CERTS={ca}",
        ):
            assert line in banner
        # A malformed call is answered by llmgate itself, so no internet is needed
        # to prove the addon is live with the shipped policies.
        verify = ssl.create_default_context(cafile=str(ca))
        with httpx2.Client(proxy=f"http://127.0.0.1:{port}", verify=verify) as client:
            response = client.post("https://api.anthropic.com/v1/messages", content=b"{oops")
        assert response.status_code == 400
        assert response.json()["type"] == "error"
        assert response.headers["x-llmgate-request-id"]
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=20)
    # Shutdown flushed the writer: the rejected call is on record.
    import sqlite3

    rows = (
        sqlite3.connect(tmp_path / "audit.db")
        .execute("select status, http_status, reason from requests")
        .fetchall()
    )
    assert rows == [("failed", 400, "invalid_json")]
