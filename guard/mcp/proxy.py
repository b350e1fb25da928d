"""The MCP proxy: an MCP server in front of another one, judging every tool call first.

    guard = Guard(load_config("guard.yaml"))
    proxy = GuardProxy(guard, ProxyOptions(upstream="python robot_server.py",
                                           frames=ImageDirectory("/tmp/camera")))
    anyio.run(proxy.serve_stdio)            # or: anyio.run(proxy.serve_http, "127.0.0.1", 8765)

The proxy connects to the upstream server (a command it spawns and talks to over stdio, or a
streamable HTTP URL), lists its tools and offers them under the same names and schemas, plus
`guard_check` (judge an action, run nothing). Each `tools/call` becomes an `ActionProposal`
(the tool's name, the first line of its description, the call's arguments) and goes through
`Guard.check` with the latest frame of the configured source, before anything is forwarded:

  veto      an MCP tool error (`isError`) stating the projected consequence and the hazards,
            so the model can re-plan; the upstream tool never runs.
  annotate  `annotate="forward"`: forwarded, the warning prepended to the result.
            `annotate="ask"`: a human is asked through MCP elicitation first; a decline, a
            cancel, no answer within `ask_timeout_s` or a client without elicitation is a
            refusal (the tool never runs). The answer is audited next to the decision.
  allow     forwarded.

A check that could not run (no frame, a frame source that fails, a timeout, a judge that is
down) is the core's fail-closed veto. Every decision is audited by the core; results carry
the decision under `_meta["embodied-guard/decision"]`.
"""

from __future__ import annotations

import json
import logging
import os
import shlex
import shutil
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel import Server
from mcp.server.stdio import stdio_server
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

from guard.errors import GuardError, UsageError
from guard.frames import FrameResult
from guard.mcp.images import image_bytes, judged_arguments
from guard.mcp.messages import (
    META_KEY,
    approval_question,
    decision_summary,
    veto_text,
    warning_text,
)
from guard.types import ActionProposal, Decision, Frame, Status, Verdict

#: A frame source the proxy calls inside the check's deadline (see `guard.frames`).
FrameSource = Callable[[], FrameResult]

if TYPE_CHECKING:
    from guard.core import Guard

log = logging.getLogger("guard.mcp")

#: The proxy's own tool: judge an action without running anything.
GUARD_CHECK = "guard_check"
#: The key of the approval question in a 2026-07-28 `InputRequiredResult`.
APPROVAL_KEY = "guard_approval"

_DESCRIPTION_CHARS = 300
_MAX_PAGES = 100

_APPROVAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "approve": {
            "type": "boolean",
            "title": "Run it anyway",
            "description": "True runs the action despite the warning; false refuses it.",
        }
    },
    "required": ["approve"],
}

_GUARD_CHECK_TOOL = types.Tool(
    name=GUARD_CHECK,
    title="Safety check (runs nothing)",
    description=(
        "Ask the robot's safety guard whether an action would be allowed in the current "
        "camera view, without running it. Returns the decision: verdict (allow, annotate, "
        "veto), risk, hazards with their projected consequences, and a rationale."
    ),
    input_schema={
        "type": "object",
        "properties": {
            "tool": {"type": "string", "description": "The tool the action would call."},
            "arguments": {"type": "object", "description": "The arguments it would pass."},
            "description": {
                "type": "string",
                "description": "What the action does, in words (default: the tool's own "
                "description).",
            },
        },
        "required": ["tool"],
    },
)


def _stand_in(fields: dict[str, Any]) -> ActionProposal:
    """The proposal an audit record or a veto message names: the fields as given, or, where the
    type refuses them (a NaN argument, a blank name), the tool's name alone, so that a refusal
    is still audited and answered rather than raised."""
    try:
        return ActionProposal(**fields)
    except ValueError:
        return ActionProposal(name=str(fields.get("name") or "?").strip() or "?")


