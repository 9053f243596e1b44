/* The gateway in front of the real single-process engine (engine_local)
 * serving tests/fixtures/mixtral-tiny: greedy completions over HTTP equal
 * Hugging Face's greedy continuations (reference.json), alone and with all
 * prompts in flight at once (continuous batching must not change them),
 * and a client that disconnects frees its KV blocks (visible in /metrics). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmocka.h>
#include <jansson.h>
#include <pthread.h>

#include "gateway/engine_local.h"
#include "gateway/gateway.h"
#include "http_client.h"

#define DIR DUET_FIXTURES "/mixtral-tiny"
#define MAX_PROMPTS 16

static duet_backend_t *g_be;
static duet_model_t *g_model;
static duet_tokenizer_t *g_tok;
static duet_gw_engine_t *g_eng;
static duet_gateway_t *g_gw;
static uint16_t g_port;

typedef struct ref_prompt {
    int32_t ids[256];
    size_t n;
    int32_t greedy[64];
    size_t n_greedy;
    double min_margin;
} ref_prompt_t;
static ref_prompt_t g_ref[MAX_PROMPTS];
static size_t g_n_ref;

static int load_reference(void)
{
    json_error_t je;
    json_t *root = json_load_file(DIR "/reference.json", 0, &je);
    if (!root)
        return -1;
    json_t *ps = json_object_get(root, "prompts");
    for (size_t i = 0; i < json_array_size(ps) && g_n_ref < MAX_PROMPTS; i++) {
        json_t *p = json_array_get(ps, i);
        ref_prompt_t *r = &g_ref[g_n_ref];
        json_t *ids = json_object_get(p, "ids"), *gr = json_object_get(p, "greedy");
        if (json_array_size(ids) > 256 || json_array_size(gr) > 64)
            continue;
        for (size_t k = 0; k < json_array_size(ids); k++)
            r->ids[r->n++] = (int32_t)json_integer_value(json_array_get(ids, k));
        for (size_t k = 0; k < json_array_size(gr); k++)
            r->greedy[r->n_greedy++] = (int32_t)json_integer_value(json_array_get(gr, k));
        r->min_margin = json_number_value(json_object_get(p, "min_margin"));
        g_n_ref++;
    }
    json_decref(root);
    return g_n_ref ? 0 : -1;
}

static int setup(void **state)
{
    (void)state;
    duet_backend_opts_t bo = {.n_threads = 2};
    if (load_reference() || duet_backend_open("cpu", &bo, &g_be) ||
        duet_model_load(DIR, NULL, &g_model) ||
        duet_tokenizer_load(DIR "/tokenizer.json", &g_tok)) {
        fprintf(stderr, "setup: %s\n", duet_error());
        return -1;
    }
    duet_engine_opts_t eo = {.fwd = {.max_tokens = 64, .max_seqs = 8}};
    duet_gw_local_opts_t lo = {.model_name = "mixtral-tiny"};
    if (duet_gw_local_create(g_be, g_model, &eo, &lo, &g_eng)) {
        fprintf(stderr, "local engine: %s\n", duet_error());
        return -1;
    }
    duet_gateway_opts_t go = {.conn_timeout_s = 30, .request_timeout_s = 300};
    if (duet_gateway_create(&go, g_eng, g_tok, &g_gw)) {
        fprintf(stderr, "gateway: %s\n", duet_error());
        return -1;
    }
    g_port = duet_gateway_port(g_gw);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    duet_gateway_destroy(&g_gw);
    duet_gw_local_destroy(&g_eng);
    duet_tokenizer_destroy(&g_tok);
    duet_model_destroy(&g_model);
    duet_backend_close(&g_be);
    return 0;
}

/* The reference continuation as text, cut at the first EOS (which the
 * engine stops at). */
static char *greedy_text(const ref_prompt_t *r, size_t *n_tokens)
{
    size_t n = 0;
    while (n < r->n_greedy) {
        bool eos = false;
        for (int e = 0; e < g_model->cfg.n_eos; e++)
            eos |= r->greedy[n] == g_model->cfg.eos_ids[e];
        n++;
        if (eos)
            break;
    }
    char *s = NULL;
    assert_int_equal(duet_tokenizer_decode(g_tok, r->greedy, n, true, &s, NULL), DUET_OK);
    *n_tokens = n;
    return s;
}

static char *body_for(const ref_prompt_t *r, bool stream)
{
    json_t *ids = json_array();
    for (size_t k = 0; k < r->n; k++)
        json_array_append_new(ids, json_integer(r->ids[k]));
    json_t *b =
        json_pack("{s:s,s:o,s:I,s:f,s:b}", "model", "mixtral-tiny", "prompt", ids, "max_tokens",
                  (json_int_t)r->n_greedy, "temperature", 0.0, "stream", stream);
    char *s = json_dumps(b, JSON_COMPACT);
    json_decref(b);
    return s;
}

