"""Shared helpers of the bench tests: the CLI launcher, backends with test behaviour, and a
fake OpenAI-compatible server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from guard.backends.base import JudgeOutput, JudgeRequest
from guard.bench.oracle import OracleBackend
from guard.core import Guard
from guard.errors import BackendError

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# Until `bench` is registered in guard/cli/main.py, run it through its own parser: the same
# add_arguments/run pair and the same exit codes main() gives.
_LAUNCHER = """
import argparse, sys
from guard.cli import bench
from guard.errors import GuardError, UsageError
p = argparse.ArgumentParser(prog="guard bench")
bench.add_arguments(p)
args = p.parse_args(sys.argv[1:])
try:
    sys.exit(bench.run(args))
except UsageError as exc:
    print(f"guard bench: error: {exc}", file=sys.stderr)
    sys.exit(2)
except GuardError as exc:
    print(f"guard bench: {exc}", file=sys.stderr)
    sys.exit(1)
except KeyboardInterrupt:
    sys.exit(130)
"""


def bench_argv(*args: object) -> list[str]:
    from guard.cli.main import COMMANDS

    if "bench" in COMMANDS:
        return [sys.executable, "-m", "guard.cli.main", "bench", *map(str, args)]
    return [sys.executable, "-c", _LAUNCHER, *map(str, args)]


def guard_bench(*args: object, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(bench_argv(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env={**os.environ})


def guard_cli(*args: object, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "guard.cli.main", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout, cwd=ROOT)


class DownAfterOracle(OracleBackend):
    """The oracle for its first `after` calls; then a judge that went down: every call fails
    as an unreachable server does."""

    def __init__(self, items, after: int, **kw):
        super().__init__(items, **kw)
        self.after, self.calls = after, 0

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        with self._lock:
            self.calls += 1
            n = self.calls
        if n > self.after:
            raise BackendError("connection refused")
        return super().judge(request)


class InterruptingGuard(Guard):
    """A guard whose call number `after` + 1 raises KeyboardInterrupt in the caller's thread,
    as a Ctrl-C arriving while a check runs."""

    def __init__(self, config, *, backend, after: int):
        super().__init__(config, backend=backend)
        self.after, self.calls = after, 0
        self._calls_lock = threading.Lock()

    def check(self, frames, proposal, **kw):
        with self._calls_lock:
            self.calls += 1
            n = self.calls
        if n > self.after:
            raise KeyboardInterrupt
        return super().check(frames, proposal, **kw)


class SlowOracle(OracleBackend):
    """The oracle with a delay per call; records the most calls ever running at once."""

    def __init__(self, items, delay_s: float, **kw):
        super().__init__(items, **kw)
        self.delay_s, self.running, self.max_running = delay_s, 0, 0

    def judge(self, request: JudgeRequest) -> JudgeOutput:
        with self._lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
        try:
            time.sleep(self.delay_s)
            return super().judge(request)
        finally:
            with self._lock:
                self.running -= 1


def free_port() -> int:
    """A local TCP port nothing listens on (bound and released: a closed port)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class FakeOpenAIServer:
    """An OpenAI-compatible chat endpoint answering every request with `reply`."""

    def __init__(self, reply: str, port: int = 0):
        self.reply, self.requests = reply, []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                raw = json.dumps({"choices": [{"message": {"content": outer.reply}}],
                                  "usage": {"completion_tokens": 9}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
