"""The C kernels (runtime/engine/_kernels.c): the exp they use is as accurate as the bounds assume, and bad
buffers are refused with an error before anything is read or written."""

from __future__ import annotations

import os

import numpy as np
import pytest

from vqinc.runtime.engine import kernels
from vqinc.runtime.engine.numerics import EXP_ULPS

if kernels.NATIVE is None:
    if os.environ.get("VQINC_REQUIRE_KERNELS") == "1":
        raise AssertionError("VQINC_REQUIRE_KERNELS=1 but the native kernels are not loaded")
    pytest.skip("native kernels not built", allow_module_level=True)
K = kernels.NATIVE


def test_exp_is_within_a_few_float64_ulps_over_the_whole_range():
    """The float64 paths' bounds allow EXP_ULPS (16) float64 ulps per weight (attend64 relies on it) and the
    lazy update's allow 16 float32 ulps: the kernel's exp must stay inside the first."""
    rng = np.random.default_rng(0)
    z = np.concatenate([np.linspace(-700, 80, 200_001), rng.uniform(-60, 5, 200_000), [0.0, -1e-300, 1e-17]])
    e = z.copy()
    K.exp_inplace(e)
    ref = np.exp(z.astype(np.longdouble))
    assert float((np.abs(e - ref) / ref).max()) < EXP_ULPS * 2.0**-53


def test_exp_underflows_to_zero_below_minus_700():
    z = np.array([-700.5, -1e4, -np.inf])
    K.exp_inplace(z)
    assert z.tolist() == [0.0, 0.0, 0.0]


NAMES = ["q", "k", "v", "kpos", "slots", "qpos", "m", "codes", "qnorm", "vmax", "den", "den_err", "o", "o_err",
         "margin", "ct", "sq", "inv_2pair", "pen", "err_const", "err_norm", "need", "changed"]


def _args(n=3, X=2, H=2, cap=4, dh=8, K_=5):
    """A consistent call: zero queries, keys and values (every weight exp(0) = 1), two added keys."""
    f32, f64, i64 = np.float32, np.float64, np.int64
    c = np.random.default_rng(0).normal(size=(H, K_, dh))
    from vqinc.runtime.engine.numerics import Codebook
    book = Codebook(c)
    _, sq, inv, pen, ec, en, _ = book.parts
    buffers = dict(q=np.zeros((H, cap, dh), f32), k=np.zeros((H, X, dh), f32), v=np.zeros((H, X, dh), f32),
                   kpos=np.zeros(X, i64), slots=np.arange(n, dtype=i64), qpos=np.arange(n, dtype=i64),
                   m=np.zeros((H, cap), f32), codes=np.zeros((cap, H), i64), qnorm=np.zeros((H, cap), f32),
                   vmax=np.ones(H), den=np.ones((H, cap)), den_err=np.zeros((H, cap)), o=np.zeros((H, cap, dh), f32),
                   o_err=np.zeros((H, cap)), margin=np.full((H, cap), 100.0, f64), ct=book.ct, sq=sq, inv_2pair=inv,
                   pen=pen, err_const=ec, err_norm=en, need=np.zeros(n, np.uint8), changed=np.zeros(n, np.uint8))
    return [buffers[k] for k in NAMES] + [H, H, cap, dh, X, K_, n, X, 0, 0, 0.3, 1e-15, 1e-9, 0.25, 16.0]


DEN = NAMES.index("den")


def test_lazy_update_runs_on_consistent_buffers():
    args = _args()
    assert K.lazy_update(*args) == 0  # wide margins: every row keeps its code
    assert (args[DEN][:, :3] == 3).all()  # den = 1 + two added keys of weight exp(0) each
    assert (args[DEN][:, 3] == 1).all()  # a slot that is not among the rows is untouched
    args[NAMES.index("margin")][:] = -1.0  # no margin left: rescored from o' = 0 against the codebook
    args[DEN][:] = 1.0
    args[NAMES.index("o_err")][:] = 0.0  # the first call's cheap keep grew it by the movement bound
    assert K.lazy_update(*args) == 0
    c = np.random.default_rng(0).normal(size=(2, 5, 8))
    nearest = np.argmin((c**2).sum(-1), axis=1)  # the code nearest to the origin, per head
    assert (args[NAMES.index("codes")][:3] == nearest).all()


