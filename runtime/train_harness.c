/* Benchmark harness of training and reverse-mode builds: the same command line as
 * harness.c, so the runner and the instruction-count plugin drive it unchanged.
 *
 * Built per target by toolchain/harness (zig cc, static musl) with
 *   -DEDGEC_HEADER='"<name>.h"' -DEDGEC_PREFIX=<NAME> and either
 *   -DEDGEC_TRAIN_STEP=<name>_train_step -DEDGEC_PARAMS_INIT=<name>_params_init
 *   -DEDGEC_NUM_TARGETS=<k> -DEDGEC_LR=<learning rate>f          (a --train build) or
 *   -DEDGEC_PRIMAL=<name>_primal -DEDGEC_PULLBACK=<name>_pullback  (a --grad reverse build)
 * usage: train_harness RUNS INPUT.bin OUTPUT.bin NIN BYTES... NOUT BYTES...
 *   training:     NIN = the model's inputs, then one target per loss term; NOUT = 1 of
 *                 8 bytes: the loss of the first step and of the last (float32 each).
 *                 params_init runs once, then train_step RUNS times on the same batch.
 *   reverse mode: NIN = the model's inputs, then one cotangent per float output; NOUT =
 *                 the outputs, the input cotangents, the parameter cotangents. Each run
 *                 is primal then pullback; with EDGEC_PRIMAL_ONLY=1 the primal alone.
 * The arena is followed by a guard zone (a write past it is reported, exit 4); the inputs
 * are checked unchanged. EDGEC_UNTIMED=1: no clock read, nothing printed per run, so every
 * run executes the same instructions (for counting them under QEMU), as in harness.c.
 */
#include "harness_io.h"
#include EDGEC_HEADER

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define ARENA_ALIGN CAT(EDGEC_PREFIX, _ARENA_ALIGN)
#define NUM_INPUTS CAT(EDGEC_PREFIX, _NUM_INPUTS)
#define NUM_OUTPUTS CAT(EDGEC_PREFIX, _NUM_OUTPUTS)
#define GUARD 256
#define GUARD_BYTE 0xA5

#if defined(EDGEC_TRAIN_STEP)
#define ARENA_SIZE CAT(EDGEC_PREFIX, _TRAIN_ARENA_SIZE)
#define NIN_WANT (NUM_INPUTS + EDGEC_NUM_TARGETS)
#define NOUT_WANT 1
static unsigned char params[CAT(EDGEC_PREFIX, _PARAMS_SIZE) + 1]
    __attribute__((aligned(CAT(EDGEC_PREFIX, _PARAMS_ALIGN))));
static unsigned char opt_state[CAT(EDGEC_PREFIX, _OPT_STATE_SIZE) + 1]
    __attribute__((aligned(CAT(EDGEC_PREFIX, _PARAMS_ALIGN))));  /* zeroed: the first step's state */
#elif defined(EDGEC_PRIMAL)
#define ARENA_SIZE CAT(EDGEC_PREFIX, _ARENA_SIZE)
#define NUM_IN_COT CAT(EDGEC_PREFIX, _NUM_INPUT_COTANGENTS)
#define NUM_OUT_COT CAT(EDGEC_PREFIX, _NUM_OUTPUT_COTANGENTS)
#define NUM_PARAMS CAT(EDGEC_PREFIX, _NUM_PARAMS)
#define NIN_WANT (NUM_INPUTS + NUM_OUT_COT)
#define NOUT_WANT (NUM_OUTPUTS + NUM_IN_COT + NUM_PARAMS)
static unsigned char residuals[CAT(EDGEC_PREFIX, _RESIDUALS_SIZE) + 1]
    __attribute__((aligned(CAT(EDGEC_PREFIX, _RESIDUALS_ALIGN))));
#else
#error "define EDGEC_TRAIN_STEP (a --train build) or EDGEC_PRIMAL (a --grad reverse build)"
#endif

static unsigned char arena_storage[ARENA_SIZE + GUARD] __attribute__((aligned(ARENA_ALIGN)));

static int fail(const char *msg) {
    fprintf(stderr, "train_harness: %s\n", msg);
    return 2;
}

