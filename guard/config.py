"""One YAML file, validated into typed models. `configs/default.yaml` documents every field.

A bad value gives a ConfigError naming the field and the value, e.g.
``policy.veto_threshold = 'high': Input should be a valid number``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from guard.errors import ConfigError
from guard.types import Verdict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class OpenAIOptions(_Strict):
    """An OpenAI-compatible server (vLLM, SGLang, ...)."""

    base_url: str = "http://localhost:8000/v1"
    api_key_env: str = "OPENAI_API_KEY"
    timeout_s: float = Field(default=10.0, gt=0)
    temperature: float = Field(default=0.0, ge=0)
    logprobs: bool = True
    extra_body: dict[str, Any] = Field(default_factory=dict)
    # How frames travel: png is lossless (the server judges the pixels a local judge would);
    # jpeg (quality 90) is ~5-10x smaller, for thin links.
    image_format: Literal["png", "jpeg"] = "png"


class ScriptedStep(_Strict):
    """One scripted answer: a text, a delay, or an exception to raise."""

    text: str = ""
    delay_ms: float = Field(default=0.0, ge=0)
    raise_error: str | None = None
    verdict_probs: dict[str, float] | None = None


class ScriptedOptions(_Strict):
    """The test double: answers from a list, cycling; or by matching the action text."""

    responses: list[ScriptedStep] = Field(
        default_factory=lambda: [ScriptedStep(text="ALLOW\nrisk: 0.0")]
    )
    by_action: dict[str, ScriptedStep] = Field(default_factory=dict)


class ModelConfig(_Strict):
    backend: str = "transformers"
    id: str | None = None
    adapter: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    attn_implementation: str | None = None
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    use_processor: Literal["auto", "always", "never"] = "auto"
    rationale: Literal["sync", "async", "off"] = "sync"
    prefix_cache: bool = True
    frame_cache: int = Field(default=4, ge=0, le=256)
    # One throwaway judgement when the guard is built, so that first-call costs (seconds on
    # a CPU) fall on loading, not on the first real check's deadline.
    warmup: bool = True
    openai: OpenAIOptions = Field(default_factory=OpenAIOptions)
    scripted: ScriptedOptions = Field(default_factory=ScriptedOptions)


GRID_FACTORS = {"qwen2-vl": 28, "qwen2.5-vl": 28, "qwen3-vl": 32}
"""Side multiple of each Qwen-VL family's image grid: patch size x merge (14 x 2, 16 x 2)."""


class ImageConfig(_Strict):
    """How frames are sized for the judge (the rule: `guard.imaging`)."""

    # The pixel budget: the guard's area bounds; a local model folder's processor bounds
    # apply where tighter.
    max_pixels: int = Field(default=401_408, ge=784)
    min_pixels: int = Field(default=3_136, ge=1)
    # Side multiple of a judge that cannot report its own grid (a remote server whose model
    # folder is not readable here): a number, or a family name from GRID_FACTORS.
    grid_factor: int = Field(default=28, ge=1, le=1024)
    max_frames: int = Field(default=1, ge=1, le=16)
    max_input_pixels: int = Field(default=50_000_000, ge=1)
    max_file_bytes: int = Field(default=64 * 1024 * 1024, ge=1)

    @field_validator("grid_factor", mode="before")
    @classmethod
    def _family(cls, value: Any) -> Any:
        if isinstance(value, str) and not value.strip().isdigit():
            try:
                return GRID_FACTORS[value.strip().lower()]
            except KeyError:
                raise ValueError(
                    f"expected a side multiple or one of {', '.join(GRID_FACTORS)}"
                ) from None
        return value

    @model_validator(mode="after")
    def _order(self) -> ImageConfig:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"min_pixels ({self.min_pixels}) is larger than max_pixels ({self.max_pixels})"
            )
        return self


