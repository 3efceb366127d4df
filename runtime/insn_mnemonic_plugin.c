/* QEMU TCG plugin: counts the guest instructions a program executes, per mnemonic.
 *
 * When a translation block is translated, each instruction's disassembly is taken
 * (qemu_plugin_insn_disas) and its first token, the mnemonic as QEMU's disassembler spells
 * it with condition and width suffixes ("ldr.w", "bne", "vldrw.u32", "smlad"), is interned
 * in a fixed table; the instruction gets an inline "add 1" on that mnemonic's counter. No
 * helper call: for a deterministic, single-threaded guest the counts are exact and
 * repeatable, and their sum is what insn_count_plugin.c counts. At exit the counts go to
 * the file named by out=PATH (to stderr if none), one line per mnemonic executed:
 *
 *   insns: TOTAL
 *   ldr.w 123456
 *   smlad 7890
 *   ...
 *
 * Two refinements of "the first token", for what the name alone would hide or get wrong:
 *  - an instruction with a Q-register operand (q0..q15: a 128-bit vector, MVE on Armv8.1-M)
 *    is counted as "MNEMONIC[q]", apart from the scalar form ("vfma.f32" on s registers);
 *  - an instruction QEMU's disassembler cannot decode (".byte"), or whose mnemonic starts
 *    with one of the prefixes of the raw=P1/P2/.. argument (QEMU 7.2's capstone 4 decodes
 *    MVE loads and stores as the coprocessor ldc/stc), is counted under its encoding,
 *    "?" and the bytes in memory order in hex ("?91ed001e"), for the caller to decode
 *    with a disassembler that knows the architecture (toolchain/harness/cycles.py).
 *
 * If the table fills up, the report is "error: ..." instead (the Python side refuses it).
 *
 *   qemu-system-arm ... -plugin ./insn_mnemonic.so,out=/tmp/m.txt,raw=ldc/stc -kernel image.elf
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qemu_plugin_api.h"

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

#define TABLE_SIZE 4096 /* a power of two: open addressing, linear probing */
#define NAME_MAX_LEN 31

struct mnemonic {
    char name[NAME_MAX_LEN + 1]; /* "" marks a free slot */
    uint64_t count;
};

static struct mnemonic table[TABLE_SIZE];
static size_t n_used;
static int overflow; /* a mnemonic found no free slot: the counts are incomplete */
static char out_path[4096];
static char raw_prefixes[1024]; /* "ldc/stc/...": mnemonics counted by encoding */

