/* Bare-metal proof: run the model once on stored inputs and compare every output with
 * the expected values computed by onnxruntime on the host. No OS, no libc, no heap:
 * inputs, outputs and the arena are static arrays. Prints one line,
 *   PASS max_abs_err=... (or FAIL ...)
 * and exits 0 on PASS, 1 on a mismatch, 2 if the model returns an error.
 *
 * Built by `invoke firmware` with -DFW_DATA="fw_data.h" (test vectors, generated) against
 * model.h / libmodel.a from either the object path or the C path.
 */
#include <stddef.h>
#include <stdint.h>
#include "platform.h"
#include "model.h"

enum fw_kind { FW_F32, FW_I64, FW_I32, FW_I8, FW_U8 };

struct fw_output {
    void *got;
    const void *want;
    size_t count;
    enum fw_kind kind;
    const char *name;
};

#include FW_DATA

static unsigned char arena[MODEL_ARENA_SIZE + 1] __attribute__((aligned(MODEL_ARENA_ALIGN)));

static double value(const void *p, enum fw_kind kind, size_t i) {
    switch (kind) {
    case FW_F32: return ((const float *)p)[i];
    case FW_I64: return (double)((const int64_t *)p)[i];
    case FW_I32: return ((const int32_t *)p)[i];
    case FW_I8: return ((const int8_t *)p)[i];
    default: return ((const uint8_t *)p)[i];
    }
}

int main(void) {
    if (model_run(fw_inputs, fw_outputs, arena) != 0) {
        fw_puts("FAIL model_run returned an error\n");
        return 2;
    }
    double max_err = 0.0;
    size_t bad = 0, total = 0;
    for (size_t o = 0; o < sizeof fw_checks / sizeof fw_checks[0]; o++) {
        const struct fw_output *c = &fw_checks[o];
        for (size_t i = 0; i < c->count; i++) {
            double got = value(c->got, c->kind, i), want = value(c->want, c->kind, i);
            double err = got > want ? got - want : want - got;
            double tol = FW_ATOL + FW_RTOL * (want < 0 ? -want : want);
            if (!(err <= tol) || (c->kind != FW_F32 && err != 0.0)) bad++;
            if (err > max_err || err != err) max_err = err;
        }
        total += c->count;
    }
    fw_puts(bad ? "FAIL" : "PASS");
    fw_puts(" max_abs_err=");
    fw_putf(max_err);
    fw_puts(" mismatches=");
    fw_putu(bad);
    fw_puts("/");
    fw_putu(total);
    fw_puts("\n");
    return bad ? 1 : 0;
}
