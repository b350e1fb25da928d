"""Judge backends, chosen by a registered name. A backend's heavy imports happen only when it
is created, so `import guard` stays light."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from guard.backends.base import Backend, ChatPrompt, JudgeOutput, JudgeRequest
from guard.errors import ConfigError

if TYPE_CHECKING:
    from guard.config import GuardConfig

# name -> "module:Class"; the class has `from_config(config: GuardConfig) -> Backend`.
_REGISTRY: dict[str, str] = {
    "transformers": "guard.backends.transformers_backend:TransformersBackend",
    "onnx": "guard.backends.onnx_backend:OnnxBackend",
    "openai": "guard.backends.openai_backend:OpenAIBackend",
    "scripted": "guard.backends.scripted:ScriptedBackend",
}


def register_backend(name: str, target: str) -> None:
    """Register a backend class by import path ("package.module:Class")."""
    _REGISTRY[name] = target


def available_backends() -> list[str]:
    return sorted(_REGISTRY)


def create_backend(config: GuardConfig) -> Backend:
    """Build the backend named by `config.model.backend`."""
    name = config.model.backend
    try:
        target = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f"model.backend = {name!r}: unknown backend (known: {', '.join(available_backends())})"
        ) from None
    module_name, _, cls_name = target.partition(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: Backend = cls.from_config(config)
    return backend


__all__ = [
    "Backend",
    "ChatPrompt",
    "JudgeOutput",
    "JudgeRequest",
    "available_backends",
    "create_backend",
    "register_backend",
]
