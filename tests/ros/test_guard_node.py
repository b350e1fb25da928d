"""guard_node on a live graph: decisions, relay, modes, failures, cmd_vel gate, service,
diagnostics.

One node process (scripted backend, enforce mode, cmd_vel gate on) serves every test in this
module; each test brings the state it needs (camera on or off, the latest decision) itself,
so the tests do not depend on their order.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("guard_interfaces")

from conftest import Probe, make_image, wait_active, wait_for
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import Twist
from guard_interfaces.msg import ActionProposal, Decision
from guard_interfaces.srv import CheckAction
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image
from std_msgs.msg import String

pytestmark = [pytest.mark.ros]

VETO_TEXT = (
    "VETO\nrisk: 0.9\nhazard: fire | towel on a lit burner | the towel ignites | 0.9\n"
    "consequence: the towel catches fire"
)
ANNOTATE_TEXT = "ANNOTATE\nrisk: 0.4\nhazard: pinch | drawer edge | pinched fingers | 0.3"
GUARD_CONFIG = {
    "model": {
        "backend": "scripted",
        "scripted": {
            "responses": [{"text": "ALLOW\nrisk: 0.0"}],
            "by_action": {
                "stove": {"text": VETO_TEXT},
                "drawer": {"text": ANNOTATE_TEXT},
                "explode": {"raise_error": "driver crashed"},
                "freeze": {"raise_error": "hang"},
            },
        },
    },
    # Frame age well above the camera period: a loaded CI machine can stall the 20 Hz test
    # camera for a few hundred ms, which is a stale frame in the node's eyes, not a failure.
    "policy": {"deadline_ms": 600, "max_frame_age_ms": 1500},
}
CAMERA_HZ = 20.0
LATCHED = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)


class Graph:
    """The node under test and the probe's endpoints in its namespace."""

    def __init__(self, probe: Probe, node: Any) -> None:
        self.probe, self.node, ns = probe, node, node.namespace
        self.decisions = probe.collect(Decision, f"{ns}/guard/decisions")
        self.approved = probe.collect(ActionProposal, f"{ns}/guard/approved")
        self.cmd_vel = probe.collect(Twist, f"{ns}/cmd_vel")
        self.diagnostics = probe.collect(DiagnosticArray, "/diagnostics")
        self.proposals = probe.publisher(ActionProposal, f"{ns}/guard/proposals")
        self.cmd_vel_in = probe.publisher(Twist, f"{ns}/cmd_vel_in")
        self.camera = probe.publisher(Image, f"{ns}/camera/image_raw", qos_profile_sensor_data)
        self._camera_timer = None

    def propose(self, description: str, arguments: str = "", name: str = "act") -> str:
        pid = "p-" + uuid.uuid4().hex[:10]
        msg = ActionProposal(id=pid, name=name, description=description,
                             arguments_json=arguments)
        msg.header.frame_id = "base_link"
        self.proposals.publish(msg)
        return pid

    def decision_for(self, pid: str, timeout: float = 10.0) -> Decision:
        assert self.probe.wait(lambda: any(d.proposal_id == pid for d in self.decisions),
                               timeout), f"no decision for {pid}\n{self.node.log()}"
        return next(d for d in self.decisions if d.proposal_id == pid)

    def diagnostic(self, predicate=lambda values: True, timeout: float = 5.0) -> dict[str, str]:
        """The key/values of the next guard status (after now) that satisfies `predicate`."""
        start = len(self.diagnostics)
        found: list[dict[str, str]] = []

        def match() -> bool:
            for array in self.diagnostics[start:]:
                for status in array.status:
                    if status.name == "guard_node: guard":
                        values = {kv.key: kv.value for kv in status.values}
                        values["_message"] = status.message
                        if predicate(values):
                            found.append(values)
                            return True
            return False

        assert self.probe.wait(match, timeout), f"no matching diagnostics\n{self.node.log()}"
        return found[0]

    def camera_on(self) -> None:
        if self._camera_timer is None:
            node = self.probe.node

            def tick() -> None:
                self.camera.publish(make_image(stamp=node.get_clock().now().to_msg()))

            self._camera_timer = node.create_timer(1.0 / CAMERA_HZ, tick)
        # Fresh once the node itself says so: its frames, its clock.
        self.diagnostic(lambda v: v["camera_stale"] == "false", timeout=10.0)

    def camera_off(self) -> None:
        if self._camera_timer is not None:
            self.probe.node.destroy_timer(self._camera_timer)
            self._camera_timer = None

    def open_gate(self) -> None:
        """Make the latest decision an allow (the camera must be on)."""
        assert self.decision_for(self.propose("pick up the cup")).verdict == Decision.ALLOW

    def drive_through_open_gate(self) -> Twist:
        """Open the gate and see a 0.5 m/s command relayed; that command."""
        self.open_gate()
        moving = Twist()
        moving.linear.x = 0.5
        start = len(self.cmd_vel)
        self.cmd_vel_in.publish(moving)
        assert self.probe.wait(lambda: any(t.linear.x == 0.5 for t in self.cmd_vel[start:]), 5.0)
        return moving


