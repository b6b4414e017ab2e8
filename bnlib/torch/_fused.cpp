/* bnlib.torch._fused: the passes over memory of bnlib.torch's training-mode batch norm on a
 * CPU, fused into three loops (training and eval mode).
 *
 * Batch norm is memory-bound, and on small inputs bound by the count of operations too:
 * in torch's eager operations the forward takes five or six passes over memory and a forward
 * and backward some forty operations (bnlib/torch/_kernels.py), where these loops take two
 * passes each way in training, in two calls, and one pass in eval mode.
 *
 * The coefficients are not computed here: bnlib/torch/_formulas.py turns the statistics and
 * sums computed here into per-channel coefficients (normalize_coefficients,
 * backward_coefficients), as for every route, and the affine loop applies them.
 *
 *   moments(x)            pivot K (the mean of the first values of each channel),
 *                         shift = mean(x - K), mean = K + shift and the biased variance
 *                         var = mean((x - K)^2) - shift^2, or, where shift^2 > 4 var in any
 *                         channel, the two-pass mean(((x - K) - shift)^2);
 *   sums(x, dy, centre)   sum(dy) and sum(dy * (x - centre));
 *   affine(x, ...)        out = (x - centre) * scale + offset [+ dy * dy_scale].
 *
 * Layout: x is viewed as (outer, C, inner) with strides (C * inner, inner, 1): a contiguous
 * (N, C, *) tensor as (N, C, prod(spatial)), (N, C) as (N, C, 1) and a channels-last one as
 * (N * prod(spatial), C, 1). dy and out have x's layout; per-channel vectors are contiguous.
 * The Python side (bnlib/torch/_fused_kernels.py) checks all of this before it passes
 * addresses, in the backward too (saved tensors may come back changed by hooks).
 *
 * Numerics: elements are float32 or float64 (dtype code 0 or 1), and so is the arithmetic
 * of each element. Sums are accumulated in the element type over at most 64 values per
 * accumulator (ROWS rows of a channel, or STEPS steps of a lane along a contiguous run), and
 * those partial sums in double.
 * The order of every operation is fixed by this source (compiled without fast-math and
 * without contracted multiply-adds, see setup.py), so the results do not depend on the
 * CPU's vector units.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <new>
#include <vector>

namespace {

using idx = Py_ssize_t;

constexpr double MAX_SHIFT_RATIO = 4.0;  // as MAX_SHIFT_RATIO in _kernels.py
constexpr idx ROWS = 64;   // rows per partial sum, channel-innermost layout
constexpr idx STEPS = 8;   // steps of two vectors per partial sum along a run

// Every loop is inlined into the entry points below, so that each of their clones compiles
// the whole loop for its target.
#define INLINE inline __attribute__((always_inline))

struct Layout {
    idx outer, channels, inner;
    idx count() const { return outer * inner; }  // values per channel
};

/* Fixed-width vectors (GCC and Clang's vector extensions): each lane is an independent
 * partial sum, and the compiler maps a vector onto whatever vector unit the target has
 * without changing what any lane computes. */
