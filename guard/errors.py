"""The exception tree, written once.

GuardError
├── UsageError            the caller's mistake: bad flags, a missing file, a bad config value
│   └── ConfigError       a config file or value that does not validate
├── InvalidInputError     an input that cannot be judged (bad image, oversized action text)
├── MissingExtraError     an optional stack is not installed; names the extra to install
├── AuditError            a decision record could not be written whole (also an OSError);
│                         the decision becomes a veto with status=error
├── BackendError          the judge failed (load or inference); becomes status=error
│   └── BackendTimeout    the judge did not answer within its deadline; becomes status=timeout
└── ActionVetoed          the guard vetoed a tool call (middleware); carries the decision

Usage mistakes surface as one line on stderr; runtime failures become fail-closed decisions.
"""

from __future__ import annotations

#: The longest tool name a message repeats whole. A hostile or broken caller can send a
#: name of megabytes (a check refuses it as over ``max_action_chars``); the message that
#: says so goes back to the agent, whose context it would flood.
MAX_SHOWN_NAME = 120


def shown_name(name: object) -> str:
    """A tool name as messages show it: whole up to `MAX_SHOWN_NAME` characters, else cut
    and marked with its length. The audit record keeps the decision; a message only has to
    let its reader recognise the tool."""
    text = name if isinstance(name, str) else str(name)
    if len(text) <= MAX_SHOWN_NAME:
        return text
    return f"{text[:MAX_SHOWN_NAME]}...({len(text)} characters)"


class GuardError(Exception):
    """Base of every error the guard raises on purpose."""


class UsageError(GuardError):
    """The caller asked for something that cannot be done as asked."""


class ConfigError(UsageError):
    """A configuration that does not validate. The message names the field and the value."""


class InvalidInputError(GuardError):
    """An input the guard cannot judge: undecodable or absurdly large image, oversized text."""


class MissingExtraError(GuardError, ImportError):
    """An optional dependency is missing."""

    def __init__(self, package: str, extra: str, feature: str, also: str = "") -> None:
        # An empty extra is the core install (a broken environment, not a missing stack).
        target = f"embodied-guard[{extra}]" if extra else "embodied-guard"
        super().__init__(f"{feature} needs the '{package}' package: pip install '{target}'{also}")
        self.package = package
        self.extra = extra


class AuditError(GuardError, OSError):
    """The audit log could not take a record whole (disk full, file-size limit, no lock).

    An OSError too, so callers that guarded the log's file operations keep catching it.
    """


class BackendError(GuardError):
    """The judge model failed to load or to answer."""


class BackendTimeout(BackendError):
    """The judge model did not answer within its deadline."""


class ActionVetoed(GuardError):
    """The guard vetoed a tool call: raised by `guard.middleware` in place of running it.

    Not a failure of the guard: the check ran (or failed closed) and said no.

    Attributes:
        decision: The `Decision` that blocked the call (`decision.status` says whether the
            judge answered or the check failed closed).
        proposal: The `ActionProposal` that was judged.
    """

    def __init__(self, decision: Decision, proposal: ActionProposal) -> None:
        why = decision.rationale or decision.error or ""
        super().__init__(
            f"{shown_name(proposal.name)}: vetoed by the guard (status={decision.status.value})"
            + (f": {why}" if why else "")
        )
        self.decision = decision
        self.proposal = proposal

    def __reduce__(self) -> tuple[type[ActionVetoed], tuple[Decision, ActionProposal]]:
        # pickle/copy rebuild exceptions from args; ours are the decision and the proposal
        return type(self), (self.decision, self.proposal)


# Appended with ActionVetoed; only for its annotations, so errors.py stays import-light.
from typing import TYPE_CHECKING  # noqa: E402

if TYPE_CHECKING:
    from guard.types import ActionProposal, Decision
