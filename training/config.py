"""The typed configuration of one training run, read from YAML and saved next to its output.

One file says everything about a run::

    method: caspo                    # sft | grpo | dpo | caspo
    seed: 0
    model:
      id: Qwen/Qwen2.5-VL-7B-Instruct   # hub id or folder (a previous run's model/ folder)
      dtype: bfloat16
      quantization: none             # none | 8bit | 4bit (QLoRA with lora:)
      lora: {r: 16, alpha: 32}       # omit for full fine-tuning
    data:
      train: {source: world, split: train, n: 2000}
      template: consequence_compact
    trainer:                         # the trl config of the method, field by field
      learning_rate: 1.0e-6
      num_generations: 8
      caspo_lambda: 0.5              # CASPO's own knobs live in CASPOConfig (caspo_trainer.py)

``trainer`` is checked by building the method's trl config class (``SFTConfig``, ``GRPOConfig``,
``DPOConfig`` or `training.caspo_trainer.CASPOConfig`) when the file is loaded, so a typo or a
bad value fails before any model loads, with the key named. The resolved file is written to
``OUT/run_config.yaml`` and into every checkpoint and the final model folder.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Annotated, Any, Literal

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
from guard.prompting.action import ACTION_FORMATS, DEFAULT_ACTION_FORMAT

Method = Literal["sft", "grpo", "dpo", "caspo"]
METHODS: tuple[str, ...] = ("sft", "grpo", "dpo", "caspo")

# Qwen-VL language-model linear layers; the vision tower (``model.visual``) stays frozen.
DEFAULT_LORA_TARGETS = (
    r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSpec(_Strict):
    """A LoRA adapter on the language model (QLoRA when the model is quantized)."""

    r: int = Field(default=16, ge=1)
    alpha: float = Field(default=32.0, gt=0)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = DEFAULT_LORA_TARGETS
    modules_to_save: list[str] | None = None


class ModelSpec(_Strict):
    """Which model to train and how to hold it.

    Attributes:
        id: Hub id or local folder (e.g. the ``model/`` folder a previous run wrote).
        adapter: A PEFT adapter folder to start from (e.g. an SFT run's LoRA). Merged into the
            weights when the model is not quantized; trained further when it is (QLoRA).
        dtype: Weight dtype; "auto" is bfloat16 on CUDA, float32 on CPU.
        quantization: "none", "8bit" or "4bit" (bitsandbytes NF4, double quantization).
        lora: LoRA settings; None trains every weight (not allowed with quantization).
        attn_implementation: Passed to ``from_pretrained`` ("sdpa", "flash_attention_2").
        use_processor: "auto", "always" or "never" use the stock processor (see
            `training.processor`).
    """

    id: str
    adapter: str | None = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    quantization: Literal["none", "8bit", "4bit"] = "none"
    lora: LoraSpec | None = None
    attn_implementation: str | None = None
    use_processor: Literal["auto", "always", "never"] = "auto"

    @model_validator(mode="after")
    def _lora_needed(self) -> ModelSpec:
        if self.lora is None and self.quantization != "none":
            raise ValueError("a quantized model trains through LoRA: set model.lora (QLoRA)")
        return self


class WorldSource(_Strict):
    """Items of the synthetic world, rendered in memory (`training.data.world_items`)."""

    source: Literal["world"] = "world"
    split: Literal["train", "test_iid", "test_ood"] = "train"
    n: int = Field(ge=1)
    seed: int = 0
    start: int = Field(default=0, ge=0)
    preset: Literal["default", "easy", "hard"] = "default"
    overrides: dict[str, Any] = Field(default_factory=dict)
    house_rules: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of heating items with a house rule in their action text (`training.house_rules`)."""
    house_rule_seed: int = 0
    bare_phrase_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of items proposed as the bare phrase (`training.data.world_items`)."""
    unnamed_tool_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    """Share of items whose tool is unnamed, ``action`` (`training.data.world_items`)."""

    @model_validator(mode="after")
    def _world_valid(self) -> WorldSource:
        """A bad world override is refused with the recipe, not once the model is loaded."""
        check_world(self.overrides, self.preset, where="overrides")
        return self


def check_world(overrides: dict[str, Any], preset: str = "default", *, where: str) -> None:
    """Refuse world `overrides` that `WorldConfig` would, in one line naming each field.

    Raises:
        ValueError: ``"{where}.{field}: {what is wrong}"``, one per mistake, joined by "; ".
    """
    from guard.world import WorldConfig

    try:
        WorldConfig.preset(preset, **overrides)
    except ValidationError as exc:
        raise ValueError("; ".join(
            f"{where}.{'.'.join(map(str, e['loc']))}: "
            f"{e['msg'].removeprefix('Value error, ')}" for e in exc.errors())) from None


class FolderSource(_Strict):
    """An OOD-MMSafe-format folder (`training.data.folder_items`)."""

    source: Literal["folder"]
    path: str
    limit: int | None = Field(default=None, ge=1)


class DatasetSource(_Strict):
    """A Hugging Face dataset read by ``datasets.load_dataset`` (`training.data.load_hf_dataset`,
    `training.data.dataset_items`): a folder ``guard world generate`` wrote, another local
    dataset folder, or a hub id, with an ``image`` column and `FolderSource`'s columns."""

    source: Literal["dataset"]
    path: str
    split: str | None = None
    """The split; None takes the dataset's only split."""
    limit: int | None = Field(default=None, ge=1)


Source = Annotated[WorldSource | FolderSource | DatasetSource, Field(discriminator="source")]


class DataSpec(_Strict):
    """Where examples come from and how they are prompted.

    Attributes:
        train: The training items: one source, or a list of sources whose items are
            concatenated (the trainer shuffles them). A list can name a source twice, or a
            world source restricted to one rule beside the whole world, to oversample a rule
            that a mixed stage must not lose (docs/experiment, "The knife-near-child rule").
        eval: Optional evaluation items (trl's ``eval_strategy`` decides when).
        template: The guard prompt template (name or path), as the judge uses at inference.
        action_format: How a proposal is rendered into the prompt's action text
            (`guard.prompting.action`); recorded in the model folder, so the guard renders
            proposals the same way at inference.
        constitution: Privileged context used by `constitution_rate` (SFT) and, unless the
            trainer section sets its own, by CASPO's teacher.
        constitution_rate: SFT only: share of examples whose prompt carries the constitution,
            so that the model learns to use rules stated in its context.
        projection_rate: SFT only: share of examples in projection-first mode (prompted with
            `projection_template`; the answer writes the consequence projection, then the
            verdict), so that one model answers in both modes.
        projection_template: The projection-first template (of `projection_rate`, and,
            unless the trainer section sets its own, of CASPO's ``teacher_context:
            projection``).
        answer_label_tokens: SFT only: supervise each answer only through N tokens from its
            verdict (1: the verdict; a projection-first answer keeps its projection lines
            before it) and cut the sequence there; None (the
            default) supervises the whole answer. For a rule whose picture reaches the answer
            through the verdict alone (the knife rule: 1 token of 49-106), the whole answer's
            loss is too weak to leave the constant-answer plateau (docs/experiment, "Why the
            knife rule stays at chance"). The rest of the answer is then never trained (the
            model repeats its verdict): follow such a stage with a whole-answer one.
        verdict_loss_weight: SFT only: the verdict token's weight in the answer's loss, a
            weighted mean over the answer's tokens (the others weigh 1; 1.0, the default, is
            the plain token mean). The verdict gets the gradient while the whole answer, its
            format, stays supervised. Needs trl's default loss (``loss_type: nll``, no label
            smoothing), whose per-token terms it reweights (`training.sft`).
        unlabeled: CASPO only: extra prompts whose labels are dropped (scenes of the kind
            the guard will meet, with no one to label them). Their outcome reward is None, so
            their outcome advantage is zero and only the teacher's token reward trains on them:
            the one way the constitution can reach scenes no label covers.
    """

    train: Source | list[Source]
    eval: Source | None = None
    unlabeled: Source | None = None
    template: str = "consequence_compact"
    action_format: str = DEFAULT_ACTION_FORMAT
    constitution: str = "hazardworld"
    constitution_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    projection_rate: float = Field(default=0.0, ge=0.0, le=1.0)
    projection_template: str = "consequence_compact_projection"
    answer_label_tokens: int | None = Field(default=None, ge=1)
    verdict_loss_weight: float = Field(default=1.0, gt=0.0)

    @field_validator("train")
    @classmethod
    def _some_train_source(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("an empty list of sources: name at least one")
        return v

    @field_validator("action_format")
    @classmethod
    def _known_action_format(cls, v: str) -> str:
        if v not in ACTION_FORMATS:
            raise ValueError(f"unknown action format {v!r} (known: {', '.join(ACTION_FORMATS)})")
        return v


class RunConfig(_Strict):
    """One training run: method, model, data and the trainer's own config.

    Attributes:
        method: "sft", "grpo", "dpo" or "caspo".
        seed: Seeds weights of new adapters, sampling and data order.
        num_threads: torch CPU threads (None leaves torch's default).
        model: The model.
        data: The data.
        trainer: Fields of the method's trl config class (validated on load).
    """

    method: Method
    seed: int = 0
    num_threads: int | None = Field(default=None, ge=1)
    model: ModelSpec
    data: DataSpec
    trainer: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _answer_label_tokens_is_sft(self) -> RunConfig:
        if self.data.answer_label_tokens is not None and self.method != "sft":
            raise ValueError(f"data.answer_label_tokens is for sft (its labels); {self.method} "
                             "does not read it")
        return self

    @model_validator(mode="after")
    def _verdict_loss_weight_is_sft(self) -> RunConfig:
        if self.data.verdict_loss_weight == 1.0:
            return self
        if self.method != "sft":
            raise ValueError(f"data.verdict_loss_weight is for sft (its loss); {self.method} "
                             "does not read it")
        if self.trainer.get("loss_type", "nll") != "nll" or self.trainer.get(
                "label_smoothing_factor", 0.0):
            raise ValueError("data.verdict_loss_weight reweights trl's default loss: it needs "
                             "trainer.loss_type nll and no label_smoothing_factor")
        return self

    @model_validator(mode="after")
    def _unlabeled_needs_a_teacher(self) -> RunConfig:
        if self.data.unlabeled is not None and self.method != "caspo":
            raise ValueError(
                f"data.unlabeled is for caspo (its teacher scores them); {self.method} has "
                "nothing to learn from prompts without labels")
        return self

    def trainer_args(self, output_dir: str | Path) -> Any:
        """The method's trl config object, writing checkpoints under `output_dir`.

        Raises:
            ConfigError: A field the config class does not have, or a value it rejects.
        """
        cls = trainer_config_class(self.method)
        kwargs = self._trainer_kwargs(cls, output_dir)
        try:
            return cls(**kwargs)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"trainer ({cls.__name__}): {exc}") from None

    def _trainer_kwargs(self, cls: Any, output_dir: str | Path) -> dict[str, Any]:
        for key, value in self.trainer.items():
            if _has_nan(value):  # never a setting: trl would train on it, every loss NaN
                raise ConfigError(f"trainer.{key} = {value!r}: not a number (NaN)")
        kwargs = {"report_to": "none", "seed": self.seed, **self.trainer,
                  "output_dir": str(output_dir)}
        if self.method == "caspo":
            kwargs.setdefault("constitution", self.data.constitution)
            kwargs.setdefault("projection_template", self.data.projection_template)
        unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ConfigError(
                f"trainer: {cls.__name__} has no field(s) {unknown} (method {self.method!r})"
            )
        return kwargs

    def check_trainer_fields(self) -> None:
        """Check that every ``trainer`` key is a field of the method's config class, without
        building it (a GPU recipe's ``bf16`` or ``use_vllm`` cannot be built on a CPU box).

        Raises:
            ConfigError: An unknown field.
        """
        self._trainer_kwargs(trainer_config_class(self.method), "unused")

    def to_yaml(self) -> str:
        """The config as YAML (what `load_run_config` reads back)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)


def trainer_config_class(method: str) -> Any:
    """The trl config dataclass of a method (imports trl)."""
    if method == "sft":
        from trl import SFTConfig

        return SFTConfig
    if method == "grpo":
        from trl import GRPOConfig

        return GRPOConfig
    if method == "dpo":
        from trl import DPOConfig

        return DPOConfig
    if method == "caspo":
        from training.caspo_trainer import CASPOConfig

        return CASPOConfig
    raise ConfigError(f"method = {method!r}: expected one of {', '.join(METHODS)}")


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``a.b.c`` in nested dicts; a numeric part indexes a list (``warm_start.0.n``)."""
    node: Any = data
    parts = key.split(".")
    for p in parts[:-1]:
        if isinstance(node, list):
            if not p.isdigit() or int(p) >= len(node):
                raise ConfigError(f"--set {key}: {p!r} is not an index of a {len(node)}-item list")
            node = node[int(p)]
            continue
        child = node.get(p)
        if child is None:
            child = node[p] = {}
        if not isinstance(child, dict | list):
            raise ConfigError(f"--set {key}: {p!r} is not a section")
        node = child
    last = parts[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"--set {key}: {last!r} is not an index of a {len(node)}-item list")
        node[int(last)] = value
    else:
        node[last] = value


def _has_nan(value: Any) -> bool:
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, (list, tuple)):
        return any(_has_nan(v) for v in value)
    if isinstance(value, dict):
        return any(_has_nan(v) for v in value.values())
    return False


