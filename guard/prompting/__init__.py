"""Prompt templates (data files), the one rendering of a proposal into the judge's words, and
the strict parser of the judge's answer."""

from guard.prompting.action import (
    ACTION_FORMATS,
    DEFAULT_ACTION_FORMAT,
    render_action,
    resolve_action_format,
    trained_action_format,
)
from guard.prompting.parser import (
    ANSWER_MODES,
    DEFAULT_ANSWER_MODE,
    ParsedAnswer,
    ParseError,
    parse_answer,
)
from guard.prompting.template import (
    DEFAULT_TEMPLATE,
    PromptTemplate,
    load_template,
    resolve_template,
    trained_template,
)

__all__ = ["ACTION_FORMATS", "ANSWER_MODES", "DEFAULT_ACTION_FORMAT", "DEFAULT_ANSWER_MODE",
           "DEFAULT_TEMPLATE", "ParseError",
           "ParsedAnswer", "PromptTemplate", "load_template", "parse_answer", "render_action",
           "resolve_action_format", "resolve_template", "trained_action_format",
           "trained_template"]
