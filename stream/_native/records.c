/* Score records of a batch assembled as JSON bytes: the Kafka path's encoder (stream/records.py).
 *
 * orjson encodes each column of the batch once (ids, keys, stamps, scores...: one JSON array per column, so its
 * number and string formatting is orjson's); encode_scores() cuts those arrays into their elements and writes,
 * per scored event, the object score_records() builds, byte for byte as orjson.dumps writes that dict: the same
 * keys in the same order, optional keys left out where they do not apply.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

typedef struct {
    const char *text;
    Py_ssize_t *start, *end;  /* element i is text[start[i]:end[i]] */
} Column;

/* Cut a compact JSON array (orjson's output) into its n elements; 0 (no error set) where it does not hold n. */
static int cut(PyObject *bytes, Py_ssize_t n, Column *c)
{
    if (!PyBytes_Check(bytes)) return 0;
    const char *s = PyBytes_AS_STRING(bytes);
    Py_ssize_t len = PyBytes_GET_SIZE(bytes), i = 1, k = 0;
    c->text = s;
    if (len < 2 || s[0] != '[' || s[len - 1] != ']') return 0;
    if (len == 2) return n == 0;
    while (k < n) {
        Py_ssize_t from = i;
        int depth = 0;
        for (; i < len; i++) {
            char ch = s[i];
            if (ch == '"') {  /* a string: to its closing quote, escapes skipped */
                for (i++; i < len && s[i] != '"'; i++)
                    if (s[i] == '\\') i++;
            } else if (ch == '[' || ch == '{') {
                depth++;
            } else if (ch == ']' || ch == '}') {
                if (depth == 0) break;
                depth--;
            } else if (ch == ',' && depth == 0) {
                break;
            }
        }
        if (i >= len) return 0;
        c->start[k] = from;
        c->end[k] = i;
        k++;
        if (s[i] == ']') break;
        i++;
    }
    return k == n && i == len - 1;
}

typedef struct {
    char *buf;
    size_t len, cap;
} Out;

