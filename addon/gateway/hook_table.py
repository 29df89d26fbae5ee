"""mitmproxy's hooks dispatched from a table of the addons that have them.

For every event of every flow (and an `update` event after each), mitmproxy's
`AddonManager.trigger_event` walks its whole chain, some fifty addons in mitmdump,
and for each one enters a generator context manager, starts a coroutine and walks
the addon's children asking each for the hook by name. Nearly all of them have no
such hook. That walk is about a third of bare mitmdump's CPU per call (BENCH.md,
"mitmproxy's hook dispatch"), more than everything llmgate does with a call.

`HookTable` keeps, per hook name, the addons of the chain that have it anywhere
among their children, and hands each of those to mitmproxy's own `invoke_addon`
inside mitmproxy's own `safecall`: the same order, the same error handling, the
same `AddonHalt`, children looked up as they are at the time. Only the addons
that could not have answered are skipped.

The table is rebuilt when it may have gone stale: the chain replaced or grown
(`add`, `remove`, `clear`), an addon registered (how a script or a parent brings
in children: mitmproxy's API asks for `register`), or any option changed (how
mitmproxy's script loader reorders scripts). An addon that gives itself a new hook
method, or new children, by some other way than those is not seen until the next
such change; `llmgate_hook_table=false` (env LLMGATE_HOOK_TABLE=false) puts back
mitmproxy's own dispatch for such a set-up.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from typing import Any

from mitmproxy import ctx, exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall, traverse

OPTION = "llmgate_hook_table"


def _answers(addon: Any, name: str) -> bool:
    # mitmproxy's `_iter_hooks` calls what is truthy under the name (and reports
    # what is not callable): the same test, so such an addon still gets its say.
    return any(getattr(node, name, None) for node in traverse([addon]))


class _Table:
    """The dispatch installed on one `AddonManager` instance, until `remove`."""

    def __init__(self, manager: AddonManager) -> None:
        self.manager = manager
        self.targets: dict[str, tuple[Any, ...]] = {}
        self.chain: list[Any] | None = None
        self.length = -1
        self.register: Callable[[Any], Any] = manager.register

        def register(addon: Any) -> Any:
            try:
                return self.register(addon)
            finally:
                self.targets.clear()

        manager.register = register  # type: ignore[method-assign]
        manager.trigger_event = self.trigger_event  # type: ignore[method-assign]
        manager.master.options.changed.connect(self.forget)

    def forget(self, *_: object, **__: object) -> None:
        self.targets.clear()

    def remove(self) -> None:
        for name in ("register", "trigger_event"):
            self.manager.__dict__.pop(name, None)  # back to the class's own methods
        self.manager.master.options.changed.disconnect(self.forget)

    def _targets(self, name: str) -> Iterable[Any]:
        chain = self.manager.chain
        if chain is not self.chain or len(chain) != self.length:
            self.targets.clear()
            self.chain, self.length = chain, len(chain)
        found = self.targets.get(name)
        if found is None:
            found = self.targets[name] = tuple(a for a in chain if _answers(a, name))
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        invoke = self.manager.invoke_addon
        for addon in self._targets(event.name):
            try:
                with safecall():
                    await invoke(addon, event)
            except exceptions.AddonHalt:
                return


class HookTable:
    """The addon that installs the table on the running mitmproxy, and takes it off."""

    def __init__(self) -> None:
        self.table: _Table | None = None

    def load(self, loader) -> None:  # type: ignore[no-untyped-def]
        loader.add_option(
            OPTION,
            bool,
            os.environ.get("LLMGATE_HOOK_TABLE", "true").lower() not in ("0", "false", "no"),
            "Dispatch mitmproxy's hooks only to the addons that have them, from a "
            "table kept per hook name (a third of mitmproxy's CPU per call). False: "
            "mitmproxy's own dispatch. Env: LLMGATE_HOOK_TABLE.",
        )

    def configure(self, updated: set[str]) -> None:
        if OPTION not in updated:
            return
        wanted = getattr(ctx.options, OPTION)
        if wanted and self.table is None:
            self.table = _Table(ctx.master.addons)
        elif not wanted and self.table is not None:
            self.done()

    def done(self) -> None:
        if self.table is not None:
            self.table.remove()
            self.table = None
