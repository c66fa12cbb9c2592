/*
 * Loading a RISC-V 64-bit executable with libelf's gelf API: every PT_LOAD segment into RAM at
 * its physical address (as QEMU's -kernel does), and the HTIF symbols tohost / fromhost.
 * Every way a file can be wrong ends in a one-line message and VCK_EXIT_BAD_ELF; nothing is
 * written to RAM until the whole file has been checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <gelf.h>
#include <inttypes.h>
#include <libelf.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static int fail(char *err, size_t size, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static int fail(char *err, size_t size, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, size, fmt, ap);
    va_end(ap);
    return VCK_EXIT_BAD_ELF;
}

static void find_htif_symbols(struct machine *m, Elf *elf)
{
    Elf_Scn *scn = NULL;
    while ((scn = elf_nextscn(elf, scn))) {
        GElf_Shdr sh;
        if (!gelf_getshdr(scn, &sh) || sh.sh_type != SHT_SYMTAB || !sh.sh_entsize)
            continue;
        Elf_Data *data = elf_getdata(scn, NULL);
        size_t n = data ? sh.sh_size / sh.sh_entsize : 0;
        for (size_t i = 0; i < n; i++) {
            GElf_Sym sym;
            if (!gelf_getsym(data, (int)i, &sym))
                continue;
            const char *name = elf_strptr(elf, sh.sh_link, sym.st_name);
            if (!name || sym.st_size < 8 || sym.st_value < VCK_VIRT_RAM_BASE ||
                sym.st_value - VCK_VIRT_RAM_BASE > m->ram_size - 8 || (sym.st_value & 7))
                continue;
            if (!strcmp(name, "tohost"))
                m->tohost = sym.st_value;
            else if (!strcmp(name, "fromhost"))
                m->fromhost = sym.st_value;
        }
    }
}

int vck_machine_load_elf(struct vck_machine *vm, const char *path, char *err, size_t err_size)
{
    struct machine *m = (struct machine *)vm;
    if (elf_version(EV_CURRENT) == EV_NONE)
        return fail(err, err_size, "libelf is out of date");
    int fd = open(path, O_RDONLY);
    if (fd < 0)
        return fail(err, err_size, "cannot open %s: %s", path, strerror(errno));
    int rc = VCK_EXIT_BAD_ELF;
    Elf *elf = elf_begin(fd, ELF_C_READ, NULL);
    struct segment *segs = NULL;
    size_t n_segs = 0;
    GElf_Ehdr eh;
    if (!elf || elf_kind(elf) != ELF_K_ELF || !gelf_getehdr(elf, &eh)) {
        fail(err, err_size, "%s: not an ELF file", path);
        goto out;
    }
    if (gelf_getclass(elf) != ELFCLASS64) {
        fail(err, err_size, "%s: a 32-bit ELF file; vck-run runs RV64 programs", path);
        goto out;
    }
    if (eh.e_machine != EM_RISCV) {
        fail(err, err_size, "%s: not a RISC-V program (ELF machine %u)", path, eh.e_machine);
        goto out;
    }
    if (eh.e_ident[EI_DATA] != ELFDATA2LSB || eh.e_type != ET_EXEC) {
        fail(err, err_size, "%s: not a little-endian RISC-V executable", path);
        goto out;
    }
    size_t n_phdr;
    if (elf_getphdrnum(elf, &n_phdr)) {
        fail(err, err_size, "%s: unreadable program headers (%s)", path, elf_errmsg(-1));
        goto out;
    }
    segs = calloc(n_phdr ? n_phdr : 1, sizeof(*segs));
    if (!segs) {
        fail(err, err_size, "%s: out of memory", path);
        goto out;
    }
    off_t file_size = lseek(fd, 0, SEEK_END);
    for (size_t i = 0; i < n_phdr; i++) {
        GElf_Phdr ph;
        if (!gelf_getphdr(elf, (int)i, &ph)) {
            fail(err, err_size, "%s: unreadable program header %zu", path, i);
            goto out;
        }
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0)
            continue;
        if (ph.p_filesz > ph.p_memsz) {
            fail(err, err_size, "%s: segment %zu has more file bytes than memory bytes", path, i);
            goto out;
        }
        uint64_t lo = ph.p_paddr, end = ph.p_paddr + ph.p_memsz;
        if (lo < VCK_VIRT_RAM_BASE || end < lo || end - VCK_VIRT_RAM_BASE > m->ram_size) {
            fail(err, err_size,
                 "%s: segment %zu at %#" PRIx64 " (%#" PRIx64
                 " bytes) is outside RAM [%#llx, %#llx)",
                 path, i, lo, (uint64_t)ph.p_memsz, VCK_VIRT_RAM_BASE,
                 VCK_VIRT_RAM_BASE + (unsigned long long)m->ram_size);
            goto out;
        }
        if (ph.p_offset > (uint64_t)file_size || ph.p_filesz > (uint64_t)file_size - ph.p_offset) {
            fail(err, err_size, "%s: truncated (segment %zu's bytes run past the end of the file)",
                 path, i);
            goto out;
        }
        struct segment *s = &segs[n_segs++];
        s->addr = lo;
        s->memsz = ph.p_memsz;
        s->filesz = ph.p_filesz;
        s->data = malloc(ph.p_filesz ? ph.p_filesz : 1);
        Elf_Data *d = ph.p_filesz
                          ? elf_getdata_rawchunk(elf, (int64_t)ph.p_offset, ph.p_filesz, ELF_T_BYTE)
                          : NULL;
        if (!s->data || (ph.p_filesz && (!d || d->d_size != ph.p_filesz))) {
            fail(err, err_size, "%s: cannot read segment %zu (%s)", path, i, elf_errmsg(-1));
            goto out;
        }
        if (ph.p_filesz)
            memcpy(s->data, d->d_buf, ph.p_filesz);
    }
    if (!n_segs) {
        fail(err, err_size, "%s: no loadable segment", path);
        goto out;
    }
    bool entry_loaded = false;
    for (size_t i = 0; i < n_segs && !entry_loaded; i++)
        entry_loaded = eh.e_entry - segs[i].addr < segs[i].memsz;
    if (!entry_loaded || (eh.e_entry & 1)) {
        fail(err, err_size, "%s: entry point %#" PRIx64 " is %s", path, (uint64_t)eh.e_entry,
             entry_loaded ? "not 2-byte aligned" : "in no loadable segment");
        goto out;
    }
    find_htif_symbols(m, elf);
    m->segments = segs;
    m->n_segments = n_segs;
    segs = NULL;
    m->entry = eh.e_entry;
    for (size_t i = 0; i < m->n_segments; i++) {
        struct segment *s = &m->segments[i];
        uint8_t *dst = m->ram_host + (s->addr - VCK_VIRT_RAM_BASE);
        memcpy(dst, s->data, s->filesz);
        memset(dst + s->filesz, 0, s->memsz - s->filesz);
    }
    if (m->tohost)
        machine_protect_page(m, m->tohost & PAGE_MASK); /* stores to tohost must be seen */
    rc = 0;
out:
    if (segs) {
        for (size_t i = 0; i < n_segs; i++)
            free(segs[i].data);
        free(segs);
    }
    if (elf)
        elf_end(elf);
    close(fd);
    return rc;
}
