"""Shared pieces of the ROS 2 tests: guard_ros on sys.path, node processes, a probe node.

guard_ros is an ament_python package under ros2_ws/src; it is not pip-installed, so its folder
goes on sys.path here (and on PYTHONPATH of every node process started below). On a ROS 2
install, a sourced colcon workspace provides the same package.

Isolation: every node process and the probe talking to it share a ROS_DOMAIN_ID of their own,
discovery is localhost-only, logs go to a tmp dir, and each node runs in a unique namespace, so
even two test runs that drew the same domain cannot cross answers.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
GUARD_ROS = ROOT / "ros2_ws" / "src" / "guard_ros"
DATA = Path(__file__).resolve().parent / "data"
if str(GUARD_ROS) not in sys.path:
    sys.path.insert(0, str(GUARD_ROS))

# Domains 110..209: apart from test_interfaces.py (10..99); the offset by pid spreads
# concurrent runs on one machine. Fast DDS ports stay valid for domains up to 232.
_domains = itertools.count((os.getpid() * 7) % 100)


def next_domain_id() -> int:
    return 110 + next(_domains) % 100


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.01) -> bool:
    """Poll `predicate` until it is truthy or `timeout` seconds pass; returns the last test."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class NodeProcess:
    """guard_node as a separate process (python -m guard_ros.guard_node), as users run it."""

    def __init__(
        self,
        workdir: Path,
        env: dict[str, str],
        namespace: str,
        guard_config: dict[str, Any] | None,
        params: dict[str, Any],
        module: str = "guard_ros.guard_node",
    ) -> None:
        self.workdir = workdir
        self.namespace = namespace
        self.fqn = f"{namespace}/guard_node"
        self.expected_code = 0  # at the fixture's teardown (SIGTERM is a clean shutdown)
        workdir.mkdir(parents=True, exist_ok=True)
        params = dict(params)
        if guard_config is not None:
            config = {**guard_config}
            config.setdefault("audit", {"path": str(workdir / "audit.jsonl")})
            config_path = workdir / "guard.yaml"
            config_path.write_text(yaml.safe_dump(config))
            params.setdefault("config", str(config_path))
        self.params_path = workdir / "params.yaml"
        self.params_path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
        self.log_path = workdir / "node.log"
        self._log = self.log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", module, "--ros-args", "--params-file",
             str(self.params_path), "-r", f"__ns:={namespace}"],
            env=env, stdout=self._log, stderr=subprocess.STDOUT, cwd=workdir,
        )

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def assert_alive(self) -> None:
        code = self.proc.poll()
        assert code is None, f"guard_node exited ({code}):\n{self.log()}"

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode


class Probe:
    """The test's side of the graph: a node in a private Context, spun on a thread."""

    def __init__(self, domain_id: int, name: str = "probe") -> None:
        import rclpy
        from rclpy.context import Context
        from rclpy.executors import SingleThreadedExecutor

        self.context = Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node(f"{name}_{uuid.uuid4().hex[:6]}", context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.cond = threading.Condition()
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            while self.context.ok():
                self.executor.spin_once(timeout_sec=0.05)
        except (ExternalShutdownException, Exception):
            pass

    def collect(self, msg_type: Any, topic: str, qos: Any = None) -> list[Any]:
        """Subscribe and return the list that received messages are appended to."""
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        received: list[Any] = []

        def on_msg(msg: Any) -> None:
            with self.cond:
                received.append(msg)
                self.cond.notify_all()

        qos = qos or QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.node.create_subscription(msg_type, topic, on_msg, qos)
        return received

    def wait(self, predicate: Callable[[], Any], timeout: float) -> bool:
        """Wait until `predicate` holds (re-tested on every received message)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return bool(predicate())
                self.cond.wait(min(left, 0.05))
        return True

    def publisher(self, msg_type: Any, topic: str, qos: Any = None) -> Any:
        from rclpy.qos import QoSProfile, ReliabilityPolicy

        qos = qos or QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        return self.node.create_publisher(msg_type, topic, qos)

    def call(self, srv_type: Any, name: str, request: Any, timeout: float = 10.0) -> Any:
        """Call a service and return the response (fails the test on a timeout)."""
        client = self.node.create_client(srv_type, name)
        try:
            assert wait_for(client.service_is_ready, timeout), f"service {name} not available"
            future = client.call_async(request)
            assert wait_for(future.done, timeout), f"service {name} did not answer"
            return future.result()
        finally:
            self.node.destroy_client(client)

    def lifecycle_state(self, node_fqn: str, timeout: float = 10.0) -> str:
        from lifecycle_msgs.srv import GetState

        return self.call(GetState, f"{node_fqn}/get_state", GetState.Request(), timeout) \
            .current_state.label

    def change_state(self, node_fqn: str, transition: int) -> bool:
        from lifecycle_msgs.msg import Transition
        from lifecycle_msgs.srv import ChangeState

        request = ChangeState.Request(transition=Transition(id=transition))
        return self.call(ChangeState, f"{node_fqn}/change_state", request).success

    def set_params(self, node_fqn: str, **values: Any) -> list[Any]:
        """Set parameters through the node's service; returns one SetParametersResult each."""
        from rcl_interfaces.srv import SetParameters
        from rclpy.parameter import Parameter

        request = SetParameters.Request(
            parameters=[Parameter(k, value=v).to_parameter_msg() for k, v in values.items()])
        return self.call(SetParameters, f"{node_fqn}/set_parameters", request).results

    def close(self) -> None:
        import rclpy

        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5)
        self.executor.shutdown()
        self.node.destroy_node()


