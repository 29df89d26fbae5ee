#!/usr/bin/env bash
# Mutation check for the tests of issue 10 ("tests that bite").
#
# Each *.patch here re-creates a bug that a review found could ship with every test
# green. For each one, in a scratch copy of the work tree (never the work tree
# itself), the patch is applied and the tests named for it are run: they must FAIL.
# A mutation whose tests still pass SURVIVED, and so does one whose patch no longer
# applies (the code moved: refresh the patch). The same tests must pass on the
# unpatched copy first, or a "kill" would prove nothing.
#
# Usage: tests/mutations/check.sh       (LLMGATE_PYTHON: the python to use,
#                                        default: the repo's .venv/bin/python)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/../.." && pwd)
python=${LLMGATE_PYTHON:-$root/.venv/bin/python}
started=$SECONDS

# The tests each mutation must break (all in tests/test_e2e_gaps.py).
tests_for() {
  local file=tests/test_e2e_gaps.py
  case "$1" in
    1-quota-settle-skipped-for-failed-calls)
      echo "$file::test_an_upstream_error_settles_its_reservation_to_nothing" \
           "$file::test_a_stream_the_upstream_breaks_settles_to_what_arrived" \
           "$file::test_a_stream_the_client_abandons_settles_to_what_arrived" ;;
    2-openai-cache-write-dropped)
      echo "$file::test_openai_cache_writes_are_recorded_and_priced" ;;
    3a-tool-call-arguments-not-scanned)
      echo "$file::test_a_secret_only_in_tool_call_arguments_is_blocked" ;;
    3b-system-prompt-not-scanned)
      echo "$file::test_a_secret_only_in_the_system_prompt_is_blocked" ;;
    4-query-key-not-stripped)
      echo "$file::test_a_gemini_callers_query_key_is_replaced_by_the_routes_key" ;;
    *) return 1 ;;
  esac
}

scratch=$(mktemp -d "${TMPDIR:-/tmp}/llmgate-mutations.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
copy=$scratch/tree
mkdir "$copy"

# The work tree as it stands, uncommitted edits included: tracked and untracked
# files, not ignored ones (no .venv, no node_modules, no caches).
git -C "$root" ls-files -z --cached --others --exclude-standard \
  | while IFS= read -r -d '' path; do
      [[ -f $root/$path ]] && printf '%s\0' "$path"
    done \
  | tar -C "$root" --null -T - -cf - \
  | tar -C "$copy" -xf -
# Compiled once here rather than by every process each run starts (pytest, mitmdump,
# the key-issuing commands), each of which would otherwise compile it all again.
"$python" -m compileall -q -j 0 "$copy/addon" "$copy/tests" "$copy/scripts" >/dev/null

# git apply must treat the copy as a plain directory, never as part of a repository
# that happens to enclose the scratch directory.
export GIT_CEILING_DIRECTORIES=$scratch

# The copy's addon must be the one imported, by pytest and by the mitmdump it starts
# (tests/proxy.py runs it from the copy, which inherits PYTHONPATH).
loaded=$(cd "$copy" && PYTHONPATH=$copy "$python" -c 'import addon; print(addon.__file__)')
if [[ $loaded != "$copy"/* ]]; then
  echo "check.sh: the copy's addon is not the one imported ($loaded)" >&2
  exit 2
fi

# Runs pytest on the copy; sets rc and leaves the output in $scratch/pytest.log.
run_tests() {
  set +e
  (cd "$copy" && PYTHONPATH=$copy "$python" -m pytest -p no:warnings -p no:cacheprovider \
     -x "$@") >"$scratch/pytest.log" 2>&1
  rc=$?
  set -e
}

patches=("$here"/*.patch)
all_tests=()
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  if ! named=$(tests_for "$name"); then
    echo "check.sh: no tests named for $name" >&2
    exit 2
  fi
  read -r -a listed <<<"$named"
  all_tests+=("${listed[@]}")
done

t0=$SECONDS
run_tests "${all_tests[@]}"
if ((rc != 0)); then
  tail -n 40 "$scratch/pytest.log"
  echo "baseline: the tests FAIL without any mutation (rc $rc); nothing to check" >&2
  exit 1
fi
printf '%-45s passes unpatched (%ds)\n' baseline $((SECONDS - t0))

bad=0
for patch in "${patches[@]}"; do
  name=$(basename "$patch" .patch)
  read -r -a listed <<<"$(tests_for "$name")"
  if ! (cd "$copy" && git apply --check "$patch" 2>"$scratch/apply.log"); then
    printf '%-45s SURVIVED: the patch no longer applies\n' "$name"
    sed 's/^/    /' "$scratch/apply.log"
    bad=1
    continue
  fi
  (cd "$copy" && git apply "$patch")
  t0=$SECONDS
  run_tests "${listed[@]}"
  (cd "$copy" && git apply -R "$patch")
  elapsed=$((SECONDS - t0))
  if ((rc == 1)) && grep -Eq '[0-9]+ failed' "$scratch/pytest.log"; then
    printf '%-45s killed (%ds)\n' "$name" "$elapsed"
  elif ((rc == 0)); then
    printf '%-45s SURVIVED: its tests pass with the bug in (%ds)\n' "$name" "$elapsed"
    bad=1
  else
    # Not a test failing on an assertion: a collection or fixture error proves nothing.
    printf '%-45s SURVIVED: pytest ended with rc %d, not a failing test\n' "$name" "$rc"
    tail -n 20 "$scratch/pytest.log" | sed 's/^/    /'
    bad=1
  fi
done

echo "mutation check: $((SECONDS - started))s in all"
exit "$bad"
