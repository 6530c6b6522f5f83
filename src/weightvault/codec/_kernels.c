/* weightvault.codec._kernels: the byte-plane split and join, the BF16 cast residual and a pack's
 * concatenation in compiled loops, with the GIL released (docs/ARCHITECTURE.md: codec/kernels.py).
 *
 * Each function computes exactly what its NumPy twin in weightvault/codec/kernels.py computes
 * (tests/test_kernels.py compares them byte for byte); kernels.py falls back to the twins where
 * this extension was not built. Lengths are checked here, before any byte is written: a wrong
 * length raises ValueError and leaves the output untouched.
 *
 * Element words are little-endian (the byte-plane format's and safetensors'); on a big-endian
 * machine the module refuses to load and the NumPy twins run instead.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "weightvault.codec._kernels assumes a little-endian machine"
#endif

/* One AVX2 clone beside the baseline, picked at load time by the CPU (GCC's function
 * multiversioning, an ifunc: glibc on x86-64 only). */
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define WV_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define WV_CLONES
#endif

#define MAX_K 8

/* Unaligned little-endian loads and stores: the buffers come from Python (bytes, bytearray, mmap
 * and memoryview slices) and need not be aligned to the element size; memcpy of a fixed size
 * compiles to one plain load or store. */
static inline uint16_t ld16(const uint8_t *p) { uint16_t w; memcpy(&w, p, 2); return w; }
static inline uint32_t ld32(const uint8_t *p) { uint32_t w; memcpy(&w, p, 4); return w; }
static inline uint64_t ld64(const uint8_t *p) { uint64_t w; memcpy(&w, p, 8); return w; }
static inline void st16(uint8_t *p, uint16_t w) { memcpy(p, &w, 2); }
static inline void st32(uint8_t *p, uint32_t w) { memcpy(p, &w, 4); }
static inline void st64(uint8_t *p, uint64_t w) { memcpy(p, &w, 8); }

/* ---- the loops (no Python objects, run without the GIL) ----
 *
 * ``mode`` combines each element with the same element of ``base`` (NULL when mode is 0): the
 * split takes ``src - base`` (MODE_SUB, modulo 2**(8k)) or ``src ^ base`` (MODE_XOR) before the
 * rotation; the join adds (MODE_SUB) or XORs (MODE_XOR) ``base`` after rotating back. ``rotate``
 * and ``mode`` are loop-invariant: -O3 unswitches them into one loop per combination. */

enum { MODE_NONE = 0, MODE_SUB = 1, MODE_XOR = 2 };

WV_CLONES static void split2(const uint8_t *restrict src, const uint8_t *restrict base, int mode,
                             uint8_t *restrict p0, uint8_t *restrict p1, Py_ssize_t n, int rotate) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t w = ld16(src + 2 * i);
        if (mode == MODE_SUB) w = (uint16_t)(w - ld16(base + 2 * i));
        else if (mode == MODE_XOR) w = (uint16_t)(w ^ ld16(base + 2 * i));
        if (rotate) w = (uint16_t)((w << 1) | (w >> 15));
        p0[i] = (uint8_t)w;
        p1[i] = (uint8_t)(w >> 8);
    }
}

WV_CLONES static void split4(const uint8_t *restrict src, const uint8_t *restrict base, int mode,
                             uint8_t *restrict p0, uint8_t *restrict p1, uint8_t *restrict p2,
                             uint8_t *restrict p3, Py_ssize_t n, int rotate) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t w = ld32(src + 4 * i);
        if (mode == MODE_SUB) w -= ld32(base + 4 * i);
        else if (mode == MODE_XOR) w ^= ld32(base + 4 * i);
        if (rotate) w = (w << 1) | (w >> 31);
        p0[i] = (uint8_t)w;
        p1[i] = (uint8_t)(w >> 8);
        p2[i] = (uint8_t)(w >> 16);
        p3[i] = (uint8_t)(w >> 24);
    }
}

WV_CLONES static void split8(const uint8_t *restrict src, const uint8_t *restrict base, int mode,
                             uint8_t *restrict *p, Py_ssize_t n, int rotate) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t w = ld64(src + 8 * i);
        if (mode == MODE_SUB) w -= ld64(base + 8 * i);
        else if (mode == MODE_XOR) w ^= ld64(base + 8 * i);
        if (rotate) w = (w << 1) | (w >> 63);
        for (int j = 0; j < 8; j++) p[j][i] = (uint8_t)(w >> (8 * j));
    }
}

WV_CLONES static void join2(const uint8_t *restrict p0, const uint8_t *restrict p1, const uint8_t *restrict base,
                            int mode, uint8_t *restrict dst, Py_ssize_t n, int rotate) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t w = (uint16_t)(p0[i] | (p1[i] << 8));
        if (rotate) w = (uint16_t)((w >> 1) | (w << 15));
        if (mode == MODE_SUB) w = (uint16_t)(w + ld16(base + 2 * i));
        else if (mode == MODE_XOR) w = (uint16_t)(w ^ ld16(base + 2 * i));
        st16(dst + 2 * i, w);
    }
}

