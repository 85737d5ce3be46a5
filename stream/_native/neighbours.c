/* The neighbour graphs' candidate search, fused: one pass over the reference
 * columns per block of rows, keeping each row's group minima, then the
 * selection on values still in cache.
 *
 * It computes what the exported graph's nodes from the centring Sub to the
 * `candidates` tensor compute (models/zoo/neighbours.py): for each row x, the
 * float32 products [x - c, 1] . W[:, j] over the reference columns j (W is
 * the graph's [d + 1, width] `ref_weights`, width a multiple of 64, groups of
 * 64 columns), the kk columns of smallest product, which lie within the kk
 * groups of smallest minimum.  Rounding may differ from onnxruntime's MatMul
 * in the last place; the exact float64 stage after it re-ranks the candidates,
 * and its margin covers such near-ties (see neighbours.py).
 *
 * Candidates come out ordered by (product, column).  AVX-512F only: the
 * Python side uses the graph where anomstream_native_supported() says no.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include <immintrin.h>

#define GROUP 64
#define ROWS 6     /* rows per block: 24 accumulators of 16 lanes, 4 weight vectors, one broadcast */
#define MAX_KK 64

int anomstream_native_supported(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

/* Products of ROWS centred rows with every column into D[ROWS][width], and each group's minimum. */
__attribute__((target("avx512f")))
static void products_block(const float *xc, int d, const float *W, int width, float *D, float *gmin, int gstride)
{
    int groups = width / GROUP;
    const float *bias = W + (size_t)d * width;
    for (int g = 0; g < groups; g++) {
        __m512 acc[ROWS][4];
        for (int j = 0; j < 4; j++) {
            __m512 b = _mm512_loadu_ps(bias + g * GROUP + 16 * j);
            for (int r = 0; r < ROWS; r++) acc[r][j] = b;
        }
        for (int k = 0; k < d; k++) {
            const float *wk = W + (size_t)k * width + g * GROUP;
            __m512 w0 = _mm512_loadu_ps(wk), w1 = _mm512_loadu_ps(wk + 16);
            __m512 w2 = _mm512_loadu_ps(wk + 32), w3 = _mm512_loadu_ps(wk + 48);
            for (int r = 0; r < ROWS; r++) {
                __m512 xb = _mm512_set1_ps(xc[r * d + k]);
                acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);
                acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);
                acc[r][2] = _mm512_fmadd_ps(xb, w2, acc[r][2]);
                acc[r][3] = _mm512_fmadd_ps(xb, w3, acc[r][3]);
            }
        }
        for (int r = 0; r < ROWS; r++) {
            float *dr = D + (size_t)r * width + g * GROUP;
            for (int j = 0; j < 4; j++) _mm512_storeu_ps(dr + 16 * j, acc[r][j]);
            __m512 m = _mm512_min_ps(_mm512_min_ps(acc[r][0], acc[r][1]), _mm512_min_ps(acc[r][2], acc[r][3]));
            gmin[r * gstride + g] = _mm512_reduce_min_ps(m);
        }
    }
}

/* The same for one row. */
__attribute__((target("avx512f")))
static void products_row(const float *xc, int d, const float *W, int width, float *D, float *gmin)
{
    int groups = width / GROUP;
    const float *bias = W + (size_t)d * width;
    for (int g = 0; g < groups; g++) {
        __m512 a0 = _mm512_loadu_ps(bias + g * GROUP), a1 = _mm512_loadu_ps(bias + g * GROUP + 16);
        __m512 a2 = _mm512_loadu_ps(bias + g * GROUP + 32), a3 = _mm512_loadu_ps(bias + g * GROUP + 48);
        for (int k = 0; k < d; k++) {
            const float *wk = W + (size_t)k * width + g * GROUP;
            __m512 xb = _mm512_set1_ps(xc[k]);
            a0 = _mm512_fmadd_ps(xb, _mm512_loadu_ps(wk), a0);
            a1 = _mm512_fmadd_ps(xb, _mm512_loadu_ps(wk + 16), a1);
            a2 = _mm512_fmadd_ps(xb, _mm512_loadu_ps(wk + 32), a2);
            a3 = _mm512_fmadd_ps(xb, _mm512_loadu_ps(wk + 48), a3);
        }
        float *dr = D + g * GROUP;
        _mm512_storeu_ps(dr, a0); _mm512_storeu_ps(dr + 16, a1);
        _mm512_storeu_ps(dr + 32, a2); _mm512_storeu_ps(dr + 48, a3);
        gmin[g] = _mm512_reduce_min_ps(_mm512_min_ps(_mm512_min_ps(a0, a1), _mm512_min_ps(a2, a3)));
    }
}

/* One row's kk smallest columns, given its products D and group minima gmin (padded with +inf to a
 * multiple of 16).  Returns 0, or -1 where fewer than kk values compare (NaN in the row). */
