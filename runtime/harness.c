/* Test and benchmark harness: links lib<name>.a, runs <name>_run on inputs read from a
 * file, writes the outputs, and reports the guest clock's time of each run.
 *
 * Built per target by toolchain/harness (zig cc, static musl) with
 *   -DEDGEC_HEADER='"<name>.h"' -DEDGEC_RUN=<name>_run -DEDGEC_PREFIX=<NAME>
 * usage: harness RUNS INPUT.bin OUTPUT.bin NIN BYTES... NOUT BYTES... [ARENA_BYTES]
 * The arena is followed by a guard zone; a model that writes past ARENA_SIZE is reported.
 * ARENA_BYTES (for tests) gives the model a smaller arena than it asked for.
 * The inputs are checked unchanged after the runs: the model may write only to its
 * outputs and its arena. With EDGEC_UNTIMED=1 in the environment the clock is not read
 * and nothing is printed per run, so every run executes exactly the same instructions
 * (for counting them under QEMU).
 * A build with a bounded batch (-DEDGEC_RUN_DIMS=<name>_run_dims) runs that entry point
 * with the dimensions in EDGEC_DIMS (comma-separated) when it is set; the input and output
 * sizes on the command line are then those of that batch.
 * A build with external weights (-DEDGEC_RUN_EXT=<name>_run_ext) reads them from the file
 * named by EDGEC_WEIGHTS into an aligned buffer, checks it with -DEDGEC_CHECK_WEIGHTS=<name>_check_weights
 * (exit 3 when the bytes are not the build's) and passes its address.
 * A parallel build (-DEDGEC_RUN_PARALLEL=<name>_run_parallel -DEDGEC_PARALLEL_T=<name>_parallel_t,
 * linked with parallel_pool.c) runs that entry point on a pool of EDGEC_THREADS threads
 * (the caller included; unset or 1: par is NULL, every piece on the calling thread).
 */
#include "harness_io.h"
#include EDGEC_HEADER
#ifdef EDGEC_RUN_PARALLEL
#include "parallel_pool.h"
#endif

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define STR_(a) #a
#define STR(a) STR_(a)
#define ARENA_SIZE CAT(EDGEC_PREFIX, _ARENA_SIZE)
#define ARENA_ALIGN CAT(EDGEC_PREFIX, _ARENA_ALIGN)
#define NUM_INPUTS CAT(EDGEC_PREFIX, _NUM_INPUTS)
#define NUM_OUTPUTS CAT(EDGEC_PREFIX, _NUM_OUTPUTS)
#define GUARD 256
#define GUARD_BYTE 0xA5

static unsigned char arena_storage[ARENA_SIZE + GUARD] __attribute__((aligned(ARENA_ALIGN)));

static int fail(const char *msg) {
    fprintf(stderr, "harness: %s\n", msg);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 6) return fail("usage: harness RUNS IN.bin OUT.bin NIN BYTES... NOUT BYTES... [ARENA_BYTES]");
    long runs = atol(argv[1]);
    int a = 4, nin = atoi(argv[a++]);
    if (nin != NUM_INPUTS) return fail("input count does not match the model");
    size_t in_bytes[NUM_INPUTS + 1], out_bytes[NUM_OUTPUTS + 1];
    for (int i = 0; i < nin; i++) in_bytes[i] = (size_t)atol(argv[a++]);
    int nout = atoi(argv[a++]);
    if (nout != NUM_OUTPUTS) return fail("output count does not match the model");
    for (int i = 0; i < nout; i++) out_bytes[i] = (size_t)atol(argv[a++]);
    size_t arena_bytes = a < argc ? (size_t)atol(argv[a]) : (size_t)ARENA_SIZE;
    if (arena_bytes > (size_t)ARENA_SIZE) return fail("ARENA_BYTES larger than the model's arena");

    void *in[NUM_INPUTS + 1], *saved[NUM_INPUTS + 1];
    const char *err = read_inputs(argv[2], nin, in_bytes, in, saved);
    if (err) return fail(err);
    const void *const *inputs = (const void *const *)in;
    const char *untimed_env = getenv("EDGEC_UNTIMED");
    int timed = !(untimed_env && untimed_env[0] == '1');
    void *outputs[NUM_OUTPUTS + 1];
    for (int i = 0; i < nout; i++) {
        outputs[i] = malloc(out_bytes[i] + 1);
        if (!outputs[i]) return fail("out of memory");
    }

    /* The guard zone starts right after the arena the model is given. */
    unsigned char *arena = arena_storage;
    memset(arena + arena_bytes, GUARD_BYTE, (size_t)ARENA_SIZE + GUARD - arena_bytes);
