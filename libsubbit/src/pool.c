/* Worker threads of one session (pool.h). A hand-off bumps a generation counter; workers spin on
 * it for a short while (the next matmul of the same frame comes within microseconds), then sleep
 * on a condition variable (between chunks of audio). Parts are claimed from a shared counter, by
 * the workers and by the caller alike: when the machine is oversubscribed and a worker is not
 * scheduled, the caller does its part instead of waiting a scheduler time slice for it. The
 * caller waits only for parts a worker has claimed and not yet finished. */
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "internal.h"
#include "pool.h"

/* about 10-50 us of pause instructions, depending on the CPU */
#define SPINS 20000

struct sbl_pool {
    int n, started;
    pthread_t th[SBL_MAX_THREADS];
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int sleepers;              /* under mu */
    _Atomic uint64_t gen;      /* jobs handed off */
    _Atomic int next;          /* the next part of the current job to claim */
    _Atomic int done;          /* parts of the current job finished */
    _Atomic int stop;
    sbl_task_fn fn;
    void *arg;
};

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ volatile("yield");
#endif
}

/* Claim and run parts of the current job until none is left. fn and arg are written before
 * next is reset (release), and read after a claim that saw the reset (acquire). */
static void run_parts(sbl_pool *p) {
    for (;;) {
        int k = atomic_fetch_add_explicit(&p->next, 1, memory_order_acq_rel);
        if (k >= p->n) return;
        p->fn(p->arg, k, p->n);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker(void *arg) {
    sbl_pool *p = (sbl_pool *)arg;
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen &&
               !atomic_load_explicit(&p->stop, memory_order_acquire)) {
            if (++spins < SPINS) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&p->mu);
            p->sleepers++;
            while (atomic_load_explicit(&p->gen, memory_order_acquire) == seen &&
                   !atomic_load_explicit(&p->stop, memory_order_acquire))
                pthread_cond_wait(&p->cv, &p->mu);
            p->sleepers--;
            pthread_mutex_unlock(&p->mu);
            spins = 0;
        }
        if (atomic_load_explicit(&p->stop, memory_order_acquire)) return NULL;
        seen = g;
        run_parts(p);
    }
}

static void stop_all(sbl_pool *p) {
    pthread_mutex_lock(&p->mu);
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->th[i], NULL);
}

int sbl_pool_new(int nthreads, sbl_pool **out) {
    *out = NULL;
    if (nthreads < 2 || nthreads > SBL_MAX_THREADS) return SUBBIT_ERR_ARGUMENT;
    sbl_pool *p = (sbl_pool *)calloc(1, sizeof *p);
    if (!p) return SUBBIT_ERR_NOMEM;
    p->n = nthreads;
    if (pthread_mutex_init(&p->mu, NULL)) {
        free(p);
        return SUBBIT_ERR_NOMEM;
    }
    if (pthread_cond_init(&p->cv, NULL)) {
        pthread_mutex_destroy(&p->mu);
        free(p);
        return SUBBIT_ERR_NOMEM;
    }
    for (int i = 1; i < nthreads; i++) {
        if (pthread_create(&p->th[p->started], NULL, worker, p)) {
            sbl_pool_free(p);
            return SUBBIT_ERR_NOMEM;
        }
        p->started++;
    }
    *out = p;
    return 0;
}

void sbl_pool_free(sbl_pool *p) {
    if (!p) return;
    stop_all(p);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p);
}

int sbl_pool_threads(const sbl_pool *p) { return p ? p->n : 1; }

void sbl_pool_run(sbl_pool *p, sbl_task_fn fn, void *arg) {
    if (!p) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next, 0, memory_order_release);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    if (p->sleepers) pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    run_parts(p);
    int spins = 0;
    while (atomic_load_explicit(&p->done, memory_order_acquire) < p->n)
        if (++spins < SPINS) cpu_relax();
        else sched_yield();
}
