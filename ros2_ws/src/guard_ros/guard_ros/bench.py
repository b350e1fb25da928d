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

"""Load benchmark of guard_node: a camera stream and a proposal stream into a running node.

    python -m guard_ros.bench                                  # 60 s, 30 Hz 640x480, 5 Hz
    python -m guard_ros.bench --duration 10 --judge-delay-ms 100
    python -m guard_ros.bench --config guard.yaml --json out.json   # a real judge

It starts guard_node as its own process (by default with a constant judge that answers ALLOW
after --judge-delay-ms and keeps nothing, so the figures are the node's, not a model's),
publishes rgb8 frames and proposals at the given rates, and reports:

- camera callback p50/p99/max (ms, measured inside the node: the time a frame costs the
  camera thread) and camera delay p99 (header stamp to callback, same machine clock);
- decisions/s, proposals sent, decided, dropped (sent but never decided) and duplicated;
- end-to-end decision latency p50/p99 (proposal published to decision received);
- the node's resident memory at the start (after warm-up) and the end, and its samples.
Not a test: nothing asserts the targets; the figures go to stdout (and --json).
"""

import argparse
import json
import os
from pathlib import Path
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any
import uuid

from guard_ros.conversions import percentile

DEFAULT_ANSWER = 'ALLOW\nrisk: 0.0'
NODE_FLAG = '--run-node-with-constant-judge'


class ConstantJudge:
    """A judge backend that answers one text after a fixed delay and keeps nothing.

    The scripted test double records every request it gets (rendered images included), which
    a long run would measure as growth of the node's memory. This one is configured the same
    way (the first entry of model.scripted.responses) but stores nothing.
    """

    name = 'bench_constant'

    def __init__(self, text: str, delay_s: float) -> None:
        """Answer `text` after `delay_s` seconds."""
        self._text = text
        self._delay_s = delay_s
        self._closed = threading.Event()

    @classmethod
    def from_config(cls, config: Any) -> 'ConstantJudge':
        """Build it from model.scripted.responses[0] of a guard config."""
        step = config.model.scripted.responses[0]
        return cls(step.text, step.delay_ms / 1000.0)

    @property
    def model_id(self) -> str:
        """Return the name decisions carry as their model."""
        return 'bench-constant'

    def judge(self, request: Any) -> Any:
        """Wait the delay (as a model would take), then answer."""
        from guard.backends import JudgeOutput

        self._closed.wait(self._delay_s)
        return JudgeOutput(text=self._text, n_tokens=len(self._text.split()))

    def close(self) -> None:
        """Release a pending wait."""
        self._closed.set()


def _run_node(ros_args: list[str]) -> int:
    # guard_node with the constant judge registered: backends are looked up by name in the
    # node's own process, so the registration has to happen there.
    from guard.backends import register_backend
    from guard_ros.guard_node import main as node_main

    register_backend(ConstantJudge.name, f'{__name__}:ConstantJudge')
    return node_main(['guard_bench_node', *ros_args])


