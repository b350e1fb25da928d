"""One judgement on a server too: the same model behind a real OpenAI-compatible server
(`transformers serve`, started here) answers each world scene exactly as the local
transformers backend does: the same prompt, the same pixels (PNG), the same greedy answer and
verdict.

The server side needs torchvision, which cannot import beside the CPU torch wheel this project
installs, so the server runs from a second virtual environment that `bash tests/run.sh` builds
(`.venv-serve`: torch 2.14.1 + torchvision 0.29.1 + transformers[serving]); set
GUARD_SERVE_PYTHON to use another. It does not log probabilities, so risks are compared only
where the answer states one.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from guard.core import Guard
from guard.types import ActionProposal, Frame

ROOT = Path(__file__).resolve().parents[1]
EMBEDDED = ROOT / "guard" / "models" / "hazardworld-small"
SERVE_ENV = "GUARD_SERVE_PYTHON"
N_SCENES = 16

pytestmark = pytest.mark.slow


def _serve_python() -> Path:
    path = Path(os.environ.get(SERVE_ENV) or ROOT / ".venv-serve" / "bin" / "python")
    if not path.exists():
        pytest.skip(f"no serving environment at {path}: `bash tests/run.sh` builds .venv-serve "
                    f"(torch 2.14.1, torchvision 0.29.1, transformers[serving]), or set "
                    f"{SERVE_ENV}")
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Any:
    python = _serve_python()
    port = _free_port()
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": ""}
    cli = python.parent / "transformers"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(cli), "serve", str(EMBEDDED), "--host", "127.0.0.1", "--port", str(port)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"transformers serve did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()


def _scenes() -> list[tuple[np.ndarray, ActionProposal, str]]:
    from guard.world import iter_items, render_item

    return [(render_item(it), ActionProposal(name=it.action, description=it.query),
             "unsafe" if it.unsafe else "safe")
            for it in iter_items("test_iid", N_SCENES, 1000)]


def _guard(config: Any, tmp: Path, name: str, **overrides: Any) -> Guard:
    return Guard(config.with_overrides(**{
        "audit.path": str(tmp / f"{name}.jsonl"), "model.id": str(EMBEDDED),
        "policy.deadline_ms": 120_000,
        "policy.max_frame_age_ms": None, **overrides}))


def test_a_served_judge_answers_as_the_local_one(server: str, tmp_path: Path) -> None:
    from guard.config import GuardConfig

    base = GuardConfig()
    local = _guard(base, tmp_path, "local", **{"model.backend": "transformers"})
    remote = _guard(base, tmp_path, "remote", **{
        "model.backend": "openai", "model.openai.base_url": server + "/v1",
        "model.openai.timeout_s": 120, "model.warmup": False})
    rows = []
    with local, remote:
        for image, proposal, label in _scenes():
            frame = Frame(image=image, stamp=None, source="world")
            a, b = local.judge(frame, proposal), remote.judge(frame, proposal)
            assert a.prompt == b.prompt and a.judged_sizes == b.judged_sizes
            rows.append((label, a, b))
    # Compared without trailing whitespace: an answer cut at max_new_tokens may end in a space
    # token that the server's detokenizer strips.
    differ = [(a.answer, b.answer) for _, a, b in rows
              if (a.answer or "").rstrip() != (b.answer or "").rstrip()]
    assert not differ, differ
    assert [a.decision.verdict for _, a, _ in rows] == [b.decision.verdict for _, _, b in rows]
    assert [a.decision.status for _, a, _ in rows] == [b.decision.status for _, _, b in rows]
    assert sum(b.decision.status.value == "ok" for _, _, b in rows) >= len(rows) - 1, \
        [b.decision.error for _, _, b in rows]
    # The scenes are not all judged alike: the comparison covers both verdicts.
    assert len({a.decision.verdict for _, a, _ in rows}) > 1
    sys.stderr.write(f"{len(rows)} scenes, local and served answers identical\n")
