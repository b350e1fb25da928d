"""`GuardedToolset`: guard a whole set of tools at once, and call them by name.

    tools = GuardedToolset(guard, [move_arm, open_gripper, turn_on_stove], frames=camera)
    tools["move_arm"](0.4, 0.1)                    # each tool keeps its own signature
    tools.call("turn_on_stove", {"burner": 2})     # by name with keyword arguments (agents)
    await tools.acall("move_arm", {"x": 0.4, "y": 0.1})

Every tool shares the toolset's frame source and veto/warning handling; `describe` and `names`
override per tool. A tool that is already `@guarded` is kept as it is (never judged twice).
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

from guard.errors import UsageError
from guard.middleware.decorator import (
    Describe,
    GuardOptions,
    OnVeto,
    WarningHandler,
    is_guarded,
    log_warning,
    wrap_tool,
)

if TYPE_CHECKING:
    from guard.core import Guard


class GuardedToolset(Mapping[str, Callable[..., Any]]):
    """A read-only mapping of tool name to guarded tool.

    Args:
        guard: The `guard.core.Guard` that judges every call.
        tools: Functions (named by `__name__`) or a mapping of name to function.
        frames: Frame source shared by the tools.
        describe: Per-tool descriptions (a string or a function of the arguments), by name.
        ignore: Parameter names never sent to the judge.
        on_veto: "raise", "return" or a handler, as in `guarded`.
        refusal: What a vetoed call returns with `on_veto="return"`.
        on_warning: Annotate (and shadow-veto) handler, as in `guarded`.
    """

    def __init__(
        self,
        guard: Guard,
        tools: Iterable[Callable[..., Any]] | Mapping[str, Callable[..., Any]],
        *,
        frames: Callable[[], Any] | None = None,
        describe: Mapping[str, Describe] | None = None,
        ignore: Iterable[str] = ("self", "cls"),
        on_veto: OnVeto = "raise",
        refusal: Any = None,
        on_warning: WarningHandler = log_warning,
    ) -> None:
        self.guard = guard
        named = (
            dict(tools.items())
            if isinstance(tools, Mapping)
            else {getattr(t, "__name__", type(t).__name__): t for t in tools}
        )
        describe = dict(describe or {})
        unknown = sorted(set(describe) - set(named))
        if unknown:
            raise UsageError(f"describe names tools that are not in the set: {unknown}")
        self._tools: dict[str, Callable[..., Any]] = {}
        for name, fn in named.items():
            if not callable(fn):
                raise UsageError(f"tool {name!r} is not callable: {type(fn).__name__}")
            if is_guarded(fn):
                self._tools[name] = fn
                continue
            options = GuardOptions(
                frames=frames,
                name=name,
                describe=describe.get(name),
                ignore=frozenset(ignore),
                on_veto=on_veto,
                refusal=refusal,
                on_warning=on_warning,
            )
            self._tools[name] = wrap_tool(fn, guard, options)

    def __getitem__(self, name: str) -> Callable[..., Any]:
        try:
            return self._tools[name]
        except KeyError:
            raise KeyError(f"no tool named {name!r}; tools: {sorted(self._tools)}") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._tools)

    def __len__(self) -> int:
        return len(self._tools)

    def call(self, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Call a sync tool by name with keyword arguments (guarded)."""
        tool = self[name]
        if inspect.iscoroutinefunction(tool):
            raise UsageError(f"tool {name!r} is async: use `await toolset.acall(...)`")
        return tool(**dict(arguments or {}))

    async def acall(self, name: str, arguments: Mapping[str, Any] | None = None) -> Any:
        """Call any tool by name from async code; sync tools run on a worker thread."""
        tool = self[name]
        kwargs = dict(arguments or {})
        if inspect.iscoroutinefunction(tool):
            return await tool(**kwargs)
        return await asyncio.to_thread(tool, **kwargs)


__all__ = ["GuardedToolset"]
