/* Native kernels of the incremental engine: the lazy update of attention summaries (attention.py).
 *
 * Why C: the lazy update touches every query after an edit (hundreds to thousands of rows) with a
 * few keys each. In numpy that is ~30 array passes over (heads, rows) per layer, ~0.5 ms per layer
 * on 2 cores; one pass in C over the same rows is ~20-50 us. The arithmetic is the numpy path's
 * (`attention.lazy_update`'s numpy path): scores in float32 as there, weights (a float64 exp within
 * 1e-12 of exact) and sums in float64: every step is at least as accurate as the float32 step whose
 * error the bounds (`slack`) account for, so the same bounds stay sound.
 *
 * Sums in `omp simd reduction` loops may be reassociated (vectorised): every bound here holds for any
 * summation order (numerics.py), and norms carry a (1 + 1e-12) margin far above the reordering's effect.
 *
 * Arrays are passed through the buffer protocol (no numpy headers at build time); the Python wrapper
 * (`kernels.py`) checks dtypes, shapes and contiguity, and this file checks every buffer's length
 * against the dimensions it is given before it reads or writes anything.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define MAX_HEADS 64
#define OVERFLOW 80.0
/* The movement test keeps o as it is only while the movement bound is at most this share of the margin:
 * a kept o's error bound grows by the whole movement, and once it rivals the margin only a recompute
 * (~30 us a row at n = 1,024) can prove the row again; the update (o' computed, its error bound stays
 * at rounding level) costs a pass over dh. Measured on the bundled model: 1.0 (always keep when the
 * margin allows) left 10-30 rows per layer to recompute after 60 keystrokes at n = 1,024, 0.25 about 2. */
#define CHEAP_SHARE 0.25

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(VQINC_NO_CLONES)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* Eight float64 lanes (GCC/Clang vector extension): AVX-512 in the x86-64-v4 clone, pairs of AVX2 or
 * SSE2 registers in the others. Loads and stores through memcpy: no alignment assumed. */
typedef double v8d __attribute__((vector_size(64)));
static inline v8d load8(const double *p) {
    v8d r;
    memcpy(&r, p, sizeof r);
    return r;
}
static inline void store8(double *p, v8d x) { memcpy(p, &x, sizeof x); }
typedef float v16f __attribute__((vector_size(64)));
static inline v16f load16f(const float *p) {
    v16f r;
    memcpy(&r, p, sizeof r);
    return r;
}

static int check_len(Py_buffer *b, Py_ssize_t items, Py_ssize_t itemsize, const char *name) {
    if (b->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "lazy_update: %s has %zd bytes, expected %zd", name, b->len,
                     items * itemsize);
        return 0;
    }
    return 1;
}

/* exp(z) for z <= OVERFLOW in float64 with a relative error below 1e-12 (the bounds allow EXP_ULPS
 * float32 ulps, ~1e-6): z = k ln2 + r, |r| <= ln2 / 2, a degree-12 Taylor polynomial for exp(r), times
 * 2^k built in the exponent bits. Below -700 it returns 0 (an absolute error under 2^-126, allowed). */
CLONES static void exp_many(double *z, Py_ssize_t n) {
    const double log2e = 1.4426950408889634, ln2_hi = 0.6931471803691238, ln2_lo = 1.9082149292705877e-10;
    const double shift = 6755399441055744.0; /* 1.5 * 2^52: adding it leaves an integer in the low mantissa bits */
    for (Py_ssize_t i = 0; i < n; i++) {
        double zi = z[i];
        double x = zi < -700.0 ? -700.0 : zi;
        double kf = __builtin_floor(x * log2e + 0.5);
        double r = (x - kf * ln2_hi) - kf * ln2_lo;
        double p = 1.0 / 479001600.0;
        p = p * r + 1.0 / 39916800.0;
        p = p * r + 1.0 / 3628800.0;
        p = p * r + 1.0 / 362880.0;
        p = p * r + 1.0 / 40320.0;
        p = p * r + 1.0 / 5040.0;
        p = p * r + 1.0 / 720.0;
        p = p * r + 1.0 / 120.0;
        p = p * r + 1.0 / 24.0;
        p = p * r + 1.0 / 6.0;
        p = p * r + 0.5;
        p = p * r + 1.0;
        p = p * r + 1.0;
        /* 2^kf without a float-to-int conversion (none is vectorised before AVX-512): the biased exponent
         * kf + 1023 (in [13, 1139]) sits in the low bits of kf + 1023 + shift; move it to the exponent field */
        double t = kf + 1023.0 + shift;
        uint64_t bits;
        memcpy(&bits, &t, sizeof bits);
        bits <<= 52;
        double scale;
        memcpy(&scale, &bits, sizeof scale);
        z[i] = zi < -700.0 ? 0.0 : p * scale;
    }
}

/* One (row, head)'s facet distance: the code j nearest to o (float64 scores, first index on ties) and
 * min_k (s_k - s_j) / (2 |c_k - c_j|) minus its float64 error (Codebook.margins in numerics.py).
 * ct is the head's codebook transposed (dh, K), so the scores of codes side by side accumulate in
 * vector registers: 16 codes at a time (two accumulators each, even and odd d, to halve the dependency
 * chain), then 8, then one by one. The sums are reassociated; the error terms bound any order. */
static inline double facet(const double *o, const double *ct, const double *sq, const double *inv,
                           const double *pen, double ec, double en, Py_ssize_t K, Py_ssize_t dh, double *sk,
                           Py_ssize_t *code_out) {
    double o2 = 0.0;
#pragma omp simd reduction(+ : o2)
    for (Py_ssize_t d = 0; d < dh; d++) o2 += o[d] * o[d];
    Py_ssize_t k0 = 0;
    for (; k0 + 16 <= K; k0 += 16) {
        v8d a0 = {0}, a1 = {0}, b0 = {0}, b1 = {0};
        Py_ssize_t d = 0;
        for (; d + 2 <= dh; d += 2) {
            const double *r0 = ct + d * K + k0, *r1 = r0 + K;
            a0 += o[d] * load8(r0);
            a1 += o[d] * load8(r0 + 8);
            b0 += o[d + 1] * load8(r1);
            b1 += o[d + 1] * load8(r1 + 8);
        }
        if (d < dh) {
            const double *r0 = ct + d * K + k0;
            a0 += o[d] * load8(r0);
            a1 += o[d] * load8(r0 + 8);
        }
        store8(sk + k0, a0 + b0);
        store8(sk + k0 + 8, a1 + b1);
    }
    for (; k0 + 8 <= K; k0 += 8) {
        v8d a0 = {0}, b0 = {0};
        Py_ssize_t d = 0;
        for (; d + 2 <= dh; d += 2) {
            a0 += o[d] * load8(ct + d * K + k0);
            b0 += o[d + 1] * load8(ct + (d + 1) * K + k0);
        }
        if (d < dh) a0 += o[d] * load8(ct + d * K + k0);
        store8(sk + k0, a0 + b0);
    }
    for (; k0 < K; k0++) {
        double acc = 0.0;
        for (Py_ssize_t d = 0; d < dh; d++) acc += o[d] * ct[d * K + k0];
        sk[k0] = acc;
    }
    Py_ssize_t j = 0;
    for (Py_ssize_t k = 0; k < K; k++) {
        sk[k] = sq[k] - 2.0 * sk[k];
        if (sk[k] < sk[j]) j = k;
    }
    double best = INFINITY;
    for (Py_ssize_t k = 0; k < K; k++) {
        double g = (sk[k] - sk[j]) * inv[j * K + k] + pen[j * K + k];
        best = g < best ? g : best;
    }
    *code_out = j;
    return best - (ec + en * sqrt(o2) + 1e-300);
}

