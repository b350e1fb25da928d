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
