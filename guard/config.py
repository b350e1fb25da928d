"""One YAML file, validated into typed models. `configs/default.yaml` documents every field.

A bad value gives a ConfigError naming the field and the value, e.g.
``policy.veto_threshold = 'high': Input should be a valid number``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import reprlib
import typing
from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializeAsAny,
    ValidationError,
    ValidationInfo,
    ValidatorFunctionWrapHandler,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from guard.errors import ConfigError
from guard.imaging import DEFAULT_MAX_INPUT_PIXELS
from guard.types import Verdict


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        """A boolean is not a number here: pydantic reads true as 1, so YAML's `on`/`yes` for
        `veto_threshold` silently became 1.0 (only a certain risk vetoed)."""
        if isinstance(value, bool) and info.field_name in _numeric_fields(cls):
            raise ValueError(f"expected a number, got the boolean {value}")
        return value


@functools.cache
def _numeric_fields(cls: type[BaseModel]) -> frozenset[str]:
    """The fields of `cls` that take numbers and not booleans."""
    out = set()
    for name, info in cls.model_fields.items():
        kinds = set(typing.get_args(info.annotation)) or {info.annotation}
        if kinds & {int, float} and bool not in kinds:
            out.add(name)
    return frozenset(out)


#: The longest deadline a policy may set: a day. A deadline is a promise that a hung judge is
#: a veto; an infinite one (or one past the thread timeout limit) made none.
MAX_DEADLINE_MS = 86_400_000.0


class ModelConfig(_Strict):
    """The judge: the fields every backend shares. Each backend extends it with its own
    (`TransformersModelConfig`, `OpenAIModelConfig`, ... beside the backend), and
    `model.backend` picks the class through the registry (`guard.backends`), so a field of
    another backend is an error when the config is loaded."""

    backend: str = "transformers"
    id: str | None = None
    max_new_tokens: int = Field(default=128, ge=1, le=8192)
    rationale: Literal["sync", "async", "off"] = "sync"
    # One throwaway judgement when the guard is built, so that first-call costs (seconds on
    # a CPU) fall on loading, not on the first real check's deadline.
    warmup: bool = True

    foreign_hints: ClassVar[dict[str, str]] = {}
    """What to do instead, for a field of another backend that users reach for here."""


DEFAULT_BACKEND = "transformers"

# Moved beside their backends; still importable from here.
_MOVED = {
    "OpenAIOptions": "guard.backends.openai_backend",
    "ScriptedOptions": "guard.backends.scripted",
    "ScriptedStep": "guard.backends.scripted",
}


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _default_model() -> ModelConfig:
    from guard.backends import backend_config_class

    return backend_config_class(DEFAULT_BACKEND)()


GRID_FACTORS = {"qwen2-vl": 28, "qwen2.5-vl": 28, "qwen3-vl": 32}
"""Side multiple of each Qwen-VL family's image grid: patch size x merge (14 x 2, 16 x 2)."""


#: The most frames one check may judge (`image.max_frames`); a request may carry no more.
MAX_FRAMES = 16