int main(int argc, char **argv) {
    if (argc < 6) return fail("usage: train_harness RUNS IN.bin OUT.bin NIN BYTES... NOUT BYTES...");
    long runs = atol(argv[1]);
    if (runs < 1) return fail("RUNS must be at least 1");
    int a = 4, nin = atoi(argv[a++]);
    if (nin != NIN_WANT) return fail("input count does not match the build");
    size_t in_bytes[NIN_WANT + 1], out_bytes[NOUT_WANT + 1];
    for (int i = 0; i < nin && a < argc; i++) in_bytes[i] = (size_t)atol(argv[a++]);
    if (a >= argc) return fail("missing output count");
    int nout = atoi(argv[a++]);
    if (nout != NOUT_WANT) return fail("output count does not match the build");
    for (int i = 0; i < nout; i++) out_bytes[i] = a < argc ? (size_t)atol(argv[a++]) : 0;

    void *in[NIN_WANT + 1], *saved[NIN_WANT + 1], *out[NOUT_WANT + 1];
    const char *err = read_inputs(argv[2], nin, in_bytes, in, saved);
    if (err) return fail(err);
    for (int i = 0; i < nout; i++)
        if (!(out[i] = calloc(1, out_bytes[i] + 1))) return fail("out of memory");
    const void *const *inputs = (const void *const *)in;
    const void *const *rest = (const void *const *)(in + NUM_INPUTS);  /* targets or cotangents */
    const char *untimed_env = getenv("EDGEC_UNTIMED");
    int timed = !(untimed_env && untimed_env[0] == '1');
    unsigned char *arena = arena_storage;
    memset(arena + ARENA_SIZE, GUARD_BYTE, GUARD);

#if defined(EDGEC_TRAIN_STEP)
    if (out_bytes[0] != 2 * sizeof(float)) return fail("the training output is 8 bytes: first and last loss");
    float first = 0.0f, loss = 0.0f;
    EDGEC_PARAMS_INIT(params);
#else
    const char *primal_env = getenv("EDGEC_PRIMAL_ONLY");
    int primal_only = primal_env && primal_env[0] == '1';
    void *const *outputs = out;
    void *const *input_cot = out + NUM_OUTPUTS;
    void *const *param_cot = out + NUM_OUTPUTS + NUM_IN_COT;
#endif
    if (timed) printf("times_ns:");
    for (long r = 0; r < runs; r++) {
        uint64_t t0 = timed ? now_ns() : 0;
#if defined(EDGEC_TRAIN_STEP)
        int rc = EDGEC_TRAIN_STEP(params, opt_state, inputs, rest, EDGEC_LR, &loss, arena);
        if (r == 0) first = loss;
#else
        int rc = EDGEC_PRIMAL(inputs, outputs, residuals, arena);
        if (rc == 0 && !primal_only) rc = EDGEC_PULLBACK(residuals, rest, input_cot, param_cot, arena);
#endif
        uint64_t t1 = timed ? now_ns() : 0;
        if (rc != 0) {
            fprintf(stderr, "train_harness: step returned %d\n", rc);
            return 3;
        }
        if (timed) printf(" %llu", (unsigned long long)(t1 - t0));
    }
    if (timed) printf("\n");
#if defined(EDGEC_TRAIN_STEP)
    memcpy(out[0], &first, sizeof first);
    memcpy((unsigned char *)out[0] + sizeof first, &loss, sizeof loss);
#endif
    int changed = changed_input(nin, in_bytes, in, saved);
    if (changed >= 0) {
        fprintf(stderr, "train_harness: the build wrote to input %d\n", changed);
        return 5;
    }
    size_t end = (size_t)ARENA_SIZE + GUARD, hit = touched_guard(arena, ARENA_SIZE, end, GUARD_BYTE);
    if (hit != end) {
        fprintf(stderr, "train_harness: the build wrote past its arena (byte %zu of %u)\n", hit,
                (unsigned)ARENA_SIZE);
        return 4;
    }
    err = write_outputs(argv[3], nout, out_bytes, out);
    return err ? fail(err) : 0;
}
