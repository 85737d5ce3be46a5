/* Score records of a batch straight into JSON bytes: the Kafka path's encoder (stream/records.py).
 *
 * encode_scores(...) writes, per scored event, the object score_records() builds and orjson.dumps encodes:
 * the same keys in the same order, the same values once parsed (floats in Python's shortest repr, which reads
 * back to the same double; NaN and infinities as null, as orjson writes them).  It returns None, and the
 * caller builds the dicts instead, where an id, key or ts is anything but None, a bool, an int within 64 bits,
 * a float or a str.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    char *buf;
    size_t len, cap;
} Out;

static int grow(Out *o, size_t more)
{
    if (o->len + more <= o->cap) return 1;
    size_t cap = o->cap ? o->cap : 512;
    while (cap < o->len + more) cap *= 2;
    char *b = PyMem_Realloc(o->buf, cap);
    if (!b) {
        PyErr_NoMemory();
        return 0;
    }
    o->buf = b;
    o->cap = cap;
    return 1;
}

static int put(Out *o, const char *s, size_t n)
{
    if (!grow(o, n)) return 0;
    memcpy(o->buf + o->len, s, n);
    o->len += n;
    return 1;
}

#define PUT_LIT(o, lit) put((o), (lit), sizeof(lit) - 1)

static int put_double(Out *o, double v)
{
    if (!isfinite(v)) return PUT_LIT(o, "null");
    char *s = PyOS_double_to_string(v, 'r', 0, Py_DTSF_ADD_DOT_0, NULL);
    if (!s) return 0;
    int ok = put(o, s, strlen(s));
    PyMem_Free(s);
    return ok;
}

static int put_int(Out *o, long long v)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof tmp, "%lld", v);
    return put(o, tmp, (size_t)n);
}

/* A JSON string: '"' and '\' escaped, control characters as \uXXXX (or their short escapes), the rest as UTF-8. */
static int put_str(Out *o, PyObject *str)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(str, &n);
    if (!s) return 0;
    if (!grow(o, (size_t)n * 6 + 2)) return 0;
    char *w = o->buf + o->len;
    *w++ = '"';
    for (Py_ssize_t k = 0; k < n; k++) {
        unsigned char c = (unsigned char)s[k];
        if (c == '"' || c == '\\') {
            *w++ = '\\';
            *w++ = (char)c;
        } else if (c < 0x20) {
            static const char hex[] = "0123456789abcdef";
            *w++ = '\\';
            switch (c) {
            case '\n': *w++ = 'n'; break;
            case '\r': *w++ = 'r'; break;
            case '\t': *w++ = 't'; break;
            case '\b': *w++ = 'b'; break;
            case '\f': *w++ = 'f'; break;
            default:
                *w++ = 'u';
                *w++ = '0';
                *w++ = '0';
                *w++ = hex[c >> 4];
                *w++ = hex[c & 15];
            }
        } else {
            *w++ = (char)c;
        }
    }
    *w++ = '"';
    o->len = (size_t)(w - o->buf);
    return 1;
}

/* An id, key or ts: 1 written, 0 on an error (set), -1 for a value this encoder leaves to the dict path. */
static int put_scalar(Out *o, PyObject *v)
{
    if (v == Py_None) return PUT_LIT(o, "null");
    if (v == Py_True) return PUT_LIT(o, "true");
    if (v == Py_False) return PUT_LIT(o, "false");
    if (PyLong_CheckExact(v)) {
        int overflow = 0;
        long long x = PyLong_AsLongLongAndOverflow(v, &overflow);
        if (overflow || (x == -1 && PyErr_Occurred())) {
            PyErr_Clear();
            return -1;  /* past int64: the dict path (orjson takes up to uint64) */
        }
        return put_int(o, x);
    }
    if (PyFloat_CheckExact(v)) return put_double(o, PyFloat_AS_DOUBLE(v));
    if (PyUnicode_CheckExact(v)) return put_str(o, v);
    return -1;
}

static int buffer(PyObject *obj, Py_buffer *view, Py_ssize_t itemsize, Py_ssize_t n, const char *what)
{
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0) return 0;
    if (view->len != itemsize * n) {
        PyErr_Format(PyExc_ValueError, "encode_scores: %s holds %zd bytes, expected %zd", what, view->len,
                     itemsize * n);
        PyBuffer_Release(view);
        return 0;
    }
    return 1;
}

