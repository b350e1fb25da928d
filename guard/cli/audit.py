"""`guard audit verify LOG`: check an audit log's hash chain, its rotated files and its head.

    guard audit verify ~/.local/state/embodied-guard/audit.jsonl

Verifies LOG together with its rotated files (LOG.1, LOG.2, ..., oldest first) as one chain and
checks the chain against LOG.head (a cut tail). Prints one summary line, then one line per
problem (`problem: ...`) and per recorded event that is not damage (`note: ...`: a repaired
torn tail, a log that starts after rotated-away records, no head file).

Exit 0 when the chain is intact, 1 when any record was edited, removed, reordered, lost,
re-encoded or unreadable (a missing LOG whose head or rotated files remain included), 2 when
there is no log at all (no LOG, LOG.N or LOG.head) or LOG is not a regular file.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="audit_command", metavar="ACTION", required=True)
    v = sub.add_parser(
        "verify", help="check the hash chain of an audit log (and its rotated files and head)",
        description="Check the hash chain of LOG and its rotated files LOG.N against LOG.head; "
        "print one line per problem. Exit 0 when intact, 1 otherwise.")
    v.add_argument("file", metavar="LOG", help="audit JSONL file (the current one, not LOG.N)")


def run(args: argparse.Namespace) -> int:
    from guard.audit import verify

    result = verify(args.file)
    print(result.describe(args.file))
    return 0 if result.ok else 1
