/* Bare-metal proof: run the model once on stored inputs and compare every output with
 * the expected values computed by onnxruntime on the host. No OS, no libc, no heap:
 * inputs, outputs and the arena are static arrays. Prints one line,
 *   PASS max_abs_err=... (or FAIL ...)
 * and exits 0 on PASS, 1 on a mismatch or a stack over its bound, 2 if the model returns
 * an error.
 *
 * Stack proof: the stack below main's stack pointer is painted before model_run and
 * scanned after it; the lowest word it changed gives the stack model_run really used
 * (printed as stack=<used>/<MODEL_STACK_SIZE>), and more than the compiler's bound is a
 * FAIL. toolchain/firmware.py links the image with exactly MODEL_STACK_SIZE plus the
 * firmware's own frames, so a bound that is too small also shows as a touched stack bottom.
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

extern uint32_t __stack_bottom[];  /* the linker script's end of the stack */
#define FW_PAINT 0xA5A5A5A5u

static inline uintptr_t fw_sp(void) {
    uintptr_t sp;
    __asm__ volatile("mov %0, sp" : "=r"(sp));
    return sp;
}

/* In a section of its own, so a linker script can put it in a chosen RAM bank (the
   Cortex-M scripts' ARENA region); not zeroed at start-up: the model needs no initial value. */
static unsigned char arena[MODEL_ARENA_SIZE + 1]
    __attribute__((section(".bss.model_arena"), aligned(MODEL_ARENA_ALIGN)));

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
    volatile uint32_t *bottom = __stack_bottom;
    uintptr_t sp = fw_sp() & ~(uintptr_t)3;
    size_t words = (sp - (uintptr_t)bottom) / 4;
    for (size_t i = 0; i < words; i++) bottom[i] = FW_PAINT;
    if (model_run(fw_inputs, fw_outputs, arena) != 0) {
        fw_puts("FAIL model_run returned an error\n");
        return 2;
    }
    size_t untouched = 0;
    while (untouched < words && bottom[untouched] == FW_PAINT) untouched++;
    size_t stack_used = (words - untouched) * 4;
    int stack_bad = untouched == 0;  /* the bottom word changed: the reservation overflowed */
#ifdef MODEL_STACK_SIZE
    stack_bad |= stack_used > MODEL_STACK_SIZE;
#endif
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
    fw_puts(bad || stack_bad ? "FAIL" : "PASS");
    fw_puts(" max_abs_err=");
    fw_putf(max_err);
    fw_puts(" mismatches=");
    fw_putu(bad);
    fw_puts("/");
    fw_putu(total);
    fw_puts(" stack=");
    fw_putu(stack_used);
#ifdef MODEL_STACK_SIZE
    fw_puts("/");
    fw_putu(MODEL_STACK_SIZE);
#endif
    fw_puts(stack_bad ? " (over the bound)\n" : "\n");
    return bad || stack_bad ? 1 : 0;
}
