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


NAMES = ["q", "k", "v", "kpos", "slots", "qpos", "m", "codes", "vnorm", "vmax", "slack", "den", "den_err", "o",
         "o_err", "margin", "ct", "sq", "inv_2pair", "pen", "err_const", "err_norm", "need", "changed"]


def _args(n=3, X=2, H=2, cap=4, dh=8, K_=5):
    """A consistent call: zero queries, keys and values (every weight exp(0) = 1), two added keys."""
    f32, f64, i64 = np.float32, np.float64, np.int64
    c = np.random.default_rng(0).normal(size=(H, K_, dh))
    from vqinc.runtime.engine.numerics import Codebook
    book = Codebook(c)
    _, sq, inv, pen, ec, en, _ = book.parts
    buffers = dict(q=np.zeros((H, cap, dh), f32), k=np.zeros((H, X, dh), f32), v=np.zeros((H, X, dh), f32),
                   kpos=np.zeros(X, i64), slots=np.arange(n, dtype=i64), qpos=np.arange(n, dtype=i64),
                   m=np.zeros((H, cap), f32), codes=np.zeros((cap, H), i64), vnorm=np.zeros((H, X)), vmax=np.ones(H),
                   slack=np.ones(H), den=np.ones((H, cap)), den_err=np.zeros((H, cap)), o=np.zeros((H, cap, dh), f32),
                   o_err=np.zeros((H, cap)), margin=np.full((H, cap), 100.0, f64), ct=book.ct, sq=sq, inv_2pair=inv,
                   pen=pen, err_const=ec, err_norm=en, need=np.zeros(n, np.uint8), changed=np.zeros(n, np.uint8))
    return [buffers[k] for k in NAMES] + [H, H, cap, dh, X, K_, n, X, 0, 0, 0.3, 1e-15, 1e-9, 0.25]


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
    ((22, np.zeros(2, np.uint8)), "need has"),
    ((24, 0), "inconsistent dimensions"),
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


def test_attend64_matches_the_numpy_float64_path():
    """attend64 (C) and attention._attention64 (numpy) compute the same float64 attention: equal far below
    the float64 error bound, with free slots (pos -1) and keys after the row excluded."""
    from vqinc.runtime.engine.attention import _attention64
    from vqinc.runtime.engine.state import LayerState

    rng = np.random.default_rng(1)
    H, HKV, DH, cap = 4, 2, 16, 40

    class Spec:
        num_heads, num_kv_heads, head_dim, group, d_model = H, HKV, DH, H // HKV, H * DH

    layer = LayerState.empty(cap, Spec)
    layer.q[:] = rng.normal(size=layer.q.shape) * 2
    layer.k[:] = rng.normal(size=layer.k.shape) * 2
    layer.v[:] = rng.normal(size=layer.v.shape)
    pos = np.full(cap, -1, np.int64)
    live = rng.permutation(cap)[:30]
    pos[live] = np.arange(30)
    rows = live[[0, 7, 29]]
    o, m, den = np.empty((H, 3, DH)), np.empty((H, 3)), np.empty((H, 3))
    K.attend64(layer.q, layer.k, layer.v, pos, rows.astype(np.int64), o, m, den, H, HKV, cap, DH, 3,
               float(np.float32(DH**-0.5)))
    for h in range(H):
        o_ref, m_ref, den_ref = _attention64(layer, h, rows, pos, Spec)
        np.testing.assert_allclose(o[h], o_ref, rtol=0, atol=1e-12)
        np.testing.assert_allclose(m[h], m_ref, rtol=1e-14, atol=0)
        np.testing.assert_allclose(den[h], den_ref, rtol=1e-12, atol=0)
    with pytest.raises(ValueError, match="not a row"):
        K.attend64(layer.q, layer.k, layer.v, pos, np.array([np.setdiff1d(np.arange(cap), live)[0]]), o[:, :1].copy(),
                   m[:, :1].copy(), den[:, :1].copy(), H, HKV, cap, DH, 1, 0.25)