typedef struct {
    const float *q, *k, *v, *mref;
    const int64_t *kpos, *slots, *qpos;
    int64_t *codes;
    const double *vnorm, *vmax, *slack, *cb, *sq, *inv, *pen, *ec, *en;
    double *den, *derr, *oerr, *margin;
    float *ostore;
    uint8_t *need, *changed;
    double *e;
    uint8_t *over;
    double *work;
    float *onew, *kt;
    Py_ssize_t H, cap, dh, X, K, n, a, r, M, group;
    double scale, g6, keep_eps, cancellation, tiny, u32, gsum;
    Py_ssize_t count;
} LazyArgs;

/* The loops of lazy_update (below), compiled for AVX2/FMA and for baseline x86-64. */
CLONES static void lazy_rows(LazyArgs *A) {
    const float *q = A->q, *k = A->k, *v = A->v, *mref = A->mref;
    const int64_t *kpos = A->kpos, *slots = A->slots, *qpos = A->qpos;
    int64_t *codes = A->codes;
    const double *vnorm = A->vnorm, *vmax = A->vmax, *slack = A->slack, *cb = A->cb, *sq = A->sq, *inv = A->inv,
                 *pen = A->pen, *ec = A->ec, *en = A->en;
    double *den = A->den, *derr = A->derr, *oerr = A->oerr, *margin = A->margin, *e = A->e, *work = A->work;
    float *ostore = A->ostore, *onew = A->onew;
    uint8_t *need = A->need, *changed = A->changed, *over = A->over;
    Py_ssize_t H = A->H, cap = A->cap, dh = A->dh, X = A->X, K = A->K, n = A->n, a = A->a, r = A->r, M = A->M,
               group = A->group, count = 0;
    double scale = A->scale, g6 = A->g6, keep_eps = A->keep_eps, cancellation = A->cancellation, tiny = A->tiny,
           u32 = A->u32, gsum = A->gsum;
    memset(over, 0, (size_t)n);
    /* scores in float32 like the attend graph: (q . k) * scale - m. The keys of a head are transposed to
     * (dh, Xp) so that a row's scores of 16 keys accumulate side by side in one vector, four rows at a time
     * (independent chains); the dot products are reassociated, which gamma(dh + 2) allows */
    Py_ssize_t Xp = (X + 15) / 16 * 16;
    float *kt = A->kt;
    for (Py_ssize_t h = 0; h < H; h++) {
        const float *kh = k + (h / group) * X * dh;
        for (Py_ssize_t d = 0; d < dh; d++)
            for (Py_ssize_t x = 0; x < Xp; x++) kt[d * Xp + x] = x < X ? kh[x * dh + d] : 0.0f;
        for (Py_ssize_t i0 = 0; i0 < n; i0 += 4) {
            Py_ssize_t nr = n - i0 < 4 ? n - i0 : 4;
            const float *qr[4];
            for (Py_ssize_t r = 0; r < 4; r++) qr[r] = q + (h * cap + slots[i0 + (r < nr ? r : 0)]) * dh;
            for (Py_ssize_t c = 0; c < Xp; c += 16) {
                v16f a[4] = {{0}, {0}, {0}, {0}};
                for (Py_ssize_t d = 0; d < dh; d++) {
                    v16f kv = load16f(kt + d * Xp + c);
                    for (int r = 0; r < 4; r++) a[r] += qr[r][d] * kv;
                }
                for (Py_ssize_t r = 0; r < nr; r++) {
                    Py_ssize_t i = i0 + r;
                    float m = mref[h * cap + slots[i]], dots[16];
                    memcpy(dots, &a[r], sizeof dots);
                    double *ei = e + (h * n + i) * X;
                    for (Py_ssize_t x = c; x < c + 16 && x < X; x++) {
                        double z = (double)(dots[x - c] * (float)scale - m);
                        if (kpos[x] > qpos[i]) z = -1000.0;
                        else if (z > OVERFLOW - 1) { over[i] = 1; z = 0.0; }
                        ei[x] = z;
                    }
                }
            }
        }
    }
    exp_many(e, H * n * X);
    double new_den[MAX_HEADS], new_err[MAX_HEADS], new_oerr[MAX_HEADS], new_margin[MAX_HEADS];
    Py_ssize_t new_code[MAX_HEADS];
    int full[MAX_HEADS];
    double *num = work, *o64 = work + H * dh, *sk = work + H * dh + dh;
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_ssize_t s = slots[i];
        int bad = over[i], moved_code = 0;
        for (Py_ssize_t h = 0; h < H && !bad; h++) {
            const double *ei = e + (h * n + i) * X;
            Py_ssize_t kvh = h / group, at = h * cap + s;
            const float *vh = v + kvh * X * dh, *oold = ostore + at * dh;
            const double *vn = vnorm + kvh * X;
            double den0 = den[at], sl = slack[h];
            double add = 0.0, rem = 0.0, change = 0.0, moved = 0.0, ev = 0.0;
            for (Py_ssize_t x = 0; x < X; x++) {
                double w = ei[x];
                ev += w * vn[x];
                if (x < a) add += w;
                else if (x < a + r) rem += w;
                else if (x < a + r + M) { change -= w; moved += w; }
                else { change += w; moved += w; }
            }
            double dn = den0 + add - rem + change;
            double total = add + rem + moved;
            double err = derr[at] + total * (sl - 1.0) + g6 * (den0 + total) + tiny;
            double low = dn - err;
            if (!(low > 0.0 && err <= cancellation * dn)) { bad = 1; break; }
            /* cheap first: the exact output o* moves by at most sum w_x (|v_x| + |o*|) / den', and |o*| is at
             * most vmax and at most |o| + o_err (o the stored output); when that keeps the code, o stays as
             * it is and its error bound absorbs the movement */
            double onorm = 0.0;
#pragma omp simd reduction(+ : onorm)
            for (Py_ssize_t d = 0; d < dh; d++) onorm += (double)oold[d] * (double)oold[d];
            onorm = sqrt(onorm) * (1.0 + 1e-12);
            double ostar = (onorm + oerr[at]) * (1.0 + 1e-12);
            if (ostar > vmax[h]) ostar = vmax[h];
            double mv = sl * (ev + ostar * total) / low * (1.0 + 1e-12);
            if (margin[at] - mv > keep_eps && mv <= CHEAP_SHARE * margin[at]) {
                new_den[h] = dn; new_err[h] = err; new_oerr[h] = oerr[at] + mv; new_margin[h] = margin[at] - mv;
                new_code[h] = codes[s * H + h];
                full[h] = 0;
                continue;
            }
            full[h] = 1;
            double *nm = num + h * dh;
#pragma omp simd
            for (Py_ssize_t d = 0; d < dh; d++) nm[d] = den0 * (double)oold[d];
            for (Py_ssize_t x = 0; x < X; x++) {
                double w = ei[x];
                if (w == 0.0) continue;
                int removed = (x >= a && x < a + r) || (x >= a + r && x < a + r + M);
                double sw = removed ? -w : w;
                const float *vx = vh + x * dh;
#pragma omp simd
                for (Py_ssize_t d = 0; d < dh; d++) nm[d] += sw * (double)vx[d];
            }
            /* |den o + sum(+-e v) - exact numerator| */
            double en_ = derr[at] * onorm + (den0 + derr[at]) * oerr[at] + (sl - 1.0) * sl * ev +
                         gsum * (den0 * onorm + ev) + tiny * vmax[h];
            float *on = onew + h * dh;
            double delta = 0.0, n2 = 0.0, rdn = 1.0 / dn; /* one more rounding: within gsum */
#pragma omp simd reduction(+ : delta, n2)
            for (Py_ssize_t d = 0; d < dh; d++) {
                on[d] = (float)(nm[d] * rdn);
                double dd = (double)on[d] - (double)oold[d];
                delta += dd * dd;
                n2 += (double)on[d] * (double)on[d];
            }
            delta = sqrt(delta) * (1.0 + 1e-12);
            double oe = (en_ + vmax[h] * err) / dn * (1.0 + gsum) + (2.0 * u32 + gsum) * sqrt(n2) * (1.0 + 1e-12);
            /* two lower bounds on the exact output's margin: through the stored outputs (o within o_err of the
             * old exact output, o' within o_err' of the new) or through the movement bound; the larger */
            double mg = margin[at] - delta - oerr[at] - oe;
            if (margin[at] - mv > mg) mg = margin[at] - mv;
            Py_ssize_t code = codes[s * H + h];
            if (!(mg > keep_eps)) { /* rescore from o' */
                for (Py_ssize_t d = 0; d < dh; d++) o64[d] = (double)on[d];
                Py_ssize_t j;
                double f = facet(o64, cb + h * dh * K, sq + h * K, inv + h * K * K, pen + h * K * K, ec[h], en[h], K,
                                 dh, sk, &j);
                mg = f - oe;
                if (!(mg > keep_eps)) { bad = 1; break; }
                if (j != code) moved_code = 1;
                code = j;
            }
            new_den[h] = dn; new_err[h] = err; new_oerr[h] = oe; new_margin[h] = mg; new_code[h] = code;
        }
        need[i] = (uint8_t)bad;
        changed[i] = (uint8_t)(!bad && moved_code);
        if (bad) { count++; continue; }
        for (Py_ssize_t h = 0; h < H; h++) {
            Py_ssize_t at = h * cap + s;
            den[at] = new_den[h]; derr[at] = new_err[h]; oerr[at] = new_oerr[h]; margin[at] = new_margin[h];
            codes[s * H + h] = new_code[h];
            if (full[h]) memcpy(ostore + at * dh, onew + h * dh, (size_t)dh * sizeof(float));
        }
    }
    A->count = count;
}

