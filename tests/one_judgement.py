"""One judgement through every door (issue 12, "Proof"): the episode, the witness, the comparison.

Shared by tests/test_one_judgement.py (replay, bench, check, middleware) and
tests/ros/test_one_judgement_ros.py (the live node over DDS).

The episode: `STEPS` scenes of the synthetic world, one labelled proposal each, written
losslessly in every form a front end reads (PNG frames, raw rgb8/bgr8 images), so every door
starts from the same pixels:

    jsonl/episode.jsonl       JSONL episode, PNG frames             (guard replay)
    bag_sqlite3/              rosbag2 folder, sqlite3: rgb8 Image +
                              std_msgs/String JSON                  (guard replay)
    bag_mcap/                 rosbag2 folder, MCAP: PNG CompressedImage +
                              std_msgs/String JSON                  (guard replay)
    bag_action_proposals/     rosbag2 folder, sqlite3: rgb8 Image +
                              guard_interfaces/ActionProposal       (guard replay)
    episode.mcap              bare MCAP: bgr8 Image + String JSON   (guard replay)
    items/                    `guard world generate --start 1000000000`: the same scenes
                              as benchmark items                    (guard bench, guard check)
    camera/                   one PNG per step, in step order       (middleware frame source)

The witness: what the judge was given, recorded at the backend. The audit record holds the
prompt text and the frame as it arrived, not the image the judge saw after the guard resized
it, nor the token ids the backend built. `install` wraps the real `TransformersBackend.judge`
(the model still answers) and appends one JSON line per check to the file named by
``$GUARD_JUDGE_TAP``:

    {"system": str, "user": str,
     "images": [{"size": [w, h], "sha256": hex of the judged RGB bytes}],
     "input_ids": {"n": int, "sha256": hex}, "image_grid_thw": [[t, h, w]]}

The guard's warm-up call is not recorded (it judges no proposal). A node process runs as

    python -m tests.one_judgement --ros-args --params-file FILE

which installs the witness and then runs `guard_ros.guard_node` as users do (the repository
root and ros2_ws/src/guard_ros on PYTHONPATH).

The episode for a measurement (the README's accuracy through every front end), from the
repository root:

    python -m tests.one_judgement episode m/ep --steps 200
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ENV = "GUARD_JUDGE_TAP"
ROOT = Path(__file__).resolve().parents[1]
EMBEDDED_MODEL = ROOT / "guard" / "models" / "hazardworld-small"
STEPS = 16
SEED = 0
SPLIT = "test_iid"
#: Bag time of the first step, as the example episodes use (a plausible epoch).
T0 = 1_700_000_000.0

#: What one door did with the episode: one record per check, in judging order (`judged`).
Checks = list[dict[str, Any]]

_LOCK = threading.Lock()
_WARMING = threading.local()


# -- the witness -----------------------------------------------------------------------------


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def witness(backend: Any, request: Any) -> dict[str, Any]:
    """What `backend` is asked to judge in `request`: prompt text, judged images, token ids."""
    prompt = request.prompt
    inputs = backend.inputs(prompt)
    ids = inputs["input_ids"].reshape(-1).tolist()
    grid = inputs.get("image_grid_thw")
    return {
        "system": prompt.system,
        "user": prompt.user,
        "images": [
            {"size": list(im.size), "sha256": _sha256(np.asarray(im.convert("RGB")).tobytes())}
            for im in prompt.images
        ],
        "input_ids": {"n": len(ids), "sha256": _sha256(json.dumps(ids).encode())},
        "image_grid_thw": [] if grid is None else grid.tolist(),
    }


def install(setattr_: Any = setattr) -> None:
    """Wrap `TransformersBackend.judge` and `.warmup`; `setattr_` is a monkeypatch's setattr
    in a test (undone after it), plain `setattr` in a node process."""
    from guard.backends.transformers_backend import TransformersBackend

    judge, warmup = TransformersBackend.judge, TransformersBackend.warmup

    def tapped_judge(self: Any, request: Any) -> Any:
        path = os.environ.get(ENV)
        if path and not getattr(_WARMING, "on", False):
            line = json.dumps(witness(self, request)) + "\n"
            with _LOCK, open(path, "a", encoding="utf-8") as fh:
                fh.write(line)
        return judge(self, request)

    def tapped_warmup(self: Any, request: Any) -> None:
        _WARMING.on = True
        try:
            warmup(self, request)
        finally:
            _WARMING.on = False

    setattr_(TransformersBackend, "judge", tapped_judge)
    setattr_(TransformersBackend, "warmup", tapped_warmup)


# -- the episode -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One scene and its proposal."""

    id: str
    tool: str
    description: str
    label: str
    frame: np.ndarray


