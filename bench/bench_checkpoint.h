/* bench_checkpoint.h — the benchmarks' shared random-weight checkpoint: the
 * mkmodel `bench` preset written once into a cache folder (bench_model and
 * bench_pipeline both read $DUET_BENCH_DIR, default /tmp/duet-bench-model).
 * Header-only: each benchmark is one C file. */
#ifndef DUET_BENCH_CHECKPOINT_H
#define DUET_BENCH_CHECKPOINT_H

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"
#include "model/mkmodel.h"

static void bench_checkpoint_progress(void *arg, size_t done, size_t total)
{
    int *last = arg;
    int pct = total ? (int)(100.0 * (double)done / (double)total) : 100;
    if (pct / 10 == *last / 10)
        return;
    *last = pct;
    fprintf(stderr, "  %3d%% of %.2f GB\n", pct, (double)total / 1e9);
}

/* Write the bench preset into dir unless a complete one is there (the stamp
 * file is written last, so an interrupted write is redone). */
static duet_status_t bench_ensure_checkpoint(const char *dir)
{
    char stamp[4096];
    snprintf(stamp, sizeof(stamp), "%s/bench_model.complete", dir);
    if (access(stamp, R_OK) == 0)
        return DUET_OK;
    duet_mkmodel_opts_t o;
    duet_status_t st = duet_mkmodel_preset("bench", &o);
    if (st)
        return st;
    int last = -10;
    o.progress = bench_checkpoint_progress;
    o.progress_arg = &last;
    fprintf(stderr, "writing the bench checkpoint (%.2f GB) to %s, once ...\n",
            (double)duet_mkmodel_bytes(&o) / 1e9, dir);
    double t0 = duet_now_s();
    if ((st = duet_mkmodel_write(dir, &o)))
        return st;
    FILE *f = fopen(stamp, "w");
    if (!f)
        return duet_errorf(DUET_ERR_IO, "%s: %s", stamp, strerror(errno));
    fprintf(f, "bench preset, %llu parameters\n", (unsigned long long)duet_mkmodel_params(&o));
    fclose(f);
    fprintf(stderr, "  written in %.1f s\n", duet_now_s() - t0);
    return DUET_OK;
}

#endif /* DUET_BENCH_CHECKPOINT_H */
