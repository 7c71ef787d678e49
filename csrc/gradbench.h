/* gradbench C kernels: the one header that cffi binds (API mode).
 *
 * Dimension letters: L depth, B batch, N width. Arrays are C-contiguous, of one dtype
 * (suffix _f64 for double, _f32 for float), owned by the caller; no function allocates
 * per layer or keeps global state. Every function returns GB_OK or an error code that
 * Python turns into an exception.
 *
 * The contract of the two stack drivers is the table in gradbench/abi.py (FORWARD, BACKWARD):
 * gb_stack_arrays below has one field per array of that table, with the same names, and the
 * codes and layouts below have the values of the constants of the same names there
 * (tests/test_abi.py compares both).
 *
 * Only the text between the cffi markers is given to ffibuilder.cdef(), so it must stay
 * plain declarations (integer #defines only, no includes).
 */
#ifndef GRADBENCH_H
#define GRADBENCH_H

#include <stdint.h>

/* cffi-begin */
/* error codes (abi.OK, EBADACT, EBADARG, ENOMEM) */
#define GB_OK 0
#define GB_EBADACT 1
#define GB_EBADARG 2
#define GB_ENOMEM 3

/* activation codes (abi.ACT_CODE: the order of gradbench.spec.ACTIVATIONS) */
#define GB_IDENTITY 0
#define GB_SIGMOID 1
#define GB_TANH 2
#define GB_RELU 3
#define GB_LEAKY_RELU 4
#define GB_PRELU 5
#define GB_ELU 6
#define GB_SELU 7
#define GB_SWISH 8
#define GB_GELU 9

/* clip modes of the backpropagated signal (abi.CLIP_*) */
#define GB_CLIP_NONE 0
#define GB_CLIP_VALUE 1
#define GB_CLIP_NORM 2

/* layout of icfg (int64) and fcfg (double) (abi.I_*, abi.F_*) */
#define GB_I_ACT 0
#define GB_I_BN 1
#define GB_I_RESIDUAL 2
#define GB_I_CLIP 3
#define GB_I_RESCALE_FWD 4
#define GB_I_SIZE 5
#define GB_F_ACT_PARAM 0
#define GB_F_RES_SCALE 1
#define GB_F_CLIP 2
#define GB_F_BN_EPS 3
#define GB_F_SAT 4
#define GB_F_SIZE 5

/* info[GB_INFO_FORWARD], info[GB_INFO_BACKWARD]: first non-finite layer (-1: none) */
#define GB_INFO_FORWARD 0
#define GB_INFO_BACKWARD 1
#define GB_INFO_SIZE 2

/* exponent differences are clamped to +-GB_EXP_CLAMP before ldexp (abi.EXP_CLAMP) */
#define GB_EXP_CLAMP 4000

/* batch norm sums the batch in blocks of GB_BN_ROWS rows (abi.BN_ROWS, reference.batchnorm_mean);
 * the drivers' threads share rows in whole blocks */
#define GB_BN_ROWS 4

/* Fortran BLAS gemm (column major): NumPy's (below) or scipy.linalg.cython_blas's; NULL: own kernels. */
typedef void (*gb_dgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, double *alpha,
                            double *a, int *lda, double *b, int *ldb, double *beta, double *c,
                            int *ldc);
typedef void (*gb_sgemm_fn)(char *transa, char *transb, int *m, int *n, int *k, float *alpha,
                            float *a, int *lda, float *b, int *ldb, float *beta, float *c,
                            int *ldc);

/* NumPy's ILP64 gemm behind the two signatures above (csrc/blas64.c): set the targets once,
 * before any call, then pass gb_dgemm_ilp64 / gb_sgemm_ilp64 as gb_opts.dgemm / sgemm. */
void gb_set_blas_ilp64(void *dgemm, void *sgemm);
void gb_dgemm_ilp64(char *transa, char *transb, int *m, int *n, int *k, double *alpha, double *a,
                    int *lda, double *b, int *ldb, double *beta, double *c, int *ldc);
void gb_sgemm_ilp64(char *transa, char *transb, int *m, int *n, int *k, float *alpha, float *a,
                    int *lda, float *b, int *ldb, float *beta, float *c, int *ldc);

