"""`llmgate`: read the audit ledger and check policy files from the command line.

Every ledger read prints a table on a terminal, plain whole lines in a pipe, and
JSON or CSV with --json / --csv. Times are ISO-8601 in UTC. Bad input is one line
on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from rich.text import Text

from addon.cli import admin, reads, show
from addon.cli.output import CliError, err_console
from addon.ledger.db import database_errors, describe_location
from addon.ledger.store import default_db_path

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """Usage mistakes are one line on stderr, exit 2 (argparse prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def _count(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive number of calls")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _output_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--json", action="store_true", help="JSON instead of a table")
    group.add_argument("--csv", action="store_true", help="CSV instead of a table")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="llmgate", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--db",
        default=os.environ.get("LLMGATE_DB", default_db_path()),
        help="the ledger: a SQLite file or a postgresql:// URL (default: $LLMGATE_DB)",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    sessions = sub.add_parser("sessions", help="agent sessions, one line each")
    sessions.add_argument("--user", help="only sessions with calls of this user")
    sessions.add_argument("--since", default=None, help="active since: 2h, 7d, or an ISO date")
    _output_flags(sessions)
    sessions.set_defaults(func=reads.cmd_sessions)

    session = sub.add_parser("session", help="the timeline of one session")
    session.add_argument("id", help="a session id, or a unique prefix or suffix of one")
    _output_flags(session)
    session.set_defaults(func=reads.cmd_session)

    tail = sub.add_parser("tail", help="the most recent calls")
    tail.add_argument("-n", type=_count, default=20, help="how many calls (default 20)")
    tail.add_argument("-f", "--follow", action="store_true", help="keep printing new calls")
    tail.add_argument("--interval", type=_seconds, default=1.0, help=argparse.SUPPRESS)
    tail.add_argument("--user")
    tail.add_argument("--status", help="completed, failed, cancelled, denied, interrupted...")
    tail.add_argument("--reason", help="the reason llmgate recorded, e.g. policy_denied")
    tail.add_argument("--since", help="2h, 30m, 7d, or an ISO date or time")
    _output_flags(tail)
    tail.set_defaults(func=reads.cmd_tail)

    report = sub.add_parser("report", help="usage and cost, grouped, with totals")
    report.add_argument("--by", choices=list(reads.GROUPS), default="user")
    report.add_argument("--since", default="24h", help="2h, 7d, an ISO date, or all")
    report.add_argument("--hours", type=_seconds, default=None, help=argparse.SUPPRESS)
    _output_flags(report)
    report.set_defaults(func=reads.cmd_report)

    shown = sub.add_parser("show", help="one call: its conversation, reply, findings")
    shown.add_argument("id", help="a request id, or a unique prefix or suffix of one")
    _output_flags(shown)
    shown.set_defaults(func=show.cmd_show)

    check = sub.add_parser("check", help="validate the policy files")
    check.add_argument("policies", nargs="?", default=_default_policies())
    check.add_argument(
        "--secrets",
        default=os.environ.get("LLMGATE_SECRETS", ""),
        help="the NAME=value secrets file the gateway reads (default: $LLMGATE_SECRETS)",
    )
    check.set_defaults(func=admin.cmd_check)
    keys = sub.add_parser("keys", help="issue, list and revoke llmgate virtual keys")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    issue = keys_sub.add_parser("issue", help="issue a key for USER")
    issue.add_argument("user")
    issue.add_argument("--group", action="append", help="a group of the user (repeatable)")
    keys_sub.add_parser("list", help="list keys (hints only)")
    revoke = keys_sub.add_parser("revoke", help="revoke a key, by the key or its hint")
    revoke.add_argument("key")
    keys.set_defaults(func=admin.cmd_keys)
    quota = sub.add_parser("quota", help="a user's quota windows: used, reserved, limit, reset")
    quota.add_argument("user")
    quota.add_argument("--group", action="append", help="also count these groups")
    quota.add_argument("--policies", default=_default_policies())
    quota.set_defaults(func=admin.cmd_quota)
    doctor = sub.add_parser("doctor", help="unfinished calls in the ledger; the gateway's health")
    doctor.add_argument(
        "--proxy",
        default=f"127.0.0.1:{os.environ.get('LLMGATE_PORT') or 8080}",
        help="the running llmgate, HOST:PORT (default: 127.0.0.1:$LLMGATE_PORT, else 8080)",
    )
    doctor.add_argument("--json", action="store_true", help="one JSON object")
    doctor.set_defaults(func=admin.cmd_doctor)
    return parser


def _default_policies() -> str:
    return os.environ.get(
        "LLMGATE_POLICIES", str(Path(__file__).resolve().parent.parent.parent / "policies")
    )


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except CliError as exc:
        _error(str(exc))
    except database_errors() as exc:
        _error(f"the ledger {describe_location(args.db)} cannot answer: {exc}")
    except KeyboardInterrupt:
        sys.exit(130 if args.command != "tail" else 0)
    except BrokenPipeError:
        # The reader left (`| head`): no traceback, and none from flushing at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)


def _error(message: str) -> NoReturn:
    line = " ".join(message.split())
    err_console.print(Text("llmgate: error: ", style="bold red") + Text(line), soft_wrap=True)
    sys.exit(1)
