/* The exported recurrent drivers: each calls the instance compiled for the best instruction set
 * this CPU runs (recurrent_{f64,f32}{,_v3,_v4}.c), or a lower one asked for in opts->isa, by
 * gb_isa() of dispatch.c: the stack drivers' scheme, for gb_recurrent_arrays. */
#include "gb_internal.h"

int gb_recurrent_threads(const gb_opts *opts, int64_t T, int64_t B, int64_t N, int64_t G, int f32) {
    if (!opts || opts->nthreads <= 1 || gb_blas_for(opts, N, f32)) return 1;
    const double step = (double)B * (double)(G * N) * (double)N; /* a step's product, B x N x GN */
    if (step < (double)opts->par_min_work || (double)T * step < (double)opts->par_min_total) return 1;
    return opts->nthreads < GB_MAX_THREADS ? (int)opts->nthreads : GB_MAX_THREADS;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define GB_RX86_VARIANTS 1
#endif

#ifdef GB_RX86_VARIANTS
#define GB_RDRIVER_X86(name)                                                                   \
    int name##_v3(const gb_recurrent_arrays *a, const gb_opts *opts);                          \
    int name##_v4(const gb_recurrent_arrays *a, const gb_opts *opts);
#define GB_RCASES_X86(name)                                                                    \
    case 4: return name##_v4(a, opts);                                                         \
    case 3: return name##_v3(a, opts);
#else
#define GB_RDRIVER_X86(name)
#define GB_RCASES_X86(name)
#endif

#define GB_RDRIVER(name)                                                                       \
    int name##_v0(const gb_recurrent_arrays *a, const gb_opts *opts);                          \
    GB_RDRIVER_X86(name)                                                                       \
    int name(const gb_recurrent_arrays *a, const gb_opts *opts) {                              \
        switch (gb_isa(opts)) {                                                                \
            GB_RCASES_X86(name)                                                                \
        default: return name##_v0(a, opts);                                                    \
        }                                                                                      \
    }

GB_RDRIVER(gb_rnn_forward_f64)
GB_RDRIVER(gb_rnn_forward_f32)
GB_RDRIVER(gb_rnn_backward_f64)
GB_RDRIVER(gb_rnn_backward_f32)
GB_RDRIVER(gb_lstm_forward_f64)
GB_RDRIVER(gb_lstm_forward_f32)
GB_RDRIVER(gb_lstm_backward_f64)
GB_RDRIVER(gb_lstm_backward_f32)
GB_RDRIVER(gb_gru_forward_f64)
GB_RDRIVER(gb_gru_forward_f32)
GB_RDRIVER(gb_gru_backward_f64)
GB_RDRIVER(gb_gru_backward_f32)
