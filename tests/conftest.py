"""Suite-wide guards: nothing reaches a hub, nothing writes outside tmp dirs."""

from __future__ import annotations

import os
import tempfile

# Set before any test imports transformers: offline always, whatever the caller's shell says.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The default audit path lives under XDG_STATE_HOME: keep the suite's decisions out of $HOME.
os.environ["XDG_STATE_HOME"] = tempfile.mkdtemp(prefix="guard-test-state-")

import time

import numpy as np
import pytest

from guard.config import GuardConfig
from guard.types import Frame


@pytest.fixture
def audit_path(tmp_path):
    return tmp_path / "audit.jsonl"


@pytest.fixture
def config(audit_path) -> GuardConfig:
    """Defaults with the audit log in a tmp dir and the scripted backend."""
    return GuardConfig().with_overrides(**{
        "audit.path": str(audit_path), "model.backend": "scripted"
    })


@pytest.fixture
def frame() -> Frame:
    rng = np.random.default_rng(0)
    return Frame(
        image=rng.integers(0, 255, (96, 128, 3), dtype=np.uint8), stamp=time.time(), source="t"
    )
