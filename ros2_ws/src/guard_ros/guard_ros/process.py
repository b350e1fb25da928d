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

"""A lifecycle node as a process: init, autostart, spin until told to stop, exit.

`guard_node`'s `main` is `run(GuardNode)`; kept apart from the node so the node reads as what
it does on the graph, not how a process hosts it.
"""

from __future__ import annotations

from collections.abc import Callable
import logging
import os
import sys
import threading
from typing import Any

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.lifecycle import TransitionCallbackReturn

SPIN_TIMEOUT_S = 0.25


def run(make_node: Callable[[], Any], args: list[str] | None = None) -> int:
    """Run a lifecycle node until shutdown (Ctrl-C, SIGTERM, or the context shutting down).

    With its `autostart` parameter true the node is configured and activated first; the node
    must have a `release()` that frees everything without a lifecycle transition.

    Returns:
        0 on a clean shutdown, 1 when autostart could not configure or activate the node.
    """
    # The guard library logs through `logging`; without a handler its errors would vanish.
    logging.basicConfig(level=logging.WARNING, format='[%(levelname)s] [%(name)s]: %(message)s')
    rclpy.init(args=args)
    node = make_node()
    code = 0
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        if node.get_parameter('autostart').value:
            for step in (node.trigger_configure, node.trigger_activate):
                if step() != TransitionCallbackReturn.SUCCESS:
                    node.get_logger().fatal(
                        f'autostart failed at {step.__name__}: see the errors above')
                    code = 1
                    break
        # spin_once with a timeout rather than spin(): with use_sim_time and no /clock yet no
        # timer ever fires, and a shutdown whose wake-up is missed would block forever.
        while code == 0 and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=SPIN_TIMEOUT_S)
            except Exception:
                # A SIGINT/SIGTERM can shut the context down between rclpy.ok() and the
                # executor building its wait set (RCLError: context not valid): a clean stop.
                if rclpy.ok():
                    raise
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.release()
        executor.shutdown(timeout_sec=1.0)
        node.destroy_node()
        rclpy.try_shutdown()
    _exit_even_if_a_model_call_hangs(code)
    return code


def _exit_even_if_a_model_call_hangs(code: int) -> None:
    # A model call stuck in a driver keeps a non-daemon worker thread, and Python would wait
    # for it forever at exit; a node asked to stop must stop.
    others = [t for t in threading.enumerate()
              if t is not threading.main_thread() and t.is_alive() and not t.daemon]
    if others:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
