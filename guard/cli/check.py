"""`guard check`: judge one action against one camera image and print the decision as JSON.

    guard check --image examples/kitchen_towel_on_stove.jpg --action "turn on the stove" \
        --model /tmp/tiny [--config configs/default.yaml] [--deadline-ms 2000]

Exit 0 for allow/annotate, 3 for veto (any status), 2 for a usage error. An image that
cannot be judged, a config that does not validate or a model that does not load still prints
a veto decision (fail closed), with one line on stderr saying why.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

if TYPE_CHECKING:
    from guard.config import GuardConfig
    from guard.core import Guard
    from guard.types import Decision


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", required=True, action="append", metavar="PATH",
                   help="camera image (JPEG/PNG/...); repeat for several frames, newest last")
    p.add_argument("--action", required=True, metavar="TEXT",
                   help="what the robot is about to do, e.g. 'turn on the stove'; "
                   "'-' reads it from standard input")
    p.add_argument("--tool", default="action", metavar="NAME",
                   help="tool/action name the proposal carries (default: action)")
    p.add_argument("--arguments", default=None, metavar="JSON",
                   help="tool arguments as a JSON object")
    add_judge_arguments(p)
    p.add_argument("--deadline-ms", type=float, default=None, metavar="N",
                   help="answer within N ms or veto with status=timeout (overrides the config)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="ask a running 'guard serve' at URL instead of loading a model here "
                   "(its model, policy and audit log decide; an unreachable or late server is "
                   "a veto, audited here); the bearer token comes from --token-file or "
                   "GUARD_SERVE_TOKEN")
    p.add_argument("--token-file", default=None, metavar="PATH",
                   help="file holding the bearer token for --server")
    p.add_argument("--server-timeout-s", type=float, default=30.0, metavar="S",
                   help="give up on --server after S seconds: a timeout veto (default: 30)")


def add_judge_arguments(p: argparse.ArgumentParser, *, audit: bool = True) -> None:
    """The flags every judging subcommand shares (check, replay, bench, faults; `audit=False`
    for a command that keeps its own logs)."""
    p.add_argument("--config", default=None, metavar="YAML",
                   help="guard config (default: built-in defaults; see configs/default.yaml)")
    p.add_argument("--model", default=None, metavar="ID_OR_PATH",
                   help="judge model: hub id or local folder (overrides model.id)")
    p.add_argument("--backend", default=None, metavar="NAME",
                   help="judge backend: transformers, onnx, openai, scripted or a registered one "
                   "(overrides model.backend; guard bench also takes oracle)")
    p.add_argument("--adapter", default=None, metavar="PATH",
                   help="PEFT adapter folder for the transformers backend")
    p.add_argument("--template", default=None, metavar="NAME_OR_YAML",
                   help="prompt template (overrides prompt.template; default: the one the "
                   "model folder was trained with, else consequence_v1)")
    if audit:
        p.add_argument("--audit", default=None, metavar="PATH",
                       help="audit log file (overrides audit.path)")


def load_judge_config(args: argparse.Namespace, **extra: object) -> GuardConfig:
    """Config file + the shared flag overrides.

    Raises:
        ConfigError: The config file does not validate.
        UsageError: A flag's file is missing, or the config cannot take a flag's value.
    """
    from guard.config import load_config
    from guard.errors import ConfigError, UsageError

    if args.config is not None and not Path(args.config).is_file():
        raise UsageError(f"--config {shown(args.config)}: file not found")
    config = load_config(args.config)
    overrides = {
        "model.id": args.model,
        "model.backend": args.backend,
        "model.adapter": args.adapter,
        "prompt.template": args.template,
        "audit.path": getattr(args, "audit", None),
        **extra,
    }
    # A flag left out (None) keeps the config's value.
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return config.with_overrides("command-line flags", **given)
    except ConfigError as exc:
        # A flag the config cannot take (an unknown --backend, --adapter for a backend
        # without adapters) is a usage error, exit 2, not a config file that does not validate.
        raise UsageError(str(exc)) from None


_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def shown(text: str) -> str:
    """`text` (a path, an error naming what a user gave) for one line of a terminal: control
    characters, line breaks and escape sequences written as escapes, lone surrogates too."""
    safe = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return _UNPRINTABLE.sub(lambda m: repr(m.group())[1:-1], safe)


def first_line(exc: BaseException) -> str:
    """An exception as one line for stderr (its first line, else its type)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_guard(config: GuardConfig) -> Guard:
    """A Guard for `config`; an audit log or a model that does not open is one GuardError line
    naming which, a usage mistake stays a UsageError."""
    from guard.core import Guard
    from guard.errors import AuditError, GuardError, UsageError

    try:
        return Guard(config)
    except UsageError:
        raise
    except AuditError as exc:  # the log is opened first: a torn tail it could not repair
        path = config.audit.path
        reason = first_line(exc).removeprefix(f"{Path(path).expanduser()}: ")
        raise GuardError(f"audit log {path} did not open: {reason}") from None
    except Exception as exc:  # missing extra, bad weights, unknown hub id: nothing can be judged
        raise GuardError(f"model did not load: {first_line(exc)}") from None


def _emit(decision: Decision) -> int:
    from guard.types import Status, Verdict

    print(decision.model_dump_json())
    if decision.status is not Status.OK:
        print(f"guard check: {decision.status.value}: {shown(str(decision.error))}",
              file=sys.stderr)
    return 3 if decision.verdict is Verdict.VETO else 0


def _standalone_veto(status: str, error: str, audit_path: str | None) -> int:
    """Print the core's audited veto for a check that failed before a Guard existed: a config
    that does not validate, a model that does not load."""
    from guard.config import AuditConfig
    from guard.core import unjudged
    from guard.types import Status

    audit = AuditConfig(path=audit_path) if audit_path else None
    return _emit(unjudged(Status(status), error, audit=audit))


