/* Backend parity: every op of model/backend.h on backend A and backend B
 * (the reference, cpu) with fresh random inputs; outputs poisoned with NaN
 * before each op so an unwritten element fails; KV caches NaN-filled so a
 * read of a slot nobody wrote fails. Error = ||a - b|| / ||b|| over the
 * whole output; GEMM-bearing ops use the precision's tolerance.
 *
 *   test_gpu_parity cuda fp32|bf16   cuda against cpu (exit 77 without a device)
 *   test_gpu_parity cpu              cpu (1 thread) against cpu (2 threads):
 *                                    the harness itself, runs anywhere
 *   test_gpu_parity faulty           a cpu backend with planted faults (one
 *                                    element unwritten, one off by 1e-3, a
 *                                    wrong token, a wrong expert): the
 *                                    harness must flag exactly those ops
 *
 * Tolerances: fp32 1e-5 relative; bf16 1e-2 (GEMMs round activations). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/backend.h"
#if defined(DUET_HAVE_CUDA_BACKEND)
#include "gpu/cuda_backend.h"
#endif

typedef struct side {
    duet_backend_t *be;
} side_t;

static duet_backend_t *A, *B; /* B is the reference */
static double g_tol_gemm = 1e-5, g_tol = 1e-5;
static int g_fail;
static char g_failed_ops[4096];
static uint64_t g_rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return g_rng;
}

static float frand(void) /* [-1, 1) */
{
    return (float)((double)(rnd() >> 11) / 4503599627370496.0 - 1.0);
}

static int irand(int n)
{
    return (int)(rnd() % (uint64_t)n);
}

static void die(const char *what)
{
    fprintf(stderr, "FATAL: %s: %s\n", what, duet_error());
    exit(1);
}

#define CHECK(expr)                                                                                \
    do {                                                                                           \
        if ((expr) != DUET_OK)                                                                     \
            die(#expr);                                                                            \
    } while (0)

static float *rand_vec(size_t n, float scale)
{
    float *v = malloc(sizeof(float) * (n ? n : 1));
    for (size_t i = 0; i < n; i++)
        v[i] = frand() * scale;
    return v;
}

/* A buffer on backend be holding host[n] (NaN-filled when host is NULL). */
static float *dev(duet_backend_t *be, const float *host, size_t n)
{
    void *p;
    CHECK(be->ops->buf_alloc(be, sizeof(float) * (n ? n : 1), &p));
    float *tmp = NULL;
    if (!host) {
        tmp = malloc(sizeof(float) * (n ? n : 1));
        for (size_t i = 0; i < n; i++)
            tmp[i] = NAN;
        host = tmp;
    }
    CHECK(be->ops->buf_upload(be, p, host, sizeof(float) * n));
    free(tmp);
    return p;
}

static float *down(duet_backend_t *be, const float *d, size_t n)
{
    float *h = malloc(sizeof(float) * (n ? n : 1));
    CHECK(be->ops->buf_download(be, h, d, sizeof(float) * n));
    return h;
}

static void note_fail(const char *what)
{
    g_fail++;
    size_t l = strlen(g_failed_ops);
    snprintf(g_failed_ops + l, sizeof(g_failed_ops) - l, "%s%s", l ? "," : "", what);
}

/* Compare output a against reference b. op: short name recorded on failure. */
static void compare(const char *op, const char *detail, const float *a, const float *b, size_t n,
                    double tol)
{
    double num = 0.0, den = 0.0;
    size_t bad_nan = 0, first_nan = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(a[i]) && !(isnan(b[i]) == 0 && a[i] == b[i])) {
            if (!bad_nan++)
                first_nan = i;
            continue;
        }
        double d = (double)a[i] - (double)b[i];
        num += d * d;
        den += (double)b[i] * (double)b[i];
    }
    double err = den > 0 ? sqrt(num / den) : sqrt(num);
    bool ok = !bad_nan && err <= tol;
    printf("%s %-18s %-44s rel err %.2e (tol %.0e)%s\n", ok ? "ok  " : "FAIL", op, detail, err, tol,
           bad_nan ? "" : "");
    if (bad_nan)
        printf("     %zu non-finite / unwritten elements (first at %zu of %zu)\n", bad_nan,
               first_nan, n);
    if (!ok)
        note_fail(op);
}

