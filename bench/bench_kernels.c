/* bench_kernels — numbers for the CPU kernels on the `bench` model shape
 * (Mixtral-like, hidden 1024, expert width 2816, vocab 32000, bf16).
 *
 * Prints, all from one run so they can be compared:
 *  - memory read bandwidth: a streaming-read kernel over a buffer far larger
 *    than L3, on the same number of threads as the kernels;
 *  - GEMV (decode) GB/s of bf16 weights for n = 1 and 8 rows, and its ratio
 *    to that bandwidth; weights rotate over copies totalling > 8× L3 so each
 *    call streams them from DRAM as a real decode step does; the same for
 *    n = 16/32/64 (an expert's rows in batched decode), with GFLOP/s;
 *  - GEMM (prefill) GFLOP/s for n = 64/128/512 rows: duet's kernel on bf16
 *    weights, OpenBLAS sgemm on pre-converted f32 weights (baseline), and
 *    "convert to f32 per call (on the pool) + sgemm"; weights stay in cache
 *    here (prefill is compute-bound);
 *  - one batch-1 decode step's matmuls over ~544 MB of distinct bf16
 *    weights, as tokens/s against the read-bandwidth roofline;
 *  - duet_cpu_pool_run overhead, with workers spinning and asleep.
 * Every figure is the median of several repetitions.
 *
 *  - with AVX512-BF16, the batched rows again in the opt-in bf16-activation
 *    precision (DUET_CPU_PREC_BF16), for all three shapes.
 *
 * usage: bench_kernels [--threads N] [--quick] [--huge] [--cpu-time] [--batch-only]
 *   --batch-only: only the batched-decode rows (exact, then bf16), quickly.
 *   --huge: weights and the bandwidth buffer in transparent huge pages
 *   (madvise); fewer TLB misses make streaming faster.
 *   --cpu-time: time kernels by the calling thread's CPU time; only with
 *   --threads 1, for per-core numbers on a machine others are using. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "cpu/cpu_kernels.h"

void openblas_set_num_threads(int num_threads); /* not in every cblas.h */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t rng = 88172645463325252ull;
static float frand(void)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((double)(rng >> 11) / 9007199254740992.0 - 0.5);
}

static bool use_huge;     /* --huge: transparent huge pages for big buffers */
static bool use_cpu_time; /* --cpu-time: the caller's CPU time (with --threads 1) */

/* Kernel timings: wall clock, or with --cpu-time the calling thread's CPU
 * time, which a busy machine does not inflate by descheduling us. */
