"""Mutation testing of llmgate's costly-to-break modules with mutmut; writes MUTATION.md.

    ./run.sh mutate                      every module, every mutant; rewrites MUTATION.md
    ./run.sh mutate --modules quota,cost only those modules
    ./run.sh mutate --changed --sample 20 --budget 90 --strict   (CI)

Each module (tools/mutate/targets.py) runs in its own scratch copy of the repo:
mutmut writes a `mutants/` tree and needs its config in pyproject.toml, and
neither may touch the work tree that other people and test runs share. In the
copy, mutmut generates the mutants, maps each mutated function to the tests that
call it, then runs every chosen mutant against those tests only.

Exit status: 0, or 1 when --strict or --fail-under finds a gap, or 2 when mutmut
itself could not run (its clean test run failed, say).
"""

from __future__ import annotations

import argparse
import ast
import codecs
import contextlib
import difflib
import fnmatch
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from targets import TARGETS, Target

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
EQUIVALENT_FILE = HERE / "equivalent.toml"
REPORT = REPO / "MUTATION.md"
BEGIN, END = "<!-- mutate:results:begin -->", "<!-- mutate:results:end -->"

# What a scratch copy needs for the unit tests to import and find their data.
COPIED = ("addon", "tests", "policies", "scripts", "pyproject.toml")
# tests/agents/node_modules alone is ~400 MB, and mutmut copies tests/ once more.
IGNORED = shutil.ignore_patterns(
    "node_modules", "__pycache__", ".hypothesis", ".pytest_cache", "*.db", "*.db-*"
)
# A fixed Hypothesis seed: a mutant's verdict must not depend on the draw.
PYTEST_ARGS = (
    "-p", "no:warnings", "-p", "no:cacheprovider", "--hypothesis-seed=0", "-p", "stable_ids",
)  # fmt: skip

# mutmut runs pytest several times in one process. pytest 9 keeps the ids it generated for
# a parametrize mark on the mark itself and escapes them again in the next session ("\\n"
# becomes "\\\\n"), so an id recorded in one session is "not found" in the next; that
# error (exit 4) in a mutant's run would count as a kill. This plugin, copied into each
# scratch copy, drops the kept ids at every session start; CHECK_IDS guards the result.
STABLE_IDS_PLUGIN = """
import sys


def pytest_sessionstart(session):
    for name, module in list(sys.modules.items()):
        if name != "tests" and not name.startswith("tests."):
            continue
        things = list(vars(module).values())
        things += [v for t in things if isinstance(t, type) for v in vars(t).values()]
        for thing in things:
            for mark in getattr(thing, "pytestmark", None) or ():
                for kept in (mark, getattr(mark, "_param_ids_from", None)):
                    if getattr(kept, "_param_ids_generated", None) is not None:
                        object.__setattr__(kept, "_param_ids_generated", None)
"""

# mutmut's exit-code verdicts (mutmut.stats.status_by_exit_code), folded into ours.
KILLED_CODES = {1, 3, 36, 37, -24, 24, 152, 255}  # a failure, a timeout, or the type checker
SURVIVED_CODES = {0}
NO_TESTS_CODES = {5, 33}
NOT_RUN_CODES = {None, 2, 34}  # never run, interrupted (the budget), or skipped

# Below this, a module cannot even generate its mutants and run its tests once.
MIN_SHARE = 8.0

# Run mutmut's own generation step first, so the runner can list and sample the
# mutants; `mutmut run` then finds them up to date and does not generate them again.
GENERATE = """
import sys
from mutmut.__main__ import copy_also_copy_files, copy_src_dir, create_mutants
copy_src_dir()
copy_also_copy_files()
create_mutants(int(sys.argv[1]))
"""