@pytest.fixture(scope="module")
def graph(ros_graph: dict[str, Any]) -> Iterator[Graph]:
    probe = ros_graph["probe"]
    node = ros_graph["start"](
        "main", GUARD_CONFIG, gate_cmd_vel=True, watchdog_period_ms=50.0,
        diagnostics_period_s=0.1)
    wait_active(probe, node)
    g = Graph(probe, node)
    ns = node.namespace
    assert wait_for(lambda: g.proposals.get_subscription_count() > 0
                    and g.cmd_vel_in.get_subscription_count() > 0
                    and all(probe.node.count_publishers(f"{ns}/{t}") > 0
                            for t in ("guard/decisions", "guard/approved", "cmd_vel")),
                    10.0), node.log()
    yield g
    g.camera_off()
    node.assert_alive()


@pytest.fixture
def camera(graph: Graph) -> Iterator[Graph]:
    graph.camera_on()
    yield graph
    graph.camera_off()


def test_one_decision_per_proposal_and_relay_in_enforce(camera: Graph) -> None:
    g = camera
    plan = {"pick up the cup": Decision.ALLOW, "put the towel on the stove": Decision.VETO,
            "open the drawer": Decision.ANNOTATE}
    sent = {g.propose(text, json.dumps({"n": i})): code
            for i in range(3) for text, code in plan.items()}
    # A last allow: the relay keeps order, so once it is relayed every earlier one is too.
    sentinel = g.propose("pick up the cup")
    sent[sentinel] = Decision.ALLOW
    assert g.probe.wait(lambda: any(p.id == sentinel for p in g.approved), 15.0), g.node.log()

    for pid, code in sent.items():
        matching = [d for d in g.decisions if d.proposal_id == pid]
        assert len(matching) == 1, (pid, matching)
        d = matching[0]
        assert d.verdict == code and d.status == "ok", d
        assert d.model == "scripted"
        assert d.header.frame_id == "base_link"
        assert d.frame_stamp.sec > 0  # the frame that was judged
        assert d.latency_ms >= 0.0
    vetoed = next(d for pid, code in sent.items() if code == Decision.VETO
                  for d in g.decisions if d.proposal_id == pid)
    assert vetoed.risk == pytest.approx(0.9)
    assert [(h.category, h.consequence) for h in vetoed.hazards] == [("fire", "the towel ignites")]

    relayed = [p.id for p in g.approved if p.id in sent]
    allowed = [pid for pid, code in sent.items() if code != Decision.VETO]
    assert sorted(relayed) == sorted(allowed)  # every allow/annotate once, no veto
    assert relayed == [pid for pid in sent if pid in relayed]  # in the order proposed


def _audit_decision(g: Graph, pid: str) -> dict[str, Any]:
    records = [json.loads(line) for line in
               (g.node.workdir / "audit.jsonl").read_text().splitlines() if line]
    found = [r["decision"] for r in records
             if r.get("kind") == "decision" and r["decision"]["proposal_id"] == pid]
    assert len(found) == 1, (pid, found)
    return found[0]