static uint64_t bench_clock(void)
{
    if (!use_cpu_time)
        return duet_now_ns();
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void *xmalloc(size_t n)
{
    size_t align = use_huge && n >= ((size_t)2 << 20) ? (size_t)2 << 20 : 64;
    n = (n + align - 1) / align * align;
    void *p = duet_aligned_alloc(align, n);
    if (!p) {
        fprintf(stderr, "bench_kernels: out of memory (%zu bytes)\n", n);
        exit(1);
    }
    if (align > 64)
        madvise(p, n, MADV_HUGEPAGE);
    return p;
}

/* ---- memory read bandwidth ------------------------------------------------ */

typedef struct read_job {
    const uint64_t *buf;
    size_t words;
    uint64_t sink[64];
} read_job_t;

__attribute__((target("avx2"))) static uint64_t read_range_avx2(const uint64_t *p, size_t n)
{
    typedef long long v4 __attribute__((vector_size(32)));
    v4 a0 = {0}, a1 = {0}, a2 = {0}, a3 = {0};
    const v4 *v = (const v4 *)p;
    size_t nv = n / 4, i = 0;
    for (; i + 8 <= nv; i += 8) {
        a0 ^= v[i] ^ v[i + 4];
        a1 ^= v[i + 1] ^ v[i + 5];
        a2 ^= v[i + 2] ^ v[i + 6];
        a3 ^= v[i + 3] ^ v[i + 7];
    }
    v4 s = a0 ^ a1 ^ a2 ^ a3;
    return (uint64_t)(s[0] ^ s[1] ^ s[2] ^ s[3]);
}

static uint64_t read_range_scalar(const uint64_t *p, size_t n)
{
    uint64_t a0 = 0, a1 = 0, a2 = 0, a3 = 0;
    for (size_t i = 0; i + 4 <= n; i += 4) {
        a0 ^= p[i];
        a1 ^= p[i + 1];
        a2 ^= p[i + 2];
        a3 ^= p[i + 3];
    }
    return a0 ^ a1 ^ a2 ^ a3;
}

static void read_task(void *ctx, int t, int nt)
{
    read_job_t *j = ctx;
    size_t per = j->words / (size_t)nt / 32 * 32;
    const uint64_t *p = j->buf + per * (size_t)t;
    j->sink[t % 64] ^=
        __builtin_cpu_supports("avx2") ? read_range_avx2(p, per) : read_range_scalar(p, per);
}

static double bench_read_bw(duet_cpu_pool_t *pool, size_t bytes, int reps)
{
    uint64_t *buf = xmalloc(bytes);
    memset(buf, 1, bytes);
    read_job_t j = {.buf = buf, .words = bytes / 8};
    int nt = duet_cpu_pool_size(pool);
    double gbs[16];
    for (int r = 0; r < reps; r++) {
        uint64_t t0 = bench_clock();
        duet_cpu_pool_run(pool, nt, read_task, &j);
        uint64_t t1 = bench_clock();
        gbs[r] = (double)(j.words / (size_t)nt / 32 * 32 * (size_t)nt * 8) / (double)(t1 - t0);
    }
    duet_free(buf);
    return median(gbs, reps);
}

/* ---- GEMV --------------------------------------------------------------------- */

static void bench_gemv(duet_cpu_pool_t *pool, double bw, const char *kind, const char *name,
                       int64_t in, int64_t out, int64_t n, int reps, duet_cpu_prec_t prec)
{
    size_t wbytes = (size_t)(in * out) * 2;
    size_t copies = (size_t)(256u << 20) / wbytes + 2; /* 8x L3 worth of weights */
    uint16_t *w = xmalloc(wbytes * copies);
    for (size_t i = 0; i < wbytes * copies / 2; i++)
        w[i] = (uint16_t)(0x3c00u + (i * 2654435761u >> 20 & 0x3ff)); /* small bf16 values */
    float *x = xmalloc((size_t)(n * in) * sizeof(float));
    float *y = xmalloc((size_t)(n * out) * sizeof(float));
    for (int64_t i = 0; i < n * in; i++)
        x[i] = frand();
    int calls = (int)copies;
    double *gbs = malloc(sizeof(double) * (size_t)reps);
    for (int r = 0; r < reps + 1; r++) {
        uint64_t t0 = bench_clock();
        for (int c = 0; c < calls; c++)
            duet_cpu_matmul_prec(pool, prec, x, n, in, (const char *)w + wbytes * (size_t)c,
                                 DUET_DTYPE_BF16, out, y, false);
        uint64_t t1 = bench_clock();
        if (r > 0) /* first pass warms page tables */
            gbs[r - 1] = (double)(wbytes * (size_t)calls) / (double)(t1 - t0);
    }
    double m = median(gbs, reps);
    printf("%-5s %-22s n=%-3lld %7.2f GB/s  %5.2f of read bw  %7.1f us/call  %6.1f GFLOP/s%s\n",
           kind, name, (long long)n, m, m / bw, (double)wbytes / m / 1e3, m * (double)n,
           prec == DUET_CPU_PREC_BF16 ? "  [bf16 activations]" : "");
    free(gbs);
    duet_free(w);
    duet_free(x);
    duet_free(y);
}

/* ---- GEMM --------------------------------------------------------------------- */

typedef struct conv_job {
    const uint16_t *src;
    float *dst;
    size_t count;
} conv_job_t;

static void conv_task(void *ctx, int t, int nt)
{
    const conv_job_t *j = ctx;
    size_t per = (j->count + (size_t)nt - 1) / (size_t)nt;
    size_t a = per * (size_t)t, b = a + per < j->count ? a + per : j->count;
    for (size_t i = a; i < b; i++)
        j->dst[i] = duet_bf16_to_f32(j->src[i]);
}

static void bench_gemm(duet_cpu_pool_t *pool, const char *name, int64_t in, int64_t out, int64_t n,
                       int reps)
{
    size_t nw = (size_t)(in * out);
    uint16_t *wb = xmalloc(nw * 2);
    float *wf = xmalloc(nw * 4);
    float *wtmp = xmalloc(nw * 4);
    for (size_t i = 0; i < nw; i++) {
        wb[i] = duet_f32_to_bf16(frand());
        wf[i] = duet_bf16_to_f32(wb[i]);
    }
    float *x = xmalloc((size_t)(n * in) * sizeof(float));
    float *y = xmalloc((size_t)(n * out) * sizeof(float));
    float *y2 = xmalloc((size_t)(n * out) * sizeof(float));
    float *y3 = xmalloc((size_t)(n * out) * sizeof(float));
    for (int64_t i = 0; i < n * in; i++)
        x[i] = frand();
    double flop = 2.0 * (double)n * (double)in * (double)out;
    double t_duet[16], t_blas[16], t_conv[16], t_bf16[16];
    const bool bf16 = duet_cpu_bf16_supported();
    for (int r = 0; r < reps + 1; r++) {
        uint64_t t0 = bench_clock();
        duet_cpu_matmul(pool, x, n, in, wb, DUET_DTYPE_BF16, out, y, false);
        uint64_t t1 = bench_clock();
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f, x,
                    (int)in, wf, (int)in, 0.0f, y2, (int)out);
        uint64_t t2 = bench_clock();
        conv_job_t cj = {.src = wb, .dst = wtmp, .count = nw};
        duet_cpu_pool_run(pool, duet_cpu_pool_size(pool), conv_task, &cj);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)out, (int)in, 1.0f, x,
                    (int)in, wtmp, (int)in, 0.0f, y2, (int)out);
        uint64_t t3 = bench_clock();
        if (bf16)
            duet_cpu_matmul_prec(pool, DUET_CPU_PREC_BF16, x, n, in, wb, DUET_DTYPE_BF16, out, y3,
                                 false);
        uint64_t t4 = bench_clock();
        if (r > 0) {
            t_bf16[r - 1] = flop / (double)(t4 - t3);
            t_duet[r - 1] = flop / (double)(t1 - t0);
            t_blas[r - 1] = flop / (double)(t2 - t1);
            t_conv[r - 1] = flop / (double)(t3 - t2);
        }
    }
    double maxdiff = 0;
    for (int64_t i = 0; i < n * out; i++)
        maxdiff = fmax(maxdiff, fabs((double)y[i] - (double)y2[i]));
    printf("gemm  %-22s n=%-3lld duet %6.1f  sgemm(f32 W) %6.1f  convert+sgemm %6.1f GFLOP/s"
           "  (max |diff| %.1e)",
           name, (long long)n, median(t_duet, reps), median(t_blas, reps), median(t_conv, reps),
           maxdiff);
    if (bf16)
        printf("  duet bf16-activations %6.1f", median(t_bf16, reps));
    printf("\n");
    duet_free(wb);
    duet_free(wf);
    duet_free(wtmp);
    duet_free(x);
    duet_free(y);
    duet_free(y2);
    duet_free(y3);
}

