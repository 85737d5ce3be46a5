/* A batch of JSON events straight into the float32 feature matrix: the decoder's fast path.
 *
 * decode(values, names, out, max_bytes) takes a list of bytes payloads, the card's feature names and a
 * writable float32 buffer of len(values) * len(names) values, and fills row i with event i's features in card
 * order (NaN for null), returning (ids, keys, ts) lists; or None as soon as one payload is anything but the
 * plain shape below, and the caller decodes the batch with the general path (msgspec, orjson and checks that
 * name each problem: stream/decoding.py).  So this path only has to be right on what it takes:
 *
 *   an object with at most the keys "features", "id", "key", "ts" (no duplicate, no escape in a key);
 *   "features" an object holding every card name once (other names allowed when their value is a number or
 *   null; a name written with an escape is not taken) or an array of exactly len(names) values; each value a
 *   JSON number or null, finite and within float32's range;
 *   "id", "key" and "ts" each a string without escapes (valid UTF-8), an integer within int64, a number with a
 *   fraction or exponent, or null;
 *   JSON whitespace between tokens, nothing after the object.
 *
 * Numbers are read as the general path reads them: correctly rounded to a double (the exact fast path where
 * the digits and the power of ten are exact doubles, else PyOS_string_to_double), then rounded to float32 as
 * numpy's astype does.  Integers of more than 19 digits are left to the general path.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const char *p;
    const char *end;
} Cursor;

static inline void skip_ws(Cursor *c)
{
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\n' || *c->p == '\r' || *c->p == '\t')) c->p++;
}

static inline int take(Cursor *c, char ch)
{
    skip_ws(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A string without escapes or control characters: its bytes between the quotes; 0 where it is anything else. */
static int plain_string(Cursor *c, const char **s, Py_ssize_t *n)
{
    if (!take(c, '"')) return 0;
    const char *start = c->p;
    while (c->p < c->end) {
        unsigned char ch = (unsigned char)*c->p;
        if (ch == '"') {
            *s = start;
            *n = c->p - start;
            c->p++;
            return 1;
        }
        if (ch == '\\' || ch < 0x20) return 0;
        c->p++;
    }
    return 0;
}

static const double POW10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11,
                                1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

enum { NUM_BAD = 0, NUM_INT = 1, NUM_FLOAT = 2 };

/* A JSON number: NUM_INT with *i (an integer literal within int64 and of at most 19 digits),
 * NUM_FLOAT with *d (fraction or exponent; correctly rounded), NUM_BAD where it is not one this path takes
 * (or not a number; PyOS_string_to_double's errors are cleared). */
static int number(Cursor *c, int64_t *i, double *d)
{
    skip_ws(c);
    const char *start = c->p, *e = c->end, *p = c->p;
    int neg = 0;
    if (p < e && *p == '-') {
        neg = 1;
        p++;
    }
    if (p >= e || *p < '0' || *p > '9') return NUM_BAD;
    uint64_t mant = 0;
    int digits = 0, dropped = 0;  /* significant digits kept in mant; integer digits past 19 */
    if (*p == '0') {
        p++;
        if (p < e && *p >= '0' && *p <= '9') return NUM_BAD;  /* no leading zeros */
    } else {
        while (p < e && *p >= '0' && *p <= '9') {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                digits++;
            } else {
                dropped++;
            }
            p++;
        }
    }
    int frac = 0, exp10 = 0, is_float = 0, inexact = dropped > 0;
    if (p < e && *p == '.') {
        is_float = 1;
        p++;
        if (p >= e || *p < '0' || *p > '9') return NUM_BAD;
        while (p < e && *p >= '0' && *p <= '9') {
            if (digits < 19) {  /* zeros before the first significant digit only move the scale */
                mant = mant * 10 + (uint64_t)(*p - '0');
                frac++;
                digits += mant != 0;
            } else if (*p != '0') {
                inexact = 1;
            }
            p++;
        }
    }
    if (p < e && (*p == 'e' || *p == 'E')) {
        is_float = 1;
        p++;
        int eneg = 0, ev = 0;
        if (p < e && (*p == '+' || *p == '-')) eneg = *p++ == '-';
        if (p >= e || *p < '0' || *p > '9') return NUM_BAD;
        while (p < e && *p >= '0' && *p <= '9') {
            if (ev < 100000) ev = ev * 10 + (*p - '0');
            p++;
        }
        exp10 = eneg ? -ev : ev;
    }
    c->p = p;
    if (!is_float) {
        if (dropped) return NUM_BAD;
        if (mant > (uint64_t)INT64_MAX + (uint64_t)neg) return NUM_BAD;
        *i = neg ? (int64_t)(0 - mant) : (int64_t)mant;
        return NUM_INT;
    }
    int scale = exp10 - frac + dropped;
    if (!inexact && mant <= (UINT64_C(1) << 53) && scale >= -22 && scale <= 22) {
        double v = (double)mant;  /* exact: both operands are exact doubles, one rounding */
        v = scale < 0 ? v / POW10[-scale] : v * POW10[scale];
        *d = neg ? -v : v;
        return NUM_FLOAT;
    }
    Py_ssize_t n = p - start;
    char buf[128];
    if (n >= (Py_ssize_t)sizeof buf) return NUM_BAD;
    memcpy(buf, start, (size_t)n);
    buf[n] = '\0';
    char *stop = NULL;
    double v = PyOS_string_to_double(buf, &stop, NULL);
    if ((v == -1.0 && PyErr_Occurred()) || stop != buf + n) {
        PyErr_Clear();
        return NUM_BAD;
    }
    *d = v;
    return NUM_FLOAT;
}

