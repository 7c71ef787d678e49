/* Declarations shared between the C sources but not bound by cffi. */
#ifndef GB_INTERNAL_H
#define GB_INTERNAL_H

#include <stdint.h>
#include "activations.h"
#include "gradbench.h"

/* Exponent differences are clamped to +-GB_EXP_CLAMP (gradbench.h) before ldexp. */
static inline int gb_clamp_exp(int64_t e) {
    return e > GB_EXP_CLAMP ? GB_EXP_CLAMP : (e < -GB_EXP_CLAMP ? -GB_EXP_CLAMP : (int)e);
}

/* The saturated-derivative rescue (reference.rescue_saturated; the stacks' layers, the vanilla
 * cell's steps): a dz below GB_RESCUE_BELOW everywhere is recomputed in log form, down to
 * GB_RESCUE_LN_MIN (beyond any int64 exponent), for the activations of gradbench.activations.RESCUE. */
#define GB_RESCUE_BELOW(f32) ((f32) ? 0x1p-100 : 0x1p-900)
#define GB_RESCUE_BELOW_EXP(f32) ((f32) ? -99 : -899) /* frexp's exponent of GB_RESCUE_BELOW */
/* reference.DZ_FAR_EXP: a stack's row of dz (no batch norm) whose max|.| has a frexp exponent
 * beyond +-this is brought to [0.5, 1) before dz W_l (its product with tiny weights underflowed) */
#define GB_DZ_FAR_EXP(f32) ((f32) ? 24 : 64)
#define GB_LN2 0.6931471805599453 /* math.log(2) */
#define GB_RESCUE_LN_MIN (-0x1p62 * GB_LN2) /* gradbench.activations.RESCUE_LN_MIN */

/* top - k ln 2 for k = floor(top / ln 2), put in [0, ln 2]: the log forms' entries are
 * sign exp((ell - top) + gb_log_rem(top, k)), the largest in [1, 2]. Beyond |top| ~ 2^52 top holds
 * whole units, k is off by some and ell - k ln 2 rounded anywhere within a few ulp(top): exp of it
 * overflowed (float32 tanh of z ~ 1e19: a derivative of 2^(-1.5e18) read inf). The digits below
 * the units are not there to keep; ell - top, exact between close values, keeps the rest. */
static inline double gb_log_rem(double top, int64_t k) {
    const double r = top - (double)k * GB_LN2_HI - (double)k * GB_LN2_LO;
    return r < 0 ? 0 : (r > GB_LN2 ? GB_LN2 : r);
}

static inline int gb_rescue_act(int act) {
    return act == GB_SIGMOID || act == GB_TANH || act == GB_ELU || act == GB_SELU || act == GB_SWISH ||
           act == GB_GELU;
}

/* ell = ln|g| + ln|phi'(x)| and the sign of g phi'(x) (NaN g: NaN sign), the rescue's entry */
static inline double gb_rescue_term(double g, double x, int act, double p, double *sgn) {
    double sp;
    const double ell = log(fabs(g)) + gb_log_dphi_f64(x, act, p, &sp);
    *sgn = (g > 0 ? 1.0 : (g < 0 ? -1.0 : (g == 0 ? 0.0 : (double)NAN))) * sp;
    return ell;
}

/* The drivers' large workspace (workspace.c): a 64-byte aligned block of at least `bytes`, kept
 * by the calling thread between calls; give it back with gb_workspace_give (NULL: no-op). */
void *gb_workspace_take(size_t bytes);
void gb_workspace_give(void *p);
/* The calling thread's scratch block of at least bytes (64-byte aligned), kept until the thread
 * ends and grown on demand; NULL when it cannot be had. For work that does not call back into
 * anything that uses it (the products' packed panels). */
void *gb_thread_scratch(size_t bytes);

/* ------------------------------------------------------------------ threads (team.c)
 * A team runs fn(arg, tid, nth, bar) on nth threads (the caller is tid 0) for one call and
 * joins them; with nth = 1 (or if a thread cannot be created) fn runs once on the caller with
 * nth = 1 and bar = NULL. gb_barrier_wait(bar, &sense) waits until all nth arrive (a no-op
 * for NULL); `sense` is the caller's own int, 0 before its first wait. After a wait,
 * bar->solo = 1 asks the team to finish on thread 0 alone (gb_team_solo). */
