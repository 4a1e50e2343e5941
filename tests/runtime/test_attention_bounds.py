"""Soundness of the numerics the engine relies on, against float64 brute force (no model needed):
- the `attend` graph's output lies within `attention_bounds`' E_o of the exact attention output;
- `Codebook.margins` is a lower bound on the distance to the cell boundary;
- every code `lazy_update` keeps is still the exact nearest code after keys come and go, and the
  margin, radius and denominator bounds it stores still hold."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests_support import kernel_path

from vqinc.export.attend import attend_graph
from vqinc.runtime.engine.attention import KeyDelta, lazy_update
from vqinc.runtime.engine.numerics import Codebook, attention_bounds
from vqinc.runtime.engine.state import LayerState
from vqinc.runtime.format.spec import ModelSpec
from vqinc.runtime.ort.sessions import session_options

H, HKV, DH, K = 4, 2, 8, 8
SPEC = ModelSpec(family="llama", vocab_size=10, d_model=H * DH, num_layers=1, num_heads=H, num_kv_heads=HKV,
                 d_ff=8, max_positions=512, bos_token_id=0, num_codes=K, positions="none", pooling="mean",
                 labels=("a", "b"))
SCALE = float(np.float32(DH**-0.5))
KV = np.arange(H) // (H // HKV)


def exact_attention(q, k, v):
    """q (H, dh), k/v (n, Hkv, dh) all visible -> o (H, dh), s (H, n) in float64."""
    s = SCALE * np.einsum("hd,nhd->hn", q.astype(np.float64), k[:, KV].astype(np.float64))
    p = np.exp(s - s.max(axis=1, keepdims=True))
    return np.einsum("hn,nhd->hd", p, v[:, KV].astype(np.float64)) / p.sum(axis=1, keepdims=True), s


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(1, 90), spread=st.sampled_from([0.3, 1.0, 3.0, 8.0]))
def test_attend_graph_error_is_within_the_bound(seed, n, spread):
    rng = np.random.default_rng(seed)
    cb = rng.normal(size=(H, K, DH)).astype(np.float32)
    sess = _attend_session(cb)
    cap = n + 5
    q = (rng.normal(size=(H, n, DH)) * spread).astype(np.float32)
    k = (rng.normal(size=(HKV, cap, DH)) * spread).astype(np.float32)
    v = (rng.normal(size=(HKV, cap, DH)) * spread).astype(np.float32)
    kpos = np.full(cap, -1, np.int64)
    kpos[rng.permutation(cap)[:n]] = np.arange(n)
    qpos = np.arange(n, dtype=np.int64)
    o, m, den, codes = sess.run(None, dict(q=q, k=k, v=v, qpos=qpos, kpos=kpos))
    qnorm = np.linalg.norm(q.astype(np.float64), axis=-1)
    kmax = np.linalg.norm(k.astype(np.float64), axis=-1).max(axis=1)[KV]
    vmax = np.linalg.norm(v.astype(np.float64), axis=-1).max(axis=1)[KV]
    e_o, theta = attention_bounds(qnorm, kmax, vmax, cap, DH, SCALE)
    slot_of = np.argsort(kpos)[cap - n:]  # slots in position order
    for r in range(n):
        keys = slot_of[: r + 1]
        exact, s = exact_attention(q[:, r], k[:, keys].transpose(1, 0, 2), v[:, keys].transpose(1, 0, 2))
        err = np.linalg.norm(o[:, r].astype(np.float64) - exact, axis=-1)
        assert (err <= e_o[:, r]).all(), (err, e_o[:, r])
        d_exact = np.exp(s - m[:, r, None].astype(np.float64)).sum(axis=1)
        assert (np.abs(den[:, r] - d_exact) <= 2 * theta[:, r] * d_exact).all()


def _attend_session(cb):
    return ort.InferenceSession(attend_graph(cb, H, HKV, DH).SerializeToString(), session_options(),
                                providers=["CPUExecutionProvider"])


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**31))
def test_codebook_margin_is_a_lower_bound_on_the_distance_to_another_cell(seed):
    rng = np.random.default_rng(seed)
    book = Codebook(rng.normal(size=(H, K, DH)))
    o = rng.normal(size=(H, 5, DH))
    codes, _ = book.nearest(o)
    margin, radius = book.margins(o, codes)
    assert (margin >= 0).all()
    np.testing.assert_allclose(radius, np.linalg.norm(o - book.c[np.arange(H)[:, None], codes], axis=-1), rtol=1e-9)
    # any point at distance < margin keeps the code
    for _ in range(20):
        d = rng.normal(size=o.shape)
        d /= np.linalg.norm(d, axis=-1, keepdims=True)
        moved = o + d * (margin[..., None] * rng.uniform(0, 0.999, size=margin.shape + (1,)))
        assert (book.nearest(moved)[0] == codes).all()
    # and the facet distance is exact: moving just past it towards that facet changes the code
    heads = np.arange(H)[:, None]
    s = book.scores(o)
    gap = np.where(book.inv_2pair[heads, codes] > 0,
                   (s - np.take_along_axis(s, codes[..., None], -1)) * book.inv_2pair[heads, codes], np.inf)
    k_near = gap.argmin(-1)
    direction = book.c[heads, k_near] - book.c[heads, codes]
    direction /= np.linalg.norm(direction, axis=-1, keepdims=True)
    beyond = o + direction * (margin[..., None] + 1e-6)
    assert (book.nearest(beyond)[0] != codes).all()


def _random_layer(rng, n, spread):
    """A layer of n rows (slots shuffled) with exact attention summaries; returns (layer, pos, book)."""
    cap = n + 40
    layer = LayerState.empty(cap, SPEC)
    layer.q[:] = rng.normal(size=layer.q.shape) * spread
    layer.k[:] = rng.normal(size=layer.k.shape) * spread
    layer.v[:] = rng.normal(size=layer.v.shape) * spread
    layer.qnorm[:] = np.linalg.norm(layer.q.astype(np.float64), axis=-1) * (1 + 1e-6)
    pos = np.full(cap, -1, np.int64)
    slots = rng.permutation(cap)[:n]
    pos[slots] = np.arange(n)
    book = Codebook(rng.normal(size=(H, K, DH)) * spread)
    for r, b in enumerate(slots):
        keys = slots[: r + 1]
        o, s = exact_attention(layer.q[:, b], layer.k[:, keys].transpose(1, 0, 2), layer.v[:, keys].transpose(1, 0, 2))
        code = book.nearest(o[:, None])[0]  # (H, 1)
        margin, _ = book.margins(o[:, None], code)
        layer.codes[b] = code[:, 0]
        layer.m[:, b] = s.max(axis=1).astype(np.float32)
        layer.den[:, b] = np.exp(s - layer.m[:, b, None].astype(np.float64)).sum(axis=1)
        layer.den_err[:, b] = 1e-12 * layer.den[:, b]
        layer.o[:, b] = o.astype(np.float32)
        layer.o_err[:, b] = np.linalg.norm(layer.o[:, b].astype(np.float64) - o, axis=-1) * (1 + 1e-9) + 1e-12
        layer.margin[:, b] = margin[:, 0] - layer.o_err[:, b]
    return layer, pos, slots, book


@pytest.mark.parametrize("path", ["native", "numpy"])
@settings(max_examples=150, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(3, 60), spread=st.sampled_from([0.5, 1.0, 2.0, 4.0]),
       n_add=st.integers(0, 4), n_del=st.integers(0, 3), n_mod=st.integers(0, 5),
       nudge=st.sampled_from([1e-3, 0.05, 1.0]))
def test_kept_codes_are_exactly_right_and_bounds_hold(path, seed, n, spread, n_add, n_del, n_mod, nudge):
    """Insert n_add rows, delete n_del rows, and change the k, v of n_mod earlier rows by `nudge`
    (relative), then check every lazily kept row against float64 brute force (both the C kernel and
    the numpy path)."""
    with kernel_path(path):
        _check_lazy_update(seed, n, spread, n_add, n_del, n_mod, nudge)


def _check_lazy_update(seed, n, spread, n_add, n_del, n_mod, nudge):
    rng = np.random.default_rng(seed)
    layer, pos, slots, book = _random_layer(rng, n, spread)
    row = int(rng.integers(1, n))
    n_del = min(n_del, n - row)
    deleted = slots[row:row + n_del]
    free = np.setdiff1d(np.arange(pos.shape[0]), slots)[:n_add]
    layer.k[:, free] = rng.normal(size=(HKV, n_add, DH)) * spread
    layer.v[:, free] = rng.normal(size=(HKV, n_add, DH)) * spread
    order = np.concatenate([slots[:row], free, slots[row + n_del:]])
    new_pos = np.full(pos.shape, -1, np.int64)
    new_pos[order] = np.arange(len(order))
    modified = rng.permutation(order[:row])[:n_mod]  # rows before the edit whose k, v change
    old_k, old_v = layer.k[:, modified].copy(), layer.v[:, modified].copy()
    layer.k[:, modified] += (rng.normal(size=old_k.shape) * spread * nudge).astype(np.float32)
    layer.v[:, modified] += (rng.normal(size=old_v.shape) * spread * nudge).astype(np.float32)
    keys = KeyDelta.build((layer.k[:, free], layer.v[:, free], new_pos[free]),
                          (layer.k[:, deleted], layer.v[:, deleted], np.full(n_del, row, np.int64)),
                          (old_k, old_v, new_pos[modified]),
                          (layer.k[:, modified], layer.v[:, modified], new_pos[modified]))
    # lazy rows: every unchanged query from the first changed key on (not the inserted or modified rows)
    lazy = np.setdiff1d(order[int(new_pos[modified].min()) if n_mod else row + n_add:], np.union1d(modified, free))
    before = layer.margin.copy()
    codes_before = layer.codes.copy()
    vmax = np.sqrt(np.einsum("hcd,hcd->hc", layer.v.astype(np.float64), layer.v.astype(np.float64)).max(axis=1))
    res = lazy_update(layer, lazy, new_pos[lazy], keys, book, SPEC, vmax)
    need = res.need
    assert not (res.changed & need).any()
    assert ((layer.codes[lazy] != codes_before[lazy]).any(axis=1) == res.changed).all()
    for b in lazy[~need]:
        p = int(new_pos[b])
        o, s = exact_attention(layer.q[:, b], layer.k[:, order[: p + 1]].transpose(1, 0, 2),
                               layer.v[:, order[: p + 1]].transpose(1, 0, 2))
        code = layer.codes[b][:, None]
        assert (book.nearest(o[:, None])[0] == code).all()  # kept or rescored: the exact nearest code
        margin, _ = book.margins(o[:, None], code)
        assert (margin[:, 0] >= layer.margin[:, b] - 1e-9).all()
        assert (np.linalg.norm(layer.o[:, b].astype(np.float64) - o, axis=-1) <= layer.o_err[:, b] + 1e-12).all()
        den = np.exp(s - layer.m[:, b, None].astype(np.float64)).sum(axis=1)
        assert (np.abs(den - layer.den[:, b]) <= layer.den_err[:, b] + 1e-12 * den).all()
    assert (layer.margin[:, lazy[need]] == before[:, lazy[need]]).all()  # rows to recompute are untouched
