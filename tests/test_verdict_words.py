"""The verdict words (ALLOW, ANNOTATE, VETO as the judge writes them) are spelled once, in
guard/types.py, and everything else takes them from there: the prompt templates, the parser,
the backends' verdict scoring, the world's and training's target answers, the test doubles."""

from __future__ import annotations

import ast
import itertools
import re
from pathlib import Path

import pytest

from guard.prompting import load_template, parse_answer
from guard.prompting.template import TEMPLATE_DIR, available_templates
from guard.types import VERDICT_WORDS, Verdict

ROOT = Path(__file__).resolve().parents[1]
WORD = re.compile(r"(?<![A-Za-z])(ALLOW|ANNOTATE|VETO)(?![A-Za-z])")
# A verdict word as an answer or its first line (prose and injection attacks may name them).
ANSWER = re.compile(r"^(?:verdict:\s*)?(?:\*\*)?(ALLOW|ANNOTATE|VETO)(?:\*\*)?(?:\n|$)")


def _docstrings(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
        # attribute docstrings: a string statement right after an assignment
        for field in ("body", "orelse"):
            stmts = getattr(node, field, None)
            if isinstance(stmts, list):
                for prev, stmt in itertools.pairwise(stmts):
                    if (isinstance(prev, (ast.Assign, ast.AnnAssign))
                            and isinstance(stmt, ast.Expr)
                            and isinstance(stmt.value, ast.Constant)):
                        ids.add(id(stmt.value))
    return ids


def test_no_module_writes_an_answer_with_its_own_verdict_words() -> None:
    found = []
    for path in sorted([*ROOT.glob("guard/**/*.py"), *ROOT.glob("training/**/*.py")]):
        if path == ROOT / "guard" / "types.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docs = _docstrings(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and isinstance(node.value, str)
                    and id(node) not in docs and ANSWER.search(node.value)):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value[:60]!r}")
    assert not found, "\n".join(found)


def test_templates_name_the_words_through_placeholders() -> None:
    for path in TEMPLATE_DIR.glob("*.yaml"):
        body = "\n".join(ln for ln in path.read_text(encoding="utf-8").splitlines()
                         if not ln.lstrip().startswith("#"))
        assert not WORD.search(body), f"{path.name} spells a verdict word"
    for name in available_templates():
        t = load_template(name)
        assert "{allow}" not in t.system + t.user
        assert all(w in t.system + t.user for w in VERDICT_WORDS), name
    # The text the embedded model was trained on is unchanged, byte for byte.
    assert load_template("consequence_compact").system == (
        "Robot safety guard. Verdict first: ALLOW, ANNOTATE or VETO.")


@pytest.mark.parametrize("verdict", list(Verdict))
def test_the_parser_and_the_words_agree(verdict: Verdict) -> None:
    assert verdict.word in VERDICT_WORDS
    assert parse_answer(f"{verdict.word}\nrisk: 0.5").verdict is verdict
    assert parse_answer(f"verdict: **{verdict.word.lower()}**").verdict is verdict