template <typename V, typename T>
INLINE V load(const T *p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

template <typename T>
struct Simd;
template <>
struct Simd<float> {
    typedef float V __attribute__((vector_size(32)));
    static constexpr int N = 8;
};
template <>
struct Simd<double> {
    typedef double V __attribute__((vector_size(32)));
    static constexpr int N = 4;
};

// s[0..N) += v's lanes, in double.
template <typename T>
INLINE void add_in_double(double *s, typename Simd<T>::V v) {
    for (int j = 0; j < Simd<T>::N; j++) s[j] += static_cast<double>(v[j]);
}

/* The two sums of one pass, per value of channel c (x, and dy for the backward):
 *   MomentTerm:  d = (x - k[c]) - h[c];  first += d,  second += d * d
 *   SumTerm:     first += dy,            second += dy * (x - k[c])
 * U is the element type or a vector of it (the same arithmetic per lane). */
struct MomentTerm {
    static constexpr bool uses_dy = false;
    template <typename U>
    static INLINE void add(U x, U, U k, U h, U &a, U &q) {
        U d = (x - k) - h;
        a += d;
        q += d * d;
    }
};

struct SumTerm {
    static constexpr bool uses_dy = true;
    template <typename U>
    static INLINE void add(U x, U g, U k, U, U &a, U &q) {
        a += g;
        q += g * (x - k);
    }
};

// Channel-innermost layout (inner == 1): rows [o0, o1) of channels [c0, c0 + 2N), each
// channel a lane of two vectors, summed in the element type, then added to s1, s2.
template <typename T, typename Term>
INLINE void row_block(const T *x, const T *dy, idx C, idx o0, idx o1, idx c0, const T *k,
                      const T *h, double *s1, double *s2) {
    using V = typename Simd<T>::V;
    constexpr int N = Simd<T>::N;
    const V k0 = load<V>(k + c0), k1 = load<V>(k + c0 + N);
    const V h0 = load<V>(h + c0), h1 = load<V>(h + c0 + N);
    V a0 = {}, a1 = {}, q0 = {}, q1 = {};
    for (idx o = o0; o < o1; o++) {
        const T *r = x + o * C + c0, *g = Term::uses_dy ? dy + o * C + c0 : r;
        Term::add(load<V>(r), load<V>(g), k0, h0, a0, q0);
        Term::add(load<V>(r + N), load<V>(g + N), k1, h1, a1, q1);
    }
    add_in_double<T>(s1 + c0, a0);
    add_in_double<T>(s2 + c0, q0);
    add_in_double<T>(s1 + c0 + N, a1);
    add_in_double<T>(s2 + c0 + N, q1);
}

// The same for channels [c0, C) left over from the vectors, one at a time.
template <typename T, typename Term>
INLINE void row_block_tail(const T *x, const T *dy, idx C, idx o0, idx o1, idx c0,
                           const T *k, const T *h, double *s1, double *s2) {
    for (idx c = c0; c < C; c++) {
        T a = 0, q = 0;
        for (idx o = o0; o < o1; o++)
            Term::add(x[o * C + c], Term::uses_dy ? dy[o * C + c] : x[o * C + c], k[c], h[c],
                      a, q);
        s1[c] += a;
        s2[c] += q;
    }
}

// One contiguous run of n values of one channel (inner > 1): two vectors of lanes, partial
// sums of at most STEPS steps, which are added in double; the last n mod 2N values in one
// scalar partial sum.
template <typename T, typename Term>
INLINE void run_block(const T *x, const T *dy, idx n, T k, T h, double &s1, double &s2) {
    using V = typename Simd<T>::V;
    constexpr int N = Simd<T>::N;
    const V kv = V{} + k, hv = V{} + h;
    idx i = 0;
    while (i + 2 * N <= n) {
        V a0 = {}, a1 = {}, q0 = {}, q1 = {};
        const idx stop = std::min(n, i + STEPS * 2 * N);
        for (; i + 2 * N <= stop; i += 2 * N) {
            const T *g = Term::uses_dy ? dy : x;
            Term::add(load<V>(x + i), load<V>(g + i), kv, hv, a0, q0);
            Term::add(load<V>(x + i + N), load<V>(g + i + N), kv, hv, a1, q1);
        }
        double pa = 0, pq = 0;
        for (int j = 0; j < N; j++) {
            pa += static_cast<double>(a0[j]) + static_cast<double>(a1[j]);
            pq += static_cast<double>(q0[j]) + static_cast<double>(q1[j]);
        }
        s1 += pa;
        s2 += pq;
    }
    T a = 0, q = 0;
    for (; i < n; i++) Term::add(x[i], Term::uses_dy ? dy[i] : x[i], k, h, a, q);
    s1 += a;
    s2 += q;
}

// Per-channel sums of Term over every value: s1[c], s2[c] in double. (The lanes of a vector
// and the channels left over compute the same operations.)
template <typename T, typename Term>
INLINE void channel_sums(const T *x, const T *dy, const Layout &l, const T *k, const T *h,
                         double *s1, double *s2) {
    const idx C = l.channels, inner = l.inner, width = 2 * Simd<T>::N;
    std::fill(s1, s1 + C, 0.0);
    std::fill(s2, s2 + C, 0.0);
    if (inner == 1) {
        const idx vectors_end = C - C % width;
        for (idx o0 = 0; o0 < l.outer; o0 += ROWS) {
            const idx o1 = std::min(o0 + ROWS, l.outer);
            for (idx c0 = 0; c0 < vectors_end; c0 += width)
                row_block<T, Term>(x, dy, C, o0, o1, c0, k, h, s1, s2);
            row_block_tail<T, Term>(x, dy, C, o0, o1, vectors_end, k, h, s1, s2);
        }
        return;
    }
    for (idx o = 0; o < l.outer; o++)
        for (idx c = 0; c < C; c++) {
            const idx at = (o * C + c) * inner;
            run_block<T, Term>(x + at, Term::uses_dy ? dy + at : x + at, inner, k[c], h[c],
                               s1[c], s2[c]);
        }
}

// What the affine loop adds to (x - centre) * scale: nothing, offset, or offset and
// dy * dy_scale (each an operation of its own, so that "nothing" keeps the sign of a zero).
enum class Terms { none, offset, offset_and_dy };

template <Terms M, typename T>
INLINE T affine_value(T x, T k, T a, T b, T g, T t) {
    T v = (x - k) * a;
    if (M != Terms::none) v = v + b;
    if (M == Terms::offset_and_dy) v = v + g * t;
    return v;
}

template <Terms M, typename T>
INLINE void affine_loop(const T *x, const Layout &l, const T *__restrict k,
                        const T *__restrict a, const T *__restrict b, const T *dy,
                        const T *__restrict t, T *out) {
    const idx C = l.channels, inner = l.inner;
    for (idx o = 0; o < l.outer; o++) {
        const T *__restrict r = x + o * C * inner;
        const T *__restrict g = M == Terms::offset_and_dy ? dy + o * C * inner : r;
        T *__restrict w = out + o * C * inner;
        if (inner == 1) {
            for (idx c = 0; c < C; c++) w[c] = affine_value<M>(r[c], k[c], a[c], b[c], g[c], t[c]);
            continue;
        }
        for (idx c = 0; c < C; c++) {
            const T kc = k[c], ac = a[c], bc = b[c], tc = t[c];
            const idx at = c * inner;
            for (idx i = 0; i < inner; i++)
                w[at + i] = affine_value<M>(r[at + i], kc, ac, bc, g[at + i], tc);
        }
    }
}

// out = (x - centre) * scale [+ offset] [+ dy * dy_scale] (offset and dy may be null: no
// such term; dy needs an offset).
template <typename T>
INLINE void affine_rows(const T *x, const Layout &l, const T *centre, const T *scale,
                        const T *offset, const T *dy, const T *dy_scale, T *out) {
    const std::vector<T> zero(l.channels, T(0));
    const T *b = offset ? offset : zero.data(), *t = dy ? dy_scale : zero.data();
    if (dy)
        affine_loop<Terms::offset_and_dy>(x, l, centre, scale, b, dy, t, out);
    else if (offset)
        affine_loop<Terms::offset>(x, l, centre, scale, b, dy, t, out);
    else
        affine_loop<Terms::none>(x, l, centre, scale, b, dy, t, out);
}

/* The loops' entry points, compiled twice on x86-64 Linux with glibc (whose ifunc picks one
 * when the module loads): for AVX2 and for the baseline (SSE2). Both run the same operations
 * on each lane, so they give the same bits (up to the sign and payload of a NaN). */
#if defined(__x86_64__) && defined(__ELF__) && defined(__GLIBC__) && \
    !defined(BNLIB_NO_CLONES) && \
    (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 6)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define ENTRY_POINTS(T)                                                                    \
    VECTOR_CLONES void moment_sums(const T *x, const Layout &l, const T *k, const T *h,    \
                                   double *s1, double *s2) {                               \
        channel_sums<T, MomentTerm>(x, nullptr, l, k, h, s1, s2);                          \
    }                                                                                      \
    VECTOR_CLONES void gradient_sums(const T *x, const T *dy, const Layout &l, const T *k, \
                                     const T *h, double *s1, double *s2) {                 \
        channel_sums<T, SumTerm>(x, dy, l, k, h, s1, s2);                                  \
    }                                                                                      \
    VECTOR_CLONES void affine(const T *x, const Layout &l, const T *centre, const T *scale, \
                              const T *offset, const T *dy, const T *dy_scale, T *out) {   \
        affine_rows(x, l, centre, scale, offset, dy, dy_scale, out);                       \
    }
ENTRY_POINTS(float)
ENTRY_POINTS(double)

template <typename T>
void moments(const T *x, const Layout &l, idx pivot_outer, T *out) {
    const idx C = l.channels, inner = l.inner;
    T *K = out, *shift = out + C, *mean = out + 2 * C, *var = out + 3 * C;
    // The pivot: the mean of the first pivot_outer rows, 0 where that is not finite.
    std::vector<double> p(C, 0.0);
    for (idx o = 0; o < pivot_outer; o++) {
        if (inner == 1) {  // (a loop over channels, which vectorizes)
            for (idx c = 0; c < C; c++) p[c] += x[o * C + c];
            continue;
        }
        for (idx c = 0; c < C; c++)
            for (idx i = 0; i < inner; i++) p[c] += x[(o * C + c) * inner + i];
    }
    for (idx c = 0; c < C; c++) {
        const double v = p[c] / static_cast<double>(pivot_outer * inner);
        K[c] = std::isfinite(v) ? static_cast<T>(v) : T(0);
    }
    std::vector<T> h(C, T(0));
    std::vector<double> s1(C), s2(C), sh(C), v(C);
    moment_sums(x, l, K, h.data(), s1.data(), s2.data());
    const double m = static_cast<double>(l.count());
    bool two_pass = false;
    for (idx c = 0; c < C; c++) {
        sh[c] = s1[c] / m;
        v[c] = s2[c] / m - sh[c] * sh[c];
        two_pass = two_pass || sh[c] * sh[c] > MAX_SHIFT_RATIO * v[c];
    }
    if (two_pass) {  // centre on the mean, (x - K) - shift, and sum the squares again
        for (idx c = 0; c < C; c++) h[c] = static_cast<T>(sh[c]);
        moment_sums(x, l, K, h.data(), s1.data(), s2.data());
        for (idx c = 0; c < C; c++) v[c] = s2[c] / m;
    }
    for (idx c = 0; c < C; c++) {
        shift[c] = static_cast<T>(sh[c]);
        mean[c] = static_cast<T>(K[c] + sh[c]);
        var[c] = static_cast<T>(v[c]);
    }
}

template <typename T>
void sums(const T *x, const T *dy, const Layout &l, const T *centre, T *out) {
    const idx C = l.channels;
    std::vector<T> zero(C, T(0));
    std::vector<double> s1(C), s2(C);
    gradient_sums(x, dy, l, centre, zero.data(), s1.data(), s2.data());
    for (idx c = 0; c < C; c++) {
        out[c] = static_cast<T>(s1[c]);
        out[C + c] = static_cast<T>(s2[c]);
    }
}


// ---- Python bindings: integer arguments (addresses and sizes), checked for type only. ----

bool read_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t want, long long *values) {
    if (nargs != want) {
        PyErr_Format(PyExc_TypeError, "takes %zd arguments (%zd given)", want, nargs);
        return false;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        values[i] = PyLong_AsLongLong(args[i]);
        if (values[i] == -1 && PyErr_Occurred()) return false;
    }
    if (values[0] != 0 && values[0] != 1) {
        PyErr_SetString(PyExc_ValueError, "dtype code must be 0 (float32) or 1 (float64)");
        return false;
    }
    return true;
}

