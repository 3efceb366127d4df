/* What the host-side harnesses (harness.c, train_harness.c) share: the clock, reading the
 * input file into buffers (and a copy to prove the model left them alone), the guard-zone
 * scan and writing the output file. Hosted C (stdio, malloc): these run under qemu-user or
 * natively, never on a board. */
#ifndef EDGEC_HARNESS_IO_H
#define EDGEC_HARNESS_IO_H
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* n buffers of bytes[i] from path into in[i], each copied into saved[i]; NULL or why not. */
static const char *read_inputs(const char *path, int n, const size_t *bytes, void **in, void **saved) {
    FILE *f = fopen(path, "rb");
    if (!f) return "cannot open input file";
    for (int i = 0; i < n; i++) {
        in[i] = malloc(bytes[i] + 1);
        saved[i] = malloc(bytes[i] + 1);
        if (!in[i] || !saved[i] || fread(in[i], 1, bytes[i], f) != bytes[i]) {
            fclose(f);
            return "short input file";
        }
        memcpy(saved[i], in[i], bytes[i]);
    }
    fclose(f);
    return NULL;
}

/* The first input the run changed, or -1. */
static int changed_input(int n, const size_t *bytes, void *const *in, void *const *saved) {
    for (int i = 0; i < n; i++)
        if (memcmp(saved[i], in[i], bytes[i]) != 0) return i;
    return -1;
}

/* The first byte in [from, to) that is not the guard byte, or to. */
static size_t touched_guard(const unsigned char *arena, size_t from, size_t to, unsigned char guard) {
    for (size_t i = from; i < to; i++)
        if (arena[i] != guard) return i;
    return to;
}

/* The n outputs, one after the other, into path; NULL or why not. */
static const char *write_outputs(const char *path, int n, const size_t *bytes, void *const *out) {
    FILE *f = fopen(path, "wb");
    if (!f) return "cannot open output file";
    for (int i = 0; i < n; i++)
        if (fwrite(out[i], 1, bytes[i], f) != bytes[i]) {
            fclose(f);
            return "short write";
        }
    fclose(f);
    return NULL;
}
#endif
