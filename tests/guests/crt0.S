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

# The machine-mode trap entry (see guest.h): the whole integer state goes into a struct
# trap_frame on the interrupted stack, the C handler may change any of it (mepc and mstatus
# included), and mret resumes with what the frame then holds. sp is restored last, from the
# frame, so a handler can move it too.
    .text
    .option norelax         # lld 14 cannot relax, so no R_RISCV_ALIGN for the .balign
    .globl trap_entry
    .balign 64
trap_entry:
    addi    sp, sp, -288
    sd      x1, 8(sp)
    sd      x3, 24(sp)
    sd      x4, 32(sp)
    sd      x5, 40(sp)
    sd      x6, 48(sp)
    sd      x7, 56(sp)
    sd      x8, 64(sp)
    sd      x9, 72(sp)
    sd      x10, 80(sp)
    sd      x11, 88(sp)
    sd      x12, 96(sp)
    sd      x13, 104(sp)
    sd      x14, 112(sp)
    sd      x15, 120(sp)
    sd      x16, 128(sp)
    sd      x17, 136(sp)
    sd      x18, 144(sp)
    sd      x19, 152(sp)
    sd      x20, 160(sp)
    sd      x21, 168(sp)
    sd      x22, 176(sp)
    sd      x23, 184(sp)
    sd      x24, 192(sp)
    sd      x25, 200(sp)
    sd      x26, 208(sp)
    sd      x27, 216(sp)
    sd      x28, 224(sp)
    sd      x29, 232(sp)
    sd      x30, 240(sp)
    sd      x31, 248(sp)
    addi    t0, sp, 288
    sd      t0, 16(sp)
    sd      zero, 0(sp)
    csrr    t0, mepc
    sd      t0, 256(sp)
    csrr    t0, mcause
    sd      t0, 264(sp)
    csrr    t0, mtval
    sd      t0, 272(sp)
    csrr    t0, mstatus
    sd      t0, 280(sp)
    mv      a0, sp
    la      t0, trap_handler
    ld      t0, 0(t0)
    jalr    t0
    ld      t0, 256(sp)
    csrw    mepc, t0
    ld      t0, 280(sp)
    csrw    mstatus, t0
    ld      x1, 8(sp)
    ld      x3, 24(sp)
    ld      x4, 32(sp)
    ld      x5, 40(sp)
    ld      x6, 48(sp)
    ld      x7, 56(sp)
    ld      x8, 64(sp)
    ld      x9, 72(sp)
    ld      x10, 80(sp)
    ld      x11, 88(sp)
    ld      x12, 96(sp)
    ld      x13, 104(sp)
    ld      x14, 112(sp)
    ld      x15, 120(sp)
    ld      x16, 128(sp)
    ld      x17, 136(sp)
    ld      x18, 144(sp)
    ld      x19, 152(sp)
    ld      x20, 160(sp)
    ld      x21, 168(sp)
    ld      x22, 176(sp)
    ld      x23, 184(sp)
    ld      x24, 192(sp)
    ld      x25, 200(sp)
    ld      x26, 208(sp)
    ld      x27, 216(sp)
    ld      x28, 224(sp)
    ld      x29, 232(sp)
    ld      x30, 240(sp)
    ld      x31, 248(sp)
    ld      x2, 16(sp)
    mret

# uint64_t run_user(uint64_t (*fn)(void)): call fn in U-mode on the current stack. fn returns to
# an ecall; the handler of that ecall (from U-mode) resumes M-mode at user_return (see
# user_return_from() in guest.h), which returns fn's a0 to run_user's caller.
    .globl run_user
    .globl user_return
run_user:
    addi    sp, sp, -112
    sd      ra, 0(sp)
    sd      s0, 8(sp)
    sd      s1, 16(sp)
    sd      s2, 24(sp)
    sd      s3, 32(sp)
    sd      s4, 40(sp)
    sd      s5, 48(sp)
    sd      s6, 56(sp)
    sd      s7, 64(sp)
    sd      s8, 72(sp)
    sd      s9, 80(sp)
    sd      s10, 88(sp)
    sd      s11, 96(sp)
    csrw    mscratch, sp
    csrw    mepc, a0
    li      t0, 0x1800
    csrc    mstatus, t0
    la      ra, 7f
    mret
7:  ecall
    j       7b
user_return:
    csrr    sp, mscratch
    ld      ra, 0(sp)
    ld      s0, 8(sp)
    ld      s1, 16(sp)
    ld      s2, 24(sp)
    ld      s3, 32(sp)
    ld      s4, 40(sp)
    ld      s5, 48(sp)
    ld      s6, 56(sp)
    ld      s7, 64(sp)
    ld      s8, 72(sp)
    ld      s9, 80(sp)
    ld      s10, 88(sp)
    ld      s11, 96(sp)
    addi    sp, sp, 112
    ret

    .section .data
    .align 2
    .globl bss_ready
bss_ready: .word 0
