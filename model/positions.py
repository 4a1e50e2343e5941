"""Label-invariant training for RoPE: the irregular positions the runtime's position labels produce.

The runtime (runtime/engine/labels.py) never renumbers rows: a deletion leaves a gap in the positions
RoPE sees, an insertion of k tokens squeezes them evenly between two neighbours (spacing 1/(k+1)). A
model trained only on 0, 1, 2, ... sees such documents off its training distribution (shared/DESIGN.md §7:
perplexity 24.8 -> 28.4 with ten gaps, 27.1 with 20 squeezed tokens, untrained). Training on them
(PoSE, position interpolation) closes that gap: `jittered_positions` draws gaps and squeezes for a
training row, `positions_after_edit` labels an edited copy the way the runtime would (for the stability
loss), and `pad_positions` makes the batch tensor.
"""

from __future__ import annotations

import random

import torch


def jittered_positions(n: int, rng: random.Random, rate: float, max_gap: int = 20) -> list[float]:
    """Positions of a row of n tokens (BOS first, at 0), strictly increasing: at a fraction `rate` of
    the token boundaries a deletion gap (1 + 1..max_gap), at another `rate` the start of a squeezed run
    of 2..8 tokens (an insertion: spacing 1/(k+1) inside one unit); elsewhere 1."""
    out, p, i = [0.0], 0.0, 1
    while i < n:
        r = rng.random()
        if r < rate:
            p += 1 + rng.randint(1, max_gap)
            out.append(p)
            i += 1
        elif r < 2 * rate and i + 1 < n:
            k = min(rng.randint(2, 8), n - i)
            out += [p + j / (k + 1) for j in range(1, k + 1)]
            p += 1
            i += k
            if i < n:
                out.append(p)
                i += 1
        else:
            p += 1
            out.append(p)
            i += 1
    return out[:n]


def positions_after_edit(positions: list[float], start: int, delete: int, insert: int) -> list[float]:
    """Positions of an edited copy, labelled as the runtime labels it: rows [start, start + delete) of the
    tokens (BOS excluded; `positions` includes BOS) replaced by `insert` new ones, placed evenly strictly
    between their neighbours (at the end: +1 each); every other row keeps its position."""
    before, after = positions[: start + 1], positions[start + 1 + delete:]
    a = before[-1]
    if after:
        b = after[0]
        new = [a + (b - a) * j / (insert + 1) for j in range(1, insert + 1)]
    else:
        new = [a + j for j in range(1, insert + 1)]
    return [*before, *new, *after]


def pad_positions(rows: list[list[float]], t: int) -> torch.Tensor:
    """Float positions (B, t), each row continued past its end by +1 steps (padding is masked anyway)."""
    out = torch.zeros(len(rows), t, dtype=torch.float32)
    for b, r in enumerate(rows):
        r = r[:t]
        out[b, : len(r)] = torch.tensor(r, dtype=torch.float32)
        if len(r) < t:
            last = r[-1] if r else 0.0
            out[b, len(r):] = last + torch.arange(1, t - len(r) + 1, dtype=torch.float32)
    return out
