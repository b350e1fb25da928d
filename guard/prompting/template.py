"""Prompt templates as data: YAML files with a system and a user part, chosen by name or path."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from PIL import Image

from guard.backends.base import ChatPrompt
from guard.errors import ConfigError

TEMPLATE_DIR = Path(__file__).parent / "templates"


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    system: str
    user: str

    def render(self, action: str, images: tuple[Image.Image, ...] = ()) -> ChatPrompt:
        fields = {"action": action, "n_frames": len(images)}
        # str.replace, not str.format: action text may hold braces of its own.
        user = self.user
        for key, value in fields.items():
            user = user.replace("{" + key + "}", str(value))
        return ChatPrompt(system=self.system, user=user, images=tuple(images))


def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


@lru_cache(maxsize=32)
def load_template(name_or_path: str) -> PromptTemplate:
    """A built-in template by name (`consequence_v1`) or a YAML file by path."""
    path = Path(name_or_path)
    if not path.suffix:
        path = TEMPLATE_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"prompt.template = {name_or_path!r}: no such template "
            f"(built-in: {', '.join(available_templates())})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise ConfigError(f"{path}: a template needs a 'user' string (and optionally 'system')")
    if "{action}" not in data["user"]:
        raise ConfigError(f"{path}: the 'user' part must contain the {{action}} placeholder")
    return PromptTemplate(
        name=str(data.get("name", path.stem)),
        system=str(data.get("system", "")),
        user=data["user"],
    )
