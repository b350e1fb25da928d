"""guard_node's parts that need no ROS graph: diagnostics, the proposal queue, frames, the
judge, the gate relay and the live policy parameters.

Each is a plain object the node only wires to rclpy (guard_ros/diagnostics.py, pending.py,
frames.py, judging.py, relay.py, params.py); the live-graph tests (test_guard_node*.py)
check the wiring.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from guard_ros.diagnostics import GuardDiagnostics, GuardView, Level
from guard_ros.frames import CameraFrame, FrameBuffer, frame_time_ns
from guard_ros.params import policy_changes
from guard_ros.pending import Pending

from guard.config import PolicyConfig
from guard.types import Decision, Status, Verdict


class _Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def _view(**kw: Any) -> GuardView:
    base: dict[str, Any] = dict(active=True, model="scripted", mode="enforce", deadline_ms=50.0,
                                max_frame_age_ms=1000.0, camera_fresh=True, has_frame=True,
                                frame_age_ms=12.5,
                                stats={"checks": 7, "vetoes": 2, "timeouts": 1, "errors": 0})
    base.update(kw)
    return GuardView(**base)


def test_diagnostics_levels_in_order_unconfigured_inactive_stale_ok() -> None:
    diag = GuardDiagnostics()
    unconfigured = diag.report(GuardView(active=False))
    assert (unconfigured.level, unconfigured.message) == (
        Level.ERROR, "model not loaded (unconfigured)")
    assert unconfigured.values["model_loaded"] == "false"
    assert unconfigured.values["camera_stale"] == "true"
    assert diag.report(_view(active=False)).level is Level.WARN
    assert diag.report(_view(camera_fresh=False)).message == "camera stale"
    assert diag.report(_view(camera_fresh=False, has_frame=False)).message == (
        "no camera frame yet")
    ok = diag.report(_view())
    assert (ok.level, ok.message) == (Level.OK, "guarding (enforce)")


def test_diagnostics_counters_rate_window_and_timings() -> None:
    clock = _Clock()
    diag = GuardDiagnostics(clock=clock, rate_window_s=10.0, timing_samples=100)
    for _ in range(3):
        diag.count("frames")
    diag.count("zero_cmd_vel")
    with pytest.raises(KeyError, match="unknown counter 'frame'"):
        diag.count("frame")
    for i in range(20):
        diag.decided(latency_ms=float(i))
        clock.t += 1.0  # 20 decisions over 20 s: the last 10 s hold 10 of them
    for ms in range(1, 201):  # only the newest 100 are kept: 101..200
        diag.camera_callback(float(ms), delay_ms=2.0 * ms)
    diag.camera_callback(0.5)  # no delay known (a frame without stamp, or sim time)
    v = diag.report(_view()).values
    assert v["frames_received"] == "3" and v["zero_cmd_vel_sent"] == "1"
    assert v["decisions_per_s"] == "1.000"
    assert v["last_latency_ms"] == "19.000"
    assert v["camera_callback_max_ms"] == "200.000"
    assert v["camera_callback_p50_ms"] == "150.000"
    assert v["camera_delay_p99_ms"] == "398.000"
    assert (v["decisions"], v["vetoes"], v["timeouts"]) == ("7", "2", "1")
    assert v["frame_age_ms"] == "12.500" and v["deadline_ms"] == "50.000"


def test_diagnostics_view_of_a_guard_and_of_none() -> None:
    guard = SimpleNamespace(
        config=SimpleNamespace(policy=PolicyConfig(deadline_ms=80.0, max_frame_age_ms=500.0)),
        backend=SimpleNamespace(model_id="m"), mode="shadow", stats={"checks": 1})
    view = GuardView.of(guard, active=True, camera_fresh=True, newest_stamp=9.5, now=10.0)
    assert (view.model, view.mode, view.deadline_ms, view.frame_age_ms) == (
        "m", "shadow", 80.0, 500.0)
    none = GuardView.of(None, active=False, camera_fresh=True, newest_stamp=None, now=10.0)
    assert none.model is None and not none.camera_fresh and none.frame_age_ms is None


def test_pending_refuses_beyond_depth_and_waits_for_every_answer() -> None:
    pending: Pending[str] = Pending()
    queue = pending.reopen(depth=2)
    assert pending.offer("a") is None and pending.offer("b") is None
    assert pending.offer("c") == 2  # refused: two already wait
    pending.done()  # the refused one was answered at once
    pending.begin()  # a service check
    assert pending.inflight == 3
    assert not pending.wait_idle(per_check_s=0.01)

    def judge() -> None:
        while (item := queue.get()) is not None:
            time.sleep(0.01)
            assert item in ("a", "b")
            pending.done()

    worker = threading.Thread(target=judge)
    worker.start()
    pending.close()  # the stop marker queues behind what waits: both are still answered
    pending.done()  # the service check
    assert pending.wait_idle(per_check_s=2.0)
    worker.join(2.0)
    assert not worker.is_alive() and pending.inflight == 0


class _Msg:
    """A camera message as guard.wire reads it (rgb8 sensor_msgs/Image fields)."""

    def __init__(self, value: int = 10, width: int = 4, height: int = 2,
                 encoding: str = "rgb8", stamp: tuple[int, int] = (0, 0)) -> None:
        self.width, self.height, self.encoding = width, height, encoding
        self.step, self.is_bigendian = width * 3, 0
        self.data = bytes([value]) * (width * height * 3)
        self.header = SimpleNamespace(stamp=SimpleNamespace(sec=stamp[0], nanosec=stamp[1]))


def test_frames_convert_once_keep_the_newest_and_report_a_bad_one() -> None:
    good = CameraFrame(_Msg(7), 1_700_000_000_123_456_789)
    frame = good.frame(1_000_000, "camera/image_raw")
    assert frame is good.frame(1_000_000, "camera/image_raw")  # converted once
    assert frame.image.shape == (2, 4, 3) and int(frame.image[0, 0, 0]) == 7
    assert frame.stamp_ns == 1_700_000_000_123_456_789
    bad = CameraFrame(_Msg(encoding="nv21"), 1)
    for _ in range(2):  # the reason is kept
        with pytest.raises(ValueError, match="nv21"):
            bad.frame(1_000_000, "camera/image_raw")

    buffer = FrameBuffer(size=2)
    assert buffer.newest(3) == [] and buffer.newest_stamp() is None
    entries = [CameraFrame(_Msg(), ns) for ns in (1, 2, 3)]
    for entry in entries:
        buffer.add(entry)
    assert buffer.newest(5) == entries[1:] and buffer.newest(1) == entries[2:]
    buffer.resize(1)
    assert buffer.newest(5) == entries[2:] and buffer.newest_stamp() == 3e-9
    buffer.clear()
    assert buffer.newest(1) == []


def test_a_stamped_proposal_is_judged_on_the_newest_frame_at_or_before_it() -> None:
    """guard_ros.frames' rule: replay's pairing, once a frame at or after the proposal has
    arrived (then every frame before it has: a topic arrives in order)."""
    from guard_ros.frames import frames_for, paired, proposal_time

    t = 1_700_000_000 * 10**9
    before, at, after = (CameraFrame(_Msg(), ns) for ns in (t - 1, t, t + 33_000_000))
    # Arrived: a frame at or after the proposal is kept (or no frame at all: no_frame's).
    assert paired(t, [before, at], 500.0).fresh and paired(t, [at, after], 500.0).fresh
    assert paired(t, [], 500.0).fresh
    waiting = paired(t, [before], 500.0)  # one nanosecond older: its own may be on the way
    assert waiting.status is Status.STALE_FRAME
    assert "within frame_wait_ms (500)" in waiting.reason
    # Judged: the newest at or before it (the frame it was made on), as replay pairs them.
    assert frames_for(t, [before, at, after], before.stamp_ns, 1) == [at]
    assert frames_for(t, [before, after], before.stamp_ns, 1) == [before]
    assert frames_for(t, [before, at, after], before.stamp_ns, 2) == [before, at]
    assert frames_for(t, [after], after.stamp_ns, 1) == []  # the camera began after: no_frame
    assert frames_for(t, [after], before.stamp_ns, 1) == [after]  # its own was dropped
    # The proposal's own time, by the core's freshness rule (no age limit, skew bounded).
    assert proposal_time(t, t, 100.0).fresh
    assert proposal_time(t - 3600 * 10**9, t, 100.0).fresh
    assert proposal_time(t + 100 * 10**6, t, 100.0).fresh
    ahead = proposal_time(t + 101 * 10**6, t, 100.0)
    assert ahead.status is Status.STALE_FRAME and "clocks disagree" in ahead.reason


def test_frame_buffer_wakes_a_check_waiting_for_its_frame() -> None:
    buffer = FrameBuffer(size=2)
    buffer.add(CameraFrame(_Msg(), 5))
    assert buffer.wait_newest(5, timeout_s=0.0)  # already there: no wait
    assert not buffer.wait_newest(6, timeout_s=0.01)
    woke: list[bool] = []
    waiter = threading.Thread(target=lambda: woke.append(buffer.wait_newest(9, 30.0)))
    waiter.start()
    buffer.add(CameraFrame(_Msg(), 7))  # not yet
    buffer.add(CameraFrame(_Msg(), 9))
    waiter.join(30.0)
    assert woke == [True]


def test_frame_time_is_the_judged_messages_header_time() -> None:
    ns = 1_700_000_000_999_999_999  # not exact in float seconds
    entry = CameraFrame(_Msg(), ns)
    decision = Decision(verdict=Verdict.ALLOW, status=Status.OK, risk=0.0,
                        frame_stamp=entry.stamp)
    assert frame_time_ns(decision, [entry]) == ns
    assert frame_time_ns(decision.model_copy(update={"frame_stamp_ns": 5}), [entry]) == 5
    assert frame_time_ns(
        Decision(verdict=Verdict.VETO, status=Status.NO_FRAME, risk=1.0), []) is None


def test_policy_changes_fall_back_to_the_config_file() -> None:
    config = PolicyConfig(mode="shadow", deadline_ms=300.0, max_frame_age_ms=700.0)
    assert policy_changes({"mode": "enforce", "deadline_ms": 20}, config) == {
        "mode": "enforce", "deadline_ms": 20.0}
    assert policy_changes({"mode": "", "deadline_ms": 0.0, "max_frame_age_ms": 0}, config) == {
        "mode": "shadow", "deadline_ms": 300.0, "max_frame_age_ms": 700.0}
    assert policy_changes({"frame_buffer": 3, "use_sim_time": True}, config) == {}


# -- the judge and the gate relay use the ROS message classes (no rclpy, no graph) ----------


@pytest.fixture
def judge(tmp_path: Path) -> Iterator[Any]:
    pytest.importorskip("guard_interfaces.msg")
    import yaml
    from guard_ros.judging import Judge

    config = tmp_path / "guard.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"backend": "scripted", "scripted": {"responses": [
            {"text": "VETO\nrisk: 0.9\nhazard: fire | towel on the burner | it burns | 0.9"}]}},
        "policy": {"deadline_ms": 2000, "max_frame_age_ms": 1000},
        "audit": {"path": str(tmp_path / "audit.jsonl")}}))
    errors: list[str] = []
    j: Any = Judge(FrameBuffer(), errors.append)
    j.errors = errors
    j.params = {"config": str(config), "model": "", "backend": "", "mode": "",
                "deadline_ms": 0.0, "max_frame_age_ms": 0.0, "frame_wait_ms": 500.0}
    yield j
    j.release()


def _proposal(name: str = "stove_on", arguments_json: str = "{}") -> Any:
    from guard_interfaces.msg import ActionProposal

    return ActionProposal(id="p1", name=name, description="turn on the stove",
                          arguments_json=arguments_json)


def test_judge_fails_closed_unconfigured_bad_input_and_on_a_bug(
        judge: Any, tmp_path: Path) -> None:
    decision, frame = judge.judge(_proposal(), None, 0)
    assert (decision.verdict, decision.status, frame) == (Verdict.VETO, Status.ERROR, None)
    assert "not configured" in decision.rationale

    judge.configure(judge.params)
    bad, _ = judge.judge(_proposal(arguments_json="{not json"), None, 0)
    assert (bad.verdict, bad.status) == (Verdict.VETO, Status.INVALID_INPUT)
    none, _ = judge.judge(_proposal(), None, 10**18)
    assert (none.verdict, none.status) == (Verdict.VETO, Status.NO_FRAME)

    now = 1_700_000_000 * 10**9
    judge.frames.add(CameraFrame(_Msg(encoding="nv21"), now))
    undecodable, _ = judge.judge(_proposal(), None, now)
    assert (undecodable.status, undecodable.frame_stamp_ns) == (Status.INVALID_INPUT, now)

    judge.frames.add(CameraFrame(_Msg(), now + 1))
    judge.max_frames = 1
    decision, frame = judge.judge(_proposal(), None, now + 10**6)
    assert (decision.verdict, decision.status) == (Verdict.VETO, Status.OK)
    assert decision.frame_stamp_ns == now + 1 and frame is not None
    assert frame.image.shape == (2, 4, 3)

    judge.frames = None  # a bug: still one answer, a veto, and audited
    buggy, _ = judge.judge(_proposal(), None, now)
    assert (buggy.verdict, buggy.status) == (Verdict.VETO, Status.ERROR)
    assert "internal error" in buggy.rationale and judge.errors
    audit = (tmp_path / "audit.jsonl").read_text()
    assert all(d.id in audit for d in (bad, none, undecodable, decision, buggy))


def _stamped(ns: int) -> Any:
    proposal = _proposal()
    proposal.header.stamp.sec, proposal.header.stamp.nanosec = divmod(ns, 10**9)
    return proposal


def test_judge_pairs_a_stamped_proposal_with_its_frame_not_the_one_before(
        judge: Any, tmp_path: Path) -> None:
    """The race of the camera and proposal topics: the proposal arrives first. It is judged
    on its own frame once that arrives, else vetoed as stale; never on the frame before."""
    t = 1_700_000_000 * 10**9
    clock = [t]
    judge._clock = lambda: clock[0]
    judge.configure(judge.params)
    judge.frames.add(CameraFrame(_Msg(1), t - 10**9))  # the previous scene

    def frame_arrives() -> None:
        time.sleep(0.05)
        clock[0] = t + 20 * 10**6
        judge.frames.add(CameraFrame(_Msg(2), t))

    judge.frame_wait_ms = 30_000.0
    camera = threading.Thread(target=frame_arrives)
    camera.start()
    decision, frame = judge.judge(_stamped(t), None, t)
    camera.join()
    assert (decision.status, decision.frame_stamp_ns) == (Status.OK, t)
    assert frame is not None and int(frame.image[0, 0, 0]) == 2

    # Its frame never comes: a stale_frame veto, audited, naming the frame it had.
    judge.frame_wait_ms = 10.0
    stale, frame = judge.judge(_stamped(t + 10**9), None, t + 10**9)
    assert (stale.verdict, stale.status, frame) == (Verdict.VETO, Status.STALE_FRAME, None)
    assert stale.frame_stamp_ns == t and "older than the proposal" in stale.rationale
    # Stamped ahead of the node's clock past the skew: the clocks disagree, vetoed at once.
    ahead, _ = judge.judge(_stamped(t + 10**9), None, t)
    assert ahead.status is Status.STALE_FRAME and "clocks disagree" in ahead.rationale
    # A newer frame is kept: a proposal stamped between the two is judged on the one before
    # it (replay's rule), an unstamped one on the newest at hand, as before.
    judge.frames.add(CameraFrame(_Msg(3), t + 40 * 10**6))
    between, _ = judge.judge(_stamped(t + 20 * 10**6), None, t + 50 * 10**6)
    assert (between.status, between.frame_stamp_ns) == (Status.OK, t)
    unstamped, _ = judge.judge(_proposal(), None, t + 50 * 10**6)
    assert (unstamped.status, unstamped.frame_stamp_ns) == (Status.OK, t + 40 * 10**6)
    audit = (tmp_path / "audit.jsonl").read_text()
    assert all(d.id in audit for d in (decision, stale, ahead, between, unstamped))


def test_a_policy_changed_while_a_proposal_waits_for_its_frame_is_not_mixed_into_it(
        judge: Any, tmp_path: Path) -> None:
    """The node's check starts when the proposal arrives: it tests the stamp against
    `max_clock_skew_ms`, then may wait for the proposal's frame. A parameter change in that
    wait once reached the guard's judgement: the skew was tested under one policy, the
    verdict made and audited under another. Now the whole check applies the policy it began
    with, and the next check the new one."""
    t = 1_700_000_000 * 10**9
    clock = [t]
    judge._clock = lambda: clock[0]
    guard = judge.configure(judge.params)
    old = guard.policy_id

    waits = judge.frames.wait_newest

    def parameters_change_then_frame_comes(stamp_ns: int, timeout_s: float) -> bool:
        # inside the node's wait for the proposal's frame: the operator switches the mode,
        # then the frame arrives
        guard.set_policy(mode="shadow", max_clock_skew_ms=1.0)
        clock[0] = t + 20 * 10**6
        judge.frames.add(CameraFrame(_Msg(2), t))
        return waits(stamp_ns, timeout_s)

    judge.frames.wait_newest = parameters_change_then_frame_comes
    decision, _ = judge.judge(_stamped(t), None, t)
    judge.frames.wait_newest = waits
    assert guard.policy_id != old
    assert (decision.status, decision.frame_stamp_ns) == (Status.OK, t)
    assert (decision.policy, decision.mode, decision.blocks) == (old, "enforce", True)
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    (record,) = [r for r in records if r.get("decision", {}).get("id") == decision.id]
    assert record["decision"]["policy"] == old

    # The next check starts under the new policy: shadow, and its 1 ms skew bound.
    ahead, _ = judge.judge(_stamped(t + 30 * 10**6), None, t + 20 * 10**6)
    assert (ahead.status, ahead.policy, ahead.mode) == (Status.STALE_FRAME, guard.policy_id,
                                                        "shadow")
    assert "clocks disagree" in ahead.rationale


def test_relay_orders_zeros_commands_and_state() -> None:
    pytest.importorskip("geometry_msgs.msg")
    pytest.importorskip("guard_interfaces.msg")
    from geometry_msgs.msg import Twist, TwistStamped
    from guard_ros.gate import CmdVelGate, GatePolicy
    from guard_ros.relay import GateRelay

    sent: list[tuple[str, Any]] = []
    zeros: list[int] = []
    now_ns = [1_700_000_000 * 10**9]
    relay = GateRelay(CmdVelGate(stop_pub_timeout=1.0), lambda n, m: sent.append((n, m)),
                      lambda: now_ns[0], GatePolicy, stamped=False,
                      on_zero=lambda: zeros.append(1))
    command = Twist()
    command.linear.x = 0.5
    relay.gate.on_frame(now_ns[0] / 1e9)
    relay.on_command(command)  # no decision yet: a zero, and the state "stopped"
    assert [n for n, _ in sent] == ["cmd_vel", "gate_state"]
    assert sent[0][1].linear.x == 0.0 and '"no_decision_yet"' in sent[1][1].data
    sent.clear()
    assert relay.on_decision(Verdict.ALLOW, send=False) is None and not sent
    step = relay.on_command(command)
    assert step.changed and sent[0][1] is command
    sent.clear()
    relay.on_decision(Verdict.VETO, send=True)  # a veto stops at once
    assert sent[0][1] == Twist() and '"veto"' in sent[1][1].data and len(zeros) == 2

    stamped = GateRelay(CmdVelGate(), lambda n, m: sent.append((n, m)), lambda: 5 * 10**9 + 7,
                        GatePolicy, stamped=True)
    incoming = TwistStamped()
    incoming.header.frame_id = "base_link"
    sent.clear()
    stamped.on_command(incoming)
    zero = sent[0][1]
    assert isinstance(zero, TwistStamped) and zero.header.frame_id == "base_link"
    assert (zero.header.stamp.sec, zero.header.stamp.nanosec) == (5, 7)
    assert np.isclose(zero.twist.linear.x, 0.0)


# -- hostile input: velocities, stamps and clocks ---------------------------------------------


def _open_relay(stamped: bool, sent: list[tuple[str, Any]]) -> Any:
    from guard_ros.gate import CmdVelGate, GatePolicy
    from guard_ros.relay import GateRelay

    now_ns = 1_700_000_000 * 10**9
    relay = GateRelay(CmdVelGate(), lambda n, m: sent.append((n, m)), lambda: now_ns,
                      GatePolicy, stamped=stamped)
    relay.gate.on_frame(now_ns / 1e9)
    relay.on_decision(Verdict.ALLOW, send=False)
    return relay


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_relay_never_sends_a_non_finite_velocity(value: float) -> None:
    """The measured defect: with the gate open, Twist linear.x = nan (inf, -inf) went out on
    cmd_vel unchanged. Now a zero goes out instead and guard/gate_state says why."""
    pytest.importorskip("geometry_msgs.msg")
    from geometry_msgs.msg import Twist

    sent: list[tuple[str, Any]] = []
    relay = _open_relay(False, sent)
    fine = Twist()
    fine.linear.x = 1e308  # finite: the base's limits are not the gate's
    relay.on_command(fine)
    assert sent[0][1] is fine
    sent.clear()
    bad = Twist()
    bad.linear.x = 0.5
    bad.angular.z = value
    relay.on_command(bad)
    assert [n for n, _ in sent] == ["cmd_vel", "gate_state"]
    assert sent[0][1] == Twist()
    state = json.loads(sent[1][1].data)
    assert (state["state"], state["reason"]) == ("stopped", "invalid_command")
    assert "angular.z" in state["detail"]


def test_relay_refuses_a_stamped_command_with_an_untrustworthy_stamp() -> None:
    pytest.importorskip("geometry_msgs.msg")
    from geometry_msgs.msg import TwistStamped

    sent: list[tuple[str, Any]] = []
    relay = _open_relay(True, sent)
    now_s = 1_700_000_000
    for (sec, nanosec), why in [((now_s - 1, 1_500_000_000), "not a valid ROS time"),
                                ((-1, 0), "not a valid ROS time"),
                                ((now_s + 3600, 0), "ahead of the node's clock"),
                                ((now_s - 3600, 0), "over max_frame_age_ms")]:
        command = TwistStamped()
        command.twist.linear.x = 0.5
        command.header.stamp.sec, command.header.stamp.nanosec = sec, nanosec
        sent.clear()
        step = relay.on_command(command)
        assert sent[0][1].twist.linear.x == 0.0, (sec, nanosec)
        assert step.state.reason is not None and why in step.state.detail, step.state.detail
    for sec in (0, now_s):  # a zero stamp (no time given, as a Twist) and a current one pass
        command.header.stamp.sec, command.header.stamp.nanosec = sec, 0
        sent.clear()
        relay.on_command(command)
        assert sent[0][1] is command


def test_header_stamps_that_are_not_ros_times_are_refused() -> None:
    from guard_ros.frames import InvalidStamp, header_stamp

    def header(sec: int, nanosec: int) -> Any:
        return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec))

    assert header_stamp(header(0, 0)) is None
    assert header_stamp(header(5, 999_999_999)) == 5_999_999_999
    # nanosec 3e9 with sec 5 used to read as 8 s: a frame 4 s old could pass as current.
    for sec, nanosec in ((5, 1_000_000_000), (5, 3_000_000_000), (-1, 0), (-(2**31), 5)):
        with pytest.raises(InvalidStamp, match="not a valid ROS time"):
            header_stamp(header(sec, nanosec))


def _stamped_msg(sec: int, nanosec: int) -> Any:
    return _Msg(stamp=(sec, nanosec))


def test_a_frame_without_a_trustworthy_stamp_is_kept_but_untrusted() -> None:
    from guard_ros.frames import received

    arrival = 1_700_000_000 * 10**9
    ok = received(_stamped_msg(1_699_999_999, 5), arrival, False)
    assert (ok.stamp_ns, ok.untrusted) == (1_699_999_999_000_000_005, None)
    zero = received(_stamped_msg(0, 0), arrival, False)
    assert zero.stamp_ns == arrival and "no header stamp" in (zero.untrusted or "")
    # The opt-in: a zero stamp is the arrival time (the old behaviour); an invalid stamp never.
    assert received(_stamped_msg(0, 0), arrival, True).untrusted is None
    invalid = received(_stamped_msg(1_699_999_996, 3_900_000_000), arrival, True)
    assert invalid.stamp_ns == arrival and "not a valid ROS time" in (invalid.untrusted or "")


def test_judge_vetoes_frames_whose_age_cannot_be_known(judge: Any, tmp_path: Path) -> None:
    """The measured defects: a zero-stamped frame, timed on arrival, was judged fresh (an
    allow), with use_sim_time and no /clock too (arrival 0, clock 0: "0 ms old" forever); a
    stamp with nanosec >= 1e9 could read as current."""
    from guard_ros.frames import received

    now = 1_700_000_000 * 10**9
    judge.configure(judge.params)
    judge.max_frames = 1
    cases = [(_stamped_msg(0, 0), "no header stamp"),
             (_stamped_msg(1_699_999_996, 3_900_000_000), "not a valid ROS time"),
             (_stamped_msg(-1, 0), "not a valid ROS time")]
    decisions = []
    for msg, why in cases:
        judge.frames.clear()
        judge.frames.add(received(msg, now, False))
        decision, frame = judge.judge(_proposal(), None, now + 10**6)
        assert (decision.verdict, decision.status, frame) == (
            Verdict.VETO, Status.STALE_FRAME, None), decision.rationale
        assert why in decision.rationale
        decisions.append(decision)
    # With the opt-in, a zero stamp is the arrival time and is judged as before.
    judge.age_unstamped_from_arrival = True
    judge.frames.clear()
    judge.frames.add(received(_stamped_msg(0, 0), now, True))
    assert judge.judge(_proposal(), None, now + 10**6)[0].status is Status.OK
    # The clock does not run (ROS time 0): the guard cannot tell time, an error veto.
    judge.frames.clear()
    judge.frames.add(received(_stamped_msg(0, 0), 0, True))
    clockless, _ = judge.judge(_proposal(), None, 0)
    assert (clockless.verdict, clockless.status) == (Verdict.VETO, Status.ERROR)
    assert "/clock" in clockless.rationale
    # A proposal whose own stamp is not a time is bad input.
    bad_stamp = _proposal()
    bad_stamp.header.stamp.sec, bad_stamp.header.stamp.nanosec = 5, 0
    bad_stamp.header.stamp.nanosec = 2_000_000_000
    invalid, _ = judge.judge(bad_stamp, None, now)
    assert (invalid.verdict, invalid.status) == (Verdict.VETO, Status.INVALID_INPUT)
    assert "not a valid ROS time" in invalid.rationale
    audit = (tmp_path / "audit.jsonl").read_text()
    assert all(d.id in audit for d in (*decisions, clockless, invalid))


def test_judge_ages_the_frame_after_converting_it(judge: Any) -> None:
    """Converting or decoding a large frame takes real time (a 7000x7000 JPEG: 1.2 s here);
    the frame was aged against the clock read before it, so it could pass as fresh when it
    was not by the time it was judged."""
    now = 1_700_000_000 * 10**9
    judge.configure(judge.params)  # max_frame_age_ms 1000
    judge.max_frames = 1
    judge.frames.add(CameraFrame(_Msg(), now))
    judge._clock = lambda: now + 1_500 * 10**6  # the clock once the frame is converted
    decision, _ = judge.judge(_proposal(), None, now + 500 * 10**6)
    assert (decision.verdict, decision.status) == (Verdict.VETO, Status.STALE_FRAME)
    assert "1500 ms old" in decision.rationale
