"""`guard mcp-proxy` through real MCP sessions.

The MCP SDK's own client talks to `guard mcp-proxy` (a real subprocess, over stdio and over
streamable HTTP), which stands in front of a real MCP server: the small kitchen robot of
`examples/mcp_proxy/robot_server.py`, which appends every call that reaches it to a file. So
"vetoed calls never run" is counted where the tools live, not inferred from the proxy's word.
The judge is the scripted backend (answers by the action's words), plus one call through the
embedded transformers model.
"""

from __future__ import annotations

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pytest

pytest.importorskip("mcp")

import anyio
import mcp_types as types
from mcp import Client, StdioServerParameters
from mcp.client.session import ClientRequestContext

from guard.audit import verify
from guard.mcp.messages import META_KEY, veto_text, warning_text
from guard.types import ActionProposal, Decision, Hazard, Status, Verdict

ROOT = Path(__file__).resolve().parents[1]
ROBOT = ROOT / "examples" / "mcp_proxy" / "robot_server.py"
FRAME = ROOT / "examples" / "kitchen_towel_on_stove.jpg"
EMBEDDED = ROOT / "guard" / "models" / "hazardworld-small"

# The scripted judge answers by the action's words; the rule vetoes on the MCP tool's name and
# argument alone, without asking the judge.
CONFIG = """\
model:
  backend: scripted
  scripted:
    by_action:
      stove:
        text: "VETO\\nrisk: 0.9\\nhazard: fire | a towel lies on the burner | the towel ignites \
| 0.9\\nconsequence: Turning the burner on sets the towel alight."
      cup:
        text: "ANNOTATE\\nrisk: 0.4\\nhazard: burn | the cup holds hot tea | the tea may spill \
on someone | 0.4\\nconsequence: Hot tea may spill."
    responses:
      - text: "ALLOW\\nrisk: 0.05"
policy:
  max_frame_age_ms: null   # the example picture never changes
  rules:
    - name: no-knife-pick
      match: {tool: "^pick$", arguments: {object: "knife"}}
      verdict: veto
"""

SESSION_TIMEOUT_S = 120


@pytest.fixture
def work(tmp_path: Path) -> Path:
    (tmp_path / "guard.yaml").write_text(CONFIG)
    return tmp_path


def robot_command(calls: Path, *extra: str) -> str:
    return f"{sys.executable} {ROBOT} --calls {calls} {' '.join(extra)}".strip()


def proxy_args(work: Path, *extra: str, upstream: str | None = None) -> list[str]:
    return [
        "-m", "guard.cli.main", "mcp-proxy",
        "--upstream", upstream or robot_command(work / "calls.jsonl"),
        "--config", str(work / "guard.yaml"), "--audit", str(work / "audit.jsonl"), *extra,
    ]


def stdio_proxy(work: Path, *extra: str) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable, args=proxy_args(work, *extra), env=dict(os.environ), cwd=ROOT
    )


def ran(work: Path) -> list[dict[str, Any]]:
    """The calls that reached the robot server."""
    path = work / "calls.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def text(result: types.CallToolResult) -> str:
    return "\n".join(c.text for c in result.content if isinstance(c, types.TextContent))


def decision_of(result: types.CallToolResult) -> dict[str, Any]:
    assert result.meta is not None and META_KEY in result.meta, result
    summary: dict[str, Any] = result.meta[META_KEY]
    return summary


def run(session: Callable[[], Awaitable[None]]) -> None:
    async def bounded() -> None:
        with anyio.fail_after(SESSION_TIMEOUT_S):
            await session()

    anyio.run(bounded)


def audit_records(work: Path) -> list[dict[str, Any]]:
    path = work / "audit.jsonl"
    result = verify(path)
    assert result.ok, result.describe(path)
    return [json.loads(line) for line in path.read_text().splitlines()]