static int put(Out *o, const char *s, size_t n)
{
    if (o->len + n > o->cap) {
        size_t cap = o->cap ? o->cap : 512;
        while (cap < o->len + n) cap *= 2;
        char *b = PyMem_Realloc(o->buf, cap);
        if (!b) {
            PyErr_NoMemory();
            return 0;
        }
        o->buf = b;
        o->cap = cap;
    }
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 1;
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static int put_elem(Out *o, const Column *c, Py_ssize_t i)
{
    return put(o, c->text + c->start[i], (size_t)(c->end[i] - c->start[i]));
}

static int is_null(const Column *c, Py_ssize_t i)
{
    return c->end[i] - c->start[i] == 4 && memcmp(c->text + c->start[i], "null", 4) == 0;
}

static int put_int(Out *o, int64_t v)
{
    char tmp[24];
    int n = snprintf(tmp, sizeof tmp, "%lld", (long long)v);
    return put(o, tmp, (size_t)n);
}

enum { IDS, KEYS, TS, SCORE, RAW, LATENCY, IMPUTED, TOPICS, N_COLUMNS };

/* encode_scores(columns, model, scored_at, anomaly, severity, severity_names, partitions, offsets, contributions)
 *   -> list[bytes] | None
 *
 * columns: a tuple of N_COLUMNS JSON arrays (bytes) of n elements each, per scored event: its id, key (the
 * message's where it has none), ts (its arrival where it has none), score, raw score, latency, imputed names
 * (null where none) and topic.  model
 * and scored_at: JSON (bytes).  anomaly (bool), severity (int8, into severity_names: JSON strings as bytes),
 * partitions and offsets (int64): per event.  contributions: per event None or its JSON object.  None where a
 * column does not hold n elements. */
static PyObject *encode_scores(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *columns, *model, *scored_at, *sev_names, *contrib, *anom_o, *sev_o, *parts_o, *offs_o;
    if (!PyArg_ParseTuple(args, "O!O!O!OOO!OOO!", &PyTuple_Type, &columns, &PyBytes_Type, &model, &PyBytes_Type,
                          &scored_at, &anom_o, &sev_o, &PyTuple_Type, &sev_names, &parts_o, &offs_o, &PyList_Type,
                          &contrib))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(contrib), n_sev = PyTuple_GET_SIZE(sev_names);
    if (PyTuple_GET_SIZE(columns) != N_COLUMNS) {
        PyErr_SetString(PyExc_ValueError, "encode_scores: wrong number of columns");
        return NULL;
    }
    for (Py_ssize_t j = 0; j < n_sev; j++)
        if (!PyBytes_Check(PyTuple_GET_ITEM(sev_names, j))) {
            PyErr_SetString(PyExc_TypeError, "encode_scores: severity names must be bytes");
            return NULL;
        }
    Py_buffer views[4];
    PyObject *objs[4] = {anom_o, sev_o, parts_o, offs_o};
    Py_ssize_t sizes[4] = {1, 1, 8, 8};
    int got = 0;
    PyObject *out = NULL, *result = NULL;
    Py_ssize_t *spans = NULL;
    Out o = {NULL, 0, 0};
    for (; got < 4; got++) {
        if (PyObject_GetBuffer(objs[got], &views[got], PyBUF_C_CONTIGUOUS) < 0) goto done;
        if (views[got].len != sizes[got] * n) {
            PyBuffer_Release(&views[got]);
            PyErr_SetString(PyExc_ValueError, "encode_scores: an array's length differs from the records'");
            goto done;
        }
    }
    spans = PyMem_Malloc(sizeof(Py_ssize_t) * 2 * (size_t)(n ? n : 1) * N_COLUMNS);
    if (!spans) {
        PyErr_NoMemory();
        goto done;
    }
    Column col[N_COLUMNS];
    for (int c = 0; c < N_COLUMNS; c++) {
        col[c].start = spans + (size_t)2 * c * (size_t)(n ? n : 1);
        col[c].end = col[c].start + (n ? n : 1);
        if (!cut(PyTuple_GET_ITEM(columns, c), n, &col[c])) {
            result = Py_NewRef(Py_None);
            goto done;
        }
    }
    const uint8_t *anomaly = views[0].buf;
    const int8_t *severity = views[1].buf;
    const int64_t *parts = views[2].buf, *offs = views[3].buf;
    out = PyList_New(n);
    if (!out) goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (severity[i] < 0 || severity[i] >= n_sev) {
            PyErr_SetString(PyExc_ValueError, "encode_scores: a severity code out of range");
            Py_CLEAR(out);
            goto done;
        }
        PyObject *sev = PyTuple_GET_ITEM(sev_names, severity[i]), *c = PyList_GET_ITEM(contrib, i);
        o.len = 0;
        int ok = PUT_LIT(&o, "{\"id\":") && put_elem(&o, &col[IDS], i) && PUT_LIT(&o, ",\"key\":")
            && put_elem(&o, &col[KEYS], i) && PUT_LIT(&o, ",\"ts\":") && put_elem(&o, &col[TS], i)
            && PUT_LIT(&o, ",\"model\":")
            && put(&o, PyBytes_AS_STRING(model), (size_t)PyBytes_GET_SIZE(model)) && PUT_LIT(&o, ",\"score\":")
            && put_elem(&o, &col[SCORE], i) && PUT_LIT(&o, ",\"raw_score\":") && put_elem(&o, &col[RAW], i)
            && (anomaly[i] ? PUT_LIT(&o, ",\"anomaly\":true") : PUT_LIT(&o, ",\"anomaly\":false"))
            && PUT_LIT(&o, ",\"severity\":") && put(&o, PyBytes_AS_STRING(sev), (size_t)PyBytes_GET_SIZE(sev))
            && PUT_LIT(&o, ",\"scored_at\":")
            && put(&o, PyBytes_AS_STRING(scored_at), (size_t)PyBytes_GET_SIZE(scored_at))
            && PUT_LIT(&o, ",\"latency_ms\":") && put_elem(&o, &col[LATENCY], i)
            && (is_null(&col[IMPUTED], i) || (PUT_LIT(&o, ",\"imputed\":") && put_elem(&o, &col[IMPUTED], i)))
            && PUT_LIT(&o, ",\"source\":{\"topic\":") && put_elem(&o, &col[TOPICS], i)
            && PUT_LIT(&o, ",\"partition\":") && put_int(&o, parts[i]) && PUT_LIT(&o, ",\"offset\":")
            && put_int(&o, offs[i]) && PUT_LIT(&o, "}")
            && (c == Py_None || (PyBytes_Check(c) && PUT_LIT(&o, ",\"contributions\":")
                                 && put(&o, PyBytes_AS_STRING(c), (size_t)PyBytes_GET_SIZE(c))))
            && PUT_LIT(&o, "}");
        PyObject *b = ok ? PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len) : NULL;
        if (!b) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_TypeError, "encode_scores: contributions must be bytes");
            Py_CLEAR(out);
            goto done;
        }
        PyList_SET_ITEM(out, i, b);
    }
    result = out;
    out = NULL;
done:
    PyMem_Free(o.buf);
    PyMem_Free(spans);
    Py_XDECREF(out);
    for (int k = 0; k < got; k++) PyBuffer_Release(&views[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_scores", encode_scores, METH_VARARGS,
     "encode_scores(columns, model, scored_at, anomaly, severity, severity_names, partitions, offsets, "
     "contributions) -> list[bytes] or None: a batch's score records as orjson writes them (see records.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__records(void)
{
    return PyModule_Create(&module);
}