static void compare_i32(const char *op, const char *detail, const int32_t *a, const int32_t *b,
                        size_t n)
{
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < n; i++)
        if (a[i] != b[i] && !bad++)
            first = i;
    printf("%s %-18s %-44s %zu of %zu differ\n", bad ? "FAIL" : "ok  ", op, detail, bad, n);
    if (bad) {
        printf("     first at %zu: %d vs %d\n", first, a[first], b[first]);
        note_fail(op);
    }
}

/* ---- weights -------------------------------------------------------------- */

typedef struct wt {
    duet_tensor_t t;
    void *mem;
} wt_t;

static wt_t make_w(duet_dtype_t dt, int64_t rows, int64_t cols, float scale)
{
    wt_t w;
    memset(&w, 0, sizeof(w));
    size_t n = (size_t)(rows * cols);
    size_t es = dt == DUET_DTYPE_F32 ? 4 : 2;
    w.mem = malloc(n * es);
    for (size_t i = 0; i < n; i++) {
        float f = frand() * scale;
        if (dt == DUET_DTYPE_F32)
            ((float *)w.mem)[i] = f;
        else if (dt == DUET_DTYPE_BF16)
            ((uint16_t *)w.mem)[i] = duet_f32_to_bf16(f);
        else
            ((uint16_t *)w.mem)[i] = duet_f32_to_f16(f);
    }
    w.t.dtype = dt;
    w.t.ndim = rows == 1 ? 1 : 2;
    if (rows == 1) {
        w.t.shape[0] = cols;
    } else {
        w.t.shape[0] = rows;
        w.t.shape[1] = cols;
    }
    w.t.data = w.mem;
    w.t.nbytes = n * es;
    return w;
}

static const char *dtn(duet_dtype_t dt)
{
    return duet_dtype_name(dt);
}

/* ---- per-op checks ---------------------------------------------------------- */

static void t_matmul(duet_dtype_t dt, int64_t n, int64_t in, int64_t out, bool bias, bool acc,
                     bool lm)
{
    wt_t w = make_w(dt, out, in, 0.1f), bw = make_w(DUET_DTYPE_BF16, 1, out, 0.5f);
    float *x = rand_vec((size_t)(n * in), 1.0f), *y0 = rand_vec((size_t)(n * out), 1.0f);
    float *r[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *dx = dev(be, x, (size_t)(n * in));
        float *dy = dev(be, acc ? y0 : NULL, (size_t)(n * out));
        if (lm)
            CHECK(be->ops->lm_head(be, dx, n, in, &w.t, dy));
        else
            CHECK(be->ops->matmul(be, dx, n, in, &w.t, bias ? &bw.t : NULL, dy, acc));
        r[s] = down(be, dy, (size_t)(n * out));
        be->ops->buf_free(be, dx);
        be->ops->buf_free(be, dy);
    }
    char d[96];
    snprintf(d, sizeof(d), "%s n=%lld in=%lld out=%lld%s%s", dtn(dt), (long long)n, (long long)in,
             (long long)out, bias ? " bias" : "", acc ? " acc" : "");
    compare(lm ? "lm_head" : "matmul", d, r[0], r[1], (size_t)(n * out), g_tol_gemm);
    free(r[0]);
    free(r[1]);
    free(x);
    free(y0);
    free(w.mem);
    free(bw.mem);
}

/* gate/up of three experts plus a projection sharing x, one with bias, one
 * accumulating, one with zero rows. */
static void t_matmul_batch(duet_dtype_t dt, const char *mode)
{
    enum { K = 10 };
    const int64_t in = 64, out = 48;
    int64_t ns[K] = {5, 5, 1, 1, 17, 17, 0, 0, 3, 3}; /* pairs share x (gate and up) */
    wt_t w[K];
    wt_t bw = make_w(DUET_DTYPE_F32, 1, out, 0.5f);
    float *x[K], *y0[K];
    for (int i = 0; i < K; i++) {
        w[i] = make_w(dt, out, in, 0.1f);
        x[i] = (i % 2 == 1) ? x[i - 1] : rand_vec((size_t)(ns[i] * in), 1.0f);
        y0[i] = rand_vec((size_t)(ns[i] * out), 1.0f);
    }
    float *r[2][K];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        duet_matmul_desc_t md[K];
        float *dx[K], *dy[K];
        for (int i = 0; i < K; i++) {
            dx[i] = (i % 2 == 1) ? dx[i - 1] : dev(be, x[i], (size_t)(ns[i] * in));
            dy[i] = dev(be, i == 9 ? y0[i] : NULL, (size_t)(ns[i] * out));
            md[i] = (duet_matmul_desc_t){dx[i], ns[i], in, &w[i].t, i == 4 ? &bw.t : NULL,
                                         dy[i], i == 9};
        }
        CHECK(be->ops->matmul_batch(be, md, K));
        for (int i = 0; i < K; i++) {
            r[s][i] = down(be, dy[i], (size_t)(ns[i] * out));
            if (i % 2 == 0)
                be->ops->buf_free(be, dx[i]);
            be->ops->buf_free(be, dy[i]);
        }
    }
    for (int i = 0; i < K; i++) {
        char d[96];
        snprintf(d, sizeof(d), "%s %s #%d n=%lld", mode, dtn(dt), i, (long long)ns[i]);
        compare("matmul_batch", d, r[0][i], r[1][i], (size_t)(ns[i] * out), g_tol_gemm);
        free(r[0][i]);
        free(r[1][i]);
        if (i % 2 == 0)
            free(x[i]);
        free(y0[i]);
        free(w[i].mem);
    }
    free(bw.mem);
}

