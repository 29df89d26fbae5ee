"""Where secrets come from, how they are put on a request, and what may be stored.

Secrets are environment variables named by a route's `api_key_secret`, or lines
`NAME=value` in the file `LLMGATE_SECRETS` names (the environment wins).
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

# Every header a caller may put a provider credential in.
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
_SENSITIVE_HEADER = re.compile(r"auth|key|token|secret|cookie|session|credential", re.I)
CREDENTIAL_PARAMS = frozenset({"key", "api_key", "apikey", "access_token"})


class SecretStore:
    def __init__(self, secrets_file: str | None = None) -> None:
        self._file_values: dict[str, str] = {}
        if secrets_file:
            self._file_values = read_secrets_file(Path(secrets_file))

    def get(self, name: str) -> str | None:
        return os.environ.get(name) or self._file_values.get(name) or None


def read_secrets_file(path: Path) -> dict[str, str]:
    if not path.exists():
        raise ValueError(f"{path}: secrets file not found (LLMGATE_SECRETS)")
    values: dict[str, str] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        if not sep or not name.strip():
            # Never echo the line: it is probably a secret.
            raise ValueError(f"{path}:{number}: expected NAME=value")
        values[name.strip()] = value.strip().strip("'\"")
    return values


def credential_header(provider_header: str, secret: str) -> tuple[str, str]:
    if provider_header == "authorization":
        return "authorization", f"Bearer {secret}"
    return provider_header, secret


def strip_credential_params(path: str) -> str:
    """Remove `?key=` style credentials from a path (Gemini accepts its key there)."""
    bare, sep, query = path.partition("?")
    if not sep:
        return path
    kept = [
        (k, v)
        for k, v in parse_qsl(query, keep_blank_values=True)
        if k.lower() not in CREDENTIAL_PARAMS
    ]
    # surrogateescape: a raw non-UTF-8 byte in the query survives as %XX, not an error.
    return bare + ("?" + urlencode(kept, errors="surrogateescape") if kept else "")


def storable_headers(headers: Mapping[str, str] | Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    """Headers with every one that could carry a credential left out.

    Takes a mapping, or raw (name, value) byte pairs such as mitmproxy's
    `Headers.fields`, which are much cheaper to walk than the mapping view.
    """
    pairs = headers.items() if isinstance(headers, Mapping) else headers
    out: dict[str, str] = {}
    for name, value in pairs:
        key = name.decode("latin-1") if isinstance(name, bytes) else name
        if _storable_name(key):
            text = value.decode("latin-1") if isinstance(value, bytes) else value
            out[key.lower()] = text
    return out


@functools.lru_cache(maxsize=1024)
def _storable_name(name: str) -> bool:
    # Header names repeat on every call; the regex runs once per name.
    return not _SENSITIVE_HEADER.search(name)


# Headers whose values are credentials in any API llmgate fronts; the flow copy
# that mitmweb shows and `-w` saves must only ever hold them masked.
_MASKED_HEADER = re.compile(r"auth|key|token|secret|credential|cookie|password", re.I)
# An llmgate key in any header at all (identity refuses one outside the credential slots).
_KEY_SHAPED = re.compile(rb"(?i)(?<![a-z0-9_-])lg-[a-z0-9_-]{8,}")
_SCHEME_AND_VALUE = re.compile(r"^\s*(?:([A-Za-z]+)\s+)?(\S+)\s*$")

Fields = tuple[tuple[bytes, bytes], ...]


def masked(value: str, label: str) -> str:
    """`Bearer sk-…(route secret OPENAI_API_KEY)`: the scheme, a hint, and whose it is."""
    found = _SCHEME_AND_VALUE.match(value)
    scheme, token = (found.group(1), found.group(2)) if found else (None, value)
    hint = token[:3] if len(token) >= 16 else ""
    return f"{scheme + ' ' if scheme else ''}{hint}…({label})"


@functools.lru_cache(maxsize=1024)
def is_masked_header(name: str) -> bool:
    # Header names repeat on every call; the regex runs once per name.
    return bool(_MASKED_HEADER.search(name))


def key_shaped(value: bytes) -> bool:
    # A byte test first: almost no header value holds "g-" at all.
    return (b"g-" in value or b"G-" in value) and _KEY_SHAPED.search(value) is not None


def mask_fields(
    fields: Fields, label: str, found: Callable[[bytes], bool] = lambda _: False
) -> tuple[Fields, Fields]:
    """(fields with every credential-bearing value masked, the original fields masked).

    `found` flags other values to mask (what a scanner finds in them)."""
    kept: list[tuple[bytes, bytes]] = []
    originals: list[tuple[bytes, bytes]] = []
    for name, value in fields:
        credential = is_masked_header(name.decode("latin-1")) or key_shaped(value) or found(value)
        if credential and b"\xe2\x80\xa6(" not in value:
            originals.append((name, value))
            whose = "llmgate key" if b"lg-" in value.lower() else label
            value = masked(value.decode("latin-1"), whose).encode("utf-8")
        kept.append((name, value))
    return tuple(kept), tuple(originals)


def unmask_fields(fields: Fields, originals: Fields) -> Fields:
    """Put the caller's own credential headers back, for a call that forwards them."""
    names = {name.lower() for name, _ in originals}
    return tuple(f for f in fields if f[0].lower() not in names) + originals


def mask_query(path: str, label: str) -> str:
    """The path with every credential query parameter's value masked."""
    bare, sep, query = path.partition("?")
    if not sep:
        return path
    pairs = parse_qsl(query, keep_blank_values=True)
    if not any(k.lower() in CREDENTIAL_PARAMS for k, _ in pairs):
        return path
    edited = [
        (k, masked(v, label).replace("…", "...") if k.lower() in CREDENTIAL_PARAMS else v)
        for k, v in pairs
    ]
    return bare + "?" + urlencode(edited, errors="surrogateescape")


def replace_found(text: str, values: dict[str, str]) -> str:
    """`text` with every found value replaced by its token."""
    for found, token in values.items():
        text = text.replace(found, token)
    return text


def replace_in_fields(fields: Fields, values: dict[str, str]) -> Fields:
    """Header fields with every found value replaced by its token."""
    return tuple(
        (name, replace_found(value.decode("latin-1"), values).encode("utf-8"))
        for name, value in fields
    )
