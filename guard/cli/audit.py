"""`guard audit verify FILE`: walk an audit log's hash chain and report the first broken record.

Exit 0 when the chain is intact, 1 when a record was edited, removed or reordered.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = sub.add_parser("verify", help="check the hash chain of an audit log",
                       description="Check the hash chain; print the first broken record.")
    v.add_argument("file", metavar="FILE", help="audit JSONL file")


def run(args: argparse.Namespace) -> int:
    from guard.audit import verify

    result = verify(args.file)
    print(result.describe(args.file))
    return 0 if result.ok else 1
