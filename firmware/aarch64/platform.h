/* What main.c needs from a board: a character out and an exit status out. */
#ifndef FW_PLATFORM_H_
#define FW_PLATFORM_H_
#include <stdint.h>

void fw_putc(char c);
void fw_exit(int status);
void fw_exception(uint64_t esr, uint64_t elr);

/* Formatting without libc (print.c). */
void fw_puts(const char *s);
void fw_putu(uint64_t v);
void fw_puthex(uint64_t v);
void fw_putf(double v);

#endif
