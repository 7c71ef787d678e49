/* The exported recurrent drivers: each calls the instance compiled for the best instruction set
 * this CPU runs (recurrent_{f64,f32}{,_v3,_v4}.c), or a lower one asked for in opts->isa, by
 * gb_isa() of dispatch.c: the stack drivers' scheme, for gb_recurrent_arrays. */
#include "gb_internal.h"

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
