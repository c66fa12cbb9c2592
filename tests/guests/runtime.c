/* The guest runtime (see guest.h). */
#include "guest.h"

void putc_uart(char c)
{
    while (!(mmio_read8(UART_BASE + 5) & 0x20))
        ;
    mmio_write8(UART_BASE, (uint8_t)c);
}

void puts_uart(const char *s)
{
    while (*s)
        putc_uart(*s++);
}

void print_u64(uint64_t v)
{
    char buf[24];
    int i = 0;
    do {
        buf[i++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    while (i)
        putc_uart(buf[--i]);
}

void print_hex(uint64_t v)
{
    puts_uart("0x");
    for (int s = 60; s >= 0; s -= 4)
        putc_uart("0123456789abcdef"[(v >> s) & 15]);
}

static volatile int output_lock;

void lock_output(void)
{
    while (__atomic_exchange_n(&output_lock, 1, __ATOMIC_ACQUIRE))
        ;
}

void unlock_output(void)
{
    __atomic_store_n(&output_lock, 0, __ATOMIC_RELEASE);
}

_Noreturn void guest_exit(int code)
{
    mmio_write32(TEST_BASE, code ? ((uint32_t)code << 16) | 0x3333 : 0x5555);
    for (;;)
        __asm__ volatile("wfi");
}

uint64_t mtime(void)
{
    return mmio_read64(CLINT_MTIME);
}

void delay_us(uint64_t us)
{
    uint64_t end = mtime() + us * 10;
    while (mtime() < end)
        ;
}

/*
 * How many harts run is not told to a -bios none program (QEMU passes a device tree, we pass
 * nothing): every hart checks in, and hart 0 waits until no new one has arrived for 20 ms.
 */
static volatile unsigned arrived, harts_total;
static volatile int go;

void guest_start(unsigned hart);
void guest_start(unsigned hart)
{
    __atomic_fetch_add(&arrived, 1, __ATOMIC_ACQ_REL);
    if (hart == 0) {
        unsigned seen = 0;
        uint64_t quiet_since = mtime();
        while (mtime() - quiet_since < 200000) {
            unsigned now = __atomic_load_n(&arrived, __ATOMIC_ACQUIRE);
            if (now != seen) {
                seen = now;
                quiet_since = mtime();
            }
        }
        harts_total = seen;
        __atomic_store_n(&go, 1, __ATOMIC_RELEASE);
        guest_exit(main(0, seen));
    }
    while (!__atomic_load_n(&go, __ATOMIC_ACQUIRE))
        ;
    main(hart, harts_total);
    for (;;)
        __asm__ volatile("wfi");
}
