/* A team of threads for one driver call, and its barrier (declared in gb_internal.h).
 *
 * Why not OpenMP: GNU OpenMP keeps a pool of threads alive between calls, spinning for a while
 * after each parallel region (they competed with BLAS's own threads for the two cores), and a
 * process forked after the pool started hangs at its next parallel region (multiprocessing's
 * Pool.map on Linux). Here a pool of helpers (below) sleeps between calls after spinning at
 * most GB_POOL_SPIN_NS, and a forked child empties it and builds its own.
 *
 * The barrier spins briefly (a layer's work on the other thread usually ends within
 * microseconds) and then sleeps on a condition variable: a thread whose partner was descheduled
 * on a shared machine does not burn the core the partner needs. On such a machine a team can
 * be slower than one thread (every layer waits for a partner that has no core): the barrier
 * measures how long the first arrival waited for the last; once these waits add up to more
 * than GB_SOLO_SKEW of the time since the first barrier (which also waits for the helpers to
 * start, and is not counted; two threads then gain less than ~1.3x and soon lose), it sets
 * `solo` and the drivers finish the call on one thread. Results do not
 * depend on the thread count, so they do not change. The longest single wait is left out of
 * that sum: one stall of a few ms is not a partner without a core, which makes many barriers
 * wait (measured, L = 1,000, n = 64, B = 64, warm calls of ~21 ms on this VM: waits of 2-7
 * ms now and then, enough on their own early in a call, sent 8 of 120 calls solo, at 27-38
 * ms; with the longest left out, 1 of 120).
 *
 * Where a thread needs only another's earlier work, not a meeting of all (the forward's shares
 * of W^T where csrc/stack_impl.h does not give each thread its own copy, GB_OWN_WT_MAX_N), it
 * waits for that thread's published step (gb_progress_wait): the same spin, then the same
 * sleep. The time spent there counts toward `solo` too, judged at the next barrier:
 * the forward without batch norm or rescaling meets at one every 16 layers for that
 * (csrc/stack_impl.h, GB_JUDGE_EVERY). Measured (L = 1,000, n = 64, B = 64, a NumPy product
 * before each call, whose OpenBLAS worker then spins ~0.1 s on the other CPU): float32 25.5-91.7
 * ms on two threads against 21.1-25.3 on one before, 24.6-26.1 after; float64 34.4-104 against
 * 27.2-28.2 before, 33.7-34.0 after. The rest of the gap is the first 112 layers (7 judging
 * barriers) and the backward's first 6 layers, each team starting on two threads.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <pthread.h>
#include <stdlib.h>
#include <time.h>
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
#define GB_POOL_SPIN_NS 200000 /* a helper spins this long after its team before sleeping */
#define GB_SOLO_MIN_WAITS 6 /* judge after this many barriers */
#define GB_SOLO_SKEW 0.35   /* the share of the time threads spent waiting for a late partner */

static int64_t gb_now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000 + t.tv_nsec;
}

int gb_barrier_arrive(gb_barrier *b, int *sense) {
    if (!b || b->n <= 1) return 1;
    const int s = !*sense;
    *sense = s;
    const int64_t now = gb_now_ns();
    const int rank = atomic_fetch_add_explicit(&b->count, 1, memory_order_acq_rel);
    if (rank == 0) atomic_store_explicit(&b->t_first, now, memory_order_relaxed);
    if (rank == b->n - 1) { /* the last to arrive: the others wait until the sense flips */
        atomic_store_explicit(&b->count, 0, memory_order_relaxed);
        if (b->waits++ == 0) { /* the first wait also covers the helpers' start: judged from here */
            b->t_start = now;
            b->pwait_start = atomic_load_explicit(&b->pwait, memory_order_relaxed);
        } else {
            const int64_t d = now - atomic_load_explicit(&b->t_first, memory_order_relaxed);
            b->skew += d;
            if (d > b->skew_max) b->skew_max = d;
            const int64_t pw = atomic_load_explicit(&b->pwait, memory_order_relaxed) - b->pwait_start;
            const int64_t pw_max = atomic_load_explicit(&b->pwait_max, memory_order_relaxed);
            const int64_t longest = b->skew_max > pw_max ? b->skew_max : pw_max;
            if (b->waits >= GB_SOLO_MIN_WAITS &&
                (double)(b->skew + pw - longest) > GB_SOLO_SKEW * (double)(now - b->t_start))
                b->solo = 1;
        }
        if (b->solo_after > 0 && b->waits >= b->solo_after) b->solo = 1;
        /* seq_cst store then load, against the sleepers' increment then load in the loop below:
         * either this thread sees a sleeper (and wakes it under the mutex it holds until it
         * sleeps) or the sleeper sees the new sense. No mutex when nobody sleeps. */
        atomic_store(&b->sense, s);
        if (atomic_load(&b->sleepers)) {
            pthread_mutex_lock(&b->mu);
            pthread_cond_broadcast(&b->cv);
            pthread_mutex_unlock(&b->mu);
        }
        return 1;
    }
    return 0;
}

