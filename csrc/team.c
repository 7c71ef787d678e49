/* A team of threads for one driver call, and its barrier (declared in gb_internal.h).
 *
 * Why not OpenMP: GNU OpenMP keeps a pool of threads alive between calls, spinning for a while
 * after each parallel region (they competed with BLAS's own threads for the two cores), and a
 * process forked after the pool started hangs at its next parallel region (multiprocessing's
 * Pool.map on Linux). Here the threads live only during one call: created at its start, joined
 * at its end, so nothing survives into a fork and nothing spins while BLAS or Python runs.
 * Creating two threads costs ~20-50 us, next to calls of milliseconds.
 *
 * The barrier spins briefly (a layer's work on the other thread usually ends within
 * microseconds) and then sleeps on a condition variable: a thread whose partner was descheduled
 * on a shared machine does not burn the core the partner needs.
 */
#include <pthread.h>
#include <stdlib.h>
#include "gb_internal.h"

#if defined(__x86_64__) || defined(__i386__)
#define GB_PAUSE() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define GB_PAUSE() __asm__ __volatile__("yield")
#else
#define GB_PAUSE() ((void)0)
#endif

/* spins (~1 us per 100 on current x86) before sleeping */
#define GB_SPIN 4000

void gb_barrier_wait(gb_barrier *b, int *sense) {
    if (!b || b->n <= 1) return;
    const int s = !*sense;
    *sense = s;
    if (atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        pthread_mutex_lock(&b->mu);
        atomic_store_explicit(&b->sense, s, memory_order_release);
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
        return;
    }
    for (int i = 0; i < GB_SPIN; i++) {
        if (atomic_load_explicit(&b->sense, memory_order_acquire) == s) return;
        GB_PAUSE();
    }
    pthread_mutex_lock(&b->mu);
    while (atomic_load_explicit(&b->sense, memory_order_acquire) != s) pthread_cond_wait(&b->cv, &b->mu);
    pthread_mutex_unlock(&b->mu);
}

typedef struct {
    gb_team_fn fn;
    void *arg;
    gb_barrier *bar;
    int tid, nth;
    int *gate; /* 0: wait, 1: run, -1: return without running (a helper could not be created) */
} gb_member;

static void *gb_member_main(void *p) {
    gb_member *m = p;
    pthread_mutex_lock(&m->bar->mu);
    while (*m->gate == 0) pthread_cond_wait(&m->bar->cv, &m->bar->mu);
    const int go = *m->gate > 0;
    pthread_mutex_unlock(&m->bar->mu);
    if (go) m->fn(m->arg, m->tid, m->nth, m->bar);
    return NULL;
}

int gb_team_run(int nth, gb_team_fn fn, void *arg) {
    gb_barrier bar;
    gb_member m[GB_MAX_THREADS];
    pthread_t th[GB_MAX_THREADS];
    int gate = 0, started = 0;
    if (nth > GB_MAX_THREADS) nth = GB_MAX_THREADS;
    if (nth > 1 && !pthread_mutex_init(&bar.mu, NULL)) {
        if (!pthread_cond_init(&bar.cv, NULL)) {
            atomic_init(&bar.count, 0);
            atomic_init(&bar.sense, 0);
            bar.n = nth;
            for (int t = 1; t < nth; t++) {
                m[t] = (gb_member){fn, arg, &bar, t, nth, &gate};
                if (pthread_create(&th[t], NULL, gb_member_main, &m[t])) break;
                started++;
            }
            /* all helpers or none: results do not depend on the thread count */
            pthread_mutex_lock(&bar.mu);
            gate = started == nth - 1 ? 1 : -1;
            pthread_cond_broadcast(&bar.cv);
            pthread_mutex_unlock(&bar.mu);
            if (gate > 0) fn(arg, 0, nth, &bar);
            for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
            pthread_cond_destroy(&bar.cv);
        }
        pthread_mutex_destroy(&bar.mu);
    }
    if (gate > 0) return nth;
    fn(arg, 0, 1, NULL);
    return 1;
}
