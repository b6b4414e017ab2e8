/* bnlib.torch._fused: the passes over memory of bnlib.torch's training-mode batch norm on a
 * CPU, fused into three loops.
 *
 * Batch norm is memory-bound, and on small inputs bound by the count of operations too:
 * in torch's eager operations the forward takes five or six passes over memory and a forward
 * and backward some forty operations (bnlib/torch/_kernels.py), where these loops take two
 * passes each way, in two calls.
 *
 * The formulas are not here: bnlib/torch/_formulas.py turns the sums computed here into
 * per-channel coefficients, and these loops apply them.
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
 * The Python side (bnlib/torch/_kernels.py) checks all of this before it passes addresses.
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
#include <thread>
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
    typedef double W __attribute__((vector_size(64)));  // V's lanes in double
    static constexpr int N = 8;
};
template <>
struct Simd<double> {
    typedef double V __attribute__((vector_size(32)));
    typedef double W __attribute__((vector_size(32)));
    static constexpr int N = 4;
};

template <typename V, typename T>
INLINE void store(T *p, V v) {
    std::memcpy(p, &v, sizeof v);
}

// s[0..N) += v's lanes, in double.
template <typename T>
INLINE void add_in_double(double *s, typename Simd<T>::V v) {
    using W = typename Simd<T>::W;
    store(s, load<W>(s) + __builtin_convertvector(v, W));
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

// The same for channels [cb, ce) left over from the vectors, one at a time.
template <typename T, typename Term>
INLINE void row_block_tail(const T *x, const T *dy, idx C, idx o0, idx o1, idx cb, idx ce,
                           const T *k, const T *h, double *s1, double *s2) {
    for (idx c = cb; c < ce; c++) {
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

// Per-channel sums of Term over every value, for channels [cb, ce): s1[c], s2[c] in double.
// Each channel's sum is computed the same way whatever the range (the lanes of a vector and
// the channels left over compute the same operations), so any split gives the same bits.
template <typename T, typename Term>
INLINE void channel_sums(const T *x, const T *dy, const Layout &l, const T *k, const T *h,
                         idx cb, idx ce, double *s1, double *s2) {
    const idx C = l.channels, inner = l.inner, width = 2 * Simd<T>::N;
    std::fill(s1 + cb, s1 + ce, 0.0);
    std::fill(s2 + cb, s2 + ce, 0.0);
    if (inner == 1) {
        const idx vectors_end = ce - (ce - cb) % width;
        for (idx o0 = 0; o0 < l.outer; o0 += ROWS) {
            const idx o1 = std::min(o0 + ROWS, l.outer);
            for (idx c0 = cb; c0 < vectors_end; c0 += width)
                row_block<T, Term>(x, dy, C, o0, o1, c0, k, h, s1, s2);
            row_block_tail<T, Term>(x, dy, C, o0, o1, vectors_end, ce, k, h, s1, s2);
        }
        return;
    }
    for (idx o = 0; o < l.outer; o++)
        for (idx c = cb; c < ce; c++) {
            const idx at = (o * C + c) * inner;
            run_block<T, Term>(x + at, Term::uses_dy ? dy + at : x + at, inner, k[c], h[c],
                               s1[c], s2[c]);
        }
}

// Rows [ob, oe) of out = (x - centre) * scale + offset [+ dy * dy_scale] (offset and dy
// may be null: no offset, no dy term).
template <typename T>
INLINE void affine_rows(const T *x, const Layout &l, const T *centre, const T *scale,
                        const T *offset, const T *dy, const T *dy_scale, idx ob, idx oe,
                        T *out) {
    const idx C = l.channels, inner = l.inner;
    std::vector<T> b(C, T(0)), t(C, T(0));
    if (offset) std::copy(offset, offset + C, b.begin());
    if (dy) std::copy(dy_scale, dy_scale + C, t.begin());
    const T *__restrict k = centre, *__restrict a = scale, *__restrict bb = b.data(),
                        *__restrict tt = t.data();
    for (idx o = ob; o < oe; o++) {
        const T *__restrict r = x + o * C * inner;
        const T *__restrict g = dy ? dy + o * C * inner : nullptr;
        T *__restrict w = out + o * C * inner;
        if (inner == 1) {
            if (g) {
                for (idx c = 0; c < C; c++) w[c] = ((r[c] - k[c]) * a[c] + bb[c]) + g[c] * tt[c];
            } else {
                for (idx c = 0; c < C; c++) w[c] = (r[c] - k[c]) * a[c] + bb[c];
            }
            continue;
        }
        for (idx c = 0; c < C; c++) {
            const T kc = k[c], ac = a[c], bc = bb[c], tc = tt[c];
            const idx at = c * inner;
            if (g) {
                for (idx i = 0; i < inner; i++)
                    w[at + i] = ((r[at + i] - kc) * ac + bc) + g[at + i] * tc;
            } else {
                for (idx i = 0; i < inner; i++) w[at + i] = (r[at + i] - kc) * ac + bc;
            }
        }
    }
}

/* The loops' entry points, compiled twice on x86-64 ELF targets (Linux): for AVX2 and for
 * the baseline (SSE2), the one the CPU supports chosen when the module loads. Both run the
 * same operations on each lane, so they give the same bits. */
