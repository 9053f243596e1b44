/* Shared by the forward tests: run a model directory against the HF
 * reference in its reference.safetensors (pK.ids, pK.logits at every prompt
 * position, pK.greedy, pK.greedy_margin) in four ways:
 *   - each prompt alone, logits at every position;
 *   - all prompts in one batch;
 *   - all prompts fed in a mixed schedule: some one token per step (decode
 *     shape), some in chunks of 3, some whole, in the same steps;
 *   - greedy continuation (all prompts decoding together), compared up to
 *     the first step whose HF top-1/top-2 margin is below 1e-3.
 * Included by one test file each; everything here is static. */
#ifndef DUET_TESTS_FORWARD_REF_H
#define DUET_TESTS_FORWARD_REF_H

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/safetensors.h"
#include "model/sampling.h"

#define REF_LOGIT_TOL 2e-4f
#define REF_MARGIN_MIN 1e-3f
#define REF_MAX_PROMPTS 32
/* Not every test uses every helper. */
#define REF_FN static __attribute__((unused))

typedef struct ref_prompt {
    const int32_t *ids;
    int32_t n;
    const float *logits; /* [n, vocab] */
    const int32_t *greedy;
    const float *margin;
    int32_t n_greedy;
} ref_prompt_t;

typedef struct ref_set {
    duet_safetensors_t *st;
    ref_prompt_t p[REF_MAX_PROMPTS];
    int n;
    int32_t vocab;
} ref_set_t;

REF_FN const duet_tensor_t *ref_find(duet_safetensors_t *st, int k, const char *what,
                                     duet_dtype_t dt)
{
    char name[64];
    snprintf(name, sizeof(name), "p%d.%s", k, what);
    const duet_tensor_t *t = duet_safetensors_find(st, name);
    if (t && t->dtype != dt) {
        fprintf(stderr, "reference tensor %s has dtype %s\n", name, duet_dtype_name(t->dtype));
        return NULL;
    }
    return t;
}

REF_FN int ref_load(const char *dir, ref_set_t *r)
{
    char path[1024];
    memset(r, 0, sizeof(*r));
    int w = snprintf(path, sizeof(path), "%s/reference.safetensors", dir);
    if (w < 0 || (size_t)w >= sizeof(path) || duet_safetensors_open(path, &r->st)) {
        fprintf(stderr, "cannot open %s: %s\n", path, duet_error());
        return -1;
    }
    for (int k = 0; k < REF_MAX_PROMPTS; k++) {
        const duet_tensor_t *ids = ref_find(r->st, k, "ids", DUET_DTYPE_I32);
        if (!ids)
            break;
        const duet_tensor_t *lg = ref_find(r->st, k, "logits", DUET_DTYPE_F32);
        const duet_tensor_t *gr = ref_find(r->st, k, "greedy", DUET_DTYPE_I32);
        const duet_tensor_t *mg = ref_find(r->st, k, "greedy_margin", DUET_DTYPE_F32);
        if (!lg || !gr || !mg || lg->ndim != 2 || lg->shape[0] != ids->shape[0]) {
            fprintf(stderr, "%s: prompt %d is incomplete\n", path, k);
            return -1;
        }
        ref_prompt_t *p = &r->p[r->n++];
        p->ids = ids->data;
        p->n = (int32_t)ids->shape[0];
        p->logits = lg->data;
        p->greedy = gr->data;
        p->margin = mg->data;
        p->n_greedy = (int32_t)gr->shape[0];
        r->vocab = (int32_t)lg->shape[1];
    }
    if (r->n == 0) {
        fprintf(stderr, "%s: no prompts\n", path);
        return -1;
    }
    return 0;
}

REF_FN void ref_free(ref_set_t *r)
{
    duet_safetensors_destroy(&r->st);
}

REF_FN float max_abs_diff(const float *a, const float *b, int64_t n)
{
    float m = 0.0f;
    for (int64_t i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);
        if (!(d <= m)) /* NaN counts as a failure */
            m = isnan(d) ? INFINITY : d;
    }
    return m;
}

/* How the reference's HF model got its RoPE frequencies (see forward.h). */
static duet_rope_freq_t g_ref_rope_freq = DUET_ROPE_FREQ_CHECKPOINT;
/* KV block size of the engines the checks build (16 takes the CPU
 * backend's vector block kernel, others its portable one). */
static int32_t g_ref_block_size = 16;