__attribute__((target("avx512f")))
static int select_row(const float *D, const float *gmin, int groups, int kk, int64_t *out, float *vbuf, int32_t *ibuf)
{
    /* The kk groups of smallest minimum, by rank (ties to the lower group), 16 ranks at a time; T, the
     * largest of their minima, bounds the kk-th smallest product from above. */
    int chosen[MAX_KK], nc = 0;
    float T = -INFINITY;
    int nv = (groups + 15) / 16;
    for (int i = 0; i < groups; i++) {
        __m512 v = _mm512_set1_ps(gmin[i]);
        int rank = 0;
        for (int q = 0; q < nv; q++) {
            __m512 g = _mm512_loadu_ps(gmin + 16 * q);
            unsigned lt = _mm512_cmp_ps_mask(g, v, _CMP_LT_OQ);
            unsigned eq = _mm512_cmp_ps_mask(g, v, _CMP_EQ_OQ);
            int lo = i - 16 * q;
            unsigned below = lo <= 0 ? 0u : lo >= 16 ? 0xFFFFu : (1u << lo) - 1u;
            rank += __builtin_popcount(lt | (eq & below));
        }
        if (rank < kk) {
            if (nc == kk) return -1;
            chosen[nc++] = i;
            if (gmin[i] > T) T = gmin[i];
        }
    }
    if (nc < kk) return -1;
    /* The chosen groups' products at or below T (compressed in registers: Zen 4 microcodes a compress
     * straight to memory). */
    int n = 0;
    __m512 t = _mm512_set1_ps(T);
    const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for (int c = 0; c < nc; c++) {
        int g = chosen[c];
        for (int j = 0; j < 4; j++) {
            int col = g * GROUP + 16 * j;
            __m512 v = _mm512_loadu_ps(D + col);
            __mmask16 m = _mm512_cmp_ps_mask(v, t, _CMP_LE_OQ);
            _mm512_storeu_ps(vbuf + n, _mm512_maskz_compress_ps(m, v));
            _mm512_storeu_si512(ibuf + n, _mm512_maskz_compress_epi32(m, _mm512_add_epi32(_mm512_set1_epi32(col), lanes)));
            n += __builtin_popcount(m);
        }
    }
    if (n < kk) return -1;
    /* The kk smallest of those by (product, column), by insertion: most fall at once. */
    float bv[MAX_KK];
    int32_t bi[MAX_KK];
    int nb = 0;
    for (int i = 0; i < n; i++) {
        float v = vbuf[i];
        int32_t ix = ibuf[i];
        if (nb == kk && (v > bv[kk - 1] || (v == bv[kk - 1] && ix > bi[kk - 1]))) continue;
        int p = nb < kk ? nb++ : kk - 1;
        while (p > 0 && (bv[p - 1] > v || (bv[p - 1] == v && bi[p - 1] > ix))) {
            bv[p] = bv[p - 1];
            bi[p] = bi[p - 1];
            p--;
        }
        bv[p] = v;
        bi[p] = ix;
    }
    for (int i = 0; i < kk; i++) out[i] = bi[i];
    return 0;
}

/* Scratch floats anomstream_candidates needs. */
size_t anomstream_scratch_floats(int d, int width)
{
    int gpad = (width / GROUP + 15) / 16 * 16;
    return (size_t)ROWS * width + (size_t)ROWS * gpad + (size_t)ROWS * d + 2 * ((size_t)width + 16);
}

/* x: [n, d] float32 rows (row-major); center: [d]; W: [d + 1, width]; cand: [n, kk] int64 out.
 * Returns the number of rows whose candidates could not be found (NaN), -1 on bad sizes. */
__attribute__((target("avx512f")))
int anomstream_candidates(const float *x, int n, int d, const float *center, const float *W, int width, int kk,
                          int64_t *cand, float *scratch)
{
    int groups = width / GROUP;
    if (d < 1 || width < GROUP || width % GROUP || kk < 1 || kk > MAX_KK || kk > groups) return -1;
    int gpad = (groups + 15) / 16 * 16;
    float *D = scratch;
    float *gmin = D + (size_t)ROWS * width;
    float *xc = gmin + (size_t)ROWS * gpad;
    float *vbuf = xc + (size_t)ROWS * d;
    int32_t *ibuf = (int32_t *)(vbuf + width + 16);
    for (int i = 0; i < ROWS * gpad; i++) gmin[i] = INFINITY;
    int failed = 0, i = 0;
    for (; i + ROWS <= n; i += ROWS) {
        for (int r = 0; r < ROWS; r++)
            for (int k = 0; k < d; k++) xc[r * d + k] = x[(size_t)(i + r) * d + k] - center[k];
        products_block(xc, d, W, width, D, gmin, gpad);
        for (int r = 0; r < ROWS; r++)
            failed += select_row(D + (size_t)r * width, gmin + r * gpad, groups, kk, cand + (size_t)(i + r) * kk,
                                 vbuf, ibuf) != 0;
    }
    for (; i < n; i++) {
        for (int k = 0; k < d; k++) xc[k] = x[(size_t)i * d + k] - center[k];
        products_row(xc, d, W, width, D, gmin);
        failed += select_row(D, gmin, groups, kk, cand + (size_t)i * kk, vbuf, ibuf) != 0;
    }
    return failed;
}