def test_decision_fields_join_the_audit_record(camera: Graph) -> None:
    # A decision on the bus once had no id, mode, policy, rules or error: nothing joined it
    # with its audit record. Now every one carries the record's own values.
    g = camera
    for text, status in (("put the towel on the stove", Decision.STATUS_OK),
                         ("explode the battery test", Decision.STATUS_ERROR)):
        pid = g.propose(text)
        d = g.decision_for(pid)
        record = _audit_decision(g, pid)
        assert d.status == status == record["status"]
        assert len(d.id) == 32 and int(d.id, 16) >= 0  # the guard's hex UUID4
        assert (d.id, d.mode, d.policy, list(d.rules), d.error) == (
            record["id"], record["mode"], record["policy"], record["rules"],
            record["error"] or "")
        assert d.mode == "enforce" and d.policy.startswith("default@")
    assert "driver crashed" in d.error
    assert len({d.id for d in g.decisions}) == len(g.decisions)  # one id per decision


def test_shadow_mode_at_runtime_relays_everything(camera: Graph) -> None:
    g = camera
    # Refused values say why; read-on-configure parameters are refused while configured.
    bad_mode, = g.probe.set_params(g.node.fqn, mode="permissive")
    assert not bad_mode.successful and "mode" in bad_mode.reason
    on_configure, = g.probe.set_params(g.node.fqn, frame_buffer=8)
    assert not on_configure.successful and "configure" in on_configure.reason

    result, = g.probe.set_params(g.node.fqn, mode="shadow")
    assert result.successful, result.reason
    try:
        pid = g.propose("put the towel on the stove")
        d = g.decision_for(pid)
        assert d.verdict == Decision.VETO  # still judged and published as a veto
        assert g.probe.wait(lambda: any(p.id == pid for p in g.approved), 10.0)
    finally:
        result, = g.probe.set_params(g.node.fqn, mode="enforce")
        assert result.successful
    pid = g.propose("put the towel on the stove")
    assert g.decision_for(pid).verdict == Decision.VETO
    sentinel = g.propose("pick up the cup")
    assert g.probe.wait(lambda: any(p.id == sentinel for p in g.approved), 10.0)
    assert pid not in [p.id for p in g.approved]


def test_deadline_and_frame_age_change_at_runtime(camera: Graph) -> None:
    g = camera
    bad, = g.probe.set_params(g.node.fqn, deadline_ms=-1.0)
    assert not bad.successful and "deadline_ms" in bad.reason
    results = g.probe.set_params(g.node.fqn, deadline_ms=1234.0, max_frame_age_ms=0.001)
    assert all(r.successful for r in results), [r.reason for r in results]
    try:
        g.diagnostic(lambda v: float(v["deadline_ms"]) == 1234.0
                     and float(v["max_frame_age_ms"]) == 0.001)
        # No frame is 1 us old when judged: the next check vetoes it as stale.
        d = g.decision_for(g.propose("pick up the cup"))
        assert (d.verdict, d.status) == (Decision.VETO, "stale_frame")
    finally:  # 0 goes back to the config file's values
        results = g.probe.set_params(g.node.fqn, deadline_ms=0.0, max_frame_age_ms=0.0)
        assert all(r.successful for r in results), [r.reason for r in results]
    g.diagnostic(lambda v: float(v["deadline_ms"]) == GUARD_CONFIG["policy"]["deadline_ms"]
                 and float(v["max_frame_age_ms"]) == GUARD_CONFIG["policy"]["max_frame_age_ms"])
    d = g.decision_for(g.propose("pick up the cup"))
    assert (d.verdict, d.status) == (Decision.ALLOW, "ok"), d.rationale