REF_FN duet_engine_t *ref_engine(duet_backend_t *be, const duet_model_t *m, int32_t max_tokens,
                                 int32_t max_logits)
{
    duet_engine_opts_t o = {0};
    o.fwd.rope_freq = g_ref_rope_freq;
    o.fwd.max_tokens = max_tokens;
    o.fwd.max_seqs = REF_MAX_PROMPTS;
    o.fwd.max_logits = max_logits;
    o.kv.block_size = g_ref_block_size;
    o.kv.max_seqs = REF_MAX_PROMPTS;
    o.kv.n_blocks = 4096 / g_ref_block_size;
    duet_engine_t *e = NULL;
    if (duet_engine_create(be, m, &o, &e)) {
        fprintf(stderr, "engine: %s\n", duet_error());
        return NULL;
    }
    return e;
}

/* Greedy continuation of every prompt of `r` on `be`, compared with HF's
 * greedy tokens up to each prompt's first step whose HF margin is below
 * `margin_min` (a lower precision may flip a near tie there). Returns the
 * mismatches; -1 on an error or when fewer than `min_compared` tokens could
 * be compared (too few to mean anything). `label` prefixes the report. */
REF_FN int ref_greedy_margin(duet_backend_t *be, const duet_model_t *m, const ref_set_t *r,
                             float margin_min, int min_compared, const char *label)
{
    int32_t total = 0;
    for (int i = 0; i < r->n; i++)
        total += r->p[i].n;
    duet_engine_t *e = ref_engine(be, m, total, REF_MAX_PROMPTS);
    if (!e)
        return -1;
    int32_t seq[REF_MAX_PROMPTS], cur[REF_MAX_PROMPTS], out[REF_MAX_PROMPTS];
    duet_seq_input_t in[REF_MAX_PROMPTS];
    duet_sampling_params_t sp[REF_MAX_PROMPTS];
    bool live[REF_MAX_PROMPTS];
    for (int i = 0; i < r->n; i++) {
        duet_kvcache_seq_open(duet_engine_kv(e), &seq[i]);
        in[i] = (duet_seq_input_t){seq[i], r->p[i].n, r->p[i].ids, DUET_LOGITS_LAST};
        sp[i] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0};
        live[i] = true;
    }
    int bad = 0, compared = 0;
    for (int32_t t = 0; t < r->p[0].n_greedy; t++) {
        if (duet_engine_step(e, r->n, in, NULL, NULL) || duet_engine_sample(e, sp, out)) {
            fprintf(stderr, "greedy step %d: %s\n", t, duet_error());
            bad = -1;
            break;
        }
        for (int i = 0; i < r->n; i++) {
            if (live[i] && r->p[i].margin[t] < margin_min)
                live[i] = false;
            if (live[i]) {
                compared++;
                if (out[i] != r->p[i].greedy[t]) {
                    printf("  %s: prompt %d step %d: got %d, HF %d (margin %.3g)\n", label, i, t,
                           out[i], r->p[i].greedy[t], (double)r->p[i].margin[t]);
                    bad++;
                    live[i] = false;
                }
            }
            cur[i] = out[i];
            in[i] = (duet_seq_input_t){seq[i], 1, &cur[i], DUET_LOGITS_LAST};
        }
    }
    printf("  %s: %d tokens compared (HF margin >= %.2g), %d mismatches\n", label, compared,
           (double)margin_min, bad);
    if (bad == 0 && compared < min_compared)
        bad = -1;
    duet_engine_destroy(&e);
    return bad;
}

/* Each prompt alone, then all together. Returns the worst difference. */
REF_FN float ref_check_prefill(duet_backend_t *be, const duet_model_t *m, const ref_set_t *r,
                               bool together)
{
    int32_t total = 0;
    for (int i = 0; i < r->n; i++)
        total += r->p[i].n;
    duet_engine_t *e = ref_engine(be, m, total, total);
    if (!e)
        return INFINITY;
    float *logits = malloc(sizeof(float) * (size_t)total * (size_t)r->vocab);
    float worst = 0.0f;
    duet_seq_input_t in[REF_MAX_PROMPTS];
    int32_t seq[REF_MAX_PROMPTS];
    for (int i = 0; i < r->n; i++) {
        if (duet_kvcache_seq_open(duet_engine_kv(e), &seq[i]))
            return INFINITY;
        in[i] = (duet_seq_input_t){seq[i], r->p[i].n, r->p[i].ids, DUET_LOGITS_ALL};
    }
    if (together) {
        int32_t rows = 0;
        if (duet_engine_step(e, r->n, in, logits, &rows) || rows != total) {
            fprintf(stderr, "step: %s\n", duet_error());
            worst = INFINITY;
        } else {
            int64_t off = 0;
            for (int i = 0; i < r->n; i++) {
                int64_t cnt = (int64_t)r->p[i].n * r->vocab;
                float d = max_abs_diff(logits + off, r->p[i].logits, cnt);
                printf("  batch: prompt %d (%d tokens) max |diff| %.3g\n", i, r->p[i].n, (double)d);
                worst = fmaxf(worst, d);
                off += cnt;
            }
        }
    } else {
        for (int i = 0; i < r->n; i++) {
            int32_t rows = 0;
            if (duet_engine_step(e, 1, &in[i], logits, &rows) || rows != r->p[i].n) {
                fprintf(stderr, "step: %s\n", duet_error());
                worst = INFINITY;
                break;
            }
            float d = max_abs_diff(logits, r->p[i].logits, (int64_t)r->p[i].n * r->vocab);
            printf("  alone: prompt %d (%d tokens) max |diff| %.3g\n", i, r->p[i].n, (double)d);
            worst = fmaxf(worst, d);
        }
    }
    free(logits);
    duet_engine_destroy(&e);
    return worst;
}

