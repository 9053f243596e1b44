/* bench_gpu — the cuda backend's figures (issue 7), each against a ceiling
 * measured in the same process on the same card:
 *
 *   ceilings  device-to-device copy bandwidth (bytes read + written, 2 GiB
 *             buffers) and a dense cuBLAS bf16 GEMM (8192^3, bf16 in, f32
 *             out, f32 accumulation: the type combination the backend uses)
 *             on random data;
 *   ffn       expert FFN (SwiGLU, hidden 4096, width 14336, 8 experts) at
 *             16/64/256/1024 tokens per expert through duet_experts_forward
 *             on the bf16 backend: TFLOP/s and fraction of the GEMM ceiling,
 *             cuBLAS grouped GEMM and per-expert streams;
 *   attn      decode attention, batch 64, context 4096, 32/8 heads, head dim
 *             128, f32 paged KV: bytes of KV read per second as a fraction
 *             of the copy bandwidth;
 *   e2e       decode tokens/s of the mkmodel "mixtral-8l" checkpoint (hidden
 *             4096, 8 layers, 8 experts top-2, width 14336) at batch 1, 64,
 *             256; batch 1 against the weight-streaming roofline (copy
 *             bandwidth / bytes one token reads).
 *
 * Times are CUDA events on the backend's stream (host clock around a
 * synchronised region for e2e); every figure is the median of --reps runs
 * after a warm-up. A short table is printed last (and written to --table).
 *
 * usage: bench_gpu [--only ceilings,ffn,attn,e2e] [--model-dir DIR]
 *                  [--reps N] [--steps N] [--table FILE]
 * Exit 77 without a CUDA device. */
#include <getopt.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <cublas_v2.h>
#include <cuda_runtime_api.h>

#include "gpu/cuda_backend.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/kvcache.h"
#include "model/mkmodel.h"
#include "model/model.h"

#define MAX_ROWS 64
static char g_rows[MAX_ROWS][160];
static int g_nrows;
static int g_reps = 5;
static int g_steps = 32;
static double g_copy_bw = 0, g_gemm_tflops = 0;

static void row(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void row(const char *fmt, ...)
{
    if (g_nrows == MAX_ROWS)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_rows[g_nrows++], sizeof(g_rows[0]), fmt, ap);
    va_end(ap);
}

#define CK(call)                                                                                   \
    do {                                                                                           \
        cudaError_t e_ = (call);                                                                   \
        if (e_ != cudaSuccess) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)
