# The smallest program, linked by guest.ld or errors/low.ld: the loader must
# reject it before it runs (a 32-bit build, or an address outside RAM).
    .text
    .globl _start
_start:
    j       _start
