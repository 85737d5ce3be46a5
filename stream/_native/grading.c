/* Calibration, threshold and severity of a batch's raw scores in one pass (stream/core.py, Scorer.score), and
 * score graphs computed compiled (stream/native.py): the step-grid lookup of histogram graphs on their input rows
 * and HBOS's tail (grid_terms, grid_tail), PCA's score (pca_scores), IForest's score (forest_scores), ECOD's and
 * COPOD's ECDF counts (prefix_counts).
 *
 * A CPython extension module (stream._native._grading) on the plain C API and the buffer protocol, no
 * numpy headers.  A Grader holds a copy of the card's knot table (models.calibration.KnotLookup),
 * threshold and severity cuts; Grader.run(raw, score, anomaly, severity, rows) fills the four arrays
 * the caller allocated and returns how many rows alert (their indices lead ``rows``).  Per value it does
 * KnotLookup.__call__'s operations in its order, which give np.interp(x, xp, fp, left, right) bit for
 * bit; it is built with -ffp-contract=off, so no multiply and add are fused.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

/* KnotLookup's table for n knots, the grid's start counts in 16 bits (128 KB at most, 512 KB as intp). */
typedef struct {
    const double *base_x, *base_y, *slope; /* n + 1 entries */
    const double *next_knot;               /* n + k + 1 entries, NaN from n */
    const uint16_t *start;                 /* one per grid cell, each in [0, n] */
    double first, last, inv, top, right;   /* top: the last cell */
    int k, fix_right;
} Knots;

typedef struct {
    PyObject_HEAD
    Knots knots;
    double threshold, cuts[4];
    int alerting_only;
    void *memory; /* the table's arrays, one allocation */
} Grader;

