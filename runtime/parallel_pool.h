/* A pthread pool for a parallel build's <name>_parallel_t (runtime/parallel_pool.c):

       edgec_pool *pool = edgec_pool_create(4);              // the caller + 3 workers
       model_parallel_t par = {edgec_parallel_for, edgec_pool_threads(pool), pool};
       model_run_parallel(inputs, outputs, arena, &par);
       edgec_pool_destroy(pool);

   One inference at a time per pool. */
#ifndef EDGEC_PARALLEL_POOL_H_
#define EDGEC_PARALLEL_POOL_H_

typedef struct edgec_pool edgec_pool;

edgec_pool *edgec_pool_create(int threads);
void edgec_pool_destroy(edgec_pool *pool);
int edgec_pool_threads(const edgec_pool *pool);
void edgec_parallel_for(void *ctx, int n, void (*task)(void *arg, int i), void *arg);

#endif
