"""Prompt templates (data files) and the strict parser of the judge's answer."""

from guard.prompting.parser import ParsedAnswer, ParseError, parse_answer
from guard.prompting.template import PromptTemplate, load_template

__all__ = ["ParseError", "ParsedAnswer", "PromptTemplate", "load_template", "parse_answer"]