static void grader_dealloc(Grader *self) {
    PyMem_Free(self->memory);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The format's type character, past a native byte-order prefix; 0 for anything else. */
static char format_char(const Py_buffer *view) {
    const char *f = view->format;
    if (f == NULL) return 'B';
    if (*f == '@' || *f == '=' || (*f == '<' && PY_LITTLE_ENDIAN) || (*f == '>' && !PY_LITTLE_ENDIAN)) f++;
    return (f[0] != '\0' && f[1] == '\0') ? f[0] : 0;
}

static int is_intp(const Py_buffer *view) {
    char c = format_char(view);
    return view->itemsize == (Py_ssize_t)sizeof(Py_ssize_t) && (c == 'n' || c == 'l' || c == 'q');
}

static int is_float64(const Py_buffer *view) { return format_char(view) == 'd' && view->itemsize == 8; }

static int grader_init(Grader *self, PyObject *args, PyObject *kwds) {
    static char *names[] = {"base_x", "base_y", "slope", "next_knot", "start", "inv", "k", "first", "last",
                            "right", "fix_right", "threshold", "cuts", "alerting_only", NULL};
    PyObject *objs[6];
    Knots t = {0};
    double threshold;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "OOOOOdiddd$pdOp", names, &objs[0], &objs[1], &objs[2],
                                     &objs[3], &objs[4], &t.inv, &t.k, &t.first, &t.last, &t.right,
                                     &t.fix_right, &threshold, &objs[5], &self->alerting_only))
        return -1;
    if (self->memory != NULL) {
        PyErr_SetString(PyExc_TypeError, "a Grader is initialised once");
        return -1;
    }
    Py_buffer v[6];
    int got = 0, ok = 1;
    for (; got < 6; got++)
        if (PyObject_GetBuffer(objs[got], &v[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) break;
    if (got < 6) {
        ok = -1;
        goto done;
    }
    Py_ssize_t n = v[0].len / 8 - 1, cells = v[4].len / (Py_ssize_t)sizeof(Py_ssize_t);
    ok = is_float64(&v[0]) && is_float64(&v[1]) && is_float64(&v[2]) && is_float64(&v[3]) && is_intp(&v[4]) &&
         is_float64(&v[5]) && n >= 2 && n < 65536 && v[1].len == v[0].len && v[2].len == v[0].len && t.k >= 1 &&
         v[3].len == (n + t.k + 1) * 8 && cells >= 1 && v[5].len == 4 * 8 && t.inv >= 0.0;
    const Py_ssize_t *start = v[4].buf;
    const double *next = v[3].buf, *cuts = v[5].buf;
    for (Py_ssize_t i = 0; ok && i < cells; i++) ok = start[i] >= 0 && start[i] <= n;
    /* Past the knots next_knot is NaN: the count stops at n, so every table index stays in range. */
    for (Py_ssize_t i = n; ok && i < n + t.k + 1; i++) ok = isnan(next[i]);
    /* np.searchsorted needs sorted cuts; counting the cuts at or below a score is the same then. */
    for (int j = 0; ok && j < 4; j++) ok = !isnan(cuts[j]) && (j == 0 || cuts[j - 1] <= cuts[j]);
    if (!ok) {
        PyErr_SetString(PyExc_ValueError,
                        "inconsistent knot table (or over 65,535 knots), or severity cuts not 4 ascending numbers");
        goto done;
    }
    size_t doubles = (size_t)(4 * (n + 1) + t.k);
    char *memory = PyMem_Malloc(doubles * 8 + (size_t)cells * 2);
    if (memory == NULL) {
        PyErr_NoMemory();
        ok = 0;
        goto done;
    }
    double *d = (double *)memory;
    uint16_t *s = (uint16_t *)(d + doubles);
    memcpy(d, v[0].buf, (size_t)v[0].len);
    memcpy(d + (n + 1), v[1].buf, (size_t)v[1].len);
    memcpy(d + 2 * (n + 1), v[2].buf, (size_t)v[2].len);
    memcpy(d + 3 * (n + 1), v[3].buf, (size_t)v[3].len);
    for (Py_ssize_t i = 0; i < cells; i++) s[i] = (uint16_t)start[i];
    t.base_x = d, t.base_y = d + (n + 1), t.slope = d + 2 * (n + 1), t.next_knot = d + 3 * (n + 1), t.start = s;
    t.top = (double)(cells - 1);
    self->memory = memory;
    self->knots = t;
    self->threshold = threshold;
    memcpy(self->cuts, cuts, sizeof self->cuts);
done:
    for (int j = 0; j < got; j++) PyBuffer_Release(&v[j]);
    return ok == 1 ? 0 : -1;
}

/* KnotLookup.__call__ for one value. */
static inline double calibrate(const Knots t, double x) {
    double y = x < t.first ? t.first : x; /* np.maximum, np.minimum: NaN stays NaN */
    y = y > t.last ? t.last : y;
    double u = (y - t.first) * t.inv;
    u = u > 0.0 ? u : 0.0;   /* np.fmax(u, 0): NaN → cell 0 (fmax itself is a libm call) */
    u = u < t.top ? u : t.top; /* a no-op on a consistent table: bounds the index */
    Py_ssize_t i = t.start[(Py_ssize_t)u];
    for (int j = 0; j < t.k; j++) i += x >= t.next_knot[i];
    y -= t.base_x[i];
    y *= t.slope[i];
    y += t.base_y[i];
    return t.fix_right && x > t.last ? t.right : y;
}

/* run(raw, score, anomaly, severity, rows) -> number of alerting rows. */
static PyObject *grader_run(Grader *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 5) {
        PyErr_Format(PyExc_TypeError, "run() takes 5 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer v[5];
    int got = 0;
    Py_ssize_t alerts = -1;
    for (; got < 5; got++)
        if (PyObject_GetBuffer(args[got], &v[got], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | (got ? PyBUF_WRITABLE : 0)) < 0)
            goto done;
    const int f32 = format_char(&v[0]) == 'f' && v[0].itemsize == 4;
    const Py_ssize_t n = v[0].len / (v[0].itemsize ? v[0].itemsize : 1);
    if (!(f32 || is_float64(&v[0])) || !is_float64(&v[1]) || v[1].len != n * 8 || format_char(&v[2]) != '?' ||
        v[2].len != n || format_char(&v[3]) != 'b' || v[3].len != n || !is_intp(&v[4]) ||
        v[4].len != n * (Py_ssize_t)sizeof(Py_ssize_t)) {
        PyErr_SetString(PyExc_TypeError, "run() takes float32 or float64 raw scores and as many float64, bool, "
                                         "int8 and intp outputs, contiguous");
        goto done;
    }
    const float *raw32 = v[0].buf;
    const double *raw64 = v[0].buf;
    double *restrict score = v[1].buf;
    unsigned char *restrict anomaly = v[2].buf;
    signed char *restrict severity = v[3].buf;
    Py_ssize_t *restrict rows = v[4].buf;
    const Knots t = self->knots; /* locals: the stores below cannot alias them */
    const double threshold = self->threshold, c0 = self->cuts[0], c1 = self->cuts[1], c2 = self->cuts[2],
                 c3 = self->cuts[3];
    const int alerting_only = self->alerting_only;
    if (f32)
        for (Py_ssize_t r = 0; r < n; r++) score[r] = calibrate(t, (double)raw32[r]);
    else
        for (Py_ssize_t r = 0; r < n; r++) score[r] = calibrate(t, raw64[r]);
    /* Most rows score below the threshold and the first cut: a predictable branch skips their grading. */
    const double low = threshold < c0 ? threshold : c0;
    Py_ssize_t m = 0;
    for (Py_ssize_t r = 0; r < n; r++) {
        const double y = score[r];
        if (y < low) {
            anomaly[r] = 0;
            severity[r] = 0;
            continue;
        }
        const int alert = y >= threshold;
        /* np.searchsorted(cuts, y, side="right"): the cuts at or below y, NaN after every cut. */
        const int grade = isnan(y) ? 4 : (y >= c0) + (y >= c1) + (y >= c2) + (y >= c3);
        anomaly[r] = (unsigned char)alert;
        severity[r] = (signed char)(alerting_only && !alert ? 0 : grade);
        rows[m] = r;
        m += alert;
    }
    alerts = m;
done:
    for (int j = 0; j < got; j++) PyBuffer_Release(&v[j]);
    return alerts < 0 ? NULL : PyLong_FromSsize_t(alerts);
}

static PyMethodDef grader_methods[] = {
    {"run", (PyCFunction)(void (*)(void))grader_run, METH_FASTCALL,
     "run(raw, score, anomaly, severity, rows) -> int\n\nFill the calibrated scores, anomaly flags and severity "
     "codes of ``raw``; the alerting rows' indices lead ``rows``, their count is returned."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject GraderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "stream._native._grading.Grader",
    .tp_basicsize = sizeof(Grader),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Grader(base_x, base_y, slope, next_knot, start, inv, k, first, last, right, *, fix_right, "
              "threshold, cuts, alerting_only)\n\nA card's knot table (models.calibration.KnotLookup), threshold "
              "and severity cuts, copied.",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)grader_init,
    .tp_dealloc = (destructor)grader_dealloc,
    .tp_methods = grader_methods,
};

/* The step-grid lookup of a histogram graph (models/step_grid.py, StepGrid.lookup in its flat layout), on
 * the graph's input rows x [n, d]: per value of column j,
 *   cell = (int32)(min(max(x * ps[j] + pb[j], low), high) * fs[j] + fb[j]),
 *   out = values[cell + (thresholds[cell] < x)],
 * each step rounded as the graph's BatchNormalization, Clip, BatchNormalization, Cast, GatherElements, Less,
 * Cast, Add and GatherElements round it (a multiply, then an add: no fused multiply-add). */
static inline void grid_row_scalar(const float *x, float *out, Py_ssize_t d, const float *ps, const float *pb,
                                   const float *fs, const float *fb, float low, float high, const float *thr,
                                   const float *val, int32_t top) {
    for (Py_ssize_t j = 0; j < d; j++) {
        float p = x[j] * ps[j];
        p = p + pb[j];
        p = p < low ? low : p;
        p = p > high ? high : p;
        float f = p * fs[j];
        f = f + fb[j];
        int32_t c = (int32_t)f;
        c = c < 0 ? 0 : c > top ? top : c; /* a no-op on a table the caller checked: bounds the reads */
        out[j] = val[c + (thr[c] < x[j])];
    }
}

#if defined(__x86_64__)
__attribute__((target("avx512f"))) static void grid_rows_avx512(const float *x, float *out, Py_ssize_t n,
                                                                 Py_ssize_t d, const float *ps, const float *pb,
                                                                 const float *fs, const float *fb, float low,
                                                                 float high, const float *thr, const float *val,
                                                                 int32_t top) {
    const __m512 lo = _mm512_set1_ps(low), hi = _mm512_set1_ps(high);
    const __m512i zero = _mm512_setzero_si512(), topv = _mm512_set1_epi32(top), one = _mm512_set1_epi32(1);
    for (Py_ssize_t r = 0; r < n; r++) {
        const float *xr = x + r * d;
        float *o = out + r * d;
        for (Py_ssize_t j = 0; j < d; j += 16) {
            __mmask16 live = d - j >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (d - j)) - 1);
            __m512 v = _mm512_maskz_loadu_ps(live, xr + j);
            __m512 p = _mm512_add_ps(_mm512_mul_ps(v, _mm512_maskz_loadu_ps(live, ps + j)),
                                     _mm512_maskz_loadu_ps(live, pb + j));
            /* Clip as std::min(std::max(p, low), high); p is never NaN for finite or infinite x here */
            p = _mm512_min_ps(_mm512_max_ps(p, lo), hi);
            __m512 f = _mm512_add_ps(_mm512_mul_ps(p, _mm512_maskz_loadu_ps(live, fs + j)),
                                     _mm512_maskz_loadu_ps(live, fb + j));
            __m512i c = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvttps_epi32(f), zero), topv);
            __m512 edge = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, c, thr, 4);
            __mmask16 above = _mm512_mask_cmp_ps_mask(live, edge, v, _CMP_LT_OQ);
            c = _mm512_mask_add_epi32(c, above, c, one);
            _mm512_mask_storeu_ps(o + j, live, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, c, val, 4));
        }
    }
}
#endif

