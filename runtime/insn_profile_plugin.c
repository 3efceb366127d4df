/* QEMU TCG plugin: counts the guest instructions a program executes in each of a set of
 * address ranges (the functions of a profiling build's nodes), and outside all of them.
 *
 * The ranges come from a file, one per line: "START END" in hex, END exclusive, in any
 * order, not overlapping. When a translation block is translated, each run of
 * consecutive instructions that falls in one range (or in none) gets an inline "add the
 * run's length" on its first instruction: no helper call, and for a deterministic,
 * single-threaded guest the counts are exact and repeatable; their sum is what
 * insn_count_plugin.c counts. At exit the counts go to the file named by out=PATH (to
 * stderr if none):
 *
 *   insns: TOTAL
 *   other: N              instructions outside every range
 *   0: N                  one line per range, in the order of the ranges file
 *   ...
 *
 *   qemu-aarch64 -plugin ./insn_profile.so,ranges=/tmp/r.txt,out=/tmp/p.txt ./program ...
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

struct range {
    uint64_t start, end; /* [start, end) */
    size_t index;        /* line of the ranges file */
};

static struct range *ranges; /* sorted by start */
static size_t n_ranges;
static uint64_t *counts; /* n_ranges + 1: counts[n_ranges] is "other" */
static char out_path[4096];

static int by_start(const void *a, const void *b) {
    const struct range *x = a, *y = b;
    return x->start < y->start ? -1 : x->start > y->start;
}

/* the counter slot of an address: its range's file index, or n_ranges for none */
static size_t slot_of(uint64_t addr) {
    size_t lo = 0, hi = n_ranges;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (addr < ranges[mid].start) {
            hi = mid;
        } else if (addr >= ranges[mid].end) {
            lo = mid + 1;
        } else {
            return ranges[mid].index;
        }
    }
    return n_ranges;
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    size_t i = 0;
    while (i < n) {
        struct qemu_plugin_insn *first = qemu_plugin_tb_get_insn(tb, i);
        size_t slot = slot_of(qemu_plugin_insn_vaddr(first));
        size_t j = i + 1;
        while (j < n && slot_of(qemu_plugin_insn_vaddr(qemu_plugin_tb_get_insn(tb, j))) == slot) j++;
        qemu_plugin_register_vcpu_insn_exec_inline(first, QEMU_PLUGIN_INLINE_ADD_U64, &counts[slot], j - i);
        i = j;
    }
}

static void report(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    FILE *f = out_path[0] ? fopen(out_path, "w") : stderr;
    if (!f) return;
    uint64_t total = 0;
    for (size_t i = 0; i <= n_ranges; i++) total += counts[i];
    fprintf(f, "insns: %" PRIu64 "\nother: %" PRIu64 "\n", total, counts[n_ranges]);
    for (size_t i = 0; i < n_ranges; i++) fprintf(f, "%zu: %" PRIu64 "\n", i, counts[i]);
    if (f != stderr) fclose(f);
}

static int load_ranges(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "insn_profile: cannot open ranges file '%s'\n", path);
        return -1;
    }
    size_t cap = 64;
    ranges = malloc(cap * sizeof *ranges);
    if (!ranges) {
        fclose(f);
        return -1;
    }
    unsigned long long start, end;
    int got;
    while ((got = fscanf(f, "%llx %llx", &start, &end)) == 2) {
        if (end <= start) {
            fprintf(stderr, "insn_profile: empty range %llx %llx in '%s'\n", start, end, path);
            fclose(f);
            return -1;
        }
        if (n_ranges == cap) ranges = realloc(ranges, (cap *= 2) * sizeof *ranges);
        if (!ranges) {
            fclose(f);
            return -1;
        }
        ranges[n_ranges] = (struct range){start, end, n_ranges};
        n_ranges++;
    }
    fclose(f);
    if (got != EOF) {
        fprintf(stderr, "insn_profile: '%s' line %zu is not \"START END\" in hex\n", path, n_ranges + 1);
        return -1;
    }
    qsort(ranges, n_ranges, sizeof *ranges, by_start);
    for (size_t i = 1; i < n_ranges; i++) {
        if (ranges[i].start < ranges[i - 1].end) {
            fprintf(stderr, "insn_profile: ranges overlap at %" PRIx64 "\n", ranges[i].start);
            return -1;
        }
    }
    counts = calloc(n_ranges + 1, sizeof *counts);
    return counts ? 0 : -1;
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv) {
    (void)info;
    const char *ranges_path = NULL;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            strncpy(out_path, argv[i] + 4, sizeof out_path - 1);
        } else if (strncmp(argv[i], "ranges=", 7) == 0) {
            ranges_path = argv[i] + 7;
        } else {
            fprintf(stderr, "insn_profile: unknown argument '%s' (expected ranges=PATH, out=PATH)\n", argv[i]);
            return -1;
        }
    }
    if (!ranges_path) {
        fprintf(stderr, "insn_profile: missing ranges=PATH\n");
        return -1;
    }
    if (load_ranges(ranges_path) != 0) return -1;
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, report, NULL);
    return 0;
}