static void t_rmsnorm(duet_dtype_t dt, int64_t rows, int64_t dim, bool inplace)
{
    wt_t w = make_w(dt, 1, dim, 1.0f);
    float *x = rand_vec((size_t)(rows * dim), 3.0f);
    float *r[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *dx = dev(be, x, (size_t)(rows * dim));
        float *dy = inplace ? dx : dev(be, NULL, (size_t)(rows * dim));
        CHECK(be->ops->rmsnorm(be, dx, rows, dim, &w.t, 1e-5f, dy));
        r[s] = down(be, dy, (size_t)(rows * dim));
        if (!inplace)
            be->ops->buf_free(be, dy);
        be->ops->buf_free(be, dx);
    }
    char d[96];
    snprintf(d, sizeof(d), "%s rows=%lld dim=%lld%s", dtn(dt), (long long)rows, (long long)dim,
             inplace ? " in place" : "");
    compare("rmsnorm", d, r[0], r[1], (size_t)(rows * dim), g_tol);
    free(r[0]);
    free(r[1]);
    free(x);
    free(w.mem);
}

static void t_rope(int64_t n, int32_t nh, int32_t nkv, int32_t hd, duet_dtype_t fdt, bool with_k)
{
    float *q = rand_vec((size_t)(n * nh * hd), 1.0f), *k = rand_vec((size_t)(n * nkv * hd), 1.0f);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        pos[i] = irand(4096);
    float *rq[2], *rk[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *dq = dev(be, q, (size_t)(n * nh * hd)), *dk = dev(be, k, (size_t)(n * nkv * hd));
        CHECK(be->ops->rope(be, dq, with_k ? dk : NULL, n, pos, nh, nkv, hd, 1e6f, fdt));
        rq[s] = down(be, dq, (size_t)(n * nh * hd));
        rk[s] = down(be, dk, (size_t)(n * nkv * hd));
        be->ops->buf_free(be, dq);
        be->ops->buf_free(be, dk);
    }
    char d[96];
    snprintf(d, sizeof(d), "n=%lld %d/%d hd=%d freq %s%s", (long long)n, nh, nkv, hd, dtn(fdt),
             with_k ? "" : " q only");
    compare("rope", d, rq[0], rq[1], (size_t)(n * nh * hd), g_tol);
    compare("rope(k)", d, rk[0], rk[1], (size_t)(n * nkv * hd), g_tol);
    for (int s = 0; s < 2; s++) {
        free(rq[s]);
        free(rk[s]);
    }
    free(q);
    free(k);
    free(pos);
}

/* Attention over a paged cache: n_seqs sequences, each first given `pre`
 * tokens of context (prefill call 1), then a second call mixing prefill
 * chunks and decode tokens. Block tables are random permutations. */
static int32_t g_pre_floor; /* context at least this long (the split path) */