/* Prompts fed in a mixed schedule: prompt i advances 1, 3 or all of its
 * remaining tokens per step (i % 3), all in the same steps, so decode-shaped
 * and prefill-shaped work share every batch. */
REF_FN float ref_check_mixed(duet_backend_t *be, const duet_model_t *m, const ref_set_t *r)
{
    int32_t total = 0;
    for (int i = 0; i < r->n; i++)
        total += r->p[i].n;
    duet_engine_t *e = ref_engine(be, m, total, total);
    if (!e)
        return INFINITY;
    float *logits = malloc(sizeof(float) * (size_t)total * (size_t)r->vocab);
    int32_t seq[REF_MAX_PROMPTS], done[REF_MAX_PROMPTS] = {0}, idx[REF_MAX_PROMPTS];
    for (int i = 0; i < r->n; i++)
        duet_kvcache_seq_open(duet_engine_kv(e), &seq[i]);
    float worst = 0.0f;
    int steps = 0;
    for (;;) {
        duet_seq_input_t in[REF_MAX_PROMPTS];
        int ns = 0;
        for (int i = 0; i < r->n; i++) {
            int32_t left = r->p[i].n - done[i];
            if (left == 0)
                continue;
            int32_t take = i % 3 == 0 ? 1 : i % 3 == 1 ? DUET_MIN(3, left) : left;
            idx[ns] = i;
            in[ns++] = (duet_seq_input_t){seq[i], take, r->p[i].ids + done[i], DUET_LOGITS_ALL};
        }
        if (ns == 0)
            break;
        int32_t rows = 0;
        if (duet_engine_step(e, ns, in, logits, &rows)) {
            fprintf(stderr, "step: %s\n", duet_error());
            worst = INFINITY;
            break;
        }
        int64_t off = 0;
        for (int s = 0; s < ns; s++) {
            int i = idx[s];
            int64_t cnt = (int64_t)in[s].n_tokens * r->vocab;
            float d = max_abs_diff(logits + off, r->p[i].logits + (int64_t)done[i] * r->vocab, cnt);
            worst = fmaxf(worst, d);
            off += cnt;
            done[i] += in[s].n_tokens;
        }
        steps++;
    }
    printf("  mixed schedule: %d steps, max |diff| %.3g\n", steps, (double)worst);
    free(logits);
    duet_engine_destroy(&e);
    return worst;
}

/* Greedy continuation of every prompt, decoding all together. Returns the
 * number of mismatching compared tokens (0 = pass), -1 on error. */
REF_FN int ref_check_greedy(duet_backend_t *be, const duet_model_t *m, const ref_set_t *r)
{
    int32_t total = 0;
    for (int i = 0; i < r->n; i++)
        total += r->p[i].n;
    duet_engine_t *e = ref_engine(be, m, total, REF_MAX_PROMPTS);
    if (!e)
        return -1;
    int32_t seq[REF_MAX_PROMPTS], cur[REF_MAX_PROMPTS], out[REF_MAX_PROMPTS];
    duet_seq_input_t in[REF_MAX_PROMPTS];
    duet_sampling_params_t sp[REF_MAX_PROMPTS];
    for (int i = 0; i < r->n; i++) {
        duet_kvcache_seq_open(duet_engine_kv(e), &seq[i]);
        in[i] = (duet_seq_input_t){seq[i], r->p[i].n, r->p[i].ids, DUET_LOGITS_LAST};
        sp[i] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0};
    }
    int bad = 0, compared = 0;
    int32_t steps = r->p[0].n_greedy;
    bool live[REF_MAX_PROMPTS];
    for (int i = 0; i < r->n; i++)
        live[i] = true;
    for (int32_t t = 0; t < steps; t++) {
        if (duet_engine_step(e, r->n, in, NULL, NULL) || duet_engine_sample(e, sp, out)) {
            fprintf(stderr, "greedy step %d: %s\n", t, duet_error());
            bad = -1;
            break;
        }
        for (int i = 0; i < r->n; i++) {
            if (live[i] && r->p[i].margin[t] < REF_MARGIN_MIN)
                live[i] = false; /* from here on rounding may pick the other token */
            if (live[i]) {
                compared++;
                if (out[i] != r->p[i].greedy[t]) {
                    printf("  greedy: prompt %d step %d: got %d, HF %d (margin %.3g)\n", i, t,
                           out[i], r->p[i].greedy[t], (double)r->p[i].margin[t]);
                    bad++;
                    live[i] = false;
                }
            }
            cur[i] = out[i];
            in[i] = (duet_seq_input_t){seq[i], 1, &cur[i], DUET_LOGITS_LAST};
        }
    }
    printf("  greedy: %d tokens compared, %d mismatches\n", compared, bad);
    if (bad == 0 && compared < r->n)
        bad = -1; /* nothing compared would make the check vacuous */
    duet_engine_destroy(&e);
    return bad;
}