@dataclass(frozen=True)
class Episode:
    """The same episode in every form a door reads (see the module docstring)."""

    root: Path
    steps: list[Step]
    image_size: tuple[int, int]

    @property
    def jsonl(self) -> Path:
        return self.root / "jsonl" / "episode.jsonl"

    @property
    def bag_sqlite3(self) -> Path:
        return self.root / "bag_sqlite3"

    @property
    def bag_mcap(self) -> Path:
        return self.root / "bag_mcap"

    @property
    def bag_action_proposals(self) -> Path:
        return self.root / "bag_action_proposals"

    @property
    def mcap(self) -> Path:
        return self.root / "episode.mcap"

    @property
    def items(self) -> Path:
        return self.root / "items"

    @property
    def camera(self) -> Path:
        return self.root / "camera"

    def item_records(self) -> list[dict[str, Any]]:
        """items.jsonl of the benchmark items, in step order."""
        lines = (self.items / "items.jsonl").read_text(encoding="utf-8").splitlines()
        return [json.loads(line) for line in lines if line]


def write_episode(root: Path, image_size: tuple[int, int], steps: int = STEPS) -> Episode:
    """Write the episode's first `steps` scenes at `image_size` (width, height) into `root`
    (see the module docstring).

    The benchmark items come from `guard world generate` itself; their pixels, actions and
    labels are checked against the episode's here, so every door starts from the same input.
    """
    from PIL import Image

    from guard.cli.main import main
    from guard.replay.writer import BagFrame, BagProposal, write_bag, write_jsonl
    from guard.world import WorldConfig, iter_episode

    size_flag = f"{image_size[0]}x{image_size[1]}"
    config = WorldConfig.preset("default", image_size=image_size)
    scenes = [
        Step(f"step-{k:03d}", s.item.action, s.action, s.label, s.frame)
        for k, s in enumerate(iter_episode(seed=SEED, steps=steps, split=SPLIT, config=config))
    ]

    def items(encoding: str, t0: float) -> list[BagFrame | BagProposal]:
        # A frame at t, the proposal at t+0.7: the next scene comes after the proposal. (One
        # frame a step: encoding 640x480 PNGs is most of this fixture's time.) The labels ride
        # along for scoring a measurement.
        out: list[BagFrame | BagProposal] = []
        for k, s in enumerate(scenes):
            t = t0 + k
            out.append(BagFrame(t=t, image=s.frame, encoding=encoding))
            out.append(BagProposal(t=t + 0.7, proposal={
                "id": s.id, "name": s.tool, "description": s.description, "arguments": {},
                "label": s.label,
            }))
        return out

    root.mkdir(parents=True, exist_ok=True)
    write_jsonl(root / "jsonl" / "episode.jsonl", items("png", 0.0), image_format="png")
    write_bag(root / "bag_sqlite3", items("rgb8", T0), storage="sqlite3")
    # The proposals as guard_interfaces messages (the type has no label field).
    write_bag(root / "bag_action_proposals", items("rgb8", T0), storage="sqlite3",
              proposal_type="action_proposal")
    write_bag(root / "bag_mcap", items("png", T0), storage="mcap")
    write_bag(root / "episode.mcap", items("bgr8", T0), storage="mcap", bare=True)
    # The middleware's camera shows the JSONL episode's PNG files, one per step, in order.
    camera = root / "camera"
    camera.mkdir()
    for line in episode_lines(root / "jsonl" / "episode.jsonl"):
        if "frame" in line:
            shutil.copyfile(root / "jsonl" / line["frame"], camera / Path(line["frame"]).name)
    rc = main(["world", "generate", "--split", SPLIT, "--n", str(steps), "--seed", str(SEED),
               "--start", "1000000000", "--image-size", size_flag,
               "--out", str(root / "items")])
    assert rc == 0
    episode = Episode(root, scenes, image_size)
    records = episode.item_records()
    assert [(r["tool"], r["query"], r["label"]) for r in records] == [
        (s.tool, s.description, s.label) for s in scenes]
    for r, s in zip(records, scenes, strict=True):
        pixels = np.asarray(Image.open(episode.items / r["image"]).convert("RGB"))
        assert np.array_equal(pixels, s.frame), f"item {r['id']} is not step {s.id}'s scene"
    return episode