WV_CLONES static void join4(const uint8_t *restrict p0, const uint8_t *restrict p1, const uint8_t *restrict p2,
                            const uint8_t *restrict p3, const uint8_t *restrict base, int mode,
                            uint8_t *restrict dst, Py_ssize_t n, int rotate) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t w = (uint32_t)p0[i] | ((uint32_t)p1[i] << 8) | ((uint32_t)p2[i] << 16) | ((uint32_t)p3[i] << 24);
        if (rotate) w = (w >> 1) | (w << 31);
        if (mode == MODE_SUB) w += ld32(base + 4 * i);
        else if (mode == MODE_XOR) w ^= ld32(base + 4 * i);
        st32(dst + 4 * i, w);
    }
}

WV_CLONES static void join8(const uint8_t *const *p, const uint8_t *restrict base, int mode, uint8_t *restrict dst,
                            Py_ssize_t n, int rotate) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint64_t w = 0;
        for (int j = 0; j < 8; j++) w |= (uint64_t)p[j][i] << (8 * j);
        if (rotate) w = (w >> 1) | (w << 63);
        if (mode == MODE_SUB) w += ld64(base + 8 * i);
        else if (mode == MODE_XOR) w ^= ld64(base + 8 * i);
        st64(dst + 8 * i, w);
    }
}

WV_CLONES static void bf16_xor_loop(const uint8_t *restrict a, const uint8_t *restrict base,
                                    uint8_t *restrict dst, Py_ssize_t n) {
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t x = ld32(base + 4 * i);
        uint32_t r = (x + 0x7FFFu + ((x >> 16) & 1u)) >> 16; /* wraps modulo 2**32, as FORMAT.md says */
        st16(dst + 2 * i, (uint16_t)(ld16(a + 2 * i) ^ (uint16_t)r));
    }
}

/* ---- argument handling ---- */

/* The optional (base, mode) arguments: mode 0 needs no base; modes 1 and 2 need a buffer of at
 * least ``need`` bytes. On success *has_base says whether ``base`` must be released. */
static int get_base(PyObject *obj, int mode, Py_ssize_t need, Py_buffer *base, int *has_base) {
    *has_base = 0;
    if (mode < MODE_NONE || mode > MODE_XOR) {
        PyErr_Format(PyExc_ValueError, "mode %d is not 0 (none), 1 (difference) or 2 (XOR)", mode);
        return -1;
    }
    if (mode == MODE_NONE) return 0;
    if (obj == NULL || obj == Py_None) {
        PyErr_SetString(PyExc_ValueError, "a difference or XOR needs a base");
        return -1;
    }
    if (PyObject_GetBuffer(obj, base, PyBUF_SIMPLE) < 0) return -1;
    *has_base = 1;
    if (base->len < need) {
        PyErr_Format(PyExc_ValueError, "base has %zd bytes, expected at least %zd", base->len, need);
        return -1;
    }
    return 0;
}

static PyObject *split(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer src, dst, base;
    int k, rotate, mode = MODE_NONE, has_base = 0;
    PyObject *base_obj = NULL;
    if (!PyArg_ParseTuple(args, "y*iiw*|Oi", &src, &k, &rotate, &dst, &base_obj, &mode)) return NULL;
    PyObject *ret = NULL;
    if (k != 2 && k != 4 && k != 8) {
        PyErr_Format(PyExc_ValueError, "element size %d not supported", k);
        goto done;
    }
    Py_ssize_t n = src.len / k;
    if (dst.len != n * k) {
        PyErr_Format(PyExc_ValueError, "planes buffer has %zd bytes, expected %zd", dst.len, n * k);
        goto done;
    }
    if (get_base(base_obj, mode, n * k, &base, &has_base) < 0) goto done;
    uint8_t *out = (uint8_t *)dst.buf;
    const uint8_t *in = (const uint8_t *)src.buf, *b = has_base ? (const uint8_t *)base.buf : NULL;
    Py_BEGIN_ALLOW_THREADS
    if (k == 2) {
        split2(in, b, mode, out, out + n, n, rotate);
    } else if (k == 4) {
        split4(in, b, mode, out, out + n, out + 2 * n, out + 3 * n, n, rotate);
    } else {
        uint8_t *p[MAX_K];
        for (int j = 0; j < 8; j++) p[j] = out + j * n;
        split8(in, b, mode, p, n, rotate);
    }
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    if (has_base) PyBuffer_Release(&base);
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return ret;
}

