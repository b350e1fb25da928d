"""Fixtures of the bench tests: a small generated world and a guard config for offline items."""

from __future__ import annotations

import pytest

from guard.config import GuardConfig


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory):
    """16 test_ood items of the synthetic world (balanced: 8 unsafe, 8 safe)."""
    pytest.importorskip("cv2")
    from guard.world import generate

    out = tmp_path_factory.mktemp("world") / "test_ood"
    generate("test_ood", 16, out, seed=0)
    return out


@pytest.fixture
def bench_config(tmp_path) -> GuardConfig:
    """Defaults for offline items: no frame-age check, audit in tmp."""
    return GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "audit.jsonl"),
        "model.backend": "scripted",
        "policy.max_frame_age_ms": None,
    })