/* encode_scores(ids, keys, ts, rows, msg_keys, topics, partitions, offsets, model, score, raw, anomaly, severity,
 *               severity_names, scored_at, received, latency, imputed, contributions) -> list[bytes] | None
 *
 * Per scored event i (n = len(ids)): ids, keys, ts its values (None where absent); rows[i] (int64) its position
 * in the batch, for msg_keys (the Kafka keys as str or None: the record's key where the event has none), topics,
 * partitions and offsets (int64), its source; score (float64), raw (float32), anomaly (bool), severity (int8,
 * into severity_names), received (float64; the ts where the event has none), latency (float64, rounded
 * already), imputed (None or a tuple of names), contributions (None or the row's encoded object). */
static PyObject *encode_scores(PyObject *self, PyObject *args)
{
    (void)self;
    PyObject *ids, *keys, *ts, *rows_o, *msg_keys, *topics, *parts_o, *offs_o, *model, *score_o, *raw_o, *anom_o,
        *sev_o, *sev_names, *recv_o, *lat_o, *imputed, *contrib;
    double scored_at;
    if (!PyArg_ParseTuple(args, "O!O!O!OO!O!OOUOOOOO!dOOO!O!", &PyList_Type, &ids, &PyList_Type, &keys, &PyList_Type,
                          &ts, &rows_o, &PyList_Type, &msg_keys, &PyList_Type, &topics, &parts_o, &offs_o, &model,
                          &score_o, &raw_o, &anom_o, &sev_o, &PyTuple_Type, &sev_names, &scored_at, &recv_o, &lat_o,
                          &PyList_Type, &imputed, &PyList_Type, &contrib))
        return NULL;
    Py_ssize_t n = PyList_GET_SIZE(ids), m = PyList_GET_SIZE(msg_keys);
    if (PyList_GET_SIZE(keys) != n || PyList_GET_SIZE(ts) != n || PyList_GET_SIZE(imputed) != n
        || PyList_GET_SIZE(contrib) != n || PyList_GET_SIZE(topics) != m) {
        PyErr_SetString(PyExc_ValueError, "encode_scores: list lengths differ");
        return NULL;
    }
    Py_buffer rows, parts, offs, score, raw, anom, sev, recv, lat;
    int got = 0;
    PyObject *out = NULL, *result = NULL;
    Out o = {NULL, 0, 0};
    if (!buffer(rows_o, &rows, 8, n, "rows")) goto done;
    got++;
    if (!buffer(parts_o, &parts, 8, m, "partitions")) goto done;
    got++;
    if (!buffer(offs_o, &offs, 8, m, "offsets")) goto done;
    got++;
    if (!buffer(score_o, &score, 8, n, "score")) goto done;
    got++;
    if (!buffer(raw_o, &raw, 4, n, "raw")) goto done;
    got++;
    if (!buffer(anom_o, &anom, 1, n, "anomaly")) goto done;
    got++;
    if (!buffer(sev_o, &sev, 1, n, "severity")) goto done;
    got++;
    if (!buffer(recv_o, &recv, 8, n, "received")) goto done;
    got++;
    if (!buffer(lat_o, &lat, 8, n, "latency")) goto done;
    got++;
    const int64_t *rw = rows.buf, *pa = parts.buf, *of = offs.buf;
    const double *sc = score.buf, *rc = recv.buf, *la = lat.buf;
    const float *rs = raw.buf;
    const uint8_t *an = anom.buf;
    const int8_t *sv = sev.buf;
    Out head = {NULL, 0, 0};  /* ',"model":"…"' once */
    if (!PUT_LIT(&head, ",\"model\":") || !put_str(&head, model)) {
        PyMem_Free(head.buf);
        goto done;
    }
    Out at = {NULL, 0, 0};  /* ',"scored_at":…' once */
    if (!PUT_LIT(&at, ",\"scored_at\":") || !put_double(&at, scored_at)) {
        PyMem_Free(head.buf);
        PyMem_Free(at.buf);
        goto done;
    }
    out = PyList_New(n);
    int refused = 0;
    for (Py_ssize_t i = 0; out && i < n && !refused; i++) {
        int64_t pos = rw[i];
        PyObject *key = PyList_GET_ITEM(keys, i), *stamp = PyList_GET_ITEM(ts, i);
        if (pos < 0 || pos >= m || sv[i] < 0 || sv[i] >= PyTuple_GET_SIZE(sev_names)) {
            PyErr_SetString(PyExc_ValueError, "encode_scores: a row or severity out of range");
            Py_CLEAR(out);
            break;
        }
        if (key == Py_None) key = PyList_GET_ITEM(msg_keys, pos);
        o.len = 0;
        int st;
        if (!PUT_LIT(&o, "{\"id\":") || (st = put_scalar(&o, PyList_GET_ITEM(ids, i))) == 0) goto fail;
        if (st < 0) goto refuse;
        if (!PUT_LIT(&o, ",\"key\":") || (st = put_scalar(&o, key)) == 0) goto fail;
        if (st < 0) goto refuse;
        if (!PUT_LIT(&o, ",\"ts\":")) goto fail;
        if (stamp == Py_None) {
            if (!put_double(&o, rc[i])) goto fail;
        } else if ((st = put_scalar(&o, stamp)) == 0) {
            goto fail;
        } else if (st < 0) {
            goto refuse;
        }
        if (!put(&o, head.buf, head.len) || !PUT_LIT(&o, ",\"score\":") || !put_double(&o, sc[i])
            || !PUT_LIT(&o, ",\"raw_score\":") || !put_double(&o, (double)rs[i])
            || !(an[i] ? PUT_LIT(&o, ",\"anomaly\":true") : PUT_LIT(&o, ",\"anomaly\":false"))
            || !PUT_LIT(&o, ",\"severity\":") || !put_str(&o, PyTuple_GET_ITEM(sev_names, sv[i]))
            || !put(&o, at.buf, at.len) || !PUT_LIT(&o, ",\"latency_ms\":") || !put_double(&o, la[i]))
            goto fail;
        PyObject *imp = PyList_GET_ITEM(imputed, i);
        if (imp != Py_None) {
            if (!PyTuple_Check(imp)) goto refuse;
            if (!PUT_LIT(&o, ",\"imputed\":[")) goto fail;
            for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(imp); j++) {
                PyObject *name = PyTuple_GET_ITEM(imp, j);
                if (!PyUnicode_Check(name)) goto refuse;
                if ((j && !PUT_LIT(&o, ",")) || !put_str(&o, name)) goto fail;
            }
            if (!PUT_LIT(&o, "]")) goto fail;
        }
        PyObject *topic = PyList_GET_ITEM(topics, pos);
        if (!PyUnicode_Check(topic)) goto refuse;
        if (!PUT_LIT(&o, ",\"source\":{\"topic\":") || !put_str(&o, topic) || !PUT_LIT(&o, ",\"partition\":")
            || !put_int(&o, (long long)pa[pos]) || !PUT_LIT(&o, ",\"offset\":") || !put_int(&o, (long long)of[pos])
            || !PUT_LIT(&o, "}"))
            goto fail;
        PyObject *c = PyList_GET_ITEM(contrib, i);
        if (c != Py_None) {
            if (!PyBytes_Check(c)) goto refuse;
            if (!PUT_LIT(&o, ",\"contributions\":") || !put(&o, PyBytes_AS_STRING(c), (size_t)PyBytes_GET_SIZE(c)))
                goto fail;
        }
        if (!PUT_LIT(&o, "}")) goto fail;
        PyObject *b = PyBytes_FromStringAndSize(o.buf, (Py_ssize_t)o.len);
        if (!b) goto fail;
        PyList_SET_ITEM(out, i, b);
        continue;
    refuse:
        refused = 1;
        continue;
    fail:
        Py_CLEAR(out);
    }
    PyMem_Free(head.buf);
    PyMem_Free(at.buf);
    if (out && refused) {
        Py_CLEAR(out);
        result = Py_NewRef(Py_None);
    } else {
        result = out;
        out = NULL;
    }
done:
    PyMem_Free(o.buf);
    Py_XDECREF(out);
    Py_buffer *views[] = {&rows, &parts, &offs, &score, &raw, &anom, &sev, &recv, &lat};
    for (int k = 0; k < got; k++) PyBuffer_Release(views[k]);
    return result;
}

static PyMethodDef methods[] = {
    {"encode_scores", encode_scores, METH_VARARGS,
     "encode_scores(...) -> list[bytes] or None: a batch's score records as JSON (see records.c)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_records", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__records(void)
{
    return PyModule_Create(&module);
}