class PromptConfig(_Strict):
    template: str | None = None
    """A built-in template name or a YAML path; None: the template the model folder was
    trained with (its training_run_config.yaml), else consequence_v1."""
    action_format: str | None = None
    """How a proposal becomes the judge's action text (guard/prompting/action.py):
    tool_call_v1 or phrase_v0; None: the format the model folder was trained with, else
    tool_call_v1."""


class RuleMatch(_Strict):
    """All given fields must match (regular expressions, searched, case-insensitive)."""

    tool: str | None = None
    text: str | None = None
    arguments: dict[str, str] = Field(default_factory=dict)


class Rule(_Strict):
    """A deterministic rule. `veto` and `allow` decide without the model; `annotate` adds a
    warning and still asks the model. When several rules match, the most restrictive wins."""

    name: str
    match: RuleMatch
    verdict: Verdict
    reason: str = ""


class PolicyConfig(_Strict):
    name: str = "default"
    mode: Literal["enforce", "shadow"] = "enforce"
    veto_threshold: float = Field(default=0.5, ge=0.0, le=1.0)
    annotate_threshold: float = Field(default=0.3, ge=0.0, le=1.0)
    deadline_ms: float = Field(default=5000.0, gt=0)
    max_frame_age_ms: float | None = Field(default=1000.0, gt=0)
    # A frame stamped further ahead of the guard's clock than this is stale: the clocks
    # disagree, and nothing then bounds how old the picture is (guard/freshness.py).
    max_clock_skew_ms: float = Field(default=100.0, ge=0, allow_inf_nan=False)
    on_failure: Literal["veto", "allow"] = "veto"
    require_frame: bool = True
    max_action_chars: int = Field(default=8192, ge=1)
    max_inflight: int = Field(default=4, ge=1, le=256)
    rules: list[Rule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _thresholds(self) -> PolicyConfig:
        if self.annotate_threshold > self.veto_threshold:
            raise ValueError(
                f"annotate_threshold ({self.annotate_threshold}) is above "
                f"veto_threshold ({self.veto_threshold})"
            )
        return self

    def fingerprint(self) -> str:
        """`name@hash`: the policy's identity in every decision."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return f"{self.name}@{hashlib.sha256(blob).hexdigest()[:12]}"


def _default_audit_path() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(Path.home(), ".local", "state")
    return os.path.join(base, "embodied-guard", "audit.jsonl")


class AuditConfig(_Strict):
    path: str = Field(default_factory=_default_audit_path)
    fsync: bool = False
    include_prompt: bool = False
    # Rotate to path.1, path.2, ... (oldest first) before a record would take the file past
    # max_bytes; the chain goes on into the new file. None: one file, never rotated.
    max_bytes: int | None = Field(default=None, ge=1024)
    # Rotated files to keep (older ones are deleted; verify then starts at the oldest kept).
    # None: keep all.
    keep: int | None = Field(default=None, ge=0)


class GuardConfig(_Strict):
    model: ModelConfig = Field(default_factory=ModelConfig)
    image: ImageConfig = Field(default_factory=ImageConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> GuardConfig:
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source)) from None

    def with_overrides(self, **dotted: Any) -> GuardConfig:
        """A copy with `section.field=value` overrides, validated (None sets a field to null)."""
        data = self.model_dump(mode="json")
        for key, value in dotted.items():
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        return GuardConfig.from_dict(data, source="overrides")


def _describe(exc: ValidationError, source: str) -> str:
    """One line per problem: where, the value given, what is wrong."""
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("missing",):
            lines.append(f"{source}: {where}: {msg}")
        elif err["type"] == "extra_forbidden":
            lines.append(f"{source}: {where}: unknown field")
        else:
            lines.append(f"{source}: {where} = {err.get('input')!r}: {msg}")
    return "; ".join(lines)


def load_config(path: str | Path | None = None) -> GuardConfig:
    """Load and validate a YAML config; None gives the defaults."""
    if path is None:
        return GuardConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{p}: not valid YAML: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return GuardConfig.from_dict(data, source=str(p))
