"""guard_ros pieces that need no ROS graph: verdict codes, parameters, bags.

guard_ros.conversions and the bag reader import no ROS at all; the parameter checks live in
the node module and need rclpy importable (skipped otherwise). Image, stamp and proposal
conversions are `guard.wire`'s (tests/test_wire.py, and tests/ros/test_wire_ros.py through
the node's and replay's entry points).
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import DATA
from guard_ros.conversions import percentile, verdict_code


def test_verdict_codes_match_the_message_constants() -> None:
    from guard.types import Verdict

    assert [verdict_code(v) for v in Verdict] == [0, 1, 2]
    assert verdict_code("veto") == 2
    with pytest.raises(ValueError):
        verdict_code("maybe")
    guard_interfaces = pytest.importorskip("guard_interfaces.msg")
    d = guard_interfaces.Decision
    assert (d.ALLOW, d.ANNOTATE, d.VETO) == tuple(verdict_code(v) for v in Verdict)


def test_percentile() -> None:
    assert percentile([], 99) is None
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile(list(range(1, 101)), 99) == 99


def test_parameters_are_checked_with_reasons() -> None:
    # Plain Python: the parameter table and its checks need no rclpy.
    from guard_ros.params import PARAMETERS, check_parameter, config_overrides

    assert all(check_parameter(name, spec.default) is None for name, spec in PARAMETERS.items())
    assert check_parameter("deadline_ms", 50) is None  # an int for a number
    assert "must be one of" in check_parameter("mode", "permissive")
    assert "must be a number" in check_parameter("deadline_ms", "fast")
    assert "must be a number" in check_parameter("deadline_ms", True)
    assert "within" in check_parameter("frame_buffer", 0)
    assert "must be a bool" in check_parameter("gate_cmd_vel", 1)
    assert check_parameter("use_sim_time", "whatever") is None  # not ours
    assert "within [0, 3600]" in check_parameter("stop_pub_timeout", -0.5)
    assert check_parameter("stop_pub_timeout", 0) is None  # one zero, then quiet
    assert "must be a topic name" in check_parameter("cmd_vel_out_topic", " ")
    assert "must be a bool" in check_parameter("enable_stamped_cmd_vel", "yes")

    params = {name: spec.default for name, spec in PARAMETERS.items()}
    assert config_overrides(params) == {}
    params.update(model="m", backend="scripted", mode="shadow", deadline_ms=20,
                  max_frame_age_ms=300.0)
    assert config_overrides(params) == {
        "model.id": "m", "model.backend": "scripted", "policy.mode": "shadow",
        "policy.deadline_ms": 20.0, "policy.max_frame_age_ms": 300.0}


def test_bag_reading_in_time_order_from_folder_and_file() -> None:
    pytest.importorskip("rosbags")
    from guard_ros.bag_player import read_messages

    folder = list(read_messages(DATA / "episode"))
    bare = list(read_messages(DATA / "episode" / "episode.mcap"))
    assert folder == bare and len(folder) == 18
    stamps = [m.timestamp_ns for m in folder]
    assert stamps == sorted(stamps)
    assert {m.topic for m in folder} == {"/camera/image_raw", "/guard/proposals"}
    only = list(read_messages(DATA / "episode", ["/guard/proposals"]))
    assert [m.msgtype for m in only] == ["guard_interfaces/msg/ActionProposal"] * 5


def test_recorded_bytes_deserialize_with_rclpy() -> None:
    pytest.importorskip("rclpy")
    pytest.importorskip("guard_interfaces")
    from guard_ros.bag_player import message_class, read_messages
    from rclpy.serialization import deserialize_message

    first = next(iter(read_messages(DATA / "episode", ["/guard/proposals"])))
    msg = deserialize_message(first.data, message_class(first.msgtype))
    assert (msg.id, msg.header.frame_id) == ("bag-nofame", "base_link")
    with pytest.raises(ImportError):
        message_class("not_a_package/msg/Nope")
    with pytest.raises(ImportError):
        message_class("Image")


def _load_launch_file(monkeypatch: pytest.MonkeyPatch, share: str) -> Any:
    """Import guard.launch.py against stand-ins for launch/launch_ros (no wheels exist for
    them); on a ROS install, test_launch_file_with_launch_ros uses the real ones."""
    import importlib.util
    import sys
    import types

    class Recorder:
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            self.args, self.kwargs = args, kwargs

    class LaunchConfiguration:
        def __init__(self, name: str) -> None:
            self.name = name

        def perform(self, context: dict[str, str]) -> str:
            return context[self.name]

    fakes = {
        "launch": {"LaunchDescription": Recorder},
        "launch.actions": {name: Recorder for name in (
            "DeclareLaunchArgument", "OpaqueFunction", "RegisterEventHandler", "EmitEvent",
            "LogInfo")},
        "launch.events": {"matches_action": lambda action: ("matches", action)},
        "launch.substitutions": {"LaunchConfiguration": LaunchConfiguration},
        "launch_ros": {},
        "launch_ros.actions": {"LifecycleNode": Recorder},
        "launch_ros.event_handlers": {"OnStateTransition": Recorder},
        "launch_ros.events": {},
        "launch_ros.events.lifecycle": {"ChangeState": Recorder},
        "ament_index_python": {},
        "ament_index_python.packages": {"get_package_share_directory": lambda pkg: share},
    }
    for name, attrs in fakes.items():
        monkeypatch.setitem(sys.modules, name, types.SimpleNamespace(**attrs))
    path = DATA.parents[2] / "ros2_ws" / "src" / "guard_ros" / "launch" / "guard.launch.py"
    spec = importlib.util.spec_from_file_location("guard_launch", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_launch_file_arguments_and_node(monkeypatch: pytest.MonkeyPatch) -> None:
    from guard_ros.params import PARAMETERS
    from lifecycle_msgs.msg import Transition

    launch = _load_launch_file(monkeypatch, "/opt/share/guard_ros")
    description = launch.generate_launch_description()
    *declared, opaque = description.args[0]
    defaults = {a.args[0]: a.kwargs["default_value"] for a in declared}
    assert all(a.kwargs["description"] for a in declared)
    assert defaults["params_file"] == "/opt/share/guard_ros/config/guard_params.yaml"
    # Every argument that sets a parameter names one of the node's, with its type.
    for name, kind in launch.PARAMETER_ARGUMENTS.items():
        assert name in defaults, name
        if name != "use_sim_time":
            assert type(PARAMETERS[name].default) is kind, name
    for name in ("enable_stamped_cmd_vel", "stop_pub_timeout", "cmd_vel_in_topic",
                 "cmd_vel_out_topic", "gate_cmd_vel", "autostart", "publish_annotations"):
        assert name in launch.PARAMETER_ARGUMENTS, name

    context = {**defaults, "model": "/models/m", "gate_cmd_vel": "true", "namespace": "robot",
               "cmd_vel_in_topic": "/cmd_vel_nav", "cmd_vel_out_topic": "/cmd_vel",
               "stop_pub_timeout": "0.5", "enable_stamped_cmd_vel": "True"}
    node, *events = opaque.kwargs["function"](context)
    kwargs = node.kwargs
    assert (kwargs["package"], kwargs["executable"], kwargs["name"]) == (
        "guard_ros", "guard_node", "guard_node")
    assert kwargs["namespace"] == "robot"
    params_file, overrides = kwargs["parameters"]
    assert params_file == defaults["params_file"]
    # Empty arguments leave the params file's values alone.
    assert overrides == {"model": "/models/m", "gate_cmd_vel": True, "autostart": True,
                         "use_sim_time": False, "cmd_vel_in_topic": "/cmd_vel_nav",
                         "cmd_vel_out_topic": "/cmd_vel", "stop_pub_timeout": 0.5,
                         "enable_stamped_cmd_vel": True}
    remaps = dict(kwargs["remappings"])
    assert remaps["camera/image_raw"] == "camera/image_raw"
    # autostart: the node configures itself; launch only logs each transition.
    handlers = [e.args[0].kwargs for e in events]
    assert [h["goal_state"] for h in handlers] == list(launch.STATES)
    assert all(h["target_lifecycle_node"] is node for h in handlers)

    def driven(**args: str) -> list[Any]:
        return opaque.kwargs["function"]({**context, **args})[1:]

    # autostart false: launch configures, and activates once configuring reached inactive.
    *logs, activate, configure = driven(autostart="false")
    assert len(logs) == len(launch.STATES)
    on_configured = activate.args[0].kwargs
    assert (on_configured["start_state"], on_configured["goal_state"]) == (
        "configuring", "inactive")
    change = on_configured["entities"][-1].kwargs["event"].kwargs
    assert change["transition_id"] == Transition.TRANSITION_ACTIVATE
    assert change["lifecycle_node_matcher"][1].kwargs["name"] == "guard_node"
    assert configure.kwargs["event"].kwargs["transition_id"] == (
        Transition.TRANSITION_CONFIGURE)
    # ... unless a lifecycle manager (nav2's) does both.
    assert len(driven(autostart="false", use_lifecycle_manager="true")) == len(launch.STATES)


def test_launch_file_with_launch_ros() -> None:
    pytest.importorskip("launch_ros")
    import importlib.util

    path = DATA.parents[2] / "ros2_ws" / "src" / "guard_ros" / "launch" / "guard.launch.py"
    spec = importlib.util.spec_from_file_location("guard_launch_real", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    try:
        description = module.generate_launch_description()
    except LookupError:  # ament_index PackageNotFoundError: guard_ros not installed
        pytest.skip("guard_ros is not installed in an ament index (source a colcon install)")
    assert description.entities


def test_bag_reading_from_sqlite3(tmp_path: Any) -> None:
    pytest.importorskip("rosbags")
    from guard_ros.bag_player import read_messages
    from rosbags.rosbag2 import Reader, StoragePlugin, Writer

    out = tmp_path / "episode_db3"
    with Reader(DATA / "episode") as reader, \
            Writer(out, version=9, storage_plugin=StoragePlugin.SQLITE3) as writer:
        connections = {
            c.id: writer.add_connection(c.topic, c.msgtype, msgdef=c.msgdef.data,
                                        rihs01=c.digest)
            for c in reader.connections
        }
        for connection, timestamp, data in reader.messages():
            writer.write(connections[connection.id], timestamp, data)
    assert list(out.glob("*.db3"))
    assert list(read_messages(out)) == list(read_messages(DATA / "episode"))
