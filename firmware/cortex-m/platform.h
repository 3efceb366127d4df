/* What main.c and the system-mode test harness need from a board: a character out, an
 * exit status out, and a number from QEMU's command line (-append). */
#ifndef FW_PLATFORM_H_
#define FW_PLATFORM_H_
#include <stdint.h>

void fw_putc(char c);
void fw_exit(int status);
unsigned fw_arg(unsigned fallback);
void fw_fault(uint32_t exception, uint32_t cfsr, uint32_t pc);

/* Formatting without libc (print.c). */
void fw_puts(const char *s);
void fw_putu(uint64_t v);
void fw_puthex(uint64_t v);
void fw_putf(double v);

#endif
