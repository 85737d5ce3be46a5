/* The neighbour graphs' candidate search, fused: one pass over the reference
 * columns per block of rows, keeping each row's group minima, then the
 * selection on values still in cache.
 *
 * It computes what the exported graph's nodes from the Pad (appending a one
 * to the centred rows) to the `candidates` tensor compute
 * (models/zoo/neighbours.py): for each row x, the float32 products
 * [x - c, 1] . W[:, j] (c zero for the graphs) over the reference columns j (W is
 * the graph's [d + 1, width] `ref_weights`, width a multiple of 64, groups of
 * 64 columns), the kk columns of smallest product, which lie within the kk
 * groups of smallest minimum.  Rounding may differ from onnxruntime's MatMul
 * in the last place; the exact float64 stage after it re-ranks the candidates,
 * and its margin covers such near-ties (see neighbours.py).
 *
 * Candidates come out in ascending column order.  Where the graph's exact
 * stage starts with the per-feature squared differences to the candidates'
 * float64 rows, those are written here too, a block of rows after its search
 * (its rows prefetched meanwhile; element-wise, so the graph's bits).  AVX-512F only: the
 * Python side uses the graph where anomstream_native_supported() says no.  With AVX512-BF16 the products
 * run first in bfloat16 with a bound (products_bf16, select_row_bf16): the same candidates, sooner.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <immintrin.h>

#define GROUP 64
#define ROWS 6     /* rows per block: 24 accumulators of 16 lanes, 4 weight vectors, one broadcast */
#define MAX_KK 64
#define MAX_GROUPS 4096  /* 262,144 reference columns */

int anomstream_native_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* Whether the bfloat16 prefilter (products_bf16) runs here. */
int anomstream_bf16_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
}

/* Products of `rows` centred rows (ROWS, or 1 for the batch's last rows) with every column into
 * D[rows][width], and each group's minimum into gmin[r * gstride + g].  Inlined with a constant `rows`,
 * so the accumulators stay in registers (6 rows: 24 of them, 4 weight vectors and a broadcast). */
__attribute__((target("avx512f"), always_inline))
static inline void products(const float *xc, int d, const float *W, int width, float *D, float *gmin, int gstride,
                            const int rows)
{
    int groups = width / GROUP;
    const float *bias = W + (size_t)d * width;
    for (int g = 0; g < groups; g++) {
        __m512 acc[ROWS][4];
        for (int j = 0; j < 4; j++) {
            __m512 b = _mm512_loadu_ps(bias + g * GROUP + 16 * j);
            for (int r = 0; r < rows; r++) acc[r][j] = b;
        }
        for (int k = 0; k < d; k++) {
            const float *wk = W + (size_t)k * width + g * GROUP;
            __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16);
            __m512 w2 = _mm512_loadu_ps(wk + 32), w3 = _mm512_loadu_ps(wk + 48);
            for (int r = 0; r < rows; r++) {
                __m512 xb = _mm512_set1_ps(xc[r * d + k]);
                acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(xb, w2, acc[r][2]);
                acc[r][3] = _mm512_fmadd_ps(xb, w3, acc[r][3]);
            }
        }
        for (int r = 0; r < rows; r++) {
            float *dr = D + (size_t)r * width + g * GROUP;
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(dr + 16 * j, acc[r][j]);
            __m512 m = _mm512_min_ps(_mm512_min_ps(acc[r][0], acc[r][1]), _mm512_min_ps(acc[r][2], acc[r][3]));
            gmin[r * gstride + g] = _mm512_reduce_min_ps(m);
        }
    }
}

/* One row's kk smallest columns by (product, column), in ascending column order, given its products D
 * and group minima gmin (padded with +inf to a multiple of 16; overwritten).  Returns 0, or -1 where
 * the products do not compare (NaN in the row). */
