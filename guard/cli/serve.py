"""`guard serve`: hold the judge model in one process and answer many clients over HTTP.

    guard serve --model guard/models/hazardworld-small --port 8731
    guard serve --config robot.yaml --host 0.0.0.0 --token-file /etc/guard/token
    curl -s localhost:8731/healthz          # 200 once the model is loaded and warmed up
    guard check --server http://localhost:8731 --image frame.jpg --action "turn on the stove"

`POST /v1/check` takes `{"action", "tool"?, "arguments"?, "images": [base64 PNG/JPEG]}` and
returns the decision JSON `guard check` prints (API and status codes: `guard.serve.app`).
Requests waiting together are judged in one batch; a full queue is an immediate audited
veto (HTTP 503, status error, "overloaded"). The bearer token comes from --token-file or the
GUARD_SERVE_TOKEN environment variable; without one, anyone who can reach the port may ask.

Exit 0 after Ctrl-C, 1 when the model does not load or the port cannot be bound, 2 for a
usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from guard.cli.check import add_judge_arguments

TOKEN_ENV = "GUARD_SERVE_TOKEN"
DEFAULT_PORT = 8731


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_judge_arguments(p)
    p.add_argument("--host", default="127.0.0.1", metavar="H",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 for every "
                   "interface: set a token then)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, metavar="N",
                   help=f"port to listen on (default: {DEFAULT_PORT}; 0 picks a free one)")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help=f"file holding the bearer token clients must send (default: the "
                   f"{TOKEN_ENV} environment variable; neither: no token)")
    p.add_argument("--queue-size", type=int, default=64, metavar="N",
                   help="requests that may wait for the model; more get an immediate "
                   "'overloaded' veto (default: 64)")
    p.add_argument("--max-batch", type=int, default=16, metavar="N",
                   help="most waiting requests judged in one batch (default: 16)")
    p.add_argument("--max-body-mb", type=float, default=32.0, metavar="MB",
                   help="largest request body accepted (default: 32)")


def read_token(path: str | None) -> str | None:
    """The bearer token from `path`, else from the environment, else None.

    Raises:
        UsageError: The file is missing, unreadable or empty.
    """
    from guard.errors import UsageError

    if path is None:
        token = os.environ.get(TOKEN_ENV, "").strip()
        return token or None
    try:
        token = Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--token-file {path}: cannot read it ({exc})") from None
    if not token:
        raise UsageError(f"--token-file {path}: the file is empty")
    return token


def run(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guard._deps import require
    from guard.cli.check import load_judge_config
    from guard.errors import ConfigError, UsageError

    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: must be 0..65535")
    if args.max_body_mb <= 0:
        raise UsageError(f"--max-body-mb {args.max_body_mb:g}: must be positive")
    token = read_token(args.token_file)
    try:
        config = load_judge_config(args)
    except ConfigError as exc:
        raise UsageError(str(exc)) from None
    uvicorn = require("uvicorn", "guard serve")
    require("starlette", "guard serve")
    from guard.serve import ServeOptions, create_app

    try:
        options = ServeOptions(queue_size=args.queue_size, max_batch=args.max_batch,
                               max_body_bytes=int(args.max_body_mb * 1024 * 1024),
                               token=token)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    failures: list[str] = []

    def load_failed(message: str) -> None:
        failures.append(message)
        server.should_exit = True

    app = create_app(config, options, on_load_failure=load_failed)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port,
                                           log_level="warning", lifespan="on"))
    print(f"guard serve: loading {config.model.id or config.model.backend}; listening on "
          f"http://{args.host}:{args.port} (GET /healthz is 200 once ready)", file=sys.stderr)
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown
        pass
    except SystemExit as exc:  # uvicorn exits when it cannot bind the port
        if exc.code not in (0, None):
            print(f"guard serve: could not serve on {args.host}:{args.port}", file=sys.stderr)
            return 1
    if failures:
        print(f"guard serve: {failures[0]}", file=sys.stderr)
        return 1
    return 0
