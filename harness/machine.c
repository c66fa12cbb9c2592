/*
 * The machine: QEMU virt's memory map built from vcpukit/rcu.h regions, its devices, the harts'
 * threads, the timer, and the end of a run.
 *
 * Only this file knows the memory map. Devices are MMIO regions whose callbacks run on the
 * accessing hart's thread, inside its read-side section; the remap device changes the memory
 * map from inside one (the memmap never waits for a grace period there). A listener's commit
 * bumps map_gen, clears every hart's TLB and jump cache at once, and then invalidates the blocks
 * of RAM that went away; a block translated across the change is refused by vck_tb_add
 * (block_map_current()), since it may have read the old view. Harts use TLB
 * entries only inside read-side sections, so no entry outlives the region it points into.
 *
 * Code pages. Before a hart translates from a RAM page, the page is made to trap writes on every
 * hart: its bit in write_trap is set, every hart's write entry for it is cleared, and a grace
 * period passes (harts use TLB entries only inside sections, so a store already past its TLB
 * check has landed); only then is its bit in write_protected set, which is what translation
 * checks (a hart that sees write_trap set by another may not yet translate: that one's grace
 * period may still be running). Stores to a trapping page take the slow path, which stores and then
 * invalidates the blocks it overwrote, bumping the page's generation so that a translation that
 * read the old bytes is refused by vck_tb_add. Bits are never cleared: a page that once held
 * code keeps taking the slow path for stores (correct; slower for a page reused as data).
 */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"

#define ARENA_SIZE       (64u << 20)
#define UART_SIZE        0x100
#define CLINT_SIZE       0x10000
#define TEST_SIZE        0x1000
#define REMAP_SIZE       0x1000
#define REMAP_BANKS_BASE 0x42000000ull
#define REMAP_ID         0x76636b52u /* "vckR" */

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t machine_mtime(struct machine *m)
{
    return (now_ns() - m->time_base_ns) / 100; /* 10 MHz */
}

void machine_end(struct machine *m, int code, const char *fault_fmt, ...)
{
    pthread_mutex_lock(&m->end_lock);
    bool first = !m->ended;
    if (first) {
        __atomic_store_n(&m->ended, true, __ATOMIC_RELEASE);
        m->exit_code = code;
        if (fault_fmt) {
            va_list ap;
            va_start(ap, fault_fmt);
            vsnprintf(m->fault, sizeof(m->fault), fault_fmt, ap);
            va_end(ap);
        }
        pthread_cond_broadcast(&m->end_cond);
    }
    pthread_mutex_unlock(&m->end_lock);
    if (!first)
        return; /* the harts were told already (a late stop would outlive a reset) */
    for (unsigned i = 0; i < m->n_harts; i++)
        hart_kick(&m->harts[i], EV_STOP);
    pthread_mutex_lock(&m->timer_lock);
    pthread_cond_signal(&m->timer_cond);
    pthread_mutex_unlock(&m->timer_lock);
}

void machine_request_reset(struct machine *m)
{
    pthread_mutex_lock(&m->end_lock);
    m->reset_requested = !m->ended;
    pthread_mutex_unlock(&m->end_lock);
    machine_end(m, 0, NULL);
}

/* ---- code pages -------------------------------------------------------------------------- */

/*
 * Bit @addr's page has in a per-page bitmap of main RAM, loaded with @order; true outside main
 * RAM, where every store takes the slow path from the start.
 */
static bool ram_page_bit(const struct machine *m, _Atomic uint64_t *bitmap, uint64_t addr,
                         memory_order order)
{
    if (addr < VCK_VIRT_RAM_BASE || addr - VCK_VIRT_RAM_BASE >= m->ram_size)
        return true;
    uint64_t page = (addr - VCK_VIRT_RAM_BASE) >> PAGE_BITS;
    return atomic_load_explicit(&bitmap[page / 64], order) >> (page % 64) & 1;
}

bool machine_store_trapped(struct machine *m, uint64_t addr)
{
    /* seq_cst: pairs with machine_protect_page() and tlb_fill()'s re-check. */
    return ram_page_bit(m, m->write_trap, addr, memory_order_seq_cst);
}