__attribute__((target("avx512f")))
static int select_row(const float *D, float *gmin, int groups, int kk, int64_t *out, float *vbuf, int32_t *ibuf)
{
    /* The kk groups of smallest minimum (ties to the lower group): kk rounds of a vector minimum over
     * the minima, each taking the first group at it out.  T, the last one taken, bounds the kk-th
     * smallest product from above. */
    uint64_t chosen[(MAX_GROUPS + 63) / 64];
    memset(chosen, 0, sizeof(uint64_t) * (size_t)((groups + 63) / 64));
    int nv = (groups + 15) / 16;
    float T = -INFINITY;
    for (int round = 0; round < kk; round++) {
        __m512 m = _mm512_loadu_ps(gmin);
        for (int q = 1; q < nv; q++) m = _mm512_min_ps(m, _mm512_loadu_ps(gmin + 16 * q));
        T = _mm512_reduce_min_ps(m);
        __m512 t = _mm512_set1_ps(T);
        int pos = -1;
        for (int q = 0; q < nv; q++) {
            unsigned eq = _mm512_cmp_ps_mask(_mm512_loadu_ps(gmin + 16 * q), t, _CMP_EQ_OQ);
            if (eq) {
                pos = 16 * q + __builtin_ctz(eq);
                break;
            }
        }
        if (pos < 0 || pos >= groups) return -1;  /* NaN, or only padding left */
        gmin[pos] = INFINITY;
        chosen[pos >> 6] |= 1ull << (pos & 63);
    }
    /* The chosen groups' products at or below T, in column order (compressed in registers: Zen 4
     * microcodes a compress straight to memory). */
    int n = 0;
    __m512 t = _mm512_set1_ps(T);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int w = 0; w < (groups + 63) / 64; w++) {
        for (uint64_t bits = chosen[w]; bits; bits &= bits - 1) {
            int g = 64 * w + __builtin_ctzll(bits);
            for (int j = 0; j < 4; j++) {
                int col = g * GROUP + 16 * j;
                __m512 v = _mm512_loadu_ps(D + col);
                __mmask16 k = _mm512_cmp_ps_mask(v, t, _CMP_LE_OQ);
                _mm512_storeu_ps(vbuf + n, _mm512_maskz_compress_ps(k, v));
                _mm512_storeu_si512(ibuf + n,
                                    _mm512_maskz_compress_epi32(k, _mm512_add_epi32(_mm512_set1_epi32(col), lanes)));
                n += __builtin_popcount(k);
            }
        }
    }
    if (n < kk) return -1;
    /* Drop the largest by (product, column) until kk are left: a few at most (ties at T aside). */
    for (; n > kk; n--) {
        int worst = 0;
        for (int i = 1; i < n; i++) worst = vbuf[i] >= vbuf[worst] ? i : worst;  /* columns ascend: the last */
        for (int i = worst; i < n - 1; i++) {
            vbuf[i] = vbuf[i + 1];
            ibuf[i] = ibuf[i + 1];
        }
    }
    for (int i = 0; i < kk; i++) out[i] = ibuf[i];
    return 0;
}

/* The prefilter.  Products in bfloat16 pairs (vdpbf16ps: twice the multiply-adds of float32 FMA per
 * instruction) approximate each product; a bound on their distance from the float32 products keeps every
 * column that can be among the kk smallest; those few get their float32 products, computed as products()
 * computes them (the bias, then one FMA per feature in order: the same bits), and the kk smallest by
 * (product, column) are taken from them.  So the candidates are those of the float32 search.
 *
 * The bound, per row and group of 64 columns (models/zoo/neighbours.py keeps W finite):
 *   |approx - float32| <= (2^-7 + 2^-15 + (2d + 6) 2^-24) |x| maxnorm_g + gconst_g
 * where |x| is the row's Euclidean norm, maxnorm_g the largest norm of the group's weight columns (without
 * the bias) and gconst_g = (2d + 6) 2^-24 max |bias| + a term for flushed denormals, both from the caller
 * (native.prefilter).  Rounding x and W to bfloat16 (nearest, ties to even) errs by 2^-8 of each value,
 * so by (2^-7 + 2^-16) of sum |x_k W_kj| <= |x| |W_j| per product; the float32 sums of both ways err by
 * 2^-24 of their partial sums per rounding, at most 2d + 2 roundings between them. */
#define PREFILTER_MAX 256  /* more columns than this within the bound: the row takes the float32 search */

__attribute__((target("avx512f,avx512bf16"), always_inline))
static inline void products_bf16(const uint32_t *xb, int dp, const uint32_t *Wb, const float *bias, int width,
                                 float *D, float *gmin, int gstride, const int rows)
{
    int groups = width / GROUP;
    for (int g = 0; g < groups; g++) {
        __m512 acc[ROWS][4];
        for (int j = 0; j < 4; j++) {
            __m512 b = _mm512_loadu_ps(bias + g * GROUP + 16 * j);
            for (int r = 0; r < rows; r++) acc[r][j] = b;
        }
        for (int p = 0; p < dp; p++) {
            const uint32_t *wp = Wb + (size_t)p * width + g * GROUP;
            __m512bh w0 = (__m512bh)_mm512_loadu_si512(wp), w1 = (__m512bh)_mm512_loadu_si512(wp + 16);
            __m512bh w2 = (__m512bh)_mm512_loadu_si512(wp + 32), w3 = (__m512bh)_mm512_loadu_si512(wp + 48);
            for (int r = 0; r < rows; r++) {
                __m512bh xv = (__m512bh)_mm512_set1_epi32((int)xb[r * dp + p]);
                acc[r][0] = _mm512_dpbf16_ps(acc[r][0], xv, w0);
                acc[r][1] = _mm512_dpbf16_ps(acc[r][1], xv, w1);
                acc[r][2] = _mm512_dpbf16_ps(acc[r][2], xv, w2);
                acc[r][3] = _mm512_dpbf16_ps(acc[r][3], xv, w3);
            }
        }
        for (int r = 0; r < rows; r++) {
            float *dr = D + (size_t)r * width + g * GROUP;
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(dr + 16 * j, acc[r][j]);
            __m512 m = _mm512_min_ps(_mm512_min_ps(acc[r][0], acc[r][1]), _mm512_min_ps(acc[r][2], acc[r][3]));
            gmin[r * gstride + g] = _mm512_reduce_min_ps(m);
        }
    }
}