/* ---- one decode step's matmuls ---------------------------------------------------- */

/* The bf16 weights one batch-1 token streams through on the bench shape:
 * per layer q/k/v/o and 2 of 8 experts' w1/w3/w2, then the LM head (about
 * 544 MB; each layer has its own copy, so nothing is reused from cache).
 * Times the matmuls alone, as separate calls and with q/k/v and the
 * experts' w1/w3 (then w2) each issued as one duet_cpu_matmul_batch. */
enum { DEC_LAYERS = 12, DEC_H = 1024, DEC_KV = 256, DEC_F = 2816, DEC_V = 32000 };

typedef struct dec_layer {
    uint16_t *wq, *wk, *wv, *wo, *w1[2], *w3[2], *w2[2];
} dec_layer_t;

static uint16_t *dec_weights(size_t count)
{
    uint16_t *w = xmalloc(count * 2);
    for (size_t i = 0; i < count; i++)
        w[i] = (uint16_t)(0x3c00u + (i * 2654435761u >> 20 & 0x3ff)); /* small bf16 values */
    return w;
}

static void bench_decode(duet_cpu_pool_t *pool, double bw, int reps)
{
    dec_layer_t L[DEC_LAYERS];
    size_t bytes = 0;
    for (int l = 0; l < DEC_LAYERS; l++) {
        L[l].wq = dec_weights((size_t)DEC_H * DEC_H);
        L[l].wk = dec_weights((size_t)DEC_KV * DEC_H);
        L[l].wv = dec_weights((size_t)DEC_KV * DEC_H);
        L[l].wo = dec_weights((size_t)DEC_H * DEC_H);
        for (int e = 0; e < 2; e++) {
            L[l].w1[e] = dec_weights((size_t)DEC_F * DEC_H);
            L[l].w3[e] = dec_weights((size_t)DEC_F * DEC_H);
            L[l].w2[e] = dec_weights((size_t)DEC_H * DEC_F);
        }
        bytes += 2 * ((size_t)2 * DEC_H * DEC_H + (size_t)2 * DEC_KV * DEC_H +
                      (size_t)6 * DEC_F * DEC_H);
    }
    uint16_t *lm = dec_weights((size_t)DEC_V * DEC_H);
    bytes += (size_t)DEC_V * DEC_H * 2;
    float *x = xmalloc(DEC_F * sizeof(float)), *q = xmalloc(DEC_H * sizeof(float));
    float *k = xmalloc(DEC_KV * sizeof(float)), *v = xmalloc(DEC_KV * sizeof(float));
    float *g = xmalloc(4 * DEC_F * sizeof(float)), *h = xmalloc(DEC_H * sizeof(float));
    float *logits = xmalloc(DEC_V * sizeof(float)), *x0 = xmalloc(DEC_F * sizeof(float));
    for (int i = 0; i < DEC_F; i++)
        x0[i] = frand();
    double t_sep[16], t_bat[16];
    for (int r = 0; r < reps + 1; r++) {
        for (int batched = 0; batched < 2; batched++) {
            uint64_t t0 = bench_clock();
            for (int l = 0; l < DEC_LAYERS; l++) {
                const dec_layer_t *d = &L[l];
                /* fresh activations each layer: outputs feed back in below,
                 * and values must not drift into subnormals over the runs */
                memcpy(x, x0, DEC_F * sizeof(float));
                if (batched) {
                    duet_cpu_mm_t qkv[3] = {
                        {x, 1, DEC_H, d->wq, DUET_DTYPE_BF16, DEC_H, q, false},
                        {x, 1, DEC_H, d->wk, DUET_DTYPE_BF16, DEC_KV, k, false},
                        {x, 1, DEC_H, d->wv, DUET_DTYPE_BF16, DEC_KV, v, false},
                    };
                    duet_cpu_matmul_batch(pool, qkv, 3);
                } else {
                    duet_cpu_matmul(pool, x, 1, DEC_H, d->wq, DUET_DTYPE_BF16, DEC_H, q, false);
                    duet_cpu_matmul(pool, x, 1, DEC_H, d->wk, DUET_DTYPE_BF16, DEC_KV, k, false);
                    duet_cpu_matmul(pool, x, 1, DEC_H, d->wv, DUET_DTYPE_BF16, DEC_KV, v, false);
                }
                duet_cpu_matmul(pool, q, 1, DEC_H, d->wo, DUET_DTYPE_BF16, DEC_H, h, false);
                memcpy(h, x0, DEC_H * sizeof(float));
                if (batched) {
                    duet_cpu_mm_t up[4], down[2];
                    for (int e = 0; e < 2; e++) {
                        up[2 * e] = (duet_cpu_mm_t){
                            h,    1, DEC_H, d->w1[e], DUET_DTYPE_BF16, DEC_F, g + (2 * e) * DEC_F,
                            false};
                        up[2 * e + 1] = (duet_cpu_mm_t){h,
                                                        1,
                                                        DEC_H,
                                                        d->w3[e],
                                                        DUET_DTYPE_BF16,
                                                        DEC_F,
                                                        g + (2 * e + 1) * DEC_F,
                                                        false};
                        down[e] = (duet_cpu_mm_t){g + 2 * e * DEC_F, 1,     DEC_F,     d->w2[e],
                                                  DUET_DTYPE_BF16,   DEC_H, e ? q : x, false};
                    }
                    duet_cpu_matmul_batch(pool, up, 4);
                    duet_cpu_matmul_batch(pool, down, 2);
                } else {
                    for (int e = 0; e < 2; e++) {
                        duet_cpu_matmul(pool, h, 1, DEC_H, d->w1[e], DUET_DTYPE_BF16, DEC_F,
                                        g + 2 * e * DEC_F, false);
                        duet_cpu_matmul(pool, h, 1, DEC_H, d->w3[e], DUET_DTYPE_BF16, DEC_F,
                                        g + (2 * e + 1) * DEC_F, false);
                        duet_cpu_matmul(pool, g + 2 * e * DEC_F, 1, DEC_F, d->w2[e],
                                        DUET_DTYPE_BF16, DEC_H, e ? q : x, false);
                    }
                }
            }
            memcpy(x, x0, DEC_H * sizeof(float));
            duet_cpu_matmul(pool, x, 1, DEC_H, lm, DUET_DTYPE_BF16, DEC_V, logits, false);
            uint64_t t1 = bench_clock();
            if (r > 0)
                (batched ? t_bat : t_sep)[r - 1] = (double)(t1 - t0) / 1e9;
        }
    }
    double ts = median(t_sep, reps), tb = median(t_bat, reps);
    double roof = bw * 1e9 / (double)bytes;
    printf("decode batch-1 matmuls (%.0f MB of bf16 weights/token): %.1f tok/s separate calls, "
           "%.1f tok/s batched; roofline %.1f tok/s -> %.2f / %.2f of it\n",
           (double)bytes / 1e6, 1 / ts, 1 / tb, roof, 1 / ts / roof, 1 / tb / roof);
    for (int l = 0; l < DEC_LAYERS; l++) {
        duet_free(L[l].wq);
        duet_free(L[l].wk);
        duet_free(L[l].wv);
        duet_free(L[l].wo);
        for (int e = 0; e < 2; e++) {
            duet_free(L[l].w1[e]);
            duet_free(L[l].w3[e]);
            duet_free(L[l].w2[e]);
        }
    }
    duet_free(lm);
    duet_free(x);
    duet_free(q);
    duet_free(k);
    duet_free(v);
    duet_free(g);
    duet_free(h);
    duet_free(logits);
    duet_free(x0);
}