/* How a driver may run: the BLAS it may call, from which width on, and how many threads its
 * own kernels use (results do not depend on the thread count). Read only. */
typedef struct gb_opts {
    gb_dgemm_fn dgemm;
    gb_sgemm_fn sgemm;
    int64_t blas_min_width;   /* float64 layers with N >= this use BLAS for the three products */
    int64_t blas_min_width_f32; /* the same for float32 */
    int64_t nthreads;         /* threads of the own kernels (1: serial) */
    int64_t par_min_work;     /* B*N*N below which a layer runs on one thread */
    int64_t par_min_total;    /* L*B*N*N below which a call runs on one thread */
    int64_t isa;              /* 0: the best instance this CPU runs; 1, 3, 4: at most baseline,
                                 AVX2+FMA, AVX-512 (dispatch.c) */
    int64_t solo_after;       /* tests: the threads hand over to one from this barrier on (0:
                                 only when a partner is late, csrc/team.c) */
    int64_t own_wt;           /* tests: the forward's W^T, 1 a copy per thread, -1 column shares
                                 of one, 0 chosen by N and B (csrc/stack_impl.h, GB_OWN_WT_MAX_N) */
} gb_opts;

/* The forward driver's copies of W^T (own kernels only) stay with the calling thread from one
 * call to the next (csrc/workspace.c): gb_workspace_release frees the calling thread's block
 * (a run's end), gb_workspace_bytes tells its size (0: none kept). */
void gb_workspace_release(void);
int64_t gb_workspace_bytes(void);

/* The instruction-set level the drivers run at with these options (1, 3 or 4). */
int gb_isa(const gb_opts *opts);

/* The threads a stack driver starts with for L layers of width N and batch B (f32: the float32
 * drivers): 1 where BLAS runs the products, for small layers and for small calls. A team may
 * still finish on one (csrc/team.c). */
int gb_stack_threads(const gb_opts *opts, int64_t L, int64_t B, int64_t N, int f32);

/* Whether the stack drivers call BLAS (on its own threads) for the products of width N. */
int gb_stack_blas(const gb_opts *opts, int64_t N, int f32);

/* The threads a recurrent driver starts with for T steps of batch B, width N and G gate blocks
 * (f32: the float32 drivers): 1 where BLAS runs the products (from opts->blas_min_width), where a
 * step's product B N GN is below opts->par_min_work or the call's T B N GN below
 * opts->par_min_total. A team may still finish on one (csrc/team.c). */
int gb_recurrent_threads(const gb_opts *opts, int64_t T, int64_t B, int64_t N, int64_t G, int f32);

/* Every array of the stack contract (abi.FORWARD and abi.BACKWARD, shapes there), one pointer
 * each, and the dimensions. `void *` arrays are of the driver's dtype T (double for _f64, float
 * for _f32); the others are int64 or double whatever T. A driver reads only the fields of its
 * own table; the others may be NULL. */
typedef struct gb_stack_arrays {
    const int64_t *icfg;     /* (GB_I_SIZE,) */
    const double *fcfg;      /* (GB_F_SIZE,) */
    const void *W;           /* (L,N,N) */
    const void *b;           /* (L,N) */
    const void *gamma;       /* (L,N) */
    const void *beta;        /* (L,N) */
    const void *slope;       /* (L,) */
    void *H;                 /* (L+1,B,N) */
    void *Z;                 /* (L,B,N) */
    void *bn_mean;           /* (L,N) */
    void *bn_rstd;           /* (L,N) */
    int64_t *fexp;           /* (L+1,) */
    int64_t *frow;           /* (L+1,B) */
    double *act_mean;        /* (L,) */
    double *act_std;         /* (L,) */
    double *saturation;      /* (L,) */
    double *dead;            /* (L,) */
    int64_t *info;           /* (GB_INFO_SIZE,) */
    void *G;                 /* (B,N) */
    int64_t *row_e;          /* (B,) */
    void *dW;                /* (L,N,N) */
    void *db;                /* (L,N) */
    void *dgamma;            /* (L,N) */
    void *dbeta;             /* (L,N) */
    void *dslope;            /* (L,) */
    double *sig_m;           /* (L+1,) */
    int64_t *sig_e;          /* (L+1,) */
    double *gnorm_m;         /* (L,) */
    int64_t *gnorm_e;        /* (L,) */
    int64_t *dz_e;           /* (L,) */
    int64_t *dw_e;           /* (L,) */
    int64_t *clip_acted;     /* (L+1,) */
    int64_t L, B, N;
} gb_stack_arrays;

