#!/usr/bin/env bash
# llmgate: set up the virtualenv when needed, then start the proxy, the tests,
# mitmweb or the benchmark.
#   ./run.sh            start mitmdump with llmgate on 127.0.0.1:${LLMGATE_PORT:-8080}
#   ./run.sh test [...] run the test suite and the mutation checks (with args: pytest only)
#   ./run.sh web        start mitmweb with llmgate
#   ./run.sh bench      run the benchmark (bare mitmproxy against llmgate)
#   ./run.sh mutate     mutation testing of the modules where a silent change costs most
#   ./run.sh llmgate …  run the llmgate command line (report, tail, show, keys, quota)
#   ./run.sh fleet      a local fleet: Redis, PostgreSQL and ${LLMGATE_FLEET:-3} llmgate
#                       processes on consecutive ports from $LLMGATE_PORT (Ctrl-C stops all)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"

python_ok() { "$@" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }

find_python() {
  local cmd v root
  for cmd in python3.14 python3.13 python3.12 python3 python; do
    if command -v "$cmd" >/dev/null 2>&1 && python_ok "$cmd"; then
      command -v "$cmd"; return 0
    fi
  done
  if command -v pyenv >/dev/null 2>&1; then
    root=$(pyenv root)
    for v in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9]|[2-9][0-9])' | sort -rV); do
      if python_ok "$root/versions/$v/bin/python"; then
        echo "$root/versions/$v/bin/python"; return 0
      fi
    done
  fi
  return 1
}

ensure_venv() {
  local stamp="$VENV/.llmgate-stamp" want
  want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
  if [ -x "$VENV/bin/python" ] && python_ok "$VENV/bin/python" && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  local py
  if ! py=$(find_python); then
    echo "llmgate needs Python >= 3.12 (mitmproxy 12 does). None was found on PATH or in pyenv." >&2
    echo "Install one (e.g. 'pyenv install 3.12') and run ./run.sh again." >&2
    exit 1
  fi
  echo "Setting up $VENV with $py ..." >&2
  rm -rf "$VENV"
  "$py" -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]" >&2
  echo "$want" > "$stamp"
}

# The coding agents the end-to-end tests drive through the proxy (the Codex CLI),
# pinned by tests/agents/package-lock.json. Installed when missing or when the lock
# changed; a failed install stops the tests (they never skip for want of an agent).
ensure_agents() {
  local dir="$ROOT/tests/agents" stamp="$ROOT/tests/agents/node_modules/.llmgate-stamp" want
  want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
  if [ -x "$dir/node_modules/.bin/codex" ] && [ -x "$dir/node_modules/.bin/claude" ] \
    && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return 0
  fi
  if ! command -v npm >/dev/null 2>&1; then
    echo "The end-to-end tests need npm (Node.js >= 20) to install the Codex and Claude Code CLIs into tests/agents." >&2
    exit 1
  fi
  echo "Installing the test agents: npm ci --prefix tests/agents ..." >&2
  if ! npm ci --prefix "$dir" --no-audit --no-fund >&2; then
    echo "npm ci --prefix tests/agents failed; the Codex and Claude Code end-to-end tests cannot run." >&2
    exit 1
  fi
  echo "$want" > "$stamp"
}

# Debian's chromium, which test_e2e_mitmweb drives (with pip's playwright) to check
# mitmweb's conversation view; the emoji font shows llmgate's marks in its
# screenshot. Installed when missing; a failed install stops the tests (the
# browser test never skips).
ensure_chromium() {
  if [ -x /usr/bin/chromium ]; then
    return 0
  fi
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "The mitmweb browser test needs Debian's chromium: run 'apt-get install chromium' as root." >&2
    exit 1
  fi
  echo "Installing chromium for the mitmweb browser test: apt-get install chromium ..." >&2
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-color-emoji; } >&2; then
    echo "apt-get install chromium failed; the mitmweb browser test cannot run." >&2
    exit 1
  fi
}