/* lazy_update(q, k, v, kpos, slots, qpos, m, codes, qnorm, vmax, den, den_err, o, o_err, margin,
 *             c, sq, inv_2pair, pen, err_const, err_norm, need, changed, dims..., scale, g6, keep_eps,
 *             cancellation, exp_ulps) -> rows that need a recompute
 *
 * qnorm (H, cap) f32 are the rows' |q| per head (upper bounds), vmax (Hkv,) f64 bounds |v| of every value
 * of the layer; from them and the keys this computes the bounds attention.lazy_update's numpy path
 * computes before its pass (|v_x|, the largest |v| per head, the weights' relative error `slack`).
 *
 * Per row i and head h, with weights e_x = exp(q.k_x * scale - m) of the keys that come and go
 * (added a, removed r, old and new values of M modified keys):
 *   den' = den + sum(+-e_x),  o' = (den o + sum(+-e_x v_x)) / den'      (float64, o' stored as float32)
 * o_err bounds |o - exact output| and grows by what this step can get wrong: the stored den and o
 * (den_err |o| + (den + den_err) o_err), every weight's relative error (slack - 1), float64 rounding,
 * the exact output's distance to o' through den' (vmax err' / den': the exact output is a mean of
 * values, so its norm is at most vmax) and the float32 rounding of o'. First the cheap test: the exact
 * output o* moves by at most sum e_x (|v_x| + |o*|) / den', |o*| <= min(vmax, |o| + o_err); if that is at
 * most CHEAP_SHARE of the margin, o is left as it is and o_err grows by the movement. Otherwise o' is
 * computed, and the code is kept while the larger of margin - |o' - o| - o_err - o_err' (the exact output
 * moved by at most |o' - o| + o_err + o_err') and margin - movement stays above keep_eps;
 * else the row is rescored against the codebook from o': its nearest code (maybe a new one) is
 * proven when its facet distance minus o_err' is above keep_eps. A row of which any head is not
 * proven is left untouched and counted in `need`. The arrays are as the engine's state (state.py). */
