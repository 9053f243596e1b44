/* bench_model — end-to-end numbers for the single-process engine on the
 * `bench` checkpoint (Mixtral-shaped, hidden 1024, 12 layers, 16/4 heads,
 * 8 experts top-2, expert width 2816, vocab 32000, bf16, ~928 M params),
 * the figures the foundation issue asks for, all from one run:
 *
 *  - memory read bandwidth: a streaming read over a buffer far larger than
 *    L3 on the same number of threads, at the start (in a forked child, so
 *    that its buffer does not count in this process's peak RSS) and again at
 *    the end; the roofline uses the higher of the two, so a machine that got
 *    busier during the run does not flatter the ratio;
 *  - decode tokens/s at batch 1, 8 and 64 (128-token prompts; total
 *    generated tokens/s over the batch), greedy, sampling included;
 *  - prefill tokens/s of one 512-token prompt (llama.cpp's pp512);
 *  - peak RSS against the checkpoint's bytes plus the KV cache;
 *  - batch-1 decode against its roofline: read bandwidth ÷ the bytes one
 *    token reads (attention, top_k experts of each layer, LM head, norms,
 *    router, one embedding row; computed from the loaded tensors);
 *  - llama.cpp's figures for the same shape on the same kind of machine
 *    (from the issue) and the goals, with our ratio to each.
 * Every rate is the median over --reps repetitions (the range is printed
 * too: on a shared machine a wide range means the figures are noisy), with
 * the CPU time this process got per wall second in the timed region: less
 * than the thread count means other processes took the cores.
 *
 * The checkpoint is written once with the mkmodel API into a cache
 * directory ($DUET_BENCH_DIR, default /tmp/duet-bench-model) and reused.
 * The 64 prompts are prefilled once; each decode repetition truncates the
 * sequences back to their prompts, so a repetition costs only its decode.
 *
 * --precision bf16 runs the cpu backend's opt-in bf16-activation GEMMs
 * (where the CPU has AVX512-BF16; the header says what ran). --precision
 * both measures fp32 and bf16 in one process, repetitions interleaved
 * (b1 fp32, b8 fp32, b64 fp32, pp512 fp32, b8 bf16, b64 bf16, pp512 bf16,
 * b1 ...), so the two modes see the same machine load: the backend runs in
 * bf16 mode and the fp32 figures raise its row threshold out of reach
 * (duet_cpu_set_bf16_min_rows), which is exactly the fp32 path. Batch 1 is
 * the same in both (one row per GEMM stays exact), so b64/b1 of each mode
 * uses that one b1 figure.
 *
 * usage: bench_model [--threads N] [--reps R] [--quick] [--dir DIR] [--precision P] */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cpu/cpu_kernels.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/kvcache.h"
#include "model/mkmodel.h"
#include "model/model.h"
#include "bench/bench_checkpoint.h"

/* llama.cpp on this shape (bf16 GGUF, CPU, 2 threads), from the issue. */
#define LLAMA_B1_TPS 34.0
#define LLAMA_PP512_TPS 172.0
#define LLAMA_B8_TPS 92.0
#define LLAMA_B64_TPS 51.0

#define PRECISION_BOTH 2 /* --precision both */

#define MAX_BATCH 64
#define BLOCK 16

typedef struct bench_opts {
    int threads;
    int precision; /* DUET_PRECISION_*, or PRECISION_BOTH */
    int reps;
    bool quick;
    const char *dir;
} bench_opts_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Median of v[n] (sorted in place); *lo, *hi (may be NULL) get the range. */
static double median(double *v, int n, double *lo, double *hi)
{
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    if (lo)
        *lo = v[0];
    if (hi)
        *hi = v[n - 1];
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* CPU seconds (user + system) of this process so far. */
static double proc_cpu_s(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_stime.tv_sec +
           1e-6 * (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec);
}

/* ---- memory read bandwidth ---------------------------------------------- */

typedef struct bw_ctx {
    const uint64_t *buf;
    size_t words;
    uint64_t sums[1024];
} bw_ctx_t;

#if defined(__x86_64__)
#include <immintrin.h>
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint64_t *p, size_t n)
{
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 16 <= n; i += 16) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 4)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 8)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 12)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    uint64_t lanes[4];
    _mm256_storeu_si256((__m256i *)lanes, a0);
    uint64_t s = lanes[0] + lanes[1] + lanes[2] + lanes[3];
    for (; i < n; i++)
        s += p[i];
    return s;
}