#if defined(__x86_64__) && defined(__ELF__) && !defined(BNLIB_NO_CLONES) && \
    (defined(__clang__) ? __clang_major__ >= 14 : __GNUC__ >= 6)
#define VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define VECTOR_CLONES
#endif

#define ENTRY_POINTS(T)                                                                    \
    VECTOR_CLONES void moment_sums(const T *x, const Layout &l, const T *k, const T *h,    \
                                   idx cb, idx ce, double *s1, double *s2) {               \
        channel_sums<T, MomentTerm>(x, nullptr, l, k, h, cb, ce, s1, s2);                  \
    }                                                                                      \
    VECTOR_CLONES void gradient_sums(const T *x, const T *dy, const Layout &l, const T *k, \
                                     const T *h, idx cb, idx ce, double *s1, double *s2) { \
        channel_sums<T, SumTerm>(x, dy, l, k, h, cb, ce, s1, s2);                          \
    }                                                                                      \
    VECTOR_CLONES void affine_block(const T *x, const Layout &l, const T *centre,          \
                                    const T *scale, const T *offset, const T *dy,          \
                                    const T *dy_scale, idx ob, idx oe, T *out) {           \
        affine_rows(x, l, centre, scale, offset, dy, dy_scale, ob, oe, out);               \
    }
ENTRY_POINTS(float)
ENTRY_POINTS(double)

// ---- Threads: independent ranges of channels (sums) or rows (affine), each on its own
// thread; every value is computed as on one thread, so the bits do not depend on the count.

constexpr idx MIN_WORK = idx(1) << 18;  // values per thread, at least

// f(begin, end) over [0, n) in at most `threads` ranges of at least `grain` items, starts
// aligned to `align`; the first range on the calling thread. A thread that cannot be
// started leaves its range (and those after it) to the calling thread.
template <typename F>
void parallel(idx n, idx grain, idx align, int threads, F f) {
    idx parts = std::min<idx>(threads, n / std::max<idx>(grain, 1));
    if (parts <= 1) return f(0, n);
    idx chunk = (n + parts - 1) / parts;
    chunk = (chunk + align - 1) / align * align;
    std::vector<std::thread> pool;
    idx next = chunk;
    for (; next < n; next += chunk) {
        try {
            pool.emplace_back(f, next, std::min(n, next + chunk));
        } catch (...) {
            break;
        }
    }
    for (; next < n; next += chunk) f(next, std::min(n, next + chunk));
    f(0, std::min(n, chunk));
    for (auto &t : pool) t.join();
}

idx channels_per_thread(const Layout &l) { return MIN_WORK / std::max<idx>(l.count(), 1) + 1; }

template <typename T>
void moments(const T *x, const Layout &l, idx pivot_outer, int threads, T *out) {
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
    auto pass = [&](idx cb, idx ce) { moment_sums(x, l, K, h.data(), cb, ce, s1.data(), s2.data()); };
    const idx grain = channels_per_thread(l), align = 2 * Simd<T>::N;
    parallel(C, grain, align, threads, pass);
    const double m = static_cast<double>(l.count());
    bool two_pass = false;
    for (idx c = 0; c < C; c++) {
        sh[c] = s1[c] / m;
        v[c] = s2[c] / m - sh[c] * sh[c];
        two_pass = two_pass || sh[c] * sh[c] > MAX_SHIFT_RATIO * v[c];
    }
    if (two_pass) {  // centre on the mean, (x - K) - shift, and sum the squares again
        for (idx c = 0; c < C; c++) h[c] = static_cast<T>(sh[c]);
        parallel(C, grain, align, threads, pass);
        for (idx c = 0; c < C; c++) v[c] = s2[c] / m;
    }
    for (idx c = 0; c < C; c++) {
        shift[c] = static_cast<T>(sh[c]);
        mean[c] = static_cast<T>(K[c] + sh[c]);
        var[c] = static_cast<T>(v[c]);
    }
}

