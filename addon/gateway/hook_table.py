"""mitmproxy's hooks dispatched from a table of the addons that have them.

For every event of every flow (and an `update` event after each), mitmproxy's
`AddonManager.trigger_event` walks its whole chain, some fifty addons in mitmdump,
and for each one enters a generator context manager, starts a coroutine and walks
the addon's children asking each for the hook by name. Nearly all of them have no
such hook. That walk is about a third of bare mitmdump's CPU per call (BENCH.md,
"mitmproxy's hook dispatch"), more than everything llmgate does with a call.

`HookTable` keeps, per hook name, the chain's addons that have it anywhere among
their children, each with its hooks in mitmproxy's order (parent, then children,
depth first), and calls them as mitmproxy does: one `safecall` per addon of the
chain, so an error ends that addon's hooks for the event and is logged as
mitmproxy logs it, `AddonHalt` ends the event, and an awaitable result is awaited.
The event's arguments are read once per event rather than once per hook (they
are the same objects). An addon with something under a hook's name that is
neither callable nor a module is left to mitmproxy's own `invoke_addon`, which
reports it, as is one that raises when asked for its hooks or its children.

The table is rebuilt when it may have gone stale: the chain replaced (`remove`,
`clear`); an addon registered (`add` registers, a script reloaded is removed and
registered again, and mitmproxy's API asks a parent bringing in children to
register them); any option changed (how mitmproxy's script loader reorders
scripts). An addon that gives itself a new hook method, or changes its
children, by some other way than those is not seen until the next such change;
`llmgate_hook_table=false` (env LLMGATE_HOOK_TABLE=false) puts back mitmproxy's
own dispatch for such a set-up.
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Callable
from typing import Any

from mitmproxy import ctx, exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall, traverse

from addon.gateway.options import env_flag

OPTION = "llmgate_hook_table"


# An addon of the chain and its hooks for one event, in mitmproxy's order; no hooks
# (None) where mitmproxy's own `invoke_addon` must see to it.
Group = tuple[Any, tuple[Callable[..., Any], ...] | None]


def _group(addon: Any, name: str) -> Group | None:
    hooks_: list[Callable[..., Any]] = []
    try:
        for node in traverse([addon]):
            hook = getattr(node, name, None)
            if not hook or isinstance(hook, types.ModuleType):  # as mitmproxy's `_iter_hooks`
                continue
            if not callable(hook):
                return addon, None  # mitmproxy reports it, in its words
            hooks_.append(hook)
    except Exception:
        # An addon that fails to be asked (a raising `__getattr__` or `addons`): mitmproxy
        # asks it again at every event, inside its `safecall`, which logs the error.
        return addon, None
    return (addon, tuple(hooks_)) if hooks_ else None


class _Table:
    """The dispatch installed on one `AddonManager` instance, until `remove`."""

    def __init__(self, manager: AddonManager) -> None:
        self.manager = manager
        self.groups: dict[str, tuple[Group, ...]] = {}
        self.chain: list[Any] | None = None
        self.register: Callable[[Any], Any] = manager.register

        def register(addon: Any) -> Any:
            try:
                return self.register(addon)
            finally:
                self.groups.clear()

        manager.register = register  # type: ignore[method-assign]
        manager.trigger_event = self.trigger_event  # type: ignore[method-assign]
        manager.master.options.changed.connect(self.forget)

    def forget(self, *_: object, **__: object) -> None:
        self.groups.clear()

    def remove(self) -> None:
        for name in ("register", "trigger_event"):
            self.manager.__dict__.pop(name, None)  # back to the class's own methods
        self.manager.master.options.changed.disconnect(self.forget)

    def _groups(self, name: str) -> tuple[Group, ...]:
        chain = self.manager.chain
        if chain is not self.chain:  # `remove` and `clear` replace it; `add` registers
            self.groups.clear()
            self.chain = chain
        found = self.groups.get(name)
        if found is None:
            built = (_group(addon, name) for addon in chain)
            found = self.groups[name] = tuple(g for g in built if g is not None)
        return found

    async def trigger_event(self, event: hooks.Hook) -> None:
        groups = self._groups(event.name)
        if not groups:
            return
        args = event.args()
        for addon, hooks_ in groups:
            try:
                with safecall():
                    if hooks_ is None:
                        await self.manager.invoke_addon(addon, event)
                        continue
                    for hook in hooks_:
                        result = hook(*args)
                        if result is not None and inspect.isawaitable(result):
                            await result
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
            env_flag("LLMGATE_HOOK_TABLE"),
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
