#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite, offline. Extra arguments go to pytest.
#
#   bash tests/run.sh              # everything, as CI runs it
#   bash tests/run.sh -k parser    # a subset
#
# GUARD_VENV picks the virtual environment (default: .venv in the repository).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${GUARD_VENV:-$ROOT/.venv}"
cd "$ROOT"

[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"

# tests/test_openai_serve.py starts a real OpenAI-compatible server (`transformers serve`),
# which needs torchvision; torchvision cannot import beside the CPU torch below, so the server
# gets an environment of its own (torch 2.14.1 + torchvision 0.29.1, about 5.5 GB). Without
# it that one test skips and says why.
SERVE_VENV="${GUARD_SERVE_VENV:-$ROOT/.venv-serve}"
if [ ! -x "$SERVE_VENV/bin/transformers" ]; then
  ( python3 -m venv "$SERVE_VENV" \
    && "$SERVE_VENV/bin/python" -m pip --disable-pip-version-check -q install \
         -c configs/constraints-serve.txt torch==2.14.1 torchvision==0.29.1 \
    && "$SERVE_VENV/bin/python" -m pip --disable-pip-version-check -q install \
         -c configs/constraints-serve.txt "transformers[serving]==5.24.0" ) \
    || echo "tests/run.sh: the serving environment did not install; test_openai_serve skips"
fi
export GUARD_SERVE_PYTHON="$SERVE_VENV/bin/python"
# shellcheck disable=SC1091
. "$VENV/bin/activate"
pip() { python -m pip --disable-pip-version-check -q "$@"; }
# torch first, from the CPU wheel, and kept as a constraint: an unpinned torch pulled in by
# another package would be a multi-GB CUDA build.
pip install torch==2.13.0
pip install -c configs/constraints.txt -e ".[all,ros,dev]"
python -c "import torch, transformers, guard" >/dev/null
if [ -f ros2_ws/build_interfaces.sh ]; then
  bash ros2_ws/build_interfaces.sh
fi

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
set +e
python -m pytest "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "pytest collected no tests"
  rc=0
fi
exit "$rc"
