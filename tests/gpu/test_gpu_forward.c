/* End to end against HF transformers' float32 references (tests/fixtures):
 *
 *   test_gpu_forward cuda   the four fixture models on the cuda backend:
 *                           fp32 mode meets the CPU's HF tolerances (logits
 *                           within 2e-4 alone, batched, mixed prefill/decode;
 *                           greedy and staggered continuations); bf16 mode's
 *                           greedy tokens match HF up to the first step whose
 *                           HF top-1/top-2 margin is below 0.1; a mixed
 *                           deployment (attention on cuda, experts on cpu,
 *                           and the reverse) meets the fp32 tolerance.
 *                           Exit 77 "no CUDA device" without one.
 *   test_gpu_forward cpu    the same checks with cpu in every place: the test
 *                           logic itself, runnable anywhere. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tests/model/forward_ref.h"
#if defined(DUET_HAVE_CUDA_BACKEND)
#include "gpu/cuda_backend.h"
#endif

#define BF16_MARGIN_MIN 0.1f

static int g_fail;

static void expect(bool ok, const char *what, const char *model)
{
    printf("%s %s: %s\n", ok ? "ok  " : "FAIL", model, what);
    if (!ok)
        g_fail++;
}

/* Mixed deployment: the attention role on `ab`, every expert on `eb`; the
 * rows cross between them through host memory (download, upload) as the
 * data plane would move them between a GPU and a CPU shard. Returns the
 * worst logits difference against HF (INFINITY on error). */