/* The whole stack in one call: the contract of gradbench/reference.py stack_forward and
 * stack_backward. */
int gb_stack_forward_f64(const gb_stack_arrays *a, const gb_opts *opts);
int gb_stack_forward_f32(const gb_stack_arrays *a, const gb_opts *opts);
int gb_stack_backward_f64(const gb_stack_arrays *a, const gb_opts *opts);
int gb_stack_backward_f32(const gb_stack_arrays *a, const gb_opts *opts);

/* The layer pairs of the drivers, exported so that tests check them layer by layer against
 * the reference (same names and argument order as gradbench/reference.py). They allocate a
 * small workspace per call: drivers do not call these, they call the static versions. */
/* z = h W^T + b.    z (B,N), h (B,N), W (N,N), b (N,) */
int gb_dense_forward_f64(double *z, const double *h, const double *W, const double *b, int64_t B, int64_t N);
int gb_dense_forward_f32(float *z, const float *h, const float *W, const float *b, int64_t B, int64_t N);
/* dW = dz^T h, db = sum_B dz, dh = dz W.    dh (B,N), dW (N,N), db (N,), dz (B,N), h (B,N), W (N,N) */
int gb_dense_backward_f64(double *dh, double *dW, double *db, const double *dz, const double *h, const double *W, int64_t B, int64_t N);
int gb_dense_backward_f32(float *dh, float *dW, float *db, const float *dz, const float *h, const float *W, int64_t B, int64_t N);
/* y = gamma (z - mean) rstd + beta.    y, xhat, z (B,N); mean, rstd, gamma, beta (N,) */
int gb_batchnorm_forward_f64(double *y, double *xhat, double *mean, double *rstd, const double *z, const double *gamma, const double *beta, double eps, int64_t B, int64_t N);
int gb_batchnorm_forward_f32(float *y, float *xhat, float *mean, float *rstd, const float *z, const float *gamma, const float *beta, double eps, int64_t B, int64_t N);
/* dz = gamma rstd (dy - mean(dy) - xhat mean(dy xhat)).    dz, dy, xhat (B,N); dgamma, dbeta, rstd, gamma (N,) */
int gb_batchnorm_backward_f64(double *dz, double *dgamma, double *dbeta, const double *dy, const double *xhat, const double *rstd, const double *gamma, int64_t B, int64_t N);
int gb_batchnorm_backward_f32(float *dz, float *dgamma, float *dbeta, const float *dy, const float *xhat, const float *rstd, const float *gamma, int64_t B, int64_t N);
/* a = phi(z), elementwise over n entries; with rescale != 0, z is the mantissa of z 2^f and a
 * the mantissa of phi(z 2^f) at exponent f (activations.py phi_scaled).    a, z (n,) */
int gb_activation_forward_f64(double *a, const double *z, int64_t n, int act, double param, int rescale, int64_t f);
int gb_activation_forward_f32(float *a, const float *z, int64_t n, int act, double param, int rescale, int64_t f);
/* dz = da * phi'(z) (left derivative at the ReLU kink; dphi_scaled of z 2^f with rescale != 0);
 * *dslope = sum(da * min(z, 0)) for PReLU, else 0.    dz, da, z (B,N) */
