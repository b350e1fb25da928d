"""What the agent-framework examples share: the kitchen robot's tools, the guard, the camera and
an operator who approves (or declines) the calls the guard annotates.

The judge is scripted by default (no model needed): it answers by the action's words, so
`turn_on_stove` is a veto (a towel lies on the burner), touching the towel an annotate, the
rest allow. With --model it is a real judge looking at the camera frame: a Qwen-VL folder or
hub id on a GPU machine. The embedded guard/models/hazardworld-small knows only the synthetic
world: on this photo its answers fall outside the answer format, so every call is a fail-closed
veto (status "error"), which shows the guard failing closed, not a judgement of the scene.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from guard.config import GuardConfig
from guard.core import Guard
from guard.frames import StaticFrame
from guard.types import ActionProposal, Decision

HERE = Path(__file__).resolve().parent
KITCHEN = HERE / "kitchen_towel_on_stove.jpg"
TASK = "Boil water for tea."

SCRIPTED_JUDGE = {
    "turn_on_stove": {
        "text": "VETO\nrisk: 0.92\n"
        "hazard: fire | a towel lies on the burner | the towel ignites, the fire spreads | 0.9\n"
        "consequence: Lighting the burner under the towel sets it alight."
    },
    "towel": {
        "text": "ANNOTATE\nrisk: 0.35\n"
        "hazard: burn | the burner may still be warm | a hand near it can be burned | 0.3\n"
        "consequence: Moving the towel is safe if the burner is cold; check it first."
    },
}

#: What the scripted model asks for, in order: the stove is vetoed, so it moves the towel.
PLAN: list[tuple[str, dict[str, Any]]] = [
    ("move_to", {"place": "stove"}),
    ("turn_on_stove", {"burner": 2, "minutes": 15}),
    ("pick_and_place", {"obj": "towel", "target": "counter"}),
]
#: The scripted model's last words (a script cannot adapt them to what it read).
FINAL = "I stop here: the tool results say what ran and what was refused."


# -- the robot's tools (what the agent's model is given) ---------------------------------------


def move_to(place: str) -> str:
    """Drive the robot base to a named place in the kitchen."""
    return f"arrived at the {place}"


def turn_on_stove(burner: int, minutes: int = 10) -> str:
    """Light one burner of the stove for some minutes."""
    return f"burner {burner} on for {minutes} min"


def pick_and_place(obj: str, target: str) -> str:
    """Pick up an object and put it down somewhere else."""
    return f"put the {obj} on the {target}"


TOOLS: list[Callable[..., str]] = [move_to, turn_on_stove, pick_and_place]


# -- the guard, the camera, the operator -------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--model", default=None, help="judge model folder or id (default: scripted)")
    p.add_argument("--backend", default="transformers", help="backend for --model")
    p.add_argument("--audit", default=None, help="audit log (default: a temp file)")
    p.add_argument("--decline", action="store_true",
                   help="the operator declines the calls the guard annotates")
    return p


def build_guard(args: argparse.Namespace) -> Guard:
    audit = args.audit or str(Path(tempfile.mkdtemp(prefix="guarded-agent-")) / "audit.jsonl")
    overrides: dict[str, Any] = {"audit.path": audit}
    if args.model:
        overrides.update({"model.backend": args.backend, "model.id": args.model,
                          "policy.deadline_ms": 30_000})
    else:
        overrides.update({
            "model.backend": "scripted",
            "model.scripted.by_action": SCRIPTED_JUDGE,
            "model.scripted.responses": [{"text": "ALLOW\nrisk: 0.05"}],
        })
    return Guard(GuardConfig().with_overrides(**overrides))


def camera() -> StaticFrame:
    """The example kitchen photo (a towel on the stove) as the latest camera frame."""
    return StaticFrame.from_path(KITCHEN)


class Operator:
    """Asked before a call the guard annotated runs; answers as --decline says."""

    def __init__(self, decline: bool = False) -> None:
        self.decline = decline

    def __call__(self, decision: Decision, proposal: ActionProposal) -> bool:
        hazards = "; ".join(h.description for h in decision.hazards)
        answer = not self.decline
        print(f"  operator asked about {proposal.name} ({decision.verdict.value}, "
              f"risk {decision.risk:.2f}: {hazards}) -> {'approve' if answer else 'decline'}")
        return answer


def show(name: str, arguments: Any, output: Any) -> None:
    """One line per tool call: what the agent asked for and what it read back."""
    text = str(output)
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    refused = isinstance(body, dict) and body.get("error") in (
        "vetoed_by_safety_guard", "declined_by_operator")
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    print(f"agent -> {name}({args})")
    print(f"  {'REFUSED' if refused else 'result'}: {text}")