__attribute__((target("avx512f"))) static uint64_t sum_avx512(const uint64_t *p, size_t n)
{
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    size_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm512_add_epi64(a0, _mm512_load_si512((const void *)(p + i)));
        a1 = _mm512_add_epi64(a1, _mm512_load_si512((const void *)(p + i + 8)));
        a2 = _mm512_add_epi64(a2, _mm512_load_si512((const void *)(p + i + 16)));
        a3 = _mm512_add_epi64(a3, _mm512_load_si512((const void *)(p + i + 24)));
    }
    uint64_t s = (uint64_t)_mm512_reduce_add_epi64(
        _mm512_add_epi64(_mm512_add_epi64(a0, a1), _mm512_add_epi64(a2, a3)));
    for (; i < n; i++)
        s += p[i];
    return s;
}
#endif

static uint64_t sum_scalar(const uint64_t *p, size_t n)
{
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    size_t i = 0;
    for (; i + 4 <= n; i += 4) {
        s0 += p[i];
        s1 += p[i + 1];
        s2 += p[i + 2];
        s3 += p[i + 3];
    }
    for (; i < n; i++)
        s0 += p[i];
    return s0 + s1 + s2 + s3;
}

static bool have_avx2, have_avx512;

static void bw_task(void *arg, int t, int nt)
{
    bw_ctx_t *c = arg;
    /* slices of whole 64-byte lines, so every load is aligned */
    size_t lines = c->words / 8, lo = lines * (size_t)t / (size_t)nt * 8,
           hi = lines * (size_t)(t + 1) / (size_t)nt * 8;
#if defined(__x86_64__)
    if (have_avx512) {
        c->sums[t] = sum_avx512(c->buf + lo, hi - lo);
        return;
    }
    if (have_avx2) {
        c->sums[t] = sum_avx2(c->buf + lo, hi - lo);
        return;
    }
#endif
    c->sums[t] = sum_scalar(c->buf + lo, hi - lo);
}

/* Median GB/s of `reps` full reads of a `bytes` buffer on `threads`. */
static double measure_read_bw(int threads, size_t bytes, int reps)
{
#if defined(__x86_64__)
    have_avx2 = __builtin_cpu_supports("avx2");
    have_avx512 = __builtin_cpu_supports("avx512f");
#endif
    bw_ctx_t *c = duet_calloc(1, sizeof(*c));
    uint64_t *buf = duet_aligned_alloc(64, bytes);
    duet_cpu_pool_t *pool = duet_cpu_pool_create(threads);
    double *gbs = duet_calloc((size_t)reps, sizeof(double));
    double res = -1;
    if (!c || !buf || !pool || !gbs)
        goto out;
    c->buf = buf;
    c->words = bytes / sizeof(uint64_t);
    for (size_t i = 0; i < c->words; i++) /* fault every page in, non-zero data */
        buf[i] = i * 0x9e3779b97f4a7c15ull;
    int nt = DUET_MIN(duet_cpu_pool_size(pool), (int)DUET_ARRAY_LEN(c->sums));
    duet_cpu_pool_run(pool, nt, bw_task, c); /* warm-up */
    uint64_t check = 0;
    for (int r = 0; r < reps; r++) {
        double t0 = duet_now_s();
        duet_cpu_pool_run(pool, nt, bw_task, c);
        double dt = duet_now_s() - t0;
        gbs[r] = (double)(c->words / 8 * 64) / dt / 1e9;
        for (int t = 0; t < nt; t++)
            check += c->sums[t];
    }
    res = median(gbs, reps, NULL, NULL);
    if (check == 42) /* keep the sums observable */
        printf(" ");
out:
    duet_free(gbs);
    duet_cpu_pool_destroy(&pool);
    duet_free(buf);
    duet_free(c);
    return res;
}

