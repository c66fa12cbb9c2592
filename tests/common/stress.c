#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "stress.h"

static void usage_exit(const char *name, bool until_fail, const char *what)
{
    fprintf(stderr, "%s: %s\nusage: %s [--duration SECONDS] [--seed N] [--threads N]%s\n", name,
            what, name, until_fail ? " [--until-fail]" : "");
    exit(2);
}

void vck_stress_parse(int argc, char **argv, struct vck_stress_args *args, const char *name)
{
    for (int i = 1; i < argc; i++) {
        const char *opt = argv[i];
        if (strcmp(opt, "--until-fail") == 0 && args->accepts_until_fail) {
            args->until_fail = true;
            continue;
        }
        if (i + 1 >= argc)
            usage_exit(name, args->accepts_until_fail, "missing value or unknown option");
        const char *val = argv[++i];
        char *end;
        errno = 0;
        if (strcmp(opt, "--duration") == 0) {
            args->duration = strtod(val, &end);
            if (errno || *end || !(args->duration > 0 && args->duration < 1e6))
                usage_exit(name, args->accepts_until_fail,
                           "--duration takes a positive number of seconds");
        } else if (strcmp(opt, "--seed") == 0) {
            args->seed = strtoull(val, &end, 0);
            if (errno || *end || val[0] == '-')
                usage_exit(name, args->accepts_until_fail, "--seed takes an unsigned integer");
        } else if (strcmp(opt, "--threads") == 0) {
            long n = strtol(val, &end, 0);
            if (errno || *end || n < 1 || n > 256)
                usage_exit(name, args->accepts_until_fail, "--threads takes 1 to 256");
            args->threads = (int)n;
        } else {
            usage_exit(name, args->accepts_until_fail, "unknown option");
        }
    }
    if (args->seed == 0) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        args->seed = ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec;
        if (args->seed == 0)
            args->seed = 1;
    }
}

double vck_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