int gb_activation_backward_f64(double *dz, double *dslope, const double *da, const double *z, int64_t B, int64_t N, int act, double param, int rescale, int64_t f);
int gb_activation_backward_f32(float *dz, double *dslope, const float *da, const float *z, int64_t B, int64_t N, int act, double param, int rescale, int64_t f);
/* g *= 2^-e with e the exponent of max|g| (0 for all-zero or non-finite max); *e = e.    g (n,) */
int gb_normalise_f64(double *g, int64_t n, int64_t *e);
int gb_normalise_f32(float *g, int64_t n, int64_t *e);
/* a = scale a 2^ea + s 2^es at the larger exponent *e.    a, s (n,) */
int gb_add_aligned_f64(double *a, int64_t ea, const double *s, int64_t es, double scale, int64_t n, int64_t *e);
int gb_add_aligned_f32(float *a, int64_t ea, const float *s, int64_t es, double scale, int64_t n, int64_t *e);
/* clip the true g 2^e in place (value or norm), g normalised; *e_out = new exponent.    g (B,N) */
int gb_clip_signal_f64(double *g, int64_t e, int mode, double c, int64_t B, int64_t N, int64_t *e_out);
int gb_clip_signal_f32(float *g, int64_t e, int mode, double c, int64_t B, int64_t N, int64_t *e_out);
/* ---- recurrent cells: the contract of gradbench/recurrent/abi.py (RNN_FORWARD ... GRU_BACKWARD) */
/* layout of icfg (int64) and fcfg (double) of the recurrent drivers (recurrent abi RI_*, RF_*) */
#define GB_RI_ACT 0
#define GB_RI_CLIP 1
#define GB_RI_RESCALE_FWD 2
#define GB_RI_LOSS_EVERY 3
#define GB_RI_CHUNK 4
#define GB_RI_SIZE 5
#define GB_RF_ACT_PARAM 0
#define GB_RF_CLIP 1
#define GB_RF_SAT 2
#define GB_RF_SAT_GATE 3
#define GB_RF_GATE_LOW 4
#define GB_RF_SIZE 5
/* the exponents of the gradient accumulators (DE_*), and that of an empty one (EXP_EMPTY) */
#define GB_DE_W_IH 0
#define GB_DE_W_HH 1
#define GB_DE_B_IH 2
#define GB_DE_B_HH 3
#define GB_DE_SIZE 4
#define GB_EXP_EMPTY -4611686018427387904

/* Every array of the six recurrent tables, one pointer each (the first appearance fixes the
 * order), and the dimensions: T steps, B batch, N hidden, D inputs, GN = G N gate rows, S rows of
 * DH. `void *` arrays are of the driver's dtype; a driver reads only its own table's fields. */
typedef struct gb_recurrent_arrays {
    const int64_t *icfg;     /* (GB_RI_SIZE,) */
    const double *fcfg;      /* (GB_RF_SIZE,) */
    const void *X;           /* (T,B,D) */
    const void *W_ih;        /* (GN,D) */
    const void *W_hh;        /* (GN,N) */
    const void *b_ih;        /* (GN,) */
    const void *b_hh;        /* (GN,) */
    void *H;                 /* (T+1,B,N) */
    void *Z;                 /* (T,B,GN) */
    int64_t *fexp;           /* (T+1,) */
    double *act_mean;        /* (T,) */
    double *act_std;         /* (T,) */
    double *saturation;      /* (T,) */
    double *gate_mean;       /* (T,) */
    double *gate_low;        /* (T,) */
    int64_t *info;           /* (GB_INFO_SIZE,) */
    const void *DH;          /* (S,B,N) */
    void *G;                 /* (B,N) */
    int64_t *row_e;          /* (B,) */
    void *dW_ih;             /* (GN,D) */
    void *dW_hh;             /* (GN,N) */
    void *db_ih;             /* (GN,) */
    void *db_hh;             /* (GN,) */
    int64_t *dexp;           /* (GB_DE_SIZE,) */
    double *sig_m;           /* (T+1,) */
    int64_t *sig_e;          /* (T+1,) */
    double *gnorm_m;         /* (T,) */
    int64_t *gnorm_e;        /* (T,) */
    int64_t *clip_acted;     /* (T+1,) */
    void *C;                 /* (T+1,B,N) */
    void *GC;                /* (B,N) */
    double *csig_m;          /* (T+1,) */
    void *HN;                /* (T,B,N) */
    int64_t T, B, N, D, GN, S;
} gb_recurrent_arrays;