@dataclass(frozen=True)
class ProxyOptions:
    """How the proxy reaches its upstream and treats the guard's decisions.

    Attributes:
        upstream: A shell command that starts a stdio MCP server, or an http(s) URL of a
            streamable HTTP one.
        frames: The frame source (see `guard.frames`); None: no camera.
        image_argument: The name of a tool argument that carries the frame (MCP image
            content, a data URL or base64); used instead of `frames` when set. A call
            without it has no frame.
        annotate: "forward" runs an annotated call with the warning attached; "ask" asks a
            human through MCP elicitation first.
        ask_timeout_s: How long to wait for the human's answer before refusing.
        name: The server name the proxy announces.
    """

    upstream: str
    frames: FrameSource | None = None
    image_argument: str | None = None
    annotate: Literal["forward", "ask"] = "forward"
    ask_timeout_s: float = 120.0
    name: str = "embodied-guard"

    def __post_init__(self) -> None:
        if self.annotate not in ("forward", "ask"):
            raise UsageError(f"annotate must be 'forward' or 'ask', got {self.annotate!r}")
        if not self.ask_timeout_s > 0:
            raise UsageError(f"ask_timeout_s must be > 0, got {self.ask_timeout_s!r}")
        if self.frames is not None and self.image_argument is not None:
            raise UsageError("give one frame source: a camera source or an image argument")


def upstream_target(spec: str) -> StdioServerParameters | str:
    """What `Client` connects to for `--upstream`: a URL as it is, a command split as a shell
    would split it (the child inherits this process's environment, as from a shell).

    Raises:
        UsageError: an empty spec, unbalanced quotes, or a command that is not found.
    """
    spec = spec.strip()
    if spec.lower().startswith(("http://", "https://")):
        return spec
    try:
        argv = shlex.split(spec)
    except ValueError as exc:
        raise UsageError(f"--upstream {spec!r}: {exc}") from None
    if not argv:
        raise UsageError("--upstream is empty: give a command or an http(s) URL")
    if shutil.which(argv[0]) is None:
        raise UsageError(f"--upstream: command {argv[0]!r} not found")
    return StdioServerParameters(command=argv[0], args=argv[1:], env=dict(os.environ))


def _leaf(exc: BaseException) -> BaseException:
    """The first real error inside (nested) exception groups, for a one-line message."""
    inner = getattr(exc, "exceptions", None)
    while isinstance(inner, tuple) and inner and isinstance(inner[0], BaseException):
        exc = inner[0]
        inner = getattr(exc, "exceptions", None)
    return exc


def _one_line(exc: BaseException) -> str:
    exc = _leaf(exc)
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__


def _describe(tool: types.Tool | None) -> str:
    """The first line of a tool's description (else its title): what the judge reads."""
    if tool is None:
        return ""
    for line in (tool.description or "").splitlines():
        if line.strip():
            return line.strip()[:_DESCRIPTION_CHARS]
    return (tool.title or "")[:_DESCRIPTION_CHARS]


def _text_result(
    text: str, *, error: bool, decision: Decision | None = None
) -> types.CallToolResult:
    meta = {META_KEY: decision_summary(decision)} if decision is not None else None
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)], is_error=error, _meta=meta
    )


@dataclass
class _Pending:
    """An annotated call waiting for the human's answer (2026-07-28 input rounds)."""

    decision: Decision
    proposal: ActionProposal
    name: str
    arguments: dict[str, Any]
    expires: float


