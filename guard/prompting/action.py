"""The one rendering of a proposal into the judge's words, and which rendering a model reads.

A judge reads an action as one line of text inside its prompt template's ``{action}``. That
line is written here and nowhere else: the core (`ActionProposal.as_text`, for every front end:
ROS node, middleware, replay, bench, server, MCP proxy, demo) and training
(`training.data.prompt_messages`) both call `render_action`, so a model is judged on exactly
the text it was trained on.

Formats, by identifier:

- ``tool_call_v1`` (the default): the description, the tool name in brackets, then the
  arguments as sorted JSON when there are any::

      turn on the stove (tool: stove_on) arguments: {"burner": 2}
      move_forward arguments: {"distance_m": 1.0}     # no description: the name leads
      stove_on                                        # no description, no arguments

- ``phrase_v0``: the description alone (the tool name when there is none), no tool name and no
  arguments. What models trained before the rendering was recorded read (training then
  rendered the world's phrase only); kept so such a folder can record what it was trained on.

Which format a model reads is recorded beside its template, as ``data.action_format`` in the
model folder's ``training_run_config.yaml`` (training writes it). A folder that records none
reads the default (`DEFAULT_ACTION_FORMAT`). A recorded format this code does not know is an
error, not a guess: a judge read in another format than its training's answers off-format and
the guard would fail closed on every check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from guard.errors import ConfigError
from guard.prompting.template import TRAINING_RUN_CONFIG, trained_field

#: The rendering of a model folder that records none (and of remote judges).
DEFAULT_ACTION_FORMAT = "tool_call_v1"
#: The tool name of a proposal built from an item that names none (a benchmark or training
#: record with a ``query`` and no ``tool``).
UNNAMED_TOOL = "action"


def _arguments_json(arguments: Mapping[str, Any]) -> str:
    # Sorted keys: the same arguments give the same text whatever order a caller built them in.
    return json.dumps(arguments, sort_keys=True, default=str)


def _tool_call_v1(name: str, description: str, arguments: Mapping[str, Any]) -> str:
    parts = [description or name]
    if description:
        parts.append(f"(tool: {name})")
    if arguments:
        parts.append("arguments: " + _arguments_json(arguments))
    return " ".join(parts)


def _phrase_v0(name: str, description: str, arguments: Mapping[str, Any]) -> str:
    return description or name


_RENDERERS: dict[str, Callable[[str, str, Mapping[str, Any]], str]] = {
    "tool_call_v1": _tool_call_v1,
    "phrase_v0": _phrase_v0,
}
#: Every format identifier `render_action` knows.
ACTION_FORMATS: tuple[str, ...] = tuple(_RENDERERS)


def check_action_format(action_format: str) -> str:
    """`action_format` if it is a known identifier.

    Raises:
        ConfigError: an unknown identifier (the message lists the known ones).
    """
    if action_format not in _RENDERERS:
        raise ConfigError(
            f"action_format = {action_format!r}: unknown (known: {', '.join(ACTION_FORMATS)})"
        )
    return action_format


def render_action(
    name: str,
    description: str = "",
    arguments: Mapping[str, Any] | None = None,
    action_format: str | None = None,
) -> str:
    """A proposal as the judge reads it.

    Args:
        name: The tool name.
        description: What the action does, in words ("" when the caller gave none).
        arguments: The tool's arguments (plain JSON data; `ActionProposal` makes them so).
        action_format: A format identifier; None is `DEFAULT_ACTION_FORMAT`.

    Raises:
        ConfigError: an unknown `action_format`.
    """
    fmt = check_action_format(action_format or DEFAULT_ACTION_FORMAT)
    return _RENDERERS[fmt](name.strip(), description.strip(), arguments or {})


def trained_action_format(model: str | Path | None) -> str | None:
    """The action format a model folder was trained with (``data.action_format`` of its
    ``training_run_config.yaml``), or None when the folder records none."""
    return trained_field(model, "action_format")


def resolve_action_format(action_format: str | None, model: str | Path | None) -> str:
    """The configured format; unset (None), the one the model folder records, else the default.

    Raises:
        ConfigError: the configured or recorded format is unknown (the folder's file is named).
    """
    if action_format is not None:
        return check_action_format(action_format)
    recorded = trained_action_format(model)
    if recorded is None:
        return DEFAULT_ACTION_FORMAT
    try:
        return check_action_format(recorded)
    except ConfigError as exc:
        raise ConfigError(f"{Path(str(model)) / TRAINING_RUN_CONFIG}: data.{exc}") from None


__all__ = [
    "ACTION_FORMATS",
    "DEFAULT_ACTION_FORMAT",
    "TRAINING_RUN_CONFIG",
    "UNNAMED_TOOL",
    "check_action_format",
    "render_action",
    "resolve_action_format",
    "trained_action_format",
]