static void t_attention(int32_t nh, int32_t nkv, int32_t hd, int32_t bs, int32_t n_seqs,
                        int32_t max_pre, int32_t max_new)
{
    const int32_t n_blocks = 2048;
    int32_t *perm = malloc(sizeof(int32_t) * n_blocks);
    for (int32_t i = 0; i < n_blocks; i++)
        perm[i] = i;
    for (int32_t i = n_blocks - 1; i > 0; i--) {
        int32_t j = irand(i + 1), t = perm[i];
        perm[i] = perm[j];
        perm[j] = t;
    }
    int32_t pre[64], nw[64], *tables[64];
    int32_t used = 0;
    for (int32_t s = 0; s < n_seqs; s++) {
        pre[s] = 1 + irand(max_pre);
        if (pre[s] < g_pre_floor)
            pre[s] = g_pre_floor;
        nw[s] = (s % 2) ? 1 : 1 + irand(max_new); /* odd sequences decode one token */
        int32_t nb = (pre[s] + nw[s] + bs - 1) / bs;
        tables[s] = perm + used;
        used += nb;
        if (used > n_blocks) {
            fprintf(stderr, "attention test: too many blocks\n");
            exit(1);
        }
    }
    const size_t slab = (size_t)bs * (size_t)hd;
    const size_t cache_n = (size_t)n_blocks * (size_t)nkv * slab;
    const float scale = 1.0f / sqrtf((float)hd);
    float *res[2][2];
    int32_t ntok[2];
    duet_backend_t *bes[2] = {A, B};
    /* host inputs of both calls */
    float *hq[2], *hk[2], *hv[2];
    duet_attn_seq_t seqs[2][64];
    int32_t *positions[2];
    for (int call = 0; call < 2; call++) {
        int32_t tok = 0;
        for (int32_t s = 0; s < n_seqs; s++) {
            int32_t cnt = call == 0 ? pre[s] : nw[s];
            seqs[call][s] = (duet_attn_seq_t){tok, cnt, call == 0 ? 0 : pre[s], tables[s]};
            tok += cnt;
        }
        ntok[call] = tok;
        positions[call] = malloc(sizeof(int32_t) * (size_t)tok);
        for (int32_t s = 0; s < n_seqs; s++)
            for (int32_t t = 0; t < seqs[call][s].n_tokens; t++)
                positions[call][seqs[call][s].tok0 + t] = seqs[call][s].pos0 + t;
        hq[call] = rand_vec((size_t)tok * nh * hd, 1.0f);
        hk[call] = rand_vec((size_t)tok * nkv * hd, 1.0f);
        hv[call] = rand_vec((size_t)tok * nkv * hd, 1.0f);
    }
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        duet_kv_layer_t kv = {
            dev(be, NULL, cache_n), dev(be, NULL, cache_n), n_blocks, bs, nkv, hd};
        for (int call = 0; call < 2; call++) {
            int32_t tok = ntok[call];
            duet_attn_batch_t b = {n_seqs, seqs[call], tok, positions[call]};
            float *dq = dev(be, hq[call], (size_t)tok * nh * hd);
            float *dk = dev(be, hk[call], (size_t)tok * nkv * hd);
            float *dv = dev(be, hv[call], (size_t)tok * nkv * hd);
            float *dout = dev(be, NULL, (size_t)tok * nh * hd);
            CHECK(be->ops->attention(be, &b, &kv, dq, dk, dv, nh, scale, dout));
            res[s][call] = down(be, dout, (size_t)tok * nh * hd);
            be->ops->buf_free(be, dq);
            be->ops->buf_free(be, dk);
            be->ops->buf_free(be, dv);
            be->ops->buf_free(be, dout);
        }
        be->ops->buf_free(be, kv.k);
        be->ops->buf_free(be, kv.v);
    }
    for (int call = 0; call < 2; call++) {
        char d[96];
        snprintf(d, sizeof(d), "%s %d/%d hd=%d bs=%d seqs=%d tok=%d", call ? "mixed" : "prefill",
                 nh, nkv, hd, bs, n_seqs, ntok[call]);
        compare("attention", d, res[0][call], res[1][call], (size_t)ntok[call] * nh * hd, g_tol);
        free(res[0][call]);
        free(res[1][call]);
        free(hq[call]);
        free(hk[call]);
        free(hv[call]);
        free(positions[call]);
    }
    free(perm);
}

static void t_route(int64_t n, int32_t E, int32_t k, bool norm)
{
    float *lg = rand_vec((size_t)(n * E), 4.0f);
    int32_t *ids[2];
    float *wts[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *d = dev(be, lg, (size_t)(n * E));
        ids[s] = malloc(sizeof(int32_t) * (size_t)(n * k));
        wts[s] = malloc(sizeof(float) * (size_t)(n * k));
        for (int64_t i = 0; i < n * k; i++) {
            ids[s][i] = -7;
            wts[s][i] = NAN;
        }
        CHECK(be->ops->route(be, d, n, E, k, norm, ids[s], wts[s]));
        be->ops->buf_free(be, d);
    }
    char d[96];
    snprintf(d, sizeof(d), "n=%lld top-%d of %d%s", (long long)n, k, E, norm ? " norm" : "");
    compare_i32("route(ids)", d, ids[0], ids[1], (size_t)(n * k));
    compare("route(weights)", d, wts[0], wts[1], (size_t)(n * k), g_tol);
    for (int s = 0; s < 2; s++) {
        free(ids[s]);
        free(wts[s]);
    }
    free(lg);
}