@pytest.mark.parametrize("bad, match", [
    ((0, np.zeros((2, 3, 8), np.float32)), "q has"),
    ((4, np.array([0, 1, 9])), "slot 9 outside"),
    ((7, np.full((4, 2), 7)), "code outside"),
    ((NAMES.index("need"), np.zeros(2, np.uint8)), "need has"),
    ((NAMES.index("qnorm"), np.zeros((2, 3), np.float32)), "qnorm has"),
    ((len(NAMES), 0), "inconsistent dimensions"),
])
def test_lazy_update_refuses_bad_buffers(bad, match):
    args = _args()
    before = args[DEN].copy()
    args[bad[0]] = bad[1]
    with pytest.raises(ValueError, match=match):
        K.lazy_update(*args)
    assert (args[DEN] == before).all()


def test_readonly_output_is_refused():
    args = _args()
    args[DEN].setflags(write=False)
    with pytest.raises((TypeError, BufferError, ValueError)):
        K.lazy_update(*args)


@pytest.mark.parametrize("seed", range(5))
def test_margins_agree_with_the_numpy_path(seed):
    """The C margins recompute the float64 scores in another order: equal to the numpy path within the
    error terms both subtract (far below them), on random rows, near-ties and duplicate code vectors."""
    from tests_support import kernel_path

    from vqinc.runtime.engine.numerics import Codebook

    rng = np.random.default_rng(seed)
    c = rng.normal(size=(3, 16, 8))
    c[1, 5] = c[1, 4]  # identical code vectors: a facet at infinity
    book = Codebook(c)
    o = rng.normal(size=(3, 40, 8))
    o[:, :5] = (c[:, :1] + c[:, 1:2]) / 2  # on a facet
    codes = book.nearest(o)[0]
    for heads in (slice(None), [2], np.array([0, 2])):
        sub_o, sub_codes = o[heads], codes[heads]
        with kernel_path("native"):
            m1, r1 = book.margins(sub_o, sub_codes, heads)
        with kernel_path("numpy"):
            m0, r0 = book.margins(sub_o, sub_codes, heads)
        np.testing.assert_allclose(m1, m0, rtol=0, atol=1e-12)
        np.testing.assert_allclose(r1, r0, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("DH", [16, 32, 40, 5])
def test_attend64_matches_the_numpy_float64_path(DH):
    """attend64 (C) and attention._attention64 (numpy) compute the same float64 attention: equal far below
    the float64 error bound, with free slots (pos -1) and keys after the row excluded. Head sizes cover the
    blocked loops (32 columns, then 8) and the plain one (dh not a multiple of 8)."""
    from vqinc.runtime.engine.attention import _attention64
    from vqinc.runtime.engine.state import LayerState

    rng = np.random.default_rng(1)
    H, HKV, cap = 4, 2, 40

    class Spec:
        num_heads, num_kv_heads, head_dim, group, d_model = H, HKV, DH, H // HKV, H * DH

    layer = LayerState.empty(cap, Spec)
    layer.q[:] = rng.normal(size=layer.q.shape) * 2
    layer.k[:] = rng.normal(size=layer.k.shape) * 2
    layer.v[:] = rng.normal(size=layer.v.shape)
    pos = np.full(cap, -1, np.int64)
    live = rng.permutation(cap)[:30]
    pos[live] = np.arange(30)
    rows = live[[0, 7, 29, 3, 12, 20, 25]]  # one block of four rows, then three alone
    o, m, den = np.empty((H, 7, DH)), np.empty((H, 7)), np.empty((H, 7))
    order = live[:30].astype(np.int64)  # the slot of each position
    K.attend64(layer.q, layer.k, layer.v, pos, order, rows.astype(np.int64), o, m, den, H, HKV, cap, DH, 7, 30,
               float(np.float32(DH**-0.5)))
    for h in range(H):
        o_ref, m_ref, den_ref = _attention64(layer, h, rows, pos, Spec)
        np.testing.assert_allclose(o[h], o_ref, rtol=0, atol=1e-12)
        # m is a score: its rounding error scales with the scores, not with m (which can be near 0)
        np.testing.assert_allclose(m[h], m_ref, rtol=0, atol=1e-14 * np.abs(m_ref).max())
        np.testing.assert_allclose(den[h], den_ref, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="not a row"):
        K.attend64(layer.q, layer.k, layer.v, pos, order, np.array([np.setdiff1d(np.arange(cap), live)[0]]),
                   o[:, :1].copy(), m[:, :1].copy(), den[:, :1].copy(), H, HKV, cap, DH, 1, 30, 0.25)
    with pytest.raises(ValueError, match="not the slot"):
        K.attend64(layer.q, layer.k, layer.v, pos, order[::-1].copy(), rows.astype(np.int64), o, m, den, H, HKV, cap,
                   DH, 7, 30, 0.25)


@pytest.mark.parametrize("DH", [32, 5])
def test_recompute64_matches_attend64_then_rows_store(DH):
    """recompute64 (one C call) equals attend64 followed by the Python steps it replaces (nearest code,
    margins, error bounds, float32 rounding: attention._Rows.store): codes identical, the rest equal far
    below their error bounds."""
    from vqinc.runtime.engine.attention import _Rows
    from vqinc.runtime.engine.numerics import U64, Codebook
    from vqinc.runtime.engine.state import LayerState

    rng = np.random.default_rng(2)
    H, HKV, cap, R = 4, 2, 40, 6

    class Spec:
        num_heads, num_kv_heads, head_dim, group, d_model = H, HKV, DH, H // HKV, H * DH

    layer = LayerState.empty(cap, Spec)
    layer.q[:] = rng.normal(size=layer.q.shape)
    layer.k[:] = rng.normal(size=layer.k.shape)
    layer.v[:] = rng.normal(size=layer.v.shape)
    layer.qnorm[:] = np.sqrt((layer.q.astype(np.float64) ** 2).sum(-1)) * (1 + 1e-5)
    kmax = np.sqrt((layer.k.astype(np.float64) ** 2).sum(-1)).max(1) * (1 + 1e-5)
    vmax = np.sqrt((layer.v.astype(np.float64) ** 2).sum(-1)).max(1) * (1 + 1e-5)
    live = rng.permutation(cap)[:30]
    pos = np.full(cap, -1, np.int64)
    pos[live] = np.arange(30)
    order, slots = live.astype(np.int64), live[[2, 9, 29, 0, 17, 4]].astype(np.int64)
    book = Codebook(rng.normal(size=(H, 8, DH)) * 0.3)
    scale = float(np.float32(DH**-0.5))

    ref = _Rows(layer, slots, kmax, vmax, book, Spec)
    o, m, den = np.empty((H, R, DH)), np.empty((H, R)), np.empty((H, R))
    K.attend64(layer.q, layer.k, layer.v, pos, order, slots, o, m, den, H, HKV, cap, DH, R, 30, scale)
    codes, s = book.nearest(o)
    ref.store(slice(None), np.arange(R), o, m, den, codes, U64, cap, s)

    got = _Rows(layer, slots, kmax, vmax, book, Spec)
    _, sq, inv, pen, ec, en, _ = book.parts
    K.recompute64(layer.q, layer.k, layer.v, pos, order, slots, layer.qnorm, kmax, vmax, book.ct, sq, inv, pen, ec, en,
                  got.o, got.m, got.den, got.den_err, got.o_err, got.margin, got.codes, H, HKV, cap, DH, R, 30, 8,
                  scale, float(EXP_ULPS))
    assert (got.codes == ref.codes).all()
    assert (got.m == ref.m).all()
    np.testing.assert_allclose(got.o, ref.o, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(got.margin, ref.margin, rtol=0, atol=1e-11)
    for name in ("den", "den_err", "o_err"):
        np.testing.assert_allclose(getattr(got, name), getattr(ref, name), rtol=1e-9)
    with pytest.raises(ValueError, match="qnorm has"):
        K.recompute64(layer.q, layer.k, layer.v, pos, order, slots, layer.qnorm[:, :3].copy(), kmax, vmax, book.ct, sq,
                      inv, pen, ec, en, got.o, got.m, got.den, got.den_err, got.o_err, got.margin, got.codes, H, HKV,
                      cap, DH, R, 30, 8, scale, float(EXP_ULPS))
