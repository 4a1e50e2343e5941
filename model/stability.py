"""Stability training: random atomic edits of token sequences and a loss that keeps codes from flipping.

Owns `TokenEdit`, `random_edit` (insert / delete / replace of 1..`max_tokens` tokens, inserted tokens
copied from elsewhere in the same document so they look like real text), `edited_batch` (the edited
copy of a padded batch plus, for every edited position, the original position it aligns with) and
`stability_loss`. It does not run the model or the optimiser (that is `train.py`).

Why: the runtime recomputes a position at layer l + 1 only if its input or its layer-l attention code
changed, so every code that flips outside an edit costs a row at every later layer and a changed key
for every later query. The loss asks the edited copy's attention output at each aligned position after
the edit to stay in the cell (nearest-code region) of the original copy's code.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F

EDIT_KINDS = ("insert", "delete", "replace")


@dataclass(frozen=True)
class TokenEdit:
    """Replace `ids[start : start + delete]` by `insert` (token positions, BOS not counted)."""

    start: int
    delete: int
    insert: tuple[int, ...]

    def apply(self, ids: list[int]) -> list[int]:
        return [*ids[: self.start], *self.insert, *ids[self.start + self.delete:]]


def random_edit(ids: list[int], rng: random.Random, max_tokens: int = 20) -> TokenEdit:
    """A random atomic edit of a document of `len(ids)` tokens.

    Kind uniform over insert / delete / replace; each span length uniform in [1, m] with
    m = min(max_tokens, max(1, len(ids) // 4)), so a short review is never mostly rewritten. Inserted
    tokens are a span copied from a random place of the same document (real words, not random ids).
    The position is uniform half the time and log-uniform (biased to the start) the other half: edits
    among the first tokens are the ones that cascade (every later query sees them, and NoPE attention
    leans on the first positions), measured on real PEP edits at 1,024 tokens (README, code flips).
    """
    n = len(ids)
    if n < 2:
        raise ValueError(f"a document needs >= 2 tokens to be edited, got {n}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    m = min(max_tokens, max(1, n // 4))
    kind = rng.choice(EDIT_KINDS)
    delete = rng.randint(1, m) if kind != "insert" else 0
    size = rng.randint(1, m) if kind != "delete" else 0
    last = n - delete - (1 if kind == "delete" else 0)  # a deletion leaves >= 1 token
    start = rng.randint(0, last) if rng.random() < 0.5 else min(last, int((last + 1) ** rng.random()) - 1)
    src = rng.randint(0, n - size)
    return TokenEdit(start, delete, tuple(ids[src:src + size]))


@dataclass
class EditedBatch:
    """The edited copy of a batch, right-padded, and its alignment with the original."""

    ids: torch.Tensor  # (B, T') int64, BOS first
    mask: torch.Tensor  # (B, T') bool
    source: torch.Tensor  # (B, T') int64: original position of each edited position after the edit, else -1
    edits: tuple[TokenEdit | None, ...] = ()
    """The edit of each row (None: the row was too short to edit)."""


def edited_batch(rows: list[list[int]], bos: int, rng: random.Random, max_tokens: int, max_len: int
                 ) -> EditedBatch:
    """Edit every row (token ids without BOS) once; cut to `max_len` positions with BOS, like the original.

    `source[b, j] = i` when edited position j shows the same token as original position i and lies
    after the edit (positions before it are computed identically under causal masking: no loss there).
    """
    edited, sources, edits = [], [], []
    for ids in rows:
        ids = ids[: max_len - 1]
        if len(ids) < 2:  # nothing to align after an edit: keep the row, no loss on it
            edited.append([bos, *ids])
            sources.append([-1] * (len(ids) + 1))
            edits.append(None)
            continue
        e = random_edit(ids, rng, max_tokens)
        edits.append(e)
        new = e.apply(ids)[: max_len - 1]
        shift = len(e.insert) - e.delete
        after = e.start + len(e.insert)  # first edited token index (without BOS) after the inserted span
        src = [-1] * (len(new) + 1)
        for j in range(after, len(new)):
            i = j - shift
            if 0 <= i < len(ids):
                src[j + 1] = i + 1  # +1: BOS at position 0 in both copies
        edited.append([bos, *new])
        sources.append(src)
    t = max(len(r) for r in edited)
    ids_t = torch.zeros(len(edited), t, dtype=torch.long)
    mask = torch.zeros(len(edited), t, dtype=torch.bool)
    source = torch.full((len(edited), t), -1, dtype=torch.long)
    for b, (r, s) in enumerate(zip(edited, sources, strict=True)):
        ids_t[b, : len(r)] = torch.tensor(r)
        mask[b, : len(r)] = True
        source[b, : len(s)] = torch.tensor(s)
    return EditedBatch(ids_t, mask, source, tuple(edits))


def stability_loss(attn: list[torch.Tensor], codebooks: list[torch.Tensor], codes_orig: list[torch.Tensor],
                   source: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """Cross-entropy, per layer and head, of the edited copy's code choice toward the original's code.

    attn[l] (B, T', H, dh): the edited copy's attention output before VQ; codebooks[l] (H, K, dh);
    codes_orig[l] (B, T, H); source (B, T') from `edited_batch`. The logits are negative squared
    distances to the K codes divided by a per-head scale, the mean squared distance of the rows to
    their nearest code (detached): dimensionless, so the model cannot satisfy the loss by blowing up
    the scale of its activations. Zero when no position aligns.
    """
    valid = source >= 0  # (B, T')
    if not valid.any():
        return attn[0].new_zeros(())
    b_idx, j_idx = valid.nonzero(as_tuple=True)
    i_idx = source[b_idx, j_idx]
    total = attn[0].new_zeros(())
    for a, cb, c in zip(attn, codebooks, codes_orig, strict=True):
        x = a[b_idx, j_idx].float()  # (N, H, dh)
        target = c[b_idx, i_idx]  # (N, H)
        d2 = ((x * x).sum(-1, keepdim=True) - 2 * torch.einsum("nhd,hkd->nhk", x, cb)
              + (cb * cb).sum(-1)[None])  # (N, H, K)
        scale = d2.detach().min(-1).values.clamp(min=0).mean(0).clamp(min=1e-6)  # (H,)
        logits = -d2 / (scale[None, :, None] * temperature)
        total = total + F.cross_entropy(logits.flatten(0, 1), target.flatten())
    return total / len(attn)


def code_usage_loss(attn: list[torch.Tensor], codebooks: list[torch.Tensor], mask: torch.Tensor,
                    floor_bits: float, temperature: float = 1.0) -> tuple[torch.Tensor, float]:
    """The guard against collapse: penalise every head whose codes, over the batch, carry < `floor_bits`.

    The stability loss alone is satisfied by mapping every row of a head to one code (nothing can flip,
    nothing is encoded: the bundled model's layers 2-3 went that way). Per layer and head this takes the
    batch's soft code assignments (the same scaled distances as `stability_loss`), their marginal
    distribution over the K codes, and its entropy H in bits; the loss is mean(relu(floor - H)). Returns
    the loss and the smallest H (bits) of any head, for the progress bar.
    """
    total, lowest = attn[0].new_zeros(()), float("inf")
    for a, cb in zip(attn, codebooks, strict=True):
        x = a[mask].float()  # (N, H, dh)
        d2 = ((x * x).sum(-1, keepdim=True) - 2 * torch.einsum("nhd,hkd->nhk", x, cb) + (cb * cb).sum(-1)[None])
        scale = d2.detach().min(-1).values.clamp(min=0).mean(0).clamp(min=1e-6)
        p = torch.softmax(-d2 / (scale[None, :, None] * temperature), -1).mean(0)  # (H, K)
        bits = -(p * torch.log2(p.clamp(min=1e-12))).sum(-1)  # (H,)
        total = total + F.relu(floor_bits - bits).mean()
        lowest = min(lowest, float(bits.detach().min()))
    return total / len(attn), lowest


def code_counts(codes: list[torch.Tensor], mask: torch.Tensor, num_codes: int) -> torch.Tensor:
    """(L, H, K) int64: how often each code of each head of each layer occurs at the valid positions."""
    return torch.stack([torch.stack([torch.bincount(c[mask][:, h].cpu(), minlength=num_codes)
                                     for h in range(c.shape[-1])]) for c in codes])


def entropy_bits(counts: torch.Tensor) -> torch.Tensor:
    """(..., K) counts -> (...) entropy in bits of each histogram."""
    p = counts.double() / counts.sum(-1, keepdim=True).clamp(min=1)
    return -(p * torch.log2(p.clamp(min=1e-300))).sum(-1)