typedef enum { EW_SWIGLU, EW_SWIGLU_ALIAS, EW_ADD, EW_SIGMOID } ew_t;

static void t_elementwise(ew_t kind, int64_t rows, int64_t dim)
{
    const size_t n = (size_t)(rows * dim);
    float *a = rand_vec(n, 4.0f), *b = rand_vec(n, 2.0f), *g = rand_vec((size_t)rows, 3.0f);
    float *r[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *da = dev(be, a, n), *db = dev(be, b, n), *dg = dev(be, g, (size_t)rows), *res;
        switch (kind) {
        case EW_SWIGLU:
            res = dev(be, NULL, n);
            CHECK(be->ops->swiglu(be, da, db, rows, dim, res));
            break;
        case EW_SWIGLU_ALIAS:
            res = da;
            CHECK(be->ops->swiglu(be, da, db, rows, dim, da));
            break;
        case EW_ADD:
            res = db;
            CHECK(be->ops->add(be, da, (int64_t)n, db));
            break;
        default:
            res = db;
            CHECK(be->ops->sigmoid_gate_add(be, da, dg, rows, dim, db));
            break;
        }
        r[s] = down(be, res, n);
        if (res != da && res != db)
            be->ops->buf_free(be, res);
        be->ops->buf_free(be, da);
        be->ops->buf_free(be, db);
        be->ops->buf_free(be, dg);
    }
    static const char *names[] = {"swiglu", "swiglu(alias)", "add", "sigmoid_gate_add"};
    char d[96];
    snprintf(d, sizeof(d), "rows=%lld dim=%lld", (long long)rows, (long long)dim);
    compare(names[kind], d, r[0], r[1], n, g_tol);
    free(r[0]);
    free(r[1]);
    free(a);
    free(b);
    free(g);
}

static void t_gather_scatter(int64_t src_rows, int64_t n, int64_t dim, bool weighted)
{
    float *src = rand_vec((size_t)(src_rows * dim), 1.0f);
    float *rows = rand_vec((size_t)(n * dim), 1.0f),
          *dst0 = rand_vec((size_t)(src_rows * dim), 1.0f);
    float *w = rand_vec((size_t)n, 1.0f);
    int32_t *idx = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        idx[i] = irand((int)src_rows); /* repeats: several expert rows per token */
    float *rg[2], *rs[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *dsrc = dev(be, src, (size_t)(src_rows * dim)),
              *dg = dev(be, NULL, (size_t)(n * dim));
        CHECK(be->ops->gather_rows(be, dsrc, dim, idx, n, dg));
        rg[s] = down(be, dg, (size_t)(n * dim));
        float *drows = dev(be, rows, (size_t)(n * dim)),
              *ddst = dev(be, dst0, (size_t)(src_rows * dim));
        CHECK(be->ops->scatter_add_rows(be, drows, dim, idx, weighted ? w : NULL, n, ddst));
        rs[s] = down(be, ddst, (size_t)(src_rows * dim));
        be->ops->buf_free(be, dsrc);
        be->ops->buf_free(be, dg);
        be->ops->buf_free(be, drows);
        be->ops->buf_free(be, ddst);
    }
    char d[96];
    snprintf(d, sizeof(d), "rows=%lld n=%lld dim=%lld%s", (long long)src_rows, (long long)n,
             (long long)dim, weighted ? " weighted" : "");
    compare("gather_rows", d, rg[0], rg[1], (size_t)(n * dim), g_tol);
    compare("scatter_add_rows", d, rs[0], rs[1], (size_t)(src_rows * dim), g_tol);
    for (int s = 0; s < 2; s++) {
        free(rg[s]);
        free(rs[s]);
    }
    free(src);
    free(rows);
    free(dst0);
    free(w);
    free(idx);
}

static void t_embed(duet_dtype_t dt, int64_t vocab, int64_t dim, int64_t n)
{
    wt_t t = make_w(dt, vocab, dim, 1.0f);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++)
        ids[i] = irand((int)vocab);
    float *r[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *d = dev(be, NULL, (size_t)(n * dim));
        CHECK(be->ops->embed(be, &t.t, ids, n, d));
        r[s] = down(be, d, (size_t)(n * dim));
        be->ops->buf_free(be, d);
    }
    char d[96];
    snprintf(d, sizeof(d), "%s vocab=%lld dim=%lld n=%lld", dtn(dt), (long long)vocab,
             (long long)dim, (long long)n);
    compare("embed", d, r[0], r[1], (size_t)(n * dim), 0.0); /* a copy: exact */
    free(r[0]);
    free(r[1]);
    free(ids);
    free(t.mem);
}