static PyObject *lazy_update(PyObject *self, PyObject *args) {
    Py_buffer bq, bk, bv, bkpos, bslots, bqpos, bm, bcodes, bqnorm, bvmax, bden, berr, bo, boerr, bmargin, bc, bsq,
        binv, bpen, bec, ben, bneed, bchanged;
    Py_ssize_t H, Hkv, cap, dh, X, K, n, a, r, M;
    double scale, g6, keep_eps, cancellation, exp_ulps;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*y*y*w*w*w*w*w*y*y*y*y*y*y*w*w*nnnnnnnnnnddddd", &bq, &bk, &bv,
                          &bkpos, &bslots, &bqpos, &bm, &bcodes, &bqnorm, &bvmax, &bden, &berr, &bo, &boerr,
                          &bmargin, &bc, &bsq, &binv, &bpen, &bec, &ben, &bneed, &bchanged, &H, &Hkv, &cap, &dh, &X,
                          &K, &n, &a, &r, &M, &scale, &g6, &keep_eps, &cancellation, &exp_ulps))
        return NULL;
    Py_buffer *all[] = {&bq, &bk, &bv, &bkpos, &bslots, &bqpos, &bm, &bcodes, &bqnorm, &bvmax, &bden, &berr, &bo,
                        &boerr, &bmargin, &bc, &bsq, &binv, &bpen, &bec, &ben, &bneed, &bchanged};
    PyObject *result = NULL;
    int ok = H > 0 && H <= MAX_HEADS && Hkv > 0 && H % Hkv == 0 && cap > 0 && dh > 0 && dh <= 1024 && X > 0 &&
             K > 0 && K <= 4096 && n >= 0 && a >= 0 && r >= 0 && M >= 0 && a + r + 2 * M == X;
    if (!ok) {
        PyErr_SetString(PyExc_ValueError, "lazy_update: inconsistent dimensions");
        goto done;
    }
    if (!(check_len(&bq, H * cap * dh, 4, "q") && check_len(&bk, Hkv * X * dh, 4, "k") &&
          check_len(&bv, Hkv * X * dh, 4, "v") && check_len(&bkpos, X, 8, "kpos") &&
          check_len(&bslots, n, 8, "slots") && check_len(&bqpos, n, 8, "qpos") && check_len(&bm, H * cap, 4, "m") &&
          check_len(&bcodes, cap * H, 8, "codes") && check_len(&bqnorm, H * cap, 4, "qnorm") &&
          check_len(&bvmax, Hkv, 8, "vmax") &&
          check_len(&bden, H * cap, 8, "den") && check_len(&berr, H * cap, 8, "den_err") &&
          check_len(&bo, H * cap * dh, 4, "o") && check_len(&boerr, H * cap, 8, "o_err") &&
          check_len(&bmargin, H * cap, 8, "margin") && check_len(&bc, H * dh * K, 8, "ct") &&
          check_len(&bsq, H * K, 8, "sq") && check_len(&binv, H * K * K, 8, "inv_2pair") &&
          check_len(&bpen, H * K * K, 8, "pen") && check_len(&bec, H, 8, "err_const") &&
          check_len(&ben, H, 8, "err_norm") && check_len(&bneed, n, 1, "need") && check_len(&bchanged, n, 1, "changed")))
        goto done;
    const float *q = bq.buf, *k = bk.buf, *v = bv.buf, *mref = bm.buf;
    const int64_t *kpos = bkpos.buf, *slots = bslots.buf, *qpos = bqpos.buf;
    int64_t *codes = bcodes.buf;
    const double *vmax_kv = bvmax.buf, *cb = bc.buf, *sq = bsq.buf, *inv = binv.buf, *pen = bpen.buf, *ec = bec.buf,
                 *en = ben.buf;
    const float *qnorm = bqnorm.buf;
    double *den = bden.buf, *derr = berr.buf, *oerr = boerr.buf, *margin = bmargin.buf;
    float *ostore = bo.buf;
    uint8_t *need = bneed.buf, *changed = bchanged.buf;
    for (Py_ssize_t i = 0; i < n; i++)
        if (slots[i] < 0 || slots[i] >= cap) {
            PyErr_Format(PyExc_ValueError, "lazy_update: slot %lld outside [0, %zd)", (long long)slots[i], cap);
            goto done;
        }
    for (Py_ssize_t i = 0; i < n; i++)
        for (Py_ssize_t h = 0; h < H; h++)
            if (codes[slots[i] * H + h] < 0 || codes[slots[i] * H + h] >= K) {
                PyErr_SetString(PyExc_ValueError, "lazy_update: a code outside the codebook");
                goto done;
            }
    Py_ssize_t group = H / Hkv, count = 0;
    double tiny = (double)X * ldexp(1.0, -126), u32 = ldexp(1.0, -24);
    double gsum = (double)(X + 8) * ldexp(1.0, -53);
    gsum = gsum / (1.0 - gsum);
    double *e = PyMem_RawMalloc((size_t)(H * n * X) * sizeof(double));
    uint8_t *over = PyMem_RawMalloc((size_t)(n > 0 ? n : 1));
    double *work = PyMem_RawMalloc((size_t)(H * dh + dh + K + Hkv * X) * sizeof(double));
    float *onew = PyMem_RawMalloc((size_t)(H * dh) * sizeof(float));
    float *kt = PyMem_RawMalloc((size_t)(dh * ((X + 15) / 16 * 16)) * sizeof(float));
    if (e == NULL || over == NULL || work == NULL || onew == NULL || kt == NULL) {
        PyMem_RawFree(e);
        PyMem_RawFree(over);
        PyMem_RawFree(work);
        PyMem_RawFree(onew);
        PyMem_RawFree(kt);
        PyErr_NoMemory();
        goto done;
    }
    /* what attention.lazy_update computes in numpy before its numpy path: |v_x| (Hkv, X) and, per head, the
     * largest |v| of the layer and the keys, and the relative error bound `slack` of every weight exp(z):
     * float32 dot product, x scale, - m, exp; then the sums over the X keys */
    double *vnorm = work + H * dh + dh + K, vmax[MAX_HEADS], slack[MAX_HEADS];
    for (Py_ssize_t kvh = 0; kvh < Hkv; kvh++)
        for (Py_ssize_t x = 0; x < X; x++) {
            const float *vx = v + (kvh * X + x) * dh;
            double s2 = 0.0;
            for (Py_ssize_t d = 0; d < dh; d++) s2 += (double)vx[d] * (double)vx[d];
            vnorm[kvh * X + x] = sqrt(s2) * (1.0 + 1e-12);
        }
    for (Py_ssize_t h = 0; h < H; h++) {
        Py_ssize_t kvh = h / group;
        double vm = vmax_kv[kvh], kn = 0.0, qn = 0.0, mabs = 0.0;
        for (Py_ssize_t x = 0; x < X; x++) {
            const float *kx = k + (kvh * X + x) * dh;
            double s2 = 0.0;
            for (Py_ssize_t d = 0; d < dh; d++) s2 += (double)kx[d] * (double)kx[d];
            kn = s2 > kn ? s2 : kn;
            vm = vnorm[kvh * X + x] > vm ? vnorm[kvh * X + x] : vm;
        }
        kn = sqrt(kn) * (1.0 + 1e-5);
        for (Py_ssize_t i = 0; i < n; i++) {
            double qi = (double)qnorm[h * cap + slots[i]], mi = fabs((double)mref[h * cap + slots[i]]);
            qn = qi > qn ? qi : qn;
            mabs = mi > mabs ? mi : mabs;
        }
        double spread = scale * qn * kn * (1.0 + 1e-12), gd = (double)(dh + 2) * u32 / (1.0 - (double)(dh + 2) * u32);
        double gx = (double)(X + 4) * u32 / (1.0 - (double)(X + 4) * u32);
        double eps = gd * spread + u32 * (4.0 * spread + 2.0 * mabs) + exp_ulps * u32;
        slack[h] = exp(eps) * (1.0 + 1e-12) * (1.0 + gx);
        vmax[h] = vm * (1.0 + 1e-12);
    }
    LazyArgs A = {q, k, v, mref, kpos, slots, qpos, codes, vnorm, vmax, slack, cb, sq, inv, pen, ec, en, den, derr,
                  oerr, margin, ostore, need, changed, e, over, work, onew, kt, H, cap, dh, X, K, n, a, r, M, group,
                  scale, g6, keep_eps, cancellation, tiny, u32, gsum, 0};
    Py_BEGIN_ALLOW_THREADS
    lazy_rows(&A);
    Py_END_ALLOW_THREADS
    count = A.count;
    PyMem_RawFree(e);
    PyMem_RawFree(over);
    PyMem_RawFree(work);
    PyMem_RawFree(onew);
    PyMem_RawFree(kt);
    result = PyLong_FromSsize_t(count);
done:
    for (size_t b = 0; b < sizeof(all) / sizeof(all[0]); b++) PyBuffer_Release(all[b]);
    return result;
}

