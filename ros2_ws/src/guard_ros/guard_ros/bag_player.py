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

r"""Play a rosbag2 recording (sqlite3 or MCAP) into a live ROS 2 graph, in time order.

For machines without `ros2 bag` (the PyPI wheels have no rosbag2)::

    python -m guard_ros.bag_player episode/                 # a rosbag2 folder
    python -m guard_ros.bag_player episode.mcap --rate 2    # a bare .mcap or .db3 file
    python -m guard_ros.bag_player episode/ --clock --wait-for-subscribers 10 \\
        --ros-args -r /camera/image_raw:=/robot/camera/image_raw

Messages are read with rosbags and published as the serialized bytes they were recorded as
(rclpy publishers take bytes), so nothing is deserialized on the way. `--clock` also
publishes the bag's time on /clock, for nodes running with use_sim_time (as
`ros2 bag play --clock`). Reading needs no ROS install: `read_messages` imports only rosbags.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
import dataclasses
import importlib
from pathlib import Path
import sys
import time
from typing import Any

DEFAULT_CLOCK_HZ = 100.0


@dataclasses.dataclass(frozen=True)
class BagMessage:
    """One recorded message: where it went, its type, when, and its CDR bytes."""

    topic: str
    msgtype: str
    timestamp_ns: int
    data: bytes


def read_messages(path: str | Path, topics: Sequence[str] | None = None) -> Iterator[BagMessage]:
    """Yield the messages of a rosbag2 folder, .mcap or .db3 file in time order.

    Args:
        path: a rosbag2 folder (with metadata.yaml), or a bare .mcap / .db3 file.
        topics: only these topics (None: all).

    Yields:
        The messages, oldest first.

    Raises:
        FileNotFoundError: no such bag.
        rosbags.rosbag2.ReaderError: not a readable rosbag2.
    """
    from rosbags.rosbag2 import Reader

    with Reader(Path(path)) as reader:
        connections = [
            c for c in reader.connections if topics is None or c.topic in set(topics)]
        if not connections:
            return
        last = -1
        for connection, timestamp, data in reader.messages(connections=connections):
            # The storage plugins sort per file; files of a split bag follow each other.
            if timestamp < last:
                raise ValueError(
                    f'{path}: messages out of time order ({timestamp} after {last} ns)')
            last = timestamp
            yield BagMessage(connection.topic, connection.msgtype, timestamp, bytes(data))


def message_class(msgtype: str) -> Any:
    """Return the rclpy message class for a type name such as 'sensor_msgs/msg/Image'.

    Raises:
        ImportError: the package is not installed (or not built, for guard_interfaces).
    """
    try:
        package, kind, name = msgtype.split('/')
    except ValueError:
        raise ImportError(f'not a ROS 2 message type name: {msgtype!r}') from None
    module = importlib.import_module(f'{package}.{kind}')
    try:
        return getattr(module, name)
    except AttributeError:
        raise ImportError(f'{package}.{kind} has no {name}') from None


def play(
    node: Any,
    path: str | Path,
    *,
    rate: float = 1.0,
    topics: Sequence[str] | None = None,
    clock: bool = False,
    clock_hz: float = DEFAULT_CLOCK_HZ,
    wait_for_subscribers: float = 0.0,
    delay: float = 0.0,
    qos_depth: int = 100,
) -> int:
    """Publish a bag's messages through `node`, paced by their recorded timestamps.

    Args:
        node: an rclpy node (in any context) to publish from.
        path: the bag (see `read_messages`).
        rate: playback speed factor; 0 or less plays as fast as possible.
        topics: only these topics (None: all).
        clock: also publish the bag time on /clock (rosgraph_msgs/Clock).
        clock_hz: how often /clock ticks between messages.
        wait_for_subscribers: wait up to this many seconds until every topic has a
            subscriber, so the first messages are not published into the void.
        delay: seconds to wait after that, before the first message.
        qos_depth: history depth of the (reliable) publishers.

    Returns:
        The number of messages published.
    """
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from rosbags.rosbag2 import Reader

    qos = QoSProfile(depth=qos_depth, reliability=ReliabilityPolicy.RELIABLE)
    publishers: dict[str, Any] = {}
    skipped: set[str] = set()

    with Reader(Path(path)) as reader:
        for connection in reader.connections:
            if topics is not None and connection.topic not in topics:
                continue
            if connection.topic in publishers or connection.topic in skipped:
                continue
            try:
                cls = message_class(connection.msgtype)
            except ImportError as exc:
                node.get_logger().warning(f'skipping {connection.topic}: {exc}')
                skipped.add(connection.topic)
                continue
            publishers[connection.topic] = node.create_publisher(cls, connection.topic, qos)
    clock_pub = None
    if clock:
        from rosgraph_msgs.msg import Clock

        clock_pub = node.create_publisher(Clock, '/clock', QoSProfile(depth=1))

    if wait_for_subscribers > 0:
        deadline = time.monotonic() + wait_for_subscribers
        while time.monotonic() < deadline and any(
                p.get_subscription_count() == 0 for p in publishers.values()):
            time.sleep(0.02)
        lonely = [t for t, p in publishers.items() if p.get_subscription_count() == 0]
        if lonely:
            node.get_logger().warning(f"no subscriber for {', '.join(lonely)}; playing anyway")
    if delay > 0:
        time.sleep(delay)

    count = 0
    start_wall = time.monotonic()
    first_ns: int | None = None
    for message in read_messages(path, list(publishers)):
        if first_ns is None:
            first_ns = message.timestamp_ns
            _publish_clock(clock_pub, message.timestamp_ns)
        if rate > 0:
            due = start_wall + (message.timestamp_ns - first_ns) * 1e-9 / rate
            _wait_until(due, clock_pub, first_ns, start_wall, rate, clock_hz)
        _publish_clock(clock_pub, message.timestamp_ns)
        publishers[message.topic].publish(message.data)
        count += 1
    for pub in publishers.values():
        # Reliable subscribers get everything before the caller moves on (or the process ends).
        pub.wait_for_all_acked(_duration(2.0))
    return count


def _duration(seconds: float) -> Any:
    from rclpy.duration import Duration

    return Duration(nanoseconds=int(seconds * 1e9))


def _publish_clock(pub: Any, stamp_ns: int) -> None:
    if pub is None:
        return
    from rosgraph_msgs.msg import Clock

    msg = Clock()
    msg.clock.sec, msg.clock.nanosec = divmod(int(stamp_ns), 1_000_000_000)
    pub.publish(msg)


def _wait_until(
    due: float, clock_pub: Any, first_ns: int, start_wall: float, rate: float, clock_hz: float,
) -> None:
    while True:
        now = time.monotonic()
        if now >= due:
            return
        if clock_pub is None:
            time.sleep(due - now)
            return
        time.sleep(min(due - now, 1.0 / clock_hz))
        # Bag time advances between messages too, as a recorder's clock would.
        elapsed = min(time.monotonic(), due) - start_wall
        _publish_clock(clock_pub, first_ns + int(elapsed * rate * 1e9))


def _parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog='bag_player', description=__doc__.split('\n\n')[0],
        epilog='ROS arguments go after --ros-args (remapping, node name, domain).')
    parser.add_argument('bag', type=Path, help='rosbag2 folder, .mcap or .db3 file')
    parser.add_argument('--rate', type=float, default=1.0,
                        help='playback speed factor; 0 plays as fast as possible (default 1)')
    parser.add_argument('--topics', nargs='+', default=None, help='play only these topics')
    parser.add_argument('--clock', nargs='?', type=float, const=DEFAULT_CLOCK_HZ, default=None,
                        metavar='HZ', help='publish the bag time on /clock (default 100 Hz)')
    parser.add_argument('--wait-for-subscribers', type=float, default=0.0, metavar='SECONDS',
                        help='wait up to this long for a subscriber on every topic')
    parser.add_argument('--delay', type=float, default=0.0, metavar='SECONDS',
                        help='wait this long before the first message')
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Play a bag from the command line; exit 0 when every message went out, 2 on usage."""
    import rclpy
    from rclpy.utilities import remove_ros_args

    args_in = list(sys.argv if argv is None else ['bag_player', *argv])
    args = _parse(remove_ros_args(args_in)[1:])
    if not args.bag.exists():
        print(f'bag_player: {args.bag}: no such bag', file=sys.stderr)
        return 2
    rclpy.init(args=args_in)
    node = rclpy.create_node('bag_player')
    try:
        count = play(
            node, args.bag, rate=args.rate, topics=args.topics, clock=args.clock is not None,
            clock_hz=args.clock or DEFAULT_CLOCK_HZ,
            wait_for_subscribers=args.wait_for_subscribers, delay=args.delay)
        node.get_logger().info(f'played {count} messages from {args.bag}')
    except KeyboardInterrupt:
        return 130
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