static uint32_t bf16_bits(float f)
{
    uint32_t u;
    memcpy(&u, &f, sizeof u);
    return (u + 0x7FFFu + ((u >> 16) & 1u)) >> 16;  /* nearest, ties to even (finite values) */
}

/* A centred row as bfloat16 pairs (feature 2p low, 2p + 1 high; an odd last one paired with zero) and its
 * norm; 0 where a value would not round to a finite bfloat16. */
static int bf16_row(const float *xc, int d, uint32_t *xb, double *norm)
{
    double ss = 0.0;
    for (int k = 0; k < d; k++) {
        if (!(fabsf(xc[k]) < 3.3e38f)) return 0;
        ss += (double)xc[k] * xc[k];
    }
    for (int p = 0; p < (d + 1) / 2; p++)
        xb[p] = bf16_bits(xc[2 * p]) | (2 * p + 1 < d ? bf16_bits(xc[2 * p + 1]) << 16 : 0u);
    *norm = sqrt(ss);
    return *norm < 1e30;
}

/* float32 bits as an int32 that orders like the floats (NaN aside). */
__attribute__((target("avx512f")))
static inline __m512i ordered(__m512 v)
{
    __m512i b = _mm512_castps_si512(v);
    return _mm512_xor_si512(b, _mm512_and_si512(_mm512_srai_epi32(b, 31), _mm512_set1_epi32(0x7FFFFFFF)));
}

/* a + b rounded up past float32 rounding (each operand's own rounding included): a + b + (|a| + |b|) 2^-21. */
__attribute__((target("avx512f")))
static inline __m512 add_up(__m512 a, __m512 b)
{
    __m512 mag = _mm512_add_ps(_mm512_abs_ps(a), _mm512_abs_ps(b));
    return _mm512_add_ps(_mm512_add_ps(a, b), _mm512_mul_ps(mag, _mm512_set1_ps(0x1p-21f)));
}

/* Bisection on ordered bits: the smallest value t in [l, h] with at least kk of the nq vectors' values at or
 * below it, searched until within `slack` of it (0: exactly).  The returned bound keeps that property at every
 * step, so stopping early only loosens it. */
__attribute__((target("avx512f")))
static int32_t kth_ordered(const __m512i *v, int nq, int kk, int64_t l, int64_t h, int64_t slack)
{
    while (h - l > slack) {
        int64_t mid = l + ((h - l) >> 1);
        __m512i mv = _mm512_set1_epi32((int32_t)mid);
        int count = 0;
        for (int q = 0; q < nq; q++) count += __builtin_popcount(_mm512_cmp_epi32_mask(v[q], mv, _MM_CMPINT_LE));
        if (count >= kk) h = mid;
        else l = mid + 1;
    }
    return (int32_t)h;
}

/* One row's kk smallest columns by (float32 product, column), in ascending column order, from its bfloat16
 * products A and their group minima (padded with +inf to a multiple of 16).  WT [width, d + 1] is W
 * transposed (a column's weights, then its bias).  Returns 0; 1 where more than PREFILTER_MAX columns fall
 * within the bound (the caller runs the float32 search); -1 where the products do not compare. */