static void trap_writes(struct machine *m, uint64_t page_addr)
{
    uint64_t page = (page_addr - VCK_VIRT_RAM_BASE) >> PAGE_BITS;
    atomic_fetch_or_explicit(&m->write_trap[page / 64], 1ull << (page % 64), memory_order_seq_cst);
    uint64_t tag = (page_addr >> PAGE_BITS) + 1;
    for (unsigned i = 0; i < m->n_harts; i++) {
        struct tlb_entry *e = &m->harts[i].tlb[(page_addr >> PAGE_BITS) % TLB_ENTRIES];
        uint64_t expected = tag;
        atomic_compare_exchange_strong_explicit(&e->write_tag, &expected, 0, memory_order_seq_cst,
                                                memory_order_relaxed);
    }
}

bool machine_page_protected(struct machine *m, uint64_t addr)
{
    /* Acquire: pairs with the release in machine_protect_page(), after the grace period. */
    return ram_page_bit(m, m->write_protected, addr, memory_order_acquire);
}

void machine_protect_page(struct machine *m, uint64_t page_addr)
{
    /*
     * Not "write_trap is set": another hart may have set it and still be waiting for its grace
     * period, with a store that passed its TLB check before the clear not yet landed. Redoing
     * the clear is harmless, and the wait is what makes the page safe to translate from.
     */
    if (machine_page_protected(m, page_addr))
        return;
    trap_writes(m, page_addr);
    /* Stores that passed their TLB check before the clear are done once every section is. */
    vck_rcu_synchronize();
    uint64_t page = (page_addr - VCK_VIRT_RAM_BASE) >> PAGE_BITS;
    atomic_fetch_or_explicit(&m->write_protected[page / 64], 1ull << (page % 64),
                             memory_order_release);
}

/* ---- HTIF -------------------------------------------------------------------------------- */

void machine_tohost_write(struct machine *m, struct hart *h, uint64_t value)
{
    (void)h;
    if (!value)
        return;
    unsigned device = (unsigned)(value >> 56), cmd = (unsigned)(value >> 48) & 0xff;
    uint8_t *tohost = m->ram_host + (m->tohost - VCK_VIRT_RAM_BASE);
    if (device == 0 && cmd == 0 && (value & 1)) {
        uint64_t code = (value & 0xffffffffffffull) >> 1;
        machine_end(m, code == 0 ? 0 : (code & 0xff ? (int)(code & 0xff) : 1),
                    code ? "guest reported failure %" PRIu64 " through HTIF" : NULL, code);
        return;
    }
    if (device == 1 && cmd == 1) {
        pthread_mutex_lock(&m->uart.lock);
        fputc((int)(value & 0xff), m->uart.out);
        fflush(m->uart.out);
        pthread_mutex_unlock(&m->uart.lock);
        if (m->fromhost) {
            uint8_t *fromhost = m->ram_host + (m->fromhost - VCK_VIRT_RAM_BASE);
            __atomic_store_n((uint64_t *)fromhost, (1ull << 56) | (1ull << 48) | 1,
                             __ATOMIC_RELEASE);
        }
    }
    __atomic_store_n((uint64_t *)tohost, 0, __ATOMIC_RELEASE);
}

/* ---- the test finisher ------------------------------------------------------------------- */

static enum vck_mem_result test_read(void *opaque, uint64_t off, uint64_t *v, unsigned size)
{
    (void)opaque, (void)off, (void)size;
    *v = 0;
    return VCK_MEM_OK;
}

static enum vck_mem_result test_write(void *opaque, uint64_t off, uint64_t v, unsigned size)
{
    struct machine *m = opaque;
    (void)size;
    if (off != 0)
        return VCK_MEM_OK;
    unsigned code = (unsigned)(v >> 16) & 0xffff;
    switch (v & 0xffff) {
    case 0x5555:
        machine_end(m, 0, NULL);
        break;
    case 0x3333:
        machine_end(m, code & 0xff ? (int)(code & 0xff) : 1,
                    "guest reported failure %u through the test finisher", code);
        break;
    case 0x7777:
        machine_request_reset(m);
        break;
    }
    return VCK_MEM_OK;
}

static const struct vck_mr_ops test_ops = {
    .read = test_read, .write = test_write, .min_access = 4, .max_access = 4};

/* ---- CLINT ------------------------------------------------------------------------------- */

static void set_mip(struct hart *h, uint64_t bit, bool on)
{
    uint64_t old = on ? atomic_fetch_or_explicit(&h->mip, bit, memory_order_acq_rel)
                      : atomic_fetch_and_explicit(&h->mip, ~bit, memory_order_acq_rel);
    if (on && !(old & bit))
        hart_kick(h, EV_IRQ);
}

