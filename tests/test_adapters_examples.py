"""Each agent-framework example runs offline as written (`python examples/X.py`, its own
process): the stove call is refused with its consequence, the towel call asks the operator,
the other call runs, and the audit log it names verifies with those decisions."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.adapters_common import records

ROOT = Path(__file__).resolve().parents[1]
CONSEQUENCE = "the towel ignites, the fire spreads"

CASES = [
    ("openai_agents_guarded.py", []),
    ("langchain_agent_guarded.py", []),
    ("pydantic_ai_guarded.py", []),
    ("pydantic_ai_guarded.py", ["--defer"]),
]


def run_example(name: str, *args: str) -> tuple[str, Path]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "OPENAI_API_KEY": ""}  # nothing may need a key: the run is offline
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / name), *args],
                          capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = re.search(r"^audit log: (.+)$", proc.stdout, re.M)
    assert found, proc.stdout
    return proc.stdout, Path(found.group(1))


def lines_after(out: str, call: str) -> str:
    """The result line printed under the agent's call of `call`."""
    lines = out.splitlines()
    index = next(i for i, line in enumerate(lines) if line.startswith(f"agent -> {call}("))
    return lines[index + 1]


@pytest.mark.parametrize(("name", "args"), CASES)
def test_example_refuses_the_stove_and_asks_about_the_towel(name, args):
    out, audit = run_example(name, *args)
    assert "REFUSED" in lines_after(out, "turn_on_stove")
    assert CONSEQUENCE in lines_after(out, "turn_on_stove")
    assert "result: arrived at the stove" in lines_after(out, "move_to")
    assert "operator asked about pick_and_place (annotate" in out
    assert "result: put the towel on the counter" in lines_after(out, "pick_and_place")
    verdicts = {r["proposal"]["name"]: r["decision"]["verdict"]
                for r in records(audit, "decision")}
    assert verdicts == {"move_to": "allow", "turn_on_stove": "veto",
                        "pick_and_place": "annotate"}
    assert [r["approved"] for r in records(audit, "approval")] == [True]


@pytest.mark.parametrize("name", ["langchain_agent_guarded.py", "pydantic_ai_guarded.py"])
def test_example_operator_declines(name):
    out, audit = run_example(name, "--decline")
    assert "declined_by_operator" in lines_after(out, "pick_and_place")
    assert [r["approved"] for r in records(audit, "approval")] == [False]
