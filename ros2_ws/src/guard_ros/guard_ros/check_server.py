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

"""`guard/check` on a thread of its own, so a check waits for the model off the executor."""

from __future__ import annotations

from collections.abc import Callable
import threading
from typing import Any

from guard_interfaces.srv import CheckAction
from guard_ros.process import SPIN_TIMEOUT_S
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node


class CheckServer:
    """Serve `guard/check` for `owner` from a helper node spun on a thread of its own.

    rclpy runs a service callback on the thread of the executor its node is in, and a node
    is in one executor; the service therefore lives on a small helper node (`<name>_check`,
    no parameters) spun by its own single-threaded executor. The service name is resolved by
    the guard node, so its namespace and remappings apply exactly as on the node itself.
    """

    def __init__(self, owner: Node, callback: Callable[[Any, Any], Any]) -> None:
        """Create the helper node and the service, and start serving."""
        name = owner.resolve_service_name('guard/check')
        self._node = rclpy.create_node(
            f'{owner.get_name()}_check', namespace=owner.get_namespace(),
            context=owner.context, use_global_arguments=False,
            start_parameter_services=False)
        self._node.create_service(CheckAction, name, callback)
        self._executor = SingleThreadedExecutor(context=owner.context)
        self._executor.add_node(self._node)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._spin, name='guard-check', daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while not self._stop.is_set() and self._node.context.ok():
            try:
                self._executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
            except Exception:  # rclpy raises RCLError & co. when shut down under it: a stop
                if self._stop.is_set() or not self._node.context.ok():
                    return
                raise

    def close(self, timeout: float) -> None:
        """Stop serving; a check in progress (bounded by its deadline) is answered first."""
        self._stop.set()
        self._thread.join(timeout)
        self._executor.shutdown(timeout_sec=1.0)
        self._node.destroy_node()