def _rss_mib(pid: int) -> float | None:
    # /proc keeps the benchmark free of extra dependencies (Linux, where robots run).
    try:
        for line in Path(f'/proc/{pid}/status').read_text().splitlines():
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _write_node_files(workdir: Path, args: argparse.Namespace) -> Path:
    import yaml

    params: dict[str, Any] = {'diagnostics_period_s': 1.0, 'frame_buffer': 4}
    if args.config:
        params['config'] = str(Path(args.config).resolve())
    else:
        config = {
            'model': {'backend': ConstantJudge.name, 'scripted': {'responses': [
                {'text': DEFAULT_ANSWER, 'delay_ms': args.judge_delay_ms}]}},
            'policy': {'deadline_ms': 2000},
            'audit': {'path': str(workdir / 'audit.jsonl')},
        }
        (workdir / 'guard.yaml').write_text(yaml.safe_dump(config))
        params['config'] = str(workdir / 'guard.yaml')
    if args.model:
        params['model'] = args.model
    if args.backend:
        params['backend'] = args.backend
    path = workdir / 'params.yaml'
    path.write_text(yaml.safe_dump({'/**': {'ros__parameters': params}}))
    return path


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start the node, drive it for args.duration seconds, return the figures."""
    from diagnostic_msgs.msg import DiagnosticArray
    from guard_interfaces.msg import ActionProposal, Decision
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import qos_profile_sensor_data, QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import Image

    workdir = Path(tempfile.mkdtemp(prefix='guard-bench-'))
    params = _write_node_files(workdir, args)
    ns = f'/bench_{uuid.uuid4().hex[:8]}'
    env = {**os.environ, 'PYTHONUNBUFFERED': '1'}
    env.setdefault('XDG_STATE_HOME', str(workdir / 'state'))
    log = (workdir / 'node.log').open('w')
    node_cmd = ['-m', 'guard_ros.guard_node'] if args.config else [
        '-m', 'guard_ros.bench', NODE_FLAG]
    proc = subprocess.Popen(
        [sys.executable, *node_cmd, '--ros-args', '--params-file', str(params),
         '-r', f'__ns:={ns}'], env=env, stdout=log, stderr=subprocess.STDOUT)

    rclpy.init()
    node = rclpy.create_node('guard_bench')
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    reliable = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
    lock = threading.Lock()
    sent: dict[str, float] = {}
    decided: dict[str, list[float]] = {}
    diagnostics: list[dict[str, str]] = []

    def on_decision(msg: Any) -> None:
        with lock:
            decided.setdefault(msg.proposal_id, []).append(time.monotonic())

    def on_diagnostics(msg: Any) -> None:
        for status in msg.status:
            if status.name == 'guard_node: guard':
                diagnostics.append({kv.key: kv.value for kv in status.values})

    node.create_subscription(Decision, f'{ns}/guard/decisions', on_decision, reliable)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, reliable)
    camera = node.create_publisher(Image, f'{ns}/camera/image_raw', qos_profile_sensor_data)
    proposals = node.create_publisher(ActionProposal, f'{ns}/guard/proposals', reliable)

    frame = Image(height=args.height, width=args.width, encoding='rgb8', step=args.width * 3)
    rng = np.random.default_rng(0)
    frame.data = rng.integers(0, 255, (args.height, args.width, 3), np.uint8).tobytes()
    counts = {'frames': 0}
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        deadline = time.monotonic() + args.startup_timeout
        while proposals.get_subscription_count() == 0 or camera.get_subscription_count() == 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f'guard_node did not come up; see {workdir / "node.log"}')
            time.sleep(0.05)

        def tick_camera() -> None:
            frame.header.stamp = node.get_clock().now().to_msg()
            camera.publish(frame)
            with lock:
                counts['frames'] += 1

        def tick_proposal() -> None:
            pid = uuid.uuid4().hex
            with lock:
                sent[pid] = time.monotonic()
            proposals.publish(ActionProposal(
                id=pid, name='pick', description='pick up the cup from the table'))

        # Warm-up at full load: the first frames and proposals pay for lazy imports and
        # allocator growth in the node, which is not what the run measures.
        cam_timer = node.create_timer(1.0 / args.camera_hz, tick_camera)
        prop_timer = node.create_timer(1.0 / args.proposal_hz, tick_proposal)
        time.sleep(args.warmup)
        with lock:
            sent.clear()
            decided.clear()
            counts['frames'] = 0
        rss_start = _rss_mib(proc.pid)
        start = time.monotonic()
        rss_samples = []
        while (left := args.duration - (time.monotonic() - start)) > 0:
            time.sleep(min(5.0, left))
            rss_samples.append(round(_rss_mib(proc.pid) or 0.0, 1))
        node.destroy_timer(prop_timer)
        elapsed = time.monotonic() - start
        drain_until = time.monotonic() + args.drain
        while time.monotonic() < drain_until:
            with lock:
                if all(pid in decided for pid in sent):
                    break
            time.sleep(0.05)
        node.destroy_timer(cam_timer)
        rss_end = _rss_mib(proc.pid)
        # One more diagnostics period so the node's figures cover the whole run.
        seen = len(diagnostics)
        wait_until = time.monotonic() + 3.0
        while len(diagnostics) == seen and time.monotonic() < wait_until:
            time.sleep(0.05)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    with lock:
        latencies = [(times[0] - sent[pid]) * 1000.0 for pid, times in decided.items()
                     if pid in sent]
        n_decided = sum(1 for pid in sent if pid in decided)
        duplicated = sum(len(times) - 1 for pid, times in decided.items() if pid in sent)
    last = diagnostics[-1] if diagnostics else {}

    def figure(key: str) -> float | None:
        return float(last[key]) if last.get(key) else None

    return {
        'duration_s': round(elapsed, 1),
        'camera': {'hz': args.camera_hz, 'size': f'{args.width}x{args.height} rgb8',
                   'frames_sent': counts['frames'],
                   'callback_p50_ms': figure('camera_callback_p50_ms'),
                   'callback_p99_ms': figure('camera_callback_p99_ms'),
                   'callback_max_ms': figure('camera_callback_max_ms'),
                   'delay_p99_ms': figure('camera_delay_p99_ms')},
        'proposals': {'hz': args.proposal_hz, 'sent': len(sent), 'decided': n_decided,
                      'dropped': len(sent) - n_decided, 'duplicated': duplicated},
        'decisions_per_s': round(n_decided / elapsed, 2) if elapsed else None,
        'decision_latency_ms': {'p50': _round(percentile(latencies, 50)),
                                'p99': _round(percentile(latencies, 99))},
        'judge': args.config or f'constant, {args.judge_delay_ms:g} ms per answer',
        'node_rss_mib': {'start': _round(rss_start), 'end': _round(rss_end),
                         'samples_every_5s': rss_samples},
        'node_log': str(workdir / 'node.log'),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures as JSON."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [NODE_FLAG]:
        return _run_node(argv[1:])
    parser = argparse.ArgumentParser(prog='guard_bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=60.0, help='seconds (default 60)')
    parser.add_argument('--camera-hz', type=float, default=30.0)
    parser.add_argument('--proposal-hz', type=float, default=5.0)
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--judge-delay-ms', type=float, default=50.0,
                        help='scripted judge: answer after this long (default 50)')
    parser.add_argument('--config', help='guard YAML config for a real judge')
    parser.add_argument('--model', help='override model.id')
    parser.add_argument('--backend', help='override model.backend')
    parser.add_argument('--warmup', type=float, default=5.0, help='seconds before measuring')
    parser.add_argument('--drain', type=float, default=10.0,
                        help='seconds to wait for the last decisions')
    parser.add_argument('--startup-timeout', type=float, default=120.0)
    parser.add_argument('--json', type=Path, help='also write the figures here')
    args = parser.parse_args(argv)
    figures = run(args)
    text = json.dumps(figures, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + '\n')
    return 0 if figures['proposals']['dropped'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
