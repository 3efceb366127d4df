/* Startup for the bare-metal examples on Cortex-M (Armv7E-M: M4, M7; Armv8-M mainline:
 * M33, M55) on QEMU's MPS2/MPS3 boards. The core reads the initial stack pointer and the
 * reset address from the vector table at VTOR (the image's start); reset_handler then
 * enables the FPU (and with it Helium/MVE on the M55: both are coprocessors 10 and 11 in
 * CPACR), zeroes .bss, copies .data from its load address if it has one, and calls
 * main(); main's return value is the exit status (fw_exit: semihosting). Any fault
 * prints its status registers and exits with status 3: a test never hangs.
 */
    .syntax unified
    .thumb

    .section .vectors, "a", %progbits
    .global __vectors
    .p2align 7
__vectors:
    .word   __stack_top               /* initial MSP */
    .word   reset_handler             /* reset */
    .rept   14                        /* NMI, HardFault, MemManage, BusFault, UsageFault,
                                         SecureFault, reserved x3, SVC, DebugMon, reserved,
                                         PendSV, SysTick */
    .word   fault_handler
    .endr

    .text
    .global reset_handler
    .global _start
    .thumb_set _start, reset_handler       /* the entry symbol linkers look for */
    .type   reset_handler, %function
    .thumb_func
reset_handler:
    ldr     r0, =0xE000ED88           /* CPACR */
    ldr     r1, [r0]
    orr     r1, r1, #(0xF << 20)      /* CP10, CP11 full access: FPU (and MVE) */
    str     r1, [r0]
    dsb
    isb
    ldr     r0, =__bss_start          /* .bss: zero, 4 bytes at a time (4-aligned) */
    ldr     r1, =__bss_end
    movs    r2, #0
1:  cmp     r0, r1
    bhs     2f
    str     r2, [r0], #4
    b       1b
2:  ldr     r0, =__data_start         /* .data: copy from its load address (flash) */
    ldr     r1, =__data_end
    ldr     r2, =__data_load
3:  cmp     r0, r1
    bhs     4f
    ldr     r3, [r2], #4
    str     r3, [r0], #4
    b       3b
4:  bl      main
    bl      fw_exit                   /* r0 = main's return value */
5:  b       5b
    .size   reset_handler, . - reset_handler

    .type   fault_handler, %function
    .thumb_func
fault_handler:
    mrs     r0, ipsr                  /* exception number */
    ldr     r1, =0xE000ED28           /* CFSR */
    ldr     r1, [r1]
    tst     lr, #4                    /* which stack holds the exception frame */
    ite     eq
    mrseq   r2, msp
    mrsne   r2, psp
    ldr     r2, [r2, #24]             /* the faulting PC */
    b       fw_fault
    .size   fault_handler, . - fault_handler