template <typename T>
T *ptr(long long address) { return reinterpret_cast<T *>(static_cast<std::uintptr_t>(address)); }

// Every function takes (dtype, ...): 0 for float32, 1 for float64; then addresses and
// sizes. Layout (outer, C, inner).

template <typename T>
void call_moments(const long long *v) {  // x, outer, C, inner, pivot_outer, out (4, C)
    moments(ptr<T>(v[1]), Layout{v[2], v[3], v[4]}, v[5], ptr<T>(v[6]));
}

template <typename T>
void call_sums(const long long *v) {  // x, dy, outer, C, inner, centre, out (2, C)
    sums(ptr<T>(v[1]), ptr<T>(v[2]), Layout{v[3], v[4], v[5]}, ptr<T>(v[6]), ptr<T>(v[7]));
}

template <typename T>
void call_affine(const long long *v) {  // x, outer, C, inner, centre, scale, offset, dy,
                                        // dy_scale, out (0 for no offset / dy term)
    affine(ptr<T>(v[1]), Layout{v[2], v[3], v[4]}, ptr<T>(v[5]), ptr<T>(v[6]), ptr<T>(v[7]),
           ptr<T>(v[8]), ptr<T>(v[9]), ptr<T>(v[10]));
}

template <void (*F32)(const long long *), void (*F64)(const long long *), int ARGS>
PyObject *binding(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    long long v[ARGS];
    if (!read_args(args, nargs, ARGS, v)) return nullptr;
    bool out_of_memory = false;  // (the per-channel scratch vectors)
    Py_BEGIN_ALLOW_THREADS
    try {
        (v[0] == 0 ? F32 : F64)(v);
    } catch (const std::bad_alloc &) {
        out_of_memory = true;
    }
    Py_END_ALLOW_THREADS
    if (out_of_memory) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

#define METHOD(name, F, ARGS, doc)                                                          \
    {name,                                                                                 \
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(binding<F<float>, F<double>, ARGS>)), \
     METH_FASTCALL, doc}

PyMethodDef methods[] = {
    METHOD("moments", call_moments, 7,
           "moments(dtype, x, outer, C, inner, pivot_outer, out): K, shift, mean, var"),
    METHOD("sums", call_sums, 8,
           "sums(dtype, x, dy, outer, C, inner, centre, out): sum(dy), sum(dy * c)"),
    METHOD("affine", call_affine, 11,
           "affine(dtype, x, outer, C, inner, centre, scale, offset, dy, dy_scale, out)"),
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused",
                      "Fused CPU passes of bnlib.torch's batch norm (see _fused.cpp).", -1,
                      methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__fused(void) {
    PyObject *m = PyModule_Create(&module);
#ifdef Py_GIL_DISABLED
    if (m) PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED);  // no Python state is shared
#endif
    return m;
}