/* ---- pool ---------------------------------------------------------------------- */

static void empty_task(void *ctx, int t, int nt)
{
    (void)ctx;
    (void)t;
    (void)nt;
}

/* Busy for *ctx nanoseconds: with one such task per thread, a run takes that
 * long plus the fork/join cost only if every thread joins in. */
static void busy_task(void *ctx, int t, int nt)
{
    (void)t;
    (void)nt;
    uint64_t end = duet_now_ns() + *(const uint64_t *)ctx;
    while (duet_now_ns() < end)
        ;
}

static void bench_pool(duet_cpu_pool_t *pool)
{
    enum { RUNS = 2000, SAMPLES = 9 };
    double empty[SAMPLES], hot[SAMPLES], cold[SAMPLES];
    int nt = duet_cpu_pool_size(pool);
    if (nt < 2) {
        printf("pool  (one thread: no workers to measure)\n");
        return;
    }
    uint64_t busy_ns = 5000;
    for (int s = 0; s < SAMPLES; s++) {
        uint64_t t0 = duet_now_ns();
        for (int i = 0; i < RUNS; i++)
            duet_cpu_pool_run(pool, nt, empty_task, NULL);
        empty[s] = (double)(duet_now_ns() - t0) / RUNS / 1e3;
        t0 = duet_now_ns();
        for (int i = 0; i < RUNS; i++)
            duet_cpu_pool_run(pool, nt, busy_task, &busy_ns);
        hot[s] = (double)(duet_now_ns() - t0) / RUNS / 1e3 - (double)busy_ns / 1e3;
    }
    for (int s = 0; s < SAMPLES; s++) {
        struct timespec ts = {0, 5 * 1000 * 1000}; /* past the spin window: workers sleep */
        nanosleep(&ts, NULL);
        uint64_t t0 = duet_now_ns();
        duet_cpu_pool_run(pool, nt, busy_task, &busy_ns);
        cold[s] = (double)(duet_now_ns() - t0) / 1e3 - (double)busy_ns / 1e3;
    }
    printf("pool  run overhead: %.2f us empty run of %d tasks; %.2f us beyond 5 us when every "
           "thread runs a 5 us task (workers spinning), %.1f us (workers asleep)\n",
           median(empty, SAMPLES), nt, median(hot, SAMPLES), median(cold, SAMPLES));
}

