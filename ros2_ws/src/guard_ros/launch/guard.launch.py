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
        gate_cmd_vel:=true cmd_vel_in_topic:=/nav/cmd_vel cmd_vel_topic:=/cmd_vel
    ros2 launch guard_ros guard.launch.py --show-args

Arguments left empty keep the value of params_file (by default the package's
config/guard_params.yaml). With autostart:=false a lifecycle manager configures and
activates the node.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode

# name -> (default, description); the default of params_file is filled in below.
ARGUMENTS = {
    'params_file': (None, 'guard_node parameters (ROS 2 YAML)'),
    'config': ('', 'Guard YAML config (model, policy, rules, audit); empty: from params_file'),
    'model': ('', 'Model id or folder, overriding the config; empty: from params_file'),
    'backend': ('', 'Judge backend: transformers, openai or scripted; empty: from params_file'),
    'mode': ('', 'enforce or shadow; empty: from params_file'),
    'gate_cmd_vel': ('', 'true: gate cmd_vel_in into cmd_vel; empty: from params_file'),
    'autostart': ('true', 'Configure and activate on start (false: wait for a manager)'),
    'namespace': ('', 'Namespace of the node and its relative topics'),
    'use_sim_time': ('false', 'Use /clock (simulation, bag replay)'),
    'image_topic': ('camera/image_raw', 'Camera topic (Image, or CompressedImage per params)'),
    'proposals_topic': ('guard/proposals', 'Action proposals from the planner'),
    'approved_topic': ('guard/approved', 'Proposals that may run, to the executor'),
    'decisions_topic': ('guard/decisions', 'Every decision, with its proposal_id'),
    'cmd_vel_in_topic': ('cmd_vel_in', 'Velocity commands to gate (from the planner)'),
    'cmd_vel_topic': ('cmd_vel', 'Gated velocity commands (to the base controller)'),
    'log_level': ('info', 'Logging level of the node'),
}


def _guard_node(context, *args, **kwargs):
    def arg(name):
        return LaunchConfiguration(name).perform(context)

    overrides = {name: arg(name) for name in ('config', 'model', 'backend', 'mode') if arg(name)}
    for name in ('gate_cmd_vel', 'autostart', 'use_sim_time'):
        if arg(name):
            overrides[name] = arg(name).lower() in ('true', '1', 'yes')
    remappings = [
        ('camera/image_raw', arg('image_topic')),
        ('guard/proposals', arg('proposals_topic')),
        ('guard/approved', arg('approved_topic')),
        ('guard/decisions', arg('decisions_topic')),
        ('cmd_vel_in', arg('cmd_vel_in_topic')),
        ('cmd_vel', arg('cmd_vel_topic')),
    ]
    return [LifecycleNode(
        package='guard_ros',
        executable='guard_node',
        name='guard_node',
        namespace=arg('namespace'),
        parameters=[arg('params_file'), overrides],
        remappings=remappings,
        arguments=['--ros-args', '--log-level', arg('log_level')],
        output='screen',
    )]


def generate_launch_description():
    """Declare the arguments and the node."""
    share = get_package_share_directory('guard_ros')
    defaults = {'params_file': os.path.join(share, 'config', 'guard_params.yaml')}
    declared = [
        DeclareLaunchArgument(name, default_value=defaults.get(name, default),
                              description=description)
        for name, (default, description) in ARGUMENTS.items()
    ]
    return LaunchDescription([*declared, OpaqueFunction(function=_guard_node)])