static float mixed_deployment(duet_backend_t *ab, duet_backend_t *eb, const char *dir,
                              const ref_set_t *r)
{
    float worst = INFINITY;
    duet_model_t *am = NULL, *em = NULL;
    duet_load_opts_t ao = {.role = DUET_ROLE_ATTENTION};
    if (duet_model_load(dir, &ao, &am))
        return INFINITY;
    const duet_config_t *c = &am->cfg;
    int held[64];
    for (int e = 0; e < c->n_experts && e < 64; e++)
        held[e] = e;
    duet_load_opts_t eo = {.role = DUET_ROLE_EXPERT, .experts = held, .n_experts = c->n_experts};
    if (duet_model_load(dir, &eo, &em)) {
        duet_model_destroy(&am);
        return INFINITY;
    }
    int32_t total = 0;
    for (int i = 0; i < r->n; i++)
        total += r->p[i].n;
    const int32_t max_rows = total * c->top_k;
    duet_kvcache_opts_t ko = {.block_size = 16, .n_blocks = 64, .max_seqs = REF_MAX_PROMPTS};
    duet_fwd_opts_t fo = {.max_tokens = total,
                          .max_seqs = REF_MAX_PROMPTS,
                          .max_logits = total,
                          .rope_freq = g_ref_rope_freq};
    duet_kvcache_t *kv = NULL;
    duet_fwd_t *fwd = NULL;
    duet_ubatch_t *ub = NULL;
    duet_experts_t *ex = NULL;
    duet_dispatch_t d = {0};
    const size_t rowb = sizeof(float) * (size_t)c->hidden;
    float *h_norm = malloc(rowb * (size_t)total), *h_x = malloc(rowb * (size_t)max_rows);
    float *h_y = malloc(rowb * (size_t)max_rows);
    float *logits = malloc(sizeof(float) * (size_t)total * (size_t)c->vocab);
    void *e_x = NULL, *e_y = NULL, *a_y = NULL;
    if (duet_kvcache_create(ab, c, &ko, &kv) || duet_fwd_create(ab, am, kv, &fo, &fwd) ||
        duet_ubatch_create(fwd, &ub) || eb->ops->weights_prepare(eb, em) ||
        duet_experts_create(eb, em, max_rows, &ex) ||
        duet_dispatch_init(&d, c->n_experts, max_rows) ||
        eb->ops->buf_alloc(eb, rowb * (size_t)max_rows, &e_x) ||
        eb->ops->buf_alloc(eb, rowb * (size_t)max_rows, &e_y) ||
        ab->ops->buf_alloc(ab, rowb * (size_t)max_rows, &a_y)) {
        fprintf(stderr, "mixed deployment setup: %s\n", duet_error());
        goto out;
    }
    duet_seq_input_t in[REF_MAX_PROMPTS];
    for (int i = 0; i < r->n; i++) {
        int32_t seq;
        duet_kvcache_seq_open(kv, &seq);
        in[i] = (duet_seq_input_t){seq, r->p[i].n, r->p[i].ids, DUET_LOGITS_ALL};
    }
    if (duet_fwd_begin(fwd, ub, r->n, in))
        goto err;
    for (int32_t l = 0; l < c->n_layers; l++) {
        if (duet_fwd_attention(fwd, ub, l))
            goto err;
        const int32_t *ids;
        const float *w;
        int32_t k;
        if (!duet_ubatch_routes(ub, &ids, &w, &k))
            continue; /* a dense layer */
        const int32_t nt = duet_ubatch_n_tokens(ub);
        if (duet_dispatch_build(&d, ids, w, nt, k) ||
            ab->ops->buf_download(ab, h_norm, duet_ubatch_normed(ub), rowb * (size_t)nt))
            goto err;
        for (int32_t row = 0; row < d.n_rows; row++)
            memcpy(h_x + (size_t)row * c->hidden, h_norm + (size_t)d.row_token[row] * c->hidden,
                   rowb);
        int32_t eids[64];
        for (int e = 0; e < c->n_experts; e++)
            eids[e] = e;
        if (eb->ops->buf_upload(eb, e_x, h_x, rowb * (size_t)d.n_rows) ||
            duet_experts_forward(ex, l, c->n_experts, eids, d.count, e_x, e_y) ||
            eb->ops->buf_download(eb, h_y, e_y, rowb * (size_t)d.n_rows) ||
            ab->ops->buf_upload(ab, a_y, h_y, rowb * (size_t)d.n_rows) ||
            duet_fwd_combine(fwd, ub, l, a_y, d.row_token, d.row_weight, d.n_rows))
            goto err;
    }
    int32_t rows = 0;
    if (duet_fwd_logits(fwd, ub, &rows) || rows != total ||
        duet_fwd_logits_download(fwd, ub, logits))
        goto err;
    worst = 0.0f;
    int64_t off = 0;
    for (int i = 0; i < r->n; i++) {
        int64_t cnt = (int64_t)r->p[i].n * c->vocab;
        worst = fmaxf(worst, max_abs_diff(logits + off, r->p[i].logits, cnt));
        off += cnt;
    }
    goto out;
err:
    fprintf(stderr, "mixed deployment: %s\n", duet_error());
out:
    if (e_x)
        eb->ops->buf_free(eb, e_x);
    if (e_y)
        eb->ops->buf_free(eb, e_y);
    if (a_y)
        ab->ops->buf_free(ab, a_y);
    duet_dispatch_cleanup(&d);
    duet_experts_destroy(&ex);
    duet_ubatch_destroy(&ub);
    duet_fwd_destroy(&fwd);
    duet_kvcache_destroy(&kv);
    free(h_norm);
    free(h_x);
    free(h_y);
    free(logits);
    duet_model_destroy(&em);
    duet_model_destroy(&am);
    return worst;
}