#include <pthread.h>
#include <stdatomic.h>

#define GB_MAX_THREADS 64

/* The drivers call BLAS for the products of width N (f32: the float32 drivers) when these
 * options give them its pointer and N reaches the width from which they use it. */
static inline int gb_blas_for(const gb_opts *opts, int64_t N, int f32) {
    if (!opts || !(f32 ? opts->sgemm != NULL : opts->dgemm != NULL)) return 0;
    return N >= (f32 ? opts->blas_min_width_f32 : opts->blas_min_width);
}

/* The name of the drivers' helper threads, kept between calls (team.c): cbackend.HELPER_NAME */
#define GB_HELPER_NAME "gradbench-team"

/* Three cache lines, so that the waiters' spinning does not slow the arrivals: the arrivals'
 * counter with what the last arrival keeps (it owns the line after its increment), the sense
 * the waiters spin on with what they read after the wait, and the sleepers' mutex. */
typedef struct gb_barrier {
    _Alignas(64) atomic_int count;
    int n;
    _Atomic int64_t t_first;   /* when the first thread arrived (ns) */
    /* written by the last arrival only: */
    int64_t t_start, skew;     /* the team's start, the sum of first-to-last arrival times (ns) */
    int64_t skew_max;          /* the longest of them */
    int64_t waits, solo_after; /* barriers so far; tests: solo from the solo_after-th on (0: never) */
    int64_t pwait_start;       /* pwait at the first barrier */
    _Atomic int64_t pwait;     /* ns every thread spent in gb_progress_wait (judged with skew) */
    _Atomic int64_t pwait_max; /* the longest of those waits */
    _Alignas(64) atomic_int sense;
    int solo;                  /* finish on one thread (written by the last arrival) */
    _Alignas(64) atomic_int sleepers; /* threads asleep on cv, or about to be: wake them */
    pthread_mutex_t mu;
    pthread_cond_t cv;
} gb_barrier;

typedef void (*gb_team_fn)(void *arg, int tid, int nth, gb_barrier *bar);

/* A thread's progress, the last step it completed, in a cache line of its own: the other
 * threads wait for a step of it without a barrier (a producer and its consumers). */
typedef struct {
    _Alignas(64) _Atomic int64_t step;
} gb_progress;

int gb_team_run(int nth, gb_team_fn fn, void *arg, int64_t solo_after);
void gb_barrier_wait(gb_barrier *b, int *sense);
/* gb_barrier_wait in two halves, for work that can fill the wait: arrive (1 when the barrier
 * is complete: this thread came last, or there is no team), whether it is complete (sense as
 * arrive left it), and the wait itself (spin, then sleep). */
int gb_barrier_arrive(gb_barrier *b, int *sense);
int gb_barrier_passed(gb_barrier *b, int sense);
void gb_barrier_finish(gb_barrier *b, int sense);
/* p->step = step (release), waking the team's threads asleep in gb_progress_wait. */
void gb_progress_set(gb_barrier *b, gb_progress *p, int64_t step);
/* Wait until p[t].step >= step for every t < n (acquire): spin briefly, then sleep on b. */
void gb_progress_wait(gb_barrier *b, gb_progress *p, int n, int64_t step);
/* The same wait for one p, not counted toward going solo: a helper idle until its next job is
 * posted (csrc/recurrent_impl.h) is not waiting for a late partner. b must not be NULL. */
void gb_progress_await(gb_barrier *b, gb_progress *p, int64_t step);

/* Where every thread's work of the previous step is complete in memory only after one more
 * barrier: if the team was asked to go solo, wait once more, then return 1 for the helpers
 * (they leave) and set *nth = 1, *bar = NULL for thread 0 (it continues alone). */
static inline int gb_team_solo(int tid, int *nth, gb_barrier **bar, int *sense) {
    if (!*bar || !(*bar)->solo) return 0;
    gb_barrier_wait(*bar, sense);
    if (tid) return 1;
    *nth = 1;
    *bar = NULL;
    return 0;
}

#endif
