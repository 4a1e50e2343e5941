"""Stability training: random atomic edits, their alignment, the loss, and its effect on code flips."""

from __future__ import annotations

import json
import random

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from vqinc.model.stability import (
    TokenEdit,
    code_counts,
    code_usage_loss,
    edited_batch,
    entropy_bits,
    random_edit,
    stability_loss,
)


@given(st.lists(st.integers(1, 50), min_size=2, max_size=120), st.integers(0, 10_000), st.integers(1, 25))
def test_random_edit_is_atomic_and_bounded(ids, seed, max_tokens):
    e = random_edit(ids, random.Random(seed), max_tokens)
    m = min(max_tokens, max(1, len(ids) // 4))
    assert 0 <= e.start <= len(ids) - e.delete
    assert e.delete <= m and len(e.insert) <= m and (e.delete > 0 or len(e.insert) > 0)
    kind = "insert" if e.delete == 0 else ("delete" if not e.insert else "replace")
    assert (kind == "insert") == (e.delete == 0) and (kind == "delete") == (len(e.insert) == 0)
    # inserted tokens are a span of the same document
    ins = list(e.insert)
    assert not ins or any(ids[s:s + len(ins)] == ins for s in range(len(ids)))
    new = e.apply(ids)
    assert len(new) == len(ids) - e.delete + len(e.insert) >= 1
    assert new[: e.start] == ids[: e.start] and new[e.start + len(ins):] == ids[e.start + e.delete:]


def test_every_kind_occurs():
    ids = list(range(1, 200))
    rng = random.Random(0)
    kinds = set()
    for _ in range(200):
        e = random_edit(ids, rng, 20)
        kinds.add("insert" if e.delete == 0 else ("delete" if not e.insert else "replace"))
    assert kinds == {"insert", "delete", "replace"}


def test_edit_positions_lean_to_the_start_but_cover_the_document():
    ids = list(range(1, 1001))
    rng = random.Random(0)
    starts = [random_edit(ids, rng, 20).start for _ in range(2000)]
    early = sum(s < 32 for s in starts) / len(starts)
    assert 0.2 < early < 0.4  # uniform alone would give about 3 %
    assert sum(s >= 500 for s in starts) / len(starts) > 0.2 and max(starts) > 950


def test_edit_refuses_one_token_documents():
    with pytest.raises(ValueError, match=">= 2 tokens"):
        random_edit([5], random.Random(0))


@given(st.lists(st.lists(st.integers(1, 30), min_size=0, max_size=40), min_size=1, max_size=5),
       st.integers(0, 1000), st.integers(4, 48))
def test_edited_batch_aligns_equal_tokens_after_the_edit(rows, seed, max_len):
    bos = 0
    eb = edited_batch(rows, bos, random.Random(seed), 20, max_len)
    assert eb.ids.shape == eb.mask.shape == eb.source.shape and eb.ids.shape[1] <= max_len
    for b, r in enumerate(rows):
        orig = [bos, *r][:max_len]
        n = int(eb.mask[b].sum())
        assert eb.ids[b, 0] == bos and n >= 1
        src = eb.source[b]
        assert (src[n:] == -1).all()
        aligned = (src >= 0).nonzero().flatten().tolist()
        for j in aligned:  # the same token, the edited copy never aligns a position to itself before the edit
            i = int(src[j])
            assert 1 <= i < len(orig) and eb.ids[b, j] == orig[i]
        if aligned:  # offsets are one constant shift: a single atomic edit
            assert len({j - int(src[j]) for j in aligned}) == 1
            assert all(int(src[j]) > 0 for j in aligned)


def test_edited_batch_alignment_of_a_known_edit(monkeypatch):
    import vqinc.model.stability as stab

    monkeypatch.setattr(stab, "random_edit", lambda ids, rng, m: TokenEdit(2, 1, (7, 7, 7)))
    eb = edited_batch([[1, 2, 3, 4, 5]], 0, random.Random(0), 20, 64)
    assert eb.ids[0].tolist() == [0, 1, 2, 7, 7, 7, 4, 5]
    # positions 6, 7 (tokens 4, 5) come from original positions 4, 5; before and inside the edit: -1
    assert eb.source[0].tolist() == [-1, -1, -1, -1, -1, -1, 4, 5]


def _toy(num=1, heads=2, k=4, dh=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    cb = torch.randn(heads, k, dh, generator=g)
    return [cb] * num


def test_stability_loss_prefers_the_original_cell_and_is_scale_free():
    (cb,) = _toy()
    target = torch.tensor([[[0, 1], [2, 3]]])  # (B=1, T=2, H=2) original codes
    source = torch.tensor([[0, 1]])
    on = cb[torch.arange(2)[None, None], target]  # exactly the original codes' vectors (1, 2, 2, 3)
    off = cb[torch.arange(2)[None, None], (target + 1) % 4]  # another code's vectors
    on = on + 0.01 * torch.randn(on.shape)
    off = off + 0.01 * torch.randn(off.shape)
    loss_on = stability_loss([on], [cb], [target], source)
    loss_off = stability_loss([off], [cb], [target], source)
    assert loss_on < 0.1 < loss_off
    # same geometry at 10x the scale: the same loss (the model cannot win by inflating activations)
    torch.testing.assert_close(stability_loss([on * 10], [cb * 10], [target], source), loss_on)


def test_stability_loss_gradient_moves_outputs_back_into_their_cell():
    (cb,) = _toy(k=8, dh=4)
    target = torch.randint(0, 8, (1, 6, 2), generator=torch.Generator().manual_seed(1))
    x = torch.randn(1, 6, 2, 4, requires_grad=True)
    source = torch.arange(6)[None]
    opt = torch.optim.SGD([x], lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        stability_loss([x], [cb], [target], source).backward()
        opt.step()
    d2 = ((x.detach()[..., None, :] - cb[None, None]) ** 2).sum(-1)  # (1, 6, 2, K)
    assert torch.equal(d2.argmin(-1), target)


def test_stability_loss_ignores_unaligned_positions():
    (cb,) = _toy()
    x = torch.randn(1, 3, 2, 3, requires_grad=True)
    assert stability_loss([x], [cb], [torch.zeros(1, 3, 2, dtype=torch.long)], torch.full((1, 3), -1)) == 0
    src = torch.tensor([[-1, -1, 2]])
    stability_loss([x], [cb], [torch.zeros(1, 3, 2, dtype=torch.long)], src).backward()
    assert x.grad[0, :2].abs().sum() == 0 and x.grad[0, 2].abs().sum() > 0


# ---------------------------------------------------------------------------------------------- trainer


def _toy_dataset(tmp_path, n=240, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    good = ["great", "wonderful", "charming", "superb", "moving"]
    bad = ["awful", "boring", "dull", "tedious", "clumsy"]
    filler = ["film", "plot", "cast", "the", "a", "and", "story", "scene"]
    rows = []
    for i in range(n):
        lab = i % 2
        words = rng.choice(good if lab else bad, 3).tolist() + rng.choice(filler, 9).tolist()
        rows.append({"text": " ".join(rng.permutation(words)), "label": "pos" if lab else "neg"})
    path = tmp_path / "toy.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def _cfg(tmp_path, name, **kw):
    from vqinc.model.train import TrainConfig

    base = dict(dataset=str(_toy_dataset(tmp_path)), out=str(tmp_path / name), d_model=16, num_heads=2,
                num_layers=2, vocab_size=300, num_codes=8, max_len=24, batch_size=16, teacher_epochs=3,
                student_epochs=2, lr=3e-3, kmeans_batches=2, save_every=1000, threads=1, edit_max_tokens=4)
    return TrainConfig(**{**base, **kw})


@torch.no_grad()
def _flip_rate(ckpt, texts, seed=0):
    """Fraction of aligned positions after a random edit whose code changes (any head, mean over layers)."""
    from vqinc.model.checkpoint import load_checkpoint
    from vqinc.model.train import pad_batch

    model, tok, _ = load_checkpoint(ckpt)
    rows = [tok.encode(t, add_special_tokens=False).ids for t in texts]
    ids, mask = pad_batch(rows, 0, 24)
    eb = edited_batch(rows, 0, random.Random(seed), 4, 24)
    a, b = model(ids, mask).codes, model(eb.ids, eb.mask).codes
    valid = eb.source >= 0
    flips = 0
    for ca, cb in zip(a, b, strict=True):
        gathered = ca.gather(1, eb.source.clamp(min=0)[..., None].expand(-1, -1, ca.shape[-1]))
        flips += int(((gathered != cb).any(-1) & valid).sum())
    return flips / (int(valid.sum()) * len(a))


def test_stability_weight_lowers_code_flips_on_held_out_edits(tmp_path):
    """Same teacher, same data: the student trained with the stability loss flips fewer codes."""
    from vqinc.model.train import train

    plain = train(_cfg(tmp_path, "plain"))
    stable = train(_cfg(tmp_path, "stable", stability_weight=5.0, teacher_from=str(tmp_path / "plain")))
    assert stable["teacher"] == plain["teacher"]  # the teacher was reused, not retrained
    assert not (tmp_path / "stable" / "teacher.state.pt").exists()
    texts = [json.loads(line)["text"] for line in _toy_dataset(tmp_path, n=200, seed=1).read_text().splitlines()]
    f_plain = _flip_rate(tmp_path / "plain" / "checkpoint", texts)
    f_stable = _flip_rate(tmp_path / "stable" / "checkpoint", texts)
    print("flip rates", f_plain, f_stable)
    assert f_stable < 0.6 * f_plain, (f_plain, f_stable)
    assert stable["student"]["accuracy"] >= 0.7
    logs = json.loads((tmp_path / "stable" / "metrics.json").read_text())["student_losses"]
    assert len(logs["stab"]) == len(logs["loss"]) and len(logs["flip"]) == len(logs["loss"])


def test_interrupted_student_resumes_to_the_same_weights(tmp_path, monkeypatch):
    """A run killed mid-phase and restarted ends with exactly the weights of an uninterrupted run."""
    import vqinc.model.train as tr
    from vqinc.model.checkpoint import load_checkpoint

    kw = dict(stability_weight=1.0, save_every=5, student_epochs=2)
    tr.train(_cfg(tmp_path, "whole", **kw))
    calls = {"n": 0}
    real = tr.stability_loss

    def dying(*a, **k):
        calls["n"] += 1
        if calls["n"] > 12:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(tr, "stability_loss", dying)
    with pytest.raises(KeyboardInterrupt):
        tr.train(_cfg(tmp_path, "cut", teacher_from=str(tmp_path / "whole"), **kw))
    assert torch.load(tmp_path / "cut" / "student.state.pt", weights_only=False)["step"] == 10
    monkeypatch.setattr(tr, "stability_loss", real)
    tr.train(_cfg(tmp_path, "cut", teacher_from=str(tmp_path / "whole"), **kw))
    a, _, _ = load_checkpoint(tmp_path / "whole" / "checkpoint")
    b, _, _ = load_checkpoint(tmp_path / "cut" / "checkpoint")
    for (k, x), (_, y) in zip(sorted(a.state_dict().items()), sorted(b.state_dict().items()), strict=True):
        assert torch.equal(x, y), k


def test_pretrain_phase_lowers_lm_loss_and_stops_when_asked(tmp_path):
    from vqinc.model.train import train

    corpus = tmp_path / "corpus.txt"
    corpus.write_text(" ".join(["the proposal adds a keyword to the grammar and existing code keeps working"] * 300))
    info = train(_cfg(tmp_path, "pre", pretrain_corpus=str(corpus), pretrain_epochs=20, max_len=48,
                      stop_after="pretrain"))
    losses = info["pretrain"]["loss"]
    assert sum(losses[-3:]) / 3 < 0.5 * sum(losses[:3]) / 3
    assert (tmp_path / "pre" / "pretrain.pt").is_file() and not (tmp_path / "pre" / "teacher.pt").exists()


def test_device_flag(tmp_path):
    from vqinc.model.train import resolve_device, train

    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="not a torch device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="--device cpu"):
            resolve_device("cuda")
        with pytest.raises(ValueError, match="sees no CUDA"):
            train(_cfg(tmp_path, "cuda", device="cuda"))
        assert not (tmp_path / "cuda").exists()  # refused before any work
    else:  # pragma: no cover - GPU machines
        with pytest.raises(ValueError, match="CUDA device"):
            resolve_device(f"cuda:{torch.cuda.device_count()}")


def test_train_cli_reports_an_unavailable_device(capsys):
    from vqinc.runtime.cli import main

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert main(["train", "--device", "cuda", "--dataset", "rotten_tomatoes"]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


def test_train_cli_runs_on_cpu_with_every_new_flag(tmp_path, capsys):
    """`vqinc train --device cpu` end to end through the CLI parser, with the stability and pretraining flags."""
    from vqinc.runtime.cli import main

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the proposal adds a keyword to the grammar and existing code keeps working. " * 50)
    args = ["train", "--dataset", str(_toy_dataset(tmp_path)), "--out", str(tmp_path / "cli"), "--device", "cpu",
            "--d-model", "16", "--num-heads", "2", "--num-layers", "1", "--vocab-size", "300", "--num-codes", "8",
            "--max-len", "24", "--batch-size", "16", "--teacher-epochs", "1", "--student-epochs", "1",
            "--kmeans-batches", "1", "--threads", "1", "--stability-weight", "0.5", "--edit-max-tokens", "3",
            "--pretrain-corpus", str(corpus), "--pretrain-epochs", "1", "--pretrain-lr", "3e-3", "--balanced",
            "--random-windows"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert f"checkpoint: {tmp_path / 'cli' / 'checkpoint'}" in out and '"majority_baseline"' in out
    info = json.loads((tmp_path / "cli" / "checkpoint" / "config.json").read_text())["info"]["train_config"]
    assert info["device"] == "cpu" and info["stability_weight"] == 0.5 and info["pretrain_corpus"] == str(corpus)


def test_label_invariant_training_runs_and_keeps_accuracy(tmp_path):
    """`position_jitter` (RoPE): teacher and student trained on gapped and squeezed positions, the
    stability loss on edited copies labelled as the runtime labels them; the student still classifies."""
    from vqinc.model.train import train

    info = train(_cfg(tmp_path, "jitter", positions="rope", position_jitter=0.1, stability_weight=1.0))
    assert info["student"]["accuracy"] >= 0.7
    logs = json.loads((tmp_path / "jitter" / "metrics.json").read_text())["student_losses"]
    assert len(logs["stab"]) == len(logs["loss"]) > 0


def test_code_usage_loss_penalises_a_collapsing_head_and_not_a_spread_one() -> None:
    torch.manual_seed(0)
    cb = torch.randn(2, 8, 4)  # (H, K, dh)
    mask = torch.ones(1, 64, dtype=torch.bool)
    spread = cb[:, torch.arange(64) % 8].transpose(0, 1)[None]  # every code used equally: 3 bits per head
    loss, bits = code_usage_loss([spread], [cb], mask, floor_bits=2.0, temperature=0.01)
    assert float(loss) == 0.0 and bits > 2.9
    # 7 rows in 8 on code 0: about 1 bit per head, under the 2-bit floor
    picks = torch.where(torch.arange(64) % 8 == 0, torch.arange(64) % 7 + 1, 0)
    collapsing = (cb[:, picks].transpose(0, 1)[None] + 0.1 * torch.randn(1, 64, 2, 4)).requires_grad_()
    loss, bits = code_usage_loss([collapsing], [cb], mask, floor_bits=2.0)
    assert bits < 1.5 and float(loss) > 0.4
    loss.backward()  # differentiable: the guard moves rows toward the unused codes
    assert float(collapsing.grad.abs().sum()) > 0


def test_entropy_bits_of_code_counts() -> None:
    codes = [torch.tensor([[[0, 1], [1, 1], [2, 1], [3, 1]]])]  # (B=1, T=4, H=2)
    mask = torch.ones(1, 4, dtype=torch.bool)
    counts = code_counts(codes, mask, num_codes=4)
    assert counts.shape == (1, 2, 4)
    bits = entropy_bits(counts)
    assert bits[0, 0].item() == pytest.approx(2.0) and bits[0, 1].item() == 0.0