#define DK(call)                                                                                   \
    do {                                                                                           \
        if ((call) != DUET_OK) {                                                                   \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, duet_error());           \
            return -1;                                                                             \
        }                                                                                          \
    } while (0)

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    qsort(v, (size_t)n, sizeof(double), cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t g_rng = 88172645463325252ull;
static inline uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

/* random bf16 in [-scale, scale) */
static void fill_bf16(uint16_t *p, size_t n, float scale)
{
    for (size_t i = 0; i < n; i += 4) {
        const uint64_t r = rnd();
        for (size_t k = 0; k < 4 && i + k < n; k++)
            p[i + k] =
                duet_f32_to_bf16(((float)((r >> (16 * k)) & 0xffff) / 32768.0f - 1.0f) * scale);
    }
}

static void fill_f32(float *p, size_t n, float scale)
{
    for (size_t i = 0; i < n; i++)
        p[i] = ((float)(rnd() >> 40) / 8388608.0f - 1.0f) * scale;
}

/* ---- ceilings ------------------------------------------------------------------ */

static int ceilings(void)
{
    const size_t bytes = (size_t)2 << 30;
    void *a = NULL, *b = NULL;
    CK(cudaMalloc(&a, bytes));
    CK(cudaMalloc(&b, bytes));
    {
        size_t chunk = 64 << 20;
        float *h = malloc(chunk);
        fill_f32(h, chunk / 4, 1.0f);
        for (size_t off = 0; off < bytes; off += chunk)
            CK(cudaMemcpy((char *)a + off, h, chunk, cudaMemcpyHostToDevice));
        free(h);
    }
    cudaStream_t s;
    cudaEvent_t e0, e1;
    CK(cudaStreamCreate(&s));
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    double v[32];
    for (int r = -2; r < 2 * g_reps; r++) {
        CK(cudaEventRecord(e0, s));
        CK(cudaMemcpyAsync(r % 2 ? a : b, r % 2 ? b : a, bytes, cudaMemcpyDeviceToDevice, s));
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 0)
            v[r] = 2.0 * (double)bytes / (ms * 1e-3) / 1e9;
    }
    g_copy_bw = median(v, 2 * g_reps);
    printf("D2D copy: %.0f GB/s (read + write, 2 GiB, median of %d)\n", g_copy_bw, 2 * g_reps);
    CK(cudaFree(a));
    CK(cudaFree(b));

    /* GEMM: 8192^3, bf16 x bf16 -> f32, random data, rotating between two B */
    const int N = 8192;
    const size_t nb = (size_t)N * N * 2;
    void *A = NULL, *B[2] = {NULL, NULL}, *C = NULL;
    CK(cudaMalloc(&A, nb));
    CK(cudaMalloc(&B[0], nb));
    CK(cudaMalloc(&B[1], nb));
    CK(cudaMalloc(&C, (size_t)N * N * 4));
    uint16_t *h = malloc(nb);
    fill_bf16(h, (size_t)N * N, 1.0f);
    CK(cudaMemcpy(A, h, nb, cudaMemcpyHostToDevice));
    fill_bf16(h, (size_t)N * N, 1.0f);
    CK(cudaMemcpy(B[0], h, nb, cudaMemcpyHostToDevice));
    fill_bf16(h, (size_t)N * N, 1.0f);
    CK(cudaMemcpy(B[1], h, nb, cudaMemcpyHostToDevice));
    free(h);
    cublasHandle_t hb;
    if (cublasCreate(&hb) != CUBLAS_STATUS_SUCCESS ||
        cublasSetStream(hb, s) != CUBLAS_STATUS_SUCCESS)
        return -1;
    const float alpha = 1.0f, beta = 0.0f;
    for (int r = -2; r < g_reps; r++) {
        CK(cudaEventRecord(e0, s));
        for (int k = 0; k < 4; k++) {
            cublasStatus_t st = cublasGemmEx(
                hb, CUBLAS_OP_T, CUBLAS_OP_N, N, N, N, &alpha, A, CUDA_R_16BF, N, B[k % 2],
                CUDA_R_16BF, N, &beta, C, CUDA_R_32F, N, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
            if (st != CUBLAS_STATUS_SUCCESS) {
                fprintf(stderr, "cublasGemmEx: %s\n", cublasGetStatusString(st));
                return -1;
            }
        }
        CK(cudaEventRecord(e1, s));
        CK(cudaEventSynchronize(e1));
        float ms;
        CK(cudaEventElapsedTime(&ms, e0, e1));
        if (r >= 0)
            v[r] = 4 * 2.0 * (double)N * N * N / (ms * 1e-3) / 1e12;
    }
    g_gemm_tflops = median(v, g_reps);
    printf("cuBLAS bf16 GEMM 8192^3 (f32 out): %.0f TFLOP/s (median of %d)\n", g_gemm_tflops,
           g_reps);
    cublasDestroy(hb);
    CK(cudaFree(A));
    CK(cudaFree(B[0]));
    CK(cudaFree(B[1]));
    CK(cudaFree(C));
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    CK(cudaStreamDestroy(s));
    row("ceiling  D2D copy                    %8.0f GB/s", g_copy_bw);
    row("ceiling  cuBLAS bf16 GEMM 8192^3     %8.0f TFLOP/s", g_gemm_tflops);
    return 0;
}

/* ---- expert FFN ----------------------------------------------------------------------- */

static float time_ms(duet_backend_t *be, cudaEvent_t e0, cudaEvent_t e1)
{
    float ms = -1.0f;
    cudaStream_t s = duet_cuda_backend_stream(be);
    if (cudaEventRecord(e1, s) != cudaSuccess || cudaEventSynchronize(e1) != cudaSuccess ||
        cudaEventElapsedTime(&ms, e0, e1) != cudaSuccess)
        return -1.0f;
    return ms;
}

static int ffn(duet_backend_t *be)
{
    enum { E = 8, H = 4096, D = 14336 };
    static const int toks[] = {16, 64, 256, 1024};
    /* a one-layer model holding 8 experts (bf16) */
    duet_model_t m;
    memset(&m, 0, sizeof(m));
    duet_layer_weights_t L;
    memset(&L, 0, sizeof(L));
    duet_expert_weights_t ew[E];
    bool sparse = true;
    m.cfg.hidden = H;
    m.cfg.expert_dim = D;
    m.cfg.n_experts = E;
    m.cfg.top_k = 2;
    m.cfg.n_layers = 1;
    m.cfg.sparse_layer = &sparse;
    m.layers = &L;
    L.experts = ew;
    const size_t wn = (size_t)H * D;
    uint16_t *host = malloc(wn * 2 * 3 * E);
    if (!host)
        return -1;
    printf("expert FFN: generating %zu MB of bf16 weights\n", (wn * 6 * E) >> 20);
    fill_bf16(host, wn * 3 * E, 0.02f);
    for (int e = 0; e < E; e++) {
        duet_tensor_t *t[3] = {&ew[e].gate, &ew[e].up, &ew[e].down};
        for (int k = 0; k < 3; k++) {
            t[k]->dtype = DUET_DTYPE_BF16;
            t[k]->ndim = 2;
            t[k]->shape[0] = k == 2 ? H : D;
            t[k]->shape[1] = k == 2 ? D : H;
            t[k]->data = host + ((size_t)e * 3 + k) * wn;
            t[k]->nbytes = wn * 2;
        }
    }
    DK(be->ops->weights_prepare(be, &m));
    const int max_t = 1024;
    duet_experts_t *ex = NULL;
    DK(duet_experts_create(be, &m, max_t * E, &ex));
    void *x = NULL, *y = NULL;
    DK(be->ops->buf_alloc(be, sizeof(float) * (size_t)max_t * E * H, &x));
    DK(be->ops->buf_alloc(be, sizeof(float) * (size_t)max_t * E * H, &y));
    {
        float *hx = malloc(sizeof(float) * (size_t)max_t * E * H);
        fill_f32(hx, (size_t)max_t * E * H, 1.0f);
        DK(be->ops->buf_upload(be, x, hx, sizeof(float) * (size_t)max_t * E * H));
        free(hx);
    }
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    int32_t ids[E], cnt[E];
    for (int e = 0; e < E; e++)
        ids[e] = e;
    static const duet_backend_grouped_t modes[2] = {DUET_GROUPED_CUBLAS, DUET_GROUPED_STREAMS};
    static const char *mname[2] = {"grouped", "streams"};
    for (size_t ti = 0; ti < sizeof(toks) / sizeof(toks[0]); ti++) {
        const int T = toks[ti];
        for (int e = 0; e < E; e++)
            cnt[e] = T;
        const double flop = 3.0 * 2.0 * T * (double)H * D * E;
        double tf[2] = {0, 0};
        for (int mi = 0; mi < 2; mi++) {
            if (duet_cuda_backend_set_grouped(be, modes[mi])) {
                printf("  %s: %s\n", mname[mi], duet_error());
                continue;
            }
            const int iters = T >= 256 ? 3 : 10;
            double v[32];
            int ok = 1;
            for (int r = -1; r < g_reps && ok; r++) {
                CK(cudaEventRecord(e0, duet_cuda_backend_stream(be)));
                for (int it = 0; it < iters; it++)
                    if (duet_experts_forward(ex, 0, E, ids, cnt, x, y)) {
                        printf("  %s T=%d: %s\n", mname[mi], T, duet_error());
                        ok = 0;
                        break;
                    }
                float ms = time_ms(be, e0, e1);
                if (ms < 0)
                    return -1;
                if (r >= 0)
                    v[r] = flop * iters / (ms * 1e-3) / 1e12;
            }
            if (!ok)
                continue;
            tf[mi] = median(v, g_reps);
            printf("  expert FFN %4d tok/expert %-8s %7.1f TFLOP/s  %.2f of GEMM ceiling\n", T,
                   mname[mi], tf[mi], g_gemm_tflops > 0 ? tf[mi] / g_gemm_tflops : 0.0);
        }
        row("ffn %4d tok/expert  grouped %6.1f TF (%.2f)  streams %6.1f TF (%.2f)%s", T, tf[0],
            g_gemm_tflops > 0 ? tf[0] / g_gemm_tflops : 0.0, tf[1],
            g_gemm_tflops > 0 ? tf[1] / g_gemm_tflops : 0.0, T >= 256 ? "  goal >= 0.70" : "");
    }
    DK(duet_cuda_backend_set_grouped(be, DUET_GROUPED_AUTO));
    be->ops->buf_free(be, x);
    be->ops->buf_free(be, y);
    duet_experts_destroy(&ex);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    free(host); /* the backend keeps its device copies until it is closed */
    return 0;
}

/* ---- decode attention ----------------------------------------------------------------------- */

static int attn(duet_backend_t *be)
{
    enum { BATCH = 64, CTX = 4096, NH = 32, NKV = 8, HD = 128, BS = 16 };
    const int32_t bps = CTX / BS, n_blocks = BATCH * bps;
    const size_t slab = (size_t)BS * HD, cache_n = (size_t)n_blocks * NKV * slab;
    void *kc = NULL, *vc = NULL, *q = NULL, *k = NULL, *v = NULL, *out = NULL;
    DK(be->ops->buf_alloc(be, cache_n * 4, &kc));
    DK(be->ops->buf_alloc(be, cache_n * 4, &vc));
    {
        const size_t chunk = (size_t)16 << 20; /* floats: 64 MB of random data, tiled */
        float *h = malloc(chunk * 4);
        fill_f32(h, chunk, 1.0f);
        for (size_t off = 0; off < cache_n; off += chunk) {
            size_t n = cache_n - off < chunk ? cache_n - off : chunk;
            DK(be->ops->buf_upload(be, (float *)kc + off, h, n * 4));
            DK(be->ops->buf_upload(be, (float *)vc + off, h, n * 4));
        }
        free(h);
    }
    DK(be->ops->buf_alloc(be, sizeof(float) * BATCH * NH * HD, &q));
    DK(be->ops->buf_alloc(be, sizeof(float) * BATCH * NKV * HD, &k));
    DK(be->ops->buf_alloc(be, sizeof(float) * BATCH * NKV * HD, &v));
    DK(be->ops->buf_alloc(be, sizeof(float) * BATCH * NH * HD, &out));
    {
        float *h = malloc(sizeof(float) * BATCH * NH * HD);
        fill_f32(h, BATCH * NH * HD, 1.0f);
        DK(be->ops->buf_upload(be, q, h, sizeof(float) * BATCH * NH * HD));
        DK(be->ops->buf_upload(be, k, h, sizeof(float) * BATCH * NKV * HD));
        DK(be->ops->buf_upload(be, v, h + 1, sizeof(float) * BATCH * NKV * HD));
        free(h);
    }
    /* each sequence: a random permutation slice of the blocks */
    int32_t *perm = malloc(sizeof(int32_t) * (size_t)n_blocks);
    for (int32_t i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int32_t i = n_blocks - 1; i > 0; i--) {
        int32_t j = (int32_t)(rnd() % (uint64_t)(i + 1)), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    duet_attn_seq_t seqs[BATCH];
    int32_t pos[BATCH];
    for (int i = 0; i < BATCH; i++) {
        seqs[i] = (duet_attn_seq_t){i, 1, CTX - 1, perm + (size_t)i * bps};
        pos[i] = CTX - 1;
    }
    duet_attn_batch_t b = {BATCH, seqs, BATCH, pos};
    duet_kv_layer_t kv = {kc, vc, n_blocks, BS, NKV, HD};
    cudaEvent_t e0, e1;
    CK(cudaEventCreate(&e0));
    CK(cudaEventCreate(&e1));
    const double bytes = 2.0 * BATCH * (double)CTX * NKV * HD * 4; /* K and V read once */
    double vv[32];
    const int iters = 20;
    for (int r = -1; r < g_reps; r++) {
        CK(cudaEventRecord(e0, duet_cuda_backend_stream(be)));
        for (int it = 0; it < iters; it++)
            DK(be->ops->attention(be, &b, &kv, q, k, v, NH, 1.0f / sqrtf((float)HD), out));
        float ms = time_ms(be, e0, e1);
        if (ms < 0)
            return -1;
        if (r >= 0)
            vv[r] = bytes * iters / (ms * 1e-3) / 1e9;
    }
    double gbs = median(vv, g_reps);
    printf("decode attention b%d ctx %d %d/%d hd %d: %.0f GB/s of KV, %.2f of copy bandwidth, %.3f "
           "ms per call\n",
           BATCH, CTX, NH, NKV, HD, gbs, g_copy_bw > 0 ? gbs / g_copy_bw : 0.0, bytes / gbs / 1e6);
    row("attn b64 ctx4096 32/8 hd128 (f32 KV) %6.0f GB/s  %.2f of copy bw  goal >= 0.60", gbs,
        g_copy_bw > 0 ? gbs / g_copy_bw : 0.0);
    free(perm);
    void *bufs[] = {kc, vc, q, k, v, out};
    for (size_t i = 0; i < sizeof(bufs) / sizeof(bufs[0]); i++)
        be->ops->buf_free(be, bufs[i]);
    CK(cudaEventDestroy(e0));
    CK(cudaEventDestroy(e1));
    return 0;
}

/* ---- end to end -------------------------------------------------------------------------------
 */

static size_t tb(const duet_tensor_t *t)
{
    return t->data ? t->nbytes : 0;
}

/* Bytes one batch-1 decode token reads: everything but the experts, plus
 * top_k experts per sparse layer, the LM head and one embedding row. */
static double token_bytes(const duet_model_t *m)
{
    const duet_config_t *c = &m->cfg;
    double b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const duet_layer_weights_t *L = &m->layers[l];
        const duet_tensor_t *t[] = {&L->wq,       &L->wk,     &L->wv,     &L->wo,
                                    &L->bq,       &L->bk,     &L->bv,     &L->attn_norm,
                                    &L->ffn_norm, &L->q_norm, &L->k_norm, &L->router};
        for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
            b += (double)tb(t[i]);
        const duet_expert_weights_t *e = &L->experts[0];
        b += (double)c->top_k * (double)(tb(&e->gate) + tb(&e->up) + tb(&e->down));
    }
    b += (double)tb(&m->lm_head) + (double)tb(&m->final_norm) +
         (double)c->hidden * (double)duet_dtype_size(m->embed.dtype);
    return b;
}

static int e2e(duet_backend_t *be, const char *dir)
{
    char cfgp[1100];
    snprintf(cfgp, sizeof(cfgp), "%s/config.json", dir);
    struct stat sb;
    if (stat(cfgp, &sb) != 0) {
        duet_mkmodel_opts_t o;
        DK(duet_mkmodel_preset("mixtral-8l", &o));
        printf("writing the mixtral-8l checkpoint (%.1f GB) to %s\n",
               (double)duet_mkmodel_bytes(&o) / 1e9, dir);
        double t0 = duet_now_s();
        DK(duet_mkmodel_write(dir, &o));
        printf("  written in %.1f s\n", duet_now_s() - t0);
    }
    duet_model_t *m = NULL;
    duet_load_opts_t lo = {.prefault = false};
    DK(duet_model_load(dir, &lo, &m));
    const duet_config_t *c = &m->cfg;
    enum { PROMPT = 16, MAXB = 256 };
    const int steps = g_steps;
    duet_engine_opts_t eo = {0};
    eo.fwd.max_tokens = MAXB * PROMPT;
    eo.fwd.max_seqs = MAXB;
    eo.fwd.max_logits = MAXB;
    eo.kv.block_size = 16;
    eo.kv.max_seqs = MAXB;
    eo.kv.n_blocks = MAXB * ((PROMPT + steps + 1 + 15) / 16 + 1);
    eo.kv.max_seq_len = PROMPT + steps + 16;
    double t0 = duet_now_s();
    duet_engine_t *eng = NULL;
    DK(duet_engine_create(be, m, &eo, &eng)); /* uploads the weights */
    duet_cuda_mem_t mem;
    DK(duet_cuda_backend_mem(be, &mem));
    printf("e2e: engine ready in %.1f s: %zu MiB of weights, %zu MiB of buffers on %s\n",
           duet_now_s() - t0, mem.weights >> 20, mem.buffers >> 20, mem.name);
    static const int batches[] = {1, 64, 256};
    double tps[3] = {0, 0, 0};
    int32_t *toks = malloc(sizeof(int32_t) * MAXB * PROMPT);
    for (size_t bi = 0; bi < 3; bi++) {
        const int B = batches[bi];
        int32_t seq[MAXB], cur[MAXB];
        duet_seq_input_t in[MAXB];
        duet_sampling_params_t sp[MAXB];
        for (int i = 0; i < B; i++) {
            DK(duet_kvcache_seq_open(duet_engine_kv(eng), &seq[i]));
            for (int t = 0; t < PROMPT; t++)
                toks[i * PROMPT + t] = (int32_t)(rnd() % (uint64_t)(c->vocab - 1));
            in[i] = (duet_seq_input_t){seq[i], PROMPT, toks + i * PROMPT, DUET_LOGITS_LAST};
            sp[i] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0};
        }
        DK(duet_engine_step(eng, B, in, NULL, NULL));
        DK(duet_engine_sample(eng, sp, cur));
        double v[16];
        int reps = 0;
        for (int r = 0; r < 3; r++) { /* 3 timed stretches of steps/3 */
            const int n = steps / 3;
            DK(be->ops->sync(be));
            double s0 = duet_now_s();
            for (int g = 0; g < n; g++) {
                for (int i = 0; i < B; i++)
                    in[i] = (duet_seq_input_t){seq[i], 1, &cur[i], DUET_LOGITS_LAST};
                DK(duet_engine_step(eng, B, in, NULL, NULL));
                DK(duet_engine_sample(eng, sp, cur));
            }
            DK(be->ops->sync(be));
            v[reps++] = (double)B * n / (duet_now_s() - s0);
        }
        tps[bi] = median(v, reps);
        for (int i = 0; i < B; i++)
            duet_kvcache_seq_close(duet_engine_kv(eng), seq[i]);
        printf("  e2e decode batch %3d: %.1f tok/s\n", B, tps[bi]);
    }
    const double bytes = token_bytes(m);
    const double roof = g_copy_bw > 0 ? g_copy_bw * 1e9 / bytes : 0;
    printf("  batch-1 roofline: %.2f GB per token, %.0f tok/s at %.0f GB/s; measured %.2f of it\n",
           bytes / 1e9, roof, g_copy_bw, roof > 0 ? tps[0] / roof : 0.0);
    row("e2e mixtral-8l decode b1   %8.1f tok/s  %.2f of roofline (%.0f)  goal >= 0.60", tps[0],
        roof > 0 ? tps[0] / roof : 0.0, roof);
    row("e2e mixtral-8l decode b64  %8.1f tok/s", tps[1]);
    row("e2e mixtral-8l decode b256 %8.1f tok/s", tps[2]);
    free(toks);
    duet_engine_destroy(&eng);
    duet_model_destroy(&m);
    return 0;
}

