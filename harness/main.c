/*
 * vck-run: run a RISC-V program on the harness machine.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <vcpukit/harness.h>
#include <vcpukit/rcu.h>

static void usage(FILE *out)
{
    fputs("Usage: vck-run [options] prog.elf\n"
          "Run an RV64IMAC bare-metal program on a QEMU virt-like machine (-bios none), one\n"
          "host thread per hart.\n"
          "\n"
          "  --smp N          harts (1..64; default 1)\n"
          "  --mem SIZE       RAM at 0x80000000, with K, M or G suffix (default 128M)\n"
          "  --timeout SECS   stop a guest still running after SECS seconds (exit 5)\n"
          "  --stats          print per-hart and total statistics at the end (stderr)\n"
          "  --trace          print one line per executed block to stderr: 'B hart pc insns'\n"
          "                   (chaining is off while tracing)\n"
          "  --uart-stdin     feed the UART receiver from stdin even when it is a terminal\n"
          "  -h, --help       this help\n"
          "\n"
          "Exit status: the guest's (test finisher or HTIF: 0 pass, N fail), or 1 internal\n"
          "error, 2 bad command line, 3 unloadable program, 4 guest fault (exception with no\n"
          "handler), 5 timeout.\n",
          out);
}

static int bad_usage(const char *fmt, const char *arg)
{
    fputs("vck-run: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (try --help)\n", stderr);
    return VCK_EXIT_USAGE;
}

static bool parse_size(const char *s, uint64_t *out)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || end == s || s[0] == '-')
        return false;
    unsigned shift = 0;
    switch (*end) {
    case 'k':
    case 'K':
        shift = 10, end++;
        break;
    case 'm':
    case 'M':
        shift = 20, end++;
        break;
    case 'g':
    case 'G':
        shift = 30, end++;
        break;
    }
    if (*end || v == 0 || v > (UINT64_MAX >> shift))
        return false;
    *out = (uint64_t)v << shift;
    return true;
}

int main(int argc, char **argv)
{
    enum { OPT_SMP = 256, OPT_MEM, OPT_TIMEOUT, OPT_STATS, OPT_TRACE, OPT_STDIN };
    static const struct option longopts[] = {
        {"smp", required_argument, NULL, OPT_SMP},
        {"mem", required_argument, NULL, OPT_MEM},
        {"timeout", required_argument, NULL, OPT_TIMEOUT},
        {"stats", no_argument, NULL, OPT_STATS},
        {"trace", no_argument, NULL, OPT_TRACE},
        {"uart-stdin", no_argument, NULL, OPT_STDIN},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct vck_machine_options opts = {.harts = 1, .ram_size = 128ull << 20};
    bool stats = false;
    opterr = 0;
    int c;
    /* The leading ':' makes a missing value ':' rather than '?', to say which it was. */
    while ((c = getopt_long(argc, argv, ":h", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case OPT_SMP: {
            long n = strtol(optarg, &end, 10);
            if (*end || end == optarg || n < 1 || n > 64)
                return bad_usage("--smp takes 1 to 64 harts, not '%s'", optarg);
            opts.harts = (unsigned)n;
            break;
        }
        case OPT_MEM:
            if (!parse_size(optarg, &opts.ram_size) || opts.ram_size % 4096 ||
                opts.ram_size > (16ull << 30))
                return bad_usage("--mem takes a size from 4K to 16G in whole 4 KiB pages, not '%s'",
                                 optarg);
            break;
        case OPT_TIMEOUT:
            opts.timeout = strtod(optarg, &end);
            if (*end || end == optarg || !(opts.timeout > 0) || !isfinite(opts.timeout))
                return bad_usage("--timeout takes a positive number of seconds, not '%s'", optarg);
            break;
        case OPT_STATS:
            stats = true;
            break;
        case OPT_TRACE:
            opts.trace = true;
            break;
        case OPT_STDIN:
            opts.uart_stdin = true;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case ':':
            return bad_usage("option '%s' needs a value", argv[optind - 1]);
        default:
            if (optopt > 0 && optopt < 128)
                return bad_usage("unknown option '-%s'", (char[]){(char)optopt, 0});
            return bad_usage("unknown option '%s'", argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return bad_usage("%s", optind >= argc ? "no program given" : "more than one program given");

    vck_rcu_register_thread();
    struct vck_machine *m = vck_machine_new(&opts);
    if (!m)
        return VCK_EXIT_INTERNAL;
    char err[512];
    int rc = vck_machine_load_elf(m, argv[optind], err, sizeof(err));
    if (rc) {
        fprintf(stderr, "vck-run: %s\n", err);
    } else {
        rc = vck_machine_run(m);
        if (stats)
            vck_machine_print_stats(m, stderr);
    }
    vck_machine_free(m);
    vck_rcu_unregister_thread();
    return rc;
}