/* Sampling: the same logits must give the same tokens (greedy and seeded). */
static void t_sample(int32_t vocab, int64_t n)
{
    float *lg = rand_vec((size_t)(n * vocab), 6.0f);
    /* special rows: ties, -inf, NaN */
    if (n > 3) {
        lg[0 * vocab + 5] = lg[0 * vocab + 9] = 100.0f;
        for (int32_t i = 0; i < vocab; i++)
            lg[1 * vocab + i] = i % 3 ? -INFINITY : lg[1 * vocab + i];
        lg[2 * vocab + 0] = NAN;
        lg[3 * vocab + 7] = INFINITY;
    }
    duet_sampling_params_t *pr = malloc(sizeof(*pr) * (size_t)n);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t i = 0; i < n; i++) {
        static const duet_sampling_params_t kinds[] = {
            {0.0f, 0, 1.0f, 1},  {0.7f, 0, 1.0f, 2}, {1.0f, 40, 1.0f, 3}, {0.9f, 0, 0.9f, 4},
            {1.3f, 20, 0.8f, 5}, {1.0f, 1, 1.0f, 6}, {0.5f, 5, 0.5f, 7},  {2.0f, 0, 0.3f, 8},
        };
        pr[i] = kinds[i % 8];
        pr[i].seed = rnd();
        pos[i] = irand(100000);
    }
    if (n > 3)
        pr[2].temperature = 0.0f; /* the NaN row: greedy (NaN never wins) */
    int32_t *tok[2];
    duet_backend_t *bes[2] = {A, B};
    for (int s = 0; s < 2; s++) {
        duet_backend_t *be = bes[s];
        float *d = dev(be, lg, (size_t)(n * vocab));
        tok[s] = malloc(sizeof(int32_t) * (size_t)n);
        for (int64_t i = 0; i < n; i++)
            tok[s][i] = -9;
        CHECK(be->ops->sample(be, d, n, vocab, pr, pos, tok[s]));
        be->ops->buf_free(be, d);
    }
    char d[96];
    snprintf(d, sizeof(d), "vocab=%d rows=%lld (greedy, T, top-k, top-p)", vocab, (long long)n);
    compare_i32("sample", d, tok[0], tok[1], (size_t)n);
    free(tok[0]);
    free(tok[1]);
    free(lg);
    free(pr);
    free(pos);
}

/* ---- the planted-fault backend (harness self-test) -------------------------- */

static duet_backend_ops_t g_faulty_ops;
static const duet_backend_ops_t *g_cpu_ops;

static duet_status_t faulty_rmsnorm(duet_backend_t *be, const float *x, int64_t rows, int64_t dim,
                                    const duet_tensor_t *w, float eps, float *y)
{
    /* leaves the last element unwritten when not in place */
    if (x == y || rows * dim < 2)
        return g_cpu_ops->rmsnorm(be, x, rows, dim, w, eps, y);
    float last = y[rows * dim - 1];
    duet_status_t st = g_cpu_ops->rmsnorm(be, x, rows, dim, w, eps, y);
    y[rows * dim - 1] = last;
    return st;
}

static duet_status_t faulty_swiglu(duet_backend_t *be, const float *g, const float *u, int64_t n,
                                   int64_t dim, float *out)
{
    duet_status_t st = g_cpu_ops->swiglu(be, g, u, n, dim, out);
    for (int64_t i = 0; i < n * dim; i++)
        out[i] *= 1.001f; /* 1e-3 relative: over the fp32 tolerance */
    return st;
}

static duet_status_t faulty_sample(duet_backend_t *be, const float *lg, int64_t n, int32_t vocab,
                                   const duet_sampling_params_t *p, const int64_t *pos,
                                   int32_t *out)
{
    duet_status_t st = g_cpu_ops->sample(be, lg, n, vocab, p, pos, out);
    if (n > 0)
        out[n - 1] = (out[n - 1] + 1) % vocab;
    return st;
}