static void *timer_main(void *arg)
{
    struct machine *m = arg;
    pthread_mutex_lock(&m->timer_lock);
    while (!__atomic_load_n(&m->ended, __ATOMIC_ACQUIRE)) {
        uint64_t now = machine_mtime(m), next = UINT64_MAX;
        for (unsigned i = 0; i < m->n_harts; i++) {
            uint64_t cmp = atomic_load_explicit(&m->mtimecmp[i], memory_order_acquire);
            set_mip(&m->harts[i], MIP_MTIP, cmp <= now);
            if (cmp > now && cmp < next)
                next = cmp;
        }
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        /* At most 100 ms (10^6 ticks), computed before the multiply can overflow. */
        uint64_t wait_ns = next - now < 1000000u ? (next - now) * 100 : 100000000ull;
        until.tv_nsec += (long)(wait_ns % 1000000000u);
        until.tv_sec += (time_t)(wait_ns / 1000000000u) + until.tv_nsec / 1000000000;
        until.tv_nsec %= 1000000000;
        pthread_cond_timedwait(&m->timer_cond, &m->timer_lock, &until);
    }
    pthread_mutex_unlock(&m->timer_lock);
    return NULL;
}

static enum vck_mem_result clint_read(void *opaque, uint64_t off, uint64_t *v, unsigned size)
{
    struct machine *m = opaque;
    uint64_t value = 0, base = off & ~7ull;
    if (off < 0x4000) {
        unsigned h = (unsigned)(off / 4);
        value = h < m->n_harts ? (atomic_load(&m->harts[h].mip) & MIP_MSIP) != 0 : 0;
        *v = value;
        return VCK_MEM_OK;
    }
    if (off >= 0x4000 && off < 0x4000 + 8ull * m->n_harts)
        value = atomic_load(&m->mtimecmp[(base - 0x4000) / 8]);
    else if (base == 0xbff8)
        value = machine_mtime(m);
    else
        return VCK_MEM_OK;
    *v = size == 8 ? value : (uint32_t)(value >> (8 * (off & 4)));
    return VCK_MEM_OK;
}

static enum vck_mem_result clint_write(void *opaque, uint64_t off, uint64_t v, unsigned size)
{
    struct machine *m = opaque;
    if (off < 0x4000) {
        unsigned h = (unsigned)(off / 4);
        if (h < m->n_harts && (off & 3) == 0)
            set_mip(&m->harts[h], MIP_MSIP, v & 1);
        return VCK_MEM_OK;
    }
    if (off >= 0x4000 && off < 0x4000 + 8ull * m->n_harts) {
        unsigned h = (unsigned)((off - 0x4000) / 8);
        /*
         * Under the timer thread's lock: otherwise it could load the old, expired value, and set
         * MTIP after this cleared it for the new one. The read-modify-write of a half is under
         * it too, so two harts writing the two halves lose neither.
         */
        pthread_mutex_lock(&m->timer_lock);
        uint64_t old = atomic_load(&m->mtimecmp[h]), nv;
        if (size == 8)
            nv = v;
        else if (off & 4)
            nv = (old & 0xffffffffull) | (v << 32);
        else
            nv = (old & ~0xffffffffull) | (uint32_t)v;
        atomic_store(&m->mtimecmp[h], nv);
        if (nv > machine_mtime(m))
            set_mip(&m->harts[h], MIP_MTIP, false);
        pthread_cond_signal(&m->timer_cond);
        pthread_mutex_unlock(&m->timer_lock);
    }
    /* mtime is read-only here: it follows host time. */
    return VCK_MEM_OK;
}

static const struct vck_mr_ops clint_ops = {
    .read = clint_read, .write = clint_write, .min_access = 4, .max_access = 8};

/* ---- UART (NS16550A) --------------------------------------------------------------------- */

/* A received byte, or -1. Non-blocking. UART lock held. */
static int uart_peek__locked(struct uart *u)
{
    if (u->peeked >= 0 || u->in_fd < 0 || u->eof)
        return u->peeked;
    struct pollfd p = {.fd = u->in_fd, .events = POLLIN};
    if (poll(&p, 1, 0) == 1) {
        unsigned char c;
        ssize_t n = read(u->in_fd, &c, 1);
        if (n == 1)
            u->peeked = c;
        else
            u->eof = true;
    }
    return u->peeked;
}