#: The most bytes `--action -` reads from standard input: an action longer than this is over
#: any sensible policy.max_action_chars, and an endless stdin (/dev/zero) must end somewhere.
MAX_STDIN_BYTES = 4 * 1024 * 1024


def _read_action(stream: BinaryIO) -> str:
    """The action text on standard input; bytes that are not UTF-8 are kept as escapes (judged
    and audited as text).

    Raises:
        UsageError: more than MAX_STDIN_BYTES.
    """
    from guard.errors import UsageError

    data = stream.read(MAX_STDIN_BYTES + 1)
    if len(data) > MAX_STDIN_BYTES:
        raise UsageError(f"--action -: standard input holds more than {MAX_STDIN_BYTES} bytes")
    return data.decode("utf-8", "backslashreplace")


def run(args: argparse.Namespace) -> int:
    # stdout is the decision and stderr one line per problem: no model-loading progress bars.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    from guard.errors import ConfigError, GuardError, InvalidInputError, UsageError
    from guard.wire import loads_json

    for path in args.image:
        if not Path(path).exists():
            raise UsageError(f"--image {shown(path)}: file not found")
        if not Path(path).is_file():
            raise UsageError(f"--image {shown(path)}: not a regular file")
    if args.action == "-":
        args.action = _read_action(sys.stdin.buffer)
    arguments: object = {}
    unreadable: str | None = None
    if args.arguments is not None:
        try:
            arguments = loads_json(args.arguments)
        except RecursionError:  # valid JSON, hostile depth: judged as invalid input
            arguments, unreadable = {}, "--arguments: nested too deep to read"
        except ValueError as exc:
            raise UsageError(f"--arguments: not valid JSON ({exc})") from None
        if not isinstance(arguments, dict):
            raise UsageError("--arguments: must be a JSON object")
    if args.server is not None:
        return _run_remote(args, arguments, unreadable)
    try:
        config = load_judge_config(args, **{"policy.deadline_ms": args.deadline_ms})
    except ConfigError as exc:
        if str(exc).startswith("--config"):
            raise
        return _standalone_veto("invalid_input", f"config: {exc}", args.audit)

    from guard.types import Frame, Status

    try:
        guard = open_guard(config)
    except UsageError:
        raise
    except GuardError as exc:  # a model that does not load is still a (printed, audited) veto
        return _standalone_veto("error", str(exc), config.audit.path)
    with guard:
        # A mapping, validated by the guard: a bad proposal is an audited invalid_input veto.
        proposal = {"name": args.tool, "description": args.action, "arguments": arguments}
        if unreadable is not None:
            return _emit(guard.reject({**proposal, "arguments": {}}, Status.INVALID_INPUT,
                                      unreadable))
        frames = []
        try:
            for path in args.image:
                frames.append(Frame.from_path(
                    path,
                    max_input_pixels=config.image.max_input_pixels,
                    max_file_bytes=config.image.max_file_bytes,
                ))
        except InvalidInputError as exc:
            return _emit(guard.reject(proposal, Status.INVALID_INPUT, str(exc)))
        return _emit(guard.check(frames, proposal))


def _run_remote(args: argparse.Namespace, arguments: object, unreadable: str | None) -> int:
    """`guard check --server URL`: the server judges; a request that brings no decision back
    is this side's audited veto (timeout or error), never an allow."""
    import base64

    from guard.cli.serve import read_token
    from guard.config import GuardConfig, load_config
    from guard.core import unjudged
    from guard.errors import UsageError
    from guard.serve.client import RemoteFailure, check_url, post_check
    from guard.types import Status

    for flag in ("model", "backend", "adapter", "template"):
        if getattr(args, flag) is not None:
            raise UsageError(f"--{flag}: not used with --server (the server's model judges)")
    try:
        check_url(args.server)
    except ValueError as exc:
        raise UsageError(f"--server: {exc}") from None
    if not args.server_timeout_s > 0:
        raise UsageError(f"--server-timeout-s {args.server_timeout_s:g}: must be positive")
    if args.deadline_ms is not None and not args.deadline_ms > 0:
        raise UsageError(f"--deadline-ms {args.deadline_ms:g}: must be positive")
    token = read_token(args.token_file)
    # This side's log takes only the vetoes of requests that brought no decision back.
    local = load_config(args.config) if args.config else GuardConfig()
    audit = local.audit
    if args.audit is not None:
        audit = audit.model_copy(update={"path": args.audit})
    proposal = {"name": args.tool, "description": args.action, "arguments": arguments}
    if unreadable is not None:
        return _emit(unjudged(Status.INVALID_INPUT, unreadable, audit=audit,
                              proposal={**proposal, "arguments": {}}))
    limit = local.image.max_file_bytes
    for path in args.image:  # read whole and sent as base64: a 10 GB file must not be
        size = Path(path).stat().st_size
        if size > limit:
            return _emit(unjudged(
                Status.INVALID_INPUT,
                f"{path}: image file is {size} bytes, over the {limit} byte limit",
                audit=audit, proposal=proposal))
    body: dict[str, object] = {
        "action": args.action, "tool": args.tool, "arguments": arguments,
        "images": [base64.b64encode(Path(p).read_bytes()).decode() for p in args.image],
    }
    if args.deadline_ms is not None:
        body["deadline_ms"] = args.deadline_ms
    try:
        decision = post_check(args.server, body, token=token, timeout_s=args.server_timeout_s)
    except RemoteFailure as exc:
        decision = unjudged(exc.status, exc.message, audit=audit, proposal=proposal)
    return _emit(decision)
