# Copyright 2026 embodied-guard maintainers
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

"""guard_node's parameters: what each means, its default, when it may change, and checks.

Plain Python (no rclpy), so the table and its validation are unit-tested without a graph;
guard_node declares every entry of `PARAMETERS` and refuses values `check_parameter` rejects.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from guard_ros.gate import DEFAULT_STOP_PUB_TIMEOUT_S


@dataclasses.dataclass(frozen=True)
class ParameterSpec:
    """One node parameter: its default, what it means, and when it may change."""

    default: Any
    description: str
    # False: read on configure, so a change while configured is refused (it would be ignored).
    live: bool = False
    read_only: bool = False


PARAMETERS: dict[str, ParameterSpec] = {
    'config': ParameterSpec(
        '', 'Path to the guard YAML config; empty uses the built-in defaults.'),
    'model': ParameterSpec(
        '', 'Model id or folder; overrides model.id of the config (empty keeps it).'),
    'backend': ParameterSpec(
        '', 'Judge backend (transformers, openai, scripted); overrides model.backend.'),
    'mode': ParameterSpec(
        '', 'enforce or shadow; empty keeps policy.mode of the config. Switchable at runtime.',
        live=True),
    'deadline_ms': ParameterSpec(
        0.0, 'Deadline of each check in ms; 0 keeps policy.deadline_ms of the config. '
        'Changeable at runtime.', live=True),
    'max_frame_age_ms': ParameterSpec(
        0.0, 'Newest frame older than this is stale (veto, zero cmd_vel); 0 keeps '
        'policy.max_frame_age_ms of the config. Changeable at runtime.', live=True),
    'gate_cmd_vel': ParameterSpec(
        False, 'Relay cmd_vel_in to cmd_vel, zero while the latest decision is a veto or the '
        'camera is stale.'),
    'autostart': ParameterSpec(
        True, 'Configure and activate on start (no lifecycle manager needed).', read_only=True),
    'image_format': ParameterSpec(
        'raw', 'raw: sensor_msgs/Image on camera/image_raw; compressed: '
        'sensor_msgs/CompressedImage on camera/image_raw/compressed (image_transport\'s '
        'compressed transport; remapping camera/image_raw moves it too).'),
    'frame_buffer': ParameterSpec(
        4, 'Camera frames kept (newest last); the judge sees image.max_frames of them.'),
    'frame_wait_ms': ParameterSpec(
        500.0, 'A proposal with a header stamp is judged on a camera frame stamped at or after '
        'it; how long to wait for one (wall time) before a stale_frame veto. Unstamped '
        'proposals are judged on the newest frame at once.'),
    'age_unstamped_frames_from_arrival': ParameterSpec(
        False, 'A camera frame with a zero header stamp is stale (every check of it a '
        'stale_frame veto, the gate stopped): its age cannot be known. true: take its arrival '
        'time instead, for drivers that leave the stamp unset (hides any delay before '
        'arrival, such as a driver re-sending a cached image).'),
    'watchdog_period_ms': ParameterSpec(
        100.0, 'Period of the cmd_vel watchdog that sends zero velocity while stopped.'),
    'stop_pub_timeout': ParameterSpec(
        DEFAULT_STOP_PUB_TIMEOUT_S, 'Seconds for which zero velocity is sent after the gate '
        'stops (on each command and watchdog tick); then nothing until it passes again '
        "(nav2 collision_monitor's parameter)."),
    'enable_stamped_cmd_vel': ParameterSpec(
        False, 'cmd_vel in and out are geometry_msgs/TwistStamped instead of Twist.'),
    'cmd_vel_in_topic': ParameterSpec(
        'cmd_vel_in', 'Velocity commands to gate (relative names take the namespace).'),
    'cmd_vel_out_topic': ParameterSpec(
        'cmd_vel', 'Gated velocity commands, to the base controller.'),
    'diagnostics_period_s': ParameterSpec(1.0, 'Period of the /diagnostics status.'),
    'publish_annotations': ParameterSpec(
        False, 'Publish foxglove_msgs/ImageAnnotations of each proposal decision over the '
        'frame it judged on guard/annotations (needs the foxglove_msgs package).'),
    'max_waiting_proposals': ParameterSpec(
        100, 'Proposals that may wait for the judge; one arriving beyond that is answered at '
        'once with an audited error veto.'),
}

_RANGES: dict[str, tuple[float, float]] = {
    'deadline_ms': (0.0, 3_600_000.0),
    'max_frame_age_ms': (0.0, 3_600_000.0),
    'frame_buffer': (1, 256),
    'frame_wait_ms': (0.0, 60_000.0),
    'watchdog_period_ms': (1.0, 60_000.0),
    'stop_pub_timeout': (0.0, 3600.0),
    'diagnostics_period_s': (0.01, 3600.0),
    'max_waiting_proposals': (1, 100_000),
}
_CHOICES = {'mode': ('', 'enforce', 'shadow'), 'image_format': ('raw', 'compressed')}
_TOPICS = ('cmd_vel_in_topic', 'cmd_vel_out_topic')


def check_parameter(name: str, value: Any) -> str | None:
    """Validate one guard_node parameter.

    Args:
        name: the parameter's name (unknown names are not ours and pass).
        value: the value as rclpy gives it.

    Returns:
        None when valid, else a one-line reason naming the parameter and the value.
    """
    spec = PARAMETERS.get(name)
    if spec is None:
        return None
    if isinstance(spec.default, bool):
        ok = isinstance(value, bool)
        want = 'a bool'
    elif isinstance(spec.default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = 'an integer'
    elif isinstance(spec.default, float):
        # Accepted as int too: a params file saying `deadline_ms: 50` means 50.0.
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        want = 'a number'
    else:
        ok = isinstance(value, str)
        want = 'a string'
    if not ok:
        return f'{name} = {value!r}: must be {want}'
    if name in _TOPICS and not value.strip():
        return f'{name} = {value!r}: must be a topic name'
    if name in _CHOICES and value not in _CHOICES[name]:
        allowed = ', '.join(repr(c) for c in _CHOICES[name])
        return f'{name} = {value!r}: must be one of {allowed}'
    if name in _RANGES:
        low, high = _RANGES[name]
        if not low <= value <= high:
            return f'{name} = {value!r}: must be within [{low:g}, {high:g}]'
    return None


def config_overrides(params: dict[str, Any]) -> dict[str, Any]:
    """Return the guard config fields that the node's parameters override.

    Args:
        params: parameter values by name (as declared in `PARAMETERS`).

    Returns:
        Dotted field names and values for `GuardConfig.with_overrides`; empty or zero
        parameters keep the config's value.
    """
    overrides: dict[str, Any] = {}
    if params['model']:
        overrides['model.id'] = params['model']
    if params['backend']:
        overrides['model.backend'] = params['backend']
    if params['mode']:
        overrides['policy.mode'] = params['mode']
    if params['deadline_ms'] > 0:
        overrides['policy.deadline_ms'] = float(params['deadline_ms'])
    if params['max_frame_age_ms'] > 0:
        overrides['policy.max_frame_age_ms'] = float(params['max_frame_age_ms'])
    return overrides


def policy_changes(values: dict[str, Any], config_policy: Any) -> dict[str, Any]:
    """Return the policy fields to change for live parameters just set on a configured node.

    Args:
        values: the parameters being set, by name (others than the live policy ones are
            ignored).
        config_policy: the config file's `PolicyConfig`: empty or zero values go back to it,
            as they do on configure.

    Returns:
        Keyword arguments for `Guard.set_policy` (empty when no policy parameter is set).
    """
    changes: dict[str, Any] = {}
    for name, value in values.items():
        if name == 'mode':
            changes['mode'] = value or config_policy.mode
        elif name in ('deadline_ms', 'max_frame_age_ms'):
            changes[name] = float(value) if value else getattr(config_policy, name)
    return changes