/* A feature value into *out: a number (finite, within float32's range) or null (NaN).  0 where it is not. */
static int feature(Cursor *c, float *out)
{
    skip_ws(c);
    if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
        c->p += 4;
        *out = NAN;
        return 1;
    }
    int64_t i;
    double d;
    int kind = number(c, &i, &d);
    if (kind == NUM_BAD) return 0;
    if (kind == NUM_INT) d = (double)i;
    if (!(fabs(d) <= FLT_MAX)) return 0;
    *out = (float)d;
    return 1;
}

/* "id", "key" or "ts": a new reference, NULL (no error set) where the value is not one this path takes. */
static PyObject *scalar(Cursor *c)
{
    skip_ws(c);
    if (c->p >= c->end) return NULL;
    if (*c->p == '"') {
        const char *s;
        Py_ssize_t n;
        if (!plain_string(c, &s, &n)) return NULL;
        PyObject *str = PyUnicode_DecodeUTF8(s, n, NULL);
        if (str == NULL) PyErr_Clear();
        return str;
    }
    if (c->end - c->p >= 4 && memcmp(c->p, "null", 4) == 0) {
        c->p += 4;
        Py_RETURN_NONE;
    }
    int64_t i;
    double d;
    int kind = number(c, &i, &d);
    if (kind == NUM_INT) return PyLong_FromLongLong(i);
    if (kind == NUM_FLOAT && isfinite(d)) return PyFloat_FromDouble(d);
    return NULL;
}

typedef struct {
    const char *name;
    Py_ssize_t len;
} Name;

typedef struct {
    Name *names;
    int d;
    int32_t *slots;  /* open addressing: column + 1, 0 empty */
    uint32_t mask;
} Table;

static uint32_t hash(const char *s, Py_ssize_t n)
{
    uint32_t h = 2166136261u;
    for (Py_ssize_t k = 0; k < n; k++) h = (h ^ (unsigned char)s[k]) * 16777619u;
    return h;
}

static inline int same(const Name *nm, const char *s, Py_ssize_t n)
{
    if (nm->len != n) return 0;
    for (Py_ssize_t k = 0; k < n; k++)  /* names are short: a loop beats a call to memcmp */
        if (nm->name[k] != s[k]) return 0;
    return 1;
}

/* The column of the name s[0..n): the one after the last found first (events list names in card order),
 * else by hash; -1 for a name not in the card. */
static int column(const Table *t, const char *s, Py_ssize_t n, int guess)
{
    if (guess < t->d && same(&t->names[guess], s, n)) return guess;
    for (uint32_t h = hash(s, n) & t->mask;; h = (h + 1) & t->mask) {
        int32_t slot = t->slots[h];
        if (!slot) return -1;
        if (same(&t->names[slot - 1], s, n)) return slot - 1;
    }
}

/* Skip a number or null (an unknown feature's value).  0 where it is anything else. */
static int skip_number(Cursor *c)
{
    float ignored;
    return feature(c, &ignored);
}

/* Whether the bytes are ASCII (an unknown name is skipped only then: the general path checks UTF-8). */
static int ascii(const char *s, Py_ssize_t n)
{
    for (Py_ssize_t k = 0; k < n; k++)
        if ((unsigned char)s[k] >= 0x80) return 0;
    return 1;
}

/* One event into row[0..d), its id, key and ts into got[0..3) (new references).  0 where it is not plain. */
static int event(const char *s, Py_ssize_t n, const Table *t, float *row, int32_t *seen, int32_t stamp,
                 PyObject **got)
{
    Cursor c = {s, s + n};
    int have_features = 0;
    got[0] = got[1] = got[2] = NULL;
    if (!take(&c, '{')) return 0;
    if (take(&c, '}')) return 0;  /* no features */
    for (;;) {
        const char *k;
        Py_ssize_t kn;
        if (!plain_string(&c, &k, &kn) || !take(&c, ':')) return 0;
        int which = -1;
        if (kn == 8 && memcmp(k, "features", 8) == 0) {
            if (have_features) return 0;
            have_features = 1;
            skip_ws(&c);
            if (take(&c, '{')) {
                int count = 0, guess = 0;
                if (!take(&c, '}')) {
                    for (;;) {
                        const char *f;
                        Py_ssize_t fn;
                        if (!plain_string(&c, &f, &fn) || !take(&c, ':')) return 0;
                        int col = column(t, f, fn, guess);
                        if (col < 0) {
                            if (!ascii(f, fn) || !skip_number(&c)) return 0;
                        } else {
                            if (seen[col] == stamp || !feature(&c, &row[col])) return 0;
                            seen[col] = stamp;
                            count++;
                            guess = col + 1;
                        }
                        if (take(&c, ',')) continue;
                        if (take(&c, '}')) break;
                        return 0;
                    }
                }
                if (count != t->d) return 0;
            } else if (take(&c, '[')) {
                int count = 0;
                if (!take(&c, ']')) {
                    for (;;) {
                        if (count >= t->d || !feature(&c, &row[count])) return 0;
                        count++;
                        if (take(&c, ',')) continue;
                        if (take(&c, ']')) break;
                        return 0;
                    }
                }
                if (count != t->d) return 0;
            } else {
                return 0;
            }
        } else if (kn == 2 && memcmp(k, "id", 2) == 0) {
            which = 0;
        } else if (kn == 3 && memcmp(k, "key", 3) == 0) {
            which = 1;
        } else if (kn == 2 && memcmp(k, "ts", 2) == 0) {
            which = 2;
        } else {
            return 0;
        }
        if (which >= 0) {
            if (got[which] != NULL) return 0;
            got[which] = scalar(&c);
            if (got[which] == NULL) return 0;
        }
        if (take(&c, ',')) continue;
        if (take(&c, '}')) break;
        return 0;
    }
    skip_ws(&c);
    return have_features && c.p == c.end;
}