static enum vck_mem_result uart_read(void *opaque, uint64_t off, uint64_t *v, unsigned size)
{
    struct uart *u = opaque;
    (void)size;
    pthread_mutex_lock(&u->lock);
    bool dlab = u->lcr & 0x80;
    uint64_t value = 0;
    switch (off) {
    case 0:
        if (dlab) {
            value = u->dll;
        } else if (uart_peek__locked(u) >= 0) {
            value = (uint64_t)u->peeked;
            u->peeked = -1;
        }
        break;
    case 1:
        value = dlab ? u->dlm : u->ier;
        break;
    case 2:
        value = 0xc1; /* FIFOs enabled, no interrupt pending */
        break;
    case 3:
        value = u->lcr;
        break;
    case 4:
        value = u->mcr;
        break;
    case 5:
        value = 0x60 | (uart_peek__locked(u) >= 0); /* THR and transmitter empty; data ready */
        break;
    case 6:
        value = 0xb0;
        break;
    case 7:
        value = u->scr;
        break;
    }
    pthread_mutex_unlock(&u->lock);
    *v = value;
    return VCK_MEM_OK;
}

static enum vck_mem_result uart_write(void *opaque, uint64_t off, uint64_t v, unsigned size)
{
    struct uart *u = opaque;
    (void)size;
    pthread_mutex_lock(&u->lock);
    bool dlab = u->lcr & 0x80;
    switch (off) {
    case 0:
        if (dlab) {
            u->dll = (uint8_t)v;
        } else {
            fputc((int)(v & 0xff), u->out);
            if ((v & 0xff) == '\n')
                fflush(u->out);
        }
        break;
    case 1:
        if (dlab)
            u->dlm = (uint8_t)v;
        else
            u->ier = (uint8_t)v & 0x0f;
        break;
    case 3:
        u->lcr = (uint8_t)v;
        break;
    case 4:
        u->mcr = (uint8_t)v;
        break;
    case 7:
        u->scr = (uint8_t)v;
        break;
    }
    pthread_mutex_unlock(&u->lock);
    return VCK_MEM_OK;
}

static const struct vck_mr_ops uart_ops = {
    .read = uart_read, .write = uart_write, .min_access = 1, .max_access = 1};

/* ---- the remap device -------------------------------------------------------------------- */

/*
 * Registers (32-bit): 0x0 BANK (which of the four 64 KiB RAM banks the window at 0x40000000
 * shows), 0x4 ENABLE (1: the window is mapped), 0x8 ID (reads "vckR"). The banks are also always
 * visible at 0x42000000 + bank * 0x10000. A write commits a memory-map change from inside the
 * writing hart's read-side section.
 */
static enum vck_mem_result remap_read(void *opaque, uint64_t off, uint64_t *v, unsigned size)
{
    struct remap *r = opaque;
    (void)size;
    pthread_mutex_lock(&r->lock);
    *v = off == 0   ? atomic_load(&r->selected)
         : off == 4 ? atomic_load(&r->enabled)
         : off == 8 ? REMAP_ID
                    : 0;
    pthread_mutex_unlock(&r->lock);
    return VCK_MEM_OK;
}

static enum vck_mem_result remap_write(void *opaque, uint64_t off, uint64_t v, unsigned size)
{
    struct remap *r = opaque;
    (void)size;
    /*
     * Under the device lock, and the register stored only after the commit has published the
     * mapping: a hart that reads the new BANK then also sees the new bank, and two harts
     * writing at once leave register and mapping agreeing. Waiting for the lock inside a
     * read-side section is safe: the commit does not wait for grace periods there.
     */
    pthread_mutex_lock(&r->lock);
    if (off == 0) {
        unsigned bank = (unsigned)v % VCK_REMAP_BANKS;
        vck_mr_set_alias_target(r->window, r->banks[bank], 0);
        atomic_store(&r->selected, bank);
    } else if (off == 4) {
        vck_mr_set_enabled(r->window, v & 1);
        atomic_store(&r->enabled, (uint32_t)(v & 1));
    }
    pthread_mutex_unlock(&r->lock);
    return VCK_MEM_OK;
}

static const struct vck_mr_ops remap_ops = {
    .read = remap_read, .write = remap_write, .min_access = 4, .max_access = 4};

/* ---- the listener ------------------------------------------------------------------------ */

