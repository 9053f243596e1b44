/* cli/common — helpers shared by the duet subcommands. */
#include "cli/common.h"

#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/base.h"

bool duet_cli_is_dir(const char *p)
{
    struct stat sb;
    return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

const char *duet_cli_default_model(char *buf, size_t cap)
{
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash)
            *slash = 0;
        static const char *rel[] = {"/../share/duet/models/", "/../models/", "/../../models/"};
        for (size_t i = 0; i < DUET_ARRAY_LEN(rel); i++) {
            int w = snprintf(buf, cap, "%s%s%s", exe, rel[i], DUET_CLI_DEFAULT_MODEL);
            if (w > 0 && (size_t)w < cap && duet_cli_is_dir(buf))
                return buf;
        }
    }
#ifdef DUET_SOURCE_DIR
    int w = snprintf(buf, cap, "%s/models/%s", DUET_SOURCE_DIR, DUET_CLI_DEFAULT_MODEL);
    if (w > 0 && (size_t)w < cap && duet_cli_is_dir(buf))
        return buf;
#endif
    return NULL;
}

void duet_cli_progress(void *arg, size_t done, size_t total)
{
    if (!isatty(STDERR_FILENO) || total == 0)
        return;
    const char *label = arg ? (const char *)arg : "loading";
    int pct = (int)((double)done * 100.0 / (double)total);
    int bars = pct / 4;
    char bar[26];
    for (int i = 0; i < 25; i++)
        bar[i] = i < bars ? '#' : '.';
    bar[25] = 0;
    fprintf(stderr, "\r%s [%s] %3d%% %.0f/%.0f MB", label, bar, pct, (double)done / 1e6,
            (double)total / 1e6);
    if (done >= total)
        fputc('\n', stderr);
    fflush(stderr);
}

bool duet_cli_num_opt(const char *cmd, const char *opt, const char *v, double lo, double hi,
                      double *out)
{
    char *end = NULL;
    errno = 0;
    double d = strtod(v, &end);
    if (end == v || *end || errno == ERANGE || !isfinite(d) || d < lo || d > hi) {
        fprintf(stderr, "duet %s: %s '%s': expected a number in %g..%g\n", cmd, opt, v, lo, hi);
        return false;
    }
    *out = d;
    return true;
}

bool duet_cli_int_opt(const char *cmd, const char *opt, const char *v, long lo, long hi, int *out)
{
    char *end = NULL;
    errno = 0;
    long x = strtol(v, &end, 10);
    if (end == v || *end || errno == ERANGE || x < lo || x > hi) {
        fprintf(stderr, "duet %s: %s '%s': expected a whole number in %ld..%ld\n", cmd, opt, v,
                lo, hi);
        return false;
    }
    *out = (int)x;
    return true;
}