int gb_barrier_passed(gb_barrier *b, int sense) {
    return !b || b->n <= 1 || atomic_load_explicit(&b->sense, memory_order_acquire) == sense;
}

void gb_barrier_finish(gb_barrier *b, int sense) {
    if (!b || b->n <= 1) return;
    for (int i = 0; i < GB_SPIN; i++) {
        if (atomic_load_explicit(&b->sense, memory_order_acquire) == sense) return;
        GB_PAUSE();
    }
    pthread_mutex_lock(&b->mu);
    atomic_fetch_add(&b->sleepers, 1);
    while (atomic_load(&b->sense) != sense) pthread_cond_wait(&b->cv, &b->mu);
    atomic_fetch_sub(&b->sleepers, 1);
    pthread_mutex_unlock(&b->mu);
}

void gb_barrier_wait(gb_barrier *b, int *sense) {
    if (!gb_barrier_arrive(b, sense)) gb_barrier_finish(b, *sense);
}

/* The same protocol as the barrier's sense: the setter stores then loads the sleepers, a
 * sleeper counts itself then loads the steps (all seq_cst), so a wake-up is never lost. */
void gb_progress_set(gb_barrier *b, gb_progress *p, int64_t step) {
    atomic_store(&p->step, step);
    if (b && b->n > 1 && atomic_load(&b->sleepers)) {
        pthread_mutex_lock(&b->mu);
        pthread_cond_broadcast(&b->cv);
        pthread_mutex_unlock(&b->mu);
    }
}

static int gb_progress_reached(gb_progress *p, int n, int64_t step, memory_order mo) {
    for (int t = 0; t < n; t++)
        if (atomic_load_explicit(&p[t].step, mo) < step) return 0;
    return 1;
}

/* a progress wait of w ns: into the team's total and its longest */
static void gb_add_pwait(gb_barrier *b, int64_t w) {
    atomic_fetch_add_explicit(&b->pwait, w, memory_order_relaxed);
    int64_t m = atomic_load_explicit(&b->pwait_max, memory_order_relaxed);
    while (w > m && !atomic_compare_exchange_weak_explicit(&b->pwait_max, &m, w, memory_order_relaxed,
                                                           memory_order_relaxed)) {
    }
}

/* spin, then sleep until p[t].step >= step for every t < n */
static void gb_progress_sleep(gb_barrier *b, gb_progress *p, int n, int64_t step) {
    for (int i = 0; i < GB_SPIN; i++) {
        if (gb_progress_reached(p, n, step, memory_order_acquire)) return;
        GB_PAUSE();
    }
    pthread_mutex_lock(&b->mu);
    atomic_fetch_add(&b->sleepers, 1);
    while (!gb_progress_reached(p, n, step, memory_order_seq_cst)) pthread_cond_wait(&b->cv, &b->mu);
    atomic_fetch_sub(&b->sleepers, 1);
    pthread_mutex_unlock(&b->mu);
}

void gb_progress_wait(gb_barrier *b, gb_progress *p, int n, int64_t step) {
    if (gb_progress_reached(p, n, step, memory_order_acquire)) return;
    if (!b || b->n <= 1) return; /* alone: every step it waits for is its own, already set */
    const int64_t t0 = gb_now_ns(); /* a wait: its time counts toward going solo (barrier) */
    gb_progress_sleep(b, p, n, step);
    gb_add_pwait(b, gb_now_ns() - t0);
}