/* POST one reference prompt; the text the server returned (malloc'd). */
static char *complete(const ref_prompt_t *r, long long *completion_tokens)
{
    char *body = body_for(r, false);
    http_resp_t resp;
    char *text = NULL;
    if (http_do(g_port, "POST", "/v1/completions", NULL, body, &resp) && resp.status == 200) {
        json_t *j = json_loads(resp.body, 0, NULL);
        json_t *c0 = json_array_get(json_object_get(j, "choices"), 0);
        const char *t = json_string_value(json_object_get(c0, "text"));
        if (t)
            text = strdup(t);
        *completion_tokens =
            json_integer_value(json_object_get(json_object_get(j, "usage"), "completion_tokens"));
        json_decref(j);
    } else {
        fprintf(stderr, "request failed: %d %s\n", resp.status, resp.body ? resp.body : "");
    }
    http_resp_free(&resp);
    free(body);
    return text;
}

static void test_greedy_equals_reference(void **state)
{
    (void)state;
    size_t checked = 0;
    for (size_t i = 0; i < g_n_ref; i++) {
        if (g_ref[i].min_margin < 1e-3)
            continue; /* float rounding may pick the other token: not a fair test */
        size_t n;
        char *want = greedy_text(&g_ref[i], &n);
        long long ct = -1;
        char *got = complete(&g_ref[i], &ct);
        assert_non_null(got);
        if (strcmp(got, want) != 0)
            fail_msg("prompt %zu: got '%s', HF greedy '%s'", i, got, want);
        assert_int_equal(ct, (long long)n);
        free(got);
        duet_free(want);
        checked++;
    }
    assert_true(checked >= 1);
}

typedef struct conc {
    size_t i;
    char *text;
} conc_t;

static void *conc_client(void *p)
{
    conc_t *c = p;
    long long ct;
    c->text = complete(&g_ref[c->i], &ct);
    return NULL;
}

static void test_batched_equals_reference(void **state)
{
    (void)state;
    pthread_t th[MAX_PROMPTS];
    conc_t c[MAX_PROMPTS];
    for (size_t i = 0; i < g_n_ref; i++) {
        c[i] = (conc_t){.i = i};
        assert_int_equal(pthread_create(&th[i], NULL, conc_client, &c[i]), 0);
    }
    for (size_t i = 0; i < g_n_ref; i++)
        pthread_join(th[i], NULL);
    for (size_t i = 0; i < g_n_ref; i++) {
        assert_non_null(c[i].text);
        if (g_ref[i].min_margin >= 1e-3) {
            size_t n;
            char *want = greedy_text(&g_ref[i], &n);
            if (strcmp(c[i].text, want) != 0)
                fail_msg("prompt %zu batched: got '%s', HF greedy '%s'", i, c[i].text, want);
            duet_free(want);
        }
        free(c[i].text);
    }
}

static double metric(const char *name)
{
    http_resp_t r;
    assert_true(http_do(g_port, "GET", "/metrics", NULL, NULL, &r));
    double v = -1;
    size_t nl = strlen(name);
    for (char *line = r.body; line && *line;) {
        char *end = strchr(line, '\n');
        if (end)
            *end = '\0';
        if (!strncmp(line, name, nl) && (line[nl] == '{' || line[nl] == ' '))
            v = strtod(strrchr(line, ' ') + 1, NULL);
        line = end ? end + 1 : NULL;
    }
    http_resp_free(&r);
    return v;
}

static void test_disconnect_frees_kv(void **state)
{
    (void)state;
    assert_true(metric("duet_kv_blocks_used") == 0);
    int fd = http_connect(g_port);
    assert_true(fd >= 0);
    /* as long a generation as the context allows */
    http_resp_t mr;
    assert_true(http_do(g_port, "GET", "/v1/models", NULL, NULL, &mr));
    json_t *models = json_loads(mr.body, 0, NULL);
    json_int_t ctx = json_integer_value(
        json_object_get(json_array_get(json_object_get(models, "data"), 0), "max_model_len"));
    json_decref(models);
    http_resp_free(&mr);
    assert_true(ctx > 64);
    char body[256];
    snprintf(body, sizeof(body),
             "{\"prompt\":[618],\"max_tokens\":%lld,\"temperature\":0.8,\"seed\":3,"
             "\"ignore_eos\":true,\"stream\":true}",
             (long long)ctx - 1);
    assert_true(http_send_request(fd, "POST", "/v1/completions", NULL, body, strlen(body)));
    char buf[8192];
    size_t got = 0;
    int datas = 0;
    while (datas < 4 && got < sizeof(buf) - 1) {
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        assert_true(n > 0);
        got += (size_t)n;
        buf[got] = '\0';
        datas = 0;
        for (char *p = strstr(buf, "data: "); p; p = strstr(p + 1, "data: "))
            datas++;
    }
    assert_true(metric("duet_kv_blocks_used") > 0);
    close(fd);
    double used = -1;
    for (int i = 0; i < 200; i++) {
        used = metric("duet_kv_blocks_used");
        if (used == 0 && metric("vllm:num_requests_running") == 0)
            break;
        usleep(20 * 1000);
    }
    assert_true(used == 0);
    assert_true(metric("duet_gateway_disconnect_cancels_total") == 1);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_greedy_equals_reference),
        cmocka_unit_test(test_batched_equals_reference),
        cmocka_unit_test(test_disconnect_frees_kv),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
