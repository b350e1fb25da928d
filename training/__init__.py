"""Producing the guard model: CASPO and its baselines (SFT, GRPO, DPO) on trl's trainers.

Entry points (each ``--config FILE --out DIR``, usable under ``accelerate launch -m``)::

    python -m training.sft     supervised warm start on reference answers
    python -m training.grpo    GRPO with the outcome reward
    python -m training.dpo     DPO on fixed (reference, wrong-verdict) pairs
    python -m training.caspo   CASPO: GRPO + constitution self-teacher token rewards

Modules: `config` (the typed run config), `data` (examples in the guard's prompt and answer
format), `rewards` and `losses` (pure functions), `constitution` (the teacher's privileged
context), `processor`, `collators`, `models`, `caspo_trainer`, `run`. See training/README.md.
Importing this package loads nothing heavy; trl, torch and transformers load with the modules
that need them.
"""

from __future__ import annotations

__all__: list[str] = []
