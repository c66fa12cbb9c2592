# HTIF without the runtime: a line through the console device (device 1, command 1), then exit
# code 3 through tohost ((3 << 1) | 1). vck-run must print the line and exit 3.
    .option norelax         # lld 14 cannot relax (no R_RISCV_ALIGN for the .balign below)
    .text
    .globl _start
_start:
    csrr    t0, mhartid
    bnez    t0, 3f
    la      s0, tohost
    la      s1, message
    li      s2, 0x0101000000000000
1:  lbu     t1, 0(s1)
    beqz    t1, 2f
    or      t1, t1, s2
    sd      t1, 0(s0)
4:  ld      t2, 0(s0)       # the host clears tohost once it has taken the character
    bnez    t2, 4b
    addi    s1, s1, 1
    j       1b
2:  li      t1, (3 << 1) | 1
    sd      t1, 0(s0)
3:  wfi
    j       3b

    .section .rodata
message:
    .asciz  "HTIF console\n"

    .section .tohost, "aw", @progbits
    .balign 64
    .globl tohost
tohost:
    .dword  0
    .size   tohost, 8
    .balign 64
    .globl fromhost
fromhost:
    .dword  0
    .size   fromhost, 8
