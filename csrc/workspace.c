/* The drivers' large workspace (the forward's copies of W^T), kept by each calling thread from
 * one driver call to the next and given back by gb_workspace_release.
 *
 * Why: a run calls the forward driver once per segment (and again for each recomputed one).
 * Allocating and freeing its megabytes of W^T on every call, between the caller's own
 * allocations, left glibc's heap fragmented: a wide stats_only run (width 512, 600 layers, 25
 * segments) peaked 15-36 MB (6-15 %) above the bytes it had live, differently from run to run.
 * With the block kept for the whole run the peak is what is live. The engine releases it when a
 * run ends (cbackend.release_workspace); a thread that ends frees its block too.
 *
 * gb_thread_scratch is a second, small block per thread (the matrix products' packed panels of
 * B, 256 KiB), kept until the thread ends. */
#include <pthread.h>
#include <stdlib.h>

#include "gb_internal.h"

typedef struct gb_ws {
    void *p;    /* the kept block (64-byte aligned), or NULL */
    size_t n;   /* its bytes */
    int busy;   /* lent to a driver call on this thread */
} gb_ws;

static pthread_key_t gb_ws_key, gb_scratch_key; /* the workspace; gb_thread_scratch's block */
static pthread_once_t gb_ws_once = PTHREAD_ONCE_INIT;
static int gb_ws_ok;

static void gb_ws_destroy(void *v) {
    gb_ws *w = v;
    free(w->p);
    free(w);
}

static void gb_ws_init(void) {
    gb_ws_ok = pthread_key_create(&gb_ws_key, gb_ws_destroy) == 0 &&
               pthread_key_create(&gb_scratch_key, gb_ws_destroy) == 0;
}

/* The calling thread's block under key (created when create), or NULL */
static gb_ws *gb_ws_get(const pthread_key_t *key, int create) {
    pthread_once(&gb_ws_once, gb_ws_init);
    if (!gb_ws_ok) return NULL;
    gb_ws *w = pthread_getspecific(*key);
    if (!w && create && (w = calloc(1, sizeof *w)) != NULL && pthread_setspecific(*key, w) != 0) {
        free(w);
        w = NULL;
    }
    return w;
}

void *gb_workspace_take(size_t bytes) {
    const size_t n = (bytes + 63) / 64 * 64;
    gb_ws *w = gb_ws_get(&gb_ws_key, 1);
    if (!w || w->busy) return aligned_alloc(64, n ? n : 64); /* not kept: gb_workspace_give frees it */
    if (w->n < n) {
        free(w->p);
        w->p = aligned_alloc(64, n ? n : 64);
        w->n = w->p ? n : 0;
        if (!w->p) return NULL;
    }
    w->busy = 1;
    return w->p;
}

void gb_workspace_give(void *p) {
    gb_ws *w = gb_ws_get(&gb_ws_key, 0);
    if (w && p && p == w->p)
        w->busy = 0;
    else
        free(p);
}

void gb_workspace_release(void) {
    gb_ws *w = gb_ws_get(&gb_ws_key, 0);
    if (w && !w->busy) {
        free(w->p);
        w->p = NULL;
        w->n = 0;
    }
}

int64_t gb_workspace_bytes(void) {
    gb_ws *w = gb_ws_get(&gb_ws_key, 0);
    return w ? (int64_t)w->n : 0;
}

void *gb_thread_scratch(size_t bytes) {
    gb_ws *w = gb_ws_get(&gb_scratch_key, 1);
    if (!w) return NULL;
    if (w->n < bytes) {
        const size_t n = (bytes + 63) / 64 * 64;
        free(w->p);
        w->p = aligned_alloc(64, n);
        w->n = w->p ? n : 0;
    }
    return w->p;
}