__attribute__((target("avx512f,fma")))
static int select_row_bf16(const float *A, const float *gmin, int groups, int kk, const float *xc, int d,
                           const float *WT, double norm, const float *gnorm, const float *gconst,
                           int64_t *out, float *vbuf, int32_t *ibuf, float *bound)
{
    /* Flushed denormals (vdpbf16ps reads and writes none) add at most 2^-126 per term or sum. */
    float spread = (float)((0x1p-7 + 0x1p-15 + (2.0 * d + 6.0) * 0x1p-24) * (1.0 + 0x1p-20) * norm);
    float floor_ = (float)((double)d * 0x1p-120 * norm + 1e-30);
    int nv = (groups + 15) / 16;
    __m512 sv = _mm512_set1_ps(spread), fv = _mm512_set1_ps(floor_);
    /* Per group: its bound, and key = minimum + bound; a group has a column whose float32 product is at
     * most its key, so the kk-th smallest key U bounds the kk-th smallest product. */
    __m512i lo = _mm512_set1_epi32(INT32_MAX), hi = _mm512_set1_epi32(INT32_MIN);
    __m512i keys[MAX_GROUPS / 16];
    for (int q = 0; q < nv; q++) {
        __m512 b = add_up(_mm512_mul_ps(sv, _mm512_loadu_ps(gnorm + 16 * q)), _mm512_loadu_ps(gconst + 16 * q));
        b = add_up(b, fv);
        _mm512_storeu_ps(bound + 16 * q, b);
        __m512 m = _mm512_loadu_ps(gmin + 16 * q);
        if (_mm512_cmp_ps_mask(m, m, _CMP_UNORD_Q)) return -1;
        __mmask16 live = 16 * q + 16 <= groups ? (__mmask16)0xFFFF : (__mmask16)((1u << (groups - 16 * q)) - 1);
        /* padding keys: +inf (ordered above every finite key) */
        keys[q] = _mm512_mask_blend_epi32(live, ordered(_mm512_set1_ps(INFINITY)), ordered(add_up(m, b)));
        lo = _mm512_mask_min_epi32(lo, live, lo, keys[q]);
        hi = _mm512_mask_max_epi32(hi, live, hi, keys[q]);
    }
    /* U: at least kk keys at or below it, within 2^14 float32 steps of the kk-th key (~2^-9 of it), well
     * inside the bounds. */
    int32_t ub = kth_ordered(keys, nv, kk, _mm512_reduce_min_epi32(lo), _mm512_reduce_max_epi32(hi), 1 << 14);
    ub ^= (ub >> 31) & 0x7FFFFFFF;
    float U;
    memcpy(&U, &ub, sizeof U);
    /* Every column whose bfloat16 product is within its group's bound of U, in column order (no branch
     * per 16 columns: an empty compress stores nothing that counts). */
    int n = 0;
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    __m512 uv = _mm512_set1_ps(U);
    for (int q = 0; q < nv; q++) {
        __m512 lim = add_up(uv, _mm512_loadu_ps(bound + 16 * q));
        unsigned near = _mm512_cmp_ps_mask(_mm512_loadu_ps(gmin + 16 * q), lim, _CMP_LE_OQ);
        if (16 * q + 16 > groups) near &= (1u << (groups - 16 * q)) - 1;
        for (; near; near &= near - 1) {
            int lane = __builtin_ctz(near), g = 16 * q + lane;
            __m512 tv = _mm512_permutexvar_ps(_mm512_set1_epi32(lane), lim);
            for (int j = 0; j < 4; j++) {
                int col = g * GROUP + 16 * j;
                __mmask16 k = _mm512_cmp_ps_mask(_mm512_loadu_ps(A + col), tv, _CMP_LE_OQ);
                _mm512_storeu_si512(ibuf + n, _mm512_maskz_compress_epi32(
                                                  k, _mm512_add_epi32(_mm512_set1_epi32(col), lanes)));
                n += __builtin_popcount(k);
            }
            if (n > PREFILTER_MAX) return 1;
        }
    }
    if (n < kk) return -1;
    /* Their float32 products, as products() computes them: the bias, then one FMA per feature in order
     * (eight columns side by side: one FMA chain is bound by its latency; gathering 16 columns' weights
     * took twice as long). */
    const size_t stride = (size_t)d + 1;
    int s = 0;
    for (; s + 8 <= n; s += 8) {
        const float *w[8];
        float a[8];
        for (int c = 0; c < 8; c++) {
            w[c] = WT + (size_t)ibuf[s + c] * stride;
            a[c] = w[c][d];
        }
        for (int k = 0; k < d; k++) {
            float xk = xc[k];
            for (int c = 0; c < 8; c++) a[c] = fmaf(xk, w[c][k], a[c]);
        }
        for (int c = 0; c < 8; c++) vbuf[s + c] = a[c];
    }
    for (; s < n; s++) {
        const float *w = WT + (size_t)ibuf[s] * stride;
        float a = w[d];
        for (int k = 0; k < d; k++) a = fmaf(xc[k], w[k], a);
        vbuf[s] = a;
    }
    /* The kk-th smallest product v (bisection on the ordered bits), then every column below v and the first
     * ones at v (the columns ascend: a tie goes to the lower column), in column order. */
    int nq = (n + 15) / 16;
    __m512i vals[PREFILTER_MAX / 16];
    lo = _mm512_set1_epi32(INT32_MAX);
    hi = _mm512_set1_epi32(INT32_MIN);
    for (int q = 0; q < nq; q++) {
        __mmask16 live = 16 * q + 16 <= n ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - 16 * q)) - 1);
        __m512 v = _mm512_maskz_loadu_ps(live, vbuf + 16 * q);
        if (_mm512_mask_cmp_ps_mask(live, v, v, _CMP_UNORD_Q)) return -1;
        /* + 0: -0 becomes +0, the float order's tie */
        vals[q] = _mm512_mask_blend_epi32(live, _mm512_set1_epi32(INT32_MAX), ordered(_mm512_add_ps(v, _mm512_setzero_ps())));
        lo = _mm512_mask_min_epi32(lo, live, lo, vals[q]);
        hi = _mm512_mask_max_epi32(hi, live, hi, vals[q]);
    }
    __m512i vk = _mm512_set1_epi32(kth_ordered(vals, nq, kk, _mm512_reduce_min_epi32(lo),
                                               _mm512_reduce_max_epi32(hi), 0));
    int below = 0;  /* padding lanes hold INT32_MAX, never below v; they are masked out of the ties */
    for (int q = 0; q < nq; q++) below += __builtin_popcount(_mm512_cmp_epi32_mask(vals[q], vk, _MM_CMPINT_LT));
    int ties = kk - below, m = 0;
    for (int q = 0; q < nq; q++) {
        unsigned live = 16 * q + 16 <= n ? 0xFFFFu : (1u << (n - 16 * q)) - 1;
        unsigned take = _mm512_cmp_epi32_mask(vals[q], vk, _MM_CMPINT_LT) & live;
        for (unsigned eq = _mm512_cmp_epi32_mask(vals[q], vk, _MM_CMPINT_EQ) & live; eq && ties > 0; eq &= eq - 1) {
            take |= eq & -eq;
            ties--;
        }
        for (; take; take &= take - 1) out[m++] = ibuf[16 * q + __builtin_ctz(take)];
    }
    return m == kk ? 0 : -1;
}