# A mutant's tests are named by the ids one pytest session in mutmut's process saw; they
# must name the same tests in every later session there, or its verdict means nothing.
CHECK_IDS = """
import contextlib, io, json, sys
import pytest

class Ids:
    def pytest_collection_modifyitems(self, items):
        self.ids = {item.nodeid for item in items}

seen = []
for _ in range(2):
    ids = Ids()
    with contextlib.redirect_stdout(io.StringIO()):
        code = pytest.main(["--collect-only", "-q", *json.loads(sys.argv[1])], plugins=[ids])
    if code != 0:
        sys.exit(f"collecting the tests failed (pytest exit {code})")
    seen.append(ids.ids)
if seen[0] != seen[1]:
    sys.exit("test ids differ between two pytest sessions in one process: "
             + ", ".join(sorted(seen[0] ^ seen[1])[:5]))
"""


@dataclass(frozen=True)
class Equivalent:
    file: str
    function: str
    before: str
    after: str | list[str]  # one mutated line, or several mutants of the same line
    reason: str


@dataclass
class Mutant:
    name: str
    file: str
    function: str  # "Class.method" or "function"
    line: int = 0
    before: str = ""
    after: str = ""
    status: str = "not run"  # killed | survived | no tests | suspicious | not run
    reason: str = ""  # why an equivalent survivor cannot be killed

    def label(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass
class Result:
    target: Target
    mutants: list[Mutant] = field(default_factory=list)
    generated: int = 0  # mutants of the target's functions, before sampling
    seconds: float = 0.0
    cut: bool = False  # the time budget stopped mutmut before every mutant ran
    error: str = ""

    def counted(self) -> list[Mutant]:
        return [m for m in self.mutants if m.status != "not run"]

    def killed(self) -> int:
        return sum(m.status == "killed" for m in self.mutants)

    def equivalent(self) -> int:
        return sum(bool(m.reason) for m in self.survivors())

    def survivors(self) -> list[Mutant]:
        return [m for m in self.mutants if m.status in ("survived", "no tests", "suspicious")]


def main(argv: Sequence[str] | None = None) -> int:
    # SIGTERM as an exception, so that a stopped run stops the mutmut it started.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    args = parse_args(argv)
    targets = choose_targets(args)
    if not targets:
        print("mutate: no module to run (nothing changed that a module covers)")
        return 0
    deadline = time.monotonic() + args.budget if args.budget else None
    equivalents = load_equivalents()
    results: list[Result] = []
    started = time.monotonic()
    for index, target in enumerate(targets):
        share = None
        if deadline is not None:
            # An equal share of what is left, so a slow module cannot starve the rest.
            share = max((deadline - time.monotonic()) / (len(targets) - index), 0.0)
        result = run_target(target, args, share, equivalents)
        results.append(result)
        print(summary_line(result), flush=True)
    total = time.monotonic() - started
    print(overall_line(results, total))
    full = not (args.sample or args.changed or args.modules) and not any(r.cut for r in results)
    if args.report or full:
        path = Path(args.report) if args.report else REPORT
        write_report(path, results, args, total)
        print(f"mutate: wrote {path}")
    if args.survivors_json:
        survivors = [{"module": r.target.name, **asdict(m)} for r in results for m in r.survivors()]
        Path(args.survivors_json).write_text(json.dumps(survivors, indent=1), encoding="utf-8")
    return verdict(results, args)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    names = ", ".join(t.name for t in TARGETS)
    parser = argparse.ArgumentParser(
        prog="./run.sh mutate", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--modules", help=f"comma-separated modules to run (of: {names})")
    parser.add_argument(
        "--changed",
        action="store_true",
        help="only modules whose files or tests changed since `git merge-base HEAD origin/main`"
        " (HEAD~1 when that is HEAD itself), uncommitted changes included",
    )
    parser.add_argument(
        "--base",
        metavar="REF",
        help="with --changed: compare with this commit instead (e.g. the last one CI passed)",
    )
    parser.add_argument(
        "--sample", type=int, metavar="N", help="a fixed sample of N mutants per module"
    )
    parser.add_argument(
        "--budget",
        type=float,
        metavar="SECONDS",
        help="stop by then: each module gets an equal share of the time left",
    )
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants run at once")
    parser.add_argument(
        "--report",
        metavar="PATH",
        help="write the report here; by default only a full run rewrites MUTATION.md",
    )
    parser.add_argument(
        "--strict",
        action="store_true",
        help="fail on a survivor in a strict function (targets.py) not in equivalent.toml",
    )
    parser.add_argument(
        "--fail-under",
        type=float,
        metavar="PCT",
        help="fail when a module kills less than PCT%% of its non-equivalent mutants",
    )
    parser.add_argument(
        "--survivors-json",
        metavar="PATH",
        help="also write every survivor as JSON (the raw material of equivalent.toml)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the scratch copies")
    args = parser.parse_args(argv)
    if args.sample is not None and args.sample < 1:
        parser.error("--sample must be at least 1")
    return args


def choose_targets(args: argparse.Namespace) -> list[Target]:
    targets = list(TARGETS)
    if args.modules:
        wanted = [m.strip() for m in args.modules.split(",") if m.strip()]
        unknown = sorted(set(wanted) - {t.name for t in TARGETS})
        if unknown:
            raise SystemExit(f"mutate: unknown module(s) {', '.join(unknown)}")
        targets = [t for t in targets if t.name in wanted]
    if args.changed:
        changed = changed_files(args.base)
        if changed is None or any(p.startswith("tools/mutate/") for p in changed):
            return targets  # no base to compare with, or the runner itself changed
        targets = [t for t in targets if changed & {*t.files, *t.tests}]
    return targets


def changed_files(base: str | None = None) -> set[str] | None:
    """Files changed since the branch left main (or since the last commit), uncommitted too."""
    if base is None:
        base = git("merge-base", "HEAD", "origin/main")
        if not base or base == git("rev-parse", "HEAD"):
            base = git("rev-parse", "--verify", "--quiet", "HEAD~1")
    if not base:
        return None
    diff = git("diff", "--name-only", base)
    untracked = git("ls-files", "--others", "--exclude-standard")
    if diff is None or untracked is None:
        return None
    return {line for line in (diff + "\n" + untracked).splitlines() if line}


def git(*args: str) -> str | None:
    done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def load_equivalents() -> list[Equivalent]:
    if not EQUIVALENT_FILE.exists():
        return []
    data = tomllib.loads(EQUIVALENT_FILE.read_text(encoding="utf-8"))
    return [Equivalent(**entry) for entry in data.get("equivalent", [])]


def run_target(
    target: Target, args: argparse.Namespace, share: float | None, equivalents: list[Equivalent]
) -> Result:
    result = Result(target)
    started = time.monotonic()
    deadline = started + share if share is not None else None
    if share is not None and share < MIN_SHARE:
        result.cut = True  # not even the fixed cost of a module fits: say so, run nothing
        return result
    scratch = Path(tempfile.mkdtemp(prefix=f"llmgate-mutate-{target.name}-"))
    log = scratch / "mutmut.log"
    try:
        prepare(scratch, target)
        with log.open("a", encoding="utf-8") as out:
            code = subprocess.run(
                [sys.executable, "-c", GENERATE, str(args.jobs)],
                cwd=scratch,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=False,
            ).returncode
        if code != 0:
            result.error = f"mutant generation failed (exit {code}); see {log}"
            return result
        selection = [*selection_args(target), *PYTEST_ARGS]
        check = subprocess.run(
            [sys.executable, "-c", CHECK_IDS, json.dumps(selection)],
            cwd=scratch,
            capture_output=True,
            text=True,
            check=False,
        )
        if check.returncode != 0:
            result.error = (check.stderr.strip().splitlines() or ["test id check failed"])[-1]
            return result
        everything = read_mutants(scratch, target)
        mine = [m for m in everything if matches(m.function, target.functions)]
        result.generated = len(mine)
        chosen = sample(mine, args.sample) if args.sample else mine
        result.mutants = chosen
        if not chosen:
            return result
        # Names only when choosing: with none, mutmut runs everything it generated.
        names = [m.name for m in chosen] if len(chosen) < len(everything) else []
        code, result.cut = run_mutmut(scratch, names, args.jobs, deadline, log)
        if code not in (0, None) and not result.cut:
            result.error = f"mutmut run failed (exit {code}); see {log}"
        read_verdicts(scratch, chosen)
        locate(scratch, chosen)
        explain(chosen, equivalents)
    except OSError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        result.seconds = time.monotonic() - started
        if result.error or args.keep:
            print(f"mutate: [{target.name}] scratch copy kept in {scratch}", file=sys.stderr)
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    return result


def prepare(scratch: Path, target: Target) -> None:
    for name in COPIED:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, scratch / name, ignore=IGNORED)
        elif source.exists():
            shutil.copy2(source, scratch / name)
    for file in target.files:
        skip_other_functions(scratch / file, target.functions)
    (scratch / "stable_ids.py").write_text(STABLE_IDS_PLUGIN, encoding="utf-8")
    pyproject = scratch / "pyproject.toml"
    text = pyproject.read_text(encoding="utf-8")
    if "mutmut" in tomllib.loads(text).get("tool", {}):
        raise SystemExit("mutate: pyproject.toml has a [tool.mutmut]; targets.py is the config")
    config = {
        "source_paths": ["addon"],
        "only_mutate": list(target.files),
        "pytest_add_cli_args_test_selection": selection_args(target),
        "pytest_add_cli_args": list(PYTEST_ARGS),
        "also_copy": ["policies", "scripts", "stable_ids.py"],
        # The scratch copy has no .git, and git must not find the real repo above it.
        "use_git_change_detection": False,
    }
    lines = [f"{key} = {json.dumps(value)}" for key, value in config.items()]
    pyproject.write_text(text + "\n[tool.mutmut]\n" + "\n".join(lines) + "\n", encoding="utf-8")


def skip_other_functions(path: Path, patterns: Sequence[str]) -> None:
    """Mark the functions outside the module's patterns `# pragma: no mutate block`, so
    that mutmut neither generates their mutants (generating all of protocols/ costs
    seconds a CI run cannot spare) nor counts them. Only comments are added: every line
    keeps its number."""
    if tuple(patterns) == ("*",):
        return
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    tree = ast.parse("".join(lines))
    marked: set[int] = set()
    for name, node in functions(tree):
        if not matches(name, patterns):
            marked.update({node.lineno, *(d.lineno for d in node.decorator_list)})
    for number in marked:
        body = lines[number - 1].rstrip("\r\n")
        lines[number - 1] = body + "  # pragma: no mutate block\n"
    path.write_text("".join(lines), encoding="utf-8")


def functions(tree: ast.Module) -> Iterable[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """The functions mutmut mutates, `function` or `Class.method`."""
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node.name, node
        elif isinstance(node, ast.ClassDef):
            for item in node.body:
                if isinstance(item, ast.FunctionDef | ast.AsyncFunctionDef):
                    yield f"{node.name}.{item.name}", item


def selection_args(target: Target) -> list[str]:
    """The module's test files (those that exist yet) and its deselections, as pytest args."""
    tests = [t for t in target.tests if (REPO / t).exists()]
    return tests + [arg for test in target.deselect for arg in ("--deselect", test)]


def run_mutmut(
    scratch: Path, names: list[str], jobs: int, deadline: float | None, log: Path
) -> tuple[int | None, bool]:
    """mutmut's exit code (None when the budget stopped it), and whether it was stopped."""
    command = [str(Path(sys.executable).with_name("mutmut")), "run", "--max-children", str(jobs)]
    if not Path(command[0]).exists():
        command[:1] = [sys.executable, "-c", "from mutmut.__main__ import cli; cli()"]
    with log.open("a", encoding="utf-8") as out:
        # Its own session: stopping it must also stop the workers it forked.
        proc = subprocess.Popen(
            [*command, *names], cwd=scratch, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        try:
            timeout = None if deadline is None else max(deadline - time.monotonic(), 1.0)
            return proc.wait(timeout=timeout), False
        except BaseException as exc:
            if not isinstance(exc, subprocess.TimeoutExpired):
                # Stopped ourselves (Ctrl-C, SIGTERM): mutmut, in its own session, must stop too.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                raise
            # SIGINT first: mutmut then stops its workers and saves what it has.
            proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return None, True


def module_of(path: str) -> str:
    return path.removesuffix(".py").replace("/", ".").replace(".__init__", "")


def function_of(mangled: str) -> str:
    """mutmut's `xǁClassǁmethod` / `x_function` back to `Class.method` / `function`."""
    if mangled.startswith("xǁ"):
        cls, _, method = mangled[2:].partition("ǁ")
        return f"{cls}.{method}"
    return mangled.removeprefix("x_")


def read_mutants(scratch: Path, target: Target) -> list[Mutant]:
    out: list[Mutant] = []
    for file in target.files:
        meta = json.loads((scratch / "mutants" / f"{file}.meta").read_text(encoding="utf-8"))
        prefix = module_of(file) + "."
        for name in meta["exit_code_by_key"]:
            mangled = name.removeprefix(prefix).partition("__mutmut_")[0]
            out.append(Mutant(name=name, file=file, function=function_of(mangled)))
    return out


def matches(function: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(function, p) for p in patterns)


def sample(mutants: list[Mutant], n: int) -> list[Mutant]:
    """The same N for the same code: the N smallest hashes of the mutant names."""
    key = {m.name: hashlib.sha256(m.name.encode()).hexdigest() for m in mutants}
    chosen = set(sorted(key, key=key.__getitem__)[:n])
    return [m for m in mutants if m.name in chosen]


def read_verdicts(scratch: Path, mutants: list[Mutant]) -> None:
    codes: dict[str, int | None] = {}
    for file in {m.file for m in mutants}:
        try:
            meta = json.loads((scratch / "mutants" / f"{file}.meta").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a meta file cut short by the budget: its mutants count as not run
        codes.update(meta["exit_code_by_key"])
    for m in mutants:
        code = codes.get(m.name)
        if code in KILLED_CODES:
            m.status = "killed"
        elif code in SURVIVED_CODES:
            m.status = "survived"
        elif code in NO_TESTS_CODES:
            m.status = "no tests"
        elif code in NOT_RUN_CODES:
            m.status = "not run"
        else:
            m.status = "suspicious"  # a crash of the test process, say


def def_lines(source: str) -> dict[str, int]:
    """`function` / `Class.method` -> the line of its `def` in the original file."""
    return {name: node.lineno for name, node in functions(ast.parse(source))}


def function_text(lines: list[str], span: Sequence[int], generated: str, name: str) -> list[str]:
    """A function's lines in the mutants file from its `def` on (spans start earlier),
    under its own name: a mutant of a default argument changes the `def` line itself."""
    body = lines[span[0] - 1 : span[1]]
    for i, line in enumerate(body):
        if f"def {generated}(" in line:
            return [line.replace(f"def {generated}(", f"def {name}("), *body[i + 1 :]]
    return body


def locate(scratch: Path, mutants: list[Mutant]) -> None:
    """Fill in file:line and the changed code, for the mutants worth reporting."""
    wanted = [m for m in mutants if m.status in ("survived", "no tests", "suspicious")]
    by_file: dict[str, list[Mutant]] = {}
    for m in wanted:
        by_file.setdefault(m.file, []).append(m)
    for file, group in by_file.items():
        starts = def_lines((scratch / file).read_text(encoding="utf-8"))
        mutated = (scratch / "mutants" / file).read_text(encoding="utf-8").splitlines()
        spans = json.loads((scratch / "mutants" / f"{file}.spans").read_text(encoding="utf-8"))[
            "spans"
        ]
        for m in group:
            generated = m.name.rpartition(".")[2]
            original = generated.partition("__mutmut_")[0] + "__mutmut_orig"
            if generated not in spans or original not in spans:
                continue
            name = m.function.rpartition(".")[2]
            old = function_text(mutated, spans[original], original, name)
            new = function_text(mutated, spans[generated], generated, name)
            offset, m.before, m.after = first_change(old, new)
            m.line = starts.get(m.function, 0) + offset


def first_change(old: list[str], new: list[str]) -> tuple[int, str, str]:
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=old, b=new, autojunk=False).get_opcodes():
        if tag != "equal":
            before = " / ".join(line.strip() for line in old[i1:i2])
            after = " / ".join(line.strip() for line in new[j1:j2])
            return i1, before, after or "(removed)"
    return 0, "", ""


_SQL = re.compile(
    r"\b(select|insert|update|delete|where|values|pragma|begin|commit|rollback|order by)\b|= \?",
    re.IGNORECASE,
)
_SQL_LITERAL = re.compile(r"'[^']*'")


def sql_case_only(before: str, after: str) -> bool:
    """A mutant that only changes the case of SQL keywords or identifiers, which SQLite
    reads case-insensitively; a quoted SQL value ('horizon') must stay as it was."""
    return (
        before != after
        and before.lower() == after.lower()
        and _SQL.search(before) is not None
        and _SQL_LITERAL.findall(before) == _SQL_LITERAL.findall(after)
    )


_STRING = re.compile(r""""([^"\\]*)"|'([^'\\]*)'""")


def codec_case_only(before: str, after: str) -> bool:
    """A mutant that only respells a codec name ("latin-1" -> "LATIN-1"): Python's codec
    lookup ignores case."""
    old = [a or b for a, b in _STRING.findall(before)]
    new = [a or b for a, b in _STRING.findall(after)]
    if len(old) != len(new) or before.lower() != after.lower():
        return False
    changed = [(o, n) for o, n in zip(old, new, strict=True) if o != n]
    if len(changed) != 1:
        return False
    try:
        return codecs.lookup(changed[0][0]).name == codecs.lookup(changed[0][1]).name
    except LookupError:
        return False


def explain(mutants: list[Mutant], equivalents: list[Equivalent]) -> None:
    known = {
        (e.file, e.function, e.before, after): e.reason
        for e in equivalents
        for after in ([e.after] if isinstance(e.after, str) else e.after)
    }
    for m in mutants:
        if m.status not in ("survived", "no tests"):
            continue
        m.reason = known.get((m.file, m.function, m.before, m.after), "")
        if not m.reason and sql_case_only(m.before, m.after):
            m.reason = "SQLite reads SQL keywords and names in any case"
        if not m.reason and codec_case_only(m.before, m.after):
            m.reason = "codec names are case-insensitive"


def strict_gaps(result: Result) -> list[Mutant]:
    return [
        m for m in result.survivors() if not m.reason and matches(m.function, result.target.strict)
    ]


def verdict(results: list[Result], args: argparse.Namespace) -> int:
    if any(r.error for r in results):
        for r in results:
            if r.error:
                print(f"mutate: [{r.target.name}] {r.error}", file=sys.stderr)
        return 2
    failed = False
    if args.strict:
        for r in results:
            for m in strict_gaps(r):
                failed = True
                print(
                    f"mutate: [{r.target.name}] unexplained survivor in {m.function}: "
                    f"{m.label()} {m.before!r} -> {m.after!r}",
                    file=sys.stderr,
                )
    if args.fail_under is not None:
        for r in results:
            score = score_without_equivalents(r)
            if score is not None and score < args.fail_under:
                failed = True
                print(
                    f"mutate: [{r.target.name}] {score:.1f}% < --fail-under {args.fail_under}",
                    file=sys.stderr,
                )
    return 1 if failed else 0


def percent(part: int, whole: int) -> float | None:
    return 100.0 * part / whole if whole else None


def score_without_equivalents(r: Result) -> float | None:
    return percent(r.killed(), len(r.counted()) - r.equivalent())


def fmt_pct(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.1f}%"


def fmt_time(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def summary_line(r: Result) -> str:
    counted = len(r.counted())
    text = (
        f"mutate: [{r.target.name}] {r.killed()}/{counted} killed "
        f"({fmt_pct(percent(r.killed(), counted))}; "
        f"{fmt_pct(score_without_equivalents(r))} without {r.equivalent()} equivalent), "
        f"{len(r.survivors())} survivor(s), {fmt_time(r.seconds)}"
    )
    if len(r.mutants) < r.generated:
        text += f", sample of {len(r.mutants)}/{r.generated}"
    if r.cut and not r.mutants:
        text += ", skipped: no budget left"
    elif r.cut:
        text += f", budget cut: {counted}/{len(r.mutants)} run"
    if r.error:
        text += f", ERROR: {r.error}"
    return text


def overall_line(results: list[Result], seconds: float) -> str:
    killed = sum(r.killed() for r in results)
    counted = sum(len(r.counted()) for r in results)
    return (
        f"mutate: overall {killed}/{counted} killed ({fmt_pct(percent(killed, counted))})"
        f" in {fmt_time(seconds)}"
    )


def cell(text: str, limit: int = 90) -> str:
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return "`" + text.replace("|", "\\|").replace("`", "'") + "`"


def focus(before: str, after: str, width: int = 90) -> tuple[str, str]:
    """Trim two long lines to the part that differs, with a little context."""
    if len(before) <= width and len(after) <= width:
        return before, after
    common = len(os.path.commonprefix([before, after]))
    start = max(common - 25, 0)
    lead = "…" if start else ""
    return lead + before[start : start + width], lead + after[start : start + width]


def render(results: list[Result], args: argparse.Namespace, seconds: float) -> str:
    commit = git("rev-parse", "--short", "HEAD") or "?"
    dirty = " (uncommitted changes)" if git("status", "--porcelain", "--", "addon", "tests") else ""
    version = mutmut_version()
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        BEGIN,
        "",
        f"Run {when} on {commit}{dirty} with mutmut {version}, {args.jobs} jobs:"
        f" `{' '.join(['./run.sh', 'mutate', *sys.argv[1:]])}` took {fmt_time(seconds)}.",
        "",
        "| module | mutated | killed / total | score | without equivalent | survivors | time |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        files = ", ".join(f.removeprefix("addon/") for f in r.target.files)
        if r.target.functions != ("*",):
            files += " (" + ", ".join(r.target.functions) + ")"
        counted = len(r.counted())
        out.append(
            f"| {r.target.name} | {files} | {r.killed()} / {counted} "
            f"| {fmt_pct(percent(r.killed(), counted))} "
            f"| {fmt_pct(score_without_equivalents(r))} "
            f"| {len(r.survivors())} ({r.equivalent()} equivalent) | {fmt_time(r.seconds)} |"
        )
    killed = sum(r.killed() for r in results)
    counted = sum(len(r.counted()) for r in results)
    equivalent = sum(r.equivalent() for r in results)
    out.append(
        f"| **overall** | | {killed} / {counted} | {fmt_pct(percent(killed, counted))} "
        f"| {fmt_pct(percent(killed, counted - equivalent))} "
        f"| {sum(len(r.survivors()) for r in results)} ({equivalent} equivalent) "
        f"| {fmt_time(seconds)} |"
    )
    for r in results:
        if r.error:
            out += ["", f"**{r.target.name}: {r.error}**"]
        survivors = sorted(r.survivors(), key=lambda m: (m.file, m.line, m.name))
        if not survivors:
            continue
        out += [
            "",
            f"### Survivors: {r.target.name}",
            "",
            "| where | function | mutation | verdict |",
            "| --- | --- | --- | --- |",
        ]
        for m in survivors:
            before, after = focus(m.before, m.after)
            if m.reason:
                why = f"equivalent: {m.reason}"
            elif m.status == "no tests":
                why = "**gap**: no selected test reaches it"
            else:
                why = f"**gap** ({m.status})"
            out.append(f"| {m.label()} | {m.function} | {cell(before)} → {cell(after)} | {why} |")
    out += ["", END]
    return "\n".join(out)


def mutmut_version() -> str:
    try:
        from importlib.metadata import version

        return version("mutmut")
    except Exception:  # the report must not fail over a version string
        return "?"


def write_report(
    path: Path, results: list[Result], args: argparse.Namespace, seconds: float
) -> None:
    block = render(results, args, seconds)
    text = (
        path.read_text(encoding="utf-8")
        if path.exists()
        else f"# Mutation testing\n\n{BEGIN}\n{END}\n"
    )
    head, sep, rest = text.partition(BEGIN)
    if not sep:
        path.write_text(text.rstrip("\n") + "\n\n" + block + "\n", encoding="utf-8")
        return
    _, sep, tail = rest.partition(END)
    path.write_text(head + block + (tail if sep else "\n"), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