class GuardProxy:
    """An MCP server that forwards to `options.upstream` what `guard` lets run.

    Args:
        guard: The `guard.core.Guard` that judges every call.
        options: Upstream, frame source and annotate handling.
    """

    def __init__(self, guard: Guard, options: ProxyOptions) -> None:
        self.guard = guard
        self.options = options
        self._target = upstream_target(options.upstream)
        self._upstream: Client | None = None
        self._tools: dict[str, types.Tool] = {}
        self._pending: dict[str, _Pending] = {}
        from guard import __version__

        self.server: Server[Any] = Server(
            options.name,
            version=__version__,
            instructions=(
                "Every tool call is checked by a safety guard against the robot's current "
                "camera view before it runs. A refused call returns an error that states the "
                "projected consequence: re-plan instead of retrying it unchanged. "
                f"'{GUARD_CHECK}' asks the guard about an action without running it."
            ),
            on_list_tools=self._on_list_tools,
            on_call_tool=self._on_call_tool,
            get_tool_input_schema=self._input_schema,
        )

    # -- running -------------------------------------------------------------------------

    @asynccontextmanager
    async def connected(self) -> AsyncIterator[GuardProxy]:
        """Connect to the upstream server and list its tools for the duration of the block.

        Raises:
            GuardError: the upstream server did not start or did not answer.
        """
        async with AsyncExitStack() as stack:
            try:
                client = await stack.enter_async_context(Client(self._target, cache=None))
                self._upstream = client
                await self._refresh_tools()
            except Exception as exc:
                self._upstream = None
                raise GuardError(
                    f"upstream MCP server {self.options.upstream!r} failed: {_one_line(exc)}"
                ) from None
            try:
                yield self
            finally:
                self._upstream = None

    async def serve_stdio(self) -> None:
        """Serve MCP on this process's stdin/stdout until the client disconnects."""
        async with self.connected(), stdio_server() as (read, write):
            await self.server.run(read, write, self.server.create_initialization_options())

    async def serve_http(self, host: str, port: int) -> None:
        """Serve MCP over streamable HTTP at `http://HOST:PORT/mcp` until stopped."""
        import uvicorn

        app = self.server.streamable_http_app(host=host)
        config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
        server = uvicorn.Server(config)
        async with self.connected():
            log.warning("guard mcp-proxy: serving MCP on http://%s:%d/mcp", host, port)
            await server.serve()
        if not server.started:
            raise GuardError(f"could not serve on {host}:{port} (see the log above)")

    # -- tools/list ----------------------------------------------------------------------

    def _client(self) -> Client:
        if self._upstream is None:
            raise GuardError("the proxy is not connected to its upstream server")
        return self._upstream

    async def _refresh_tools(self) -> None:
        tools: list[types.Tool] = []
        cursor: str | None = None
        for _ in range(_MAX_PAGES):  # a paginator that never ends cannot hang the proxy
            page = await self._client().list_tools(cursor=cursor)
            tools.extend(page.tools)
            cursor = page.next_cursor
            if cursor is None:
                break
        shadowed = [t.name for t in tools if t.name == GUARD_CHECK]
        if shadowed:
            log.warning("the upstream's own %r tool is hidden behind the guard's", GUARD_CHECK)
        self._tools = {t.name: t for t in tools if t.name != GUARD_CHECK}

    def _input_schema(self, name: str) -> Mapping[str, Any] | None:
        if name == GUARD_CHECK:
            return _GUARD_CHECK_TOOL.input_schema
        tool = self._tools.get(name)
        return tool.input_schema if tool is not None else None

    async def _on_list_tools(
        self, ctx: ServerRequestContext[Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        await self._refresh_tools()
        return types.ListToolsResult(tools=[*self._tools.values(), _GUARD_CHECK_TOOL])

    # -- tools/call ----------------------------------------------------------------------

    def _frames(self, arguments: Mapping[str, Any]) -> FrameSource | None:
        name = self.options.image_argument
        if name is None:
            return self.options.frames
        if arguments.get(name) is None:
            return None  # no frame: the core answers no_frame (a veto unless configured)
        value = arguments[name]

        # Decoded inside the check, so a bad image is an audited invalid_input veto.
        def frame() -> Frame:
            return Frame.from_bytes(image_bytes(value, name), source=f"argument '{name}'")

        return frame

    def _proposal_fields(
        self, name: str, arguments: Mapping[str, Any], description: str | None = None
    ) -> dict[str, Any]:
        if description is None:
            description = _describe(self._tools.get(name))
        return {
            "name": name,
            "description": description,
            "arguments": judged_arguments(arguments, self.options.image_argument),
            "stamp": time.time(),
        }

    async def _judge(
        self, fields: dict[str, Any], arguments: Mapping[str, Any]
    ) -> tuple[Decision, ActionProposal]:
        # The core validates the mapping itself: a proposal it refuses is an audited
        # invalid_input veto, never an exception here.
        decision = await self.guard.acheck(self._frames(arguments), fields)
        return decision, _stand_in(fields)

    async def _reject(self, proposal: ActionProposal, status: Status, reason: str) -> Decision:
        # The audit write happens off the event loop, as every check's does.
        return await anyio.to_thread.run_sync(self.guard.reject, proposal, status, reason)

    async def _on_call_tool(
        self, ctx: ServerRequestContext[Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult | types.InputRequiredResult:
        name = params.name
        arguments = dict(params.arguments or {})
        if name == GUARD_CHECK:
            return await self._guard_check(arguments)
        if params.request_state is not None:
            return await self._resume(params, arguments)
        if name not in self._tools:
            await self._refresh_tools()
        if name not in self._tools:
            proposal = _stand_in({"name": name, "arguments": judged_arguments(
                arguments, self.options.image_argument)})
            decision = await self._reject(
                proposal, Status.INVALID_INPUT, f"the upstream server has no tool {name!r}"
            )
            return _text_result(
                f"Unknown tool {name!r}: the robot's server offers {sorted(self._tools)}.",
                error=True, decision=decision,
            )
        decision, proposal = await self._judge(self._proposal_fields(name, arguments), arguments)
        if decision.blocks:
            return _text_result(veto_text(decision, proposal), error=True, decision=decision)
        if (
            self.options.annotate == "ask"
            and decision.verdict is Verdict.ANNOTATE
            and decision.status is Status.OK
            and decision.mode == "enforce"  # shadow mode blocks nothing, so asks nobody
        ):
            return await self._ask(ctx, decision, proposal, name, arguments)
        warn = decision.verdict is not Verdict.ALLOW or decision.status is not Status.OK
        return await self._forward(name, arguments, decision, proposal, warn=warn)

    async def _forward(
        self,
        name: str,
        arguments: dict[str, Any],
        decision: Decision,
        proposal: ActionProposal,
        *,
        warn: bool,
    ) -> types.CallToolResult:
        try:
            result = await self._client().call_tool(name, arguments)
        except Exception as exc:
            return _text_result(
                f"The robot's MCP server failed on '{name}' (the guard had allowed it; whether "
                f"it ran is unknown): {_one_line(exc)}",
                error=True, decision=decision,
            )
        content = list(result.content)
        if warn:  # first, so the model reads it before the result
            warning = warning_text(decision, proposal)
            content.insert(0, types.TextContent(type="text", text=warning))
        meta = {**(result.meta or {}), META_KEY: decision_summary(decision)}
        return types.CallToolResult(
            content=content,
            structured_content=result.structured_content,
            is_error=result.is_error,
            _meta=meta,
        )

    async def _guard_check(self, arguments: Mapping[str, Any]) -> types.CallToolResult:
        tool = arguments.get("tool")
        args = arguments.get("arguments") or {}
        description = arguments.get("description")
        if not isinstance(tool, str) or not isinstance(args, dict) or not (
            description is None or isinstance(description, str)
        ):
            return _text_result(
                f"{GUARD_CHECK} needs 'tool' (a string), optional 'arguments' (an object) and "
                "'description' (a string).",
                error=True,
            )
        decision, _ = await self._judge(self._proposal_fields(tool, args, description), args)
        summary = decision_summary(decision)
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=json.dumps(summary, ensure_ascii=False))],
            structured_content=summary,
            is_error=False,
            _meta={META_KEY: summary},
        )

    # -- asking a human ------------------------------------------------------------------

    async def _ask(
        self,
        ctx: ServerRequestContext[Any],
        decision: Decision,
        proposal: ActionProposal,
        name: str,
        arguments: dict[str, Any],
    ) -> types.CallToolResult | types.InputRequiredResult:
        caps = ctx.session.client_capabilities
        if caps is None or caps.elicitation is None:
            return await self._answered(
                decision, proposal, name, arguments, "unsupported",
                "the client cannot ask a human (no MCP elicitation support)",
            )
        question = approval_question(decision, proposal)
        if ctx.protocol_version in MODERN_PROTOCOL_VERSIONS:
            # 2026-07-28: no server-to-client requests; the question rides the result and the
            # client calls again with the answer and this one-time token.
            now = time.monotonic()
            self._pending = {k: p for k, p in self._pending.items() if p.expires > now}
            token = uuid.uuid4().hex
            self._pending[token] = _Pending(
                decision, proposal, name, arguments, now + self.options.ask_timeout_s
            )
            return types.InputRequiredResult(
                input_requests={APPROVAL_KEY: types.ElicitRequest(
                    params=types.ElicitRequestFormParams(
                        message=question, requested_schema=_APPROVAL_SCHEMA
                    )
                )},
                request_state=token,
            )
        try:
            with anyio.fail_after(self.options.ask_timeout_s):
                answer = await ctx.session.elicit_form(
                    question, _APPROVAL_SCHEMA, related_request_id=ctx.request_id
                )
        except TimeoutError:
            return await self._answered(
                decision, proposal, name, arguments, "timeout",
                f"no answer came within {self.options.ask_timeout_s:g} s",
            )
        except Exception as exc:
            return await self._answered(
                decision, proposal, name, arguments, "error",
                f"asking failed ({_one_line(exc)})",
            )
        return await self._answer(decision, proposal, name, arguments, answer)

    async def _resume(
        self, params: types.CallToolRequestParams, arguments: dict[str, Any]
    ) -> types.CallToolResult:
        pending = self._pending.pop(params.request_state or "", None)
        if (
            pending is None
            or pending.expires <= time.monotonic()
            or pending.name != params.name
            or pending.arguments != arguments
        ):
            # An unknown, used, expired or re-targeted approval never runs anything.
            proposal = ActionProposal(name=params.name.strip() or "?")
            decision = await self._reject(
                proposal, Status.INVALID_INPUT, "unknown, used or expired approval token"
            )
            return _text_result(veto_text(decision, proposal, "the approval was not valid"),
                                error=True, decision=decision)
        raw = (params.input_responses or {}).get(APPROVAL_KEY)
        answer = raw if isinstance(raw, types.ElicitResult) else None
        if answer is None:
            return await self._answered(
                pending.decision, pending.proposal, pending.name, pending.arguments,
                "error", "the client sent no answer to the question",
            )
        return await self._answer(
            pending.decision, pending.proposal, pending.name, pending.arguments, answer
        )

    async def _answer(
        self,
        decision: Decision,
        proposal: ActionProposal,
        name: str,
        arguments: dict[str, Any],
        answer: types.ElicitResult,
    ) -> types.CallToolResult:
        content = answer.content or {}
        if answer.action == "accept" and content.get("approve") is True:
            return await self._answered(decision, proposal, name, arguments, "approved", None)
        outcome = "declined" if answer.action != "cancel" else "cancelled"
        return await self._answered(
            decision, proposal, name, arguments, outcome, f"the human {outcome} it"
        )

    async def _answered(
        self,
        decision: Decision,
        proposal: ActionProposal,
        name: str,
        arguments: dict[str, Any],
        outcome: str,
        refusal: str | None,
    ) -> types.CallToolResult:
        """Audit the human's answer next to the decision; run the call only on approval."""
        record = {
            "decision_id": decision.id,
            "proposal_id": proposal.id,
            "tool": name,
            "outcome": outcome,
            "runs": refusal is None,
            "reason": refusal,
        }
        try:
            await anyio.to_thread.run_sync(self.guard.audit.append, "approval", record)
        except Exception as exc:  # an unlogged approval is never a run
            log.error("approval could not be audited: %s", exc)
            refusal = refusal or f"the approval could not be audited ({_one_line(exc)})"
        if refusal is not None:
            return _text_result(veto_text(decision, proposal, refusal), error=True,
                                decision=decision)
        return await self._forward(name, arguments, decision, proposal, warn=True)


__all__ = ["APPROVAL_KEY", "GUARD_CHECK", "GuardProxy", "ProxyOptions", "upstream_target"]