static void print_load(const char *when)
{
    char buf[128] = "?";
    FILE *f = fopen("/proc/loadavg", "r");
    if (f) {
        if (!fgets(buf, sizeof(buf), f))
            buf[0] = 0;
        fclose(f);
    }
    buf[strcspn(buf, "\n")] = 0;
    printf("load  %s: %s (other work on the machine skews every number)\n", when, buf);
}

int main(int argc, char **argv)
{
    int threads = 2;
    bool quick = false, only_batch = false;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc)
            threads = atoi(argv[++i]);
        else if (strcmp(argv[i], "--quick") == 0)
            quick = true;
        else if (strcmp(argv[i], "--huge") == 0)
            use_huge = true;
        else if (strcmp(argv[i], "--cpu-time") == 0)
            use_cpu_time = true;
        else if (strcmp(argv[i], "--batch-only") == 0)
            only_batch = true;
        else {
            fprintf(stderr,
                    "usage: %s [--threads N] [--quick] [--huge] [--cpu-time] [--batch-only]\n",
                    argv[0]);
            return 2;
        }
    }
    if (use_cpu_time && threads != 1) {
        fprintf(stderr, "bench_kernels: --cpu-time needs --threads 1\n");
        return 2;
    }
    duet_cpu_pool_t *pool = duet_cpu_pool_create(threads);
    if (!pool) {
        fprintf(stderr, "bench_kernels: cannot create a pool of %d threads\n", threads);
        return 1;
    }
    openblas_set_num_threads(threads);
    printf("duet bench_kernels: %d threads, kernels %s, %s pages, %s\n", duet_cpu_pool_size(pool),
           duet_cpu_isa_name(), use_huge ? "huge" : "4 KiB",
           use_cpu_time ? "timed by thread CPU time" : "timed by wall clock");
    int reps = quick ? 3 : 5;
    const bool bf16 = duet_cpu_bf16_supported();
    if (only_batch) {
        double bw0 = bench_read_bw(pool, (size_t)1 << 30, 3);
        for (int p = 0; p < (bf16 ? 2 : 1); p++)
            for (int64_t n = 16; n <= 64; n *= 2)
                bench_gemv(pool, bw0, "batch", "w1/w3 1024->2816", 1024, 2816, n, reps,
                           p ? DUET_CPU_PREC_BF16 : DUET_CPU_PREC_EXACT);
        duet_cpu_pool_destroy(&pool);
        return 0;
    }
    print_load("start");

    double bw = bench_read_bw(pool, (size_t)1 << 30, reps);
    printf("mem   read bandwidth %.2f GB/s (1 GiB buffer, median of %d)\n", bw, reps);

    static const struct {
        const char *name;
        int64_t in, out;
    } shapes[] = {
        {"w1/w3 1024->2816", 1024, 2816},
        {"w2 2816->1024", 2816, 1024},
        {"lm_head 1024->32000", 1024, 32000},
    };
    for (size_t s = 0; s < 3; s++)
        for (int64_t n = 1; n <= 8; n += 7)
            bench_gemv(pool, bw, "gemv", shapes[s].name, shapes[s].in, shapes[s].out, n, reps,
                       DUET_CPU_PREC_EXACT);
    /* batched decode: per-expert row counts of batch 8..64, weights cold;
     * then the same in the opt-in bf16-activation precision where it runs */
    for (int p = 0; p < (bf16 ? 2 : 1); p++)
        for (int64_t n = 16; n <= 64; n *= 2)
            for (size_t s = 0; s < (p ? 3 : 1); s++)
                bench_gemv(pool, bw, "batch", shapes[s].name, shapes[s].in, shapes[s].out, n, reps,
                           p ? DUET_CPU_PREC_BF16 : DUET_CPU_PREC_EXACT);
    if (bf16)
        for (size_t s = 0; s < 3; s++)
            bench_gemv(pool, bw, "gemv", shapes[s].name, shapes[s].in, shapes[s].out, 8, reps,
                       DUET_CPU_PREC_BF16);
    for (size_t s = 0; s < 2; s++)
        for (int64_t n = 64; n <= 512; n *= 2)
            if (n != 256)
                bench_gemm(pool, shapes[s].name, shapes[s].in, shapes[s].out, n, reps);
    bench_gemm(pool, shapes[2].name, shapes[2].in, shapes[2].out, 64, quick ? 1 : 3);
    bench_decode(pool, bw, quick ? 2 : 3);

    bench_pool(pool);
    print_load("end");
    duet_cpu_pool_destroy(&pool);
    return 0;
}
