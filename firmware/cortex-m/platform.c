/* Board support for Cortex-M on QEMU's MPS2/MPS3 boards: output and exit through Arm
 * semihosting (the `bkpt 0xab` trap; QEMU runs with -semihosting-config enable=on).
 * Characters are buffered and written a line at a time (SYS_WRITE0); the exit status
 * reaches QEMU's own exit code through SYS_EXIT_EXTENDED. No libc. */
#include <stdint.h>
#include "platform.h"

#define SYS_WRITE0 0x04
#define SYS_GET_CMDLINE 0x15
#define SYS_EXIT_EXTENDED 0x20
#define ADP_STOPPED_APPLICATION_EXIT 0x20026

static int semihost(int op, void *arg) {
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

static char line[257];
static unsigned used;

static void flush(void) {
    if (used) {
        line[used] = 0;
        semihost(SYS_WRITE0, line);
        used = 0;
    }
}

void fw_putc(char c) {
    line[used++] = c;
    if (c == '\n' || used == sizeof line - 1) flush();
}

void fw_exit(int status) {
    flush();
    uint32_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint32_t)status};
    semihost(SYS_EXIT_EXTENDED, block);
    for (;;) {
    }
}

/* The command line QEMU passes (-kernel IMAGE -append ARGS gives "IMAGE ARGS"): its last
 * word as an unsigned number, or `fallback`. */
unsigned fw_arg(unsigned fallback) {
    static char buf[512];
    uint32_t block[2] = {(uint32_t)(uintptr_t)buf, sizeof buf - 1};
    if (semihost(SYS_GET_CMDLINE, block) != 0) return fallback;
    const char *p = buf, *last = 0;
    for (; *p; p++)
        if ((p == buf || p[-1] == ' ') && *p != ' ') last = p;
    if (!last || *last < '0' || *last > '9') return fallback;
    unsigned v = 0;
    for (p = last; *p >= '0' && *p <= '9'; p++) v = v * 10 + (unsigned)(*p - '0');
    return v;
}

void fw_fault(uint32_t exception, uint32_t cfsr, uint32_t pc) {
    fw_puts("FAIL fault exception=");
    fw_putu(exception);
    fw_puts(" cfsr=0x");
    fw_puthex(cfsr);
    fw_puts(" pc=0x");
    fw_puthex(pc);
    fw_puts("\n");
    fw_exit(3);
}
