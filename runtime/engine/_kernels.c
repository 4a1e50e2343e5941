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

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(VQINC_NO_CLONES)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

static int check_len(Py_buffer *b, Py_ssize_t items, Py_ssize_t itemsize, const char *name) {
    if (b->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "lazy_update: %s has %zd bytes, expected %zd", name, b->len,
                     items * itemsize);
        return 0;
    }
    return 1;
}

/* Dot product of two float32 rows in float32, eight independent partial sums (vectorisable; the bound
 * gamma(dh + 2) of numerics.py holds for any summation order). */
CLONES static float dot32(const float *a, const float *b, Py_ssize_t n) {
    float acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    Py_ssize_t d = 0;
    for (; d + 8 <= n; d += 8)
        for (int j = 0; j < 8; j++) acc[j] += a[d + j] * b[d + j];
    float s = 0.0f;
    for (; d < n; d++) s += a[d] * b[d];
    for (int j = 0; j < 8; j++) s += acc[j];
    return s;
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
 * ct is the head's codebook transposed (dh, K), so the scores of all codes accumulate side by side. */
static inline double facet(const double *o, const double *ct, const double *sq, const double *inv,
                           const double *pen, double ec, double en, Py_ssize_t K, Py_ssize_t dh, double *sk,
                           Py_ssize_t *code_out) {
    double o2 = 0.0;
#pragma omp simd reduction(+ : o2)
    for (Py_ssize_t d = 0; d < dh; d++) o2 += o[d] * o[d];
    /* o . c_k for eight codes at a time, accumulated in registers (a loop over sk in memory would chain
     * every step through a store and a load) */
    for (Py_ssize_t k0 = 0; k0 < K; k0 += 8) {
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        if (K - k0 >= 8) {
            for (Py_ssize_t d = 0; d < dh; d++) {
                const double *row = ct + d * K + k0;
                for (int j = 0; j < 8; j++) acc[j] += o[d] * row[j];
            }
            for (int j = 0; j < 8; j++) sk[k0 + j] = acc[j];
        } else {
            for (Py_ssize_t d = 0; d < dh; d++) {
                const double *row = ct + d * K + k0;
                for (Py_ssize_t j = 0; j < K - k0; j++) acc[j] += o[d] * row[j];
            }
            for (Py_ssize_t j = 0; j < K - k0; j++) sk[k0 + j] = acc[j];
        }
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
    float *onew;
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
    for (Py_ssize_t h = 0; h < H; h++) {
        const float *kh = k + (h / group) * X * dh;
        for (Py_ssize_t i = 0; i < n; i++) {
            Py_ssize_t s = slots[i];
            const float *qh = q + (h * cap + s) * dh;
            float m = mref[h * cap + s];
            double *ei = e + (h * n + i) * X;
            for (Py_ssize_t x = 0; x < X; x++) {
                /* float32 like the attend graph: (q . k) * scale - m */
                double z = (double)(dot32(qh, kh + x * dh, dh) * (float)scale - m);
                if (kpos[x] > qpos[i]) z = -1000.0;
                else if (z > OVERFLOW - 1) { over[i] = 1; z = 0.0; }
                ei[x] = z;
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
            /* cheap first: the exact output moves by at most sum w_x (|v_x| + |o|) / den' (|o| <= vmax);
             * when that keeps the code, o stays as it is and its error bound absorbs the movement */
            double mv = sl * (ev + vmax[h] * total) / low * (1.0 + 1e-12);
            if (margin[at] - mv > keep_eps) {
                new_den[h] = dn; new_err[h] = err; new_oerr[h] = oerr[at] + mv; new_margin[h] = margin[at] - mv;
                new_code[h] = codes[s * H + h];
                full[h] = 0;
                continue;
            }
            full[h] = 1;
            double *nm = num + h * dh;
            double onorm = 0.0;
#pragma omp simd
            for (Py_ssize_t d = 0; d < dh; d++) nm[d] = den0 * (double)oold[d];
#pragma omp simd reduction(+ : onorm)
            for (Py_ssize_t d = 0; d < dh; d++) onorm += (double)oold[d] * (double)oold[d];
            onorm = sqrt(onorm) * (1.0 + 1e-12);
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
            double mg = margin[at] - delta - oerr[at] - oe;
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

/* lazy_update(q, k, v, kpos, slots, qpos, m, codes, vnorm, vmax, slack, den, den_err, o, o_err, margin,
 *             c, sq, inv_2pair, pen, err_const, err_norm, need, changed, dims..., scale, g6, keep_eps,
 *             cancellation) -> rows that need a recompute
 *
 * Per row i and head h, with weights e_x = exp(q.k_x * scale - m) of the keys that come and go
 * (added a, removed r, old and new values of M modified keys):
 *   den' = den + sum(+-e_x),  o' = (den o + sum(+-e_x v_x)) / den'      (float64, o' stored as float32)
 * o_err bounds |o - exact output| and grows by what this step can get wrong: the stored den and o
 * (den_err |o| + (den + den_err) o_err), every weight's relative error (slack - 1), float64 rounding,
 * the exact output's distance to o' through den' (vmax err' / den': the exact output is a mean of
 * values, so its norm is at most vmax) and the float32 rounding of o'. First the cheap test: the exact
 * output moves by at most sum e_x (|v_x| + vmax) / den'; if the margin covers that, o is left as it is
 * and o_err grows by the movement (no pass over dh). Otherwise o' is computed, and the code is kept while
 * margin - |o' - o| - o_err - o_err' stays above keep_eps (the exact output moved by at most that);
 * else the row is rescored against the codebook from o': its nearest code (maybe a new one) is
 * proven when its facet distance minus o_err' is above keep_eps. A row of which any head is not
 * proven is left untouched and counted in `need`. The arrays are as the engine's state (state.py). */
static PyObject *lazy_update(PyObject *self, PyObject *args) {
    Py_buffer bq, bk, bv, bkpos, bslots, bqpos, bm, bcodes, bvnorm, bvmax, bslack, bden, berr, bo, boerr, bmargin,
        bc, bsq, binv, bpen, bec, ben, bneed, bchanged;
    Py_ssize_t H, Hkv, cap, dh, X, K, n, a, r, M;
    double scale, g6, keep_eps, cancellation;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*y*w*y*y*y*w*w*w*w*w*y*y*y*y*y*y*w*w*nnnnnnnnnndddd", &bq, &bk, &bv,
                          &bkpos, &bslots, &bqpos, &bm, &bcodes, &bvnorm, &bvmax, &bslack, &bden, &berr, &bo,
                          &boerr, &bmargin, &bc, &bsq, &binv, &bpen, &bec, &ben, &bneed, &bchanged, &H, &Hkv, &cap,
                          &dh, &X, &K, &n, &a, &r, &M, &scale, &g6, &keep_eps, &cancellation))
        return NULL;
    Py_buffer *all[] = {&bq, &bk, &bv, &bkpos, &bslots, &bqpos, &bm, &bcodes, &bvnorm, &bvmax, &bslack, &bden,
                        &berr, &bo, &boerr, &bmargin, &bc, &bsq, &binv, &bpen, &bec, &ben, &bneed, &bchanged};
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
          check_len(&bcodes, cap * H, 8, "codes") && check_len(&bvnorm, Hkv * X, 8, "vnorm") &&
          check_len(&bvmax, H, 8, "vmax") && check_len(&bslack, H, 8, "slack") &&
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
    const double *vnorm = bvnorm.buf, *vmax = bvmax.buf, *slack = bslack.buf, *cb = bc.buf, *sq = bsq.buf,
                 *inv = binv.buf, *pen = bpen.buf, *ec = bec.buf, *en = ben.buf;
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
    double *work = PyMem_RawMalloc((size_t)(H * dh + dh + K) * sizeof(double));
    float *onew = PyMem_RawMalloc((size_t)(H * dh) * sizeof(float));
    if (e == NULL || over == NULL || work == NULL || onew == NULL) {
        PyMem_RawFree(e);
        PyMem_RawFree(over);
        PyMem_RawFree(work);
        PyMem_RawFree(onew);
        PyErr_NoMemory();
        goto done;
    }
    LazyArgs A = {q, k, v, mref, kpos, slots, qpos, codes, vnorm, vmax, slack, cb, sq, inv, pen, ec, en, den, derr,
                  oerr, margin, ostore, need, changed, e, over, work, onew, H, cap, dh, X, K, n, a, r, M, group,
                  scale, g6, keep_eps, cancellation, tiny, u32, gsum, 0};
    Py_BEGIN_ALLOW_THREADS
    lazy_rows(&A);
    Py_END_ALLOW_THREADS
    count = A.count;
    PyMem_RawFree(e);
    PyMem_RawFree(over);
    PyMem_RawFree(work);
    PyMem_RawFree(onew);
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

/* The loops of attend64: per row and head, float64 scores over the visible keys, softmax, output. */
CLONES static void attend64_rows(const float *q, const float *k, const float *v, const int64_t *pos,
                                 const int64_t *slots, double *o, double *mout, double *dout, double *s,
                                 Py_ssize_t H, Py_ssize_t Hkv, Py_ssize_t cap, Py_ssize_t dh, Py_ssize_t R,
                                 double scale) {
    Py_ssize_t group = H / Hkv;
    for (Py_ssize_t i = 0; i < R; i++) {
        int64_t p = pos[slots[i]];
        for (Py_ssize_t h = 0; h < H; h++) {
            const float *qh = q + (h * cap + slots[i]) * dh;
            const float *kh = k + (h / group) * cap * dh, *vh = v + (h / group) * cap * dh;
            double qd[1024];
            for (Py_ssize_t d = 0; d < dh; d++) qd[d] = (double)qh[d] * scale;
            double m = -INFINITY;
            for (Py_ssize_t c = 0; c < cap; c++) {
                if (pos[c] < 0 || pos[c] > p) { s[c] = -INFINITY; continue; }
                const float *kc = kh + c * dh;
                double acc[4] = {0, 0, 0, 0};
                Py_ssize_t d = 0;
                for (; d + 4 <= dh; d += 4)
                    for (int j = 0; j < 4; j++) acc[j] += qd[d + j] * (double)kc[d + j];
                double z = (acc[0] + acc[1]) + (acc[2] + acc[3]);
                for (; d < dh; d++) z += qd[d] * (double)kc[d];
                s[c] = z;
                m = z > m ? z : m;
            }
            for (Py_ssize_t c = 0; c < cap; c++) s[c] = s[c] == -INFINITY ? -1e300 : s[c] - m;
            exp_many(s, cap);
            double den = 0.0, *oh = o + (h * R + i) * dh;
            for (Py_ssize_t d = 0; d < dh; d++) oh[d] = 0.0;
            for (Py_ssize_t c = 0; c < cap; c++) {
                double w = s[c];
                if (w == 0.0) continue;
                den += w;
                const float *vc = vh + c * dh;
#pragma omp simd
                for (Py_ssize_t d = 0; d < dh; d++) oh[d] += w * (double)vc[d];
            }
            for (Py_ssize_t d = 0; d < dh; d++) oh[d] /= den;
            mout[h * R + i] = m;
            dout[h * R + i] = den;
        }
    }
}

/* attend64(q, k, v, pos, slots, o, m, den, H, Hkv, cap, dh, R, scale)
 *
 * Full attention of rows `slots` over every visible key (0 <= pos <= the row's position) in float64:
 * what attention._attention64 computes in numpy, for all heads of a few rows at once. q (H, cap, dh),
 * k, v (Hkv, cap, dh) f32; pos (cap,) i64; out o (H, R, dh), m, den (H, R) f64. Every row needs at least
 * one visible key (itself). Its errors are those of the float64 `refine` path (attention_bounds with
 * u = 2^-53; the exp is within a few float64 ulps). */
static PyObject *attend64(PyObject *self, PyObject *args) {
    Py_buffer bq, bk, bv, bpos, bslots, bo, bm, bden;
    Py_ssize_t H, Hkv, cap, dh, R;
    double scale;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*w*w*nnnnnd", &bq, &bk, &bv, &bpos, &bslots, &bo, &bm, &bden, &H, &Hkv,
                          &cap, &dh, &R, &scale))
        return NULL;
    Py_buffer *all[] = {&bq, &bk, &bv, &bpos, &bslots, &bo, &bm, &bden};
    PyObject *result = NULL;
    if (!(H > 0 && Hkv > 0 && H % Hkv == 0 && cap > 0 && dh > 0 && dh <= 1024 && R >= 0)) {
        PyErr_SetString(PyExc_ValueError, "attend64: inconsistent dimensions");
        goto done;
    }
    if (!(check_len(&bq, H * cap * dh, 4, "q") && check_len(&bk, Hkv * cap * dh, 4, "k") &&
          check_len(&bv, Hkv * cap * dh, 4, "v") && check_len(&bpos, cap, 8, "pos") &&
          check_len(&bslots, R, 8, "slots") && check_len(&bo, H * R * dh, 8, "o") && check_len(&bm, H * R, 8, "m") &&
          check_len(&bden, H * R, 8, "den")))
        goto done;
    const int64_t *pos = bpos.buf, *slots = bslots.buf;
    for (Py_ssize_t i = 0; i < R; i++)
        if (slots[i] < 0 || slots[i] >= cap || pos[slots[i]] < 0) {
            PyErr_Format(PyExc_ValueError, "attend64: slot %lld is not a row of the document", (long long)slots[i]);
            goto done;
        }
    double *sbuf = PyMem_RawMalloc((size_t)cap * sizeof(double));
    if (sbuf == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    attend64_rows(bq.buf, bk.buf, bv.buf, pos, slots, bo.buf, bm.buf, bden.buf, sbuf, H, Hkv, cap, dh, R, scale);
    Py_END_ALLOW_THREADS
    PyMem_RawFree(sbuf);
    result = Py_None;
    Py_INCREF(result);
done:
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
    {"margins", margins, METH_VARARGS, "Codebook margins and radii of float64 rows (see numerics.py)."},
    {"exp_inplace", exp_inplace, METH_VARARGS, "exp of a float64 buffer, in place (the lazy update's exp)."},
    {"lazy_update", lazy_update, METH_VARARGS, "Lazy update of attention summaries (see attention.py)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", "Native kernels of the vqinc engine.", -1,
                                    methods};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