/* The bandwidth run in a child process: its buffer never enters our RSS. */
static double read_bw_forked(int threads, size_t bytes, int reps)
{
    int fds[2];
    if (pipe(fds) != 0)
        return measure_read_bw(threads, bytes, reps);
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0) {
        close(fds[0]);
        close(fds[1]);
        return measure_read_bw(threads, bytes, reps);
    }
    if (pid == 0) {
        close(fds[0]);
        double v = measure_read_bw(threads, bytes, reps);
        ssize_t w = write(fds[1], &v, sizeof(v));
        _exit(w == (ssize_t)sizeof(v) ? 0 : 1);
    }
    close(fds[1]);
    double v = -1;
    ssize_t r = read(fds[0], &v, sizeof(v));
    close(fds[0]);
    int status;
    waitpid(pid, &status, 0);
    return r == (ssize_t)sizeof(v) ? v : -1;
}

/* ---- the checkpoint (written by bench_checkpoint.h) ---------------------- */

static size_t checkpoint_file_bytes(const char *dir, const duet_mkmodel_opts_t *o)
{
    char path[4096];
    struct stat sb;
    size_t total = 0;
    snprintf(path, sizeof(path), "%s/model.safetensors", dir);
    if (stat(path, &sb) == 0)
        return (size_t)sb.st_size;
    for (int k = 1; k <= o->shards; k++) {
        snprintf(path, sizeof(path), "%s/model-%05d-of-%05d.safetensors", dir, k, o->shards);
        if (stat(path, &sb) == 0)
            total += (size_t)sb.st_size;
    }
    return total;
}

/* ---- bytes one decode token reads ---------------------------------------- */

typedef struct token_bytes {
    double attn, experts, lm_head, other, total;
} token_bytes_t;

static size_t tb(const duet_tensor_t *t)
{
    return t->data ? t->nbytes : 0;
}

static size_t expert_bytes(const duet_expert_weights_t *e)
{
    return tb(&e->gate) + tb(&e->up) + tb(&e->down);
}

static token_bytes_t decode_token_bytes(const duet_model_t *m)
{
    const duet_config_t *c = &m->cfg;
    token_bytes_t b = {0};
    for (int l = 0; l < c->n_layers; l++) {
        const duet_layer_weights_t *L = &m->layers[l];
        b.attn += (double)(tb(&L->wq) + tb(&L->wk) + tb(&L->wv) + tb(&L->wo) + tb(&L->bq) +
                           tb(&L->bk) + tb(&L->bv));
        b.other += (double)(tb(&L->attn_norm) + tb(&L->ffn_norm) + tb(&L->q_norm) + tb(&L->k_norm) +
                            tb(&L->router) + tb(&L->shared_gate));
        if (c->sparse_layer && !c->sparse_layer[l]) {
            b.experts += (double)expert_bytes(&L->dense);
            continue;
        }
        double sum = 0;
        int held = 0;
        for (int e = 0; e < c->n_experts; e++)
            if (L->experts[e].gate.data) {
                sum += (double)expert_bytes(&L->experts[e]);
                held++;
            }
        if (held)
            b.experts += sum / held * c->top_k;
        b.experts += (double)expert_bytes(&L->shared);
    }
    b.lm_head = (double)tb(&m->lm_head);
    b.other += (double)tb(&m->final_norm) +
               (double)c->hidden * (double)duet_dtype_size(m->embed.dtype); /* one row */
    b.total = b.attn + b.experts + b.lm_head + b.other;
    return b;
}

/* ---- engine runs --------------------------------------------------------- */

typedef struct run {
    duet_engine_t *eng;
    duet_kvcache_t *kv;
    int32_t seqs[MAX_BATCH];
    int32_t prompt_len;
    int32_t vocab;
    uint64_t rng;
    double cpu; /* CPU seconds per wall second of the last timed region */
} run_t;

static int32_t rand_token(run_t *r)
{
    r->rng ^= r->rng << 13;
    r->rng ^= r->rng >> 7;
    r->rng ^= r->rng << 17;
    return (int32_t)(r->rng % (uint64_t)(r->vocab - 1));
}