static void check_model(const char *name, duet_rope_freq_t freq, duet_backend_t *fp32,
                        duet_backend_t *bf16, duet_backend_t *cpu)
{
    char dir[1024], what[160];
    snprintf(dir, sizeof(dir), "%s/%s", DUET_FIXTURES, name);
    g_ref_rope_freq = freq;
    duet_model_t *m = NULL;
    ref_set_t r;
    if (duet_model_load(dir, NULL, &m) || ref_load(dir, &r)) {
        fprintf(stderr, "load %s: %s\n", dir, duet_error());
        g_fail++;
        duet_model_destroy(&m);
        return;
    }
    printf("%s (%s):\n", name, fp32->ops->name);
    float d = ref_check_prefill(fp32, m, &r, false);
    snprintf(what, sizeof(what), "fp32 prefill alone max |diff| %.3g <= %.0e", (double)d,
             (double)REF_LOGIT_TOL);
    expect(d <= REF_LOGIT_TOL, what, name);
    d = ref_check_prefill(fp32, m, &r, true);
    snprintf(what, sizeof(what), "fp32 prefill batched max |diff| %.3g", (double)d);
    expect(d <= REF_LOGIT_TOL, what, name);
    d = ref_check_mixed(fp32, m, &r);
    snprintf(what, sizeof(what), "fp32 mixed prefill/decode max |diff| %.3g", (double)d);
    expect(d <= REF_LOGIT_TOL, what, name);
    expect(ref_check_greedy(fp32, m, &r) == 0, "fp32 greedy (margin >= 1e-3)", name);
    expect(ref_check_staggered(fp32, m, &r) == 0, "fp32 staggered prefill + decode", name);
    int g = ref_greedy_margin(bf16, m, &r, BF16_MARGIN_MIN, 1, "greedy");
    expect(g == 0, "bf16 greedy tokens match HF up to margin < 0.1", name);
    d = ref_check_prefill(bf16, m, &r, true);
    printf("     bf16 prefill batched max |diff| %.3g (informational)\n", (double)d);
    d = mixed_deployment(fp32, cpu, dir, &r);
    snprintf(what, sizeof(what), "attention on %s, experts on cpu: max |diff| %.3g",
             fp32->ops->name, (double)d);
    expect(d <= REF_LOGIT_TOL, what, name);
    d = mixed_deployment(cpu, fp32, dir, &r);
    snprintf(what, sizeof(what), "attention on cpu, experts on %s: max |diff| %.3g",
             fp32->ops->name, (double)d);
    expect(d <= REF_LOGIT_TOL, what, name);
    ref_free(&r);
    duet_model_destroy(&m);
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "cpu";
    duet_backend_t *cpu = NULL, *fp32 = NULL, *bf16 = NULL;
    duet_backend_opts_t co = {.n_threads = 2};
    if (duet_backend_open("cpu", &co, &cpu)) {
        fprintf(stderr, "cpu backend: %s\n", duet_error());
        return 1;
    }
    if (!strcmp(mode, "cpu")) {
        fp32 = bf16 = cpu;
    } else if (!strcmp(mode, "cuda")) {
#if defined(DUET_HAVE_CUDA_BACKEND)
        char why[256];
        if (duet_cuda_device_count(why, sizeof(why)) == 0) {
            printf("%s\n", why);
            duet_backend_close(&cpu);
            return 77;
        }
        duet_backend_opts_t o = {0};
        o.precision = DUET_PRECISION_FP32;
        duet_backend_opts_t ob = {0};
        ob.precision = DUET_PRECISION_BF16;
        if (duet_backend_open("cuda", &o, &fp32) || duet_backend_open("cuda", &ob, &bf16)) {
            fprintf(stderr, "cuda backend: %s\n", duet_error());
            return 1;
        }
#else
        printf("no CUDA device: this build has no cuda backend\n");
        duet_backend_close(&cpu);
        return 77;
#endif
    } else {
        fprintf(stderr, "usage: test_gpu_forward cpu|cuda\n");
        return 2;
    }
    /* mixtral-tiny's reference came from a bf16-cast model (checkpoint
     * frequencies); gen_arch_fixtures.py's from a float32 load */
    check_model("mixtral-tiny", DUET_ROPE_FREQ_CHECKPOINT, fp32, bf16, cpu);
    check_model("qwen2moe-tiny", DUET_ROPE_FREQ_F32, fp32, bf16, cpu);
    check_model("qwen3moe-tiny", DUET_ROPE_FREQ_F32, fp32, bf16, cpu);
    check_model("olmoe-tiny", DUET_ROPE_FREQ_F32, fp32, bf16, cpu);
    printf("%d failures\n", g_fail);
    if (fp32 != cpu)
        duet_backend_close(&fp32);
    if (bf16 != cpu)
        duet_backend_close(&bf16);
    duet_backend_close(&cpu);
    return g_fail ? 1 : 0;
}