template <typename T>
void sums(const T *x, const T *dy, const Layout &l, const T *centre, int threads, T *out) {
    const idx C = l.channels;
    std::vector<T> zero(C, T(0));
    std::vector<double> s1(C), s2(C);
    parallel(C, channels_per_thread(l), 2 * Simd<T>::N, threads, [&](idx cb, idx ce) {
        gradient_sums(x, dy, l, centre, zero.data(), cb, ce, s1.data(), s2.data());
    });
    for (idx c = 0; c < C; c++) {
        out[c] = static_cast<T>(s1[c]);
        out[C + c] = static_cast<T>(s2[c]);
    }
}

template <typename T>
void affine(const T *x, const Layout &l, const T *centre, const T *scale, const T *offset,
            const T *dy, const T *dy_scale, int threads, T *out) {
    const idx grain = MIN_WORK / std::max<idx>(l.channels * l.inner, 1) + 1;
    parallel(l.outer, grain, 1, threads, [&](idx ob, idx oe) {
        affine_block(x, l, centre, scale, offset, dy, dy_scale, ob, oe, out);
    });
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
    if (values[1] < 1) {
        PyErr_SetString(PyExc_ValueError, "threads must be at least 1");
        return false;
    }
    return true;
}

template <typename T>
T *ptr(long long address) { return reinterpret_cast<T *>(static_cast<std::uintptr_t>(address)); }

// Every function takes (dtype, threads, ...): dtype 0 for float32, 1 for float64; threads
// at most (torch.get_num_threads()); then addresses and sizes. Layout (outer, C, inner).

template <typename T>
void call_moments(const long long *v) {  // x, outer, C, inner, pivot_outer, out (4, C)
    moments(ptr<T>(v[2]), Layout{v[3], v[4], v[5]}, v[6], static_cast<int>(v[1]), ptr<T>(v[7]));
}

template <typename T>
void call_sums(const long long *v) {  // x, dy, outer, C, inner, centre, out (2, C)
    sums(ptr<T>(v[2]), ptr<T>(v[3]), Layout{v[4], v[5], v[6]}, ptr<T>(v[7]),
         static_cast<int>(v[1]), ptr<T>(v[8]));
}

template <typename T>
void call_affine(const long long *v) {  // x, outer, C, inner, centre, scale, offset, dy,
                                        // dy_scale, out (0 for no offset / dy term)
    affine(ptr<T>(v[2]), Layout{v[3], v[4], v[5]}, ptr<T>(v[6]), ptr<T>(v[7]), ptr<T>(v[8]),
           ptr<T>(v[9]), ptr<T>(v[10]), static_cast<int>(v[1]), ptr<T>(v[11]));
}

template <void (*F32)(const long long *), void (*F64)(const long long *), int ARGS>
PyObject *binding(PyObject *, PyObject *const *args, Py_ssize_t nargs) {
    long long v[ARGS];
    if (!read_args(args, nargs, ARGS, v)) return nullptr;
    Py_BEGIN_ALLOW_THREADS
    (v[0] == 0 ? F32 : F64)(v);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

#define METHOD(name, F, ARGS, doc)                                                          \
    {name,                                                                                 \
     reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)(void)>(binding<F<float>, F<double>, ARGS>)), \
     METH_FASTCALL, doc}

PyMethodDef methods[] = {
    METHOD("moments", call_moments, 8,
           "moments(dtype, threads, x, outer, C, inner, pivot_outer, out): K, shift, mean, var"),
    METHOD("sums", call_sums, 9,
           "sums(dtype, threads, x, dy, outer, C, inner, centre, out): sum(dy), sum(dy * c)"),
    METHOD("affine", call_affine, 12,
           "affine(dtype, threads, x, outer, C, inner, centre, scale, offset, dy, dy_scale, out)"),
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fused",
                      "Fused CPU passes of bnlib.torch's batch norm (see _fused.cpp).", -1,
                      methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC PyInit__fused(void) { return PyModule_Create(&module); }