static struct machine *listener_machine(struct vck_mem_listener *l)
{
    return (struct machine *)((char *)l - offsetof(struct machine, listener));
}

static void on_region_del(struct vck_mem_listener *l, const struct vck_flat_range *r)
{
    struct machine *m = listener_machine(l);
    /*
     * Blocks of RAM that left this address are keyed by its host bytes, which may still be
     * mapped elsewhere; what must go is every chained jump into them from code that reached
     * them here. Noted now, invalidated in on_commit(), after the new view is out: a hart still
     * in a section that began before it may translate from the old view until then.
     */
    if (vck_mr_kind(r->mr) == VCK_MR_RAM) {
        uintptr_t host = (uintptr_t)vck_mr_host(r->mr) + r->offset;
        if (m->n_gone == m->cap_gone) {
            size_t cap = m->cap_gone ? 2 * m->cap_gone : 8;
            struct host_range *g = reallocarray(m->gone, cap, sizeof(*g));
            if (!g) {
                /* Cannot note it: the commit drops every block instead (correct, slower). */
                m->gone_all = true;
                return;
            }
            m->gone = g;
            m->cap_gone = cap;
        }
        m->gone[m->n_gone++] = (struct host_range){host, host + (r->last - r->start)};
    }
}

/*
 * The map changed: every hart's TLB entries and jump cache go now, synchronously, so that a
 * guest that orders its accesses after the change (the remap test's acknowledged switch) sees
 * the new map. A hart filling an entry meanwhile re-reads the generation and drops the entry.
 * Runs on the committing thread (maybe a hart, inside its MMIO write), under the writer lock.
 */
static void on_commit(struct vck_mem_listener *l, const struct vck_flatview *view)
{
    struct machine *m = listener_machine(l);
    (void)view;
    atomic_fetch_add_explicit(&m->map_gen, 1, memory_order_seq_cst);
    for (unsigned i = 0; i < m->n_harts; i++) {
        struct hart *h = &m->harts[i];
        for (unsigned j = 0; j < TLB_ENTRIES; j++) {
            atomic_store_explicit(&h->tlb[j].read_tag, 0, memory_order_seq_cst);
            atomic_store_explicit(&h->tlb[j].write_tag, 0, memory_order_seq_cst);
        }
        if (h->tbcpu)
            vck_tb_jc_flush_all(h->tbcpu);
    }
    /*
     * After the generation bump: a block translated from the old view and added before this
     * goes here; one added after it is refused by the add itself (block_map_current()).
     */
    hart_end_batch_soon();
    for (size_t i = 0; i < m->n_gone; i++)
        vck_tb_invalidate_range(m->tbc, m->gone[i].start, m->gone[i].last);
    if (m->gone_all)
        vck_tb_invalidate_range(m->tbc, 0, UINT64_MAX);
    m->n_gone = 0;
    m->gone_all = false;
}

/*
 * vck_tb_add's last check, under the block's page locks: the memory map has not changed since
 * the block was translated (it may have been read through the old view). seq_cst, against
 * on_commit()'s bump, which comes before its invalidation of the ranges that went: either the
 * add sees the bump and refuses, or it inserts first and the invalidation, which takes the
 * same page locks, finds the block.
 */
static bool block_map_current(void *opaque, const struct vck_tb *tb)
{
    const struct machine *m = opaque;
    return atomic_load_explicit(&m->map_gen, memory_order_seq_cst) ==
           ((const struct block *)tb)->map_gen;
}

/* ---- building the machine ---------------------------------------------------------------- */

/* Every region the machine made, in creation order, so that teardown can undo it backwards. */
static struct vck_mr *own(struct machine *m, struct vck_mr *mr)
{
    if (mr && m->n_owned < sizeof(m->owned) / sizeof(m->owned[0]))
        m->owned[m->n_owned++] = mr;
    else if (mr)
        abort(); /* the machine's own list is sized for its fixed set of regions */
    return mr;
}

static bool map_mmio(struct machine *m, const char *name, uint64_t base, uint64_t size,
                     const struct vck_mr_ops *ops, void *opaque)
{
    struct vck_mr *mr = own(m, vck_mr_new_mmio(m->mm, name, size, ops, opaque));
    if (!mr)
        return false;
    vck_mr_add_subregion(m->root, base, mr, 0);
    return true;
}

