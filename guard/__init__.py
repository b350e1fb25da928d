"""embodied-guard: a runtime safety guard for robots and embodied agents.

Light at import: torch, transformers and rclpy load only when a backend or front end needs them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from guard.config import GuardConfig as GuardConfig
    from guard.config import load_config as load_config
    from guard.core import Guard as Guard
    from guard.types import ActionProposal as ActionProposal
    from guard.types import Decision as Decision
    from guard.types import Frame as Frame
    from guard.types import Hazard as Hazard
    from guard.types import Status as Status
    from guard.types import Verdict as Verdict

_LAZY = {
    "Guard": "guard.core",
    "GuardConfig": "guard.config",
    "load_config": "guard.config",
    "ActionProposal": "guard.types",
    "Decision": "guard.types",
    "Frame": "guard.types",
    "Hazard": "guard.types",
    "Status": "guard.types",
    "Verdict": "guard.types",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'guard' has no attribute {name!r}")


__all__ = sorted(_LAZY)