void gb_progress_await(gb_barrier *b, gb_progress *p, int64_t step) {
    if (!gb_progress_reached(p, 1, step, memory_order_acquire)) gb_progress_sleep(b, p, 1, step);
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

/* ------------------------------------------------------------------ the helpers' pool
 * Helpers are kept between calls and woken for each team: creating a helper per call and
 * joining it cost 0.1-0.2 ms a call (measured: 60-80 us before the caller could start, 60-100
 * us to join), and a sleeping helper still starts 18-45 us late (its CPU wakes up), which made
 * calls below ~3e6 B N^2 L slower on two threads than on one. So a helper spins up to
 * GB_POOL_SPIN_NS after its team before it sleeps on a condition variable: the backward right
 * after the forward, or the next step of a loop, finds it awake; 0.2 ms is ~1/500 of the spin
 * OpenBLAS's workers keep after each product. Measured (forward + backward, N = 64, B = 64, two
 * threads against one): L = 2 0.78x -> 1.17x, L = 16 1.20x -> 1.35x; gb.backprop with default
 * threads, L = 32 1.00x -> 1.14x, L = 100 1.28x -> 1.41x. cbackend.busy_threads leaves the
 * helpers (named GB_HELPER_NAME) out. A forked
 * child has none of its parent's threads: the pool is emptied in the child (pthread_atfork) and
 * filled again at its first team. One call at a time holds the pool; a call made meanwhile from
 * another thread creates its own helpers and joins them (gb_team_fresh). */
typedef struct {
    pthread_mutex_t mu; /* guards every field but `held` */
    pthread_cond_t go;  /* helpers wait for a new generation */
    pthread_cond_t end; /* the caller waits for running == 0 */
    int helpers;        /* alive (tids 1..helpers) */
    _Atomic int64_t gen; /* the current team's number (read without the mutex while spinning) */
    gb_team_fn fn;
    void *arg;
    gb_barrier *bar;
    int nth;
    atomic_int running; /* helpers of the current team still in fn (the caller spins on it) */
    atomic_int held;    /* a call holds the pool */
} gb_pool;

static gb_pool gb_the_pool = {.mu = PTHREAD_MUTEX_INITIALIZER, .go = PTHREAD_COND_INITIALIZER, .end = PTHREAD_COND_INITIALIZER};
static pthread_once_t gb_pool_once = PTHREAD_ONCE_INIT;

static void gb_pool_prepare(void) { pthread_mutex_lock(&gb_the_pool.mu); }
static void gb_pool_parent(void) { pthread_mutex_unlock(&gb_the_pool.mu); }
static void gb_pool_child(void) { /* the only thread: no helper, no call in progress */
    pthread_mutex_init(&gb_the_pool.mu, NULL);
    pthread_cond_init(&gb_the_pool.go, NULL);
    pthread_cond_init(&gb_the_pool.end, NULL);
    gb_the_pool.helpers = 0;
    atomic_store(&gb_the_pool.running, 0);
    atomic_store(&gb_the_pool.held, 0);
}
static void gb_pool_init(void) { pthread_atfork(gb_pool_prepare, gb_pool_parent, gb_pool_child); }

typedef struct {
    int tid;
    int64_t seen; /* the generation before the helper's first team */
} gb_helper;

static void *gb_helper_main(void *p) {
    gb_helper h = *(gb_helper *)p;
    free(p);
    gb_pool *q = &gb_the_pool;
#ifdef __linux__
    pthread_setname_np(pthread_self(), GB_HELPER_NAME); /* cbackend.busy_threads skips it */
#endif
    int worked = 0;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        if (worked && atomic_load(&q->gen) == h.seen) { /* a next team soon (the backward after
            * the forward, the next step of a loop) finds the helper awake: spin a while first */
            pthread_mutex_unlock(&q->mu);
            const int64_t until = gb_now_ns() + GB_POOL_SPIN_NS;
            for (int i = 0; atomic_load_explicit(&q->gen, memory_order_relaxed) == h.seen; i++) {
                GB_PAUSE();
                if ((i & 63) == 0 && gb_now_ns() > until) break;
            }
            pthread_mutex_lock(&q->mu);
        }
        while (atomic_load(&q->gen) == h.seen) pthread_cond_wait(&q->go, &q->mu);
        h.seen = atomic_load(&q->gen);
        worked = h.tid < q->nth;
        if (!worked) continue; /* not in this team: back to sleep */
        const gb_team_fn fn = q->fn;
        void *arg = q->arg;
        gb_barrier *bar = q->bar;
        const int nth = q->nth;
        pthread_mutex_unlock(&q->mu);
        fn(arg, h.tid, nth, bar);
        pthread_mutex_lock(&q->mu);
        if (atomic_fetch_sub(&q->running, 1) == 1) pthread_cond_signal(&q->end);
    }
    return NULL;
}

/* Helpers 1..nth-1 alive (the pool's mutex held); 0 when one cannot be created (the pool
 * keeps those it has). */