/* x - center into xc; whether every value is finite (a row with NaN or an infinity is not searched). */
static int centre_row(const float *x, const float *center, int d, float *xc)
{
    int finite = 1;
    for (int k = 0; k < d; k++) {
        xc[k] = x[k] - center[k];
        finite &= isfinite(xc[k]) != 0;
    }
    return finite;
}

/* Scratch floats anomstream_candidates needs. */
size_t anomstream_scratch_floats(int d, int width)
{
    int gpad = (width / GROUP + 15) / 16 * 16;
    return (size_t)ROWS * width + (size_t)ROWS * gpad + (size_t)ROWS * d + 2 * ((size_t)width + 16)
        + (size_t)width + (size_t)gpad + (size_t)ROWS * ((d + 1) / 2) + (size_t)gpad;
}

/* Sum of v[0..n) in the order onnxruntime's float64 ReduceSum over a last axis adds them: Eigen's reduction
 * with two-double (SSE2) packets, two accumulators of two lanes from the first 16-byte aligned value
 * (`start`, 0 or 1: whether v's address is 8 mod 16), the accumulators added, one more packet if it fits,
 * the lanes added, then the values before `start` and after the last whole packet, one by one.  Measured bit
 * for bit against onnxruntime 1.32 on every length 1-40 at both alignments; stream/native.py checks it again
 * against the onnxruntime it loads before using it. */
__attribute__((target("avx2")))
static double reduce_sum(const double *v, int n, int start)
{
    if (start > n) start = n;
    int pairs = (n - start) / 2 * 2, quads = (n - start) / 4 * 4;
    if (!pairs) {
        double res = v[0];
        for (int i = 1; i < n; i++) res += v[i];
        return res;
    }
    __m128d a;
    if (pairs > 2) {  /* one four-lane vector: lanes 0-1 the first accumulator, 2-3 the second */
        __m256d acc = _mm256_loadu_pd(v + start);
        for (int i = start + 4; i < start + quads; i += 4) acc = _mm256_add_pd(acc, _mm256_loadu_pd(v + i));
        a = _mm_add_pd(_mm256_castpd256_pd128(acc), _mm256_extractf128_pd(acc, 1));
        if (pairs > quads) a = _mm_add_pd(a, _mm_loadu_pd(v + start + quads));
    } else {
        a = _mm_loadu_pd(v + start);
    }
    double res = _mm_cvtsd_f64(a) + _mm_cvtsd_f64(_mm_unpackhi_pd(a, a));
    for (int i = 0; i < start; i++) res += v[i];
    for (int i = start + pairs; i < n; i++) res += v[i];
    return res;
}

/* reduce_sum of sq[k] = (double(xs[k]) - r[k])^2 over k < d, computed on the way (no sq array): each square
 * rounded as the graph's Sub and Mul round it, added in reduce_sum's order. */
__attribute__((target("avx2")))
static inline __m256d squares4(const float *xs, const double *r)
{
    __m256d t = _mm256_sub_pd(_mm256_cvtps_pd(_mm_loadu_ps(xs)), _mm256_loadu_pd(r));
    return _mm256_mul_pd(t, t);
}

static inline double square(const float *xs, const double *r, int k)
{
    double t = (double)xs[k] - r[k];
    return t * t;
}