class _Loader(yaml.SafeLoader):
    """PyYAML reads YAML 1.1, where a float needs a dot: ``3e-5`` is the string "3e-5", which
    the trainer handed on to torch (a learning rate written the usual way ended in a
    TypeError inside the optimizer). This loader also reads exponent floats without a dot,
    as YAML 1.2 and JSON do."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_yaml(text: str) -> Any:
    """Parse a config's YAML text (safe; ``3e-5`` is a float, see `_Loader`)."""
    return yaml.load(text, Loader=_Loader)  # a SafeLoader: no arbitrary objects


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["trainer.max_steps=5", "model.id=/x"]`` to a dict; values are parsed as YAML."""
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {pair!r}: expected KEY=VALUE")
        out[key.strip()] = load_yaml(raw) if raw.strip() else None
    return out


#: pydantic's "the value is not of this form" errors: a union member the value does not take.
_SHAPE_ERRORS = frozenset({"list_type", "dict_type", "model_attributes_type", "model_type"})


def _error_lines(exc: ValidationError) -> list[str]:
    """One line per mistake, named by the config's own path. pydantic reports a union (a
    source or a list of sources) once per member: the member's label is left out of the path,
    and a member's "not of this form" error is dropped where another member names the mistake
    inside the value."""
    def path(e: Any) -> str:
        return ".".join(str(x) for x in e["loc"] if not (isinstance(x, str) and "[" in x))

    errors = exc.errors()
    inner = [path(e) for e in errors if e["type"] not in _SHAPE_ERRORS]
    kept = [e for e in errors if e["type"] not in _SHAPE_ERRORS
            or not any(p == path(e) or p.startswith(path(e) + ".") for p in inner)]
    def line(e: Any) -> str:
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "value_error" and isinstance(e.get("input"), dict):
            return f"{path(e)}: {msg}"  # a check over the whole section: its message names it
        return f"{path(e)}: {msg} (got {e.get('input')!r})"

    return [line(e) for e in kept]


def load_run_config(
    source: str | Path | dict[str, Any],
    *,
    method: str | None = None,
    overrides: dict[str, Any] | None = None,
    validate_trainer: bool = True,
) -> RunConfig:
    """Read, override and validate a run config.

    Args:
        source: A YAML file or an already-parsed dict.
        method: The entry point's method; a file naming another method is an error, a file
            naming none gets this one.
        overrides: Dotted keys to set (``{"trainer.max_steps": 5}``).
        validate_trainer: Build the trl config (imports trl) to check ``trainer``'s values;
            False only checks that its keys are fields.

    Raises:
        ConfigError: Unreadable file, unknown keys, bad values, or a method mismatch.
    """
    if isinstance(source, dict):
        data = dict(source)
        where = "config"
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = load_yaml(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from None
        where = str(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    data = yaml.safe_load(yaml.safe_dump(data))  # a deep copy we may modify
    for key, value in (overrides or {}).items():
        set_dotted(data, key, value)
    if method is not None:
        if data.get("method", method) != method:
            raise ConfigError(
                f"{where}: method is {data['method']!r} but this entry point trains {method!r}"
            )
        data["method"] = method
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{where}: " + "; ".join(_error_lines(exc))) from None
    if validate_trainer:
        cfg.trainer_args("unused")
    else:
        cfg.check_trainer_fields()
    return cfg


__all__ = [
    "DEFAULT_LORA_TARGETS",
    "METHODS",
    "DataSpec",
    "DatasetSource",
    "FolderSource",
    "LoraSpec",
    "ModelSpec",
    "RunConfig",
    "WorldSource",
    "load_run_config",
    "parse_overrides",
    "set_dotted",
    "trainer_config_class",
]