static int gb_pool_grow(gb_pool *q, int nth) {
    while (q->helpers < nth - 1) {
        gb_helper *h = malloc(sizeof *h);
        if (!h) return 0;
        *h = (gb_helper){q->helpers + 1, atomic_load(&q->gen)};
        pthread_attr_t at;
        pthread_t th;
        int rc = pthread_attr_init(&at);
        if (!rc) {
            pthread_attr_setdetachstate(&at, PTHREAD_CREATE_DETACHED);
            rc = pthread_create(&th, &at, gb_helper_main, h);
            pthread_attr_destroy(&at);
        }
        if (rc) {
            free(h);
            return 0;
        }
        q->helpers++;
    }
    return 1;
}

static void gb_barrier_init(gb_barrier *bar, int nth, int64_t solo_after) {
    atomic_init(&bar->count, 0);
    atomic_init(&bar->sense, 0);
    atomic_init(&bar->t_first, 0);
    atomic_init(&bar->sleepers, 0);
    atomic_init(&bar->pwait, 0);
    atomic_init(&bar->pwait_max, 0);
    bar->pwait_start = 0;
    bar->n = nth;
    bar->solo = 0;
    bar->waits = bar->skew = bar->skew_max = 0;
    bar->t_start = gb_now_ns();
    bar->solo_after = solo_after;
}

/* A team of fresh helpers on `bar`, joined at the end (the pool is held by another call);
 * 1 when it ran, 0 when a helper could not be created (then nothing ran). */
static int gb_team_fresh(gb_barrier *bar, int nth, gb_team_fn fn, void *arg) {
    gb_member m[GB_MAX_THREADS];
    pthread_t th[GB_MAX_THREADS];
    int gate = 0, started = 0;
    for (int t = 1; t < nth; t++) {
        m[t] = (gb_member){fn, arg, bar, t, nth, &gate};
        if (pthread_create(&th[t], NULL, gb_member_main, &m[t])) break;
        started++;
    }
    /* all helpers or none: results do not depend on the thread count */
    pthread_mutex_lock(&bar->mu);
    gate = started == nth - 1 ? 1 : -1;
    pthread_cond_broadcast(&bar->cv);
    pthread_mutex_unlock(&bar->mu);
    if (gate > 0) fn(arg, 0, nth, bar);
    for (int t = 1; t <= started; t++) pthread_join(th[t], NULL);
    return gate > 0;
}

/* A team of the pool's helpers on `bar`; 1 when it ran, 0 when the pool could not grow to
 * nth - 1 helpers (then nothing ran). */
static int gb_team_pooled(gb_pool *q, gb_barrier *bar, int nth, gb_team_fn fn, void *arg) {
    pthread_mutex_lock(&q->mu);
    const int team = gb_pool_grow(q, nth); /* all helpers or none: results do not depend on it */
    if (team) {
        q->fn = fn;
        q->arg = arg;
        q->bar = bar;
        q->nth = nth;
        atomic_store(&q->running, nth - 1);
        atomic_fetch_add(&q->gen, 1);
        pthread_cond_broadcast(&q->go);
    }
    pthread_mutex_unlock(&q->mu);
    if (!team) return 0;
    fn(arg, 0, nth, bar);
    /* the helpers' last reads of bar before it goes: spin, then sleep */
    for (int i = 0; i < GB_SPIN && atomic_load(&q->running) > 0; i++) GB_PAUSE();
    pthread_mutex_lock(&q->mu);
    while (atomic_load(&q->running) > 0) pthread_cond_wait(&q->end, &q->mu);
    pthread_mutex_unlock(&q->mu);
    return 1;
}

int gb_team_run(int nth, gb_team_fn fn, void *arg, int64_t solo_after) {
    if (nth > GB_MAX_THREADS) nth = GB_MAX_THREADS;
    int team = 0;
    gb_barrier bar;
    if (nth > 1 && !pthread_mutex_init(&bar.mu, NULL)) {
        if (!pthread_cond_init(&bar.cv, NULL)) {
            gb_barrier_init(&bar, nth, solo_after);
            pthread_once(&gb_pool_once, gb_pool_init);
            gb_pool *q = &gb_the_pool;
            if (atomic_exchange(&q->held, 1)) {
                team = gb_team_fresh(&bar, nth, fn, arg);
            } else {
                team = gb_team_pooled(q, &bar, nth, fn, arg);
                atomic_store(&q->held, 0);
            }
            pthread_cond_destroy(&bar.cv);
        }
        pthread_mutex_destroy(&bar.mu);
    }
    if (team) return nth;
    fn(arg, 0, 1, NULL);
    return 1;
}