static int is_float32(const Py_buffer *view) { return format_char(view) == 'f' && view->itemsize == 4; }

/* args[idx[i]] as contiguous float32 buffers into v[i] (i < n), writable where bit i of `writable` is set; an
 * argument that is None is left out (v[i].buf NULL) where bit i of `optional` is set.  0, with an error set and
 * nothing held, where one is refused; else release them with f32_release. */
static int f32_buffers(const char *fn, PyObject *const *args, const int *idx, int n, unsigned writable,
                       unsigned optional, Py_buffer *v) {
    memset(v, 0, sizeof(Py_buffer) * (size_t)n);
    for (int i = 0; i < n; i++) {
        PyObject *arg = args[idx[i]];
        if (arg == Py_None && (optional >> i & 1u)) continue;
        int flags = PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | ((writable >> i & 1u) ? PyBUF_WRITABLE : 0);
        if (PyObject_GetBuffer(arg, &v[i], flags) < 0 || !is_float32(&v[i])) {
            if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "%s() takes contiguous float32 arrays", fn);
            if (v[i].obj) PyBuffer_Release(&v[i]);
            for (int j = 0; j < i; j++)
                if (v[j].obj) PyBuffer_Release(&v[j]);
            return 0;
        }
    }
    return 1;
}

static void f32_release(Py_buffer *v, int n) {
    for (int i = 0; i < n; i++)
        if (v[i].obj) PyBuffer_Release(&v[i]);
}

/* grid_terms(x, out, pos_scale, pos_bias, flat_scale, flat_bias, low, high, thresholds, values[, portable]) */
static PyObject *grid_terms(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 10 && nargs != 11) {
        PyErr_Format(PyExc_TypeError, "grid_terms() takes 10 or 11 arguments (%zd given)", nargs);
        return NULL;
    }
    const int portable = nargs == 11 ? PyObject_IsTrue(args[10]) : 0;
    if (portable < 0) return NULL;
    double low = PyFloat_AsDouble(args[6]), high = PyFloat_AsDouble(args[7]);
    if (PyErr_Occurred()) return NULL;
    static const int order[8] = {0, 1, 2, 3, 4, 5, 8, 9};
    Py_buffer v[8];
    int ok = 0;
    if (!f32_buffers("grid_terms", args, order, 8, 1u << 1, 0, v)) return NULL;
    const Py_ssize_t d = v[2].len / 4, k = v[6].len / 4;
    if (d < 1 || v[3].len != d * 4 || v[4].len != d * 4 || v[5].len != d * 4 || v[0].len % (d * 4) ||
        v[1].len != v[0].len || k < 2 || v[7].len != k * 4 || k > INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "grid_terms(): rows of d values, d-long steps, equal tables of 2 or more");
        goto done;
    }
    const Py_ssize_t n = v[0].len / (d * 4);
    const float *x = v[0].buf, *ps = v[2].buf, *pb = v[3].buf, *fs = v[4].buf, *fb = v[5].buf;
    const float *thr = v[6].buf, *val = v[7].buf;
    float *out = v[1].buf;
    const int32_t top = (int32_t)(k - 2);
    Py_BEGIN_ALLOW_THREADS
#if defined(__x86_64__)
    if (!portable && __builtin_cpu_supports("avx512f"))
        grid_rows_avx512(x, out, n, d, ps, pb, fs, fb, (float)low, (float)high, thr, val, top);
    else
#endif
        for (Py_ssize_t r = 0; r < n; r++)
            grid_row_scalar(x + r * d, out + r * d, d, ps, pb, fs, fb, (float)low, (float)high, thr, val, top);
    Py_END_ALLOW_THREADS
    ok = 1;
done:
    f32_release(v, 8);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* PCA's score graph (models/zoo/pca.py) on rows x [n, d], as onnxruntime's CPU nodes compute it: the optional
 * BatchNormalization (x * scale, then + bias), the square, two Gemms ([d, k] weights: each output a chain of
 * fused multiply-adds over the inputs in order from zero, then + its bias row or the first Gemm's output: MLAS's
 * order), Relu (max of +0 and the value, which keeps NaN and -0 as MLAS does), Sqrt, and the MatMul by the [k] weights (a chain of fused
 * multiply-adds from zero).  stream/native.py checks the bits against the graph's own session at load and uses
 * this only where every one agrees. */
#if defined(__x86_64__)
#define PCA_ROWS 8 /* rows at a time: their chains of multiply-adds are independent, so they overlap */