/* margins(o, codes, c, sq, inv_2pair, pen, err_const, err_norm, cmax, margin, radius, h, R, K, dh)
 *
 * Codebook.margins (numerics.py) for rows o (h, R, dh) f64 with codes (h, R) i64 against codebooks
 * c (h, K, dh), |c|^2 sq (h, K), 1 / (2 |c_k - c_j|) inv_2pair (h, K, K), pen (h, K, K) (+inf where no
 * facet), per-head error terms (h,): margin (h, R) = min_k gap_k - err, radius (h, R) = |o - c_j| rounded
 * up. Scores s_k = |c_k|^2 - 2 o.c_k in float64 as numpy computes them (any order: the error terms
 * bound every order). */
static PyObject *margins(PyObject *self, PyObject *args) {
    Py_buffer bo, bcodes, bc, bsq, binv, bpen, bec, ben, bcmax, bmargin, bradius;
    Py_ssize_t h, R, K, dh;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*w*w*nnnn", &bo, &bcodes, &bc, &bsq, &binv, &bpen, &bec, &ben,
                          &bcmax, &bmargin, &bradius, &h, &R, &K, &dh))
        return NULL;
    Py_buffer *all[] = {&bo, &bcodes, &bc, &bsq, &binv, &bpen, &bec, &ben, &bcmax, &bmargin, &bradius};
    PyObject *result = NULL;
    if (!(h > 0 && R >= 0 && K > 0 && K <= 4096 && dh > 0)) {
        PyErr_SetString(PyExc_ValueError, "margins: inconsistent dimensions");
        goto done;
    }
    if (!(check_len(&bo, h * R * dh, 8, "o") && check_len(&bcodes, h * R, 8, "codes") &&
          check_len(&bc, h * K * dh, 8, "c") && check_len(&bsq, h * K, 8, "sq") &&
          check_len(&binv, h * K * K, 8, "inv_2pair") && check_len(&bpen, h * K * K, 8, "pen") &&
          check_len(&bec, h, 8, "err_const") && check_len(&ben, h, 8, "err_norm") && check_len(&bcmax, h, 8, "cmax") &&
          check_len(&bmargin, h * R, 8, "margin") && check_len(&bradius, h * R, 8, "radius")))
        goto done;
    const double *o = bo.buf, *c = bc.buf, *sq = bsq.buf, *inv = binv.buf, *pen = bpen.buf, *ec = bec.buf,
                 *en = ben.buf, *cmax = bcmax.buf;
    const int64_t *codes = bcodes.buf;
    double *mg = bmargin.buf, *rad = bradius.buf;
    for (Py_ssize_t i = 0; i < h * R; i++)
        if (codes[i] < 0 || codes[i] >= K) {
            PyErr_SetString(PyExc_ValueError, "margins: a code outside the codebook");
            goto done;
        }
    double gd = (double)(dh + 4) * ldexp(1.0, -53);
    gd = gd / (1.0 - gd);
    double *sk = PyMem_RawMalloc((size_t)K * sizeof(double));
    if (sk == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t a = 0; a < h; a++)
        for (Py_ssize_t r = 0; r < R; r++) {
            const double *or_ = o + (a * R + r) * dh;
            Py_ssize_t j = codes[a * R + r];
            double o2 = 0.0;
            for (Py_ssize_t d = 0; d < dh; d++) o2 += or_[d] * or_[d];
            for (Py_ssize_t k = 0; k < K; k++) {
                const double *ck = c + (a * K + k) * dh;
                double dot = 0.0;
                for (Py_ssize_t d = 0; d < dh; d++) dot += or_[d] * ck[d];
                sk[k] = sq[a * K + k] - 2.0 * dot;
            }
            double sj = sk[j], best = INFINITY;
            const double *iv = inv + (a * K + j) * K, *pn = pen + (a * K + j) * K;
            for (Py_ssize_t k = 0; k < K; k++) {
                double g = (sk[k] - sj) * iv[k] + pn[k];
                if (g < best) best = g;
            }
            double onorm = sqrt(o2);
            double err = ec[a] + en[a] * onorm + 1e-300;
            double d2_err = gd * 2.0 * (onorm + cmax[a]) * (onorm + cmax[a]);
            double d2 = o2 + sj;
            mg[a * R + r] = best - err;
            rad[a * R + r] = sqrt((d2 > 0.0 ? d2 : 0.0) + d2_err) * (1.0 + 1e-12);
        }
    PyMem_RawFree(sk);
    result = Py_None;
    Py_INCREF(result);
done:
    for (size_t b = 0; b < sizeof(all) / sizeof(all[0]); b++) PyBuffer_Release(all[b]);
    return result;
}

/* The loops of attend64. Per kv head, keys in position order (order[0 .. nk)): each key row is widened
 * to float64 once and scored against every row that sees it (j <= the row's position), then the
 * weights exp(s - m) and the outputs, each value row again widened once for all rows. */
CLONES static void attend64_rows(const float *q, const float *k, const float *v, const int64_t *pos,
                                 const int64_t *order, const int64_t *slots, double *o, double *mout, double *dout,
                                 double *s, double *qd, double *kd, Py_ssize_t H, Py_ssize_t Hkv, Py_ssize_t cap,
                                 Py_ssize_t dh, Py_ssize_t R, Py_ssize_t nk, double scale) {
    Py_ssize_t group = H / Hkv;
    for (Py_ssize_t h = 0; h < H; h++) {
        const float *kh = k + (h / group) * cap * dh, *vh = v + (h / group) * cap * dh;
        for (Py_ssize_t i = 0; i < R; i++) {
            const float *qh = q + (h * cap + slots[i]) * dh;
            for (Py_ssize_t d = 0; d < dh; d++) qd[i * dh + d] = (double)qh[d] * scale;
            mout[h * R + i] = -INFINITY;
        }
        for (Py_ssize_t j = 0; j < nk; j++) {
            const float *kc = kh + order[j] * dh;
#pragma omp simd
            for (Py_ssize_t d = 0; d < dh; d++) kd[d] = (double)kc[d];
            for (Py_ssize_t i = 0; i < R; i++) {
                if (j > pos[slots[i]]) continue;
                const double *qi = qd + i * dh;
                double z = 0.0;
#pragma omp simd reduction(+ : z)
                for (Py_ssize_t d = 0; d < dh; d++) z += qi[d] * kd[d];
                s[i * nk + j] = z;
                if (z > mout[h * R + i]) mout[h * R + i] = z;
            }
        }
        for (Py_ssize_t i = 0; i < R; i++) {
            Py_ssize_t len = pos[slots[i]] + 1;
            double m = mout[h * R + i], *si = s + i * nk;
            for (Py_ssize_t j = 0; j < len; j++) si[j] -= m;
            exp_many(si, len);
            double *oh = o + (h * R + i) * dh;
            for (Py_ssize_t d = 0; d < dh; d++) oh[d] = 0.0;
            dout[h * R + i] = 0.0;
        }
        for (Py_ssize_t j = 0; j < nk; j++) {
            const float *vc = vh + order[j] * dh;
#pragma omp simd
            for (Py_ssize_t d = 0; d < dh; d++) kd[d] = (double)vc[d];
            for (Py_ssize_t i = 0; i < R; i++) {
                if (j > pos[slots[i]]) continue;
                double w = s[i * nk + j], *oh = o + (h * R + i) * dh;
                dout[h * R + i] += w;
#pragma omp simd
                for (Py_ssize_t d = 0; d < dh; d++) oh[d] += w * kd[d];
            }
        }
        for (Py_ssize_t i = 0; i < R; i++) {
            double den = dout[h * R + i], *oh = o + (h * R + i) * dh;
            for (Py_ssize_t d = 0; d < dh; d++) oh[d] /= den;
        }
    }
}

