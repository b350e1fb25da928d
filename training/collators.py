"""Batches for supervised and preference training, tokenized exactly as the guard infers.

Each example goes through ``guard.backends.qwen_inputs`` (`QwenInputBuilder.from_messages` with
``completion=``): the prompt is the ids the guard's judge feeds the model at inference, the
answer is appended after it, and labels are -100 on the prompt. Using trl's own vision collators
instead would re-render the conversation through the processor and could differ from inference
in the ids around the assistant turn; these collators make that impossible by construction.

Sequences are right-padded; Qwen-VL computes its M-RoPE positions from the attention mask, so
padding on either side gives the same logits for the real tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from guard.backends.qwen_inputs import IGNORE_INDEX, QwenInputBuilder
from guard.types import Verdict
from training.data import clean_messages, load_image

#: The batch key of the per-token loss weights (`GuardSFTCollator.verdict_weight`); the
#: trainer pops it before the forward pass (`training.losses.VerdictWeightedSFTTrainer`).
LABEL_WEIGHTS = "label_weights"


def _images_of(example: dict[str, Any]) -> list[Any]:
    if example.get("images"):
        return [load_image(im) for im in example["images"]]
    if example.get("image") is not None:
        return [load_image(example["image"])]
    return []


def _pad(rows: list[torch.Tensor], value: int) -> torch.Tensor:
    width = max(int(r.shape[-1]) for r in rows)
    out = torch.full((len(rows), width), value, dtype=rows[0].dtype)
    for i, r in enumerate(rows):
        out[i, : r.shape[-1]] = r
    return out


def verdict_offset(completion: str) -> int:
    """Where the verdict starts in an answer: its first character in verdict-first mode, the
    first line that opens with a verdict word in projection-first mode (after the ``scene:``
    and ``effect:`` lines).

    Raises:
        ValueError: No line of the answer opens with a verdict word.
    """
    words = tuple(v.name for v in Verdict)
    offset = 0
    for line in completion.splitlines(keepends=True):
        if line.startswith(words):
            return offset
        offset += len(line)
    raise ValueError(f"no verdict line in the answer {completion[:60]!r}")


def _batch(encoded: list[dict[str, torch.Tensor]], pad_id: int) -> dict[str, torch.Tensor]:
    batch = {
        "input_ids": _pad([e["input_ids"][0] for e in encoded], pad_id),
        "attention_mask": _pad([e["attention_mask"][0] for e in encoded], 0),
        "mm_token_type_ids": _pad([e["mm_token_type_ids"][0] for e in encoded], 0),
        "labels": _pad([e["labels"][0] for e in encoded], IGNORE_INDEX),
    }
    if LABEL_WEIGHTS in encoded[0]:
        batch[LABEL_WEIGHTS] = _pad([e[LABEL_WEIGHTS][0] for e in encoded], 0)
    with_images = [e for e in encoded if "pixel_values" in e]
    if with_images:
        batch["pixel_values"] = torch.cat([e["pixel_values"] for e in with_images])
        batch["image_grid_thw"] = torch.cat([e["image_grid_thw"] for e in with_images])
    return batch


@dataclass
class GuardSFTCollator:
    """Prompt + completion examples to ``input_ids``, ``labels`` (answer only) and pixels.

    Attributes:
        builder: The guard's input builder for the model.
        max_length: Drop tokens beyond this many (None keeps all). Truncation never cuts
            image tokens in practice: they come first and the answers are short.
        label_tokens: Keep the answer only through this many tokens from its verdict
            (labels and inputs), so the loss is on them alone (1: the verdict); a
            projection-first answer keeps its projection lines before the verdict whole.
            None keeps the whole answer.
        verdict_weight: The verdict token's weight in the answer's loss (the others weigh
            1); other than 1, the batch carries ``label_weights`` (0 off the answer) for
            `training.losses.VerdictWeightedSFTTrainer`. A knife answer has one picture-
            dependent token, its verdict, among 49-106 (docs/experiment, knife-near-child).
    """

    builder: QwenInputBuilder
    max_length: int | None = None
    label_tokens: int | None = None
    verdict_weight: float = 1.0

    def _verdict_index(self, completion: str, labels: torch.Tensor, first: int) -> int:
        """The verdict's first token in the sequence, the answer starting at `first`.

        Raises:
            ValueError: The answer's ids do not start with the head's (the text before the
                verdict) as tokenized alone: the verdict's token is not known for sure.
        """
        head = completion[:verdict_offset(completion)]
        if not head:
            return first
        ids = self.builder.tokenizer(head, add_special_tokens=False)["input_ids"]
        if labels[first:first + len(ids)].tolist() != list(ids):
            raise ValueError(f"the answer's tokens do not start with its head {head[:60]!r}")
        return first + len(ids)

    def encode(self, example: dict[str, Any], completion: str) -> dict[str, torch.Tensor]:
        enc = self.builder.from_messages(clean_messages(example["prompt"]), _images_of(example),
                                         completion=completion)
        end = self.max_length
        answer = (enc["labels"][0] != IGNORE_INDEX).nonzero()
        if self.label_tokens is not None and len(answer):
            verdict = self._verdict_index(completion, enc["labels"][0], int(answer[0]))
            end = verdict + self.label_tokens if end is None else min(
                end, verdict + self.label_tokens)
        if self.verdict_weight != 1.0:
            weights = (enc["labels"] != IGNORE_INDEX).float()
            if len(answer):
                weights[0, self._verdict_index(completion, enc["labels"][0],
                                                 int(answer[0]))] = self.verdict_weight
            enc[LABEL_WEIGHTS] = weights
        if end is not None:
            for key in ("input_ids", "attention_mask", "mm_token_type_ids", "labels",
                        LABEL_WEIGHTS):
                if key in enc:
                    enc[key] = enc[key][:, :end]
        return enc

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_id = self.builder.tokenizer.pad_token_id
        return _batch([self.encode(ex, ex["completion"]) for ex in examples], pad_id)


@dataclass
class GuardPreferenceCollator(GuardSFTCollator):
    """Prompt + chosen + rejected examples in trl DPO's layout.

    The batch holds the chosen sequences first, then the rejected ones in the same order, with
    ``completion_mask`` marking the answer tokens (what ``DPOTrainer`` scores).
    """

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pad_id = self.builder.tokenizer.pad_token_id
        encoded = [self.encode(ex, ex["chosen"]) for ex in examples]
        encoded += [self.encode(ex, ex["rejected"]) for ex in examples]
        batch = _batch(encoded, pad_id)
        batch["completion_mask"] = (batch.pop("labels") != IGNORE_INDEX).long()
        return batch


__all__ = ["LABEL_WEIGHTS", "GuardPreferenceCollator", "GuardSFTCollator", "verdict_offset"]
