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

"""Launch guard_node, the guard on the actuation path, as a lifecycle node.

    ros2 launch guard_ros guard.launch.py config:=/path/to/guard.yaml
    ros2 launch guard_ros guard.launch.py model:=/models/guard-qwen2.5-vl backend:=transformers \
        gate_cmd_vel:=true cmd_vel_in_topic:=/cmd_vel_nav cmd_vel_out_topic:=/cmd_vel
    ros2 launch guard_ros guard.launch.py autostart:=false          # launch drives the lifecycle
    ros2 launch guard_ros guard.launch.py autostart:=false use_lifecycle_manager:=true
    ros2 launch guard_ros guard.launch.py --show-args

Arguments left empty keep the value of params_file (by default the package's
config/guard_params.yaml). Every transition of the node is logged. With autostart:=false the
launch file itself configures the node once its process starts and activates it when
configuring succeeded (launch_ros lifecycle events), unless use_lifecycle_manager:=true
leaves both to a lifecycle manager (nav2's, for one).
"""

import os
from typing import Any

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    EmitEvent,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
)
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from lifecycle_msgs.msg import Transition

# name -> (default, description); the default of params_file is filled in below.
ARGUMENTS = {
    'params_file': (None, 'guard_node parameters (ROS 2 YAML)'),
    'config': ('', 'Guard YAML config (model, policy, rules, audit); empty: from params_file'),
    'model': ('', 'Model id or folder, overriding the config; empty: from params_file'),
    'backend': ('', 'Judge backend: transformers, openai or scripted; empty: from params_file'),
    'mode': ('', 'enforce or shadow; empty: from params_file'),
    'gate_cmd_vel': ('', 'true: gate cmd_vel_in_topic into cmd_vel_out_topic; empty: from '
                     'params_file'),
    'enable_stamped_cmd_vel': ('', 'true: cmd_vel in and out are TwistStamped; empty: from '
                               'params_file'),
    'stop_pub_timeout': ('', 'Seconds of zero velocity after the gate stops, then nothing; '
                         'empty: from params_file'),
    'cmd_vel_in_topic': ('', 'Velocity commands to gate (from the planner); empty: from '
                         'params_file'),
    'cmd_vel_out_topic': ('', 'Gated velocity commands (to the base controller); empty: from '
                          'params_file'),
    'publish_annotations': ('', 'true: Foxglove image annotations of each decision on '
                            'guard/annotations; empty: from params_file'),
    'autostart': ('true', 'The node configures and activates itself (false: the launch file '
                  'or a lifecycle manager does)'),
    'use_lifecycle_manager': ('false', 'With autostart false: leave configure and activate to '
                              'a lifecycle manager instead of this launch file'),
    'namespace': ('', 'Namespace of the node and its relative topics'),
    'use_sim_time': ('false', 'Use /clock (simulation, bag replay)'),
    'image_topic': ('camera/image_raw', 'Camera base topic (Image; CompressedImage on '
                    '<topic>/compressed with image_format compressed)'),
    'proposals_topic': ('guard/proposals', 'Action proposals from the planner'),
    'approved_topic': ('guard/approved', 'Proposals that may run, to the executor'),
    'decisions_topic': ('guard/decisions', 'Every decision, with its proposal_id'),
    'log_level': ('info', 'Logging level of the node'),
}
# Launch arguments that set the node parameter of the same name when not empty.
PARAMETER_ARGUMENTS = {
    'config': str, 'model': str, 'backend': str, 'mode': str, 'cmd_vel_in_topic': str,
    'cmd_vel_out_topic': str, 'gate_cmd_vel': bool, 'enable_stamped_cmd_vel': bool,
    'publish_annotations': bool, 'autostart': bool, 'use_sim_time': bool,
    'stop_pub_timeout': float,
}
STATES = ('unconfigured', 'inactive', 'active', 'finalized')


def _true(text: str) -> bool:
    return text.lower() in ('true', '1', 'yes')


def _guard_node(context: Any, *args: Any, **kwargs: Any) -> list[Any]:
    def arg(name: str) -> str:
        return str(LaunchConfiguration(name).perform(context))

    overrides: dict[str, Any] = {}
    for name, kind in PARAMETER_ARGUMENTS.items():
        if arg(name):
            overrides[name] = _true(arg(name)) if kind is bool else kind(arg(name))
    remappings = [
        ('camera/image_raw', arg('image_topic')),
        ('guard/proposals', arg('proposals_topic')),
        ('guard/approved', arg('approved_topic')),
        ('guard/decisions', arg('decisions_topic')),
    ]
    node = LifecycleNode(
        package='guard_ros',
        executable='guard_node',
        name='guard_node',
        namespace=arg('namespace'),
        parameters=[arg('params_file'), overrides],
        remappings=remappings,
        arguments=['--ros-args', '--log-level', arg('log_level')],
        output='screen',
    )
    return [node, *_lifecycle_events(
        node, drive=not _true(arg('autostart')) and not _true(arg('use_lifecycle_manager')))]


def _lifecycle_events(node: Any, drive: bool) -> list[Any]:
    """Log every transition; with `drive`, configure at start and activate once inactive."""

    def change(transition: int) -> Any:
        return EmitEvent(event=ChangeState(
            lifecycle_node_matcher=matches_action(node), transition_id=transition))

    events = [
        RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, goal_state=state,
            entities=[LogInfo(msg=f'guard_node is now {state}')]))
        for state in STATES
    ]
    if drive:
        events.append(RegisterEventHandler(OnStateTransition(
            target_lifecycle_node=node, start_state='configuring', goal_state='inactive',
            entities=[LogInfo(msg='guard_node configured: activating'),
                      change(Transition.TRANSITION_ACTIVATE)])))
        events.append(change(Transition.TRANSITION_CONFIGURE))
    return events


def generate_launch_description() -> Any:
    """Declare the arguments, the node and its lifecycle event handlers."""
    share = get_package_share_directory('guard_ros')
    defaults = {'params_file': os.path.join(share, 'config', 'guard_params.yaml')}
    declared = [
        DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                              description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_guard_node)])
