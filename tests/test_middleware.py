"""The middleware: @guarded on sync and async tools, toolsets, tool-call adapters, frame sources.

Every judge here is the scripted backend answering by the action's words, so each decision is
known in advance; frames come from test doubles stamped "now".
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from guard.backends.scripted import ScriptedBackend
from guard.config import GuardConfig, ScriptedOptions, ScriptedStep
from guard.core import Guard
from guard.errors import ActionVetoed, InvalidInputError, UsageError
from guard.frames import (
    ImageDirectory,
    OpenCVCapture,
    StaticFrame,
    ros_compressed_to_rgb,
    ros_image_to_rgb,
)
from guard.middleware import (
    GuardedToolset,
    arun_tool_call,
    guarded,
    parse_tool_call,
    proposal_from_tool_call,
    run_tool_call,
)
from guard.types import ActionProposal, Decision, Frame, Status, Verdict

ROOT = Path(__file__).resolve().parents[1]
VETO = "VETO\nrisk: 0.9\nhazard: fire | a towel lies on the burner | it ignites | 0.9"
ANNOTATE = "ANNOTATE\nrisk: 0.4\nhazard: burn | the burner is warm | a hand gets burned | 0.3"


def make_guard(config: GuardConfig, **by_action: str) -> Guard:
    """A guard whose judge vetoes/annotates by action words and allows the rest."""
    options = ScriptedOptions(
        by_action={k: ScriptedStep(text=v) for k, v in by_action.items()},
        responses=[ScriptedStep(text="ALLOW\nrisk: 0.0")],
    )
    return Guard(config, backend=ScriptedBackend(options))


@pytest.fixture
def camera() -> StaticFrame:
    rng = np.random.default_rng(1)
    return StaticFrame(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


@pytest.fixture
def guard(config: GuardConfig):
    g = make_guard(config, stove="VETO\nrisk: 0.9\nhazard: fire | towel on the burner | "
                   "it ignites | 0.9", towel=ANNOTATE)
    yield g
    g.close()


def audit_records(guard: Guard) -> list[dict[str, Any]]:
    lines = Path(guard.audit.path).read_text().splitlines()
    return [json.loads(line) for line in lines if line.strip()]


# -- the decorator, sync --------------------------------------------------------------------------


def test_sync_tool_keeps_its_interface_and_runs_on_allow(guard, camera):
    calls = []

    @guarded(guard, frames=camera)
    def move_to(place: str, speed: float = 0.2) -> str:
        """Drive to a named place."""
        calls.append((place, speed))
        return f"at {place}"

    assert move_to.__name__ == "move_to"
    assert move_to.__doc__ == "Drive to a named place."
    sig = inspect.signature(move_to)
    assert sig == inspect.signature(move_to.__wrapped__)  # type: ignore[attr-defined]
    assert list(sig.parameters) == ["place", "speed"] and sig.parameters["speed"].default == 0.2
    assert move_to("sink") == "at sink"
    assert calls == [("sink", 0.2)]
    [rec] = audit_records(guard)
    assert rec["proposal"]["name"] == "move_to"
    assert rec["proposal"]["arguments"] == {"place": "sink", "speed": 0.2}
    assert rec["proposal"]["description"] == "Drive to a named place."
    assert rec["decision"]["verdict"] == "allow"


def test_sync_veto_raises_with_the_decision_and_the_tool_never_runs(guard, camera):
    ran = []

    @guarded(guard, frames=camera)
    def turn_on_stove(burner: int) -> str:
        ran.append(burner)
        return "on"

    with pytest.raises(ActionVetoed) as info:
        turn_on_stove(2)
    assert ran == []
    decision = info.value.decision
    assert decision.verdict is Verdict.VETO and decision.status is Status.OK
    assert decision.hazards[0].category == "fire"
    assert info.value.proposal.arguments == {"burner": 2}
    assert "turn_on_stove" in str(info.value)


def test_annotate_runs_the_tool_and_hands_the_warning_on(guard, camera, caplog):
    warnings: list[tuple[Decision, ActionProposal]] = []

    @guarded(guard, frames=camera, on_warning=lambda d, p: warnings.append((d, p)))
    def move_towel(target: str) -> str:
        return f"towel on {target}"

    assert move_towel("counter") == "towel on counter"
    [(decision, proposal)] = warnings
    assert decision.verdict is Verdict.ANNOTATE and proposal.name == "move_towel"

    @guarded(guard, frames=camera)  # default: one WARNING log line
    def fold_towel() -> str:
        return "folded"

    with caplog.at_level(logging.WARNING, logger="guard.middleware"):
        assert fold_towel() == "folded"
    assert "annotate on fold_towel" in caplog.text and "burner is warm" in caplog.text


def test_veto_can_return_a_refusal_or_call_a_handler(guard, camera):
    @guarded(guard, frames=camera, on_veto="return", refusal="REFUSED")
    def stove_a() -> str:
        return "on"

    seen: list[ActionVetoed] = []

    def handler(exc: ActionVetoed) -> str:
        seen.append(exc)
        return f"not done: {exc.decision.hazards[0].description}"

    @guarded(guard, frames=camera, on_veto=handler)
    def stove_b() -> str:
        return "on"

    assert stove_a() == "REFUSED"
    assert stove_b() == "not done: towel on the burner"
    assert seen[0].decision.verdict is Verdict.VETO
    with pytest.raises(ValueError, match="on_veto"):
        guarded(guard, on_veto="ignore")  # type: ignore[arg-type]


def test_shadow_mode_veto_runs_and_warns(config, camera):
    with make_guard(config.with_overrides(**{"policy.mode": "shadow"}), stove=VETO) as g:
        warned = []

        @guarded(g, frames=camera, on_warning=lambda d, p: warned.append(d.verdict))
        def stove() -> str:
            return "on"

        assert stove() == "on"
        assert warned == [Verdict.VETO]


def test_a_failed_check_the_policy_lets_pass_still_warns(config, camera):
    lenient = config.with_overrides(**{"policy.on_failure": "allow"})
    with make_guard(lenient) as g:
        warned = []

        @guarded(g, frames=None, on_warning=lambda d, p: warned.append(d.status))
        def move() -> str:
            return "moved"

        assert move() == "moved"
        assert warned == [Status.NO_FRAME]


def test_no_frame_and_failing_frame_sources_fail_closed(guard, camera):
    ran = []

    def broken_camera() -> Frame:
        raise RuntimeError("usb unplugged")

    def undecodable() -> Frame:
        raise InvalidInputError("camera: not a decodable image")

    @guarded(guard, frames=None)
    def a() -> None:
        ran.append("a")

    @guarded(guard, frames=broken_camera)
    def b() -> None:
        ran.append("b")

    @guarded(guard, frames=undecodable)
    def c() -> None:
        ran.append("c")

    statuses = []
    for tool in (a, b, c):
        with pytest.raises(ActionVetoed) as info:
            tool()
        statuses.append(info.value.decision.status)
    assert ran == []
    assert statuses == [Status.NO_FRAME, Status.ERROR, Status.INVALID_INPUT]
    assert "usb unplugged" in audit_records(guard)[1]["decision"]["error"]


def test_stale_frame_source_is_a_veto(guard):
    old = Frame(image=np.zeros((8, 8, 3), np.uint8), stamp=time.time() - 60)

    @guarded(guard, frames=lambda: old)
    def move() -> None:
        raise AssertionError("must not run")

    with pytest.raises(ActionVetoed) as info:
        move()
    assert info.value.decision.status is Status.STALE_FRAME


def test_arguments_become_json_and_describe_names_the_action(guard, camera):
    class Arm:
        @guarded(guard, frames=camera, describe=lambda pose, **kw: f"move the arm to {pose}")
        def move(self, pose: list[float], image: Any = None, **extra: Any) -> str:
            return "moved"

    assert Arm().move([0.1, 0.2], image=np.zeros((4, 4)), mode=object) == "moved"
    rec = audit_records(guard)[-1]["proposal"]
    assert rec["description"] == "move the arm to [0.1, 0.2]"
    args = rec["arguments"]
    assert "self" not in args and args["pose"] == [0.1, 0.2]
    assert args["image"] == "<array shape=(4, 4) dtype=float64>"
    assert args["mode"].startswith("<class 'object'")  # **extra is flattened


def test_arguments_that_do_not_bind_raise_typeerror_without_judging(guard, camera):
    @guarded(guard, frames=camera)
    def move(place: str) -> str:
        return place

    with pytest.raises(TypeError):
        move(1, 2)  # type: ignore[call-arg]
    assert len(guard.backend.requests) == 0  # type: ignore[attr-defined]


# -- the decorator, async -------------------------------------------------------------------------


def test_async_tools_stay_coroutines_and_follow_the_same_rules(guard, camera):
    ran = []

    async def async_camera() -> Frame:
        await asyncio.sleep(0)
        return camera()

    @guarded(guard, frames=async_camera)
    async def move_to(place: str) -> str:
        """Drive to a place."""
        ran.append(place)
        return f"at {place}"

    @guarded(guard, frames=camera)
    async def light_stove() -> str:
        ran.append("stove")
        return "on"

    warnings = []

    async def awarn(d: Decision, p: ActionProposal) -> None:
        warnings.append(p.name)

    async def arefuse(exc: ActionVetoed) -> str:
        return "refused"

    @guarded(guard, frames=camera, on_warning=awarn, on_veto=arefuse)
    async def handle(step: str) -> str:
        return step

    assert inspect.iscoroutinefunction(move_to) and move_to.__doc__ == "Drive to a place."

    async def scenario() -> None:
        assert await move_to("sink") == "at sink"
        with pytest.raises(ActionVetoed):
            await light_stove()
        assert await handle("towel") == "towel"  # annotate: runs, warned
        assert await handle("stove") == "refused"  # veto: async handler

    asyncio.run(scenario())
    assert ran == ["sink"] and warnings == ["handle"]


def test_a_policy_changed_while_an_async_frame_source_is_awaited_is_not_mixed_in(guard,
                                                                                 camera):
    # The switch to shadow (and to a 1 ms deadline) lands while the tool's frame source is
    # awaited: the check that was already waiting keeps the policy it started with, whole
    # (enforce, and the frame wait's deadline too), and so does its audit record.
    before = guard.policy

    async def switching_camera() -> Frame:
        guard.set_policy(mode="shadow", deadline_ms=1.0)
        await asyncio.sleep(0.01)  # past the new deadline, well inside the old one
        return camera()

    @guarded(guard, frames=switching_camera)
    async def light_stove() -> str:
        raise AssertionError("vetoed under the policy the check began with: must not run")

    with pytest.raises(ActionVetoed) as info:
        asyncio.run(light_stove())
    decision = info.value.decision
    assert decision.status is Status.OK and decision.verdict is Verdict.VETO
    assert decision.policy == before.id != guard.policy.id
    assert "shadow" not in decision.policy and decision.blocks
    assert audit_records(guard)[-1]["decision"]["policy"] == before.id


def test_sync_tool_with_an_async_frame_source_fails_closed(guard):
    async def cam() -> Frame:
        raise AssertionError("never awaited")

    @guarded(guard, frames=cam)
    def move() -> None:
        raise AssertionError("must not run")

    with pytest.raises(ActionVetoed) as info:
        move()
    assert info.value.decision.status is Status.ERROR
    assert "async frame source" in (info.value.decision.error or "")


# -- toolsets -------------------------------------------------------------------------------------


def move_to(place: str) -> str:
    """Drive to a place."""
    return f"at {place}"


def turn_on_stove(burner: int, minutes: int = 10) -> str:
    """Light a burner."""
    return f"burner {burner} on"


async def wait_for(seconds: float) -> str:
    await asyncio.sleep(0)
    return f"waited {seconds}"


def test_toolset_guards_every_tool_and_calls_them_by_name(guard, camera):
    tools = GuardedToolset(guard, [move_to, turn_on_stove, wait_for], frames=camera,
                           describe={"move_to": "drive the base"})
    assert sorted(tools) == ["move_to", "turn_on_stove", "wait_for"] and len(tools) == 3
    assert tools["move_to"]("sink") == "at sink"
    assert tools.call("move_to", {"place": "door"}) == "at door"
    with pytest.raises(ActionVetoed):
        tools.call("turn_on_stove", {"burner": 1})
    assert asyncio.run(tools.acall("wait_for", {"seconds": 1})) == "waited 1"
    assert asyncio.run(tools.acall("move_to", {"place": "sink"})) == "at sink"
    with pytest.raises(UsageError, match="async"):
        tools.call("wait_for", {"seconds": 1})
    with pytest.raises(KeyError, match="no tool named"):
        tools["fly"]
    names = [r["proposal"]["name"] for r in audit_records(guard)]
    assert names == ["move_to", "move_to", "turn_on_stove", "wait_for", "move_to"]
    assert audit_records(guard)[0]["proposal"]["description"] == "drive the base"
    with pytest.raises(UsageError, match="describe"):
        GuardedToolset(guard, [move_to], describe={"nope": "x"})


def test_toolset_does_not_judge_an_already_guarded_tool_twice(guard, camera):
    pre = guarded(guard, frames=camera)(move_to)
    tools = GuardedToolset(guard, {"go": pre}, frames=camera)
    assert tools["go"] is pre
    tools.call("go", {"place": "sink"})
    assert len(audit_records(guard)) == 1


# -- OpenAI-style tool calls ----------------------------------------------------------------------


def chat_call(name: str, arguments: str, call_id: str = "call_1") -> dict[str, Any]:
    return {"id": call_id, "type": "function",
            "function": {"name": name, "arguments": arguments}}


def test_openai_tool_calls_allow_veto_and_bad_calls(guard, camera):
    tools = GuardedToolset(guard, [move_to, turn_on_stove], frames=camera)
    ok = run_tool_call(tools, chat_call("move_to", '{"place": "sink"}'))
    assert ok == {"role": "tool", "tool_call_id": "call_1", "content": "at sink"}

    vetoed = run_tool_call(tools, chat_call("turn_on_stove", '{"burner": 2}', "call_2"))
    body = json.loads(vetoed["content"])
    assert vetoed["tool_call_id"] == "call_2"
    assert body["error"] == "vetoed_by_safety_guard" and body["hazards"][0]["category"] == "fire"

    n_before = len(audit_records(guard))
    bad = json.loads(run_tool_call(tools, chat_call("move_to", '{"place": '))["content"])
    assert bad["error"] == "invalid_arguments"
    refused = audit_records(guard)[n_before:]  # the refusal is audited, nothing ran
    assert [r["decision"]["status"] for r in refused] == ["invalid_input"]
    not_object = json.loads(run_tool_call(tools, chat_call("move_to", "[1]"))["content"])
    assert not_object["error"] == "invalid_arguments"
    unknown = json.loads(run_tool_call(tools, chat_call("fly", "{}"))["content"])
    assert unknown["error"] == "unknown_tool"
    wrong = json.loads(run_tool_call(tools, chat_call("move_to", '{"where": "x"}'))["content"])
    assert wrong["error"] == "invalid_arguments"


def test_openai_responses_items_and_sdk_objects(guard, camera):
    class Function:
        name, arguments = "move_to", '{"place": "hall"}'

    class SdkCall:
        id, type, function = "call_9", "function", Function()

    tools = GuardedToolset(guard, [move_to, wait_for], frames=camera)
    assert run_tool_call(tools, SdkCall())["content"] == "at hall"
    item = {"type": "function_call", "call_id": "fc_1", "name": "move_to",
            "arguments": '{"place": "sink"}'}
    assert run_tool_call(tools, item) == {
        "type": "function_call_output", "call_id": "fc_1", "output": "at sink"}
    reply = asyncio.run(arun_tool_call(tools, chat_call("wait_for", '{"seconds": 2}')))
    assert reply["content"] == "waited 2"
    parsed = parse_tool_call(item)
    assert parsed.api == "responses" and parsed.arguments == {"place": "sink"}
    proposal = proposal_from_tool_call(chat_call("move_to", '{"place": "sink"}', "c7"))
    assert (proposal.id, proposal.name, proposal.arguments) == ("c7", "move_to", {"place": "sink"})
    with pytest.raises(ValueError):
        proposal_from_tool_call(chat_call("move_to", "not json"))


# -- LangChain ------------------------------------------------------------------------------------


def test_langchain_tools_keep_their_schema_and_surface_vetoes(guard, camera):
    pytest.importorskip("langchain_core")
    from langchain_core.tools import tool

    from guard.middleware import guard_langchain_tool, guard_langchain_tools

    @tool
    def light_stove(burner: int) -> str:
        """Light one burner of the stove."""
        return f"burner {burner} on"

    @tool
    def go(place: str) -> str:
        """Drive to a place."""
        return f"at {place}"

    safe_stove, safe_go = guard_langchain_tools([light_stove, go], guard, frames=camera)
    assert safe_go.name == "go" and safe_go.description == go.description
    assert safe_go.args == go.args
    assert safe_go.invoke({"place": "sink"}) == "at sink"
    out = safe_stove.invoke({"burner": 2})  # the agent reads the veto as the tool's output
    assert json.loads(out)["error"] == "vetoed_by_safety_guard"
    assert asyncio.run(safe_go.ainvoke({"place": "hall"})) == "at hall"
    raising = guard_langchain_tool(light_stove, guard, frames=camera, on_veto="raise")
    with pytest.raises(ActionVetoed):
        raising.invoke({"burner": 1})


# -- frame sources --------------------------------------------------------------------------------


def test_static_frame_is_stamped_now():
    src = StaticFrame(np.zeros((4, 4, 3), np.uint8))
    t = time.time()
    assert abs(src().stamp - t) < 1.0


def test_image_directory_latest_and_sequence(tmp_path):
    for i, (name, age) in enumerate([("b.png", 30), ("a.png", 5), ("c.jpg", 60)]):
        Image.new("RGB", (8, 6), (i * 100, 0, 0)).save(tmp_path / name)
        t = time.time() - age
        os.utime(tmp_path / name, (t, t))
    (tmp_path / "notes.txt").write_text("not an image")
    latest = ImageDirectory(tmp_path)()
    assert latest is not None and latest.source.endswith("a.png")
    assert abs(latest.stamp - (time.time() - 5)) < 1.0  # stamped with the file's age
    seq = ImageDirectory(tmp_path, mode="sequence")
    names = [Path(seq().source).name for _ in range(3)]
    assert names == ["a.png", "b.png", "c.jpg"] and seq() is None
    looping = ImageDirectory(tmp_path, mode="sequence", loop=True)
    assert [Path(looping().source).name for _ in range(4)][-1] == "a.png"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert ImageDirectory(empty)() is None
    with pytest.raises(UsageError):
        ImageDirectory(tmp_path / "missing")


class FakeCapture:
    """A VideoCapture double: BGR frames whose blue channel counts reads, then end of stream."""

    def __init__(self, n: int) -> None:
        self.n, self.i, self.released = n, 0, False

    def isOpened(self) -> bool:  # OpenCV's name
        return True

    def read(self) -> tuple[bool, np.ndarray | None]:
        if self.i >= self.n:
            return False, None
        self.i += 1
        frame = np.zeros((4, 6, 3), np.uint8)
        frame[..., 0] = self.i  # blue in BGR
        return True, frame

    def release(self) -> None:
        self.released = True


def test_opencv_capture_reads_bgr_as_rgb_and_keeps_the_newest():
    fake = FakeCapture(3)
    direct = OpenCVCapture(capture=fake, threaded=False)
    frame = direct()
    assert frame is not None and frame.image[0, 0, 2] == 1 and frame.image[0, 0, 0] == 0
    direct.close()
    assert fake.released

    fake = FakeCapture(5)
    with OpenCVCapture(capture=fake, max_failures=2) as live:
        deadline = time.time() + 5
        while fake.i < 5 and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        newest = live()
        assert newest is not None and newest.image[0, 0, 2] == 5  # the newest, not the first


def test_opencv_capture_on_a_video_file(tmp_path):
    cv2 = pytest.importorskip("cv2")
    path = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (32, 24))
    if not writer.isOpened():
        pytest.skip("this OpenCV build cannot write MJPG")
    for _ in range(3):
        writer.write(np.full((24, 32, 3), (255, 0, 0), np.uint8))  # blue in BGR
    writer.release()
    with OpenCVCapture(str(path), threaded=False) as cap:
        frame = cap()
        assert frame is not None and frame.size == (32, 24)
        assert frame.image[..., 2].mean() > 200 and frame.image[..., 0].mean() < 60
    with pytest.raises(UsageError):
        OpenCVCapture(str(tmp_path / "missing.avi"), threaded=False)


class Msg:
    def __init__(self, **kw: Any) -> None:
        self.__dict__.update(kw)


@pytest.mark.parametrize("encoding,channels", [("rgb8", 3), ("bgr8", 3), ("rgba8", 4),
                                               ("bgra8", 4), ("mono8", 1)])
def test_ros_image_encodings(encoding, channels):
    rgb = np.arange(2 * 3 * 3, dtype=np.uint8).reshape(2, 3, 3) * 10
    if encoding == "mono8":
        data, want = rgb[..., :1], np.repeat(rgb[..., :1], 3, axis=2)
    else:
        px = rgb[..., ::-1] if encoding.startswith("bgr") else rgb
        if channels == 4:
            px = np.concatenate([px, np.full((2, 3, 1), 7, np.uint8)], axis=2)
        data, want = px, rgb
    # rows padded to 16 bytes, as some drivers do; data as bytes, like rclpy's array.array
    step = 16
    rows = np.zeros((2, step), np.uint8)
    rows[:, : 3 * channels] = data.reshape(2, -1)
    msg = Msg(height=2, width=3, encoding=encoding, step=step, data=rows.tobytes(),
              is_bigendian=0)
    assert np.array_equal(ros_image_to_rgb(msg), want)


def test_ros_image_16bit_and_bad_messages():
    depth = np.array([[0x1234, 0xFF00]], dtype="<u2")
    msg = Msg(height=1, width=2, encoding="16UC1", step=4, data=depth.tobytes(), is_bigendian=0)
    assert ros_image_to_rgb(msg)[0, :, 0].tolist() == [0x12, 0xFF]
    short = Msg(height=4, width=4, encoding="rgb8", step=12, data=b"\0" * 20, is_bigendian=0)
    with pytest.raises(InvalidInputError, match="needs step"):
        ros_image_to_rgb(short)
    odd = Msg(height=1, width=1, encoding="nv21", step=1, data=b"\0", is_bigendian=0)
    with pytest.raises(InvalidInputError, match="unsupported image encoding"):
        ros_image_to_rgb(odd)
    with pytest.raises(InvalidInputError):
        ros_compressed_to_rgb(Msg(format="jpeg", data=b"\xff\xd8 not really"))


@pytest.mark.ros
def test_ros_image_topic_source(tmp_path, monkeypatch):
    rclpy = pytest.importorskip("rclpy")
    pytest.importorskip("sensor_msgs")
    from rclpy.context import Context
    from sensor_msgs.msg import Image as ImageMsg

    from guard.frames import RosImageTopic

    domain = 10 + os.getpid() % 90
    monkeypatch.setenv("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
    monkeypatch.setenv("ROS_LOG_DIR", str(tmp_path / "ros_log"))
    context = Context()
    rclpy.init(context=context, domain_id=domain)
    topic = f"/guard_test_{os.getpid()}/image"
    try:
        source = RosImageTopic(topic, context=context)
        node = rclpy.create_node("guard_test_camera", context=context)
        pub = node.create_publisher(ImageMsg, topic, 10)
        msg = ImageMsg(height=2, width=2, encoding="bgr8", step=6)
        msg.data = bytes([255, 0, 0] * 4)  # blue
        frame = None
        deadline = time.time() + 10
        while frame is None and time.time() < deadline:
            pub.publish(msg)
            time.sleep(0.05)
            frame = source()
        assert frame is not None, "no image arrived"
        assert frame.image[0, 0].tolist() == [0, 0, 255] and abs(frame.stamp - time.time()) < 5
        source.close()
        node.destroy_node()
    finally:
        rclpy.shutdown(context=context)


# -- the example ----------------------------------------------------------------------------------


def test_guarded_agent_example_shows_a_veto(tmp_path):
    # run as the README says, so the example's import of kitchen_agent_common resolves
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "guarded_agent.py"),
                           "--audit", str(tmp_path / "audit.jsonl")],
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    assert "VETOED" in out and "turn_on_stove" in out and "guard warning (annotate" in out
    assert "done: 1 call(s) vetoed" in out
