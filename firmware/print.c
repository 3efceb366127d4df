/* Minimal output formatting for the firmware: strings, integers and floats in
 * scientific notation, all through the board's fw_putc. */
#include <stdint.h>
#include "platform.h"

void fw_puts(const char *s) {
    while (*s) fw_putc(*s++);
}

void fw_putu(uint64_t v) {
    char buf[21];
    int n = 0;
    do {
        buf[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (n) fw_putc(buf[--n]);
}

void fw_puthex(uint64_t v) {
    for (int s = 60; s >= 0; s -= 4) fw_putc("0123456789abcdef"[(v >> s) & 0xf]);
}

/* d.dddddde[+-]xx, enough to read an error magnitude. */
void fw_putf(double v) {
    if (v != v) {
        fw_puts("nan");
        return;
    }
    if (v < 0) {
        fw_putc('-');
        v = -v;
    }
    if (v > 1.7e308) {
        fw_puts("inf");
        return;
    }
    int e = 0;
    if (v != 0.0) {
        while (v >= 10.0) { v /= 10.0; e++; }
        while (v < 1.0) { v *= 10.0; e--; }
    }
    uint64_t digits = (uint64_t)(v * 1e6 + 0.5);  /* 7 significant digits */
    if (digits >= 10000000u) { digits /= 10; e++; }
    fw_putc((char)('0' + digits / 1000000u));
    fw_putc('.');
    uint64_t frac = digits % 1000000u;
    for (uint64_t p = 100000u; p; p /= 10) fw_putc((char)('0' + (frac / p) % 10));
    fw_putc('e');
    fw_putc(e < 0 ? '-' : '+');
    if (e < 0) e = -e;
    fw_putc((char)('0' + e / 10));
    fw_putc((char)('0' + e % 10));
}