# Debian packages the tests start as real servers (never mocked, never skipped):
# redis-server for the quota store on Redis; PostgreSQL's initdb/pg_ctl, which
# tests/postgres_server.py runs in a temporary directory (no system service).
apt_install() {
  local what="$1"
  shift
  if ! command -v apt-get >/dev/null 2>&1 || [ "$(id -u)" -ne 0 ]; then
    echo "The tests need $what: run 'apt-get install $*' as root." >&2
    exit 1
  fi
  echo "Installing $what for the tests: apt-get install $* ..." >&2
  if ! { DEBIAN_FRONTEND=noninteractive apt-get update -qq \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"; } >&2; then
    echo "apt-get install $* failed; the tests that need $what cannot run." >&2
    exit 1
  fi
}

ensure_servers() {
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server redis-server
  if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    apt_install "PostgreSQL (initdb, pg_ctl)" postgresql
  fi
}

export LLMGATE_PORT="${LLMGATE_PORT:-8080}"
export LLMGATE_POLICIES="${LLMGATE_POLICIES:-$ROOT/policies}"
export LLMGATE_CONFDIR="${LLMGATE_CONFDIR:-$HOME/.mitmproxy}"
if [ -z "${LLMGATE_DB:-}" ]; then
  export LLMGATE_DB="${XDG_STATE_HOME:-$HOME/.local/state}/llmgate/audit.db"
fi

# flow_detail=0: mitmdump's own flow lines would print URLs, which can carry a
# caller's key (?key=); llmgate logs one line per call instead.
proxy_args() {
  echo --listen-host "${LLMGATE_LISTEN_HOST:-127.0.0.1}" --listen-port "$LLMGATE_PORT" \
    --set "confdir=$LLMGATE_CONFDIR" --set connection_strategy=lazy --set flow_detail=0 \
    -s "$ROOT/scripts/llmgate_addon.py"
}

print_banner() {
  local ca="$LLMGATE_CONFDIR/mitmproxy-ca-cert.pem" addr="http://${LLMGATE_LISTEN_HOST:-127.0.0.1}:$LLMGATE_PORT"
  cat <<TXT
llmgate proxy  : $addr
policies       : $LLMGATE_POLICIES
audit database : $LLMGATE_DB
CA certificate : $ca  (created on first start)

Point a client at it:
  export HTTPS_PROXY=$addr
  export SSL_CERT_FILE=$ca
  export REQUESTS_CA_BUNDLE=$ca
  export NODE_EXTRA_CA_CERTS=$ca

TXT
}

cmd="${1:-proxy}"
[ $# -gt 0 ] && shift
case "$cmd" in
  proxy)
    ensure_venv
    print_banner
    # shellcheck disable=SC2046
    exec "$VENV/bin/mitmdump" $(proxy_args) "$@"
    ;;
  web)
    ensure_venv
    print_banner
    # The flow list gets a Comment column: llmgate's one line per call (host the
    # caller called, user, models, tokens, cost, status).
    web_columns=""
    for column in tls icon path method status size time comment; do
      web_columns="$web_columns --set web_columns=$column"
    done
    # shellcheck disable=SC2046,SC2086
    exec "$VENV/bin/mitmweb" $(proxy_args) $web_columns "$@"
    ;;
  test)
    ensure_venv
    ensure_agents
    ensure_chromium
    ensure_servers
    if [ $# -gt 0 ]; then
      exec "$VENV/bin/python" -m pytest "$@"
    fi
    # The whole suite (what CI runs): the tests, on two workers, whole files each
    # (module fixtures start once), then the mutations a review found the tests
    # blind to, each of which must now make its tests fail.
    "$VENV/bin/python" -m pytest -n 2 --dist loadfile
    LLMGATE_PYTHON="$VENV/bin/python" "$ROOT/tests/mutations/check.sh"
    # Mutation testing on the modules this change touched, a fixed sample within a
    # 90 s budget (MUTATION.md); `./run.sh mutate` runs it all.
    "$VENV/bin/python" "$ROOT/tools/mutate/run.py" --changed --sample 20 --budget 90 --strict
    ;;
  mutate)
    ensure_venv
    exec "$VENV/bin/python" "$ROOT/tools/mutate/run.py" "$@"
    ;;
  bench)
    ensure_venv
    exec "$VENV/bin/python" "$ROOT/bench/run.py" "$@"
    ;;
  llmgate)
    ensure_venv
    exec "$VENV/bin/llmgate" "$@"
    ;;
  fleet)
    # A demo and a smoke test of fleet mode (README "Fleet mode"): quotas on a local
    # Redis, the ledger on a local PostgreSQL cluster, N processes sharing one CA.
    ensure_venv
    ensure_servers
    exec "$VENV/bin/python" "$ROOT/scripts/fleet.py" "$@"
    ;;
  *)
    echo "usage: ./run.sh [test|web|bench|mutate|fleet|llmgate ...]  (no argument starts the proxy)" >&2
    exit 2
    ;;
esac