/* Inlined with a constant `rows`, so the accumulators stay in registers. */
__attribute__((target("avx512f,fma"), always_inline)) static inline void pca_block(const float *x, float *out, int rows, Py_ssize_t d,
                                                             Py_ssize_t k, const float *med, const float *scale, const float *bias,
                                                             const float *w1, const float *c1, const float *w2,
                                                             const float *w, float *scratch) {
    float *xc = scratch, *xsq = scratch + PCA_ROWS * d, *dist = scratch + 2 * PCA_ROWS * d;
    const __m512 zero = _mm512_setzero_ps();
    for (int r = 0; r < rows; r++)
        for (Py_ssize_t j = 0; j < d; j++) {
            float v = x[r * d + j];
            if (med && v != v) v = med[j];
            if (scale) {
                v = v * scale[j];
                v = v + bias[j];
            }
            xc[r * d + j] = v;
            xsq[r * d + j] = v * v;
        }
    for (Py_ssize_t c = 0; c < k; c += 16) {
        __mmask16 live = k - c >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (k - c)) - 1);
        __m512 a1[PCA_ROWS], a2[PCA_ROWS];
        for (int r = 0; r < PCA_ROWS; r++) a1[r] = a2[r] = zero;
        for (Py_ssize_t j = 0; j < d; j++) {
            __m512 b1 = _mm512_maskz_loadu_ps(live, w1 + j * k + c), b2 = _mm512_maskz_loadu_ps(live, w2 + j * k + c);
            for (int r = 0; r < rows; r++) {
                a1[r] = _mm512_fmadd_ps(_mm512_set1_ps(xsq[r * d + j]), b1, a1[r]);
                a2[r] = _mm512_fmadd_ps(_mm512_set1_ps(xc[r * d + j]), b2, a2[r]);
            }
        }
        __m512 bias1 = _mm512_maskz_loadu_ps(live, c1 + c);
        for (int r = 0; r < rows; r++) {
            __m512 g = _mm512_max_ps(zero, _mm512_add_ps(a2[r], _mm512_add_ps(a1[r], bias1)));  /* NaN, -0 kept */
            _mm512_mask_storeu_ps(dist + r * k + c, live, _mm512_sqrt_ps(g));
        }
    }
    __m128 s[PCA_ROWS];
    for (int r = 0; r < PCA_ROWS; r++) s[r] = _mm_setzero_ps();
    for (Py_ssize_t c = 0; c < k; c++) {
        __m128 wc = _mm_set_ss(w[c]);
        for (int r = 0; r < rows; r++) s[r] = _mm_fmadd_ss(_mm_set_ss(dist[r * k + c]), wc, s[r]);
    }
    for (int r = 0; r < rows; r++) out[r] = _mm_cvtss_f32(s[r]);
}

__attribute__((target("avx512f,fma"))) static void pca_rows(const float *x, float *out, Py_ssize_t n, Py_ssize_t d,
                                                            Py_ssize_t k, const float *med, const float *scale, const float *bias,
                                                            const float *w1, const float *c1, const float *w2,
                                                            const float *w, float *scratch) {
    Py_ssize_t r = 0;
    for (; r + PCA_ROWS <= n; r += PCA_ROWS)
        pca_block(x + r * d, out + r, PCA_ROWS, d, k, med, scale, bias, w1, c1, w2, w, scratch);
    for (; r < n; r++) pca_block(x + r * d, out + r, 1, d, k, med, scale, bias, w1, c1, w2, w, scratch);
}
#endif

/* pca_scores(x, out, scale, bias, w1, c1, w2, w, medians): see pca_rows; scale and bias None where the graph has
 * no BatchNormalization, medians None where it does not impute (else a NaN in x becomes its column's median, the
 * graph's Where(IsNaN(x), medians, x)).  False (nothing computed) where this CPU has no AVX-512F. */
static PyObject *pca_scores(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 9) {
        PyErr_Format(PyExc_TypeError, "pca_scores() takes 9 arguments (%zd given)", nargs);
        return NULL;
    }
#if defined(__x86_64__)
    if (!__builtin_cpu_supports("avx512f")) Py_RETURN_FALSE;
    const int affine = args[2] != Py_None, imputes = args[8] != Py_None;
    static const int order[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    Py_buffer v[9];
    int ok = 0;
    float *scratch = NULL;
    if (!f32_buffers("pca_scores", args, order, 9, 1u << 1, 1u << 2 | 1u << 3 | 1u << 8, v)) return NULL;
    if (affine != (args[3] != Py_None)) {
        PyErr_SetString(PyExc_ValueError, "pca_scores(): scale and bias both or neither");
        goto done;
    }
    const Py_ssize_t k = v[5].len / 4, n = v[1].len / 4;
    const Py_ssize_t d = k ? v[4].len / 4 / k : 0;
    if (k < 1 || d < 1 || v[4].len != d * k * 4 || v[6].len != d * k * 4 || v[7].len != k * 4 || v[0].len != n * d * 4 ||
        (affine && (v[2].len != d * 4 || v[3].len != d * 4)) || (imputes && v[8].len != d * 4)) {
        PyErr_SetString(PyExc_ValueError, "pca_scores(): x [n, d], out [n], weights [d, k], rows of k");
        goto done;
    }
    scratch = PyMem_Malloc(sizeof(float) * (size_t)PCA_ROWS * (size_t)(2 * d + k + 16));
    if (!scratch) {
        PyErr_NoMemory();
        goto done;
    }
    {
        const float *x = v[0].buf, *w1 = v[4].buf, *c1 = v[5].buf, *w2 = v[6].buf, *w = v[7].buf;
        const float *scale = affine ? v[2].buf : NULL, *bias = affine ? v[3].buf : NULL;
        const float *med = imputes ? v[8].buf : NULL;
        float *out = v[1].buf;
        Py_BEGIN_ALLOW_THREADS
        pca_rows(x, out, n, d, k, med, scale, bias, w1, c1, w2, w, scratch);
        Py_END_ALLOW_THREADS
    }
    ok = 1;
done:
    PyMem_Free(scratch);
    f32_release(v, 9);
    if (!ok) return NULL;
    Py_RETURN_TRUE;
#else
    (void)args;
    Py_RETURN_FALSE;
#endif
}

/* Sum of v[0..n) as onnxruntime's float ReduceSum adds a row of the last axis: Eigen's reduction with SSE
 * packets of four, two accumulators from the `start`-th value (the first 16-byte aligned one), the accumulators
 * added, one more packet where it fits, the lanes added as (0 + 2) + (1 + 3), then the values before `start` and
 * after the last whole packet one by one. */