static bool build_remap(struct machine *m)
{
    struct remap *r = &m->remap;
    r->m = m;
    pthread_mutex_init(&r->lock, NULL);
    for (unsigned i = 0; i < VCK_REMAP_BANKS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "remap-bank%u", i);
        if (!(r->banks[i] = own(m, vck_mr_new_ram(m->mm, name, VCK_REMAP_WINDOW_SIZE))))
            return false;
        snprintf(name, sizeof(name), "remap-bank%u-direct", i);
        struct vck_mr *direct =
            own(m, vck_mr_new_alias(m->mm, name, r->banks[i], 0, VCK_REMAP_WINDOW_SIZE));
        if (!direct)
            return false;
        vck_mr_add_subregion(m->root, REMAP_BANKS_BASE + i * VCK_REMAP_WINDOW_SIZE, direct, 0);
    }
    r->window =
        own(m, vck_mr_new_alias(m->mm, "remap-window", r->banks[0], 0, VCK_REMAP_WINDOW_SIZE));
    if (!r->window)
        return false;
    atomic_store(&r->enabled, 1);
    vck_mr_add_subregion(m->root, VCK_REMAP_WINDOW_BASE, r->window, 0);
    return map_mmio(m, "remap", VCK_REMAP_BASE, REMAP_SIZE, &remap_ops, r);
}

struct vck_machine *vck_machine_new(const struct vck_machine_options *opts)
{
    struct machine *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    m->opts = *opts;
    if (!m->opts.trace_out)
        m->opts.trace_out = stderr;
    if (!m->opts.uart_out)
        m->opts.uart_out = stdout;
    m->ram_size = opts->ram_size;
    m->n_harts = opts->harts;
    pthread_mutex_init(&m->end_lock, NULL);
    pthread_cond_init(&m->end_cond, NULL);
    pthread_mutex_init(&m->timer_lock, NULL);
    pthread_cond_init(&m->timer_cond, NULL);
    pthread_mutex_init(&m->trace_lock, NULL);
    pthread_mutex_init(&m->uart.lock, NULL);
    m->uart.out = m->opts.uart_out;
    m->uart.peeked = -1;
    m->uart.in_fd = (opts->uart_stdin || !isatty(STDIN_FILENO)) ? STDIN_FILENO : -1;

    m->tbc = vck_tb_cache_new(&(struct vck_tb_cache_options){.page_bits = PAGE_BITS,
                                                             .jc_bits = JC_BITS,
                                                             .pc_shift = 1,
                                                             .validate = block_map_current,
                                                             .opaque = m});
    m->mm = vck_memmap_new(NULL);
    m->write_trap = calloc((m->ram_size / PAGE_SIZE + 63) / 64, sizeof(*m->write_trap));
    m->write_protected = calloc((m->ram_size / PAGE_SIZE + 63) / 64, sizeof(*m->write_protected));
    m->harts = aligned_alloc(64, m->n_harts * sizeof(*m->harts));
    if (m->harts)
        memset(m->harts, 0, m->n_harts * sizeof(*m->harts));
    m->mtimecmp = calloc(m->n_harts, sizeof(*m->mtimecmp));
    if (!m->tbc || !m->mm || !m->write_trap || !m->write_protected || !m->harts || !m->mtimecmp)
        goto fail;
    for (unsigned i = 0; i < m->n_harts; i++)
        atomic_store(&m->mtimecmp[i], UINT64_MAX);

    vck_memmap_begin(m->mm);
    m->root = own(m, vck_mr_new_container(m->mm, "system", VCK_MR_SIZE_FULL));
    m->ram = own(m, vck_mr_new_ram(m->mm, "ram", m->ram_size));
    bool ok = m->root && m->ram;
    if (ok) {
        vck_mr_add_subregion(m->root, VCK_VIRT_RAM_BASE, m->ram, 0);
        m->ram_host = vck_mr_host(m->ram);
        ok = map_mmio(m, "test-finisher", VCK_VIRT_TEST_BASE, TEST_SIZE, &test_ops, m) &&
             map_mmio(m, "clint", VCK_VIRT_CLINT_BASE, CLINT_SIZE, &clint_ops, m) &&
             map_mmio(m, "uart", VCK_VIRT_UART_BASE, UART_SIZE, &uart_ops, &m->uart) &&
             build_remap(m);
    }
    vck_memmap_commit(m->mm);
    if (!ok)
        goto fail;
    m->as = vck_as_new(m->mm, "memory", m->root);
    m->dispatch = m->as ? vck_dispatch_new(m->as, NULL) : NULL;
    if (!m->dispatch)
        goto fail;