/* attend64_rows for dh % 8 == 0, blocked for vector registers. Scores: eight keys at a time, widened to
 * float64 once (kb), then per row eight dot products accumulated lane-wise and folded into one vector of
 * eight sums (reduce8). Outputs: per 8-wide slice of dh and four rows at a time, o += w_ij v_j over the
 * keys with the four accumulators in registers; a row's weights beyond its own position are 0. */
#define ALWAYS_INLINE __attribute__((always_inline)) inline
typedef float v8f __attribute__((vector_size(32)));
static ALWAYS_INLINE v8d widen8(const float *p) {
    v8f r;
    memcpy(&r, p, sizeof r);
    return __builtin_convertvector(r, v8d);
}
static ALWAYS_INLINE v8d reduce8(const v8d *a) { /* lane t of the result = sum of the lanes of a[t] */
    v8d p0 = __builtin_shufflevector(a[0], a[1], 0, 8, 2, 10, 4, 12, 6, 14) +
             __builtin_shufflevector(a[0], a[1], 1, 9, 3, 11, 5, 13, 7, 15);
    v8d p1 = __builtin_shufflevector(a[2], a[3], 0, 8, 2, 10, 4, 12, 6, 14) +
             __builtin_shufflevector(a[2], a[3], 1, 9, 3, 11, 5, 13, 7, 15);
    v8d p2 = __builtin_shufflevector(a[4], a[5], 0, 8, 2, 10, 4, 12, 6, 14) +
             __builtin_shufflevector(a[4], a[5], 1, 9, 3, 11, 5, 13, 7, 15);
    v8d p3 = __builtin_shufflevector(a[6], a[7], 0, 8, 2, 10, 4, 12, 6, 14) +
             __builtin_shufflevector(a[6], a[7], 1, 9, 3, 11, 5, 13, 7, 15);
    v8d q0 = __builtin_shufflevector(p0, p1, 0, 1, 8, 9, 4, 5, 12, 13) +
             __builtin_shufflevector(p0, p1, 2, 3, 10, 11, 6, 7, 14, 15);
    v8d q1 = __builtin_shufflevector(p2, p3, 0, 1, 8, 9, 4, 5, 12, 13) +
             __builtin_shufflevector(p2, p3, 2, 3, 10, 11, 6, 7, 14, 15);
    return __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 8, 9, 10, 11) +
           __builtin_shufflevector(q0, q1, 4, 5, 6, 7, 12, 13, 14, 15);
}

/* o rows i0 .. i0 + NR of head h: 32 columns at a time (NR x 4 accumulators), then 8 */
#define VALUES(NR)                                                                                           \
    do {                                                                                                     \
        const double *w_[NR];                                                                                \
        for (int r = 0; r < NR; r++) w_[r] = s + (i0 + r) * nkp;                                             \
        for (Py_ssize_t d = 0; d + 32 <= dh; d += 32) {                                                      \
            v8d a[NR][4];                                                                                    \
            for (int r = 0; r < NR; r++)                                                                     \
                for (int c = 0; c < 4; c++) a[r][c] = (v8d){0};                                              \
            for (Py_ssize_t j = 0; j < top; j++) {                                                           \
                const float *vr = vh + order[j] * dh + d;                                                    \
                v8d x[4] = {widen8(vr), widen8(vr + 8), widen8(vr + 16), widen8(vr + 24)};                   \
                for (int r = 0; r < NR; r++)                                                                 \
                    for (int c = 0; c < 4; c++) a[r][c] += w_[r][j] * x[c];                                  \
            }                                                                                                \
            for (int r = 0; r < NR; r++)                                                                     \
                for (int c = 0; c < 4; c++)                                                                  \
                    store8(o + (h * R + i0 + r) * dh + d + 8 * c, a[r][c] / dout[h * R + i0 + r]);           \
        }                                                                                                    \
        for (Py_ssize_t d = dh / 32 * 32; d < dh; d += 8) {                                                  \
            v8d a[NR];                                                                                       \
            for (int r = 0; r < NR; r++) a[r] = (v8d){0};                                                    \
            for (Py_ssize_t j = 0; j < top; j++) {                                                           \
                v8d x = widen8(vh + order[j] * dh + d);                                                      \
                for (int r = 0; r < NR; r++) a[r] += w_[r][j] * x;                                           \
            }                                                                                                \
            for (int r = 0; r < NR; r++) store8(o + (h * R + i0 + r) * dh + d, a[r] / dout[h * R + i0 + r]); \
        }                                                                                                    \
    } while (0)

CLONES static void attend64_rows8(const float *q, const float *k, const float *v, const int64_t *pos,
                                  const int64_t *order, const int64_t *slots, double *o, double *mout, double *dout,
                                  double *s, double *qd, double *kb, Py_ssize_t H, Py_ssize_t Hkv, Py_ssize_t cap,
                                  Py_ssize_t dh, Py_ssize_t R, Py_ssize_t nk, double scale) {
    Py_ssize_t group = H / Hkv, nkp = (nk + 7) / 8 * 8, Rp = (R + 3) / 4 * 4;
    for (Py_ssize_t h = 0; h < H; h++) {
        const float *kh = k + (h / group) * cap * dh, *vh = v + (h / group) * cap * dh;
        for (Py_ssize_t i = 0; i < R; i++) {
            const float *qh = q + (h * cap + slots[i]) * dh;
            for (Py_ssize_t d = 0; d < dh; d++) qd[i * dh + d] = (double)qh[d] * scale;
        }
        for (Py_ssize_t j0 = 0; j0 < nk; j0 += 8) {
            for (Py_ssize_t t = 0; t < 8; t++) {
                double *dst = kb + t * dh;
                if (j0 + t < nk) {
                    const float *src = kh + order[j0 + t] * dh;
                    for (Py_ssize_t d = 0; d < dh; d += 8) store8(dst + d, widen8(src + d));
                } else {
                    for (Py_ssize_t d = 0; d < dh; d++) dst[d] = 0.0;
                }
            }
            for (Py_ssize_t i = 0; i < R; i++) {
                const double *qi = qd + i * dh;
                v8d a[8] = {{0}, {0}, {0}, {0}, {0}, {0}, {0}, {0}};
                for (Py_ssize_t d = 0; d < dh; d += 8) {
                    v8d qv = load8(qi + d);
                    for (int t = 0; t < 8; t++) a[t] += qv * load8(kb + t * dh + d);
                }
                store8(s + i * nkp + j0, reduce8(a));
            }
        }
        for (Py_ssize_t i = 0; i < Rp; i++) {
            double *si = s + i * nkp;
            Py_ssize_t len = i < R ? pos[slots[i]] + 1 : 0;
            if (len) {
                double m = -INFINITY;
                for (Py_ssize_t j = 0; j < len; j++) m = si[j] > m ? si[j] : m;
                for (Py_ssize_t j = 0; j < len; j++) si[j] -= m;
                exp_many(si, len);
                double den = 0.0;
#pragma omp simd reduction(+ : den)
                for (Py_ssize_t j = 0; j < len; j++) den += si[j];
                mout[h * R + i] = m;
                dout[h * R + i] = den;
            }
            for (Py_ssize_t j = len; j < nkp; j++) si[j] = 0.0;
        }
        for (Py_ssize_t i0 = 0; i0 < R;) { /* four rows at a time while four are left, then one */
            int nr = R - i0 >= 4 ? 4 : 1;
            Py_ssize_t top = 0;
            for (Py_ssize_t i = i0; i < i0 + nr; i++) top = pos[slots[i]] + 1 > top ? pos[slots[i]] + 1 : top;
            if (nr == 4)
                VALUES(4);
            else
                VALUES(1);
            i0 += nr;
        }
    }
}

