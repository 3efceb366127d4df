/* Board support for QEMU `virt` (aarch64): PL011 UART output and Arm semihosting exit.
 * No libc: everything the firmware prints goes through fw_puts. */
#include <stdint.h>
#include "platform.h"

#define UART0_BASE 0x09000000u           /* PL011 on the virt board */
#define UART_DR (*(volatile uint32_t *)(uintptr_t)(UART0_BASE + 0x00))
#define UART_FR (*(volatile uint32_t *)(uintptr_t)(UART0_BASE + 0x18))
#define UART_FR_TXFF (1u << 5)

#define SYS_EXIT 0x18                    /* semihosting operation numbers */
#define ADP_STOPPED_APPLICATION_EXIT 0x20026

void fw_putc(char c) {
    while (UART_FR & UART_FR_TXFF) {
    }
    UART_DR = (uint32_t)(unsigned char)c;
}

static long semihost(long op, void *arg) {
    register long x0 __asm__("x0") = op;
    register void *x1 __asm__("x1") = arg;
    __asm__ volatile("hlt #0xf000" : "+r"(x0) : "r"(x1) : "memory");
    return x0;
}

void fw_exit(int status) {
    /* AArch64 SYS_EXIT takes {reason, subcode}; QEMU exits with the subcode. */
    uint64_t block[2] = {ADP_STOPPED_APPLICATION_EXIT, (uint64_t)(uint32_t)status};
    semihost(SYS_EXIT, block);
    for (;;) {
    }
}

void fw_exception(uint64_t esr, uint64_t elr) {
    fw_puts("FAIL exception esr=0x");
    fw_puthex(esr);
    fw_puts(" elr=0x");
    fw_puthex(elr);
    fw_puts("\n");
    fw_exit(3);
}
