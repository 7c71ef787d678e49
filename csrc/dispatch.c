/* The exported stack drivers: each calls the instance compiled for the best instruction set
 * this CPU runs (stack_{f64,f32}{,_v3,_v4}.c), or a lower one asked for in opts->isa (tests).
 *
 * Why: a build with -march=native dies with SIGILL on an older CPU, a baseline build leaves
 * AVX2/AVX-512 unused. So the default build compiles the kernels three times on x86-64 (the
 * build's flags; AVX2+FMA; AVX-512) and chooses here, per call, from the CPU's features
 * (__builtin_cpu_supports also checks that the OS saves the wider registers). Elsewhere (another
 * architecture, another compiler) only the build's own instance exists. Results are
 * bit-identical across thread counts for one instance; instances may differ in the last bits
 * (the matrix products use FMA where the instruction set has it). */
#include "gb_internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#define GB_X86_VARIANTS 1
#endif

/* 4: AVX-512 (x86-64-v4), 3: AVX2 + FMA (x86-64-v3), 1: the build's baseline */
static int gb_isa_best(void) {
#ifdef GB_X86_VARIANTS
    __builtin_cpu_init();
    const int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                   __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
    if (v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512cd"))
        return 4;
    if (v3) return 3;
#endif
    return 1;
}

int gb_isa(const gb_opts *opts) {
    const int best = gb_isa_best();
    const int64_t want = opts ? opts->isa : 0;
    return (want >= 1 && want < best) ? (want >= 4 ? 4 : (want >= 3 ? 3 : 1)) : best;
}

/* Threads for a call: the own kernels on nth threads, each owning a block of batch rows (and
 * of dW rows; under batch norm also a block of columns for the batch statistics). One thread
 * when BLAS runs the products (BLAS has its own threads: one level at a time), for small
 * layers (a barrier per layer) and for small calls (the team's start and end). */
int gb_stack_threads(const gb_opts *opts, int64_t L, int64_t B, int64_t N, int f32) {
    if (!opts || opts->nthreads <= 1 || B < 2 || gb_blas_for(opts, N, f32)) return 1;
    if (B * N * N < opts->par_min_work || L * B * N * N < opts->par_min_total) return 1;
    int64_t nth = opts->nthreads < GB_MAX_THREADS ? opts->nthreads : GB_MAX_THREADS;
    if (nth > (B < N ? B : N) / 4) nth = (B < N ? B : N) / 4; /* blocks of 4 rows each */
    return nth > 1 ? (int)nth : 1;
}

int gb_stack_blas(const gb_opts *opts, int64_t N, int f32) { return gb_blas_for(opts, N, f32); }

#define GB_DRIVER(name)                                                                        \
    int name##_v0(const gb_stack_arrays *a, const gb_opts *opts);                              \
    GB_DRIVER_X86(name)                                                                        \
    int name(const gb_stack_arrays *a, const gb_opts *opts) {                                  \
        switch (gb_isa(opts)) {                                                                \
            GB_CASES_X86(name)                                                                 \
        default: return name##_v0(a, opts);                                                    \
        }                                                                                      \
    }
#ifdef GB_X86_VARIANTS
#define GB_DRIVER_X86(name)                                                                    \
    int name##_v3(const gb_stack_arrays *a, const gb_opts *opts);                              \
    int name##_v4(const gb_stack_arrays *a, const gb_opts *opts);
#define GB_CASES_X86(name)                                                                     \
    case 4: return name##_v4(a, opts);                                                         \
    case 3: return name##_v3(a, opts);
#else
#define GB_DRIVER_X86(name)
#define GB_CASES_X86(name)
#endif

GB_DRIVER(gb_stack_forward_f64)
GB_DRIVER(gb_stack_forward_f32)
GB_DRIVER(gb_stack_backward_f64)
GB_DRIVER(gb_stack_backward_f32)

/* The input check (stack_impl.h, gb_check_finite): the instance for the CPU, as the drivers. */
#define GB_FINITE(T, name)                                                                     \
    int name##_v0(const T *x, int64_t n, const gb_opts *opts);                                 \
    GB_FINITE_X86(T, name)                                                                     \
    int name(const T *x, int64_t n, const gb_opts *opts) {                                     \
        switch (gb_isa(opts)) {                                                                \
            GB_FINITE_CASES_X86(name)                                                          \
        default: return name##_v0(x, n, opts);                                                 \
        }                                                                                      \
    }
#ifdef GB_X86_VARIANTS
#define GB_FINITE_X86(T, name)                                                                 \
    int name##_v3(const T *x, int64_t n, const gb_opts *opts);                                 \
    int name##_v4(const T *x, int64_t n, const gb_opts *opts);
#define GB_FINITE_CASES_X86(name)                                                              \
    case 4: return name##_v4(x, n, opts);                                                      \
    case 3: return name##_v3(x, n, opts);
#else
#define GB_FINITE_X86(T, name)
#define GB_FINITE_CASES_X86(name)
#endif

GB_FINITE(double, gb_check_finite_f64)
GB_FINITE(float, gb_check_finite_f32)
