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
 * Python side uses the graph where anomstream_native_supported() says no.
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
    return (size_t)ROWS * width + (size_t)ROWS * gpad + (size_t)ROWS * d + 2 * ((size_t)width + 16);
}

/* The exact stage's first step for one searched row: sq[i][k] = (double(xs[k]) - ref[cand[i]][k])^2, the
 * graph's Cast, Tile, Gather, Sub and Mul (element-wise and correctly rounded, so the graph's bits). */
__attribute__((target("avx512f")))
static int exact_row(const float *xs, int d, const double *ref, int64_t ref_rows, const int64_t *cand, int kk,
                     double *sq)
{
    for (int i = 0; i < kk; i++) {
        if (cand[i] < 0 || cand[i] >= ref_rows) return -1;
        const double *r = ref + (size_t)cand[i] * d;
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
                       double *sq, int start, const int *ok)
{
    int failed = 0;
    for (int r = 0; r < ROWS; r++) {
        size_t row = (size_t)(start + r);
        if (ok[r]) failed += exact_row(xs + row * d, d, ref, ref_rows, cand + row * kk, kk, sq + row * kk * d) != 0;
    }
    return failed;
}

/* x: [n, d] float32 rows (row-major); center: [d]; W: [d + 1, width]; cand: [n, kk] int64 out.
 * With sq (else NULL): xs [n, d] float32 and ref [ref_rows, d] float64 in, sq [n, kk, d] float64 out
 * (exact_row) for every searched row.
 * Returns the number of rows not searched (NaN or infinity in the row, or after centring), -1 on bad
 * sizes; their candidates are left undefined. */
__attribute__((target("avx512f")))
int anomstream_candidates(const float *x, int n, int d, const float *center, const float *W, int width, int kk,
                          int64_t *cand, float *scratch, const float *xs, const double *ref, int64_t ref_rows,
                          double *sq)
{
    int groups = width / GROUP;
    if (d < 1 || width < GROUP || width % GROUP || groups > MAX_GROUPS || kk < 1 || kk > MAX_KK || kk > groups)
        return -1;
    int gpad = (groups + 15) / 16 * 16;
    float *D = scratch;
    float *gmin = D + (size_t)ROWS * width;
    float *xc = gmin + (size_t)ROWS * gpad;
    float *vbuf = xc + (size_t)ROWS * d;
    int32_t *ibuf = (int32_t *)(vbuf + width + 16);
    for (int i = 0; i < ROWS * gpad; i++) gmin[i] = INFINITY;
    int failed = 0, i = 0;
    /* A block's exact step waits for the next block's products: its reference rows, prefetched after its
     * search, arrive while the products compute. */
    int pending = -1, ok[ROWS];
    for (; i + ROWS <= n; i += ROWS) {
        int finite[ROWS];
        for (int r = 0; r < ROWS; r++) finite[r] = centre_row(x + (size_t)(i + r) * d, center, d, xc + r * d);
        products(xc, d, W, width, D, gmin, gpad, ROWS);
        if (pending >= 0) failed += exact_block(xs, d, ref, ref_rows, cand, kk, sq, pending, ok);
        for (int r = 0; r < ROWS; r++) {
            int64_t *c = cand + (size_t)(i + r) * kk;
            ok[r] = finite[r] && !select_row(D + (size_t)r * width, gmin + r * gpad, groups, kk, c, vbuf, ibuf);
            failed += !ok[r];
            if (ok[r] && sq) prefetch_rows(ref, ref_rows, d, c, kk);
        }
        pending = sq ? i : -1;
    }
    if (pending >= 0) failed += exact_block(xs, d, ref, ref_rows, cand, kk, sq, pending, ok);
    for (; i < n; i++) {
        int finite = centre_row(x + (size_t)i * d, center, d, xc);
        products(xc, d, W, width, D, gmin, gpad, 1);
        int64_t *c = cand + (size_t)i * kk;
        int bad = !finite || select_row(D, gmin, groups, kk, c, vbuf, ibuf);
        if (!bad && sq) bad = exact_row(xs + (size_t)i * d, d, ref, ref_rows, c, kk, sq + (size_t)i * kk * d);
        failed += bad != 0;
    }
    return failed;
}
