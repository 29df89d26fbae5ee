"""Virtual keys: llmgate-issued keys that stand in for provider keys.

Only a SHA-256 of each key is stored. Keys carry 192 random bits, so a plain
hash is enough: there is nothing to brute-force that a salt would protect.

They live in the ledger's database (`virtual_keys`, created by the ledger's
migrations), a SQLite file or PostgreSQL, so every process sharing a ledger
accepts the same keys and a revocation reaches all of them at once.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from addon.ledger.store import open_database

KEY_PREFIX = "lg-"


@dataclass(frozen=True)
class KeyIdentity:
    user: str
    groups: tuple[str, ...]


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def hint(key: str) -> str:
    """Enough to tell keys apart in a listing, never enough to use one."""
    return f"{key[:7]}…{key[-4:]}"


class KeyStore:
    def __init__(self, location: str | Path) -> None:
        self._db = open_database(location)

    def issue(self, user: str, groups: list[str]) -> str:
        key = KEY_PREFIX + secrets.token_urlsafe(24)
        with self._db.transaction():
            self._db.execute(
                'insert into virtual_keys (key_hash, key_hint, "user", groups, created_at,'
                " revoked_at) values (?, ?, ?, ?, ?, null)",
                (hash_key(key), hint(key), user, json.dumps(groups), time.time()),
            )
        return key

    def lookup(self, key: str) -> KeyIdentity | None:
        row = self._db.execute(
            'select "user", groups from virtual_keys where key_hash = ? and revoked_at is null',
            (hash_key(key),),
        ).fetchone()
        return KeyIdentity(row[0], tuple(json.loads(row[1]))) if row else None

    def revoke(self, key_or_hint: str) -> int:
        """Revoke by the key itself, its hash, or its hint as `keys list` shows it."""
        with self._db.transaction():
            cursor = self._db.execute(
                "update virtual_keys set revoked_at = ? where revoked_at is null"
                " and (key_hash = ? or key_hash = ? or key_hint = ?)",
                (time.time(), hash_key(key_or_hint), key_or_hint, key_or_hint),
            )
        return cursor.rowcount

    def list(self) -> list[dict[str, object]]:
        return self._db.rows(
            'select key_hint, "user", groups, created_at, revoked_at from virtual_keys'
            " order by created_at"
        )

    def close(self) -> None:
        self._db.close()