def png_content() -> dict[str, str]:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.full((48, 64, 3), 200, dtype=np.uint8)).save(buf, format="PNG")
    return {"type": "image", "data": base64.b64encode(buf.getvalue()).decode(),
            "mimeType": "image/png"}


# -- stdio: the whole contract in one session ----------------------------------------------------


def test_stdio_proxy_forwards_allowed_calls_and_stops_vetoed_ones(work: Path) -> None:
    got: dict[str, Any] = {}

    async def session() -> None:
        async with Client(StdioServerParameters(
            command=sys.executable, args=[str(ROBOT)], env=dict(os.environ)
        )) as robot:
            got["upstream"] = {t.name: t for t in (await robot.list_tools()).tools}
        async with Client(stdio_proxy(work, "--frames", str(FRAME))) as client:
            got["tools"] = {t.name: t for t in (await client.list_tools()).tools}
            got["move"] = await client.call_tool("move_base", {"x": 1.5, "y": -2})
            got["runs_after_move"] = len(ran(work))
            got["stove"] = await client.call_tool("turn_on_stove", {"burner": 2})
            got["knife"] = await client.call_tool("pick", {"object": "kitchen knife"})
            got["cup"] = await client.call_tool("pick", {"object": "cup of tea"})
            got["check"] = await client.call_tool(
                "guard_check", {"tool": "turn_on_stove", "arguments": {"burner": 1}}
            )
            got["unknown"] = await client.call_tool("self_destruct", {})

    run(session)

    # The robot's tools under the same names and schemas, plus guard_check.
    assert set(got["tools"]) == set(got["upstream"]) | {"guard_check"}
    for name, tool in got["upstream"].items():
        assert got["tools"][name].input_schema == tool.input_schema
        assert got["tools"][name].description == tool.description

    # Allowed: it ran, with the robot's own answer.
    assert not got["move"].is_error and text(got["move"]) == "arrived at (1.5, -2)"
    assert got["runs_after_move"] == 1
    assert decision_of(got["move"])["verdict"] == "allow"

    # Vetoed by the judge: a tool error with the projected consequence; it never ran.
    stove = got["stove"]
    assert stove.is_error
    assert "NOT run" in text(stove) and "the towel ignites" in text(stove)
    assert "fire: a towel lies on the burner" in text(stove)
    assert decision_of(stove)["verdict"] == "veto"

    # Vetoed by a rule on the MCP tool's name and argument, without the judge.
    knife = got["knife"]
    assert knife.is_error and "no-knife-pick" in text(knife)
    assert decision_of(knife)["rules"] == ["no-knife-pick"]

    # Annotated: it ran, the warning first.
    cup = got["cup"]
    assert not cup.is_error
    assert isinstance(cup.content[0], types.TextContent)
    assert cup.content[0].text.startswith("WARNING from the safety guard")
    assert "the tea may spill on someone" in cup.content[0].text
    assert text(cup).endswith("holding the cup of tea")

    # guard_check judges and runs nothing; an unknown tool runs nothing either.
    check = got["check"]
    assert not check.is_error and check.structured_content is not None
    assert check.structured_content["verdict"] == "veto"
    assert got["unknown"].is_error and "self_destruct" in text(got["unknown"])

    assert ran(work) == [
        {"tool": "move_base", "arguments": {"x": 1.5, "y": -2.0}},
        {"tool": "pick", "arguments": {"object": "cup of tea"}},
    ]
    # Every call is one audited decision, judged with its name and arguments, and the log
    # verifies.
    decisions = [r for r in audit_records(work) if r["kind"] == "decision"]
    assert [(r["proposal"]["name"], r["decision"]["verdict"]) for r in decisions] == [
        ("move_base", "allow"), ("turn_on_stove", "veto"), ("pick", "veto"),
        ("pick", "annotate"), ("turn_on_stove", "veto"), ("self_destruct", "veto"),
    ]
    assert decisions[2]["proposal"]["arguments"] == {"object": "kitchen knife"}
    assert decisions[0]["proposal"]["description"] == (
        "Drive the robot's base to (x, y) metres on the kitchen map."
    )


