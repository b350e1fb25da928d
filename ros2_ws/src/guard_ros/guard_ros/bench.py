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

"""Load benchmark of guard_node: camera, cmd_vel and bursts of proposals into a running node.

    python -m guard_ros.bench                       # 30 s: 30 Hz 640x480 + 20 Hz cmd_vel + bursts
    python -m guard_ros.bench --duration 10 --judge-delay-ms 100
    python -m guard_ros.bench --burst 0 --proposal-hz 5         # a steady stream instead
    python -m guard_ros.bench --config guard.yaml --json out.json   # a real judge

The default scenario is the one of the node's load target: a 30 Hz 640x480 rgb8 camera, 20 Hz
`cmd_vel_in` through the gate, and every `--burst-every` seconds a burst of `--burst` (15)
proposals published at once to an instant judge (the scripted backend answering ALLOW after
`--judge-delay-ms`, default 0). It starts guard_node as its own process (or, with
`--judge constant`, with a judge that keeps nothing, for long memory runs), and reports:

- decision delay p50/p95/p99/max (proposal published to decision received), the same up to
  the node publishing the decision (its header stamp; without the way back), the judge's own
  time (`Decision.latency_ms`) p50/max beside it, and the decisions whose status was
  `timeout` (or anything but `ok`);
- the node's CPU (user + system time over the measured window, % of one core) and its
  resident memory at the start (after warm-up) and the end;
- camera callback p50/p99/max (ms, measured inside the node) and camera delay p99;
- proposals sent, decided, dropped (sent but never decided) and duplicated; cmd_vel relayed.
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

    # Configured as the scripted judge is (model.scripted), so its config class is that one.
    register_backend(ConstantJudge.name, f'{__name__}:ConstantJudge',
                     'guard.backends.scripted:ScriptedModelConfig')
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


def _cpu_seconds(pid: int) -> float | None:
    # utime + stime of the whole process (all threads), fields 14 and 15 of /proc/PID/stat;
    # the command name (field 2) may hold spaces, so count from its closing parenthesis.
    try:
        fields = Path(f'/proc/{pid}/stat').read_text().rpartition(')')[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf('SC_CLK_TCK')


def _write_node_files(workdir: Path, args: argparse.Namespace) -> Path:
    import yaml

    params: dict[str, Any] = {'diagnostics_period_s': 1.0, 'frame_buffer': 4,
                              'gate_cmd_vel': args.cmd_vel_hz > 0}
    if args.config:
        params['config'] = str(Path(args.config).resolve())
    else:
        backend = 'scripted' if args.judge == 'scripted' else ConstantJudge.name
        config = {
            'model': {'backend': backend, 'scripted': {'responses': [
                {'text': DEFAULT_ANSWER, 'delay_ms': args.judge_delay_ms}]}},
            'policy': {'deadline_ms': args.deadline_ms},
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
    from geometry_msgs.msg import Twist
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
    constant = not args.config and args.judge == 'constant'
    node_cmd = ['-m', 'guard_ros.bench', NODE_FLAG] if constant else [
        '-m', 'guard_ros.guard_node']
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
    sent_wall: dict[str, float] = {}
    # proposal id -> (time received, status, judge latency in ms, header stamp in s), one per
    # decision received; the header stamp is the node's clock when it published the decision.
    decided: dict[str, list[tuple[float, str, float, float]]] = {}
    diagnostics: list[dict[str, str]] = []
    counts = {'frames': 0, 'cmd_vel_in': 0, 'cmd_vel_out': 0, 'cmd_vel_nonzero': 0}

    def on_decision(msg: Any) -> None:
        with lock:
            decided.setdefault(msg.proposal_id, []).append(
                (time.monotonic(), msg.status, msg.latency_ms,
                 msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9))

    def on_diagnostics(msg: Any) -> None:
        for status in msg.status:
            if status.name == 'guard_node: guard':
                diagnostics.append({kv.key: kv.value for kv in status.values})

    def on_cmd_vel(msg: Any) -> None:
        with lock:
            counts['cmd_vel_out'] += 1
            counts['cmd_vel_nonzero'] += msg.linear.x != 0.0

    node.create_subscription(Decision, f'{ns}/guard/decisions', on_decision, reliable)
    node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics, reliable)
    node.create_subscription(Twist, f'{ns}/cmd_vel', on_cmd_vel, 10)
    camera = node.create_publisher(Image, f'{ns}/camera/image_raw', qos_profile_sensor_data)
    proposals = node.create_publisher(ActionProposal, f'{ns}/guard/proposals', reliable)
    cmd_vel = node.create_publisher(Twist, f'{ns}/cmd_vel_in', 10)

    frame = Image(height=args.height, width=args.width, encoding='rgb8', step=args.width * 3)
    rng = np.random.default_rng(0)
    frame.data = rng.integers(0, 255, (args.height, args.width, 3), np.uint8).tobytes()
    spin = threading.Thread(target=executor.spin, daemon=True)
    spin.start()
    timers = []
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

        def tick_cmd_vel() -> None:
            twist = Twist()
            twist.linear.x = 0.2
            cmd_vel.publish(twist)
            with lock:
                counts['cmd_vel_in'] += 1

        def propose(n: int) -> None:
            for _ in range(n):
                pid = uuid.uuid4().hex
                with lock:
                    sent[pid] = time.monotonic()
                    sent_wall[pid] = time.time()
                proposals.publish(ActionProposal(
                    id=pid, name='pick', description='pick up the cup from the table'))

        # Warm-up at full load: the first frames and proposals pay for lazy imports and
        # allocator growth in the node, which is not what the run measures.
        timers.append(node.create_timer(1.0 / args.camera_hz, tick_camera))
        if args.cmd_vel_hz > 0:
            timers.append(node.create_timer(1.0 / args.cmd_vel_hz, tick_cmd_vel))
        if args.proposal_hz > 0:
            timers.append(node.create_timer(1.0 / args.proposal_hz, lambda: propose(1)))
        if args.burst > 0:
            timers.append(node.create_timer(args.burst_every, lambda: propose(args.burst)))
        time.sleep(args.warmup)
        with lock:
            sent.clear()
            sent_wall.clear()
            decided.clear()
            for key in counts:
                counts[key] = 0
        rss_start = _rss_mib(proc.pid)
        cpu_start = _cpu_seconds(proc.pid)
        start = time.monotonic()
        rss_samples = []
        while (left := args.duration - (time.monotonic() - start)) > 0:
            time.sleep(min(5.0, left))
            rss_samples.append(round(_rss_mib(proc.pid) or 0.0, 1))
        cpu_end = _cpu_seconds(proc.pid)
        elapsed = time.monotonic() - start
        for timer in timers[2 if args.cmd_vel_hz > 0 else 1:]:
            node.destroy_timer(timer)
        drain_until = time.monotonic() + args.drain
        while time.monotonic() < drain_until:
            with lock:
                if all(pid in decided for pid in sent):
                    break
            time.sleep(0.05)
        for timer in timers:
            node.destroy_timer(timer)
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
        firsts = {pid: times[0] for pid, times in decided.items() if pid in sent}
        delays = [(got - sent[pid]) * 1000.0 for pid, (got, *_) in firsts.items()]
        # Published by the node, same machine clock: the delay without the way back.
        at_node = [(stamp - sent_wall[pid]) * 1000.0
                   for pid, (*_, stamp) in firsts.items()]
        judge_ms = [latency for _, _, latency, _ in firsts.values()]
        statuses: dict[str, int] = {}
        for _, status, _, _ in firsts.values():
            statuses[status] = statuses.get(status, 0) + 1
        duplicated = sum(len(times) - 1 for pid, times in decided.items() if pid in sent)
    last = diagnostics[-1] if diagnostics else {}
    cpu = None if cpu_start is None or cpu_end is None else (cpu_end - cpu_start) / elapsed

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
        'cmd_vel': {'hz': args.cmd_vel_hz, 'sent': counts['cmd_vel_in'],
                    'out': counts['cmd_vel_out'], 'relayed_nonzero': counts['cmd_vel_nonzero']},
        'proposals': {'hz': args.proposal_hz, 'burst': args.burst,
                      'burst_every_s': args.burst_every, 'sent': len(sent),
                      'decided': len(firsts), 'dropped': len(sent) - len(firsts),
                      'duplicated': duplicated},
        'statuses': statuses,
        'timeouts': statuses.get('timeout', 0),
        'decisions_per_s': round(len(firsts) / elapsed, 2) if elapsed else None,
        'decision_delay_ms': {q: _round(percentile(delays, n)) for q, n in
                              (('p50', 50), ('p95', 95), ('p99', 99), ('max', 100))},
        'decision_published_ms': {q: _round(percentile(at_node, n)) for q, n in
                                  (('p50', 50), ('p95', 95), ('max', 100))},
        'judge_latency_ms': {'p50': _round(percentile(judge_ms, 50)),
                             'max': _round(max(judge_ms) if judge_ms else None)},
        'node_cpu_percent': _round(None if cpu is None else 100.0 * cpu),
        'judge': args.config or f'{args.judge}, {args.judge_delay_ms:g} ms per answer',
        'node_rss_mib': {'start': _round(rss_start), 'end': _round(rss_end),
                         'samples_every_5s': rss_samples},
        'load_average': os.getloadavg()[0],
        'node_log': str(workdir / 'node.log'),
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def summary(figures: dict[str, Any]) -> str:
    """Return the headline figures as a short Markdown table."""
    delay = figures['decision_delay_ms']
    judge = figures['judge_latency_ms']
    p = figures['proposals']
    rows = [
        ('decision delay p50 / p95 / max',
         f"{delay['p50']} / {delay['p95']} / {delay['max']} ms"),
        ('decision published by the node p50 / p95 / max',
         '{p50} / {p95} / {max} ms'.format(**figures['decision_published_ms'])),
        ('judge time p50 / max', f"{judge['p50']} / {judge['max']} ms"),
        ('node CPU', f"{figures['node_cpu_percent']} % of one core"),
        ('timeouts', str(figures['timeouts'])),
        ('proposals sent / decided / dropped', f"{p['sent']} / {p['decided']} / {p['dropped']}"),
        ('camera callback p99', f"{figures['camera']['callback_p99_ms']} ms"),
        ('load average (1 min, at the end)', f"{figures['load_average']:.2f}"),
    ]
    return '\n'.join(['| figure | value |', '|---|---|', *(f'| {k} | {v} |' for k, v in rows)])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print its figures as JSON, then the headline table."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == [NODE_FLAG]:
        return _run_node(argv[1:])
    parser = argparse.ArgumentParser(prog='guard_bench', description=__doc__.split('\n\n')[0])
    parser.add_argument('--duration', type=float, default=30.0, help='seconds (default 30)')
    parser.add_argument('--camera-hz', type=float, default=30.0)
    parser.add_argument('--cmd-vel-hz', type=float, default=20.0,
                        help='cmd_vel_in rate through the gate; 0 turns the gate off')
    parser.add_argument('--burst', type=int, default=15,
                        help='proposals published at once every --burst-every s (0: none)')
    parser.add_argument('--burst-every', type=float, default=5.0)
    parser.add_argument('--proposal-hz', type=float, default=0.0,
                        help='a steady proposal stream besides the bursts (0: none)')
    parser.add_argument('--width', type=int, default=640)
    parser.add_argument('--height', type=int, default=480)
    parser.add_argument('--judge', choices=('scripted', 'constant'), default='scripted',
                        help='scripted backend, or a constant judge that keeps nothing')
    parser.add_argument('--judge-delay-ms', type=float, default=0.0,
                        help='the judge answers after this long (default 0: instant)')
    parser.add_argument('--deadline-ms', type=float, default=2000.0,
                        help='policy.deadline_ms of the bench config (default 2000)')
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
    print(summary(figures))
    if args.json:
        args.json.write_text(text + '\n')
    return 0 if figures['proposals']['dropped'] == 0 else 1


if __name__ == '__main__':
    sys.exit(main())
