"""The decision core type-checks under mypy --strict (config in pyproject.toml).

Modules listed here are held to it; add a module once it is clean.
"""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STRICT = [
    "guard/__init__.py", "guard/_deps.py", "guard/types.py", "guard/errors.py",
    "guard/config.py", "guard/policy.py", "guard/audit.py", "guard/core.py", "guard/imaging.py",
    "guard/prompting", "guard/backends/__init__.py", "guard/backends/base.py",
    "guard/backends/scripted.py", "guard/backends/openai_backend.py",
    "guard/backends/transformers_backend.py", "guard/backends/qwen_inputs.py", "guard/tiny.py",
    "guard/backends/engine.py", "guard/backends/mrope.py", "guard/backends/onnx_backend.py",
    "guard/backends/onnx_export.py", "guard/bench/latency.py", "guard/bench/verdict_rig.py",
    "guard/backends/qwen_pixels.py", "guard/backends/hf_loading.py",
    "guard/bench/quant_safety.py", "guard/bench/gpu_latency.py",
    "guard/cli",
    "guard/bench/overhead.py", "guard/bench/items.py", "guard/bench/judges.py",
    "guard/bench/metrics.py", "guard/bench/oracle.py", "guard/bench/report.py",
    "guard/bench/runner.py", "guard/bench/semantic.py", "guard/bench/suites.py",
    "guard/middleware", "guard/replay", "guard/frames.py", "guard/world",
    "training",
]


def test_core_modules_pass_mypy_strict():
    pytest.importorskip("mypy")
    r = subprocess.run(
        [sys.executable, "-m", "mypy", "--follow-imports=silent", *STRICT],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