class ImageConfig(_Strict):
    """How frames are sized for the judge (the rule: `guard.imaging`)."""

    # The pixel budget: the guard's area bounds; a local model folder's processor bounds
    # apply where tighter.
    # At most what a frame may hold on arrival: min_pixels up to it once made every frame
    # 10^10 pixels on its way to the judge (30 GB, a MemoryError or the OOM killer).
    max_pixels: int = Field(default=401_408, ge=784, le=DEFAULT_MAX_INPUT_PIXELS)
    min_pixels: int = Field(default=3_136, ge=1)
    # Side multiple of a judge that cannot report its own grid (a remote server whose model
    # folder is not readable here): a number, or a family name from GRID_FACTORS.
    grid_factor: int = Field(default=28, ge=1, le=1024)
    max_frames: int = Field(default=1, ge=1, le=MAX_FRAMES)
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
    deadline_ms: float = Field(default=5000.0, gt=0, le=MAX_DEADLINE_MS)
    # None switches the age check off; infinity is not another way to say it (1e400 in YAML
    # is infinity, and a typo must not silently accept a frame of any age).
    max_frame_age_ms: float | None = Field(default=1000.0, gt=0, allow_inf_nan=False)
    # A frame stamped further ahead of the guard's clock than this is stale: the clocks
    # disagree, and nothing then bounds how old the picture is (guard/freshness.py).
    max_clock_skew_ms: float = Field(default=100.0, ge=0, allow_inf_nan=False)
    on_failure: Literal["veto", "allow"] = "veto"
    require_frame: bool = True
    max_action_chars: int = Field(default=8192, ge=1)
    # Action text written in the judge's answer format (`guard.prompting.untrusted.
    # imitates_answer`) is refused as invalid_input before any model reads it.
    refuse_answer_format: bool = True
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
    model: SerializeAsAny[ModelConfig] = Field(default_factory=_default_model)
    image: ImageConfig = Field(default_factory=ImageConfig)
    prompt: PromptConfig = Field(default_factory=PromptConfig)
    policy: PolicyConfig = Field(default_factory=PolicyConfig)
    audit: AuditConfig = Field(default_factory=AuditConfig)

    @field_validator("model", mode="wrap")
    @classmethod
    def _backend_class(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """Validate `model` against the config class its `backend` registered."""
        from guard.backends import backend_config_class

        if isinstance(value, ModelConfig):
            name: Any = value.backend
            data: Any = value.model_dump(exclude_unset=True) | {"backend": name}
        elif isinstance(value, dict):
            name, data = value.get("backend", DEFAULT_BACKEND), value
        else:
            return handler(value)  # pydantic's own "not a mapping" error
        if not isinstance(name, str):
            return handler(value)  # the base class says what a backend name is
        try:
            config_cls = backend_config_class(name)
        except KeyError as exc:
            raise ValidationError.from_exception_data("ModelConfig", [{
                "type": PydanticCustomError("unknown_backend", str(exc.args[0])),
                "loc": ("backend",), "input": name,
            }]) from None
        if type(value) is config_cls:
            return value
        return config_cls.model_validate(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> GuardConfig:
        """Validate a mapping; a problem is one ConfigError line naming each bad field.

        Raises:
            ConfigError: The data does not validate.
        """
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise ConfigError(_describe(exc, source, data)) from None

    def with_overrides(self, source: str = "overrides", /, **dotted: Any) -> GuardConfig:
        """A copy with `section.field=value` overrides, validated (None sets a field to null).

        A new `model.backend` re-validates the model section against that backend's class:
        the shared fields carry over, the old backend's fields at their defaults are dropped,
        and one set otherwise (in the config or in `dotted`) that the new backend lacks is an
        error naming it.

        Raises:
            ConfigError: An override does not validate (the message starts with `source`).
        """
        data = self.model_dump(mode="json")
        for key, value in dotted.items():
            node = data
            *parents, leaf = key.split(".")
            for p in parents:
                node = node.setdefault(p, {})
            node[leaf] = value
        model = data.get("model")
        if isinstance(model, dict) and model.get("backend") != self.model.backend:
            data["model"] = _carried(self.model, model)
        return GuardConfig.from_dict(data, source=source)


def _carried(old: ModelConfig, new: dict[str, Any]) -> dict[str, Any]:
    """`new` (the model section after overrides) without the old backend's own fields that
    are still at their defaults: they mean nothing to the new backend."""
    shared = set(ModelConfig.model_fields)
    out = {}
    for name, value in new.items():
        field = type(old).model_fields.get(name)
        if name not in shared and field is not None and not field.is_required():
            default = field.get_default(call_default_factory=True, validated_data={})
            if isinstance(default, BaseModel):
                default = default.model_dump(mode="json")
            if value == default:
                continue
        out[name] = value
    return out


def _foreign(field: str, backend: str) -> str:
    """Why `model.<field>` is refused for `backend`: the backends that have it, and a hint."""
    from guard.backends import available_backends, backend_config_class

    owners = []
    hint = ""
    for name in available_backends():
        try:
            config_cls = backend_config_class(name)
        except Exception:  # a third party's class that does not import says nothing here
            continue
        if field in config_cls.model_fields:
            owners.append(name)
        if name == backend:
            hint = config_cls.foreign_hints.get(field, "")
    text = f"not a field of the {backend} backend"
    if owners:
        text += f" (a field of {', '.join(owners)})"
    return f"{text}; {hint}" if hint else text


def _describe(exc: ValidationError, source: str, data: Any = None) -> str:
    """One line per problem: where, the value given, what is wrong."""
    model = data.get("model") if isinstance(data, dict) else None
    backend = model.get("backend", DEFAULT_BACKEND) if isinstance(model, dict) else None
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] in ("missing",):
            lines.append(f"{source}: {where}: {msg}")
        elif err["type"] == "extra_forbidden":
            if len(err["loc"]) == 2 and err["loc"][0] == "model" and isinstance(backend, str):
                lines.append(f"{source}: {where}: {_foreign(str(err['loc'][1]), backend)}")
            else:
                lines.append(f"{source}: {where}: unknown field")
        else:
            lines.append(f"{source}: {where} = {_bounded_repr(err.get('input'))}: {msg}")
    return "; ".join(lines)


def _bounded_repr(value: Any) -> str:
    """The value given, for an error line: a few levels and items of it, never all (a YAML
    alias bomb expands to a billion items when written out in full)."""
    short = reprlib.Repr()
    short.maxlevel, short.maxstring, short.maxother = 2, 80, 80
    short.maxlist = short.maxtuple = short.maxdict = short.maxset = 4
    return short.repr(value)


def load_config(path: str | Path | None = None) -> GuardConfig:
    """Load and validate a YAML config; None gives the defaults."""
    if path is None:
        return GuardConfig()
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except RecursionError:
        raise ConfigError(f"{p}: not valid YAML: nested too deeply to read") from None
    except (yaml.YAMLError, ValueError) as exc:  # ValueError: bad UTF-8, an int over 4300 digits
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"{p}: not valid YAML: {first}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping, got {type(data).__name__}")
    return GuardConfig.from_dict(data, source=str(p))