def test_backend_error_and_hang_give_fail_closed_vetoes(camera: Graph) -> None:
    g = camera
    crashed = g.decision_for(g.propose("explode the battery test"))
    assert (crashed.verdict, crashed.status) == (Decision.VETO, "error")
    assert "driver crashed" in crashed.rationale
    hung = g.decision_for(g.propose("freeze the arm"))
    assert (hung.verdict, hung.status) == (Decision.VETO, "timeout")
    g.node.assert_alive()
    # Still serving, with the hung model call abandoned in the background.
    after = g.decision_for(g.propose("pick up the cup"))
    assert (after.verdict, after.status) == (Decision.ALLOW, "ok"), after.rationale


def test_invalid_arguments_json_is_an_invalid_input_veto(camera: Graph) -> None:
    d = camera.decision_for(camera.propose("pick up the cup", arguments="{not json"))
    assert (d.verdict, d.status) == (Decision.VETO, "invalid_input")
    assert "arguments are not valid JSON" in d.rationale  # replay's words (guard.wire)


def test_a_nameless_or_too_deep_proposal_is_an_audited_invalid_input_veto(
        camera: Graph) -> None:
    # The node once judged a proposal with an empty tool name that replay rejects; one
    # validation (the proposal type's, through the guard) now decides for every front end.
    deep = '{"a": ' * 40 + "1" + "}" * 40
    for pid in (camera.propose("pick up the cup", name=""),
                camera.propose("pick up the cup", arguments=deep)):
        d = camera.decision_for(pid)
        assert (d.verdict, d.status) == (Decision.VETO, "invalid_input"), d.rationale
        assert pid in (camera.node.workdir / "audit.jsonl").read_text()


def test_veto_closes_the_cmd_vel_gate(camera: Graph) -> None:
    g = camera
    moving = g.drive_through_open_gate()

    assert g.decision_for(g.propose("put the towel on the stove")).verdict == Decision.VETO
    start = len(g.cmd_vel)
    g.cmd_vel_in.publish(moving)
    # Zeros keep coming (watchdog) and the command is never passed through.
    assert g.probe.wait(lambda: len(g.cmd_vel) - start >= 4, 5.0)
    assert all(t.linear.x == 0.0 for t in g.cmd_vel[start:])

    g.open_gate()
    start = len(g.cmd_vel)
    g.cmd_vel_in.publish(moving)
    assert g.probe.wait(lambda: any(t.linear.x == 0.5 for t in g.cmd_vel[start:]), 5.0)


def test_stale_camera_gives_stale_vetoes_and_watchdog_zeros(graph: Graph) -> None:
    g = graph
    g.camera_on()
    g.open_gate()
    g.camera_off()
    # No cmd_vel_in is sent from here on: every zero below comes from the watchdog.
    g.diagnostic(lambda v: v["camera_stale"] == "true", timeout=5.0)
    start = len(g.cmd_vel)
    assert g.probe.wait(lambda: len(g.cmd_vel) - start >= 3, 5.0), g.node.log()
    assert all(t.linear.x == 0.0 and t.angular.z == 0.0 for t in g.cmd_vel[start:])

    d = g.decision_for(g.propose("pick up the cup"))
    assert (d.verdict, d.status) == (Decision.VETO, "stale_frame")
    assert d.frame_stamp.sec > 0


def test_frame_stamped_in_the_future_then_silence_stops_the_robot(graph: Graph) -> None:
    # The measured defect: the gate had its own freshness test, for which a frame stamped an
    # hour ahead was "fresh" for that hour; one such frame, then a silent camera, let moving
    # commands through. Now the gate and the checks both use the core's rule.
    g = graph
    g.camera_on()
    g.open_gate()
    g.camera_off()
    future = g.probe.node.get_clock().now() + Duration(seconds=3600)
    for _ in range(3):  # best effort: one frame may be lost, three with one stamp are one
        g.camera.publish(make_image(stamp=future.to_msg()))
    values = g.diagnostic(lambda v: v["frame_age_ms"] and float(v["frame_age_ms"]) < -1e6,
                          timeout=5.0)
    assert values["camera_stale"] == "true"

    moving = Twist()
    moving.linear.x = 0.5
    start = len(g.cmd_vel)
    for _ in range(5):
        g.cmd_vel_in.publish(moving)
        time.sleep(0.05)
    assert g.probe.wait(lambda: len(g.cmd_vel) - start >= 5, 5.0), g.node.log()
    assert all(t.linear.x == 0.0 for t in g.cmd_vel[start:])
    assert "ahead of the guard's clock" in g.node.log()

    d = g.decision_for(g.propose("pick up the cup"))
    assert (d.verdict, d.status) == (Decision.VETO, "stale_frame")
    assert "ahead" in d.rationale
    assert all(t.linear.x == 0.0 for t in g.cmd_vel[start:])


