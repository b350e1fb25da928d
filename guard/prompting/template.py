"""Prompt templates as data: YAML files with a system and a user part, chosen by name or path."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import yaml
from PIL import Image

from guard.backends.base import ChatPrompt
from guard.errors import ConfigError
from guard.prompting.parser import ANSWER_MODES, DEFAULT_ANSWER_MODE
from guard.prompting.untrusted import untrusted_text
from guard.types import Verdict

TEMPLATE_DIR = Path(__file__).parent / "templates"
_PLACEHOLDER = re.compile(r"\{(action|n_frames)\}")
# The verdict words, filled in at load: a template names them, it does not spell them.
_WORD_PLACEHOLDER = re.compile(r"\{(allow|annotate|veto)\}")


def _with_words(text: str) -> str:
    return _WORD_PLACEHOLDER.sub(lambda m: Verdict(m.group(1)).word, text)


@dataclass(frozen=True)
class PromptTemplate:
    """A judge prompt: its system and user parts, and the answer mode they ask for.

    Attributes:
        name: The template's name.
        system: The system turn.
        user: The user turn, with the ``{action}`` (and optionally ``{n_frames}``) placeholder.
        answer_mode: ``verdict_first`` (the deployed fast path) or ``projection_first`` (the
            consequence projection, then the verdict); the parser reads answers in this mode.
    """

    name: str
    system: str
    user: str
    answer_mode: str = DEFAULT_ANSWER_MODE

    def render(self, action: str, images: tuple[Image.Image, ...] = ()) -> ChatPrompt:
        """The judge's prompt for `action` on `images`.

        This is where untrusted text enters a prompt, and the only place: `action` (the
        proposal's description, tool name and arguments as one text) goes through
        `untrusted_text`, so no backend ever tokenizes a control token out of it.
        """
        fields = {"action": untrusted_text(action), "n_frames": str(len(images))}
        # One pass over the template, not str.format or a replace per field: the action may
        # hold braces, and "{n_frames}" inside an action is text, not a placeholder.
        user = _PLACEHOLDER.sub(lambda m: fields.get(m.group(1), m.group(0)), self.user)
        return ChatPrompt(system=self.system, user=user, images=tuple(images))


def available_templates() -> list[str]:
    return sorted(p.stem for p in TEMPLATE_DIR.glob("*.yaml"))


#: The template of a judge whose training recorded none (and of remote judges).
DEFAULT_TEMPLATE = "consequence_v1"
#: Written by `training/` beside every model it saves (and copied by `guard export onnx`).
TRAINING_RUN_CONFIG = "training_run_config.yaml"


def trained_field(model: str | Path | None, key: str) -> str | None:
    """``data.<key>`` of a model folder's ``training_run_config.yaml`` (how training prompted
    it), or None when the folder records none."""
    if model is None:
        return None
    path = Path(model) / TRAINING_RUN_CONFIG
    if not path.is_file():
        return None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None
    value = (data.get("data") or {}).get(key) if isinstance(data, dict) else None
    return value if isinstance(value, str) and value else None


def trained_template(model: str | Path | None) -> str | None:
    """The prompt template a model folder was trained with, or None."""
    return trained_field(model, "template")


def resolve_template(template: str | None, model: str | Path | None) -> str:
    """The configured template; unset (None), the one the model was trained with, else the
    default. A judge read with another template than its training's answers off-format, and
    the guard then fails closed on every check."""
    if template is not None:
        return template
    return trained_template(model) or DEFAULT_TEMPLATE


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
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply to read") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: bad UTF-8, a 5000-digit int
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{path}: not valid YAML: {first}") from None
    if not isinstance(data, dict) or not isinstance(data.get("user"), str):
        raise ConfigError(f"{path}: a template needs a 'user' string (and optionally 'system')")
    if "{action}" not in data["user"]:
        raise ConfigError(f"{path}: the 'user' part must contain the {{action}} placeholder")
    mode = data.get("answer_mode", DEFAULT_ANSWER_MODE)
    if mode not in ANSWER_MODES:
        raise ConfigError(f"{path}: answer_mode = {mode!r}; expected one of "
                          f"{', '.join(ANSWER_MODES)}")
    return PromptTemplate(
        name=str(data.get("name", path.stem)),
        system=_with_words(str(data.get("system", ""))),
        user=_with_words(data["user"]),
        answer_mode=mode,
    )