__attribute__((target("avx2")))
static double squares_sum(const float *xs, const double *r, int d, int start)
{
    if (start > d) start = d;
    int pairs = (d - start) / 2 * 2, quads = (d - start) / 4 * 4;
    if (!pairs) {
        double res = square(xs, r, 0);
        for (int i = 1; i < d; i++) res += square(xs, r, i);
        return res;
    }
    __m128d a;
    if (pairs > 2) {
        __m256d acc = squares4(xs + start, r + start);
        for (int i = start + 4; i < start + quads; i += 4) acc = _mm256_add_pd(acc, squares4(xs + i, r + i));
        a = _mm_add_pd(_mm256_castpd256_pd128(acc), _mm256_extractf128_pd(acc, 1));
        if (pairs > quads) {
            int i = start + quads;
            a = _mm_add_pd(a, _mm_set_pd(square(xs, r, i + 1), square(xs, r, i)));
        }
    } else {
        a = _mm_set_pd(square(xs, r, start + 1), square(xs, r, start));
    }
    double res = _mm_cvtsd_f64(a) + _mm_cvtsd_f64(_mm_unpackhi_pd(a, a));
    for (int i = 0; i < start; i++) res += square(xs, r, i);
    for (int i = start + pairs; i < d; i++) res += square(xs, r, i);
    return res;
}

/* The exact stage's first step for one searched row: sq[i][k] = (double(xs[k]) - ref[cand[i]][k])^2, the
 * graph's Cast, Tile, Gather, Sub and Mul (element-wise and correctly rounded, so the graph's bits).  With
 * sums (else NULL), the graph's next node instead (sq untouched): sums[i] = ReduceSum of sq[i] as onnxruntime
 * adds the [N, kk, d] tensor's rows, row `first + i` of it starting 8 mod 16 where (first + i) * d is odd (its
 * arena is aligned). */
__attribute__((target("avx512f")))
static int exact_row(const float *xs, int d, const double *ref, int64_t ref_rows, const int64_t *cand, int kk,
                     double *sq, double *sums, size_t first)
{
    for (int i = 0; i < kk; i++) {
        if (cand[i] < 0 || cand[i] >= ref_rows) return -1;
        const double *r = ref + (size_t)cand[i] * d;
        if (sums) {
            sums[i] = squares_sum(xs, r, d, (int)(((first + (size_t)i) * (size_t)d) & 1));
            continue;
        }
        double *o = sq + (size_t)i * d;
        for (int k = 0; k < d; k++) {
            double diff = (double)xs[k] - r[k];
            o[k] = diff * diff;
        }
    }
    return 0;
}

/* Ask for the cache lines of the candidates' reference rows. */
static void prefetch_rows(const double *ref, int64_t ref_rows, int d, const int64_t *cand, int kk)
{
    for (int i = 0; i < kk; i++) {
        if (cand[i] < 0 || cand[i] >= ref_rows) continue;
        const char *row = (const char *)(ref + (size_t)cand[i] * d);
        for (size_t b = 0; b < (size_t)d * sizeof(double); b += 64) _mm_prefetch(row + b, _MM_HINT_T0);
    }
}

/* exact_row for the searched rows (ok) of the block of ROWS rows from `start`; the rows it could not take. */
static int exact_block(const float *xs, int d, const double *ref, int64_t ref_rows, const int64_t *cand, int kk,
                       double *sq, double *sums, int start, const int *ok)
{
    int failed = 0;
    for (int r = 0; r < ROWS; r++) {
        size_t row = (size_t)(start + r);
        if (ok[r]) failed += exact_row(xs + row * d, d, ref, ref_rows, cand + row * kk, kk,
                                       sums ? sq : sq + row * kk * d, sums ? sums + row * kk : NULL,
                                       row * kk) != 0;
    }
    return failed;
}

/* The float32 search of one centred row (products into D1, group minima into gmin1). */
__attribute__((target("avx512f")))
static int row_f32(const float *xc, int d, const float *W, int width, int kk, float *D1, float *gmin1, int gpad,
                   int64_t *c, float *vbuf, int32_t *ibuf)
{
    products(xc, d, W, width, D1, gmin1, gpad, 1);
    return select_row(D1, gmin1, width / GROUP, kk, c, vbuf, ibuf);
}

/* x: [n, d] float32 rows (row-major); center: [d]; W: [d + 1, width]; cand: [n, kk] int64 out.
 * With sq (else NULL): xs [n, d] float32 and ref [ref_rows, d] float64 in, sq [n, kk, d] float64 out
 * (exact_row) for every searched row.  With sums (else NULL) as well: sums [n, kk] float64 out, the graph's
 * ReduceSum of sq over d (reduce_sum), and sq is a [kk, d] scratch instead.
 * With Wb (else NULL; only where anomstream_bf16_supported()): the bfloat16 prefilter, Wb [(d + 1) / 2, width]
 * pairs of W's rows 2p (low half) and 2p + 1 (high half, zero past d), WT [width, d + 1] W transposed, and
 * per group of 64 columns gnorm (the largest Euclidean norm of its columns of W without the bias row) and
 * gconst (see products_bf16), both rounded up; the candidates are the same as without it.
 * Returns the number of rows not searched (NaN or infinity in the row, or after centring), -1 on bad
 * sizes; their candidates are left undefined. */