def test_frames_without_stamp_are_stale_vetoes_and_stop_the_gate(graph: Graph) -> None:
    # The measured defect: a zero header stamp was taken as the arrival time, so frames from a
    # driver that never stamps were "fresh" and a proposal was allowed (with use_sim_time and
    # no /clock too: arrival 0, clock 0). Their age cannot be known: stale_frame, audited.
    g = graph
    node = g.probe.node
    timer = node.create_timer(1.0 / CAMERA_HZ, lambda: g.camera.publish(make_image()))
    try:
        assert g.probe.wait(lambda: "no header stamp" in g.node.log(), 10.0), g.node.log()
        pid = g.propose("pick up the cup")
        d = g.decision_for(pid)
        assert (d.verdict, d.status) == (Decision.VETO, "stale_frame"), d.rationale
        assert "no header stamp" in d.rationale
        assert _audit_decision(g, pid)["status"] == "stale_frame"
        g.diagnostic(lambda v: v["camera_stale"] == "true", timeout=5.0)
        start = len(g.cmd_vel)
        moving = Twist()
        moving.linear.x = 0.5
        g.cmd_vel_in.publish(moving)
        assert g.probe.wait(lambda: len(g.cmd_vel) - start >= 1, 5.0), g.node.log()
        assert all(t.linear.x == 0.0 for t in g.cmd_vel[start:])
    finally:
        node.destroy_timer(timer)


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_velocity_is_never_relayed(camera: Graph, value: float) -> None:
    # The measured defect: with the gate open, linear.x = nan, inf and -inf each went out on
    # cmd_vel unchanged. Now a zero goes out and guard/gate_state says invalid_command.
    g = camera
    states = g.probe.collect(String, f"{g.node.namespace}/guard/gate_state", LATCHED)
    g.drive_through_open_gate()
    bad = Twist()
    bad.linear.x = value
    start = len(g.cmd_vel)
    g.cmd_vel_in.publish(bad)
    assert g.probe.wait(
        lambda: any(json.loads(m.data)["reason"] == "invalid_command" for m in states)
        and len(g.cmd_vel) > start, 5.0), g.node.log()
    assert all(t.linear.x == 0.0 for t in g.cmd_vel[start:]), [t.linear.x for t in g.cmd_vel]


