"""Safety constitutions: privileged context that only CASPO's teacher reads.

A constitution is a YAML template file with a ``system`` and optionally a ``user`` part, each
holding the student's own text through a placeholder (``{system}``, ``{user}``)::

    name: hazardworld
    system: |-
      {system}
      Safety constitution. ...
    user: "{user}"

`Constitution.apply` turns the student's chat prompt into the teacher's: same images, same
action, same answer format, plus the principles. Built-in constitutions live in
``training/constitutions/`` and are named without their suffix (``hazardworld``).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from guard.errors import ConfigError

CONSTITUTION_DIR = Path(__file__).parent / "constitutions"


@dataclass(frozen=True)
class Constitution:
    """A loaded constitution template.

    Attributes:
        name: Its name (the file's ``name`` field, or its stem).
        system: Template of the teacher's system text; ``{system}`` is the student's.
        user: Template of the teacher's user text; ``{user}`` is the student's.
        path: Where it was read from.
    """

    name: str
    system: str
    user: str = "{user}"
    path: str = ""

    @property
    def text(self) -> str:
        """The privileged text itself (the templates without their placeholders)."""
        parts = [self.system.replace("{system}", ""), self.user.replace("{user}", "")]
        return "\n".join(p.strip() for p in parts if p.strip())

    def apply(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The teacher's version of a chat prompt (a new list; `messages` is not modified).

        The system turn is rewritten through ``system`` (one is added if the prompt has none);
        the text parts of the last user turn through ``user``. Image parts stay where they
        are, so the teacher sees the same pixels at the same place in its prompt.

        Args:
            messages: Chat messages; content is a string or a list of typed parts.

        Returns:
            The teacher's messages.
        """
        out = copy.copy(list(messages))
        sys_idx = next((i for i, m in enumerate(out) if m.get("role") == "system"), None)
        if sys_idx is None:
            student_system = ""
            out.insert(0, {"role": "system", "content": ""})
            sys_idx = 0
        else:
            student_system = _text_of(out[sys_idx].get("content"))
        teacher_system = self.system.replace("{system}", student_system).strip()
        out[sys_idx] = {**out[sys_idx], "content": _with_text(out[sys_idx]["content"],
                                                              teacher_system)}
        user_idx = max((i for i, m in enumerate(out) if m.get("role") == "user"), default=None)
        if user_idx is not None and self.user != "{user}":
            content = out[user_idx]["content"]
            teacher_user = self.user.replace("{user}", _text_of(content))
            out[user_idx] = {**out[user_idx], "content": _with_text(content, teacher_user)}
        return out


def _text_of(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(p.get("text") or "" for p in content if p.get("type") == "text")


def _with_text(content: Any, text: str) -> Any:
    """`content` with its text replaced by `text` (images kept, text parts merged into one)."""
    if content is None or isinstance(content, str):
        return [{"type": "text", "text": text}]
    parts = [dict(p) for p in content if p.get("type") != "text"]
    parts.append({"type": "text", "text": text})
    return parts


def available_constitutions() -> list[str]:
    """Names of the built-in constitutions."""
    return sorted(p.stem for p in CONSTITUTION_DIR.glob("*.yaml"))


def load_constitution(name_or_path: str | Path) -> Constitution:
    """A built-in constitution by name (``hazardworld``) or a YAML file by path.

    Raises:
        ConfigError: No such constitution, not valid YAML, or a template without its
            placeholder.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = CONSTITUTION_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"constitution = {str(name_or_path)!r}: no such file or built-in constitution "
            f"(built-in: {', '.join(available_constitutions())})"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(data, dict) or not isinstance(data.get("system"), str):
        raise ConfigError(f"{path}: a constitution needs a 'system' string")
    system, user = data["system"], str(data.get("user", "{user}"))
    if "{system}" not in system:
        raise ConfigError(f"{path}: 'system' must contain the {{system}} placeholder")
    if "{user}" not in user:
        raise ConfigError(f"{path}: 'user' must contain the {{user}} placeholder")
    return Constitution(name=str(data.get("name", path.stem)), system=system, user=user,
                        path=str(path))


__all__ = ["Constitution", "available_constitutions", "load_constitution"]
