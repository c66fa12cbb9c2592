# Start-up for every hart: a stack of its own, bss cleared by hart 0, then main(hartid).
# main's return value ends the run through the test finisher (0 pass, else fail code).
    .section .text.init, "ax"
    .globl _start
_start:
    .option push
    .option norelax
    la      gp, __global_pointer$
    .option pop
    csrr    a0, mhartid
    li      t0, 16384
    addi    t1, a0, 1
    mul     t1, t1, t0
    la      sp, __stacks
    add     sp, sp, t1
    bnez    a0, 2f
    la      t0, __bss_start
    la      t1, __bss_end
1:  bgeu    t0, t1, 3f
    sd      zero, 0(t0)
    addi    t0, t0, 8
    j       1b
3:  la      t0, bss_ready
    li      t1, 1
    fence   rw, rw
    sw      t1, 0(t0)
    j       4f
2:  la      t0, bss_ready
5:  lw      t1, 0(t0)
    beqz    t1, 5b
    fence   rw, rw
4:  csrr    a0, mhartid
    call    guest_start
6:  wfi
    j       6b

    .section .data
    .align 2
    .globl bss_ready
bss_ready: .word 0