/* Prefill n sequences with random prompts of r->prompt_len tokens, in steps
 * of at most max_tokens tokens. Returns seconds, or < 0 on error. */
static double prefill_batch(run_t *r, int n, int32_t max_tokens)
{
    int32_t *toks = duet_calloc((size_t)n * (size_t)r->prompt_len, sizeof(int32_t));
    duet_seq_input_t in[MAX_BATCH];
    if (!toks)
        return -1;
    for (int i = 0; i < n * r->prompt_len; i++)
        toks[i] = rand_token(r);
    int per_step = DUET_MAX(1, max_tokens / r->prompt_len);
    double c0 = proc_cpu_s(), t0 = duet_now_s();
    for (int s = 0; s < n; s += per_step) {
        int k = DUET_MIN(per_step, n - s);
        for (int i = 0; i < k; i++)
            in[i] = (duet_seq_input_t){r->seqs[s + i], r->prompt_len,
                                       toks + (size_t)(s + i) * (size_t)r->prompt_len,
                                       DUET_LOGITS_NONE};
        if (duet_engine_step(r->eng, k, in, NULL, NULL)) {
            duet_free(toks);
            return -1;
        }
    }
    double dt = duet_now_s() - t0;
    r->cpu = (proc_cpu_s() - c0) / dt;
    duet_free(toks);
    return dt;
}

/* gen greedy decode steps over the first `batch` sequences (already holding
 * their prompts); the sequences are truncated back to the prompt after.
 * Returns generated tokens per second (all sequences), < 0 on error. */
static double decode_batch(run_t *r, int batch, int gen)
{
    static const duet_sampling_params_t greedy = {0.0f, 0, 1.0f, 0};
    duet_sampling_params_t sp[MAX_BATCH];
    int32_t tok[MAX_BATCH];
    duet_seq_input_t in[MAX_BATCH];
    for (int i = 0; i < batch; i++) {
        sp[i] = greedy;
        tok[i] = rand_token(r);
    }
    double c0 = proc_cpu_s(), t0 = duet_now_s();
    for (int g = 0; g < gen; g++) {
        for (int i = 0; i < batch; i++)
            in[i] = (duet_seq_input_t){r->seqs[i], 1, &tok[i], DUET_LOGITS_LAST};
        if (duet_engine_step(r->eng, batch, in, NULL, NULL) || duet_engine_sample(r->eng, sp, tok))
            return -1;
    }
    double dt = duet_now_s() - t0;
    r->cpu = (proc_cpu_s() - c0) / dt;
    for (int i = 0; i < batch; i++)
        if (duet_kvcache_seq_truncate(r->kv, r->seqs[i], r->prompt_len))
            return -1;
    return (double)batch * gen / dt;
}

/* One prompt of n tokens in one step (logits of the last token); the
 * sequence is closed after. Returns tokens/s, < 0 on error. */
static double prefill_one(run_t *r, int32_t n)
{
    int32_t *toks = duet_calloc((size_t)n, sizeof(int32_t));
    int32_t seq, tok;
    if (!toks)
        return -1;
    for (int32_t i = 0; i < n; i++)
        toks[i] = rand_token(r);
    static const duet_sampling_params_t greedy = {0.0f, 0, 1.0f, 0};
    if (duet_kvcache_seq_open(r->kv, &seq)) {
        duet_free(toks);
        return -1;
    }
    duet_seq_input_t in = {seq, n, toks, DUET_LOGITS_LAST};
    double c0 = proc_cpu_s(), t0 = duet_now_s();
    duet_status_t st = duet_engine_step(r->eng, 1, &in, NULL, NULL);
    if (!st)
        st = duet_engine_sample(r->eng, &greedy, &tok);
    double dt = duet_now_s() - t0;
    r->cpu = (proc_cpu_s() - c0) / dt;
    duet_kvcache_seq_close(r->kv, seq);
    duet_free(toks);
    return st ? -1 : n / dt;
}

/* ---- main ----------------------------------------------------------------- */