@pytest.mark.parametrize("encoding", ["8UC1", "mono16"])
def test_a_grey_camera_is_judged_and_its_stamp_comes_back_exactly(
        graph: Graph, encoding: str) -> None:
    # The measured defect: the node converted 5 encodings and replay 10, so an 8UC1 or mono16
    # camera replayed fine and was an invalid_input veto on the robot; and the decision's
    # frame_stamp went through float seconds (123456789 ns came back as 123456768).
    g = graph
    node = g.probe.node
    sent: list[tuple[int, int]] = []
    size = 1 if encoding == "8UC1" else 2

    def tick() -> None:
        # Now, to the second, plus a nanosecond part no float near 1.7e9 s can hold.
        now = node.get_clock().now().to_msg()
        msg = Image(height=24, width=32, encoding=encoding, step=32 * size, is_bigendian=0)
        msg.data = bytes(range(256)) * (24 * 32 * size // 256)
        msg.header.stamp.sec, msg.header.stamp.nanosec = now.sec, 123_456_789
        sent.append((now.sec, 123_456_789))
        g.camera.publish(msg)

    timer = node.create_timer(1.0 / CAMERA_HZ, tick)
    try:
        g.diagnostic(lambda v: v["camera_stale"] == "false", timeout=10.0)
        d = g.decision_for(g.propose("pick up the cup"))
    finally:
        node.destroy_timer(timer)
    assert (d.verdict, d.status) == (Decision.ALLOW, "ok"), d.rationale
    assert (d.frame_stamp.sec, d.frame_stamp.nanosec) in sent


def test_check_service(camera: Graph) -> None:
    g = camera
    service = f"{g.node.namespace}/guard/check"
    request = CheckAction.Request()
    request.proposal = ActionProposal(id="srv-latest", name="pick", description="pick up the cup")
    answer = g.probe.call(CheckAction, service, request).decision
    assert (answer.proposal_id, answer.verdict, answer.status) == ("srv-latest", 0, "ok")
    assert answer.frame_stamp.sec > 0  # the latest camera frame was judged

    request.proposal.id = "srv-image"
    request.proposal.description = "put the towel on the stove"
    request.image = make_image("bgr8", stamp=g.probe.node.get_clock().now().to_msg())
    answer = g.probe.call(CheckAction, service, request).decision
    assert (answer.proposal_id, answer.verdict, answer.status) == ("srv-image", 2, "ok")

    request.proposal.id = "srv-bad"
    request.image = make_image("rgb8", stamp=g.probe.node.get_clock().now().to_msg())
    request.image.encoding = "nv21"  # a 4:2:0 format no camera driver of ours publishes
    answer = g.probe.call(CheckAction, service, request).decision
    assert (answer.verdict, answer.status) == (Decision.VETO, "invalid_input")
    assert "unsupported image encoding 'nv21'" in answer.rationale


def test_diagnostics(camera: Graph) -> None:
    g = camera
    g.open_gate()
    values = g.diagnostic(lambda v: v["decisions"] not in ("", "0"))
    assert values["model_loaded"] == "true"
    assert values["model"] == "scripted"
    assert values["mode"] == "enforce"
    assert values["camera_stale"] == "false"
    assert float(values["last_latency_ms"]) >= 0.0
    assert float(values["decisions_per_s"]) > 0.0
    assert int(values["vetoes"]) >= 0
    assert float(values["camera_callback_p99_ms"]) < 50.0
    assert values["_message"].startswith("guarding")


def test_proposals_beyond_the_queue_are_answered_with_audited_vetoes(
        ros_graph: dict[str, Any]) -> None:
    # A planner that outpaces a slow judge by more than the proposal queue depth: before, the
    # middleware dropped the oldest proposals silently (no decision, nothing audited); now
    # each one past the depth is answered at once with an error veto, in the audit log.
    probe = ros_graph["probe"]
    config = {"model": {"backend": "scripted", "scripted": {"responses": [
        {"text": "ALLOW\nrisk: 0.0", "delay_ms": 400}]}},
        "policy": {"deadline_ms": 2000, "require_frame": False}}
    node = ros_graph["start"]("slow", config, max_waiting_proposals=2)
    wait_active(probe, node)
    g = Graph(probe, node)
    assert wait_for(lambda: g.proposals.get_subscription_count() > 0, 10.0), node.log()
    sent = []
    for _ in range(6):
        sent.append(g.propose("pick up the cup"))
        time.sleep(0.05)  # each one reaches the node; the judge is still on the first
    decisions = [g.decision_for(pid, timeout=15.0) for pid in sent]
    for d in decisions:
        assert len([x for x in g.decisions if x.proposal_id == d.proposal_id]) == 1
    refused = [d for d in decisions if "not judged" in d.rationale]
    assert refused, [(d.status, d.rationale) for d in decisions]
    assert all((d.verdict, d.status) == (Decision.VETO, "error") for d in refused)
    assert not any(d.proposal_id in [p.id for p in g.approved] for d in refused)
    audit = (node.workdir / "audit.jsonl").read_text()
    assert all(pid in audit for pid in sent)

