"""Judge backends, chosen by a registered name: each name maps to its config class (what
`model:` may hold for it) and its backend class. Both live in the backend's module and are
imported only when that name is used, so `import guard` stays light (the backend's heavy
imports happen only when it is created)."""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from guard.backends.base import Backend, ChatPrompt, JudgeOutput, JudgeRequest
from guard.errors import ConfigError

if TYPE_CHECKING:
    from guard.config import GuardConfig, ModelConfig

_M = TypeVar("_M", bound="ModelConfig")

BENCH_ONLY = {"oracle": "guard bench"}
"""Names that are an option of one command (there, `--backend NAME`), not backends a config
may name: the oracle answers each bench item with its reference answer."""


@dataclass(frozen=True)
class _Entry:
    backend: str
    """"module:Class"; the class has `from_config(config: GuardConfig) -> Backend`."""
    config: str | type[ModelConfig]
    """"module:Class" or the class itself: a `ModelConfig` subclass."""


_REGISTRY: dict[str, _Entry] = {
    "transformers": _Entry("guard.backends.transformers_backend:TransformersBackend",
                           "guard.backends.transformers_backend:TransformersModelConfig"),
    "onnx": _Entry("guard.backends.onnx_backend:OnnxBackend",
                   "guard.backends.onnx_backend:OnnxModelConfig"),
    "openai": _Entry("guard.backends.openai_backend:OpenAIBackend",
                     "guard.backends.openai_backend:OpenAIModelConfig"),
    "scripted": _Entry("guard.backends.scripted:ScriptedBackend",
                       "guard.backends.scripted:ScriptedModelConfig"),
    "server": _Entry("guard.backends.server_backend:ServerBackend",
                     "guard.backends.server_backend:ServerModelConfig"),
}


def register_backend(
    name: str, target: str, config: str | type[ModelConfig] = "guard.config:ModelConfig"
) -> None:
    """Register a backend by name.

    Args:
        name: What `model.backend` says to pick it.
        target: Its class by import path ("package.module:Class"), with
            `from_config(config: GuardConfig) -> Backend`.
        config: Its config class (a `guard.config.ModelConfig` subclass) or that class's
            import path; the default accepts only the fields every backend shares.
    """
    _REGISTRY[name] = _Entry(target, config)


def available_backends() -> list[str]:
    """The registered backend names, sorted."""
    return sorted(_REGISTRY)


def _load(target: str) -> type:
    module_name, _, cls_name = target.partition(":")
    cls: type = getattr(importlib.import_module(module_name), cls_name)
    return cls


def backend_config_class(name: str) -> type[ModelConfig]:
    """The config class registered for backend `name`.

    Raises:
        KeyError: No backend has that name; the message lists the known ones.
    """
    try:
        entry = _REGISTRY[name]
    except KeyError:
        known = f"known: {', '.join(available_backends())}"
        if name in BENCH_ONLY:
            known += f"; {name!r} is an option of {BENCH_ONLY[name]} only"
        raise KeyError(f"unknown backend ({known})") from None
    config = entry.config
    return _load(config) if isinstance(config, str) else config


def create_backend(config: GuardConfig) -> Backend:
    """Build the backend named by `config.model.backend`.

    Raises:
        ConfigError: No backend has that name (a config validated against another registry).
    """
    name = config.model.backend
    try:
        target = _REGISTRY[name].backend
    except KeyError:
        raise ConfigError(
            f"model.backend = {name!r}: unknown backend (known: {', '.join(available_backends())})"
        ) from None
    backend: Backend = _load(target).from_config(config)  # type: ignore[attr-defined]
    return backend


def model_options(config: GuardConfig, cls: type[_M]) -> _M:
    """`config.model` as the backend's own config class.

    Raises:
        ConfigError: The model section is another backend's (a backend registered with
            a config class it cannot read).
    """
    model = config.model
    if not isinstance(model, cls):
        raise ConfigError(
            f"model.backend = {model.backend!r}: its config ({type(model).__name__}) is not "
            f"the {cls.__name__} this backend reads; register it with config={cls.__name__}"
        )
    return model


__all__ = [
    "BENCH_ONLY",
    "Backend",
    "ChatPrompt",
    "JudgeOutput",
    "JudgeRequest",
    "available_backends",
    "backend_config_class",
    "create_backend",
    "model_options",
    "register_backend",
]