static void usage(FILE *f)
{
    fprintf(f, "usage: bench_model [--threads N] [--reps R] [--quick] [--dir DIR] "
               "[--precision P]\n"
               "\n"
               "Decode (batch 1, 8, 64; 128-token prompts), prefill (512 tokens), memory read\n"
               "bandwidth, roofline ratio and peak RSS of the single-process engine on the\n"
               "`bench` checkpoint, written once into DIR.\n"
               "\n"
               "  --threads N   CPU threads including the main one (default 2, as in the issue)\n"
               "  --reps R      repetitions per figure; medians are reported (default 3)\n"
               "  --quick       a smoke run: 32-token prompts, fewer decode steps, 1 repetition\n"
               "                unless --reps; the figures are then indicative only\n"
               "  --dir DIR     checkpoint cache (default $DUET_BENCH_DIR, else\n"
               "                /tmp/duet-bench-model)\n"
               "  --precision P fp32 (default: exact f32 activations) or bf16 (activations\n"
               "                rounded to bf16 for bf16-weight GEMMs of 4+ rows, AVX512-BF16\n"
               "                dot products; exact where the CPU lacks them), or both\n"
               "                (interleaved in this process; decode b8/b64 and prefill are\n"
               "                then printed for each). Overrides DUET_PRECISION\n"
               "  -h, --help    this help\n");
}