/* attend64(q, k, v, pos, order, slots, o, m, den, H, Hkv, cap, dh, R, n, scale)
 *
 * Full attention of rows `slots` over every visible key (0 <= pos <= the row's position) in float64:
 * what attention._attention64 computes in numpy, for all heads of a few rows at once. q (H, cap, dh),
 * k, v (Hkv, cap, dh) f32; pos (cap,) i64; order (n,) i64 the slot of each position; out o (H, R, dh),
 * m, den (H, R) f64. Every row needs at least one visible key (itself). Its errors are those of the
 * float64 `refine` path (attention_bounds with u = 2^-53; the exp is within a few float64 ulps). */
static PyObject *attend64(PyObject *self, PyObject *args) {
    Py_buffer bq, bk, bv, bpos, border, bslots, bo, bm, bden;
    Py_ssize_t H, Hkv, cap, dh, R, n;
    double scale;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*w*w*nnnnnnd", &bq, &bk, &bv, &bpos, &border, &bslots, &bo, &bm, &bden,
                          &H, &Hkv, &cap, &dh, &R, &n, &scale))
        return NULL;
    Py_buffer *all[] = {&bq, &bk, &bv, &bpos, &border, &bslots, &bo, &bm, &bden};
    PyObject *result = NULL;
    if (!(H > 0 && Hkv > 0 && H % Hkv == 0 && cap > 0 && dh > 0 && R >= 0 && n >= 0 && n <= cap)) {
        PyErr_SetString(PyExc_ValueError, "attend64: inconsistent dimensions");
        goto done;
    }
    if (!(check_len(&bq, H * cap * dh, 4, "q") && check_len(&bk, Hkv * cap * dh, 4, "k") &&
          check_len(&bv, Hkv * cap * dh, 4, "v") && check_len(&bpos, cap, 8, "pos") &&
          check_len(&border, n, 8, "order") && check_len(&bslots, R, 8, "slots") &&
          check_len(&bo, H * R * dh, 8, "o") && check_len(&bm, H * R, 8, "m") && check_len(&bden, H * R, 8, "den")))
        goto done;
    const int64_t *pos = bpos.buf, *order = border.buf, *slots = bslots.buf;
    for (Py_ssize_t j = 0; j < n; j++)
        if (order[j] < 0 || order[j] >= cap || pos[order[j]] != j) {
            PyErr_Format(PyExc_ValueError, "attend64: order[%zd] = %lld is not the slot of position %zd",
                         j, (long long)order[j], j);
            goto done;
        }
    Py_ssize_t nk = 0;
    for (Py_ssize_t i = 0; i < R; i++) {
        if (slots[i] < 0 || slots[i] >= cap || pos[slots[i]] < 0 || pos[slots[i]] >= n) {
            PyErr_Format(PyExc_ValueError, "attend64: slot %lld is not a row of the document", (long long)slots[i]);
            goto done;
        }
        if (pos[slots[i]] + 1 > nk) nk = pos[slots[i]] + 1;
    }
    /* scores (rows padded to 4, keys to 8), widened q rows, widened keys (8 rows) */
    Py_ssize_t ns = (R + 3) / 4 * 4 * ((nk + 7) / 8 * 8);
    double *sbuf = PyMem_RawMalloc((size_t)(ns + R * dh + 8 * dh + 1) * sizeof(double));
    if (sbuf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    if (dh % 8 == 0)
        attend64_rows8(bq.buf, bk.buf, bv.buf, pos, order, slots, bo.buf, bm.buf, bden.buf, sbuf, sbuf + ns,
                       sbuf + ns + R * dh, H, Hkv, cap, dh, R, nk, scale);
    else
        attend64_rows(bq.buf, bk.buf, bv.buf, pos, order, slots, bo.buf, bm.buf, bden.buf, sbuf, sbuf + ns,
                      sbuf + ns + R * dh, H, Hkv, cap, dh, R, nk, scale);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(sbuf);
    result = Py_None;
    Py_INCREF(result);
done:
    for (size_t b = 0; b < sizeof(all) / sizeof(all[0]); b++) PyBuffer_Release(all[b]);
    return result;
}

/* recompute64(q, k, v, pos, order, slots, qnorm, kmax, vmax, ct, sq, inv_2pair, pen, err_const, err_norm,
 *             o, m, den, den_err, o_err, margin, codes, H, Hkv, cap, dh, R, n, K, scale, exp_ulps)
 *
 * attend64 of rows `slots`, then what attention._Rows.store does with a float64 result: the nearest code
 * (float64 scores, first index on ties) and its facet distance, the error bounds of
 * numerics.attention_bounds (u = 2^-53, `cap` key slots), m rounded to float32 with den rescaled to it,
 * o rounded to float32 (its rounding joins o_err). qnorm (H, cap) f32; kmax, vmax (Hkv,) f64; the codebook
 * tables as Codebook.parts. Out, per (head, row): o (H, R, dh) f32, m (H, R) f32, den, den_err, o_err,
 * margin (H, R) f64, codes (H, R) i64. A margin at or below KEEP_EPS is the caller's to settle. */