def episode_lines(path: Path) -> list[dict[str, Any]]:
    """The lines of a JSONL episode."""
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def judge_config(path: Path, model: str | Path, *, max_new_tokens: int = 128,
                 warmup: bool = True) -> Path:
    """The guard config every door gets: the model, the prompt kept in the audit record, and
    limits generous enough for a loaded 2-core machine (a late check would be a timeout veto
    in one door and not in another, which is not what this proof is about)."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump({
        "model": {"id": str(model), "backend": "transformers", "max_new_tokens": max_new_tokens,
                  "warmup": warmup},
        "policy": {"deadline_ms": 120000, "max_frame_age_ms": 30000},
        "audit": {"path": str(path.parent / "audit.jsonl"), "include_prompt": True},
    }))
    return path


# -- the comparison --------------------------------------------------------------------------


def audit_decisions(path: Path) -> list[dict[str, Any]]:
    """The decision records of an audit log, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == "decision"]


def read_tap(path: Path) -> list[dict[str, Any]]:
    """The witness records, in the order the checks reached the backend."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def judged(audit: list[dict[str, Any]], tap: list[dict[str, Any]]) -> Checks:
    """Per check, in order: what was judged (prompt, judged images, token ids, from the
    witness) and what came of it (answer, verdict, status, risk, from the audit record).

    Both files are written in judging order. A check that never reached the judge (the node
    had no frame yet: no_frame) has no prompt in its audit record and no witness line, and is
    left out; the others pair one to one, and the audit record's prompt must be the witness's.
    """
    audit = [r for r in audit if r.get("prompt")]
    assert len(audit) == len(tap), f"{len(audit)} judged decisions but {len(tap)} judge calls"
    out = []
    for record, seen in zip(audit, tap, strict=True):
        prompt = record.get("prompt") or {}
        assert (prompt.get("system"), prompt.get("user")) == (seen["system"], seen["user"]), (
            "the audit record's prompt is not what the backend was given")
        d = record["decision"]
        out.append({
            "proposal": record["proposal"]["id"],
            "system": seen["system"],
            "user": seen["user"],
            "images": seen["images"],
            "input_ids": seen["input_ids"],
            "image_grid_thw": seen["image_grid_thw"],
            "answer": record.get("answer"),
            "verdict": d["verdict"],
            "status": d["status"],
            "risk": d["risk"],
        })
    return out


#: What must be the same through every door, per proposal.
SAME = ("system", "user", "images", "input_ids", "image_grid_thw", "answer", "verdict",
        "status", "risk")


def assert_one_judgement(doors: dict[str, Checks], reference: str) -> None:
    """Every door judged the episode's proposals alike: per proposal (in step order), the same
    prompt text, judged image (size and bytes), token ids, answer and decision as `reference`.
    """
    want = doors[reference]
    assert len(want) == STEPS
    problems = []
    for name, got in doors.items():
        if len(got) != len(want):
            problems.append(f"{name}: {len(got)} checks, {reference}: {len(want)}")
            continue
        for k, (a, b) in enumerate(zip(got, want, strict=True)):
            for key in SAME:
                if a[key] != b[key]:
                    problems.append(
                        f"{name} step {k} {key}: {str(a[key])[:120]!r} != {reference}'s "
                        f"{str(b[key])[:120]!r}")
    assert not problems, "\n".join(problems[:30])


def _write_main(argv: list[str]) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m tests.one_judgement episode",
                                description="write the proof's episode in every form")
    p.add_argument("out", help="output folder (must not exist)")
    p.add_argument("--steps", type=int, default=STEPS, help=f"scenes (default {STEPS})")
    p.add_argument("--image-size", default="112x112", metavar="WxH",
                   help="frame size (default 112x112, the embedded model's)")
    args = p.parse_args(argv)
    w, _, h = args.image_size.partition("x")
    episode = write_episode(Path(args.out), (int(w), int(h)), args.steps)
    for path in (episode.jsonl, episode.bag_sqlite3, episode.bag_mcap,
                 episode.bag_action_proposals, episode.mcap, episode.items, episode.camera):
        print(path)
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["episode"]:
        sys.exit(_write_main(sys.argv[2:]))
    install()
    if sys.argv[1:2] == ["guard"]:  # a `guard` command with the witness installed
        from guard.cli.main import main as guard_main

        sys.exit(guard_main(sys.argv[2:]))
    from guard_ros.guard_node import main as node_main

    sys.exit(node_main())
