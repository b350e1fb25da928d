"""`@guarded`: judge a tool call against the current camera frame before it runs.

    guard = Guard(load_config("configs/default.yaml"))
    camera = OpenCVCapture(0)

    @guarded(guard, frames=camera)
    def move_arm(x: float, y: float, speed: float = 0.2) -> str:
        "Move the gripper to (x, y) on the table."
        ...

    move_arm(0.4, 0.1)            # allow: runs; veto: raises ActionVetoed (nothing ran)

The wrapper keeps the tool's name, docstring and signature (`functools.wraps`), and stays a
coroutine function when the tool is one (the model call then never blocks the event loop).

What happens with each decision is configuration, separate from judging:
  allow      the tool runs.
  annotate   the tool runs; the decision goes to `on_warning` first (default: a WARNING
             on the "guard.middleware" logger). A shadow-mode veto, which does not block,
             and a failed check the policy lets pass (`on_failure: allow`) are handed on the
             same way. Raise from the handler to stop the call.
  veto       the tool does not run. `on_veto="raise"` (default) raises `ActionVetoed`
             carrying the decision; `"return"` returns `refusal` instead of a result; a
             callable gets the `ActionVetoed` and its return value is the call's result.
A frame source that fails, or arguments that do not bind to the signature, never run the tool:
the first is a fail-closed veto (audited), the second a TypeError as with the bare function.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import inspect
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Literal, TypeVar

from pydantic import ValidationError

from guard.errors import ActionVetoed, InvalidInputError, shown_name
from guard.types import ActionProposal, Decision, Status, Verdict, jsonable, validation_line

if TYPE_CHECKING:
    from guard.core import Guard, PolicySnapshot

log = logging.getLogger("guard.middleware")

F = TypeVar("F", bound=Callable[..., Any])
VetoHandler = Callable[[ActionVetoed], Any]
WarningHandler = Callable[[Decision, ActionProposal], Any]
OnVeto = Literal["raise", "return"] | VetoHandler
Describe = str | Callable[..., str] | None

# Marks a function `guarded` already wrapped, so toolsets do not judge a call twice.
GUARDED_ATTR = "__guard_options__"


def log_warning(decision: Decision, proposal: ActionProposal) -> None:
    """The default `on_warning`: one WARNING line with the verdict, hazards and rationale."""
    hazards = "; ".join(f"{h.category}: {h.description}" for h in decision.hazards)
    log.warning(
        "guard %s on %s (risk %.2f)%s%s",
        decision.verdict.value,
        shown_name(proposal.name),
        decision.risk,
        f" hazards: {hazards}." if hazards else "",
        f" {decision.rationale}" if decision.rationale else "",
    )


def _summary_line(fn: Callable[..., Any]) -> str:
    doc = inspect.getdoc(fn) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


@dataclasses.dataclass(frozen=True)
class GuardOptions:
    """How one guarded tool is judged and what happens with the decision.

    Attributes:
        frames: The frame source (see `guard.frames`); None: no frame (the guard then answers
            no_frame unless the policy does not require one).
        name: The tool name the judge and the audit log see (default: the function's name).
        describe: A fixed description, or a function called with the call's arguments that
            returns one; None: the first line of the docstring.
        ignore: Parameter names left out of the proposal (e.g. self, a context, a secret).
        on_veto: "raise", "return" or a handler (see the module docstring).
        refusal: What a vetoed call returns with `on_veto="return"`.
        on_warning: Gets annotate decisions (and shadow-mode vetoes) before the tool runs.
    """

    frames: Callable[[], Any] | None = None
    name: str | None = None
    describe: Describe = None
    ignore: frozenset[str] = frozenset({"self", "cls"})
    on_veto: OnVeto = "raise"
    refusal: Any = None
    on_warning: WarningHandler = log_warning

    def __post_init__(self) -> None:
        if not callable(self.on_veto) and self.on_veto not in ("raise", "return"):
            raise ValueError(
                f"on_veto must be 'raise', 'return' or a callable, got {self.on_veto!r}"
            )
        if self.frames is not None and not callable(self.frames):
            raise TypeError(
                f"frames must be a callable frame source, got {type(self.frames).__name__}"
            )


class ProposalBuilder:
    """Turns a call of `fn` into an `ActionProposal`: tool name, description, bound arguments."""

    def __init__(self, fn: Callable[..., Any], options: GuardOptions) -> None:
        self.signature = inspect.signature(fn)
        self.name: str = options.name or str(getattr(fn, "__name__", type(fn).__name__))
        self.describe = options.describe
        self.default_description = _summary_line(fn)
        self.ignore = options.ignore

    def arguments(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """The call's arguments by parameter name, defaults filled in.

        Raises:
            TypeError: the arguments do not fit the signature (as the bare call would).
        """
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        out: dict[str, Any] = {}
        for name, value in bound.arguments.items():
            if name in self.ignore:
                continue
            kind = self.signature.parameters[name].kind
            if kind is inspect.Parameter.VAR_KEYWORD:
                out.update({k: v for k, v in value.items() if k not in self.ignore})
            else:
                out[name] = value
        return out

    def build(self, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> ActionProposal:
        return self.from_arguments(self.arguments(args, kwargs))

    def from_arguments(self, arguments: dict[str, Any]) -> ActionProposal:
        if callable(self.describe):
            description = str(self.describe(**arguments))
        elif isinstance(self.describe, str):
            description = self.describe
        else:
            description = self.default_description
        # The arguments as called: the type makes them plain JSON and refuses what every
        # front end refuses (a NaN turned into the text "nan" here first was judged).
        return ActionProposal(
            name=self.name,
            description=description,
            arguments=arguments,
            stamp=time.time(),
        )


class Judge:
    """The judging half of a guarded call, shared by the decorator, toolsets and adapters."""

    def __init__(self, guard: Guard, options: GuardOptions) -> None:
        self.guard = guard
        self.options = options

    def propose(
        self, make: Callable[[], ActionProposal], name: str
    ) -> tuple[ActionProposal, Decision | None]:
        """`make()`'s proposal, or, when the call cannot become one (arguments nested too
        deep, a describe function that fails), a placeholder and its audited invalid_input
        veto: the agent gets a decision, never the exception."""
        try:
            return make(), None
        except Exception as exc:
            placeholder = ActionProposal(name=name.strip() or "?")
            if isinstance(exc, ValidationError):  # its own first line names no field
                reason = validation_line("proposal", exc)
            else:
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            return placeholder, self.guard.reject(
                placeholder, Status.INVALID_INPUT, f"the call cannot be judged: {reason}"
            )

    def _source_failed(self, proposal: ActionProposal, exc: BaseException,
                       policy: PolicySnapshot | None = None) -> Decision:
        status = Status.INVALID_INPUT if isinstance(exc, InvalidInputError) else Status.ERROR
        reason = str(exc) if isinstance(exc, InvalidInputError) else (
            f"frame source failed: {type(exc).__name__}: {exc}"
        )
        return self.guard.reject(proposal, status, reason, policy=policy)

    def check(self, proposal: ActionProposal) -> Decision:
        source = self.options.frames
        if source is None:
            return self.guard.check(None, proposal)

        def frames() -> Any:
            got = source()
            if inspect.isawaitable(got):
                close = getattr(got, "close", None)
                if close is not None:
                    close()  # never awaited: silence "coroutine was never awaited"
                raise TypeError("an async frame source needs an async tool")
            return got

        # The guard calls the source inside the check's deadline: a camera that hangs is a
        # timeout veto, not a hung agent.
        return self.guard.check(frames, proposal)

    async def acheck(self, proposal: ActionProposal) -> Decision:
        source = self.options.frames
        entered = time.monotonic()
        # One policy for the whole check: the frame wait, the judgement and the audit record
        # (a `set_policy` while the frame source is awaited applies to the next check).
        policy = self.guard.policy
        deadline_ms = policy.config.deadline_ms
        try:
            frames = source() if source is not None else None
            if inspect.isawaitable(frames):
                frames = await asyncio.wait_for(frames, timeout=deadline_ms / 1000.0)
        except (asyncio.TimeoutError, TimeoutError):
            return self.guard.reject(
                proposal, Status.TIMEOUT,
                f"frame source gave no frame within deadline_ms ({deadline_ms:g})",
                policy=policy)
        except Exception as exc:
            return self._source_failed(proposal, exc, policy)
        return await self.guard.acheck(frames, proposal, entered=entered, policy=policy)

    def outcome(self, decision: Decision, proposal: ActionProposal) -> tuple[bool, Any]:
        """(run the tool?, value or awaitable to return instead). Calls `on_warning`."""
        if decision.blocks:
            vetoed = ActionVetoed(decision, proposal)
            on_veto = self.options.on_veto
            if on_veto == "raise":
                raise vetoed
            if on_veto == "return":
                return False, self.options.refusal
            return False, on_veto(vetoed)  # type: ignore[operator]
        # A warning is due for an annotate, a shadow-mode veto, and a check that did not run
        # but that the policy lets pass (on_failure: allow): the tool runs unjudged then.
        if decision.verdict is not Verdict.ALLOW or decision.status is not Status.OK:
            return True, self.options.on_warning(decision, proposal)
        return True, None


def guarded(
    guard: Guard,
    *,
    frames: Callable[[], Any] | None = None,
    name: str | None = None,
    describe: Describe = None,
    ignore: Iterable[str] = ("self", "cls"),
    on_veto: OnVeto = "raise",
    refusal: Any = None,
    on_warning: WarningHandler = log_warning,
) -> Callable[[F], F]:
    """Decorate a tool (plain or async) so that the guard judges every call before it runs.

    Args:
        guard: The `guard.core.Guard` that judges.
        frames: Frame source (a callable; async ones only for async tools).
        name: Tool name in the proposal (default: the function's `__name__`).
        describe: Description in the proposal: a string, or a function of the call's arguments
            (keywords) returning one; None: the docstring's first line.
        ignore: Parameter names not sent to the judge (default: self, cls).
        on_veto: "raise" (ActionVetoed), "return" (`refusal`) or a handler of ActionVetoed
            whose return value becomes the call's result (awaited for async tools if needed).
        refusal: The value a vetoed call returns with `on_veto="return"`.
        on_warning: Called with (decision, proposal) before the tool runs for annotate, a
            shadow-mode veto, or a failed check the policy allows; awaited for async tools if
            it returns an awaitable.

    Returns:
        A decorator; the decorated function has the tool's name, docstring and signature.
    """
    options = GuardOptions(
        frames=frames,
        name=name,
        describe=describe,
        ignore=frozenset(ignore),
        on_veto=on_veto,
        refusal=refusal,
        on_warning=on_warning,
    )

    def decorate(fn: F) -> F:
        return wrap_tool(fn, guard, options)

    return decorate


def wrap_tool(fn: F, guard: Guard, options: GuardOptions) -> F:
    """`guarded` with ready options (used by toolsets)."""
    builder = ProposalBuilder(fn, options)
    judge = Judge(guard, options)

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
            arguments = builder.arguments(args, kwargs)  # raises as the bare call would
            proposal, decision = judge.propose(
                lambda: builder.from_arguments(arguments), builder.name
            )
            if decision is None:
                decision = await judge.acheck(proposal)
            run, value = judge.outcome(decision, proposal)
            if inspect.isawaitable(value):
                value = await value
            if not run:
                return value
            return await fn(*args, **kwargs)

        wrapper: Any = async_wrapper
    else:

        @functools.wraps(fn)
        def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
            arguments = builder.arguments(args, kwargs)  # raises as the bare call would
            proposal, decision = judge.propose(
                lambda: builder.from_arguments(arguments), builder.name
            )
            if decision is None:
                decision = judge.check(proposal)
            run, value = judge.outcome(decision, proposal)
            if not run:
                return value
            return fn(*args, **kwargs)

        wrapper = sync_wrapper
    setattr(wrapper, GUARDED_ATTR, options)
    wrapper.__guard__ = guard
    return wrapper  # type: ignore[no-any-return]


def is_guarded(fn: Any) -> bool:
    """True when `fn` is already wrapped by `guarded` (a toolset leaves it as it is)."""
    return hasattr(fn, GUARDED_ATTR)


__all__ = [
    "GuardOptions",
    "Judge",
    "ProposalBuilder",
    "guarded",
    "is_guarded",
    "jsonable",
    "log_warning",
    "wrap_tool",
]
