"""`guard`: one entry point, subcommands as small objects.

    guard tiny-model --arch qwen2_5_vl --out /tmp/tiny
    guard check --image examples/kitchen.jpg --action "turn on the stove" --model /tmp/tiny
    guard audit verify ~/.local/state/embodied-guard/audit.jsonl

Exit codes: 0 allow/annotate (or success), 3 veto, 2 usage error, 1 other failure.
Only the standard library is imported here so that `guard --help` is instant.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from types import ModuleType

EXIT_OK, EXIT_FAILURE, EXIT_USAGE, EXIT_VETO = 0, 1, 2, 3

# name -> (module, help); each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, tuple[str, str]] = {
    "check": ("guard.cli.check", "judge one action against one camera image; print the decision"),
    "tiny-model": ("guard.cli.tiny_model", "write a tiny random-weight Qwen-VL model (offline)"),
    "audit": ("guard.cli.audit", "inspect audit logs (verify the hash chain)"),
    "world": ("guard.cli.world", "generate items of the synthetic consequence world"),
    "export": ("guard.cli.export", "export a judge model for another runtime (onnx)"),
    "replay": ("guard.cli.replay", "judge a logged episode (rosbag2/MCAP/JSONL) offline; write "
               "decisions, a summary and an HTML report"),
    "demo": ("guard.cli.demo", "judge a short synthetic episode with the embedded model; print "
             "the verdicts and where the report is"),
    "bench": ("guard.cli.bench", "run a safety benchmark suite through the guard and score it"),
    "faults": ("guard.cli.faults", "run the fault matrix (bad clocks, hung backends, hostile "
               "text, audit faults, ...) against your config; exit 1 on any silent allow"),
    "mcp-proxy": ("guard.cli.mcp_proxy", "an MCP server in front of a robot's MCP server: "
                  "every tool call is judged before it is forwarded"),
    "serve": ("guard.cli.serve", "hold the judge model in one process and answer many clients "
              "over HTTP (POST /v1/check)"),
}


def _lazy_module(name: str) -> ModuleType:
    import importlib

    return importlib.import_module(name)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="guard",
        description="embodied-guard: project the consequences of a robot's action in the "
        "current scene and allow, annotate or veto it.",
        epilog="Exit codes: 0 allow/annotate/success, 3 veto, 2 usage error, 1 failure. "
        "'guard COMMAND --help' describes each command.",
    )
    from guard import __version__

    parser.add_argument("--version", action="version", version=f"embodied-guard {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
        # Command modules import only the standard library at top level; heavy imports
        # happen inside run().
        _lazy_module(module).add_arguments(p)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_module", None):
        parser.print_help()
        return EXIT_USAGE
    from guard.cli.check import shown
    from guard.errors import GuardError, UsageError

    run: Callable[[argparse.Namespace], int] = _lazy_module(args._module).run
    # An error names what a user gave (a path, a config value): one line on stderr, its
    # line breaks and escape sequences written as escapes, never a forged line.
    try:
        return run(args)
    except UsageError as exc:
        print(f"guard {args.command}: error: {shown(str(exc))}", file=sys.stderr)
        return EXIT_USAGE
    except GuardError as exc:
        print(f"guard {args.command}: {shown(str(exc))}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