__attribute__((target("avx512f,avx512bf16")))
int anomstream_candidates(const float *x, int n, int d, const float *center, const float *W, int width, int kk,
                          int64_t *cand, float *scratch, const float *xs, const double *ref, int64_t ref_rows,
                          double *sq, double *sums, const uint32_t *Wb, const float *WT, const float *gnorm,
                          const float *gconst)
{
    int groups = width / GROUP;
    if (d < 1 || width < GROUP || width % GROUP || groups > MAX_GROUPS || kk < 1 || kk > MAX_KK || kk > groups)
        return -1;
    int gpad = (groups + 15) / 16 * 16, dp = (d + 1) / 2;
    float *D = scratch;
    float *gmin = D + (size_t)ROWS * width;
    float *xc = gmin + (size_t)ROWS * gpad;
    float *vbuf = xc + (size_t)ROWS * d;
    int32_t *ibuf = (int32_t *)(vbuf + width + 16);
    float *D1 = (float *)(ibuf + width + 16);
    float *gmin1 = D1 + width;
    uint32_t *xb = (uint32_t *)(gmin1 + gpad);
    float *bound = (float *)(xb + (size_t)ROWS * dp);
    for (int i = 0; i < ROWS * gpad; i++) gmin[i] = INFINITY;
    for (int i = 0; i < gpad; i++) gmin1[i] = INFINITY;
    const float *bias = W + (size_t)d * width;
    int failed = 0, i = 0;
    /* A block's exact step waits for the next block's products: its reference rows, prefetched after its
     * search, arrive while the products compute. */
    int pending = -1, ok[ROWS];
    for (; i + ROWS <= n; i += ROWS) {
        int finite[ROWS], pre[ROWS];
        double norm[ROWS];
        for (int r = 0; r < ROWS; r++) {
            finite[r] = centre_row(x + (size_t)(i + r) * d, center, d, xc + r * d);
            pre[r] = Wb && finite[r] && bf16_row(xc + r * d, d, xb + r * dp, &norm[r]);
            if (Wb && !pre[r]) memset(xb + r * dp, 0, sizeof(uint32_t) * (size_t)dp);
        }
        if (Wb) products_bf16(xb, dp, Wb, bias, width, D, gmin, gpad, ROWS);
        else products(xc, d, W, width, D, gmin, gpad, ROWS);
        if (pending >= 0) failed += exact_block(xs, d, ref, ref_rows, cand, kk, sq, sums, pending, ok);
        for (int r = 0; r < ROWS; r++) {
            int64_t *c = cand + (size_t)(i + r) * kk;
            int st = -1;
            if (!finite[r]) st = -1;
            else if (!Wb) st = select_row(D + (size_t)r * width, gmin + r * gpad, groups, kk, c, vbuf, ibuf);
            else {
                st = pre[r] ? select_row_bf16(D + (size_t)r * width, gmin + r * gpad, groups, kk, xc + r * d, d, WT,
                                              norm[r], gnorm, gconst, c, vbuf, ibuf, bound)
                            : 1;
                if (st == 1) st = row_f32(xc + r * d, d, W, width, kk, D1, gmin1, gpad, c, vbuf, ibuf);
            }
            ok[r] = st == 0;
            failed += !ok[r];
            if (ok[r] && sq) prefetch_rows(ref, ref_rows, d, c, kk);
        }
        pending = sq ? i : -1;
    }
    if (pending >= 0) failed += exact_block(xs, d, ref, ref_rows, cand, kk, sq, sums, pending, ok);
    for (; i < n; i++) {
        int finite = centre_row(x + (size_t)i * d, center, d, xc);
        int64_t *c = cand + (size_t)i * kk;
        int st = -1;
        double norm = 0.0;
        if (!finite) st = -1;
        else if (Wb && bf16_row(xc, d, xb, &norm)) {
            products_bf16(xb, dp, Wb, bias, width, D, gmin, gpad, 1);
            st = select_row_bf16(D, gmin, groups, kk, xc, d, WT, norm, gnorm, gconst, c, vbuf, ibuf, bound);
            if (st == 1) st = row_f32(xc, d, W, width, kk, D1, gmin1, gpad, c, vbuf, ibuf);
        } else {
            products(xc, d, W, width, D, gmin, gpad, 1);
            st = select_row(D, gmin, groups, kk, c, vbuf, ibuf);
        }
        int bad = st != 0;
        if (!bad && sq) bad = exact_row(xs + (size_t)i * d, d, ref, ref_rows, c, kk, sums ? sq : sq + (size_t)i * kk * d,
                                       sums ? sums + (size_t)i * kk : NULL, (size_t)i * kk);
        failed += bad != 0;
    }
    return failed;
}

/* Sum of v[0..n) as onnxruntime's float64 ReduceSum adds a row starting 8 mod 16 (start 1) or aligned (0). */
double anomstream_reduce_sum(const double *v, int n, int start)
{
    return n < 1 ? 0.0 : reduce_sum(v, n, start);
}