def make_image(encoding: str = "rgb8", width: int = 64, height: int = 48, stamp: Any = None,
               value: int = 80) -> Any:
    """A sensor_msgs/Image filled with a gradient, stamped now unless told."""
    import numpy as np
    from sensor_msgs.msg import Image

    channels = {"mono8": 1, "rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4}.get(encoding, 3)
    pixels = np.full((height, width, channels), value, np.uint8)
    pixels[:, :, 0] = (np.arange(width) % 256).astype(np.uint8)[None, :]
    msg = Image(height=height, width=width, encoding=encoding, step=width * channels,
                is_bigendian=0)
    msg.data = pixels.tobytes()
    if stamp is not None:
        msg.header.stamp = stamp
    return msg


@pytest.fixture(scope="module")
def ros_graph(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A fresh domain for one test module: env for node processes and a probe in that domain."""
    pytest.importorskip("rclpy")
    try:
        import guard_interfaces.msg  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"guard_interfaces is not importable ({exc}); run "
                    "`bash ros2_ws/build_interfaces.sh`")
    tmp = tmp_path_factory.mktemp("ros")
    domain = next_domain_id()
    settings = {
        "ROS_DOMAIN_ID": str(domain),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
        "ROS_LOG_DIR": str(tmp / "ros_log"),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in settings.items():
            mp.setenv(key, value)
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(GUARD_ROS), os.environ.get("PYTHONPATH", "")) if p),
            "XDG_STATE_HOME": str(tmp / "state"),
            "PYTHONUNBUFFERED": "1",
        }
        probe = Probe(domain)
        nodes: list[NodeProcess] = []

        def start(name: str, guard_config: dict[str, Any] | None, **params: Any) -> NodeProcess:
            # '{ns}' in a parameter name stands for the node's namespace (QoS overrides name
            # their topic fully qualified).
            ns = f"/{name}_{uuid.uuid4().hex[:8]}"
            params = {key.replace("{ns}", ns): value for key, value in params.items()}
            node = NodeProcess(tmp / name, env, ns, guard_config, params)
            nodes.append(node)
            return node

        try:
            yield {"probe": probe, "start": start, "env": env, "tmp": tmp, "domain": domain}
        finally:
            codes = {node.fqn: (node.stop(), node.expected_code) for node in nodes}
            probe.close()
        bad = {fqn: got_want for fqn, got_want in codes.items() if got_want[0] != got_want[1]}
        logs = "\n".join(
            f"--- {node.fqn} log (tail) ---\n{node.log_path.read_text(errors='replace')[-3000:]}"
            for node in nodes if node.fqn in bad
        )
        assert not bad, f"exit codes (got, expected): {bad}\n{logs}"


def wait_active(probe: Probe, node: NodeProcess, timeout: float = 30.0) -> None:
    """Block until the node reports the lifecycle state 'active' (autostart done)."""
    deadline = time.monotonic() + timeout
    state = ""
    while time.monotonic() < deadline:
        node.assert_alive()
        try:
            state = probe.lifecycle_state(node.fqn, timeout=2.0)
        except AssertionError:
            continue
        if state == "active":
            return
        time.sleep(0.05)
    raise AssertionError(f"guard_node not active (state {state!r}):\n{node.log()}")