static duet_status_t faulty_route(duet_backend_t *be, const float *lg, int64_t n, int32_t E,
                                  int32_t k, bool norm, int32_t *ids, float *w)
{
    duet_status_t st = g_cpu_ops->route(be, lg, n, E, k, norm, ids, w);
    if (n > 0 && k > 1) { /* swap the first row's top-2: ids and weights both wrong */
        int32_t t = ids[0];
        ids[0] = ids[1];
        ids[1] = t;
        float f = w[0];
        w[0] = w[1];
        w[1] = f;
    }
    return st;
}

/* ---- main --------------------------------------------------------------------- */

static void run_all(bool cuda)
{
    const duet_dtype_t dts[3] = {DUET_DTYPE_BF16, DUET_DTYPE_F16, DUET_DTYPE_F32};
    for (int i = 0; i < 3; i++) {
        t_matmul(dts[i], 1, 256, 96, false, false, false);
        t_matmul(dts[i], 7, 128, 80, true, false, false);
        t_matmul(dts[i], 33, 96, 64, false, true, false);
        t_matmul(dts[i], 3, 64, 1000, false, false, true);
    }
#if defined(DUET_HAVE_CUDA_BACKEND)
    if (cuda) {
        CHECK(duet_cuda_backend_set_grouped(A, DUET_GROUPED_STREAMS));
        t_matmul_batch(DUET_DTYPE_BF16, "streams");
        t_matmul_batch(DUET_DTYPE_F32, "streams");
        if (duet_cuda_have_grouped_gemm()) {
            CHECK(duet_cuda_backend_set_grouped(A, DUET_GROUPED_AUTO));
            t_matmul_batch(DUET_DTYPE_BF16, "grouped");
            t_matmul_batch(DUET_DTYPE_F16, "grouped");
            t_matmul_batch(DUET_DTYPE_F32, "grouped");
        }
    } else
#endif
    {
        (void)cuda;
        t_matmul_batch(DUET_DTYPE_BF16, "default");
        t_matmul_batch(DUET_DTYPE_F32, "default");
    }
    t_rmsnorm(DUET_DTYPE_BF16, 9, 128, false);
    t_rmsnorm(DUET_DTYPE_F32, 5, 4096, true);
    t_rmsnorm(DUET_DTYPE_F16, 64, 16, true);
    t_rope(9, 8, 2, 16, DUET_DTYPE_BF16, true);
    t_rope(5, 32, 8, 128, DUET_DTYPE_F32, true);
    t_rope(3, 4, 4, 64, DUET_DTYPE_BF16, false);
    /* DUET_PARITY_SMALL (the CUDA emulator's entries): smaller attention
     * shapes that still take every path (split, g = 1..8, hd 8..256) */
    const bool small = getenv("DUET_PARITY_SMALL") != NULL;
    if (small) {
        t_attention(8, 2, 16, 16, 3, 20, 5);
        t_attention(4, 2, 32, 5, 3, 12, 4);
        t_attention(32, 8, 128, 16, 2, 20, 3);
        t_attention(8, 8, 64, 16, 2, 10, 2);
        t_attention(8, 1, 256, 16, 1, 12, 2);
        g_pre_floor = 280;
        t_attention(8, 2, 64, 16, 1, 300, 1); /* long context, one token: split */
        g_pre_floor = 0;
        t_attention(8, 8, 8, 16, 2, 9, 2);
        goto rest;
    }
    t_attention(8, 2, 16, 16, 5, 40, 9);     /* mixtral-tiny shape */
    t_attention(4, 2, 32, 5, 6, 30, 7);      /* qwen3moe-tiny, odd block size */
    t_attention(32, 8, 128, 16, 4, 300, 20); /* Mixtral heads */
    t_attention(16, 16, 64, 16, 3, 60, 4);   /* g = 1 */
    t_attention(8, 1, 256, 16, 2, 40, 3);    /* g = 8, hd 256 */
    g_pre_floor = 600;
    t_attention(32, 8, 128, 16, 2, 1500, 2); /* long context, few items: split on GPUs */
    g_pre_floor = 0;
    t_attention(8, 8, 8, 16, 3, 20, 3); /* hd = 8 */
rest:
    t_route(37, 8, 2, true);
    t_route(20, 64, 8, false);
    t_route(5, 60, 4, true);
    t_elementwise(EW_SWIGLU, 17, 300);
    t_elementwise(EW_SWIGLU_ALIAS, 4, 1000);
    t_elementwise(EW_ADD, 3, 777);
    t_elementwise(EW_SIGMOID, 9, 130);
    t_gather_scatter(11, 40, 96, true);
    t_gather_scatter(5, 8, 4096, false);
    t_embed(DUET_DTYPE_BF16, 300, 64, 17);
    t_embed(DUET_DTYPE_F16, 50, 128, 5);
    t_embed(DUET_DTYPE_F32, 70, 32, 9);
    t_sample(1000, 24);
    t_sample(32000, 9);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "cpu";
    const char *prec = argc > 2 ? argv[2] : "fp32";
    duet_backend_opts_t ref_o = {.n_threads = 2};
    CHECK(duet_backend_open("cpu", &ref_o, &B));
    if (!strcmp(mode, "cpu") || !strcmp(mode, "faulty")) {
        duet_backend_opts_t o = {.n_threads = 1};
        CHECK(duet_backend_open("cpu", &o, &A));
        if (!strcmp(mode, "faulty")) {
            g_cpu_ops = A->ops;
            g_faulty_ops = *A->ops;
            g_faulty_ops.rmsnorm = faulty_rmsnorm;
            g_faulty_ops.swiglu = faulty_swiglu;
            g_faulty_ops.sample = faulty_sample;
            g_faulty_ops.route = faulty_route;
            A->ops = &g_faulty_ops;
        }
        run_all(false);
        if (!strcmp(mode, "faulty")) {
            A->ops = g_cpu_ops;
            /* every planted fault found, nothing else flagged */
            const char *want[] = {"rmsnorm", "swiglu",     "swiglu(alias)",
                                  "sample",  "route(ids)", "route(weights)"};
            int missing = 0;
            for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
                if (!strstr(g_failed_ops, want[i])) {
                    printf("harness missed the planted fault in %s\n", want[i]);
                    missing++;
                }
            int others = 0;
            char copy[4096];
            snprintf(copy, sizeof(copy), "%s", g_failed_ops);
            for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
                bool planted = false;
                for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
                    planted |= !strcmp(tok, want[i]);
                if (!planted) {
                    printf("harness flagged %s, which has no planted fault\n", tok);
                    others++;
                }
            }
            printf("faulty backend: %d failures flagged (%s); %d missed, %d unexpected\n", g_fail,
                   g_failed_ops, missing, others);
            duet_backend_close(&A);
            duet_backend_close(&B);
            return missing || others ? 1 : 0;
        }
    } else if (!strcmp(mode, "cuda")) {
#if defined(DUET_HAVE_CUDA_BACKEND)
        char why[256];
        if (duet_cuda_device_count(why, sizeof(why)) == 0) {
            printf("%s\n", why);
            duet_backend_close(&B);
            return 77;
        }
        duet_backend_opts_t o = {0};
        o.precision = !strcmp(prec, "bf16") ? DUET_PRECISION_BF16 : DUET_PRECISION_FP32;
        if (o.precision == DUET_PRECISION_BF16)
            g_tol_gemm = 1e-2;
        CHECK(duet_backend_open("cuda", &o, &A));
        duet_cuda_mem_t m;
        CHECK(duet_cuda_backend_mem(A, &m));
        printf("cuda backend on %s (%s GEMMs), %zu MiB free of %zu\n", m.name, prec, m.free_b >> 20,
               m.total_b >> 20);
        run_all(true);
        /* the completion event an actor loop polls */
        CHECK(duet_cuda_backend_event_record(A));
        int q = 0;
        for (uint64_t t0 = duet_now_ns();
             (q = duet_cuda_backend_event_query(A)) == 0 && duet_now_ns() - t0 < 10000000000ull;)
            ;
        printf("%s completion event: query %d\n", q == 1 ? "ok  " : "FAIL", q);
        if (q != 1)
            note_fail("event");
        /* running out of device memory is a clear error, not a crash */
        void *huge = NULL;
        duet_status_t st = A->ops->buf_alloc(A, (size_t)1 << 50, &huge);
        bool clear = st == DUET_ERR_NOMEM && strstr(duet_error(), "cannot allocate");
        printf("%s 1 PiB buf_alloc: %s\n", clear ? "ok  " : "FAIL", duet_error());
        if (!clear)
            note_fail("oom");
#else
        (void)prec;
        printf("no CUDA device: this build has no cuda backend\n");
        duet_backend_close(&B);
        return 77;
#endif
    } else {
        fprintf(stderr, "usage: test_gpu_parity cpu | faulty | cuda [fp32|bf16]\n");
        return 2;
    }
    printf("%d failures%s%s\n", g_fail, g_fail ? ": " : "", g_failed_ops);
    duet_backend_close(&A);
    duet_backend_close(&B);
    return g_fail ? 1 : 0;
}
