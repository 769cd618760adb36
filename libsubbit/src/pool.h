/* A session's worker threads: a matmul's output rows split across them (the caller runs part 0).
 * One pool per session, used only by the thread that drives the session, so no locking beyond the
 * hand-off; workers spin briefly, then sleep on a condition variable, between hand-offs. */
#ifndef SBL_POOL_H
#define SBL_POOL_H

#include <stdint.h>

#include "../include/subbit.h"

#define SBL_MAX_THREADS SUBBIT_MAX_THREADS

typedef struct sbl_pool sbl_pool;
/* part in [0, nparts): which share of the work to do (any thread may run any part) */
typedef void (*sbl_task_fn)(void *arg, int part, int nparts);

/* nthreads in 2..SBL_MAX_THREADS; returns 0 or a SUBBIT_ERR_* status (*out NULL then) */
int sbl_pool_new(int nthreads, sbl_pool **out);
void sbl_pool_free(sbl_pool *p);
int sbl_pool_threads(const sbl_pool *p);
/* fn(arg, part, n) once for every part, on the workers and the caller; returns when all are done */
void sbl_pool_run(sbl_pool *p, sbl_task_fn fn, void *arg);

/* What a layer needs to run its matmuls: the kernel path and (or NULL for one thread) a pool. */
typedef struct {
    int path;
    sbl_pool *pool;
} sbl_exec;

#endif