/* Continuous batching: prompt i joins at step 2*i with its whole prompt
 * (logits at every position) while the earlier ones are decoding their
 * greedy continuations (one token, last logits) in the same steps. Checks
 * every prefill row against HF's logits and every generated token against
 * HF's greedy (margin rule). Returns the number of failures, -1 on error. */
REF_FN int ref_check_staggered(duet_backend_t *be, const duet_model_t *m, const ref_set_t *r)
{
    int32_t total = 0;
    for (int i = 0; i < r->n; i++)
        total += r->p[i].n;
    duet_engine_t *e = ref_engine(be, m, total + r->n, total + r->n);
    if (!e)
        return -1;
    float *logits = malloc(sizeof(float) * (size_t)(total + r->n) * (size_t)r->vocab);
    int32_t seq[REF_MAX_PROMPTS], gen[REF_MAX_PROMPTS], cur[REF_MAX_PROMPTS];
    bool live[REF_MAX_PROMPTS];
    int fails = 0, compared = 0, rows_checked = 0;
    const int32_t steps = r->p[0].n_greedy;
    for (int i = 0; i < r->n; i++) {
        duet_kvcache_seq_open(duet_engine_kv(e), &seq[i]);
        gen[i] = -1; /* not started */
        live[i] = true;
    }
    for (int step = 0;; step++) {
        duet_seq_input_t in[REF_MAX_PROMPTS];
        int idx[REF_MAX_PROMPTS], ns = 0;
        for (int i = 0; i < r->n; i++) {
            if (gen[i] < 0 && step == 2 * i) {
                in[ns] = (duet_seq_input_t){seq[i], r->p[i].n, r->p[i].ids, DUET_LOGITS_ALL};
                idx[ns++] = i;
            } else if (gen[i] >= 0 && gen[i] < steps) {
                in[ns] = (duet_seq_input_t){seq[i], 1, &cur[i], DUET_LOGITS_LAST};
                idx[ns++] = i;
            }
        }
        if (ns == 0)
            break;
        if (duet_engine_step(e, ns, in, logits, NULL)) {
            fprintf(stderr, "staggered step %d: %s\n", step, duet_error());
            fails = -1;
            break;
        }
        int64_t off = 0;
        for (int s = 0; s < ns; s++) {
            int i = idx[s];
            const ref_prompt_t *p = &r->p[i];
            if (in[s].logits == DUET_LOGITS_ALL) {
                float d = max_abs_diff(logits + off, p->logits, (int64_t)p->n * r->vocab);
                rows_checked += p->n;
                if (d > REF_LOGIT_TOL) {
                    printf("  staggered: prompt %d prefill max |diff| %.3g\n", i, (double)d);
                    fails++;
                }
                off += (int64_t)(p->n - 1) * r->vocab; /* the last row is the sampling row */
                gen[i] = 0;
            }
            int32_t t = duet_sample_greedy(logits + off, r->vocab);
            off += r->vocab;
            if (live[i] && p->margin[gen[i]] < REF_MARGIN_MIN)
                live[i] = false;
            if (live[i]) {
                compared++;
                if (t != p->greedy[gen[i]]) {
                    printf("  staggered: prompt %d step %d: got %d, HF %d\n", i, gen[i], t,
                           p->greedy[gen[i]]);
                    fails++;
                    live[i] = false;
                }
            }
            cur[i] = t;
            gen[i]++;
        }
    }
    printf("  staggered: %d prefill rows, %d greedy tokens compared, %d failures\n", rows_checked,
           compared, fails);
    if (fails == 0 && (compared < r->n || rows_checked < total))
        fails = -1;
    free(logits);
    duet_engine_destroy(&e);
    return fails;
}

#endif