static float reduce_sum_f32(const float *v, Py_ssize_t n, Py_ssize_t start) {
    if (start > n) start = n;
    Py_ssize_t quads = (n - start) / 4 * 4, octs = (n - start) / 8 * 8;
    if (!quads) {
        float res = v[0];
        for (Py_ssize_t i = 1; i < n; i++) res += v[i];
        return res;
    }
    float a[4], b[4];
    for (int l = 0; l < 4; l++) a[l] = v[start + l];
    if (quads > 4) {
        for (int l = 0; l < 4; l++) b[l] = v[start + 4 + l];
        for (Py_ssize_t i = start + 8; i < start + octs; i += 8)
            for (int l = 0; l < 4; l++) {
                a[l] += v[i + l];
                b[l] += v[i + 4 + l];
            }
        for (int l = 0; l < 4; l++) a[l] += b[l];
        if (quads > octs)
            for (int l = 0; l < 4; l++) a[l] += v[start + octs + l];
    }
    float res = (a[0] + a[2]) + (a[1] + a[3]);
    for (Py_ssize_t i = 0; i < start; i++) res += v[i];
    for (Py_ssize_t i = start + quads; i < n; i++) res += v[i];
    return res;
}

/* grid_tail(terms, score, shares, total): HBOS's graph after its lookup (serving_graph.grid_cut's tail) on terms
 * [n, d]: score = ReduceSum(terms) + total (row r of the graph's terms tensor starts at its offset r * d in an
 * aligned arena) and, unless shares is None, shares = LpNormalization(terms, p=1): each term over the plain
 * running sum of the row's absolute terms (zeros where that is 0), onnxruntime's order. */
static PyObject *grid_tail(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "grid_tail() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    const double total_d = PyFloat_AsDouble(args[3]);
    if (PyErr_Occurred()) return NULL;
    const float total = (float)total_d;
    const int with_shares = args[2] != Py_None;
    static const int order[3] = {0, 1, 2};
    Py_buffer v[3];
    int ok = 0;
    if (!f32_buffers("grid_tail", args, order, 3, 1u << 1 | 1u << 2, 1u << 2, v)) return NULL;
    const Py_ssize_t n = v[1].len / 4, d = n ? v[0].len / 4 / n : 0;
    if (n < 1 || d < 1 || v[0].len != n * d * 4 || (with_shares && v[2].len != v[0].len)) {
        PyErr_SetString(PyExc_ValueError, "grid_tail(): terms [n, d], score [n], shares [n, d]");
        goto done;
    }
    {
        const float *t = v[0].buf;
        float *score = v[1].buf, *shares = with_shares ? v[2].buf : NULL;
        Py_BEGIN_ALLOW_THREADS
        for (Py_ssize_t r = 0; r < n; r++) {
            const float *row = t + r * d;
            score[r] = reduce_sum_f32(row, d, (4 - (Py_ssize_t)((size_t)(r * d) % 4)) % 4) + total;
            if (shares) {
                float norm = fabsf(row[0]);
                for (Py_ssize_t j = 1; j < d; j++) norm += fabsf(row[j]);
                float *o = shares + r * d;
                for (Py_ssize_t j = 0; j < d; j++) o[j] = norm != 0.0f ? row[j] / norm : 0.0f;
            }
        }
        Py_END_ALLOW_THREADS
    }
    ok = 1;
done:
    f32_release(v, 3);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* IForest's score graph (serving_graph.forest_cut): score = powf(base, (sum of the trees' leaf values) * factor),
 * the graph's TreeEnsembleRegressor (SUM, one target), Squeeze, Mul and Pow.  The trees come as complete binary
 * trees of `depth` levels (a leaf above the last level repeated over the levels below it): tree t's node i has
 * feature feat[t * inner + i] and threshold thr[t * inner + i] (inner = 2^depth - 1), its children are 2i + 1
 * (x <= threshold, the graph's BRANCH_LEQ true branch; NaN goes to the false one) and 2i + 2, and the leaf reached
 * at node i of the last level holds leaf[t * (inner + 1) + i - inner].  Each row's leaf values are added in float
 * from zero in tree order, onnxruntime's order on one thread; with medians, a NaN read is first replaced by its
 * column's median (the graph's Where(IsNaN(x), medians, x)). */
#define FOREST_MAX_DEPTH 12
#define FOREST_LANES_FROM 9 /* rows left over after blocks of 16 that take a block of their own */
/* Trees walked at once, with AVX-512 (16 rows each) and one row at a time: their chains of dependent loads are
 * independent, so they overlap (256 rows, 100 trees of 8 levels: 4 and 8 took the same time with AVX-512, 2 took
 * 1.4x that; the plain walk took 660 µs one tree at a time, ~300 with 8). */
#define FOREST_TREES 4
#define FOREST_CHAINS 8

static void forest_sums_scalar(const float *x, float *sums, Py_ssize_t n, Py_ssize_t d, const int32_t *feat,
                               const float *thr, const float *leaf, Py_ssize_t trees, int depth, const float *med) {
    const Py_ssize_t inner = ((Py_ssize_t)1 << depth) - 1;
    for (Py_ssize_t r = 0; r < n; r++) {
        const float *xr = x + r * d;
        float sum = 0.0f;
        Py_ssize_t t = 0;
        for (; t + FOREST_CHAINS <= trees; t += FOREST_CHAINS) {
            Py_ssize_t i[FOREST_CHAINS] = {0};
            for (int l = 0; l < depth; l++)
                for (int k = 0; k < FOREST_CHAINS; k++) {
                    const Py_ssize_t at = (t + k) * inner + i[k];
                    float v = xr[feat[at]];
                    if (med != NULL && v != v) v = med[feat[at]];
                    i[k] = 2 * i[k] + 2 - (v <= thr[at]);
                }
            for (int k = 0; k < FOREST_CHAINS; k++) sum += leaf[(t + k) * (inner + 1) + (i[k] - inner)];
        }
        for (; t < trees; t++) {
            Py_ssize_t i = 0;
            for (int l = 0; l < depth; l++) {
                const Py_ssize_t at = t * inner + i;
                float v = xr[feat[at]];
                if (med != NULL && v != v) v = med[feat[at]];
                i = 2 * i + 2 - (v <= thr[at]);
            }
            sum += leaf[t * (inner + 1) + (i - inner)];
        }
        sums[r] = sum;
    }
}