#ifdef EDGEC_RUN_EXT
    const char *weights_path = getenv("EDGEC_WEIGHTS");
    size_t weights_size = CAT(EDGEC_PREFIX, _WEIGHTS_SIZE);
    void *weights = aligned_alloc(CAT(EDGEC_PREFIX, _WEIGHTS_ALIGN), (weights_size + 63) / 64 * 64);
    FILE *wf = weights_path ? fopen(weights_path, "rb") : NULL;
    if (!weights || !wf || fread(weights, 1, weights_size, wf) != weights_size) return fail("cannot read EDGEC_WEIGHTS");
    fclose(wf);
    int check = EDGEC_CHECK_WEIGHTS(weights);
    if (check != 0) {
        fprintf(stderr, "harness: %s returned %d: EDGEC_WEIGHTS is not this build's weights\n",
                STR(EDGEC_CHECK_WEIGHTS), check);
        return 3;
    }
#endif
#ifdef EDGEC_RUN_DIMS
    int32_t dims[16] = {0};
    const char *dims_env = getenv("EDGEC_DIMS");
    for (int d = 0; dims_env && *dims_env && d < 16; d++) {
        dims[d] = (int32_t)strtol(dims_env, (char **)&dims_env, 10);
        if (*dims_env == ',') dims_env++;
    }
#endif
#ifdef EDGEC_RUN_PARALLEL
    const char *threads_env = getenv("EDGEC_THREADS");
    int threads = threads_env ? atoi(threads_env) : 1;
    edgec_pool *pool = threads > 1 ? edgec_pool_create(threads) : NULL;
    if (threads > 1 && !pool) return fail("cannot start the thread pool");
    EDGEC_PARALLEL_T par = {edgec_parallel_for, edgec_pool_threads(pool), pool};
#endif
    if (timed) printf("times_ns:");
    for (long r = 0; r < runs; r++) {
        uint64_t t0 = timed ? now_ns() : 0;
#if defined(EDGEC_RUN_EXT)
        int rc = EDGEC_RUN_EXT(weights, inputs, outputs, arena);
#elif defined(EDGEC_RUN_DIMS)
        int rc = getenv("EDGEC_DIMS") ? EDGEC_RUN_DIMS(inputs, outputs, arena, dims) : EDGEC_RUN(inputs, outputs, arena);
#elif defined(EDGEC_RUN_PARALLEL)
        int rc = EDGEC_RUN_PARALLEL(inputs, outputs, arena, pool ? &par : NULL);
#else
        int rc = EDGEC_RUN(inputs, outputs, arena);
#endif
        uint64_t t1 = timed ? now_ns() : 0;
        if (rc != 0) {
            fprintf(stderr, "harness: run returned %d\n", rc);
            return 3;
        }
        if (timed) printf(" %llu", (unsigned long long)(t1 - t0));
    }
    if (timed) printf("\n");
#ifdef EDGEC_RUN_PARALLEL
    edgec_pool_destroy(pool);
#endif
    int changed = changed_input(nin, in_bytes, in, saved);
    if (changed >= 0) {
        fprintf(stderr, "harness: the model wrote to input %d\n", changed);
        return 5;
    }
    size_t end = (size_t)ARENA_SIZE + GUARD, hit = touched_guard(arena, arena_bytes, end, GUARD_BYTE);
    if (hit != end) {
        fprintf(stderr, "harness: model wrote past its arena (byte %zu of %zu)\n", hit, arena_bytes);
        return 4;
    }
    err = write_outputs(argv[3], nout, out_bytes, outputs);
    return err ? fail(err) : 0;
}
