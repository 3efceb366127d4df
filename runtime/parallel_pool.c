/* A pool of POSIX threads lending a parallel build its cores: edgec_parallel_for is the
   callback <name>_parallel_t asks for (the harness uses it for native and qemu-user runs;
   firmware brings its RTOS's own). The calling thread takes pieces too, so a pool of N
   threads starts N - 1 workers.

   One job at a time. The caller publishes a job under the lock once no worker is still in
   the previous one (`active` is 0), then takes indices from `next` like the workers; it
   returns when `done` reaches n. A worker copies the job under the lock, so a late worker
   either joins the current job or sees the next one, never a mix. Workers spin a while on
   the published generation before sleeping on the condition variable: a node's pieces
   take tens of microseconds, about what waking a sleeping thread costs.

   Each thread (the creating one included) is pinned to its own CPU of those the process
   may use, while there are enough: left to the scheduler, a new worker often starts on the
   caller's CPU and the two take turns for many milliseconds. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "parallel_pool.h"

enum { PAUSES = 1 << 14, YIELDS = 20000 };

/* a spin-wait hint: the core slows the loop and frees resources for its sibling */
static inline void relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#else
    __asm__ __volatile__("" ::: "memory");
#endif
}

struct edgec_pool {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t *workers;
    int count;                /* worker threads (the caller not counted) */
    int stop;                 /* under lock */
    unsigned long generation; /* under lock; mirrored in published for spinning */
    atomic_ulong published;
    void (*task)(void *, int);
    void *arg;
    int n;
    atomic_int next;
    atomic_int done;
    atomic_int active;        /* workers inside a job */
};

static void pin(pthread_t thread, int k) {
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof allowed, &allowed) != 0 || k >= CPU_COUNT(&allowed)) return;
    for (int cpu = 0, seen = 0; cpu < CPU_SETSIZE; cpu++) {
        if (!CPU_ISSET(cpu, &allowed)) continue;
        if (seen++ == k) {
            CPU_ZERO(&one);
            CPU_SET(cpu, &one);
            pthread_setaffinity_np(thread, sizeof one, &one);
            return;
        }
    }
}

static void take_indices(edgec_pool *p, void (*task)(void *, int), void *arg, int n) {
    for (;;) {
        int i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= n) return;
        task(arg, i);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

static void *worker(void *self) {
    edgec_pool *p = self;
    unsigned long seen = 0;
    for (;;) {
        /* a new job usually comes within microseconds: watch for it, then give the CPU
           away in turns, then sleep */
        for (int s = 0; s < PAUSES && atomic_load_explicit(&p->published, memory_order_acquire) == seen; s++)
            relax();
        for (int s = 0; s < YIELDS && atomic_load_explicit(&p->published, memory_order_acquire) == seen; s++)
            sched_yield();
        pthread_mutex_lock(&p->lock);
        while (p->generation == seen && !p->stop) pthread_cond_wait(&p->wake, &p->lock);
        if (p->stop) {
            pthread_mutex_unlock(&p->lock);
            return NULL;
        }
        seen = p->generation;
        void (*task)(void *, int) = p->task;
        void *arg = p->arg;
        int n = p->n;
        atomic_fetch_add_explicit(&p->active, 1, memory_order_relaxed);
        pthread_mutex_unlock(&p->lock);
        take_indices(p, task, arg, n);
        atomic_fetch_sub_explicit(&p->active, 1, memory_order_release);
    }
}

edgec_pool *edgec_pool_create(int threads) {
    edgec_pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
    p->count = threads > 1 ? threads - 1 : 0;
    p->workers = calloc((size_t)(p->count ? p->count : 1), sizeof *p->workers);
    if (!p->workers) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < p->count; i++) {
        if (pthread_create(&p->workers[i], NULL, worker, p) != 0) {
            p->count = i;
            edgec_pool_destroy(p);
            return NULL;
        }
    }
    if (p->count > 0) {  /* after the workers exist: they inherit the process's whole mask */
        for (int i = 0; i < p->count; i++) pin(p->workers[i], i + 1);
        pin(pthread_self(), 0);
    }
    return p;
}

void edgec_pool_destroy(edgec_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->lock);
    p->stop = 1;
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->count; i++) pthread_join(p->workers[i], NULL);
    pthread_cond_destroy(&p->wake);
    pthread_mutex_destroy(&p->lock);
    free(p->workers);
    free(p);
}

int edgec_pool_threads(const edgec_pool *p) { return p ? p->count + 1 : 1; }

void edgec_parallel_for(void *ctx, int n, void (*task)(void *arg, int i), void *arg) {
    edgec_pool *p = ctx;
    if (!p || p->count == 0 || n <= 1) {
        for (int i = 0; i < n; i++) task(arg, i);
        return;
    }
    pthread_mutex_lock(&p->lock);
    while (atomic_load_explicit(&p->active, memory_order_acquire) != 0) { /* a worker still leaving the last job */
        pthread_mutex_unlock(&p->lock);
        sched_yield();
        pthread_mutex_lock(&p->lock);
    }
    p->task = task;
    p->arg = arg;
    p->n = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    p->generation++;
    atomic_store_explicit(&p->published, p->generation, memory_order_release);
    pthread_cond_broadcast(&p->wake);
    pthread_mutex_unlock(&p->lock);
    take_indices(p, task, arg, n);
    for (int s = 0; atomic_load_explicit(&p->done, memory_order_acquire) < n; s++) {
        if (s < PAUSES) relax();
        else sched_yield();
    }
}
