"""Qwen-VL multimodal rotary (M-RoPE) position ids, computed in Python from the token types.

Qwen2-VL, Qwen2.5-VL and Qwen3-VL give every token three positions (temporal, height, width).
Text tokens carry the same running index in all three; an image's tokens carry
``start + (0, row, column)`` over its merged patch grid, and the text after it resumes at
``start + max(rows, columns)``. transformers computes this inside the model (``get_rope_index``)
over the whole sequence at prefill. A decoder that reuses a cached prompt prefix, or runs in
ONNX Runtime, must supply the ids itself: this module does, with numpy only, and the tests hold
it equal to ``get_rope_index`` for both architectures.

Because positions only ever look left, the positions of a prefix do not depend on what follows
it: the ids of a cached prefix stay valid for every prompt that extends it.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

TEXT, IMAGE, VIDEO = 0, 1, 2
"""Token types, as in ``mm_token_type_ids``."""


def mrope_positions(
    token_types: Sequence[int] | np.ndarray,
    image_grids: Sequence[Sequence[int]] | np.ndarray,
    spatial_merge_size: int,
    start: int = 0,
) -> tuple[np.ndarray, int]:
    """Position ids of one unpadded sequence.

    Args:
        token_types: ``mm_token_type_ids`` of the sequence (0 text, 1 image).
        image_grids: ``(t, h, w)`` patch grid of each image, in order of appearance.
        spatial_merge_size: Patches merged per side into one token (2 in every Qwen-VL).
        start: Position of the first token (the next position after an earlier segment).

    Returns:
        ``(positions, next_position)``: an int64 array of shape ``(3, L)`` and the position
        the token after the sequence takes.

    Raises:
        ValueError: Video tokens, or image token runs that do not match the grids.
    """
    types = np.asarray(token_types, dtype=np.int64).reshape(-1)
    grids = iter([tuple(int(x) for x in g) for g in np.asarray(image_grids).reshape(-1, 3)])
    out = np.empty((3, types.shape[0]), dtype=np.int64)
    pos = int(start)
    i = 0
    for kind, run in itertools.groupby(types.tolist()):
        n = sum(1 for _ in run)
        if kind == TEXT:
            out[:, i : i + n] = np.arange(pos, pos + n, dtype=np.int64)
            pos += n
        elif kind == IMAGE:
            try:
                t, h, w = next(grids)
            except StopIteration:
                raise ValueError("more image token runs than image grids") from None
            gh, gw = h // spatial_merge_size, w // spatial_merge_size
            if t * gh * gw != n:
                raise ValueError(
                    f"an image token run of {n} tokens does not match its grid {(t, h, w)} "
                    f"({t * gh * gw} tokens)"
                )
            tt, hh, ww = np.meshgrid(
                np.arange(t), np.arange(gh), np.arange(gw), indexing="ij"
            )
            out[0, i : i + n] = tt.reshape(-1) + pos
            out[1, i : i + n] = hh.reshape(-1) + pos
            out[2, i : i + n] = ww.reshape(-1) + pos
            pos += max(gh, gw)
        else:
            raise ValueError(f"token type {kind} (video) is not supported")
        i += n
    if next(grids, None) is not None:
        raise ValueError("more image grids than image token runs")
    return out, pos