static PyObject *recompute64(PyObject *self, PyObject *args) {
    Py_buffer bq, bk, bv, bpos, border, bslots, bqn, bkmax, bvmax, bc, bsq, binv, bpen, bec, ben, bo, bm, bden, bderr,
        boerr, bmargin, bcodes;
    Py_ssize_t H, Hkv, cap, dh, R, n, K;
    double scale, exp_ulps;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*y*y*y*y*y*y*y*y*w*w*w*w*w*w*w*nnnnnnndd", &bq, &bk, &bv, &bpos,
                          &border, &bslots, &bqn, &bkmax, &bvmax, &bc, &bsq, &binv, &bpen, &bec, &ben, &bo, &bm,
                          &bden, &bderr, &boerr, &bmargin, &bcodes, &H, &Hkv, &cap, &dh, &R, &n, &K, &scale,
                          &exp_ulps))
        return NULL;
    Py_buffer *all[] = {&bq, &bk, &bv, &bpos, &border, &bslots, &bqn, &bkmax, &bvmax, &bc, &bsq, &binv, &bpen, &bec,
                        &ben, &bo, &bm, &bden, &bderr, &boerr, &bmargin, &bcodes};
    PyObject *result = NULL;
    double *sbuf = NULL;
    if (!(H > 0 && H <= MAX_HEADS && Hkv > 0 && H % Hkv == 0 && cap > 0 && dh > 0 && R >= 0 && n >= 0 && n <= cap &&
          K > 0 && K <= 4096)) {
        PyErr_SetString(PyExc_ValueError, "recompute64: inconsistent dimensions");
        goto done;
    }
    if (!(check_len(&bq, H * cap * dh, 4, "q") && check_len(&bk, Hkv * cap * dh, 4, "k") &&
          check_len(&bv, Hkv * cap * dh, 4, "v") && check_len(&bpos, cap, 8, "pos") &&
          check_len(&border, n, 8, "order") && check_len(&bslots, R, 8, "slots") &&
          check_len(&bqn, H * cap, 4, "qnorm") && check_len(&bkmax, Hkv, 8, "kmax") &&
          check_len(&bvmax, Hkv, 8, "vmax") && check_len(&bc, H * dh * K, 8, "ct") && check_len(&bsq, H * K, 8, "sq") &&
          check_len(&binv, H * K * K, 8, "inv_2pair") && check_len(&bpen, H * K * K, 8, "pen") &&
          check_len(&bec, H, 8, "err_const") && check_len(&ben, H, 8, "err_norm") &&
          check_len(&bo, H * R * dh, 4, "o") && check_len(&bm, H * R, 4, "m") && check_len(&bden, H * R, 8, "den") &&
          check_len(&bderr, H * R, 8, "den_err") && check_len(&boerr, H * R, 8, "o_err") &&
          check_len(&bmargin, H * R, 8, "margin") && check_len(&bcodes, H * R, 8, "codes")))
        goto done;
    const int64_t *pos = bpos.buf, *order = border.buf, *slots = bslots.buf;
    for (Py_ssize_t j = 0; j < n; j++)
        if (order[j] < 0 || order[j] >= cap || pos[order[j]] != j) {
            PyErr_Format(PyExc_ValueError, "recompute64: order[%zd] = %lld is not the slot of position %zd", j,
                         (long long)order[j], j);
            goto done;
        }
    Py_ssize_t nk = 0;
    for (Py_ssize_t i = 0; i < R; i++) {
        if (slots[i] < 0 || slots[i] >= cap || pos[slots[i]] < 0 || pos[slots[i]] >= n) {
            PyErr_Format(PyExc_ValueError, "recompute64: slot %lld is not a row of the document",
                         (long long)slots[i]);
            goto done;
        }
        if (pos[slots[i]] + 1 > nk) nk = pos[slots[i]] + 1;
    }
    Py_ssize_t ns = (R + 3) / 4 * 4 * ((nk + 7) / 8 * 8);
    /* scores, widened q rows, widened keys, then o (H, R, dh) f64, m, den (H, R) f64, one row of code scores */
    sbuf = PyMem_RawMalloc((size_t)(ns + R * dh + 8 * dh + H * R * dh + 2 * H * R + K + 1) * sizeof(double));
    if (sbuf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    double *o64 = sbuf + ns + R * dh + 8 * dh, *m64 = o64 + H * R * dh, *den64 = m64 + H * R, *sk = den64 + H * R;
    const float *qn = bqn.buf;
    const double *kmax = bkmax.buf, *vmax = bvmax.buf, *ct = bc.buf, *sq = bsq.buf, *inv = binv.buf, *pen = bpen.buf,
                 *ec = bec.buf, *en = ben.buf;
    float *o32 = bo.buf, *m32 = bm.buf;
    double *den = bden.buf, *derr = bderr.buf, *oerr = boerr.buf, *margin = bmargin.buf;
    int64_t *codes = bcodes.buf;
    Py_BEGIN_ALLOW_THREADS
    if (dh % 8 == 0)
        attend64_rows8(bq.buf, bk.buf, bv.buf, pos, order, slots, o64, m64, den64, sbuf, sbuf + ns,
                       sbuf + ns + R * dh, H, Hkv, cap, dh, R, nk, scale);
    else
        attend64_rows(bq.buf, bk.buf, bv.buf, pos, order, slots, o64, m64, den64, sbuf, sbuf + ns,
                      sbuf + ns + R * dh, H, Hkv, cap, dh, R, nk, scale);
    const double u = ldexp(1.0, -53), u32 = ldexp(1.0, -24);
    const double gd = (double)(dh + 2) * u / (1.0 - (double)(dh + 2) * u);
    const double g = (double)(cap + 1) * u / (1.0 - (double)(cap + 1) * u);
    Py_ssize_t group = H / Hkv;
    for (Py_ssize_t h = 0; h < H; h++)
        for (Py_ssize_t i = 0; i < R; i++) {
            Py_ssize_t at = h * R + i, kvh = h / group;
            const double *oi = o64 + at * dh;
            Py_ssize_t j;
            double f = facet(oi, ct + h * dh * K, sq + h * K, inv + h * K * K, pen + h * K * K, ec[h], en[h], K, dh,
                             sk, &j);
            /* numerics.attention_bounds */
            double spread = scale * (double)qn[h * cap + slots[i]] * kmax[kvh];
            double theta = 2.0 * gd * spread + u * 2.0 * spread + exp_ulps * u + g + 4.0 * u;
            theta = theta * (1.0 + 2.0 * theta);
            double e_o = ((theta + g * (1.0 + theta)) * vmax[kvh]) * (1.0 + 1e-6) + 1e-300;
            float mf = (float)m64[at];
            double dn = den64[at] * exp(m64[at] - (double)mf), o2 = 0.0;
            for (Py_ssize_t d = 0; d < dh; d++) {
                o32[at * dh + d] = (float)oi[d];
                o2 += oi[d] * oi[d];
            }
            codes[at] = j;
            margin[at] = f - e_o;
            oerr[at] = e_o + u32 * sqrt(o2) * (1.0 + 1e-6);
            m32[at] = mf;
            den[at] = dn;
            derr[at] = 2.0 * theta * dn;
        }
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    PyMem_RawFree(sbuf);
    for (size_t b = 0; b < sizeof(all) / sizeof(all[0]); b++) PyBuffer_Release(all[b]);
    return result;
}

/* exp(buffer of float64) in place, as the lazy update computes its weights (for the tests of its accuracy) */
static PyObject *exp_inplace(PyObject *self, PyObject *args) {
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "w*", &b)) return NULL;
    if (b.len % 8) {
        PyBuffer_Release(&b);
        PyErr_SetString(PyExc_ValueError, "exp_inplace: a float64 buffer is needed");
        return NULL;
    }
    exp_many((double *)b.buf, b.len / 8);
    PyBuffer_Release(&b);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"attend64", attend64, METH_VARARGS, "float64 attention of a few rows over their visible keys."},
    {"recompute64", recompute64, METH_VARARGS, "attend64, then codes, margins and error bounds (see attention.py)."},
    {"margins", margins, METH_VARARGS, "Codebook margins and radii of float64 rows (see numerics.py)."},
    {"exp_inplace", exp_inplace, METH_VARARGS, "exp of a float64 buffer, in place (the lazy update's exp)."},
    {"lazy_update", lazy_update, METH_VARARGS, "Lazy update of attention summaries (see attention.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Native kernels of the vqinc engine.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
