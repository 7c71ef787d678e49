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

/* ------------------------------------------------------------------ threads (team.c)
 * A team runs fn(arg, tid, nth, bar) on nth threads (the caller is tid 0) for one call and
 * joins them; with nth = 1 (or if a thread cannot be created) fn runs once on the caller with
 * nth = 1 and bar = NULL. gb_barrier_wait(bar, &sense) waits until all nth arrive (a no-op
 * for NULL); `sense` is the caller's own int, 0 before its first wait. */
#include <pthread.h>
#include <stdatomic.h>

#define GB_MAX_THREADS 64

typedef struct gb_barrier {
    atomic_int count, sense;
    int n;
    pthread_mutex_t mu;
    pthread_cond_t cv;
} gb_barrier;

typedef void (*gb_team_fn)(void *arg, int tid, int nth, gb_barrier *bar);

int gb_team_run(int nth, gb_team_fn fn, void *arg);
void gb_barrier_wait(gb_barrier *b, int *sense);

#endif
