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
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers import http
from mitmproxy.test import taddons, tflow

from addon.gateway import Gateway
from addon.gateway.hook_table import OPTION, HookTable, _Table

HOOK_NAMES = ("request", "response", "update", "running")
BEHAVIOURS = ("ok", "async", "raise", "halt", "falsy")


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

        def sync(*_: object) -> None:
            log.append(f"{ident}.{hook}")
            if behaviour == "raise":
                raise ValueError(f"{ident} fails")
            if behaviour == "halt":
                raise exceptions.AddonHalt()

        async def asynchronous(*_: object) -> None:
            await asyncio.sleep(0)
            log.append(f"{ident}.{hook}")

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


def run_both(manager: AddonManager, log: list[str], caplog: pytest.LogCaptureFixture) -> None:
    """Every hook name through mitmproxy's dispatch and through the table: the same."""
    table = _Table(manager)
    try:
        for name in HOOK_NAMES:
            for dispatch in ("mitmproxy", "table"):
                log.clear()
                caplog.clear()
                if dispatch == "mitmproxy":
                    run(manager, AddonManager.trigger_event(manager, event_for(name)))
                    expected = (list(log), [r.getMessage() for r in caplog.records])
                else:
                    run(manager, manager.trigger_event(event_for(name)))
                    got = (list(log), [r.getMessage() for r in caplog.records])
            assert got == expected, name
    finally:
        table.remove()


# caplog is cleared before each dispatch, so sharing it across examples is safe.
@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(chain=st.lists(tree, max_size=6))
def test_the_table_calls_what_mitmproxy_calls_in_its_order_with_its_errors(
    chain: list, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR)
    with fresh_manager() as manager:
        log: list[str] = []
        for i, shape in enumerate(chain):
            manager.add(build(shape, log, f"a{i}"))
        run_both(manager, log, caplog)


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
    assert dispatched(manager, log) == ["late.request"]
    child = Node("child", log, {"request": "ok"})
    parent.addons.append(child)
    manager.register(child)  # how mitmproxy asks a parent to bring in a child
    assert dispatched(manager, log) == ["child.request", "late.request"]
    manager.remove(manager.get("late"))
    assert dispatched(manager, log) == ["child.request"]
    table.remove()


def test_children_are_looked_up_as_they_are_at_each_event(manager: AddonManager) -> None:
    # The table holds the chain's addons, not their children: mitmproxy's script
    # loader reorders its scripts in place, and they run in their new order.
    log: list[str] = []
    first, second = Node("first", log, {"request": "ok"}), Node("second", log, {"request": "ok"})
    parent = Node("parent", log, {})
    parent.addons = [first, second]
    manager.add(parent)
    table = _Table(manager)
    assert dispatched(manager, log) == ["first.request", "second.request"]
    parent.addons = [second, first]
    assert dispatched(manager, log) == ["second.request", "first.request"]
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
    assert dispatched(manager, log) == ["quiet.request"]
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
