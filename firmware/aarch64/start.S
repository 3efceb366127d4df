/* Startup for the bare-metal example on QEMU's aarch64 `virt` board (entered at EL1 with
 * the MMU off): stack, FP/SIMD on, .bss zeroed, vectors, an identity map so RAM is Normal
 * memory (with the MMU off every access is Device memory, where the unaligned and vector
 * accesses of compiled models fault), then main(); its return value is the exit status.
 */
    .section .text.boot, "ax"
    .global _start
_start:
    mrs     x0, CurrentEL
    lsr     x0, x0, #2
    cmp     x0, #1
    b.ne    wrong_el                  /* this example sets up EL1 only */
    ldr     x0, =__stack_top
    mov     sp, x0
    mov     x0, #(3 << 20)            /* CPACR_EL1.FPEN = 0b11: FP/SIMD do not trap */
    msr     cpacr_el1, x0
    isb
    ldr     x0, =vectors
    msr     vbar_el1, x0

    ldr     x0, =__bss_start          /* .bss is 16-byte aligned by the linker script */
    ldr     x1, =__bss_end
1:  cmp     x0, x1
    b.hs    2f
    stp     xzr, xzr, [x0], #16
    b       1b
2:
    /* MAIR: attr0 Device-nGnRnE, attr1 Normal write-back. TCR: 39-bit VA (T0SZ=25, the
       walk starts at level 1 with 1 GiB blocks), inner-shareable write-back walks, 4 KiB
       granule, no TTBR1 walks (EPD1), 40-bit PA. */
    ldr     x0, =0xff00
    msr     mair_el1, x0
    ldr     x0, =(25 | (1 << 8) | (1 << 10) | (3 << 12) | (1 << 23) | (2 << 32))
    msr     tcr_el1, x0
    ldr     x0, =page_table
    ldr     x1, =0x0060000000000401   /* 0-1 GiB: devices (UART, ...): attr0, AF, XN */
    str     x1, [x0]
    ldr     x1, =0x0000000040000705   /* 1-2 GiB: RAM: attr1, AF, inner shareable */
    str     x1, [x0, #8]
    dsb     ish
    msr     ttbr0_el1, x0
    tlbi    vmalle1
    dsb     ish
    isb
    mrs     x0, sctlr_el1
    orr     x0, x0, #(1 << 0)         /* M: MMU on */
    orr     x0, x0, #(1 << 2)         /* C: data cache */
    orr     x0, x0, #(1 << 12)        /* I: instruction cache */
    bic     x0, x0, #(1 << 1)         /* A: no alignment checks */
    msr     sctlr_el1, x0
    isb

    bl      main
    bl      fw_exit                   /* w0 = main's return value */
3:  wfe
    b       3b

wrong_el:
    mov     w0, #4
    bl      fw_exit
    b       3b

/* Any exception: report the syndrome and exit with status 3 (never hang a test). */
    .macro  vector
    .balign 0x80
    mrs     x0, esr_el1
    mrs     x1, elr_el1
    b       fw_exception
    .endm

    .balign 0x800
vectors:
    .rept   16
    vector
    .endr

    .section .bss.page_table, "aw", %nobits
    .balign 4096
page_table:
    .skip   4096