#if defined(__x86_64__)
/* The nodes' column numbers and thresholds at index i of one tree's level `level` (nodes 2^level - 1 on), for 16
 * rows: from registers by permutes for the first eight levels (up to 128 nodes: pairs of registers by the index's
 * low five bits, then blends by its higher bits), gathered below them. */
__attribute__((target("avx512f"))) static inline void forest_level(const int32_t *f, const float *h, int level,
                                                                    __m512i i, __mmask16 live, __m512i *fi,
                                                                    __m512 *hv) {
    const Py_ssize_t first = ((Py_ssize_t)1 << level) - 1;
    const __m512i at = _mm512_sub_epi32(i, _mm512_set1_epi32((int32_t)first));
    if (level <= 4) {
        const __mmask16 have = (__mmask16)((1u << (1u << level)) - 1);
        *fi = _mm512_permutexvar_epi32(at, _mm512_maskz_loadu_epi32(have, f + first));
        *hv = _mm512_permutexvar_ps(at, _mm512_maskz_loadu_ps(have, h + first));
    } else if (level <= 7) {
        __m512i fs[4];
        __m512 hs[4];
        const int pairs = 1 << (level - 5);
        for (int p = 0; p < pairs; p++) {
            fs[p] = _mm512_permutex2var_epi32(_mm512_loadu_si512(f + first + 32 * p), at,
                                              _mm512_loadu_si512(f + first + 32 * p + 16));
            hs[p] = _mm512_permutex2var_ps(_mm512_loadu_ps(h + first + 32 * p), at,
                                           _mm512_loadu_ps(h + first + 32 * p + 16));
        }
        for (int bit = 5, width = pairs; width > 1; bit++, width /= 2) {
            const __mmask16 high = _mm512_test_epi32_mask(at, _mm512_set1_epi32(1 << bit));
            for (int q = 0; q < width / 2; q++) {
                fs[q] = _mm512_mask_blend_epi32(high, fs[2 * q], fs[2 * q + 1]);
                hs[q] = _mm512_mask_blend_ps(high, hs[2 * q], hs[2 * q + 1]);
            }
        }
        *fi = fs[0];
        *hv = hs[0];
    } else {
        *fi = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), live, i, f, 4);
        *hv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, i, h, 4);
    }
}

/* forest_sums_scalar on 16 rows at a time, one per lane, FOREST_TREES trees at once. */
__attribute__((target("avx512f"))) static void forest_sums_avx512(const float *x, float *sums, Py_ssize_t n,
                                                                   Py_ssize_t d, const int32_t *feat,
                                                                   const float *thr, const float *leaf,
                                                                   Py_ssize_t trees, int depth, const float *med) {
    const Py_ssize_t inner = ((Py_ssize_t)1 << depth) - 1;
    const __m512i one = _mm512_set1_epi32(1), two = _mm512_set1_epi32(2), zero = _mm512_setzero_si512();
    const __m512i last = _mm512_set1_epi32((int32_t)inner);
    const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int32_t)d));
    const __m512 zf = _mm512_setzero_ps();
    for (Py_ssize_t r = 0; r < n; r += 16) {
        const __mmask16 live = n - r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - r)) - 1);
        const float *xb = x + r * d;
        __m512 acc = zf;
        for (Py_ssize_t t = 0; t < trees; t += FOREST_TREES) {
            const int k_end = trees - t < FOREST_TREES ? (int)(trees - t) : FOREST_TREES;
            __m512i i[FOREST_TREES];
            for (int k = 0; k < FOREST_TREES; k++) i[k] = zero;
            for (int l = 0; l < depth; l++)
                for (int k = 0; k < k_end; k++) {
                    __m512i fi;
                    __m512 hv;
                    forest_level(feat + (t + k) * inner, thr + (t + k) * inner, l, i[k], live, &fi, &hv);
                    __m512 v = _mm512_mask_i32gather_ps(zf, live, _mm512_add_epi32(rows, fi), xb, 4);
                    if (med != NULL) {
                        __mmask16 gap = _mm512_mask_cmp_ps_mask(live, v, v, _CMP_UNORD_Q);
                        if (gap) v = _mm512_mask_i32gather_ps(v, gap, fi, med, 4);
                    }
                    __m512i next = _mm512_add_epi32(_mm512_add_epi32(i[k], i[k]), two);
                    i[k] = _mm512_mask_sub_epi32(next, _mm512_cmp_ps_mask(v, hv, _CMP_LE_OQ), next, one);
                }
            for (int k = 0; k < k_end; k++)
                acc = _mm512_add_ps(acc, _mm512_mask_i32gather_ps(zf, live, _mm512_sub_epi32(i[k], last),
                                                                  leaf + (t + k) * (inner + 1), 4));
        }
        _mm512_mask_storeu_ps(sums + r, live, acc);
    }
}
#endif

/* forest_scores(x, out, feat, thr, leaf, depth, factor, base, medians[, portable]): see forest_sums_scalar; feat
 * int32 and thr float32 [trees, 2^depth - 1], leaf float32 [trees, 2^depth], medians None where the graph does
 * not impute.  Every feature number must be below x's width (the caller checked the table once). */
