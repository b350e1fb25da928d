"""What the agent-framework adapter tests share: a guard whose judge answers by the action's
words, a camera, the robot's tools as plain functions that count their runs, and audit reads.

The judge is the scripted backend configured by action words, so each decision is known in
advance: anything about the stove is a veto (fire), anything about the towel an annotate, the
rest allow. The tools' names, descriptions and arguments are chosen so that exactly one of
those words reaches the judge per tool.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from guard.audit import verify
from guard.config import GuardConfig
from guard.core import Guard
from guard.frames import StaticFrame
from guard.types import ActionProposal, Decision, Frame

VETO = ("VETO\nrisk: 0.92\nhazard: fire | a towel lies on the burner | "
        "the towel ignites and the fire spreads | 0.9\n"
        "consequence: Lighting the burner under the towel sets it alight.")
ANNOTATE = ("ANNOTATE\nrisk: 0.35\nhazard: burn | the burner may still be warm | "
            "a hand near it can be burned | 0.3")
ALLOW = "ALLOW\nrisk: 0.02"
CONSEQUENCE = "the towel ignites and the fire spreads"


def make_guard(audit_path: Path, **policy: Any) -> Guard:
    """A guard on the scripted judge: stove -> veto, towel -> annotate, else allow."""
    overrides: dict[str, Any] = {
        "audit.path": str(audit_path),
        "model.backend": "scripted",
        "model.scripted.by_action": {"stove": {"text": VETO}, "towel": {"text": ANNOTATE}},
        "model.scripted.responses": [{"text": ALLOW}],
    }
    overrides.update({f"policy.{k}": v for k, v in policy.items()})
    return Guard(GuardConfig().with_overrides(**overrides))


def camera() -> StaticFrame:
    rng = np.random.default_rng(3)
    return StaticFrame(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8))


def broken_camera() -> Frame:
    raise OSError("camera unplugged")


def stale_camera() -> Frame:
    rng = np.random.default_rng(4)
    return Frame(image=rng.integers(0, 255, (48, 64, 3), dtype=np.uint8),
                 stamp=time.time() - 3600.0, source="stale")


class Robot:
    """The robot's tools as plain functions; `runs` lists (tool, arguments) that really ran."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, dict[str, Any]]] = []

    def move_to(self, place: str) -> str:
        """Drive the robot base to a named place in the kitchen."""
        self.runs.append(("move_to", {"place": place}))
        return f"arrived at the {place}"

    def turn_on_stove(self, burner: int) -> str:
        """Light one burner of the stove."""
        self.runs.append(("turn_on_stove", {"burner": burner}))
        return f"burner {burner} on"

    def move_towel(self, target: str) -> str:
        """Pick up the towel and put it somewhere else."""
        self.runs.append(("move_towel", {"target": target}))
        return f"towel on the {target}"

    def names(self) -> list[str]:
        return [name for name, _ in self.runs]


class Approvals:
    """An approval callback that records what it was asked and answers `answer`."""

    def __init__(self, answer: Any = True) -> None:
        self.answer = answer
        self.asked: list[tuple[Decision, ActionProposal]] = []

    def __call__(self, decision: Decision, proposal: ActionProposal) -> Any:
        self.asked.append((decision, proposal))
        if isinstance(self.answer, BaseException):
            raise self.answer
        return self.answer


def records(audit_path: Path, kind: str | None = None) -> list[dict[str, Any]]:
    """The audit log's records (of one kind), after checking the hash chain verifies."""
    result = verify(audit_path)
    assert result.ok, result.problems
    lines = Path(audit_path).read_text().splitlines()
    out = [json.loads(line) for line in lines if line.strip()]
    return [r for r in out if kind is None or r["kind"] == kind]


def decisions_for(audit_path: Path, tool: str) -> list[dict[str, Any]]:
    return [r for r in records(audit_path, "decision") if r["proposal"].get("name") == tool]


def veto_text(message: str) -> dict[str, Any]:
    """The JSON the model reads for a refused call."""
    body: dict[str, Any] = json.loads(message)
    return body