static uint64_t hash(const char *s) {
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* the counter of a mnemonic, interned on first sight; NULL once the table is full */
static uint64_t *counter_of(const char *name) {
    size_t i = hash(name) & (TABLE_SIZE - 1);
    for (size_t probes = 0; probes < TABLE_SIZE; probes++, i = (i + 1) & (TABLE_SIZE - 1)) {
        if (table[i].name[0] == '\0') {
            if (n_used + 1 >= TABLE_SIZE) break; /* keep one slot free so probing ends */
            memcpy(table[i].name, name, strlen(name) + 1); /* name: at most NAME_MAX_LEN chars */
            n_used++;
            return &table[i].count;
        }
        if (strcmp(table[i].name, name) == 0) return &table[i].count;
    }
    overflow = 1;
    return NULL;
}

/* the first whitespace-delimited token of a disassembly, truncated to NAME_MAX_LEN */
static void first_token(const char *disas, char *name) {
    size_t n = 0;
    while (*disas == ' ' || *disas == '\t') disas++;
    while (disas[n] && disas[n] != ' ' && disas[n] != '\t' && n < NAME_MAX_LEN) {
        name[n] = disas[n];
        n++;
    }
    name[n] = '\0';
    if (n == 0) strcpy(name, "(unknown)");
}

/* whether an operand of the disassembly (after the mnemonic) is a Q register */
static int has_q_operand(const char *disas) {
    const char *p = disas;
    while (*p == ' ' || *p == '\t') p++;
    while (*p && *p != ' ' && *p != '\t') p++; /* skip the mnemonic */
    for (; *p; p++) {
        if ((p[0] == 'q' || p[0] == 'Q') && p[1] >= '0' && p[1] <= '9' &&
            (p[-1] == ' ' || p[-1] == ',' || p[-1] == '{' || p[-1] == '[' || p[-1] == '\t')) {
            const char *e = p + 1;
            while (*e >= '0' && *e <= '9') e++;
            if (*e == '\0' || *e == ',' || *e == ' ' || *e == '}' || *e == ']' || *e == '[') return 1;
        }
    }
    return 0;
}

/* whether a mnemonic starts with one of the raw= prefixes ("/"-separated) */
static int is_raw(const char *name) {
    if (strcmp(name, ".byte") == 0 || strcmp(name, "(unknown)") == 0) return 1;
    const char *p = raw_prefixes;
    while (*p) {
        size_t n = strcspn(p, "/");
        if (n && strncmp(name, p, n) == 0) return 1;
        p += n + (p[n] == '/');
    }
    return 0;
}

/* the counter key of one instruction, into name[NAME_MAX_LEN + 1] */
static void key_of(struct qemu_plugin_insn *insn, char *name) {
    char *disas = qemu_plugin_insn_disas(insn);
    first_token(disas ? disas : "", name);
    if (is_raw(name)) {
        const unsigned char *bytes = qemu_plugin_insn_data(insn);
        size_t size = qemu_plugin_insn_size(insn), n = 1;
        name[0] = '?';
        for (size_t i = 0; i < size && n + 2 <= NAME_MAX_LEN; i++, n += 2) sprintf(name + n, "%02x", bytes[i]);
        name[n] = '\0';
    } else if (disas && has_q_operand(disas) && strlen(name) + 3 <= NAME_MAX_LEN) {
        strcat(name, "[q]");
    }
    free(disas);
}

static void on_translate(qemu_plugin_id_t id, struct qemu_plugin_tb *tb) {
    (void)id;
    size_t n = qemu_plugin_tb_n_insns(tb);
    for (size_t i = 0; i < n; i++) {
        struct qemu_plugin_insn *insn = qemu_plugin_tb_get_insn(tb, i);
        char name[NAME_MAX_LEN + 1];
        key_of(insn, name);
        uint64_t *counter = counter_of(name);
        if (counter) qemu_plugin_register_vcpu_insn_exec_inline(insn, QEMU_PLUGIN_INLINE_ADD_U64, counter, 1);
    }
}

static void report(qemu_plugin_id_t id, void *userdata) {
    (void)id;
    (void)userdata;
    FILE *f = out_path[0] ? fopen(out_path, "w") : stderr;
    if (!f) return;
    if (overflow) {
        fprintf(f, "error: more than %d distinct mnemonics; the table is full\n", TABLE_SIZE - 1);
    } else {
        uint64_t total = 0;
        for (size_t i = 0; i < TABLE_SIZE; i++) total += table[i].count;
        fprintf(f, "insns: %" PRIu64 "\n", total);
        for (size_t i = 0; i < TABLE_SIZE; i++)
            if (table[i].count) fprintf(f, "%s %" PRIu64 "\n", table[i].name, table[i].count);
    }
    if (f != stderr) fclose(f);
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info, int argc,
                                           char **argv) {
    (void)info;
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "out=", 4) == 0) {
            strncpy(out_path, argv[i] + 4, sizeof out_path - 1);
        } else if (strncmp(argv[i], "raw=", 4) == 0) {
            strncpy(raw_prefixes, argv[i] + 4, sizeof raw_prefixes - 1);
        } else {
            fprintf(stderr, "insn_mnemonic: unknown argument '%s' (expected out=PATH or raw=P1/P2)\n", argv[i]);
            return -1;
        }
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, on_translate);
    qemu_plugin_register_atexit_cb(id, report, NULL);
    return 0;
}
