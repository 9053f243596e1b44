/* The bundled demo model (models/pycoder-moe, three shards) against HF
 * transformers' float32 reference in its reference.json: mean NLL of each
 * held-out 512-token segment within 1e-3, and the greedy continuations of
 * the five prompts token for token (every recorded min margin >= 1e-3). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <jansson.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "model/backend.h"
#include "model/forward.h"
#include "model/model.h"
#include "model/sampling.h"

#define DIR DUET_MODELS "/pycoder-moe"

static duet_model_t *g_model;
static duet_backend_t *g_be;
static json_t *g_ref;

static int setup(void **state)
{
    (void)state;
    if (duet_model_load(DIR, NULL, &g_model)) {
        fprintf(stderr, "load %s: %s\n", DIR, duet_error());
        return -1;
    }
    duet_backend_opts_t bo = {.n_threads = 2};
    if (duet_backend_open("cpu", &bo, &g_be))
        return -1;
    json_error_t jerr;
    g_ref = json_load_file(DIR "/reference.json", 0, &jerr);
    if (!g_ref) {
        fprintf(stderr, "%s line %d: %s\n", DIR "/reference.json", jerr.line, jerr.text);
        return -1;
    }
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    json_decref(g_ref);
    duet_backend_close(&g_be);
    duet_model_destroy(&g_model);
    return 0;
}

static int32_t *json_ids(const json_t *arr, int32_t *n)
{
    *n = (int32_t)json_array_size(arr);
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)(*n ? *n : 1));
    for (int32_t i = 0; i < *n; i++)
        ids[i] = (int32_t)json_integer_value(json_array_get(arr, (size_t)i));
    return ids;
}

static duet_engine_t *engine(int32_t max_tokens, int32_t max_logits)
{
    duet_engine_opts_t o = {0};
    o.fwd.max_tokens = max_tokens;
    o.fwd.max_seqs = 8;
    o.fwd.max_logits = max_logits;
    o.kv.max_seqs = 8;
    o.kv.n_blocks = 256;
    duet_engine_t *e = NULL;
    if (duet_engine_create(g_be, g_model, &o, &e))
        fprintf(stderr, "engine: %s\n", duet_error());
    return e;
}

/* Mean over positions t < n-1 of -log softmax(logits[t])[ids[t+1]]. */
static double mean_nll(const float *logits, const int32_t *ids, int32_t n, int32_t vocab)
{
    double sum = 0.0;
    for (int32_t t = 0; t + 1 < n; t++) {
        const float *l = logits + (int64_t)t * vocab;
        double mx = l[0];
        for (int32_t v = 1; v < vocab; v++)
            mx = fmax(mx, l[v]);
        double z = 0.0;
        for (int32_t v = 0; v < vocab; v++)
            z += exp((double)l[v] - mx);
        sum += -(((double)l[ids[t + 1]] - mx) - log(z));
    }
    return sum / (double)(n - 1);
}

/* chunk <= 0: the whole segment in one step; else steps of `chunk` tokens. */
static void check_heldout(int chunk, size_t only)
{
    const json_t *held = json_object_get(g_ref, "heldout");
    assert_true(json_array_size(held) >= 1);
    const int32_t V = g_model->cfg.vocab;
    for (size_t i = 0; i < json_array_size(held); i++) {
        if (only != (size_t)-1 && i != only)
            continue;
        const json_t *h = json_array_get(held, i);
        int32_t n;
        int32_t *ids = json_ids(json_object_get(h, "ids"), &n);
        double ref = json_real_value(json_object_get(h, "mean_nll"));
        assert_true(n >= 2);
        duet_engine_t *e = engine(n, n);
        assert_non_null(e);
        int32_t seq;
        assert_int_equal(duet_kvcache_seq_open(duet_engine_kv(e), &seq), DUET_OK);
        float *logits = malloc(sizeof(float) * (size_t)n * (size_t)V);
        int32_t done = 0;
        while (done < n) {
            int32_t take = chunk > 0 ? DUET_MIN(chunk, n - done) : n;
            duet_seq_input_t in = {seq, take, ids + done, DUET_LOGITS_ALL};
            int32_t rows = 0;
            duet_status_t st = duet_engine_step(e, 1, &in, logits + (int64_t)done * V, &rows);
            if (st)
                fprintf(stderr, "step: %s\n", duet_error());
            assert_int_equal(st, DUET_OK);
            assert_int_equal(rows, take);
            done += take;
        }
        double nll = mean_nll(logits, ids, n, V);
        printf("  heldout %zu (%d tokens%s): mean NLL %.6f, HF %.6f, diff %.2e\n", i, n,
               chunk > 0 ? ", chunked" : "", nll, ref, fabs(nll - ref));
        assert_true(fabs(nll - ref) < 1e-3);
        free(logits);
        free(ids);
        duet_engine_destroy(&e);
    }
}

static void test_heldout_nll(void **state)
{
    (void)state;
    check_heldout(0, (size_t)-1);
}

/* The same segment fed in 77-token chunks (crossing block boundaries). */
static void test_heldout_nll_chunked(void **state)
{
    (void)state;
    check_heldout(77, 1);
}

static void test_greedy(void **state)
{
    (void)state;
    const json_t *gr = json_object_get(g_ref, "greedy");
    assert_true(json_array_size(gr) >= 1);
    const size_t np = json_array_size(gr);
    duet_engine_t *e = engine(256, 8);
    assert_non_null(e);
    int32_t seq[8], n_prompt[8], n_want[8], cur[8], out[8];
    int32_t *prompt[8], *want[8];
    duet_seq_input_t in[8];
    duet_sampling_params_t sp[8];
    assert_true(np <= 8);
    int32_t steps = 0;
    for (size_t i = 0; i < np; i++) {
        const json_t *g = json_array_get(gr, i);
        prompt[i] = json_ids(json_object_get(g, "prompt_ids"), &n_prompt[i]);
        want[i] = json_ids(json_object_get(g, "greedy"), &n_want[i]);
        /* All recorded margins clear 1e-3, so every token must match. */
        assert_true(json_real_value(json_object_get(g, "min_margin")) >= 1e-3);
        steps = DUET_MAX(steps, n_want[i]);
        assert_int_equal(duet_kvcache_seq_open(duet_engine_kv(e), &seq[i]), DUET_OK);
        in[i] = (duet_seq_input_t){seq[i], n_prompt[i], prompt[i], DUET_LOGITS_LAST};
        sp[i] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0};
    }
    int bad = 0;
    /* All five decode together: every step is one mixed batch. */
    for (int32_t t = 0; t < steps; t++) {
        assert_int_equal(duet_engine_step(e, (int32_t)np, in, NULL, NULL), DUET_OK);
        assert_int_equal(duet_engine_sample(e, sp, out), DUET_OK);
        for (size_t i = 0; i < np; i++) {
            if (t < n_want[i] && out[i] != want[i][t]) {
                if (bad < 10)
                    printf("  prompt %zu step %d: got %d, HF %d\n", i, t, out[i], want[i][t]);
                bad++;
            }
            cur[i] = out[i];
            in[i] = (duet_seq_input_t){seq[i], 1, &cur[i], DUET_LOGITS_LAST};
        }
    }
    printf("  greedy: %zu prompts x %d steps, %d mismatches\n", np, steps, bad);
    assert_int_equal(bad, 0);
    for (size_t i = 0; i < np; i++) {
        free(prompt[i]);
        free(want[i]);
    }
    duet_engine_destroy(&e);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_heldout_nll),
        cmocka_unit_test(test_heldout_nll_chunked),
        cmocka_unit_test(test_greedy),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
