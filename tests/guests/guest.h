/*
 * The guest programs' runtime: UART output, the test finisher, a hart rendezvous, CLINT.
 * Each program defines int main(unsigned hart, unsigned harts); hart 0's result ends the run.
 */
#ifndef VCK_GUEST_H
#define VCK_GUEST_H

#include <stdint.h>

#define UART_BASE   0x10000000ul
#define TEST_BASE   0x100000ul
#define CLINT_BASE  0x2000000ul
#define CLINT_MTIME (CLINT_BASE + 0xbff8)

static inline uint8_t mmio_read8(uintptr_t a) { return *(volatile uint8_t *)a; }
static inline void mmio_write8(uintptr_t a, uint8_t v) { *(volatile uint8_t *)a = v; }
static inline uint32_t mmio_read32(uintptr_t a) { return *(volatile uint32_t *)a; }
static inline void mmio_write32(uintptr_t a, uint32_t v) { *(volatile uint32_t *)a = v; }
static inline uint64_t mmio_read64(uintptr_t a) { return *(volatile uint64_t *)a; }
static inline void mmio_write64(uintptr_t a, uint64_t v) { *(volatile uint64_t *)a = v; }

#define csr_read(name)                                                                             \
    ({                                                                                             \
        unsigned long v_;                                                                          \
        __asm__ volatile("csrr %0, " #name : "=r"(v_));                                            \
        v_;                                                                                        \
    })
#define csr_write(name, v) __asm__ volatile("csrw " #name ", %0" : : "r"((unsigned long)(v)))
#define csr_set(name, v)   __asm__ volatile("csrs " #name ", %0" : : "r"((unsigned long)(v)))
#define csr_clear(name, v) __asm__ volatile("csrc " #name ", %0" : : "r"((unsigned long)(v)))

void putc_uart(char c);
void puts_uart(const char *s); /* no newline added */
void print_u64(uint64_t v);
void print_hex(uint64_t v);
/* Serialised output: whole lines from several harts do not interleave. */
void lock_output(void);
void unlock_output(void);

_Noreturn void guest_exit(int code); /* 0: pass */
uint64_t mtime(void);               /* 10 MHz */
void delay_us(uint64_t us);

int main(unsigned hart, unsigned harts);

#endif
