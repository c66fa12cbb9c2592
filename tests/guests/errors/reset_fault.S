# A test-finisher reset followed at once by a fault with no handler (in the same block): the run
# that follows the reset must not inherit the stop request the fault posted. The second boot
# (told apart by a word of remap bank 0, which a reset does not reload) reports success.
    .option norelax
    .text
    .globl _start
_start:
    csrr t0, mhartid
    bnez t0, 9f
    li   s0, 0x42000000
    lw   t1, 0(s0)
    bnez t1, 2f
    li   t1, 1
    sw   t1, 0(s0)
    li   s1, 0x100000
    li   t2, 0x7777          # reset ...
    sw   t2, 0(s1)
    ecall                    # ... then an exception with no handler
2:  li   s1, 0x100000
    li   t2, 0x5555          # second boot: pass
    sw   t2, 0(s1)
9:  wfi
    j    9b