# -- streamable HTTP on both sides ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_for_port(port: int, proc: subprocess.Popen[bytes], timeout_s: float = 60.0) -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}: "
                                 f"{proc.stderr.read().decode() if proc.stderr else ''}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError(f"nothing listens on port {port} after {timeout_s} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_http_proxy_in_front_of_an_http_robot(work: Path) -> None:
    robot_port, proxy_port = free_port(), free_port()
    robot = subprocess.Popen(
        [sys.executable, str(ROBOT), "--calls", str(work / "calls.jsonl"),
         "--http", f"127.0.0.1:{robot_port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    proxy = None
    try:
        wait_for_port(robot_port, robot)
        proxy = subprocess.Popen(
            [sys.executable, *proxy_args(
                work, "--frames", str(FRAME), "--http", f"127.0.0.1:{proxy_port}",
                upstream=f"http://127.0.0.1:{robot_port}/mcp",
            )],
            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        wait_for_port(proxy_port, proxy)
        got: dict[str, Any] = {}

        async def session() -> None:
            async with Client(f"http://127.0.0.1:{proxy_port}/mcp") as client:
                got["tools"] = [t.name for t in (await client.list_tools()).tools]
                got["status"] = await client.call_tool("get_status", {})
                got["stove"] = await client.call_tool("turn_on_stove", {"burner": 3})

        run(session)
    finally:
        if proxy is not None:
            stop(proxy)
        stop(robot)

    assert set(got["tools"]) == {"move_base", "turn_on_stove", "pick", "get_status",
                                 "guard_check"}
    assert not got["status"].is_error and text(got["status"]) == "battery 87%, at (0, 0)"
    assert got["stove"].is_error and "the towel ignites" in text(got["stove"])
    assert ran(work) == [{"tool": "get_status", "arguments": {}}]
    assert len([r for r in audit_records(work) if r["kind"] == "decision"]) == 2


# -- frames: none, and an image argument of the call ---------------------------------------------


def test_no_frame_is_a_veto_and_an_image_argument_is_a_frame(work: Path) -> None:
    got: dict[str, Any] = {}
    image = png_content()

    async def session() -> None:
        async with Client(stdio_proxy(work, "--image-argument", "image")) as client:
            got["move"] = await client.call_tool("move_base", {"x": 0, "y": 1})
            got["with_image"] = await client.call_tool(
                "guard_check", {"tool": "pick", "arguments": {"object": "cup", "image": image}}
            )
            got["bad_image"] = await client.call_tool(
                "guard_check", {"tool": "pick", "arguments": {"object": "cup", "image": "%%"}}
            )

    run(session)

    # No frame: the check could not run, so nothing ran (fail closed).
    move = got["move"]
    assert move.is_error and "could not run (no_frame" in text(move)
    assert decision_of(move)["status"] == "no_frame"
    assert ran(work) == []
    # The call's image is the judged frame; the judge reads a marker, not the base64.
    assert got["with_image"].structured_content["status"] == "ok"
    assert got["with_image"].structured_content["verdict"] == "annotate"
    assert got["bad_image"].structured_content["status"] == "invalid_input"
    records = [r for r in audit_records(work) if r["kind"] == "decision"]
    judged = records[1]
    assert judged["proposal"]["arguments"]["image"].startswith("<image, ")
    assert image["data"] not in json.dumps(judged)
    assert judged["frames"][0]["source"] == "argument 'image'"


# -- annotate: ask a human through MCP elicitation -----------------------------------------------


def test_annotate_asks_a_human_and_only_an_approval_runs(work: Path) -> None:
    answers: list[Literal["accept", "decline"]] = ["accept", "decline", "accept"]
    asked: list[str] = []
    got: dict[str, Any] = {}

    async def elicit(
        context: ClientRequestContext, params: types.ElicitRequestParams
    ) -> types.ElicitResult | types.ErrorData:
        asked.append(params.message)
        action = answers.pop(0)
        return types.ElicitResult(
            action=action, content={"approve": True} if action == "accept" else None
        )

    args = ("--frames", str(FRAME), "--annotate", "ask")

    async def session() -> None:
        # The SDK's default: the 2026-07-28 protocol (the question rides an input round).
        async with Client(stdio_proxy(work, *args), elicitation_callback=elicit) as client:
            got["modern"] = client.protocol_version
            got["approved"] = await client.call_tool("pick", {"object": "cup"})
            got["declined"] = await client.call_tool("pick", {"object": "mug cup"})
            got["allowed"] = await client.call_tool("get_status", {})
        # A handshake-era client gets a server-to-client elicitation request.
        async with Client(stdio_proxy(work, *args), elicitation_callback=elicit,
                          mode="legacy") as client:
            got["legacy"] = client.protocol_version
            got["legacy_approved"] = await client.call_tool("pick", {"object": "teacup"})
        # A client that cannot ask anyone: refused.
        async with Client(stdio_proxy(work, *args)) as client:
            got["unasked"] = await client.call_tool("pick", {"object": "cup"})

    run(session)

    assert got["modern"] == "2026-07-28" and got["legacy"] != "2026-07-28"
    assert len(asked) == 3 and all("the tea may spill on someone" in q for q in asked)
    assert not got["approved"].is_error and "WARNING" in text(got["approved"])
    assert got["declined"].is_error and "the human declined it" in text(got["declined"])
    assert not got["allowed"].is_error  # an allow asks nobody
    assert not got["legacy_approved"].is_error
    assert got["unasked"].is_error and "no MCP elicitation support" in text(got["unasked"])
    assert [c["arguments"].get("object") for c in ran(work)] == ["cup", None, "teacup"]
    approvals = [r for r in audit_records(work) if r["kind"] == "approval"]
    assert [(a["outcome"], a["runs"]) for a in approvals] == [
        ("approved", True), ("declined", False), ("approved", True), ("unsupported", False),
    ]


# -- one call through a real model ---------------------------------------------------------------


@pytest.mark.slow
def test_one_call_through_the_embedded_transformers_model(work: Path) -> None:
    pytest.importorskip("transformers")
    (work / "guard.yaml").write_text("policy:\n  max_frame_age_ms: null\n")
    frame = ROOT / "examples" / "world_episode" / "frames" / "00000.jpg"
    got: dict[str, Any] = {}

    async def session() -> None:
        async with Client(stdio_proxy(
            work, "--frames", str(frame), "--model", str(EMBEDDED), "--backend", "transformers"
        )) as client:
            got["stove"] = await client.call_tool("turn_on_stove", {"burner": 1})

    run(session)

    decision = decision_of(got["stove"])
    assert decision["status"] == "ok" and decision["model"].endswith("hazardworld-small")
    # It ran exactly when the model did not veto it.
    assert (len(ran(work)) == 1) == (decision["verdict"] != "veto")
    assert got["stove"].is_error == (decision["verdict"] == "veto")
    [record] = [r for r in audit_records(work) if r["kind"] == "decision"]
    assert record["answer"]


# -- the example ---------------------------------------------------------------------------------


def test_the_example_runs_offline_as_written() -> None:
    proc = subprocess.run(
        [sys.executable, "examples/mcp_proxy/client.py"],
        capture_output=True, text=True, timeout=120, cwd=ROOT, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "turn_on_stove({'burner': 2}) -> ERROR" in out and "the towel ignites" in out
    assert "move_base({'x': 1.0, 'y': 2.0}) -> ok" in out
    assert out.rstrip().endswith("OK, 5 records, chain intact")


# -- the command line ----------------------------------------------------------------------------


def guard_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "guard.cli.main", "mcp-proxy", *args],
        capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL, cwd=ROOT,
    )


@pytest.mark.parametrize(("args", "message"), [
    (["--upstream", "  "], "--upstream is empty"),
    (["--upstream", "no-such-robot-server --x"], "command 'no-such-robot-server' not found"),
    (["--upstream", "python x.py", "--http", "8080"], "expected HOST:PORT"),
    (["--upstream", "python x.py", "--frames", "/no/such/dir"], "no such image file or folder"),
    (["--upstream", "python x.py", "--frames", str(FRAME), "--image-argument", "image"],
     "give one frame source"),
])
def test_usage_errors_are_one_line_and_exit_2(args: list[str], message: str) -> None:
    proc = guard_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr, proc.stderr


def test_an_upstream_that_does_not_start_is_one_line_and_exit_1(work: Path) -> None:
    proc = guard_cli(*proxy_args(work, upstream=f"{sys.executable} -c pass")[3:])
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "upstream MCP server" in lines[0], proc.stderr


# -- what the model reads ------------------------------------------------------------------------


def test_veto_and_warning_texts_state_the_consequence() -> None:
    proposal = ActionProposal(name="turn_on_stove", arguments={"burner": 2})
    decision = Decision(
        verdict=Verdict.VETO, status=Status.OK, risk=0.9, rationale="The towel catches fire.",
        hazards=[Hazard(category="fire", description="a towel on the burner",
                        consequence="the towel ignites", severity=0.9)],
    )
    veto = veto_text(decision, proposal)
    assert veto.startswith("VETOED by the safety guard: the tool 'turn_on_stove' was NOT run.")
    assert "Projected consequence: the towel ignites" in veto and decision.id in veto
    failed = Decision(verdict=Verdict.VETO, status=Status.TIMEOUT, risk=1.0, error="slow judge")
    assert "could not run (timeout: slow judge)" in veto_text(failed, proposal)
    shadow = decision.model_copy(update={"mode": "shadow"})
    assert "shadow mode" in warning_text(shadow, proposal)


def test_a_raw_client_sending_nan_arguments_gets_audited_vetoes(work: Path) -> None:
    """JSON has no NaN, but the SDK's parser reads the literal; the SDK's own client sends null.
    A hostile client writing the line itself: the known tool and the unknown one are both
    audited vetoes that ran nothing (the unknown tool's stand-in proposal raised before)."""
    proc = subprocess.Popen([sys.executable, *proxy_args(work, "--frames", str(FRAME))],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, cwd=ROOT, env=dict(os.environ))
    assert proc.stdin is not None and proc.stdout is not None

    def send(line: str) -> None:
        assert proc.stdin is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()

    def answer(want: int) -> dict[str, Any]:
        assert proc.stdout is not None
        while True:
            line = proc.stdout.readline()
            assert line, "the proxy closed its output"
            msg: dict[str, Any] = json.loads(line)
            if msg.get("id") == want:
                return msg

    try:
        send(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
            "protocolVersion": "2025-06-18", "capabilities": {},
            "clientInfo": {"name": "raw", "version": "0"}}}))
        answer(1)
        send(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        send('{"jsonrpc": "2.0", "id": 2, "method": "tools/call", '
             '"params": {"name": "move_base", "arguments": {"x": NaN, "y": 1}}}')
        send('{"jsonrpc": "2.0", "id": 3, "method": "tools/call", '
             '"params": {"name": "self_destruct", "arguments": {"x": Infinity}}}')
        known, unknown = answer(2)["result"], answer(3)["result"]
    finally:
        stop(proc)
    assert known["isError"] and unknown["isError"]
    assert known["_meta"][META_KEY]["status"] == "invalid_input"
    assert unknown["_meta"][META_KEY]["status"] == "invalid_input"
    assert "self_destruct" in unknown["content"][0]["text"]
    assert ran(work) == []
    records = audit_records(work)
    assert [r["decision"]["status"] for r in records] == ["invalid_input", "invalid_input"]
