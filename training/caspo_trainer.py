"""CASPO on top of trl's GRPO trainer: a constitution-prompted self-teacher scores each token.

`CASPOTrainer` subclasses ``trl.GRPOTrainer``, so rollouts (transformers or vLLM), reward
functions, accelerate / DeepSpeed / FSDP, PEFT and checkpointing are trl's. It changes two
things:

1. ``_generate_and_score_completions``: after trl has sampled ``G`` completions per prompt and
   computed their group-normalised outcome advantages, the **teacher** (the same model; by
   default its current weights, a "dynamic reference") reads each prompt with the safety
   constitution added (`training.constitution`; privileged context the student never sees) and
   scores the student's sampled tokens in one extra forward pass without gradient. The token
   rewards ``clip(log p_teacher - log p_student, lo, hi) + bonus`` are normalised over each
   group's tokens and mixed with the outcome advantage by ``caspo_lambda`` (the pure functions
   of `training.losses`). The advantages handed on are ``(B, T)``, one per token.
2. ``_compute_loss``: PPO-clip on those token advantages (`training.losses.ppo_clip_loss`) plus
   the optional k3 KL to trl's reference (``beta``).

Teacher weights (``teacher``):

- ``"current"``: the policy being trained, at the weights that sampled the rollouts. When trl
  has no sampling-time log-probs (on-policy, no vLLM) the student and teacher rows go through
  the model in one batched forward.
- ``"snapshot"``: a frozen copy, refreshed every ``teacher_refresh_steps`` optimizer steps (0:
  never, i.e. the starting weights). With LoRA the copy is a second adapter on the same base
  model (cheap); with full fine-tuning, a copy of the model (not under DeepSpeed ZeRO-3).

Teacher context (``teacher_context``):

- ``"constitution"``: the student's prompt with the safety constitution added.
- ``"projection"``: the model's own reasoning. The teacher reads the prompt in the
  projection-first answer mode (``projection_template``), writes its consequence projection
  greedily (the ``scene:`` and ``effect:`` lines), and then scores the student's verdict-first
  completion as the answer that follows its projection. No privileged text: what the teacher
  knows beyond the student is the reasoning step itself. A prompt whose greedy answer does not
  open with a projection has no teacher (token reward 0, no dense verdict term on it).

Unknown in the paper and decided here (see `training/README.md`): λ mixes as
``(1 - λ) A_outcome + λ A_token``; the teacher is the current weights by default; the token
reward is clipped to [-3, 5] as in COPSD.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any, cast

import torch
from accelerate.utils import is_peft_model
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer
from trl.data_utils import apply_chat_template, prepare_multimodal_messages
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.models.utils import disable_gradient_checkpointing, unwrap_model_for_generation
from trl.trainer.callbacks import SyncRefModelCallback
from trl.trainer.utils import add_fused_lm_head, disable_dropout_in_model, use_adapter

from guard.backends.engine import verdict_first_tokens
from guard.errors import ConfigError
from guard.prompting import load_template
from guard.types import VERDICT_WORDS
from training import losses
from training.constitution import Constitution, load_constitution
from training.evaluate import PROJECTION_TOKENS, verdict_position

TEACHER_ADAPTER = "caspo_teacher"
TEACHERS = ("current", "snapshot")
TEACHER_CONTEXTS = ("constitution", "projection")
# trl loss types whose aggregation CASPO reproduces: per sequence, or per token of the batch
_AGGREGATION = {"grpo": "sequence", "bnpo": "token", "dapo": "token"}
_PIXEL_KEYS: tuple[str, ...] = ("pixel_values", "image_grid_thw")


class _UnlabeledOnPurpose(logging.Filter):
    """Drops trl's "All reward functions returned None" warning when the row is one of
    `DataSpec.unlabeled`'s prompts (label None): no outcome there is the design, and trl
    zeroes their outcome advantage. The warning still shows for any other row."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return not ("All reward functions returned None" in msg  # after trl's "[RANK n] "
                    and "'label': None" in msg)


logging.getLogger("trl.trainer.grpo_trainer").addFilter(_UnlabeledOnPurpose())