    for (unsigned i = 0; i < m->n_harts; i++) {
        struct hart *h = &m->harts[i];
        h->m = m;
        h->id = i;
        h->tbcpu = vck_tb_cpu_new(m->tbc);
        h->arena_size = ARENA_SIZE;
        h->arena = mmap(NULL, ARENA_SIZE, PROT_READ | PROT_WRITE,
                        MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (!h->tbcpu || h->arena == MAP_FAILED)
            goto fail;
        vck_tb_code_region_add(m->tbc, h->arena, ARENA_SIZE);
        pthread_mutex_init(&h->sleep_lock, NULL);
        pthread_cond_init(&h->sleep_cond, NULL);
    }
    m->listener = (struct vck_mem_listener){.region_del = on_region_del, .commit = on_commit};
    vck_as_listener_register(m->as, &m->listener);
    return (struct vck_machine *)m;
fail:
    fprintf(stderr, "vck-run: cannot build the machine (out of memory?)\n");
    return NULL;
}

/* ---- running ----------------------------------------------------------------------------- */

static void load_segments(struct machine *m)
{
    for (size_t i = 0; i < m->n_segments; i++) {
        struct segment *s = &m->segments[i];
        uint8_t *dst = m->ram_host + (s->addr - VCK_VIRT_RAM_BASE);
        memcpy(dst, s->data, s->filesz);
        memset(dst + s->filesz, 0, s->memsz - s->filesz);
    }
}

int vck_machine_run(struct vck_machine *vm)
{
    struct machine *m = (struct machine *)vm;
    /* Past about three centuries the conversion to nanoseconds would overflow: no deadline. */
    uint64_t deadline = m->opts.timeout > 0 && m->opts.timeout < 1e10
                            ? now_ns() + (uint64_t)(m->opts.timeout * 1e9)
                            : 0;
    for (;;) {
        m->time_base_ns = now_ns();
        for (unsigned i = 0; i < m->n_harts; i++)
            hart_reset(&m->harts[i], m->entry);
        if (pthread_create(&m->timer_thread, NULL, timer_main, m)) {
            fprintf(stderr, "vck-run: cannot start the timer thread\n");
            return VCK_EXIT_INTERNAL;
        }
        for (unsigned i = 0; i < m->n_harts; i++) {
            if (pthread_create(&m->harts[i].thread, NULL, hart_main, &m->harts[i])) {
                fprintf(stderr, "vck-run: cannot start hart %u's thread\n", i);
                machine_end(m, VCK_EXIT_INTERNAL, NULL);
                for (unsigned j = 0; j < i; j++)
                    pthread_join(m->harts[j].thread, NULL);
                pthread_join(m->timer_thread, NULL);
                return VCK_EXIT_INTERNAL;
            }
        }
        pthread_mutex_lock(&m->end_lock);
        while (!m->ended) {
            if (!deadline) {
                pthread_cond_wait(&m->end_cond, &m->end_lock);
                continue;
            }
            uint64_t left = deadline > now_ns() ? deadline - now_ns() : 0;
            if (!left)
                break;
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            until.tv_nsec += (long)(left % 1000000000u);
            until.tv_sec += (time_t)(left / 1000000000u) + until.tv_nsec / 1000000000;
            until.tv_nsec %= 1000000000;
            pthread_cond_timedwait(&m->end_cond, &m->end_lock, &until);
        }
        bool timed_out = !m->ended;
        pthread_mutex_unlock(&m->end_lock);
        if (timed_out)
            machine_end(m, VCK_EXIT_TIMEOUT, "the guest ran past --timeout %g s", m->opts.timeout);
        for (unsigned i = 0; i < m->n_harts; i++)
            pthread_join(m->harts[i].thread, NULL);
        pthread_join(m->timer_thread, NULL);
        if (!m->reset_requested)
            break;
        /* The test finisher's reset: reload the program and start over with no blocks. */
        m->reset_requested = false;
        m->ended = false;
        load_segments(m);
        vck_tb_flush(m->tbc);
        for (unsigned i = 0; i < m->n_harts; i++)
            atomic_store(&m->mtimecmp[i], UINT64_MAX);
    }
    fflush(m->uart.out);
    if (m->fault[0])
        fprintf(stderr, "vck-run: %s\n", m->fault);
    return m->exit_code;
}

void vck_machine_print_stats(struct vck_machine *vm, FILE *out)
{
    struct machine *m = (struct machine *)vm;
    struct vck_tb_cache_stats cs;
    vck_tb_cache_get_stats(m->tbc, &cs);
    double secs = (double)(now_ns() - m->time_base_ns) / 1e9;
    struct hart_stats total = {0};
    uint64_t jc_hits = 0, tl = 0, th = 0;
    fprintf(out, "%-6s %14s %9s %10s %9s %9s %9s %10s %8s\n", "hart", "instructions", "MIPS",
            "translated", "jc-hit%", "tbl-look", "tbl-hit%", "chained", "traps");
    for (unsigned i = 0; i <= m->n_harts; i++) {
        const struct hart_stats *s;
        uint64_t hits, looks, hitsx;
        char name[16];
        if (i < m->n_harts) {
            struct hart *h = &m->harts[i];
            s = &h->st;
            looks = h->tbcpu->table_lookups;
            hits = s->lookups - looks; /* the jump cache answered what the table did not see */
            hitsx = h->tbcpu->table_hits;
            total.insns += s->insns;
            total.blocks_translated += s->blocks_translated;
            total.lookups += s->lookups;
            total.chained += s->chained;
            total.traps += s->traps;
            total.blocks_executed += s->blocks_executed;
            jc_hits += hits, tl += looks, th += hitsx;
            snprintf(name, sizeof(name), "%u", i);
        } else {
            s = &total;
            hits = jc_hits, looks = tl, hitsx = th;
            snprintf(name, sizeof(name), "total");
        }
        fprintf(out,
                "%-6s %14" PRIu64 " %9.1f %10" PRIu64 " %8.1f%% %9" PRIu64 " %8.1f%% %10" PRIu64
                " %8" PRIu64 "\n",
                name, s->insns, secs > 0 ? (double)s->insns / secs / 1e6 : 0.0,
                s->blocks_translated, s->lookups ? 100.0 * (double)hits / (double)s->lookups : 0.0,
                looks, looks ? 100.0 * (double)hitsx / (double)looks : 0.0, s->chained, s->traps);
    }
    fprintf(out,
            "blocks: %" PRIu64 " executed, %" PRIu64 " dispatched by chaining (%.1f%%); "
            "invalidated %" PRIu64 ", flushes %" PRIu64 ", stale translations refused %" PRIu64
            "; %.3f s\n",
            total.blocks_executed, total.chained,
            total.blocks_executed ? 100.0 * (double)total.chained / (double)total.blocks_executed
                                  : 0.0,
            cs.invalidated, cs.flushes, cs.stale_adds, secs);
}

void vck_machine_free(struct vck_machine *vm)
{
    struct machine *m = (struct machine *)vm;
    if (!m)
        return;
    if (m->as) {
        vck_as_listener_unregister(&m->listener);
        vck_as_destroy(m->as);
    }
    vck_rcu_barrier();
    vck_dispatch_free(m->dispatch);
    for (unsigned i = 0; m->harts && i < m->n_harts; i++) {
        struct hart *h = &m->harts[i];
        if (h->tbcpu)
            vck_tb_cpu_free(h->tbcpu);
    }
    vck_rcu_barrier();
    if (m->tbc)
        vck_tb_cache_free(m->tbc);
    for (unsigned i = 0; m->harts && i < m->n_harts; i++)
        if (m->harts[i].arena && m->harts[i].arena != MAP_FAILED)
            munmap(m->harts[i].arena, ARENA_SIZE);
    if (m->mm) {
        /* Backwards: aliases go before their targets, the root last. */
        vck_memmap_begin(m->mm);
        for (size_t i = m->n_owned; i-- > 0;) {
            struct vck_mr *parent = vck_mr_container(m->owned[i]);
            if (parent)
                vck_mr_del_subregion(parent, m->owned[i]);
            vck_mr_destroy(m->owned[i]);
        }
        vck_memmap_commit(m->mm);
        vck_memmap_free(m->mm);
    }
    for (size_t i = 0; i < m->n_segments; i++)
        free(m->segments[i].data);
    free(m->segments);
    free(m->harts);
    free(m->mtimecmp);
    free(m->gone);
    free(m->write_trap);
    free(m->write_protected);
    free(m);
}
