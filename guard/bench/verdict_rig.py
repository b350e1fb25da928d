"""Rig a random-weight Qwen-VL model so that it answers in the guard's format: a verdict word,
then the end of the answer.

A random model's first token is almost never a verdict word, so it cannot show the verdict-first
path (the engine falls back to decoding the whole answer for such a model) and timing it would
measure the fallback. This edit gives a model, without any training, the one behaviour the
tests and benchmarks need, and leaves which verdict it picks to its random weights (so it still
depends on the image and the action):

- two channels of the residual stream are cut off from every layer (no layer reads or writes
  them), so at the last layer they hold exactly the current input token's embedding there;
- the prompt's last token (the newline after ``<|im_start|>assistant``) puts the same bonus on
  each verdict word's first token through the first channel, and a verdict token puts a larger
  one on ``<|im_end|>`` through the second.

Works for tied (Qwen3-VL) and untied (Qwen2.5-VL) embeddings: the values are chosen so that the
same matrix serves as input and output embedding.

    python -m guard.bench.verdict_rig --model DIR [--out DIR]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from guard.types import VERDICT_WORDS

# Channel values (see the module docstring). With a = 1, b = 2, c = 8: after the newline the
# verdict tokens score b*a = 2 against the newline's own a*a = 1; after a verdict token
# <|im_end|> scores c*a = 8 against the verdict tokens' b*b + a*a = 5 (tied embeddings).
_A, _B, _C = 1.0, 2.0, 16.0
# The verdict tokens' output rows in the other channels are scaled up so that what the layers
# read from the image and the action, not a constant bias, decides among the verdicts.
_GAIN = 10.0


def rig_verdict_first(model: Any, tokenizer: Any, words: tuple[str, ...] = VERDICT_WORDS) -> Any:
    """Edit `model` in place (see the module docstring) and return it.

    Args:
        model: A Qwen2.5-VL or Qwen3-VL ``...ForConditionalGeneration``.
        tokenizer: Its tokenizer.
        words: The verdict words; each must start with its own token.
    """
    import torch

    ids = [tokenizer(w, add_special_tokens=False)["input_ids"][0] for w in words]
    if len(set(ids)) != len(ids):
        raise ValueError(f"verdict words {words} share a first token")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"][-1]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings().weight
    c0, c1 = 0, 1
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            attn, mlp = layer.self_attn, layer.mlp
            for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
                lin.weight[:, [c0, c1]] = 0.0
            for lin in (attn.o_proj, mlp.down_proj):
                lin.weight[[c0, c1], :] = 0.0
                if getattr(lin, "bias", None) is not None:
                    lin.bias[[c0, c1]] = 0.0
        # Image features (and Qwen3-VL's deepstack additions) write the channels at image
        # positions only, which no layer reads: the answer's positions are text.
        for w in (emb, head):
            w[:, [c0, c1]] = 0.0
        # Without its own embedding in the other channels, the last position's hidden state
        # there is what the layers read from the image and the action: the choice among the
        # verdicts then depends on the input rather than on a constant bias.
        emb[newline, :] = 0.0
        emb[newline, c0] = _A
        head[ids, 2:] *= _GAIN
        head[ids, c0] = _B
        emb[ids, c1] = _A
        head[eos, c1] = _C
    return model


def rig_folder(model_dir: str | Path, out: str | Path | None = None) -> Path:
    """Load a model folder, rig it and save it (to `out`, or in place)."""
    import transformers

    from guard.backends.hf_loading import load_model

    model, _ = load_model(str(model_dir), dtype="float32", what="the verdict rig")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    rig_verdict_first(model, tokenizer)
    dest = Path(out) if out is not None else Path(model_dir)
    if dest != Path(model_dir):
        import shutil

        shutil.copytree(model_dir, dest, dirs_exist_ok=True)
    model.save_pretrained(dest)
    return dest


def main(argv: list[str] | None = None) -> int:
    """`python -m guard.bench.verdict_rig --model DIR [--out DIR]`."""
    p = argparse.ArgumentParser(prog="python -m guard.bench.verdict_rig",
                                description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="model folder to rig")
    p.add_argument("--out", default=None, help="write here (default: in place)")
    args = p.parse_args(argv)
    print(rig_folder(args.model, args.out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