/* The cells through T steps: the contract of gradbench/recurrent/reference.py (rnn_forward, ...). */
int gb_rnn_forward_f64(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_rnn_forward_f32(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_rnn_backward_f64(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_rnn_backward_f32(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_lstm_forward_f64(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_lstm_forward_f32(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_lstm_backward_f64(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_lstm_backward_f32(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_gru_forward_f64(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_gru_forward_f32(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_gru_backward_f64(const gb_recurrent_arrays *a, const gb_opts *opts);
int gb_gru_backward_f32(const gb_recurrent_arrays *a, const gb_opts *opts);
/* The gate activations of the recurrent kernels (csrc/gates.h), for tests: kind 0 sigmoid,
 * 1 tanh; a = phi(z), da = phi'(z).    a, da, z (n,) */
int gb_gates_f64(double *a, double *da, const double *z, int64_t n, int kind);
int gb_gates_f32(float *a, float *da, const float *z, int64_t n, int kind);
/* ---- generated weights (csrc/philox.c): for layer l in [first_layer, first_layer + layers),
 * out[l - first_layer, i] = scale * x_i with x the first n of
 * numpy.random.Generator(numpy.random.Philox(key=key_hi 2^64 + key_lo, counter=[0, l, kind, 0]))
 * .standard_normal(n), bit for bit (one rounding of x * scale; _f32: float of that double).
 * GB_EBADARG for negative first_layer, layers or n, or out NULL with layers n > 0.    out (layers, n) */
int gb_philox_normals_f64(uint64_t key_lo, uint64_t key_hi, uint64_t kind, int64_t first_layer, int64_t layers, int64_t n, double scale, double *out);
int gb_philox_normals_f32(uint64_t key_lo, uint64_t key_hi, uint64_t kind, int64_t first_layer, int64_t layers, int64_t n, double scale, float *out);
/* The same for any counter and instruction set (tests): layer l in [0, layers) is the stream of
 * counter=[counter[0], counter[1] + l mod 2^64, counter[2], counter[3]], stored to out64 (double)
 * or out32 (float of the double), the other NULL; isa as gb_opts.isa (0: the best this CPU runs;
 * 1, 3, 4: at most scalar, AVX2 (here the scalar code), AVX-512; gb_isa says which level a value
 * gives). The two above
 * are counter=[0, first_layer, kind, 0] and isa 0.    counter (4,), out (layers, n) */
int gb_philox_normals_at(uint64_t key_lo, uint64_t key_hi, const uint64_t *counter, int64_t layers, int64_t n, double scale, double *out64, float *out32, int64_t isa);
/* 1 when every one of the n entries of x is finite, else 0 (the input check of
 * gradbench.inputs.check_array), on up to opts->nthreads threads for a large array; the instance
 * for the CPU as the drivers (opts->isa); -GB_EBADARG for n < 0 or x NULL with n > 0. */
int gb_check_finite_f64(const double *x, int64_t n, const gb_opts *opts);
int gb_check_finite_f32(const float *x, int64_t n, const gb_opts *opts);
/* ---- the streaming histograms of stats_only runs (csrc/histogram.c): the twin of
 * kernels/histogram.py histogram_fill, the same counts. Layer l of the m rows of dW (m, size),
 * float64 (f32 = 0) or float32 (f32 = 1), with exponent e[l]: bin j holds the entries with
 * j <= (log10|dW| + e log10 2) per_decade < j + 1; top[l] is the top bin, counts (m, bins) the bins
 * ending there (uint16 with u16 != 0, which needs size <= 65535, else uint32), below[l] the
 * non-zero finite entries under them, zeros[l] and nonfinite[l] the rest (top 0 and no counts for
 * a layer with no non-zero finite entry). isa as gb_opts.isa (0: the best this CPU runs).
 * GB_EBADARG for bad sizes or NULL arrays (or a bin index beyond +-2^62), GB_ENOMEM. Temporaries:
 * 4 (bins + 2) int64 and a few KiB of stack, whatever the size. */
int gb_histogram_fill(const void *dW, int f32, int64_t m, int64_t size, const int64_t *e, int64_t per_decade, int64_t bins, int64_t *top, void *counts, int u16, int64_t *below, int64_t *zeros, int64_t *nonfinite, int64_t isa);
/* cffi-end */

#endif