@dataclass
class CASPOConfig(GRPOConfig):  # type: ignore[misc]  # trl is untyped
    """`GRPOConfig` plus CASPO's knobs. Every GRPO field keeps its meaning (``num_generations``
    is the group size, ``beta`` the KL weight, ``epsilon`` / ``epsilon_high`` the PPO clip).

    Parameters:
        caspo_lambda: Weight λ of the token advantage: ``(1 - λ) A_outcome + λ A_token``.
            0 is GRPO; 1 is pure constitution self-distillation.
        labeled_lambda: λ for prompts that have a label; None uses ``caspo_lambda`` for every
            prompt. 0 trusts the label where there is one and lets the teacher speak only on
            `DataSpec.unlabeled`'s prompts (a teacher more cautious than the labels then cannot
            unlearn what the labels taught).
        verdict_kl_coef: Weight of a dense term, ``KL(teacher || student)`` between the
            verdict-word distributions at the answer's first position (the guard's format
            starts with the verdict), added to the loss; each row's KL is scaled by its λ (so with
            ``labeled_lambda: 0`` only unlabeled prompts get it). The token reward reaches the
            student only through tokens it samples, so a verdict it is sure of (every sample
            says ALLOW) gets no gradient however much the teacher disagrees; this term does.
            0 is off.
        token_reward_clip: ``[lo, hi]`` clip of ``log p_teacher - log p_student`` per token.
        token_reward_bonus: Constant added to every token reward.
        token_advantage_eps: Added to the group's token-reward std.
        teacher: "current" (the policy's current weights) or "snapshot" (a frozen copy).
        teacher_refresh_steps: For "snapshot": copy the policy into the teacher every this
            many optimizer steps; 0 never (the teacher stays at the starting weights).
        teacher_context: "constitution" (the prompt plus the constitution) or "projection"
            (the model's own consequence projection, written first; see the module doc).
        constitution: Built-in constitution name (``training/constitutions``) or a YAML path.
        projection_template: For ``teacher_context: projection``: the projection-first
            template whose system turn the teacher is prompted with.
        projection_tokens: For ``teacher_context: projection``: the most tokens the teacher
            may write before its verdict; a longer projection counts as none.
    """

    caspo_lambda: float = field(
        default=0.5, metadata={"help": "Weight of the token advantage (0 = GRPO)."}
    )
    labeled_lambda: float | None = field(
        default=None, metadata={"help": "λ for labelled prompts (None: caspo_lambda)."}
    )
    verdict_kl_coef: float = field(
        default=0.0,
        metadata={"help": "Weight of KL(teacher || student) over the verdict words at the "
                          "answer's first position (0: off)."},
    )
    token_reward_clip: list[float] = field(
        default_factory=lambda: [-3.0, 5.0],
        metadata={"help": "[lo, hi] clip of log p_teacher - log p_student."},
    )
    token_reward_bonus: float = field(default=0.0, metadata={"help": "Added to token rewards."})
    token_advantage_eps: float = field(default=1e-4, metadata={"help": "Std epsilon."})
    teacher: str = field(default="current", metadata={"help": "current | snapshot"})
    teacher_refresh_steps: int = field(
        default=0, metadata={"help": "Snapshot refresh period in steps (0: never)."}
    )
    teacher_context: str = field(
        default="constitution", metadata={"help": "constitution | projection"}
    )
    constitution: str = field(
        default="hazardworld", metadata={"help": "Constitution name or YAML path."}
    )
    projection_template: str = field(
        default="consequence_compact_projection",
        metadata={"help": "Projection-first template of teacher_context: projection."},
    )
    projection_tokens: int = field(
        default=PROJECTION_TOKENS,
        metadata={"help": "Most tokens of the teacher's projection."},
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        problems = []
        if not 0.0 <= self.caspo_lambda <= 1.0:
            problems.append(f"caspo_lambda = {self.caspo_lambda} is outside [0, 1]")
        if self.verdict_kl_coef < 0.0:
            problems.append(f"verdict_kl_coef = {self.verdict_kl_coef} is < 0")
        if self.labeled_lambda is not None and not 0.0 <= self.labeled_lambda <= 1.0:
            problems.append(f"labeled_lambda = {self.labeled_lambda} is outside [0, 1]")
        clip = list(self.token_reward_clip)
        if len(clip) != 2 or clip[0] > clip[1]:
            problems.append(f"token_reward_clip = {clip} is not [lo, hi] with lo <= hi")
        if self.teacher not in TEACHERS:
            problems.append(f"teacher = {self.teacher!r} is not one of {TEACHERS}")
        if self.teacher_context not in TEACHER_CONTEXTS:
            problems.append(
                f"teacher_context = {self.teacher_context!r} is not one of {TEACHER_CONTEXTS}")
        elif self.teacher_context == "projection":
            try:
                mode = load_template(self.projection_template).answer_mode
            except ConfigError as exc:
                problems.append(f"projection_template: {exc}")
            else:
                if mode != "projection_first":
                    problems.append(f"projection_template = {self.projection_template!r} "
                                    f"asks for {mode}, not projection_first")
        if self.projection_tokens < 1:
            problems.append(f"projection_tokens = {self.projection_tokens} is < 1")
        if self.teacher_refresh_steps < 0:
            problems.append(f"teacher_refresh_steps = {self.teacher_refresh_steps} is < 0")
        if self.teacher_refresh_steps and self.teacher != "snapshot":
            problems.append("teacher_refresh_steps needs teacher = 'snapshot'")
        if self.loss_type not in _AGGREGATION:
            problems.append(
                f"loss_type = {self.loss_type!r}: CASPO supports {sorted(_AGGREGATION)}"
            )
        # trl features whose loss terms CASPO's own loss does not reproduce: refuse them
        # rather than silently ignore them
        if self.importance_sampling_level != "token":
            problems.append("importance_sampling_level must be 'token'")
        if self.top_entropy_quantile != 1.0:
            problems.append("top_entropy_quantile must be 1.0")
        if self.off_policy_mask_threshold is not None:
            problems.append("off_policy_mask_threshold is not supported")
        if self.entropy_coef != 0.0 or self.use_adaptive_entropy:
            problems.append("entropy bonuses are not supported")
        if problems:
            raise ValueError("CASPOConfig: " + "; ".join(problems))


class _TeacherRefresh(TrainerCallback):  # type: ignore[misc]
    """Copies the policy into the snapshot teacher every ``teacher_refresh_steps`` steps."""

    def __init__(self, trainer: CASPOTrainer) -> None:
        self.trainer = trainer

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        n = self.trainer.args.teacher_refresh_steps
        if n and state.global_step % n == 0:
            self.trainer.refresh_teacher()


class _AnswerStartHidden:
    """Forward hook on the decoder's final norm: keeps, per row, the hidden state at the last
    prompt position, the one that predicts the answer's first token. Rows are prompt
    (left-padded) + completion (`n_tok` tokens), so that position is ``-(n_tok + 1)``; trl's
    forward runs in chunks, hence a list."""

    def __init__(self, n_tok: int) -> None:
        self.n_tok = n_tok
        self.rows: list[torch.Tensor] = []

    def __call__(self, module: Any, args: Any, output: Any) -> None:
        h = output[0] if isinstance(output, tuple) else output
        self.rows.append(h[:, -(self.n_tok + 1), :])

    def hidden(self) -> torch.Tensor:
        return torch.cat(self.rows, 0)


def _projection_prompt(template: str) -> Constitution:
    """The rewrite of a verdict-first prompt into the projection-first one: the template's
    system turn in place of the student's (the templates differ in what they ask the answer
    to start with, which is said in the system turn); the user turn as it is."""
    tmpl = load_template(template)
    return Constitution(name=tmpl.name, system=tmpl.system, user="{user}", path=template)


def _same_input(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two rows are the same prompt on the same image(s): trl repeats each prompt
    ``num_generations`` times in a row, and the teacher's projection is greedy, so one
    projection serves the whole run of repeats."""
    if a.get("prompt") != b.get("prompt"):
        return False
    for key in ("image", "images"):
        x, y = a.get(key), b.get(key)
        if x is y:
            continue
        xs, ys = (x, y) if key == "images" else ([x], [y])
        if xs is None or ys is None or len(xs) != len(ys):
            return False
        for u, v in zip(xs, ys, strict=True):
            if u is v or (isinstance(u, str) and u == v):
                continue
            if not (hasattr(u, "tobytes") and hasattr(v, "tobytes")
                    and getattr(u, "size", None) == getattr(v, "size", None)
                    and u.tobytes() == v.tobytes()):
                return False
    return True


def _left_pad(x: torch.Tensor, length: int, value: int | float) -> torch.Tensor:
    if x.size(1) >= length:
        return x
    pad = x.new_full((x.size(0), length - x.size(1)), value)
    return torch.cat([pad, x], dim=1)


class CASPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """GRPO with a constitution-prompted self-teacher's token rewards (see the module doc).

    Args:
        model: As for ``GRPOTrainer`` (a model, or a hub id / folder).
        reward_funcs: Outcome reward functions (e.g. `training.rewards.outcome_reward_funcs`).
        args: A `CASPOConfig`.
        constitution: Overrides ``args.constitution`` with an already-loaded one (with
            ``teacher_context: constitution``).
        **kwargs: Everything else ``GRPOTrainer`` takes (datasets, processing_class,
            peft_config, callbacks, ...).
    """

    _tag_names = ["trl", "caspo", "embodied-guard"]  # noqa: RUF012 - trl's class attribute
    _name = "CASPO"

    def __init__(self, model: Any, reward_funcs: Any = None, args: CASPOConfig | None = None,
                 *, constitution: Constitution | None = None, **kwargs: Any) -> None:
        if not isinstance(args, CASPOConfig):
            raise TypeError(f"CASPOTrainer needs a CASPOConfig, got {type(args).__name__}")
        super().__init__(model=model, reward_funcs=reward_funcs, args=args, **kwargs)
        #: How the teacher's prompt is made from the student's: the constitution added, or
        #: the projection-first template's system turn in place of the student's.
        self.constitution = (constitution or load_constitution(args.constitution)
                             if args.teacher_context == "constitution"
                             else _projection_prompt(args.projection_template))
        self.teacher_model: Any = None
        #: The ids of the teacher's last forward (its prompt, its projection with
        #: ``teacher_context: projection``, then the completions), kept for diagnostics and
        #: tests.
        self.last_teacher_input_ids: torch.Tensor | None = None
        #: With ``teacher_context: projection``: per row, whether the teacher wrote a
        #: projection (rows without one get no teacher signal).
        self.last_teacher_projected: torch.Tensor | None = None
        #: With ``verdict_kl_coef``: the teacher's verdict-word log-probabilities, ``(B, 3)``.
        self.last_teacher_verdict_logps: torch.Tensor | None = None
        self._verdict_ids: torch.Tensor | None = None
        if args.teacher == "snapshot":
            self._setup_snapshot_teacher()
            if args.teacher_refresh_steps:
                self.add_callback(_TeacherRefresh(self))

    # -- teacher weights -------------------------------------------------------------------

    def _policy(self) -> Any:
        return self.accelerator.unwrap_model(self.model)

    def _setup_snapshot_teacher(self) -> None:
        policy = self._policy()
        if is_peft_model(policy):
            # A second adapter on the same base model: the snapshot costs the adapter's size.
            policy.add_adapter(TEACHER_ADAPTER, policy.peft_config[policy.active_adapter])
            self._copy_adapter(policy)
            return
        ds = self.args.deepspeed_plugin
        if ds is not None and ds.zero_stage == 3:
            raise ValueError(
                "teacher='snapshot' with full fine-tuning cannot copy a ZeRO-3 partitioned "
                "model; use LoRA (the snapshot is then an adapter) or teacher='current'"
            )
        teacher = copy.deepcopy(policy)
        # The copy carries the policy's fused-LM-head forward, still bound to the policy's own
        # weights through its closure: drop it and patch the copy itself.
        teacher.__dict__.pop("forward", None)
        add_fused_lm_head(teacher, temperature=self.temperature,
                          cast_lm_head_to_fp32=self.args.cast_lm_head_to_fp32)
        teacher.requires_grad_(False)
        teacher.eval()
        if self.args.disable_dropout:
            disable_dropout_in_model(teacher)
        if self.is_deepspeed_enabled:
            teacher = prepare_deepspeed(teacher, self.accelerator)
        elif self.is_fsdp_enabled:
            teacher = prepare_fsdp(teacher, self.accelerator)
        else:
            teacher = self.accelerator.prepare_model(teacher, evaluation_mode=True)
        self.teacher_model = teacher

    def _copy_adapter(self, policy: Any) -> None:
        source = f".{policy.active_adapter}."
        with torch.no_grad():
            for name, param in policy.named_parameters():
                if source in name:
                    target = policy.get_parameter(name.replace(source, f".{TEACHER_ADAPTER}."))
                    target.data.copy_(param.data)
        for name, param in policy.named_parameters():
            if f".{TEACHER_ADAPTER}." in name:
                param.requires_grad_(False)

    def refresh_teacher(self) -> None:
        """Copy the policy's current weights into the snapshot teacher."""
        if self.args.teacher != "snapshot":
            return
        policy = self._policy()
        if is_peft_model(policy):
            self._copy_adapter(policy)
        else:
            SyncRefModelCallback.sync_target_model(
                policy, self.accelerator.unwrap_model(self.teacher_model), 1.0
            )

    def drop_teacher(self) -> None:
        """Remove the snapshot adapter (before saving the final model)."""
        policy = self._policy()
        if is_peft_model(policy) and TEACHER_ADAPTER in policy.peft_config:
            policy.delete_adapter(TEACHER_ADAPTER)

    def _teacher_context(self) -> Any:
        policy = self._policy()
        if self.args.teacher == "snapshot" and is_peft_model(policy):
            return use_adapter(policy, adapter_name=TEACHER_ADAPTER)
        return nullcontext()

    # -- scoring ---------------------------------------------------------------------------

    def _teacher_prompt_inputs(self, inputs: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """The teacher's prompts (constitution added, or in projection-first mode followed
        by the teacher's own projection), tokenized and processed like trl's."""
        prompts = [self.constitution.apply(x["prompt"]) for x in inputs]
        if "images" in inputs[0]:
            images = [x.get("images") for x in inputs]
        elif "image" in inputs[0]:
            images = [[x["image"]] if x.get("image") is not None else None for x in inputs]
        else:
            images = None
        if images is not None and all(not im for im in images):
            images = None
        if images is not None:
            prompts = [prepare_multimodal_messages(p, images=im)
                       for p, im in zip(prompts, images, strict=True)]
        texts = [apply_chat_template({"prompt": p}, self.processing_class,
                                     **self.chat_template_kwargs)["prompt"] for p in prompts]
        self.last_teacher_projected = None
        if self.args.teacher_context == "projection":
            texts = self._with_projections(inputs, texts, images)
        return self._encode(texts, images)

    def _encode(self, texts: list[str], images: list[Any] | None) -> dict[str, torch.Tensor]:
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "padding_side": "left",
                                  "return_tensors": "pt"}
        if images is not None:
            kwargs["images"] = images
        enc = self.processing_class(**kwargs)
        device = self.accelerator.device
        return {k: v.to(device) for k, v in enc.items() if isinstance(v, torch.Tensor)}

    def _with_projections(self, inputs: list[dict[str, Any]], texts: list[str],
                          images: list[Any] | None) -> list[str]:
        """`texts` (projection-first prompts) each followed by the teacher's greedy
        ``scene:`` and ``effect:`` lines; sets `last_teacher_projected`. One generation per
        run of repeated prompts."""
        firsts = [i for i in range(len(inputs))
                  if i == 0 or not _same_input(inputs[i], inputs[i - 1])]
        enc = self._encode([texts[i] for i in firsts],
                           None if images is None else [images[i] for i in firsts])
        tok = self._tokenizer
        teacher = self.teacher_model if self.teacher_model is not None else self.model
        with torch.no_grad(), self._teacher_context(), unwrap_model_for_generation(
            teacher, self.accelerator,
            gradient_checkpointing_kwargs=self.args.gradient_checkpointing_kwargs,
        ) as model:
            out = model.generate(**enc, max_new_tokens=self.args.projection_tokens + 1,
                                 do_sample=False, pad_token_id=tok.pad_token_id)
        new = out[:, enc["input_ids"].size(1):].tolist()
        special = set(tok.all_special_ids)
        projections: list[str | None] = []
        for ids in new:
            pieces = [tok.decode([t]) for t in ids]
            pos = verdict_position(pieces)
            # a special token inside the projection would be one again in the teacher's
            # prompt (an end of turn, an image pad): no projection rather than a torn prompt
            if pos is not None and special.intersection(ids[:pos]):
                pos = None
            projections.append(None if pos is None else "".join(pieces[:pos]))
        owner = [0] * len(inputs)
        for k, i in enumerate(firsts):
            end = firsts[k + 1] if k + 1 < len(firsts) else len(inputs)
            owner[i:end] = [k] * (end - i)
        rows = [projections[owner[i]] for i in range(len(inputs))]
        self.last_teacher_projected = torch.tensor([p is not None for p in rows],
                                                   device=self.accelerator.device)
        return [t + (p or "") for t, p in zip(texts, rows, strict=True)]

    def _rows(self, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
              type_ids: dict[str, torch.Tensor], completion_ids: torch.Tensor,
              completion_mask: torch.Tensor, width: int) -> dict[str, torch.Tensor]:
        """Prompt (left-padded to `width`) + completion rows with their token-type ids."""
        pad_id = self._tokenizer.pad_token_id
        rows = {
            "input_ids": torch.cat([_left_pad(prompt_ids, width, pad_id), completion_ids], 1),
            "attention_mask": torch.cat([_left_pad(prompt_mask, width, 0), completion_mask], 1),
        }
        for key, t in type_ids.items():
            # token-type ids cover the prompt only, or the prompt and the completion
            if t.size(1) == prompt_ids.size(1):
                t = torch.cat([t, torch.zeros_like(completion_ids, dtype=t.dtype)], 1)
            rows[key] = _left_pad(t, width + completion_ids.size(1), 0)
        return rows

    def _score_with_teacher(self, inputs: list[dict[str, Any]],
                            output: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Teacher and student log-probabilities of the sampled completion tokens."""
        completion_ids, completion_mask = output["completion_ids"], output["completion_mask"]
        b, n_tok = completion_ids.shape
        t_enc = self._teacher_prompt_inputs(inputs)
        types = ("mm_token_type_ids", "token_type_ids")
        student_logps = output.get("old_per_token_logps")
        joint = student_logps is None and self.args.teacher == "current"
        width = t_enc["input_ids"].size(1)
        if joint:
            width = max(width, output["prompt_ids"].size(1))
        teacher_rows = self._rows(t_enc["input_ids"], t_enc["attention_mask"],
                                  {k: t_enc[k] for k in types if k in t_enc},
                                  completion_ids, completion_mask, width)
        t_pixels: dict[str, torch.Tensor] = {k: t_enc[k] for k in _PIXEL_KEYS if k in t_enc}
        num_images = output.get("num_images")
        batch_size = (self.args.per_device_train_batch_size if self.model.training
                      else self.args.per_device_eval_batch_size)

        def logps(model: Any, rows: dict[str, torch.Tensor], pixels: Mapping[str, torch.Tensor],
                  n_images: list[int] | None) -> torch.Tensor:
            out, _, _ = self._get_per_token_logps_and_entropies(
                model, rows["input_ids"], rows["attention_mask"], n_tok,
                batch_size=batch_size, num_images=n_images,
                pixel_values=pixels.get("pixel_values"),
                image_grid_thw=pixels.get("image_grid_thw"),
                mm_token_type_ids=rows.get("mm_token_type_ids"),
                token_type_ids=rows.get("token_type_ids"),
            )
            return cast(torch.Tensor, out)

        dense = self.args.verdict_kl_coef > 0.0
        with torch.no_grad(), disable_gradient_checkpointing(
            self.model, self.args.gradient_checkpointing_kwargs
        ):
            self.last_teacher_input_ids = teacher_rows["input_ids"].detach().cpu()
            self.last_teacher_verdict_logps = None
            if joint:
                # Same weights for both: one forward over student rows then teacher rows.
                student_rows = self._rows(output["prompt_ids"], output["prompt_mask"],
                                          {k: output[k] for k in types if k in output},
                                          completion_ids, completion_mask, width)
                rows = {k: torch.cat([student_rows[k], teacher_rows[k]], 0)
                        for k in teacher_rows}
                pixels: dict[str, torch.Tensor] = {
                    k: torch.cat([output[k], t_pixels[k]], 0) for k in t_pixels}
                n_images = None if num_images is None else list(num_images) * 2
                with self._answer_start(self.model, n_tok, dense) as seen:
                    both = logps(self.model, rows, pixels, n_images)
                student_logps, teacher_logps = both[:b], both[b:]
                if seen is not None:
                    self.last_teacher_verdict_logps = self._answer_start_logps(
                        self.model, seen.hidden()[b:])
            else:
                if student_logps is None:
                    student_rows = self._rows(output["prompt_ids"], output["prompt_mask"],
                                              {k: output[k] for k in types if k in output},
                                              completion_ids, completion_mask,
                                              output["prompt_ids"].size(1))
                    s_pixels: dict[str, torch.Tensor] = {k: output[k] for k in _PIXEL_KEYS
                                                         if k in output}
                    student_logps = logps(self.model, student_rows, s_pixels, num_images)
                teacher = self.teacher_model if self.teacher_model is not None else self.model
                with self._teacher_context(), self._answer_start(teacher, n_tok, dense) as seen:
                    teacher_logps = logps(teacher, teacher_rows, t_pixels, num_images)
                    if seen is not None:
                        self.last_teacher_verdict_logps = self._answer_start_logps(
                            teacher, seen.hidden())
        return teacher_logps, student_logps

    @contextmanager
    def _answer_start(self, model: Any, n_tok: int, on: bool) -> Iterator[Any]:
        """Capture the answer-start hidden states of `model`'s forwards (None when off)."""
        if not on:
            yield None
            return
        seen = _AnswerStartHidden(n_tok)
        norm = self.accelerator.unwrap_model(model).get_decoder().norm
        handle = norm.register_forward_hook(seen)
        try:
            yield seen
        finally:
            handle.remove()

    def _answer_start_logps(self, model: Any, hidden: torch.Tensor) -> torch.Tensor:
        """Log-probabilities of the verdict words at the answer's first token, renormalised
        over their first tokens, ``(B, 3)``. Only the verdict words: a KL over the whole
        vocabulary there also pulls the student toward whatever else a constitution prompt
        makes the teacher start with, and a fifth of the answers stopped parsing
        (docs/experiment/deployment_prompts/)."""
        if self._verdict_ids is None:
            firsts = verdict_first_tokens(self._tokenizer, VERDICT_WORDS)
            if firsts is None:
                raise ValueError(f"verdict_kl_coef needs verdict words {VERDICT_WORDS} with "
                                 "distinct first tokens in this tokenizer")
            self._verdict_ids = torch.tensor(sorted(firsts.values()))
        head = self.accelerator.unwrap_model(model).get_output_embeddings()
        logits = head(hidden)[:, self._verdict_ids.to(hidden.device)]
        return torch.log_softmax(logits.float(), dim=-1)

    def _group_token_advantages(self, rewards: torch.Tensor, mask: torch.Tensor,
                                group_size: int) -> torch.Tensor:
        """Token advantages over whole groups, which trl may spread across processes."""
        eps = self.args.token_advantage_eps
        if self.accelerator.num_processes == 1:
            return losses.group_token_advantages(rewards, mask, group_size, eps=eps)
        b, t = rewards.shape
        r_all = self.accelerator.gather(
            self.accelerator.pad_across_processes(rewards, dim=1, pad_index=0.0))
        m_all = self.accelerator.gather(
            self.accelerator.pad_across_processes(mask, dim=1, pad_index=0))
        adv = losses.group_token_advantages(r_all, m_all, group_size, eps=eps)
        i = self.accelerator.process_index
        return adv[i * b:(i + 1) * b, :t]

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output: dict[str, Any] = super()._generate_and_score_completions(inputs)
        mode = "train" if self.model.training else "eval"
        group = self.num_generations if mode == "train" else self.num_generations_eval
        mask = output["completion_mask"]
        if "tool_mask" in output:
            mask = mask * output["tool_mask"]
        teacher_logps, student_logps = self._score_with_teacher(inputs, output)
        projected = self.last_teacher_projected
        if projected is not None:
            # no projection, no teacher: the student's own log-probs give a zero token reward
            teacher_logps = torch.where(projected[:, None], teacher_logps, student_logps)
        lo, hi = self.args.token_reward_clip
        rewards = losses.token_rewards(teacher_logps, student_logps, mask, clip=(lo, hi),
                                       bonus=self.args.token_reward_bonus)
        token_adv = self._group_token_advantages(rewards, mask, group)
        outcome_adv = output["advantages"]
        lam: float | torch.Tensor = self.args.caspo_lambda
        if self.args.labeled_lambda is not None:
            lam = torch.tensor([self.args.caspo_lambda if x.get("label") is None
                                else self.args.labeled_lambda for x in inputs],
                               dtype=outcome_adv.dtype, device=outcome_adv.device)
        output["advantages"] = losses.mix_advantages(outcome_adv, token_adv, mask, lam)
        if self.last_teacher_verdict_logps is not None:
            output["teacher_verdict_logps"] = self.last_teacher_verdict_logps
            # λ says how much the teacher speaks on a row: the dense term follows it
            weight = torch.as_tensor(
                lam, dtype=outcome_adv.dtype, device=outcome_adv.device).expand(len(inputs))
            if projected is not None:
                weight = weight * projected.to(weight.dtype)
            output["teacher_weight"] = weight

        gap = teacher_logps - student_logps
        stats = torch.stack([
            (gap * mask).sum(), (rewards * mask).sum(),
            (((gap < lo) | (gap > hi)).float() * mask).sum(), mask.sum().float(),
        ])
        total = self.accelerator.reduce(stats, reduction="sum")
        n = total[3].clamp(min=1.0)
        m = self._metrics[mode]
        m["caspo/logp_gap"].append((total[0] / n).item())
        m["caspo/token_reward"].append((total[1] / n).item())
        m["caspo/token_reward_clipped"].append((total[2] / n).item())
        if projected is not None:
            m["caspo/teacher_projected"].append(
                self.accelerator.gather(projected.float()).mean().item())
        return output

    # -- loss ------------------------------------------------------------------------------

    def _compute_loss(self, model: Any, inputs: dict[str, Any]) -> torch.Tensor:
        prompt_ids, prompt_mask = inputs["prompt_ids"], inputs["prompt_mask"]
        completion_ids, completion_mask = inputs["completion_ids"], inputs["completion_mask"]
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
        mask = completion_mask
        if "tool_mask" in inputs:
            mask = mask * inputs["tool_mask"]
        teacher_verdict = inputs.get("teacher_verdict_logps")
        with self._answer_start(model, completion_ids.size(1),
                                teacher_verdict is not None) as seen:
            per_token_logps, entropies, _ = self._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, completion_ids.size(1), compute_entropy=True,
                pixel_values=inputs.get("pixel_values"),
                image_grid_thw=inputs.get("image_grid_thw"),
                num_images=inputs.get("num_images"), token_type_ids=inputs.get("token_type_ids"),
                mm_token_type_ids=inputs.get("mm_token_type_ids"),
            )
        old = inputs.get("old_per_token_logps")
        old = per_token_logps.detach() if old is None else old
        weights = None
        if self.use_vllm and self.vllm_importance_sampling_correction:
            weights = inputs["importance_sampling_ratio"]
        aggregation = _AGGREGATION[self.loss_type]
        loss, stats = losses.ppo_clip_loss(
            per_token_logps, old, inputs["advantages"], mask,
            epsilon_low=self.epsilon_low, epsilon_high=self.epsilon_high,
            aggregation=aggregation, token_weights=weights,  # type: ignore[arg-type]
        )
        mode = "train" if self.model.training else "eval"
        if seen is not None:
            student_verdict = self._answer_start_logps(model, seen.hidden())
            verdict_kl = losses.verdict_kl(teacher_verdict, student_verdict,
                                           inputs.get("teacher_weight"))
            loss = loss + self.args.verdict_kl_coef * verdict_kl
            self._metrics[mode]["caspo/verdict_kl"].append(
                self.accelerator.gather(verdict_kl.detach()).mean().item())
        if self.beta != 0.0:
            kl = losses.kl_k3(per_token_logps, inputs["ref_per_token_logps"])
            kl_term = (losses.masked_mean(kl, mask) if aggregation == "token"
                       else losses.masked_mean(kl, mask, dim=1).mean())
            loss = loss + self.beta * kl_term
            self._metrics[mode]["kl"].append(
                self.accelerator.gather(losses.masked_mean(kl.detach(), mask)).mean().item())
        self._metrics[mode]["entropy"].append(
            self.accelerator.gather(losses.masked_mean(entropies.detach(), mask)).mean().item())
        for key, value in stats.items():
            self._metrics[mode][f"caspo/{key}"].append(
                self.accelerator.gather(value).mean().item())
        if mode == "train":
            loss = loss / self.current_gradient_accumulation_steps
        return loss


__all__ = ["TEACHER_ADAPTER", "CASPOConfig", "CASPOTrainer"]
