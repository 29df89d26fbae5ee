"""The hook table dispatches exactly as mitmproxy's own `trigger_event` does.

Each test runs on mitmproxy's real `AddonManager` (from its test context), once
through the class's own `trigger_event` and once through the table installed on
the instance, and compares which hooks ran, in which order, with which errors.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager, traverse
from mitmproxy.proxy.layers import http
from mitmproxy.test import taddons, tflow

from addon.gateway import Gateway
from addon.gateway.hook_table import OPTION, HookTable, _Table

HOOK_NAMES = ("request", "response", "update", "running")
BEHAVIOURS = ("ok", "async", "raise", "halt", "falsy", "module", "not-callable")


def event_for(name: str) -> hooks.Hook:
    flow = tflow.tflow(resp=True)
    if name == "request":
        return http.HttpRequestHook(flow)
    if name == "response":
        return http.HttpResponseHook(flow)
    if name == "update":
        return hooks.UpdateHook([flow])
    return hooks.RunningHook()


class Node:
    """An addon whose hooks record their calls; `addons` holds its children."""

    def __init__(self, ident: str, log: list[str], hooks_: dict[str, str]) -> None:
        self.name = ident
        self.addons: list[Node] = []
        for hook, behaviour in hooks_.items():
            setattr(self, hook, self._hook(ident, hook, behaviour, log))

    @staticmethod
    def _hook(ident: str, hook: str, behaviour: str, log: list[str]) -> Any:
        if behaviour == "falsy":
            return None  # mitmproxy skips a falsy attribute under a hook's name
        if behaviour == "module":
            return asyncio  # and a module (an addon's `import ... as request`)
        if behaviour == "not-callable":
            return 42  # and reports anything else that is not callable

        def sync(*args: object) -> None:
            log.append(f"{ident}.{hook}{[type(a).__name__ for a in args]}")
            if behaviour == "raise":
                raise ValueError(f"{ident} fails")
            if behaviour == "halt":
                raise exceptions.AddonHalt()

        async def asynchronous(*args: object) -> None:
            await asyncio.sleep(0)
            log.append(f"{ident}.{hook}{[type(a).__name__ for a in args]}")

        return asynchronous if behaviour == "async" else sync


node_hooks = st.dictionaries(st.sampled_from(HOOK_NAMES), st.sampled_from(BEHAVIOURS), max_size=3)
tree = st.recursive(
    st.tuples(node_hooks, st.just([])),
    lambda children: st.tuples(node_hooks, st.lists(children, max_size=3)),
    max_leaves=8,
)


def build(shape: tuple[dict[str, str], list], log: list[str], path: str) -> Node:
    hooks_, children = shape
    node = Node(path, log, hooks_)
    node.addons = [build(child, log, f"{path}.{i}") for i, child in enumerate(children)]
    return node


def run(manager: AddonManager, dispatch: Coroutine[Any, Any, None]) -> None:
    # On the master's own loop: mitmproxy's log handler hands errors to it.
    manager.master.event_loop.run_until_complete(dispatch)


@contextmanager
def fresh_manager() -> Iterator[AddonManager]:
    with taddons.context() as tctx:
        try:
            yield tctx.master.addons
        finally:
            # Its log handler would hand the next example's errors to this closed loop.
            tctx.master._legacy_log_events.uninstall()


@pytest.fixture
def manager() -> Iterator[AddonManager]:
    with fresh_manager() as manager:
        yield manager


def dispatch_both(manager: AddonManager, log: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Every hook name through mitmproxy's dispatch and through the table: the same
    hooks in the same order with the same arguments, and the same errors logged."""
    for name in HOOK_NAMES:
        seen = []
        for dispatch in (AddonManager.trigger_event.__get__(manager), manager.trigger_event):
            log.clear()
            caplog.clear()
            run(manager, dispatch(event_for(name)))
            seen.append((list(log), [r.getMessage() for r in caplog.records]))
        assert seen[0] == seen[1], name


# What may happen to the addons between two events, each the way mitmproxy's API
# (or its script loader) does it: a new addon of the chain, a child brought in with
# `register`, an addon of the chain removed, children reordered in an option change.
change = st.tuples(
    st.sampled_from(("add", "register", "remove", "reorder")), st.integers(0, 99), tree
)


def apply(manager: AddonManager, log: list[str], what: tuple[str, int, Any], serial: int) -> None:
    kind, pick, shape = what
    nodes = [n for n in traverse(manager.chain) if isinstance(n, Node)]
    tops = [n for n in manager.chain if isinstance(n, Node)]
    if kind == "add":
        manager.add(build(shape, log, f"new{serial}"))
    elif kind == "register" and nodes:
        child = build(shape, log, f"child{serial}")
        parent = nodes[pick % len(nodes)]
        parent.addons.append(child)
        manager.register(child)
    elif kind == "remove" and tops:
        manager.remove(tops[pick % len(tops)])
    elif kind == "reorder" and nodes:
        parent = nodes[pick % len(nodes)]
        parent.addons = parent.addons[::-1]
        manager.master.options.update(allow_hosts=[f"example{serial}.com"])