static PyObject *forest_scores(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 9 && nargs != 10) {
        PyErr_Format(PyExc_TypeError, "forest_scores() takes 9 or 10 arguments (%zd given)", nargs);
        return NULL;
    }
    const long depth = PyLong_AsLong(args[5]);
    const double factor_d = PyFloat_AsDouble(args[6]), base_d = PyFloat_AsDouble(args[7]);
    const int portable = nargs == 10 ? PyObject_IsTrue(args[9]) : 0;
    if (PyErr_Occurred() || portable < 0) return NULL;
    if (depth < 1 || depth > FOREST_MAX_DEPTH) {
        PyErr_SetString(PyExc_ValueError, "forest_scores(): depth from 1 to 12");
        return NULL;
    }
    const float factor = (float)factor_d, base = (float)base_d;
    const int imputes = args[8] != Py_None;
    static const int order[5] = {0, 1, 3, 4, 8};
    Py_buffer v[5], fv = {0};
    int ok = 0;
    if (!f32_buffers("forest_scores", args, order, 5, 1u << 1, 1u << 4, v)) return NULL;
    if (PyObject_GetBuffer(args[2], &fv, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) goto done;
    const Py_ssize_t inner = ((Py_ssize_t)1 << depth) - 1, n = v[1].len / 4;
    const Py_ssize_t trees = v[2].len / 4 / inner, d = n ? v[0].len / 4 / n : 0;
    const char c = format_char(&fv);
    if (fv.itemsize != 4 || (c != 'i' && !(c == 'l' && sizeof(long) == 4))) {
        PyErr_SetString(PyExc_TypeError, "forest_scores(): feat must be contiguous int32");
        goto done;
    }
    if (n < 1 || d < 1 || trees < 1 || v[0].len != n * d * 4 || v[2].len != trees * inner * 4 ||
        fv.len != v[2].len || v[3].len != trees * (inner + 1) * 4 || (imputes && v[4].len != d * 4) ||
        n * d >= INT32_MAX) {
        PyErr_SetString(PyExc_ValueError, "forest_scores(): x [n, d], out [n], feat and thr [trees, 2^depth - 1], "
                                          "leaf [trees, 2^depth], medians [d]");
        goto done;
    }
    {
        const float *x = v[0].buf, *thr = v[2].buf, *leaf = v[3].buf, *med = imputes ? v[4].buf : NULL;
        const int32_t *feat = fv.buf;
        float *out = v[1].buf;
        Py_BEGIN_ALLOW_THREADS
#if defined(__x86_64__)
        Py_ssize_t blocked = 0;
        if (!portable && __builtin_cpu_supports("avx512f")) {
            /* a block of 16 lanes costs about as much as 9 rows walked one by one */
            blocked = n % 16 >= FOREST_LANES_FROM ? n : n / 16 * 16;
            forest_sums_avx512(x, out, blocked, d, feat, thr, leaf, trees, (int)depth, med);
        }
#else
        const Py_ssize_t blocked = 0;
#endif
        forest_sums_scalar(x + blocked * d, out + blocked, n - blocked, d, feat, thr, leaf, trees, (int)depth, med);
        for (Py_ssize_t r = 0; r < n; r++) out[r] = powf(base, out[r] * factor);
        Py_END_ALLOW_THREADS
    }
    ok = 1;
done:
    if (fv.obj) PyBuffer_Release(&fv);
    f32_release(v, 5);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

/* ECOD's and COPOD's ECDF counts (serving_graph.PrefixCount, GraphBuilder.prefix_count): for each cell of x
 * [n, d], how many of its column's ascending values (values [d, width], width = 2^k - 1, padded with +inf) satisfy
 * v <= x (or v < x where strict), found as the graph's unrolled search finds it: from pos = 0, for each step from
 * (width + 1) / 2 down to 1, pos += step where the value at pos + step - 1 satisfies it.  So a NaN counts 0, and
 * the counts are the graph's integers whatever the order the cells are taken in.  COUNT_CELLS cells of a column
 * at once: their chains of dependent loads overlap. */
#define COUNT_CELLS 8

static void prefix_counts_rows(const float *x, int64_t *out, Py_ssize_t n, Py_ssize_t d, const float *values,
                               Py_ssize_t width, int strict) {
    for (Py_ssize_t j = 0; j < d; j++) {
        const float *col = values + j * width;
        Py_ssize_t r = 0;
        for (; r + COUNT_CELLS <= n; r += COUNT_CELLS) {
            float v[COUNT_CELLS];
            Py_ssize_t pos[COUNT_CELLS];
            for (int k = 0; k < COUNT_CELLS; k++) {
                v[k] = x[(r + k) * d + j];
                pos[k] = 0;
            }
            for (Py_ssize_t step = (width + 1) / 2; step >= 1; step /= 2)
                for (int k = 0; k < COUNT_CELLS; k++) {
                    const float c = col[pos[k] + step - 1];
                    pos[k] += (strict ? c < v[k] : c <= v[k]) ? step : 0;
                }
            for (int k = 0; k < COUNT_CELLS; k++) out[(r + k) * d + j] = pos[k];
        }
        for (; r < n; r++) {
            const float v = x[r * d + j];
            Py_ssize_t pos = 0;
            for (Py_ssize_t step = (width + 1) / 2; step >= 1; step /= 2) {
                const float c = col[pos + step - 1];
                pos += (strict ? c < v : c <= v) ? step : 0;
            }
            out[r * d + j] = pos;
        }
    }
}

#if defined(__x86_64__)
/* prefix_counts_rows on 16 cells of a column at a time, one per lane of the gathers.  The first six steps' probes
 * are among 63 values of the column (2^level at each level), held in registers and picked by permutes. */
__attribute__((target("avx512f"))) static void prefix_counts_avx512(const float *x, int64_t *out, Py_ssize_t n,
                                                                     Py_ssize_t d, const float *values,
                                                                     Py_ssize_t width, int strict) {
    const __m512i rows = _mm512_mullo_epi32(_mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0),
                                            _mm512_set1_epi32((int32_t)d));
    int k_steps = 0;
    while (((Py_ssize_t)1 << k_steps) < width + 1) k_steps++; /* width = 2^k_steps - 1 */
    const int top = k_steps < 6 ? k_steps : 6;
    int32_t got[16];
    for (Py_ssize_t j = 0; j < d; j++) {
        const float *col = values + j * width;
        __m512 level[7]; /* levels 0-4 in one register each, level 5 in two */
        for (int l = 0; l < top; l++) {
            float at[32] = {0};
            const Py_ssize_t step = (Py_ssize_t)1 << (k_steps - l - 1);
            for (Py_ssize_t i = 0; i < ((Py_ssize_t)1 << l); i++) at[i] = col[(2 * i + 1) * step - 1];
            level[l] = _mm512_loadu_ps(at);
            if (l == 5) level[6] = _mm512_loadu_ps(at + 16);
        }
        for (Py_ssize_t r = 0; r < n; r += 16) {
            const __mmask16 live = n - r >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << (n - r)) - 1);
            const __m512 v = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live, rows, x + r * d + j, 4);
            __m512i pos = _mm512_setzero_si512();
            for (int l = 0; l < k_steps; l++) {
                const int32_t step = (int32_t)1 << (k_steps - l - 1);
                __m512 c;
                if (l < top && l < 5)
                    c = _mm512_permutexvar_ps(_mm512_srl_epi32(pos, _mm_cvtsi32_si128(k_steps - l)), level[l]);
                else if (l < top)
                    c = _mm512_permutex2var_ps(level[5], _mm512_srl_epi32(pos, _mm_cvtsi32_si128(k_steps - l)), level[6]);
                else
                    c = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), live,
                                                 _mm512_add_epi32(pos, _mm512_set1_epi32(step - 1)), col, 4);
                const __mmask16 in = strict ? _mm512_cmp_ps_mask(c, v, _CMP_LT_OQ) : _mm512_cmp_ps_mask(c, v, _CMP_LE_OQ);
                pos = _mm512_mask_add_epi32(pos, in, pos, _mm512_set1_epi32(step));
            }
            _mm512_storeu_si512(got, pos);
            for (Py_ssize_t k = 0; k < 16 && r + k < n; k++) out[(r + k) * d + j] = got[k];
        }
    }
}
#endif