static PyObject *decode(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *values, *names;
    Py_buffer out;
    Py_ssize_t max_bytes;
    if (!PyArg_ParseTuple(args, "O!O!w*n", &PyList_Type, &values, &PyTuple_Type, &names, &out, &max_bytes))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(values), d = PyTuple_GET_SIZE(names);
    PyObject *result = NULL, *ids = NULL, *keys = NULL, *ts = NULL;
    Name *nm = NULL;
    int32_t *slots = NULL, *seen = NULL;
    if (d < 1 || d > (1 << 20) || out.len != n * d * (Py_ssize_t)sizeof(float)) {
        PyErr_SetString(PyExc_ValueError, "decode: the output buffer must hold len(values) * len(names) float32");
        goto done;
    }
    uint32_t size = 1;
    while (size < 2 * (uint32_t)d) size <<= 1;
    nm = PyMem_Malloc(sizeof(Name) * (size_t)d);
    slots = PyMem_Calloc(size, sizeof(int32_t));
    seen = PyMem_Calloc((size_t)d, sizeof(int32_t));
    if (!nm || !slots || !seen) {
        PyErr_NoMemory();
        goto done;
    }
    Table t = {nm, (int)d, slots, size - 1};
    for (Py_ssize_t j = 0; j < d; j++) {
        PyObject *name = PyTuple_GET_ITEM(names, j);
        if (!PyUnicode_Check(name)) {
            PyErr_SetString(PyExc_TypeError, "decode: feature names must be str");
            goto done;
        }
        nm[j].name = PyUnicode_AsUTF8AndSize(name, &nm[j].len);
        if (nm[j].name == NULL) goto done;
        uint32_t h = hash(nm[j].name, nm[j].len) & t.mask;
        for (;; h = (h + 1) & t.mask) {
            if (!slots[h]) {
                slots[h] = (int32_t)j + 1;
                break;
            }
            const Name *o = &nm[slots[h] - 1];
            if (o->len == nm[j].len && memcmp(o->name, nm[j].name, (size_t)o->len) == 0) {
                PyErr_SetString(PyExc_ValueError, "decode: duplicate feature name");
                goto done;
            }
        }
    }
    ids = PyList_New(n);
    keys = PyList_New(n);
    ts = PyList_New(n);
    if (!ids || !keys || !ts) goto done;
    float *X = out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *v = PyList_GET_ITEM(values, i), *got[3] = {NULL, NULL, NULL};
        if (!PyBytes_CheckExact(v) || PyBytes_GET_SIZE(v) > max_bytes
            || !event(PyBytes_AS_STRING(v), PyBytes_GET_SIZE(v), &t, X + i * d, seen, (int32_t)i + 1, got)) {
            Py_XDECREF(got[0]);
            Py_XDECREF(got[1]);
            Py_XDECREF(got[2]);
            result = Py_None;
            Py_INCREF(result);
            goto done;
        }
        for (int k = 0; k < 3; k++)
            if (got[k] == NULL) got[k] = Py_NewRef(Py_None);
        PyList_SET_ITEM(ids, i, got[0]);
        PyList_SET_ITEM(keys, i, got[1]);
        PyList_SET_ITEM(ts, i, got[2]);
    }
    result = PyTuple_Pack(3, ids, keys, ts);
done:
    Py_XDECREF(ids);
    Py_XDECREF(keys);
    Py_XDECREF(ts);
    PyMem_Free(nm);
    PyMem_Free(slots);
    PyMem_Free(seen);
    PyBuffer_Release(&out);
    return result;
}

static PyMethodDef methods[] = {
    {"decode", decode, METH_VARARGS,
     "decode(values, names, out, max_bytes) -> (ids, keys, ts) or None: plain JSON events into float32 rows."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_decoding", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__decoding(void)
{
    return PyModule_Create(&module);
}