# caplog is cleared before each dispatch, so sharing it across examples is safe.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chain=st.lists(tree, max_size=6), changes=st.lists(change, max_size=4))
def test_the_table_calls_what_mitmproxy_calls_in_its_order_with_its_errors(
    chain: list, changes: list, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with fresh_manager() as manager:
        log: list[str] = []
        for i, shape in enumerate(chain):
            manager.add(build(shape, log, f"a{i}"))
        table = _Table(manager)
        try:
            dispatch_both(manager, log, caplog)
            for serial, what in enumerate(changes):
                apply(manager, log, what, serial)
                dispatch_both(manager, log, caplog)
        finally:
            table.remove()


REQUEST = ".request['HTTPFlow']"  # what a request hook records


def dispatched(manager: AddonManager, log: list[str], name: str = "request") -> list[str]:
    log.clear()
    run(manager, manager.trigger_event(event_for(name)))
    return list(log)


def test_an_addon_added_or_registered_later_is_dispatched_to(manager: AddonManager) -> None:
    log: list[str] = []
    parent = Node("parent", log, {})
    manager.add(parent)
    table = _Table(manager)
    assert dispatched(manager, log) == []  # the table now knows `request` has no takers
    manager.add(Node("late", log, {"request": "ok"}))  # the chain grows in place
    assert dispatched(manager, log) == [f"late{REQUEST}"]
    child = Node("child", log, {"request": "ok"})
    parent.addons.append(child)
    manager.register(child)  # how mitmproxy asks a parent to bring in a child
    assert dispatched(manager, log) == [f"child{REQUEST}", f"late{REQUEST}"]
    manager.remove(manager.get("late"))
    assert dispatched(manager, log) == [f"child{REQUEST}"]
    table.remove()


def test_children_reordered_in_an_option_change_run_in_their_new_order(
    manager: AddonManager,
) -> None:
    # mitmproxy's script loader reorders its scripts in `configure`, without `register`.
    log: list[str] = []
    first, second = Node("first", log, {"request": "ok"}), Node("second", log, {"request": "ok"})
    parent = Node("parent", log, {})
    parent.addons = [first, second]
    manager.add(parent)
    table = _Table(manager)
    assert dispatched(manager, log) == [f"first{REQUEST}", f"second{REQUEST}"]
    parent.addons = [second, first]
    manager.master.options.update(allow_hosts=["example.com"])
    assert dispatched(manager, log) == [f"second{REQUEST}", f"first{REQUEST}"]
    table.remove()


def test_a_child_given_without_register_is_seen_after_an_option_change(
    manager: AddonManager,
) -> None:
    log: list[str] = []
    parent = Node("parent", log, {})
    manager.add(parent)
    table = _Table(manager)
    assert dispatched(manager, log) == []
    parent.addons.append(Node("quiet", log, {"request": "ok"}))  # mitmproxy asks for register
    assert dispatched(manager, log) == []  # the documented limit: not seen yet
    manager.master.options.update(allow_hosts=["example.com"])
    assert dispatched(manager, log) == [f"quiet{REQUEST}"]
    table.remove()


class Moody(Node):
    """An addon that fails when asked for one hook: mitmproxy logs it at each event."""

    def __getattr__(self, name: str) -> Any:
        if name == "response":
            raise RuntimeError("moody has no answer")
        raise AttributeError(name)


def test_an_addon_that_raises_when_asked_is_logged_as_mitmproxy_logs_it(
    manager: AddonManager, caplog: pytest.LogCaptureFixture
) -> None:
    log: list[str] = []
    manager.add(Moody("moody", log, {"request": "ok"}))
    manager.add(Node("after", log, {"response": "ok"}))
    table = _Table(manager)
    caplog.set_level(logging.ERROR)
    dispatch_both(manager, log, caplog)  # both log the error and go on to the next addon
    assert dispatched(manager, log, "response") == ["after.response['HTTPFlow']"]
    assert [r.getMessage() for r in caplog.records] == ["Addon error: moody has no answer"]
    table.remove()


def test_removing_the_table_puts_back_mitmproxys_own_methods(manager: AddonManager) -> None:
    table = _Table(manager)
    assert "trigger_event" in vars(manager) and "register" in vars(manager)
    table.remove()
    assert "trigger_event" not in vars(manager) and "register" not in vars(manager)
    assert manager.trigger_event.__func__ is AddonManager.trigger_event  # type: ignore[attr-defined]


def test_the_option_installs_and_removes_the_table(tmp_path: Path) -> None:
    (tmp_path / "p.yaml").write_text("routes: []\n")
    gateway = Gateway()
    with taddons.context(gateway) as tctx:
        manager = tctx.master.addons
        assert getattr(tctx.options, OPTION) is True  # on by default
        # mitmdump's script loader configures every option at start; the test context
        # configures only those named.
        tctx.configure(gateway, llmgate_policies=str(tmp_path / "p.yaml"),
                       llmgate_db=str(tmp_path / "a.db"), **{OPTION: True})  # fmt: skip
        assert gateway.hook_table.table is not None
        assert vars(manager)["trigger_event"] == gateway.hook_table.table.trigger_event
        tctx.configure(gateway.hook_table, **{OPTION: False})
        assert gateway.hook_table.table is None and "trigger_event" not in vars(manager)
        tctx.configure(gateway.hook_table, **{OPTION: True})
        assert "trigger_event" in vars(manager)
        gateway.hook_table.done()
        assert "trigger_event" not in vars(manager)


def test_the_environment_turns_it_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LLMGATE_HOOK_TABLE", "false")
    table = HookTable()
    with taddons.context(table) as tctx:
        assert getattr(tctx.options, OPTION) is False
