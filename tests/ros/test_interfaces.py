"""guard_interfaces: the ROS 2 message contract, checked on the built messages.

Needs rclpy and a built guard_interfaces. Where only the PyPI wheels exist::

    pip install -r ros2_ws/requirements-ros.txt && bash ros2_ws/build_interfaces.sh
    pytest tests/ros/test_interfaces.py

On a ROS 2 install, source the colcon workspace (``ros2_ws/install/setup.bash``) instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

rclpy = pytest.importorskip("rclpy")

try:
    from guard_interfaces.msg import ActionProposal, Decision, Hazard
    from guard_interfaces.srv import CheckAction
except ImportError as exc:  # pragma: no cover - depends on the environment
    pytest.skip(
        f"guard_interfaces is not importable ({exc}); build it with "
        "`bash ros2_ws/build_interfaces.sh` (PyPI wheels) or colcon (ROS install)",
        allow_module_level=True,
    )

from builtin_interfaces.msg import Time  # noqa: E402
from rclpy.context import Context  # noqa: E402
from rclpy.executors import SingleThreadedExecutor  # noqa: E402
from rclpy.qos import QoSProfile, ReliabilityPolicy  # noqa: E402
from rclpy.serialization import deserialize_message, serialize_message  # noqa: E402
from sensor_msgs.msg import Image  # noqa: E402
from std_msgs.msg import Header  # noqa: E402

pytestmark = [
    pytest.mark.ros,
    # Jazzy's rosidl_generator_py imports lark-parser 0.12 on the first typesupport load, which
    # imports the stdlib's deprecated sre_* modules: not ours to fix, and noise in every report.
    pytest.mark.filterwarnings("ignore:module 'sre_:DeprecationWarning"),
]

# The field lists of the ROS 2 contract, as rosidl reports them. A renamed or retyped
# field breaks every node and bag that speaks these types, so it must fail here first.
CONTRACT = {
    ActionProposal: {
        "header": "std_msgs/Header",
        "id": "string",
        "name": "string",
        "description": "string",
        "arguments_json": "string",
    },
    Hazard: {
        "category": "string",
        "description": "string",
        "consequence": "string",
        "severity": "float",
    },
    Decision: {
        "header": "std_msgs/Header",
        "proposal_id": "string",
        "verdict": "uint8",
        "status": "string",
        "risk": "float",
        "hazards": "sequence<guard_interfaces/Hazard>",
        "rationale": "string",
        "latency_ms": "float",
        "frame_stamp": "builtin_interfaces/Time",
        "model": "string",
        "id": "string",
        "mode": "string",
        "policy": "string",
        "rules": "sequence<string>",
        "error": "string",
    },
    CheckAction.Request: {
        "proposal": "guard_interfaces/ActionProposal",
        "image": "sensor_msgs/Image",
    },
    CheckAction.Response: {"decision": "guard_interfaces/Decision"},
}


def make_proposal(proposal_id: str = "p-1") -> ActionProposal:
    return ActionProposal(
        header=Header(stamp=Time(sec=12, nanosec=34), frame_id="base_link"),
        id=proposal_id,
        name="place",
        description="put the towel on the stove",
        arguments_json='{"object": "towel", "target": "stove"}',
    )


def make_decision(proposal_id: str = "p-1") -> Decision:
    return Decision(
        header=Header(stamp=Time(sec=13, nanosec=0), frame_id="base_link"),
        proposal_id=proposal_id,
        verdict=Decision.VETO,
        status="ok",
        risk=0.75,
        hazards=[
            Hazard(
                category="fire",
                description="towel on a lit burner",
                consequence="the towel ignites",
                severity=0.5,
            )
        ],
        rationale="cloth on an active heat source",
        latency_ms=42.5,
        frame_stamp=Time(sec=12, nanosec=0),
        model="rules",
        id="0123456789abcdef0123456789abcdef",
        mode="enforce",
        policy="default@59381e4793d8",
        rules=["heat_source_cloth"],
        error="",
    )


@pytest.mark.parametrize("msg_type", list(CONTRACT), ids=lambda t: t.__name__)
def test_fields_match_the_contract(msg_type: type) -> None:
    assert msg_type.get_fields_and_field_types() == CONTRACT[msg_type]


def test_verdict_constants() -> None:
    assert (Decision.ALLOW, Decision.ANNOTATE, Decision.VETO) == (0, 1, 2)
    # A default-constructed Decision is ALLOW (0): publishers must always set the verdict.
    assert Decision().verdict == Decision.ALLOW


def test_status_constants_are_the_guards_statuses() -> None:
    from guard.types import Status

    names = {f"STATUS_{s.name}": s.value for s in Status}
    assert {n: getattr(Decision, n) for n in names} == names
    # Default-constructed: no status, so a publisher that forgets it is visibly wrong.
    assert Decision().status == "" and Decision().id == "" and list(Decision().rules) == []


def test_messages_construct_and_serialize() -> None:
    # Serialization goes through the C typesupport that rclpy publishes with, without DDS.
    for msg in (make_proposal(), make_decision(), make_decision().hazards[0]):
        assert deserialize_message(serialize_message(msg), type(msg)) == msg
    request = CheckAction.Request(proposal=make_proposal(), image=Image())
    assert request.image.width == 0  # the contract's "use the latest frame"
    assert deserialize_message(serialize_message(request), CheckAction.Request) == request


# A second process: echoes each ActionProposal as a Decision and serves CheckAction. Separate
# processes prove the typesupport libraries load in a fresh interpreter and that the wire format
# (not just Python objects) round-trips.
PEER = textwrap.dedent(
    """
    import sys
    import rclpy
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from guard_interfaces.msg import ActionProposal, Decision, Hazard
    from guard_interfaces.srv import CheckAction

    prefix = sys.argv[1]
    rclpy.init()
    node = rclpy.create_node("interfaces_peer")
    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    pub = node.create_publisher(Decision, prefix + "/decisions", qos)

    def on_proposal(p):
        pub.publish(Decision(
            header=p.header, proposal_id=p.id, verdict=Decision.ANNOTATE, status="ok",
            risk=0.25, rationale="|".join([p.name, p.description, p.arguments_json]),
            hazards=[Hazard(category="echo", description=p.header.frame_id, consequence="",
                            severity=1.0)],
            latency_ms=1.5, frame_stamp=p.header.stamp, model="peer"))

    def on_check(req, resp):
        resp.decision = Decision(
            proposal_id=req.proposal.id, verdict=Decision.VETO, status="ok", risk=1.0,
            rationale="%dx%d %s" % (req.image.width, req.image.height, req.image.encoding),
            model="peer")
        return resp

    node.create_subscription(ActionProposal, prefix + "/proposals", on_proposal, qos)
    node.create_service(CheckAction, prefix + "/check", on_check)
    try:
        rclpy.spin(node)
    except Exception:
        pass
    """
)


@pytest.fixture
def ros_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Isolates this test's ROS graph: own domain, localhost only, logs in tmp."""
    # Derived from the pid so concurrent pytest runs on one machine rarely share a domain; the
    # topic names are unique per test as well, so a shared domain still cannot cross answers.
    env = {
        "ROS_DOMAIN_ID": str(10 + os.getpid() % 90),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(tmp_path / "ros_log"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def ros_node(ros_env: dict[str, str]) -> Iterator[tuple[object, SingleThreadedExecutor]]:
    """A node in a private Context, so nothing leaks into other tests' rclpy state."""
    context = Context()
    rclpy.init(context=context, domain_id=int(ros_env["ROS_DOMAIN_ID"]))
    node = rclpy.create_node("interfaces_test", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        yield node, executor
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.shutdown(context=context)


def spin_until(
    executor: SingleThreadedExecutor,
    done: Callable[[], bool],
    timeout_s: float,
    every: Callable[[], None] | None = None,
) -> bool:
    deadline = time.monotonic() + timeout_s
    next_every = 0.0
    while time.monotonic() < deadline:
        if done():
            return True
        if every is not None and time.monotonic() >= next_every:
            every()
            next_every = time.monotonic() + 0.25
        executor.spin_once(timeout_sec=0.05)
    return done()


def test_round_trip_between_processes(ros_node, ros_env, tmp_path: Path) -> None:
    node, executor = ros_node
    prefix = "/guard_if_test_" + uuid.uuid4().hex[:8]
    peer_log = tmp_path / "peer.log"
    with peer_log.open("w") as log:
        peer = subprocess.Popen(
            [sys.executable, "-c", PEER, prefix],
            env={**os.environ, **ros_env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )
    try:
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        received: list[Decision] = []
        node.create_subscription(Decision, prefix + "/decisions", received.append, qos)
        pub = node.create_publisher(ActionProposal, prefix + "/proposals", qos)
        proposal = make_proposal("p-" + uuid.uuid4().hex[:6])

        def peer_alive() -> None:
            assert peer.poll() is None, f"peer exited: {peer_log.read_text()}"

        def publish() -> None:
            peer_alive()
            # Re-sent until answered: discovery may finish on one side before the other.
            if pub.get_subscription_count() > 0:
                pub.publish(proposal)

        assert spin_until(executor, lambda: bool(received), 15.0, every=publish), (
            f"no Decision from the peer; its log: {peer_log.read_text()}"
        )
        decision = received[0]
        assert decision.proposal_id == proposal.id
        assert decision.verdict == Decision.ANNOTATE
        assert decision.status == "ok"
        assert decision.risk == pytest.approx(0.25)
        assert decision.latency_ms == pytest.approx(1.5)
        assert decision.model == "peer"
        assert decision.rationale == "|".join(
            [proposal.name, proposal.description, proposal.arguments_json]
        )
        assert decision.header == proposal.header
        assert decision.frame_stamp == proposal.header.stamp
        assert [(h.category, h.description, h.severity) for h in decision.hazards] == [
            ("echo", "base_link", 1.0)
        ]

        client = node.create_client(CheckAction, prefix + "/check")
        assert spin_until(executor, client.service_is_ready, 10.0, every=peer_alive), (
            f"CheckAction service never appeared; peer log: {peer_log.read_text()}"
        )
        image = Image(height=2, width=3, encoding="rgb8", step=9, data=bytes(range(18)))
        future = client.call_async(CheckAction.Request(proposal=proposal, image=image))
        assert spin_until(executor, future.done, 10.0, every=peer_alive)
        answer = future.result().decision
        assert answer.proposal_id == proposal.id
        assert answer.verdict == Decision.VETO
        assert answer.rationale == "3x2 rgb8"
    finally:
        peer.terminate()
        try:
            peer.wait(timeout=5)
        except subprocess.TimeoutExpired:
            peer.kill()
            peer.wait()