/* The k-th smallest (1-based) of v[0..n), duplicates counted: what a TopK and a ReduceMin/ReduceMax give.
 * Like the graph's TopK, it keeps whichever side is shorter: the k smallest (the answer their largest) or the
 * n - k + 1 largest (the answer their smallest), each value passed down the kept ones by min and max (no
 * branch to mispredict).  NaN-free v. */
static double kth_smallest(const double *v, int n, int k)
{
    double kept[MAX_KK];
    int low = k <= n - k + 1, m = low ? k : n - k + 1;
    if (m <= 4) {  /* four kept in registers (LOF's default: the 3 largest of 22) */
        double t0 = low ? INFINITY : -INFINITY, t1 = t0, t2 = t0, t3 = t0, y;
        for (int j = 0; j < n; j++) {
            double x = v[j];
            if (low) {
                y = t0; t0 = y < x ? y : x; x = y < x ? x : y;
                y = t1; t1 = y < x ? y : x; x = y < x ? x : y;
                y = t2; t2 = y < x ? y : x; x = y < x ? x : y;
                t3 = t3 < x ? t3 : x;
            } else {
                y = t0; t0 = y > x ? y : x; x = y > x ? x : y;
                y = t1; t1 = y > x ? y : x; x = y > x ? x : y;
                y = t2; t2 = y > x ? y : x; x = y > x ? x : y;
                t3 = t3 > x ? t3 : x;
            }
        }
        return m == 1 ? t0 : m == 2 ? t1 : m == 3 ? t2 : t3;
    }
    for (int i = 0; i < m; i++) kept[i] = low ? INFINITY : -INFINITY;
    if (low) {
        for (int j = 0; j < n; j++) {
            double x = v[j];
            for (int i = 0; i < m; i++) {
                double y = kept[i];
                kept[i] = y < x ? y : x;  /* minsd and maxsd */
                x = y < x ? x : y;
            }
        }
    } else {
        for (int j = 0; j < n; j++) {
            double x = v[j];
            for (int i = 0; i < m; i++) {
                double y = kept[i];
                kept[i] = y > x ? y : x;
                x = y > x ? x : y;
            }
        }
    }
    return kept[m - 1];
}

/* LOF's density stage after the exact sums (models/zoo/lof.py, models/zoo/neighbours.py onnx_nearest_set),
 * node for node: from sums [n, kk] (squared distances to the candidates cand [n, kk]) the k_sq-th smallest t;
 * key = -1 below t, the candidate's row number at t, inf above; chosen = key <= its k_key-th smallest (0/1);
 * reach = max(sqrt(sum), kdist[cand]); score = float((sum(lrd[cand] * chosen) * inv_k)
 * * (sum(reach * chosen) * inv_k + eps)), both sums over kk in onnxruntime's order for an [n, kk] tensor
 * (row i starting 8 mod 16 where i * kk is odd).  Every step is a correctly rounded operation on the values
 * the nodes see, so the graph's bits.  With lof (else NULL), the float64 score before its cast too.  Returns
 * -1 (nothing written that counts) on a NaN sum, a candidate outside [0, rows) or bad sizes. */
__attribute__((target("avx512f")))
int anomstream_lof_density(int n, int kk, const double *sums, const int64_t *cand, int k_sq, int k_key,
                           const double *kdist, const double *lrd, int64_t rows, double inv_k, double eps,
                           float *score, double *chosen, double *lof)
{
    if (kk < 1 || kk > MAX_KK || k_sq < 1 || k_sq > kk || k_key < 1 || k_key > kk) return -1;
    double key[MAX_KK], reach[MAX_KK], dens[MAX_KK];
    for (int i = 0; i < n; i++) {
        const double *s = sums + (size_t)i * kk;
        const int64_t *c = cand + (size_t)i * kk;
        double *w = chosen + (size_t)i * kk;
        for (int j = 0; j < kk; j++)
            if (isnan(s[j]) || c[j] < 0 || c[j] >= rows) return -1;
        double t = kth_smallest(s, kk, k_sq);
        for (int j = 0; j < kk; j++) {  /* selects, not branches */
            double at = s[j] == t ? (double)c[j] : INFINITY;
            key[j] = s[j] < t ? -1.0 : at;
        }
        double last = kth_smallest(key, kk, k_key);
        for (int j = 0; j < kk; j++) reach[j] = sqrt(s[j]);  /* vectorised (-fno-math-errno) */
        for (int j = 0; j < kk; j++) {
            w[j] = key[j] <= last ? 1.0 : 0.0;
            double kd = kdist[c[j]];
            reach[j] = (reach[j] < kd ? kd : reach[j]) * w[j];
            dens[j] = lrd[c[j]] * w[j];
        }
        int start = (int)(((size_t)i * (size_t)kk) & 1);
        double mean_reach = reduce_sum(reach, kk, start) * inv_k;
        double mean_lrd = reduce_sum(dens, kk, start) * inv_k;
        double value = mean_lrd * (mean_reach + eps);
        score[i] = (float)value;
        if (lof) lof[i] = value;
    }
    return 0;
}