/* prefix_counts(x, values, out, strict[, portable]) -> None: see prefix_counts_rows; out int64 [n, d]; portable takes
 * the plain C loop where AVX-512 would run (for tests). */
static PyObject *prefix_counts(PyObject *module, PyObject *const *args, Py_ssize_t nargs) {
    (void)module;
    if (nargs != 4 && nargs != 5) {
        PyErr_Format(PyExc_TypeError, "prefix_counts() takes 4 or 5 arguments (%zd given)", nargs);
        return NULL;
    }
    const int strict = PyObject_IsTrue(args[3]), portable = nargs == 5 ? PyObject_IsTrue(args[4]) : 0;
    if (strict < 0 || portable < 0) return NULL;
    static const int order[2] = {0, 1};
    Py_buffer v[2], ov = {0};
    int ok = 0;
    if (!f32_buffers("prefix_counts", args, order, 2, 0, 0, v)) return NULL;
    if (PyObject_GetBuffer(args[2], &ov, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT | PyBUF_WRITABLE) < 0) goto done;
    const char c = format_char(&ov);
    if (ov.itemsize != 8 || (c != 'q' && c != 'l')) {
        PyErr_SetString(PyExc_TypeError, "prefix_counts(): out must be contiguous int64");
        goto done;
    }
    const Py_ssize_t cells = ov.len / 8;
    Py_ssize_t d = 0, width = 0, n = 0;
    if (v[1].ndim == 2) {
        d = v[1].shape[0];
        width = v[1].shape[1];
    }
    n = d ? cells / d : 0;
    if (d < 1 || width < 1 || ((width + 1) & width) != 0 || v[0].len != cells * 4 || n * d != cells) {
        PyErr_SetString(PyExc_ValueError, "prefix_counts(): x [n, d], values [d, 2^k - 1], out [n, d]");
        goto done;
    }
    {
        const float *x = v[0].buf, *values = v[1].buf;
        int64_t *out = ov.buf;
        Py_BEGIN_ALLOW_THREADS
#if defined(__x86_64__)
        if (!portable && __builtin_cpu_supports("avx512f") && width < INT32_MAX && n * d < INT32_MAX)
            prefix_counts_avx512(x, out, n, d, values, width, strict);
        else
#endif
            prefix_counts_rows(x, out, n, d, values, width, strict);
        Py_END_ALLOW_THREADS
    }
    ok = 1;
done:
    if (ov.obj) PyBuffer_Release(&ov);
    f32_release(v, 2);
    if (!ok) return NULL;
    Py_RETURN_NONE;
}

static PyMethodDef module_methods[] = {
    {"grid_terms", (PyCFunction)(void (*)(void))grid_terms, METH_FASTCALL,
     "grid_terms(x, out, pos_scale, pos_bias, flat_scale, flat_bias, low, high, thresholds, values, portable=False)"
     " -> None\n\nThe step-grid lookup of a histogram graph on rows x [n, d] into out [n, d] (float32, contiguous); "
     "``portable`` takes the plain C loop where AVX-512 would run (for tests)."},
    {"grid_tail", (PyCFunction)(void (*)(void))grid_tail, METH_FASTCALL,
     "grid_tail(terms, score, shares, total) -> None\n\nHBOS's graph after its lookup: the row sums plus total "
     "into score [n] and, unless shares is None, the rows over their absolute sums into shares [n, d]."},
    {"pca_scores", (PyCFunction)(void (*)(void))pca_scores, METH_FASTCALL,
     "pca_scores(x, out, scale, bias, w1, c1, w2, w, medians) -> bool\n\nPCA's score graph on rows x [n, d] into out [n] "
     "in onnxruntime's order of operations; False where this CPU has no AVX-512F."},
    {"forest_scores", (PyCFunction)(void (*)(void))forest_scores, METH_FASTCALL,
     "forest_scores(x, out, feat, thr, leaf, depth, factor, base, medians, portable=False) -> None\n\nIForest's "
     "score graph on rows x [n, d] into out [n]: the complete trees' leaf values summed in tree order, times factor, "
     "base to that power; ``portable`` takes the plain C loop where AVX-512 would run (for tests)."},
    {"prefix_counts", (PyCFunction)(void (*)(void))prefix_counts, METH_FASTCALL,
     "prefix_counts(x, values, out, strict, portable=False) -> None\n\nPer cell of x [n, d] (float32), how many of its column's "
     "ascending values (values [d, 2^k - 1], float32) are <= it (< where strict), as the graph's unrolled search "
     "counts them, into out [n, d] (int64)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef grading_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "stream._native._grading",
    .m_doc = "Calibration, threshold and severity of raw scores in one pass (stream/core.py); histogram graphs' "
             "step-grid lookup (stream/native.py).",
    .m_size = -1,
    .m_methods = module_methods,
};

PyMODINIT_FUNC PyInit__grading(void) {
    if (PyType_Ready(&GraderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&grading_module);
    if (m == NULL) return NULL;
    Py_INCREF(&GraderType);
    if (PyModule_AddObject(m, "Grader", (PyObject *)&GraderType) < 0) {
        Py_DECREF(&GraderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