static PyObject *join(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *seq, *base_obj = NULL;
    int rotate, mode = MODE_NONE, has_base = 0;
    Py_buffer dst, base;
    if (!PyArg_ParseTuple(args, "Oiw*|Oi", &seq, &rotate, &dst, &base_obj, &mode)) return NULL;
    PyObject *ret = NULL;
    Py_buffer planes[MAX_K];
    Py_ssize_t got = 0;
    PyObject *fast = PySequence_Fast(seq, "planes must be a sequence of buffers");
    if (fast == NULL) goto done;
    Py_ssize_t k = PySequence_Fast_GET_SIZE(fast);
    if (k != 2 && k != 4 && k != 8) {
        PyErr_Format(PyExc_ValueError, "%zd planes: element size not supported", k);
        goto done;
    }
    Py_ssize_t n = dst.len / k;
    if (dst.len != n * k) {
        PyErr_Format(PyExc_ValueError, "output of %zd bytes is not whole %zd-byte elements", dst.len, k);
        goto done;
    }
    for (; got < k; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &planes[got], PyBUF_SIMPLE) < 0) goto done;
        if (planes[got].len != n) {
            PyErr_Format(PyExc_ValueError, "plane %zd has %zd bytes, expected %zd", got, planes[got].len, n);
            got++;
            goto done;
        }
    }
    if (get_base(base_obj, mode, n * k, &base, &has_base) < 0) goto done;
    const uint8_t *p[MAX_K], *b = has_base ? (const uint8_t *)base.buf : NULL;
    for (Py_ssize_t j = 0; j < k; j++) p[j] = (const uint8_t *)planes[j].buf;
    uint8_t *out = (uint8_t *)dst.buf;
    Py_BEGIN_ALLOW_THREADS
    if (k == 2) join2(p[0], p[1], b, mode, out, n, rotate);
    else if (k == 4) join4(p[0], p[1], p[2], p[3], b, mode, out, n, rotate);
    else join8(p, b, mode, out, n, rotate);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    if (has_base) PyBuffer_Release(&base);
    for (Py_ssize_t j = 0; j < got; j++) PyBuffer_Release(&planes[j]);
    Py_XDECREF(fast);
    PyBuffer_Release(&dst);
    return ret;
}

static PyObject *bf16_xor(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer a, base, dst;
    if (!PyArg_ParseTuple(args, "y*y*w*", &a, &base, &dst)) return NULL;
    PyObject *ret = NULL;
    Py_ssize_t n = a.len / 2;
    if (a.len % 2 || base.len != 4 * n || dst.len != a.len) {
        PyErr_Format(PyExc_ValueError, "cast of %zd bytes needs a base of twice as many and an output of as many"
                     " (got %zd and %zd)", a.len, base.len, dst.len);
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    bf16_xor_loop((const uint8_t *)a.buf, (const uint8_t *)base.buf, (uint8_t *)dst.buf, n);
    Py_END_ALLOW_THREADS
    ret = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&a);
    PyBuffer_Release(&base);
    PyBuffer_Release(&dst);
    return ret;
}

static PyObject *concat(PyObject *Py_UNUSED(self), PyObject *seq) {
    PyObject *fast = PySequence_Fast(seq, "parts must be a sequence of buffers");
    if (fast == NULL) return NULL;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(fast), got = 0, total = 0;
    PyObject *ret = NULL;
    Py_buffer *views = PyMem_New(Py_buffer, count > 0 ? count : 1);
    if (views == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; got < count; got++) {
        if (PyObject_GetBuffer(PySequence_Fast_GET_ITEM(fast, got), &views[got], PyBUF_SIMPLE) < 0) goto done;
        if (views[got].len > PY_SSIZE_T_MAX - total) {
            got++;
            PyErr_SetString(PyExc_OverflowError, "parts too large to join");
            goto done;
        }
        total += views[got].len;
    }
    ret = PyBytes_FromStringAndSize(NULL, total);
    if (ret == NULL) goto done;
    char *out = PyBytes_AS_STRING(ret);
    /* the new object is seen by no other thread yet: filled (and its fresh pages faulted in)
     * without the GIL */
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t j = 0; j < count; j++) {
        memcpy(out, views[j].buf, (size_t)views[j].len);
        out += views[j].len;
    }
    Py_END_ALLOW_THREADS
done:
    for (Py_ssize_t j = 0; j < got; j++) PyBuffer_Release(&views[j]);
    PyMem_Free(views);
    Py_DECREF(fast);
    return ret;
}

static PyMethodDef methods[] = {
    {"split", split, METH_VARARGS,
     "split(src, k, rotate, planes, base=None, mode=0): the k byte planes of src's whole k-byte elements"
     " (less or XOR base's with mode 1 or 2), plane-major into planes."},
    {"join", join, METH_VARARGS,
     "join(planes, rotate, out, base=None, mode=0): the elements whose byte j is planes[j], rotated back"
     " (plus or XOR base's with mode 1 or 2), into out."},
    {"bf16_xor", bf16_xor, METH_VARARGS,
     "bf16_xor(a, base, out): out = a XOR the BF16 rounding (nearest, ties to even) of base's F32 elements."},
    {"concat", concat, METH_O,
     "concat(parts): b''.join(parts), the copy (and the new object's page faults) made without the GIL."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_kernels", NULL, -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&module); }