int main(int argc, char **argv)
{
    const char *only = "ceilings,ffn,attn,e2e", *dir = "/tmp/duet-mixtral-8l", *table = NULL;
    static const struct option lopts[] = {{"only", required_argument, NULL, 'o'},
                                          {"model-dir", required_argument, NULL, 'm'},
                                          {"reps", required_argument, NULL, 'r'},
                                          {"steps", required_argument, NULL, 's'},
                                          {"table", required_argument, NULL, 't'},
                                          {"help", no_argument, NULL, 'h'},
                                          {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
        switch (ch) {
        case 'o': only = optarg; break;
        case 'm': dir = optarg; break;
        case 'r': g_reps = atoi(optarg) > 0 && atoi(optarg) <= 16 ? atoi(optarg) : 5; break;
        case 's': g_steps = atoi(optarg) >= 3 ? atoi(optarg) : 32; break;
        case 't': table = optarg; break;
        case 'h':
            printf("usage: bench_gpu [--only ceilings,ffn,attn,e2e] [--model-dir DIR] [--reps N]\n"
                   "                 [--steps N] [--table FILE]\n"
                   "GPU figures of the cuda backend, each against ceilings measured in the same\n"
                   "run (see the comment at the top of bench/bench_gpu.c). e2e writes the\n"
                   "mkmodel 'mixtral-8l' checkpoint (~24 GB) into DIR when it is not there.\n");
            return 0;
        default: return 2;
        }
    }
    char why[256];
    if (duet_cuda_device_count(why, sizeof(why)) == 0) {
        printf("%s\n", why);
        return 77;
    }
    int rc = 0;
    if (strstr(only, "ceilings") && ceilings())
        rc = 1;
    duet_backend_t *be = NULL;
    duet_backend_opts_t o = {0};
    o.precision = DUET_PRECISION_BF16;
    if (duet_backend_open("cuda", &o, &be)) {
        fprintf(stderr, "cuda backend: %s\n", duet_error());
        return 1;
    }
    duet_cuda_mem_t mem;
    if (!duet_cuda_backend_mem(be, &mem))
        printf("device: %s, %zu MiB free of %zu\n", mem.name, mem.free_b >> 20, mem.total_b >> 20);
    if (strstr(only, "ffn") && ffn(be))
        rc = 1;
    duet_backend_close(&be); /* drop the FFN weights */
    if (duet_backend_open("cuda", &o, &be)) {
        fprintf(stderr, "cuda backend: %s\n", duet_error());
        return 1;
    }
    if (strstr(only, "attn") && attn(be))
        rc = 1;
    if (strstr(only, "e2e") && e2e(be, dir))
        rc = 1;
    duet_backend_close(&be);
    FILE *tf = table ? fopen(table, "a") : NULL;
    printf("\n== bench_gpu (%s) ==\n", mem.name);
    for (int i = 0; i < g_nrows; i++) {
        printf("%s\n", g_rows[i]);
        if (tf)
            fprintf(tf, "%s\n", g_rows[i]);
    }
    if (tf)
        fclose(tf);
    return rc;
}
