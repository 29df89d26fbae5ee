"""llmgate's mitmproxy options: declared in `load`, checked and applied in `configure`.

Every option has an environment variable, so `./run.sh` needs no flags. A bad
policy, secrets file or database location is an `OptionsError` naming the file.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from mitmproxy import ctx, exceptions

from addon.checks import config_warnings
from addon.config import ConfigError, load_config
from addon.credentials import SecretStore
from addon.hosts import HostSet
from addon.identity import Identifier
from addon.keys import KeyStore
from addon.ledger.db import ledger_location, local_state_path
from addon.ledger.pricing import Pricer, load_pricing
from addon.ledger.store import default_db_path
from addon.ledger.writer import AuditWriter
from addon.quota.worker import open_quota, quota_target
from addon.safety.screening import build_scanner, load_hmac_key

if TYPE_CHECKING:
    from addon.gateway.http_hooks import Gateway

_PROJECT_POLICIES = Path(__file__).resolve().parents[2] / "policies"  # addon/gateway/ -> root

log = logging.getLogger("llmgate")


def _pricing_path(policies: Path) -> Path:
    return (policies if policies.is_dir() else policies.parent) / "pricing.yaml"


def env_flag(name: str) -> bool:
    """An on-by-default switch from the environment: 0, false or no turn it off."""
    return os.environ.get(name, "true").lower() not in ("0", "false", "no")


def declare(loader) -> None:  # type: ignore[no-untyped-def]
    loader.add_option(
        "llmgate_policies",
        str,
        os.environ.get("LLMGATE_POLICIES", str(_PROJECT_POLICIES)),
        "Policy file or directory (routes, policies). Env: LLMGATE_POLICIES.",
    )
    loader.add_option(
        "llmgate_db",
        str,
        os.environ.get("LLMGATE_DB", default_db_path()),
        "The audit ledger: a SQLite file path or a postgresql:// URL. Env: LLMGATE_DB.",
    )
    loader.add_option(
        "llmgate_quota",
        str,
        os.environ.get("LLMGATE_QUOTA", ""),
        "redis://host:port/db where quotas are counted, shared by many llmgate "
        "processes; wins over the policy's quota.store. Empty: the policy's, else "
        "SQLite beside the ledger. Env: LLMGATE_QUOTA.",
    )
    loader.add_option(
        "llmgate_secrets",
        str,
        os.environ.get("LLMGATE_SECRETS", ""),
        "File of NAME=value secrets for routes' api_key_secret. Env: LLMGATE_SECRETS.",
    )
    loader.add_option(
        "llmgate_websocket",
        bool,
        env_flag("LLMGATE_WEBSOCKET"),
        "Accept the Responses API over WebSocket on LLM hosts, each message a call. "
        "False refuses the upgrade (426) and Codex falls back to HTTPS. "
        "Env: LLMGATE_WEBSOCKET.",
    )


def configure(gateway: Gateway, updated: set[str]) -> None:
    """Load what the changed options name into the gateway: policies, secrets, stores."""
    if "llmgate_policies" in updated:
        policies = Path(ctx.options.llmgate_policies).expanduser()
        try:
            gateway.config = load_config(policies)
            gateway.pricer = Pricer(load_pricing(_pricing_path(policies)))
        except ConfigError as exc:
            raise exceptions.OptionsError(str(exc)) from None
        gateway.header_verdicts.clear()
        try:
            gateway.scanner = build_scanner(gateway.config.safety)
        except ValueError as exc:
            raise exceptions.OptionsError(f"{policies}: safety: {exc}") from None
        gateway.hosts = HostSet(
            gateway.config.intercepted_hosts(),
            resolve=[*gateway.config.intercept_hosts, *(r.host for r in gateway.config.routes)],
        )
        # Only LLM hosts are decrypted; everything else stays an opaque tunnel.
        updates: dict[str, object] = {
            "allow_hosts": gateway.hosts.allow_patterns(),
            "connection_strategy": "lazy",
        }
        if gateway.config.identity.proxy_auth:
            if "proxyauth" not in ctx.options:
                raise exceptions.OptionsError("identity.proxy_auth needs mitmproxy's proxyauth")
            updates["proxyauth"] = gateway.config.identity.proxy_auth
        # Outside mitmdump/mitmweb (tests, embedding) some core options may be absent.
        ctx.options.update(**{k: v for k, v in updates.items() if k in ctx.options})
    if "llmgate_secrets" in updated:
        try:
            gateway.secrets = SecretStore(ctx.options.llmgate_secrets or None)
        except ValueError as exc:
            raise exceptions.OptionsError(str(exc)) from None
    if "llmgate_db" in updated:
        gateway.close_stores()
        # A SQLite path or a postgresql:// URL; the quota file and the HMAC key
        # stay on this machine (beside the SQLite file, or in the state directory).
        db = ledger_location(ctx.options.llmgate_db)
        local = local_state_path(db)
        gateway.audit = AuditWriter(db, synchronous=gateway.config.audit.synchronous)
        target = quota_target(ctx.options.llmgate_quota, gateway.config)
        gateway.quota = open_quota(local, gateway.config, target)  # Redis, or SQLite beside
        if target:  # the host only: a URL may carry a password
            log.info("llmgate: quotas on redis at %s", target.split("@")[-1])
        gateway.keys = KeyStore(db)
        gateway.hmac_key = load_hmac_key(local.with_name(local.name + ".hmac-key"))
        gateway.lifecycle.opened(db)
    if {"llmgate_policies", "llmgate_db"} & updated:
        gateway.identifier = Identifier(gateway.config.identity, gateway.keys)
    if {"llmgate_policies", "llmgate_secrets"} & updated:
        # What `llmgate check` warns about, said where the operator is looking.
        for warning in config_warnings(gateway.config, gateway.pricer.table, gateway.secrets):
            log.warning("llmgate: %s", warning)
