"""Prompt templates (data files) and the strict parser of the judge's answer."""

from guard.prompting.parser import ParsedAnswer, ParseError, parse_answer
from guard.prompting.template import (
    DEFAULT_TEMPLATE,
    PromptTemplate,
    load_template,
    resolve_template,
    trained_template,
)

__all__ = ["DEFAULT_TEMPLATE", "ParseError", "ParsedAnswer", "PromptTemplate", "load_template",
           "parse_answer", "resolve_template", "trained_template"]
