# Compressed HINTs (RVC code points that write x0): they must execute as no-ops, not trap, as
# on QEMU. A trap goes to a handler that reports failure 1 through the test finisher.
    .option norelax
    .text
    .globl _start
_start:                      # one hart (the test runs --smp 1)
    la   t0, fail
    csrw mtvec, t0
    li   a0, 7
    .2byte 0x6005            # c.lui  x0, 1
    .2byte 0x4015            # c.li   x0, 5
    .2byte 0x0005            # c.addi x0, 1
    .2byte 0x802a            # c.mv   x0, a0
    .2byte 0x902a            # c.add  x0, a0
    .2byte 0x0006            # c.slli x0, 1
    bnez zero, fail          # x0 still reads 0
    li   s1, 0x100000
    li   t2, 0x5555          # pass
    sw   t2, 0(s1)
1:  j    1b
    .balign 4
fail:
    li   s1, 0x100000
    li   t2, 0x13333         # failure 1
    sw   t2, 0(s1)
    j    fail