static const char *verdict(bool ok)
{
    return ok ? "met" : "NOT met";
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"threads", required_argument, NULL, 't'},
        {"reps", required_argument, NULL, 'r'},
        {"quick", no_argument, NULL, 'q'},
        {"dir", required_argument, NULL, 'd'},
        {"help", no_argument, NULL, 'h'},
        {"precision", required_argument, NULL, 'p'},
        {NULL, 0, NULL, 0},
    };
    bench_opts_t o = {.threads = 2, .reps = 0, .dir = getenv("DUET_BENCH_DIR")};
    int c;
    const char *penv = getenv("DUET_PRECISION");
    if (penv && *penv && duet_precision_parse(penv) >= 0)
        o.precision = duet_precision_parse(penv);
    while ((c = getopt_long(argc, argv, "t:r:qd:hp:", longopts, NULL)) != -1) {
        char *end;
        switch (c) {
        case 't':
            o.threads = (int)strtol(optarg, &end, 10);
            if (*end || o.threads < 1 || o.threads > 1024) {
                fprintf(stderr, "bench_model: --threads wants 1..1024, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'r':
            o.reps = (int)strtol(optarg, &end, 10);
            if (*end || o.reps < 1 || o.reps > 1000) {
                fprintf(stderr, "bench_model: --reps wants 1..1000, not '%s'\n", optarg);
                return 2;
            }
            break;
        case 'q': o.quick = true; break;
        case 'd': o.dir = optarg; break;
        case 'p':
            o.precision = strcmp(optarg, "both") ? duet_precision_parse(optarg) : PRECISION_BOTH;
            if (o.precision < 0) {
                fprintf(stderr, "bench_model: --precision wants fp32, bf16 or both, not '%s'\n",
                        optarg);
                return 2;
            }
            /* the flag wins over the environment */
            setenv("DUET_PRECISION", o.precision ? "bf16" : "fp32", 1);
            break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "bench_model: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!o.dir || !*o.dir)
        o.dir = "/tmp/duet-bench-model";
    if (!o.reps)
        o.reps = o.quick ? 1 : 3;
    const int32_t prompt_len = o.quick ? 32 : 128, pp_len = 512;
    const int batches[3] = {1, 8, 64};
    const int gens[3] = {o.quick ? 8 : 64, o.quick ? 4 : 32, o.quick ? 2 : 16};
    const size_t bw_bytes = (size_t)(o.quick ? 256 : 1024) << 20; /* L3 here: 32 MiB */
    const int bw_reps = DUET_MAX(5, o.reps);

    double load[3] = {0};
    getloadavg(load, 3);
    const bool both = o.precision == PRECISION_BOTH && duet_cpu_bf16_supported();
    if (o.precision == PRECISION_BOTH && !both) {
        printf("bench_model: --precision both: this CPU lacks AVX512-BF16, measuring fp32 only\n");
        o.precision = DUET_PRECISION_FP32;
    }
    const bool bf16_runs = o.precision == DUET_PRECISION_BF16 && duet_cpu_bf16_supported();
    printf("bench_model: %d thread%s, %d rep%s%s, kernels %s, precision %s, load average %.2f at "
           "start\n"
           "(CPU = CPU seconds this process got per wall second; below the thread count,\n"
           " other processes were using the cores)\n",
           o.threads, o.threads > 1 ? "s" : "", o.reps, o.reps > 1 ? "s" : "",
           o.quick ? " (--quick: indicative only)" : "", duet_cpu_isa_name(),
           both        ? "fp32 and bf16, interleaved (main figures: fp32)"
           : bf16_runs ? "bf16 (activations rounded for bf16-weight GEMMs of 4+ rows)"
           : o.precision == DUET_PRECISION_BF16
               ? "fp32 (bf16 asked for; this CPU lacks AVX512-BF16)"
               : "fp32 (exact)",
           load[0]);
    fflush(stdout);

    /* 1. bandwidth, before anything else is in memory */
    double bw = read_bw_forked(o.threads, bw_bytes, bw_reps);
    if (bw <= 0) {
        fprintf(stderr, "bench_model: the bandwidth measurement failed\n");
        return 1;
    }
    printf("memory read bandwidth   %8.2f GB/s  (%zu MiB buffer, %d threads, median of %d)\n", bw,
           bw_bytes >> 20, o.threads, bw_reps);
    fflush(stdout);

    int rc = 1;
    duet_model_t *m = NULL;
    duet_backend_t *be = NULL;
    run_t r = {.rng = 0x2545f4914f6cdd1dull};
    duet_mkmodel_opts_t mo;
    duet_mkmodel_preset("bench", &mo);

    if (bench_ensure_checkpoint(o.dir)) {
        fprintf(stderr, "bench_model: writing the checkpoint: %s\n", duet_error());
        goto out;
    }
    double t0 = duet_now_s();
    duet_load_opts_t lopts = {.role = DUET_ROLE_FULL, .prefault = true};
    if (duet_model_load(o.dir, &lopts, &m)) {
        fprintf(stderr, "bench_model: %s\n(delete %s to have it written again)\n", duet_error(),
                o.dir);
        goto out;
    }
    const duet_config_t *cfg = &m->cfg;
    if (cfg->hidden != mo.hidden || cfg->n_layers != mo.n_layers ||
        cfg->n_experts != mo.n_experts || cfg->expert_dim != mo.expert_dim ||
        cfg->vocab != mo.vocab) {
        fprintf(stderr, "bench_model: %s does not hold the bench preset; delete it\n", o.dir);
        goto out;
    }
    double load_s = duet_now_s() - t0;
    size_t ckpt = checkpoint_file_bytes(o.dir, &mo);
    printf("checkpoint              %8.2f GB   (%s, %.1f M params, loaded + prefaulted in "
           "%.1f s)\n",
           (double)ckpt / 1e9, o.dir, (double)duet_mkmodel_params(&mo) / 1e6, load_s);

    duet_backend_opts_t bo = {.n_threads = o.threads,
                              .precision = o.precision ? DUET_PRECISION_BF16 : DUET_PRECISION_FP32};
    const int64_t bf16_rows = duet_cpu_bf16_min_rows();
    if (duet_backend_open("cpu", &bo, &be)) {
        fprintf(stderr, "bench_model: %s\n", duet_error());
        goto out;
    }
    /* KV: the 64 sequences at their longest phase, or all at prompt length
     * plus one 512-token prompt, whichever is more. */
    int32_t blocks = 0;
    const int32_t pb = (prompt_len + BLOCK - 1) / BLOCK;
    for (int i = 0; i < 3; i++)
        blocks = DUET_MAX(blocks, batches[i] * ((prompt_len + gens[i] + BLOCK - 1) / BLOCK) +
                                      (MAX_BATCH - batches[i]) * pb);
    blocks = DUET_MAX(blocks, MAX_BATCH * pb + (pp_len + BLOCK - 1) / BLOCK);
    const size_t kv_bytes = (size_t)blocks * duet_kvcache_block_bytes(cfg, BLOCK);
    duet_engine_opts_t eo = {0};
    eo.fwd.max_tokens = pp_len;
    eo.fwd.max_seqs = MAX_BATCH;
    eo.fwd.max_logits = MAX_BATCH;
    eo.kv.block_size = BLOCK;
    eo.kv.n_blocks = blocks;
    eo.kv.max_seqs = MAX_BATCH + 1;
    eo.kv.max_seq_len = pp_len;
    if (duet_engine_create(be, m, &eo, &r.eng)) {
        fprintf(stderr, "bench_model: %s\n", duet_error());
        goto out;
    }
    r.kv = duet_engine_kv(r.eng);
    r.prompt_len = prompt_len;
    r.vocab = cfg->vocab;
    for (int i = 0; i < MAX_BATCH; i++)
        if (duet_kvcache_seq_open(r.kv, &r.seqs[i]))
            goto err_engine;

    /* 2. the 64 prompts, once (also warms every expert's pages) */
    double pf = prefill_batch(&r, MAX_BATCH, pp_len);
    if (pf < 0)
        goto err_engine;
    printf("prefill 64 x %-3d       %8.1f tok/s  (%d tokens in steps of %d, one pass; CPU %.2f)\n",
           prompt_len, MAX_BATCH * prompt_len / pf, MAX_BATCH * prompt_len,
           (int)(pp_len / prompt_len) * prompt_len, r.cpu);
    fflush(stdout);

    /* 3. decode at batch 1, 8, 64 and pp512, the repetitions interleaved
     * (b1, b8, b64, pp512, b1, ...) so that a burst of load from elsewhere
     * does not land on one figure only */
    /* figures 0-3: b1, b8, b64, pp512 (fp32 with --precision both);
     * 4-6 with both: b8, b64, pp512 in bf16 */
    enum { NF = 7 };
    const int nf = both ? NF : 4;
    double tps[NF], cpu_med[NF], lo[NF], hi[NF];
    double *v = duet_calloc((size_t)o.reps * 2 * NF, sizeof(double));
    if (!v)
        goto err_engine;
    for (int k = 0; k < o.reps; k++)
        for (int f = 0; f < nf; f++) {
            if (both) /* an unreachable threshold is the exact path */
                duet_cpu_set_bf16_min_rows(f < 4 ? INT64_MAX : bf16_rows);
            int g = f < 4 ? f : f - 3; /* which of b1, b8, b64, pp512 */
            double x = g < 3 ? decode_batch(&r, batches[g], gens[g]) : prefill_one(&r, pp_len);
            if (x < 0) {
                duet_free(v);
                goto err_engine;
            }
            v[f * o.reps + k] = x;
            v[(NF + f) * o.reps + k] = r.cpu;
        }
    if (both)
        duet_cpu_set_bf16_min_rows(bf16_rows);
    for (int f = 0; f < nf; f++) {
        tps[f] = median(v + f * o.reps, o.reps, &lo[f], &hi[f]);
        cpu_med[f] = median(v + (NF + f) * o.reps, o.reps, NULL, NULL);
    }
    duet_free(v);
    for (int f = 0; f < 3; f++)
        printf("decode batch %-2d         %8.1f tok/s  (%d-token prompts, %d steps, %s; "
               "range %.1f-%.1f; CPU %.2f)\n",
               batches[f], tps[f], prompt_len, gens[f],
               batches[f] > 1 ? "total over the batch" : "one sequence", lo[f], hi[f], cpu_med[f]);
    const double pp = tps[3];
    printf("prefill %d              %8.1f tok/s  (one prompt, one step; range %.1f-%.1f; "
           "CPU %.2f)\n",
           pp_len, pp, lo[3], hi[3], cpu_med[3]);
    if (both) {
        printf("in bf16 precision (same runs, interleaved; batch 1 as above):\n");
        for (int f = 4; f < 6; f++)
            printf("decode batch %-2d  bf16   %8.1f tok/s  (range %.1f-%.1f; CPU %.2f; %.2fx "
                   "fp32)\n",
                   batches[f - 3], tps[f], lo[f], hi[f], cpu_med[f], tps[f] / tps[f - 3]);
        printf("prefill %d bf16         %8.1f tok/s  (range %.1f-%.1f; CPU %.2f; %.2fx fp32)\n",
               pp_len, tps[6], lo[6], hi[6], cpu_med[6], tps[6] / tps[3]);
    }

    /* 4. memory and the roofline */
    size_t peak = duet_peak_rss_bytes();
    double rss_limit = 1.1 * (double)(ckpt + kv_bytes);
    printf("peak RSS                %8.2f GB   (checkpoint %.2f GB + KV cache %.2f GB = "
           "%.2f GB; ratio %.3f)\n",
           (double)peak / 1e9, (double)ckpt / 1e9, (double)kv_bytes / 1e9,
           (double)(ckpt + kv_bytes) / 1e9, (double)peak / (double)(ckpt + kv_bytes));
    /* bandwidth again, now that the peak RSS is read: in this process */
    double bw_end = measure_read_bw(o.threads, bw_bytes, bw_reps);
    printf("memory read bandwidth   %8.2f GB/s  (again at the end; the roofline uses %.2f)\n",
           bw_end, DUET_MAX(bw, bw_end));
    bw = DUET_MAX(bw, bw_end);
    token_bytes_t tbytes = decode_token_bytes(m);
    double roof = bw * 1e9 / tbytes.total;
    printf("bytes per decode token  %8.1f MB   (attention %.1f, %d of %d experts %.1f, LM head "
           "%.1f, norms/router/embedding %.2f)\n",
           tbytes.total / 1e6, tbytes.attn / 1e6, cfg->top_k, cfg->n_experts, tbytes.experts / 1e6,
           tbytes.lm_head / 1e6, tbytes.other / 1e6);
    printf("batch-1 roofline        %8.1f tok/s  (bandwidth / bytes per token); measured %.1f "
           "= %.3f of it\n",
           roof, tps[0], tps[0] / roof);

    printf("\nvs llama.cpp (bf16 GGUF, CPU, 2 threads, from the issue):\n");
    printf("  decode b1   %7.1f vs %5.1f tok/s  = %.2fx\n", tps[0], LLAMA_B1_TPS,
           tps[0] / LLAMA_B1_TPS);
    printf("  pp512       %7.1f vs %5.1f tok/s  = %.2fx\n", pp, LLAMA_PP512_TPS,
           pp / LLAMA_PP512_TPS);
    printf("  decode b8   %7.1f vs %5.1f tok/s  = %.2fx\n", tps[1], LLAMA_B8_TPS,
           tps[1] / LLAMA_B8_TPS);
    printf("  decode b64  %7.1f vs %5.1f tok/s  = %.2fx\n", tps[2], LLAMA_B64_TPS,
           tps[2] / LLAMA_B64_TPS);
    printf("goals (2 threads):\n");
    printf("  b1 decode >= 0.75 of roofline      %.3f         %s\n", tps[0] / roof,
           verdict(tps[0] >= 0.75 * roof));
    printf("  prefill >= 1.5x llama.cpp (%3.0f)    %.2fx         %s\n", 1.5 * LLAMA_PP512_TPS,
           pp / LLAMA_PP512_TPS, verdict(pp >= 1.5 * LLAMA_PP512_TPS));
    printf("  b64 decode >= 10x b1               %.2fx        %s%s\n", tps[2] / tps[0],
           verdict(tps[2] >= 10 * tps[0]),
           both        ? "  (fp32)"
           : bf16_runs ? "  (bf16)"
                       : "");
    if (both)
        printf("  b64 decode >= 10x b1               %.2fx        %s  (bf16)\n", tps[5] / tps[0],
               verdict(tps[5] >= 10 * tps[0]));
    printf("  peak RSS <= 1.1x (ckpt + KV)       %.3fx        %s\n",
           (double)peak / (double)(ckpt + kv_bytes), verdict((double)peak <= rss_limit));
    getloadavg(load, 3);
    printf("load average %.2f at the end\n", load[0]);
    rc = 0;
    goto out;

err_engine:
    fprintf(stderr, "bench_model: %s\n", duet_error());
out:
    duet_engine_destroy(&r.eng);
    duet_backend_close(&be);
    duet_model_destroy(&m);
    return rc;
}
