/* System-mode test harness: a bare-metal program for a QEMU board (no OS, no libc, no
 * heap) that runs <name>_run on inputs embedded at link time and prints its outputs as
 * hex bytes through semihosting, for the host to compare with onnxruntime.
 *
 * Built by toolchain/harness/system.py with the board's startup code and linker script
 * (firmware/<dir>/) and
 *   -DEDGEC_HEADER='"<name>.h"' -DEDGEC_RUN=<name>_run -DEDGEC_PREFIX=<NAME>
 *   -DEDGEC_DATA='"edgec_data.h"'   (generated: the inputs and the output buffers)
 * The number of runs is the last word of QEMU's -append (default 1); every run executes
 * the same instructions, so instruction counts of N and 1 runs differ by N-1 inferences.
 * The arena is followed by a guard zone and the inputs are checksummed: a model that
 * writes past its arena or into an input fails with a message. Output, one line each:
 *   OUT <index> <hex bytes>     then   DONE
 * Exit status: 0, 2 (model_run returned an error), 4 (arena overrun), 5 (input written),
 * 3 (a fault; printed by the board's fault handler).
 */
#include <stddef.h>
#include <stdint.h>
#include "platform.h"
#include EDGEC_HEADER

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define ARENA_SIZE CAT(EDGEC_PREFIX, _ARENA_SIZE)
#define ARENA_ALIGN CAT(EDGEC_PREFIX, _ARENA_ALIGN)
#define GUARD 256
#define GUARD_BYTE 0xA5

struct edgec_buffer {
    const void *data;
    size_t bytes;
};

#include EDGEC_DATA /* edgec_inputs[], edgec_outputs[], edgec_in[], edgec_out[] */

static unsigned char arena[ARENA_SIZE + GUARD] __attribute__((aligned(ARENA_ALIGN)));

static uint32_t checksum(void) {
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < sizeof edgec_in / sizeof edgec_in[0]; i++) {
        const unsigned char *p = edgec_in[i].data;
        for (size_t j = 0; j < edgec_in[i].bytes; j++) h = (h ^ p[j]) * 16777619u;
    }
    return h;
}

int main(void) {
    unsigned runs = fw_arg(1);
    for (size_t i = 0; i < GUARD; i++) arena[ARENA_SIZE + i] = GUARD_BYTE;
    uint32_t before = checksum();
    for (unsigned r = 0; r < runs; r++) {
        if (EDGEC_RUN(edgec_inputs, edgec_outputs, arena) != 0) {
            fw_puts("FAIL model_run returned an error\n");
            return 2;
        }
    }
    for (size_t i = 0; i < GUARD; i++) {
        if (arena[ARENA_SIZE + i] != GUARD_BYTE) {
            fw_puts("FAIL the model wrote past the end of its arena (ARENA_SIZE)\n");
            return 4;
        }
    }
    if (checksum() != before) {
        fw_puts("FAIL the model wrote into an input\n");
        return 5;
    }
    for (size_t o = 0; o < sizeof edgec_out / sizeof edgec_out[0]; o++) {
        const unsigned char *p = edgec_out[o].data;
        fw_puts("OUT ");
        fw_putu(o);
        fw_putc(' ');
        for (size_t j = 0; j < edgec_out[o].bytes; j++) {
            fw_putc("0123456789abcdef"[p[j] >> 4]);
            fw_putc("0123456789abcdef"[p[j] & 15]);
        }
        fw_putc('\n');
    }
    fw_puts("DONE\n");
    return 0;
}
