/* The gateway over real sockets against the fake engine: completions and
 * chat, streamed and not, exact text and usage, stop strings, n > 1, EOS,
 * every 4xx, /health, /metrics, concurrent clients, cancel on disconnect,
 * and shutdown with requests in flight.
 *
 * Expected outputs come from the fake engine's rule (fake_engine.h) and
 * the tokenizer's batch decode — an independent path from the gateway's
 * streaming detokenizer and stop-string matcher. */
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

#include "fake_engine.h"
#include "gateway/gateway.h"
#include "http_client.h"

#define KEY "Authorization: Bearer test-key\r\n"
#define VOCAB 1024
#define MAX_BODY 65536

static duet_tokenizer_t *g_tok;
static duet_gw_engine_t *g_eng;
static duet_gateway_t *g_gw;
static uint16_t g_port;

static int setup(void **state)
{
    (void)state;
    if (duet_tokenizer_load(DUET_FIXTURES "/mixtral-tiny/tokenizer.json", &g_tok)) {
        fprintf(stderr, "tokenizer: %s\n", duet_error());
        return -1;
    }
    fake_engine_opts_t fo = {.vocab = VOCAB, .max_context = 256, .eos_id = 0, .ready = true};
    if (fake_engine_create(&fo, &g_eng))
        return -1;
    duet_gateway_opts_t go = {.api_key = "test-key",
                              .max_body_bytes = MAX_BODY,
                              .conn_timeout_s = 10,
                              .request_timeout_s = 60};
    if (duet_gateway_create(&go, g_eng, g_tok, &g_gw)) {
        fprintf(stderr, "gateway: %s\n", duet_error());
        return -1;
    }
    g_port = duet_gateway_port(g_gw);
    return g_port ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    duet_gateway_destroy(&g_gw);
    fake_engine_destroy(&g_eng);
    duet_tokenizer_destroy(&g_tok);
    return 0;
}

/* ---- helpers ------------------------------------------------------------- */

/* decode of the fake's tokens k0..k0+n-1 after `last` */
__attribute__((noinline)) static char *expect_text(int32_t last, uint32_t n, float temp,
                                                   uint64_t seed)
{
    int32_t ids[512];
    size_t m = 0;
    for (uint32_t k = 0; k < n; k++) {
        int32_t t = fake_engine_token(last, k, temp, seed, VOCAB);
        if (t == 0)
            break; /* EOS: not shown */
        ids[m++] = t;
    }
    char *s = NULL;
    assert_int_equal(duet_tokenizer_decode(g_tok, ids, m, true, &s, NULL), DUET_OK);
    return s;
}

static json_t *request_json(const char *path, const char *body, int *status)
{
    http_resp_t r;
    assert_true(http_do(g_port, "POST", path, KEY, body, &r));
    *status = r.status;
    json_error_t je;
    json_t *j = json_loads(r.body, 0, &je);
    if (!j)
        fail_msg("%s -> %d, body not JSON: %s", path, r.status, r.body);
    http_resp_free(&r);
    return j;
}

static const char *jstr(json_t *o, const char *path)
{
    /* path like "choices/0/text" */
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    char *save = NULL; /* strtok_r: client threads run this concurrently */
    for (char *tok = strtok_r(buf, "/", &save); tok && cur; tok = strtok_r(NULL, "/", &save)) {
        if (json_is_array(cur))
            cur = json_array_get(cur, (size_t)atoi(tok));
        else
            cur = json_object_get(cur, tok);
    }
    return cur && json_is_string(cur) ? json_string_value(cur) : NULL;
}

static long long jint(json_t *o, const char *path)
{
    char buf[128];
    snprintf(buf, sizeof(buf), "%s", path);
    json_t *cur = o;
    char *save = NULL; /* strtok_r: client threads run this concurrently */
    for (char *tok = strtok_r(buf, "/", &save); tok && cur; tok = strtok_r(NULL, "/", &save)) {
        if (json_is_array(cur))
            cur = json_array_get(cur, (size_t)atoi(tok));
        else
            cur = json_object_get(cur, tok);
    }
    if (!cur || !json_is_integer(cur))
        fail_msg("%s is not an integer", path);
    return (long long)json_integer_value(cur);
}

typedef struct stream_result {
    int status;
    int n_events;
    char text[8][4096]; /* per choice index */
    char finish[8][16];
    bool role_first[8];
    int chunks_per_choice[8];
    long long usage_prompt, usage_completion; /* -1 if no usage chunk */
    bool done;
    char id[64];
    bool same_id;
} stream_result_t;

/* POST a streaming request and parse every SSE event. */
static void stream(const char *path, const char *body, stream_result_t *sr)
{
    memset(sr, 0, sizeof(*sr));
    sr->usage_prompt = sr->usage_completion = -1;
    sr->same_id = true;
    http_resp_t r;
    assert_true(http_do(g_port, "POST", path, KEY, body, &r));
    sr->status = r.status;
    char ct[128];
    assert_non_null(http_header(&r, "Content-Type", ct, sizeof(ct)));
    assert_string_equal(ct, "text/event-stream");
    char **ev;
    int n = http_sse_events(r.body, &ev);
    if (n < 1)
        fail_msg("not SSE: %s", r.body);
    sr->n_events = n;
    for (int i = 0; i < n; i++) {
        if (!strcmp(ev[i], "[DONE]")) {
            assert_int_equal(i, n - 1); /* [DONE] is last */
            sr->done = true;
            continue;
        }
        json_t *j = json_loads(ev[i], 0, NULL);
        if (!j)
            fail_msg("event %d not JSON: %s", i, ev[i]);
        if (json_object_get(j, "error"))
            fail_msg("error event: %s", ev[i]);
        const char *id = jstr(j, "id");
        assert_non_null(id);
        if (!sr->id[0])
            snprintf(sr->id, sizeof(sr->id), "%s", id);
        else if (strcmp(sr->id, id) != 0)
            sr->same_id = false;
        json_t *choices = json_object_get(j, "choices");
        assert_true(json_is_array(choices));
        json_t *usage = json_object_get(j, "usage");
        if (usage && json_is_object(usage)) {
            assert_int_equal(json_array_size(choices), 0);
            sr->usage_prompt = jint(usage, "prompt_tokens");
            sr->usage_completion = jint(usage, "completion_tokens");
            assert_int_equal(jint(usage, "total_tokens"), sr->usage_prompt + sr->usage_completion);
        }
        for (size_t c = 0; c < json_array_size(choices); c++) {
            json_t *ch = json_array_get(choices, c);
            int idx = (int)json_integer_value(json_object_get(ch, "index"));
            assert_in_range(idx, 0, 7);
            json_t *delta = json_object_get(ch, "delta");
            const char *piece;
            if (delta) {
                if (sr->chunks_per_choice[idx] == 0)
                    sr->role_first[idx] =
                        jstr(delta, "role") && !strcmp(jstr(delta, "role"), "assistant");
                else
                    assert_null(json_object_get(delta, "role"));
                piece = jstr(delta, "content");
            } else {
                piece = jstr(ch, "text");
            }
            assert_true(sr->finish[idx][0] == '\0'); /* nothing after the final chunk */
            if (piece)
                strncat(sr->text[idx], piece, sizeof(sr->text[idx]) - strlen(sr->text[idx]) - 1);
            const char *fr = jstr(ch, "finish_reason");
            if (fr)
                snprintf(sr->finish[idx], sizeof(sr->finish[idx]), "%s", fr);
            sr->chunks_per_choice[idx]++;
        }
        json_decref(j);
    }
    http_sse_free(ev, n);
    http_resp_free(&r);
}

static void assert_error_json(const char *body, const char *param)
{
    json_t *j = json_loads(body, 0, NULL);
    if (!j)
        fail_msg("error body is not JSON: %s", body);
    json_t *e = json_object_get(j, "error");
    assert_non_null(e);
    assert_true(json_is_string(json_object_get(e, "message")));
    assert_true(strlen(json_string_value(json_object_get(e, "message"))) > 0);
    assert_true(json_is_string(json_object_get(e, "type")));
    assert_non_null(json_object_get(e, "code"));
    json_t *p = json_object_get(e, "param");
    assert_non_null(p);
    if (param) {
        if (!json_is_string(p) || strcmp(json_string_value(p), param) != 0)
            fail_msg("param is not '%s' in %s", param, body);
    } else {
        assert_true(json_is_null(p));
    }
    json_decref(j);
}

/* ---- completions --------------------------------------------------------- */

static void test_completion_ids(void **state)
{
    (void)state;
    int st;
    json_t *j = request_json("/v1/completions",
                             "{\"model\":\"fake-model\",\"prompt\":[600],\"max_tokens\":5,"
                             "\"temperature\":0}",
                             &st);
    assert_int_equal(st, 200);
    char *want = expect_text(600, 5, 0, 0);
    assert_string_equal(jstr(j, "choices/0/text"), want);
    assert_string_equal(jstr(j, "choices/0/finish_reason"), "length");
    assert_string_equal(jstr(j, "object"), "text_completion");
    assert_string_equal(jstr(j, "model"), "fake-model");
    assert_true(!strncmp(jstr(j, "id"), "cmpl-", 5));
    assert_int_equal(jint(j, "usage/prompt_tokens"), 1);
    assert_int_equal(jint(j, "usage/completion_tokens"), 5);
    assert_int_equal(jint(j, "usage/total_tokens"), 6);
    duet_free(want);
    json_decref(j);
}

static void test_completion_text(void **state)
{
    (void)state;
    const char *prompt = "def hello(self):";
    int32_t *ids;
    size_t n;
    assert_int_equal(duet_tokenizer_encode(g_tok, prompt, strlen(prompt), true, &ids, &n), DUET_OK);
    char body[256];
    snprintf(body, sizeof(body), "{\"prompt\":\"%s\",\"max_tokens\":4,\"temperature\":0}", prompt);
    int st;
    json_t *j = request_json("/v1/completions", body, &st);
    assert_int_equal(st, 200);
    char *want = expect_text(ids[n - 1], 4, 0, 0);
    assert_string_equal(jstr(j, "choices/0/text"), want);
    assert_int_equal(jint(j, "usage/prompt_tokens"), (long long)n);
    assert_int_equal(jint(j, "usage/completion_tokens"), 4);
    duet_free(want);
    duet_free(ids);
    json_decref(j);
}

static void test_completion_stream(void **state)
{
    (void)state;
    stream_result_t sr;
    stream("/v1/completions",
           "{\"prompt\":[600],\"max_tokens\":6,\"temperature\":0,\"stream\":true,"
           "\"stream_options\":{\"include_usage\":true}}",
           &sr);
    assert_int_equal(sr.status, 200);
    char *want = expect_text(600, 6, 0, 0);
    assert_string_equal(sr.text[0], want);
    assert_string_equal(sr.finish[0], "length");
    assert_true(sr.done && sr.same_id);
    assert_true(!strncmp(sr.id, "cmpl-", 5));
    assert_int_equal(sr.usage_prompt, 1);
    assert_int_equal(sr.usage_completion, 6);
    duet_free(want);

    /* without include_usage: no usage chunk */
    stream("/v1/completions",
           "{\"prompt\":[700],\"max_tokens\":3,\"temperature\":0,\"stream\":true}", &sr);
    want = expect_text(700, 3, 0, 0);
    assert_string_equal(sr.text[0], want);
    assert_int_equal(sr.usage_prompt, -1);
    assert_true(sr.done);
    duet_free(want);
}

/* ---- chat ---------------------------------------------------------------- */

static int32_t chat_last_id(const char *user, size_t *n_prompt)
{
    char text[512];
    snprintf(text, sizeof(text), "<|im_start|>user\n%s<|im_end|>\n<|im_start|>assistant\n", user);
    int32_t *ids;
    size_t n;
    assert_int_equal(duet_tokenizer_encode(g_tok, text, strlen(text), false, &ids, &n), DUET_OK);
    int32_t last = ids[n - 1];
    *n_prompt = n;
    duet_free(ids);
    return last;
}

static void test_chat(void **state)
{
    (void)state;
    size_t np;
    int32_t last = chat_last_id("hi there", &np);
    int st;
    json_t *j = request_json("/v1/chat/completions",
                             "{\"messages\":[{\"role\":\"user\",\"content\":\"hi there\"}],"
                             "\"max_tokens\":5,\"temperature\":0}",
                             &st);
    assert_int_equal(st, 200);
    char *want = expect_text(last, 5, 0, 0);
    assert_string_equal(jstr(j, "object"), "chat.completion");
    assert_true(!strncmp(jstr(j, "id"), "chatcmpl-", 9));
    assert_string_equal(jstr(j, "choices/0/message/role"), "assistant");
    assert_string_equal(jstr(j, "choices/0/message/content"), want);
    assert_string_equal(jstr(j, "choices/0/finish_reason"), "length");
    assert_int_equal(jint(j, "usage/prompt_tokens"), (long long)np);
    assert_int_equal(jint(j, "usage/completion_tokens"), 5);
    json_decref(j);

    stream_result_t sr;
    stream("/v1/chat/completions",
           "{\"messages\":[{\"role\":\"user\",\"content\":\"hi there\"}],\"max_tokens\":5,"
           "\"temperature\":0,\"stream\":true,\"stream_options\":{\"include_usage\":true}}",
           &sr);
    assert_int_equal(sr.status, 200);
    assert_true(sr.role_first[0]);
    assert_string_equal(sr.text[0], want);
    assert_string_equal(sr.finish[0], "length");
    assert_true(sr.done && sr.same_id);
    assert_int_equal(sr.usage_prompt, (long long)np);
    assert_int_equal(sr.usage_completion, 5);
    duet_free(want);
}

/* ---- stop strings, EOS, n ------------------------------------------------ */

static void test_stop_strings(void **state)
{
    (void)state;
    /* full output of 12 tokens; a stop string that spans tokens 4 and 5 */
    int32_t ids[12];
    for (int k = 0; k < 12; k++)
        ids[k] = 601 + k;
    char *t4, *t5;
    assert_int_equal(duet_tokenizer_decode(g_tok, ids, 5, true, &t4, NULL), DUET_OK);
    assert_int_equal(duet_tokenizer_decode(g_tok, ids, 6, true, &t5, NULL), DUET_OK);
    size_t l4 = strlen(t4);
    assert_true(strlen(t5) > l4 && l4 >= 2);
    char stop[16];
    snprintf(stop, sizeof(stop), "%.*s", (int)(DUET_MIN(strlen(t5) - l4, 2) + 2), t4 + l4 - 2);
    /* expected: the text before the first occurrence; tokens up to the one
     * that completed the match */
    char *full = expect_text(600, 12, 0, 0);
    char *hit = strstr(full, stop);
    assert_non_null(hit);
    size_t cut = (size_t)(hit - full);
    int need = 0;
    for (int k = 1; k <= 12; k++) {
        char *t;
        assert_int_equal(duet_tokenizer_decode(g_tok, ids, (size_t)k, true, &t, NULL), DUET_OK);
        bool has = strstr(t, stop) != NULL;
        duet_free(t);
        if (has) {
            need = k;
            break;
        }
    }
    json_t *jstop = json_string(stop);
    char *stop_json = json_dumps(jstop, JSON_ENCODE_ANY);
    char body[512];
    snprintf(body, sizeof(body),
             "{\"prompt\":[600],\"max_tokens\":12,\"temperature\":0,\"stop\":[\"zzzz\",%s]}",
             stop_json);
    int st;
    json_t *j = request_json("/v1/completions", body, &st);
    assert_int_equal(st, 200);
    assert_int_equal(strlen(jstr(j, "choices/0/text")), cut);
    assert_memory_equal(jstr(j, "choices/0/text"), full, cut);
    assert_string_equal(jstr(j, "choices/0/finish_reason"), "stop");
    assert_int_equal(jint(j, "usage/completion_tokens"), need);
    json_decref(j);

    /* streamed: the same text, and no chunk leaks part of the stop string */
    snprintf(body, sizeof(body),
             "{\"prompt\":[600],\"max_tokens\":12,\"temperature\":0,\"stop\":%s,\"stream\":true,"
             "\"stream_options\":{\"include_usage\":true}}",
             stop_json);
    stream_result_t sr;
    stream("/v1/completions", body, &sr);
    assert_int_equal(strlen(sr.text[0]), cut);
    assert_memory_equal(sr.text[0], full, cut);
    assert_string_equal(sr.finish[0], "stop");
    assert_int_equal(sr.usage_completion, need);

    /* with a slow engine the match arrives mid-generation: the engine is
     * told to cancel */
    fake_engine_set_delays(g_eng, 0, 20);
    fake_engine_counts_t before = fake_engine_counts(g_eng);
    snprintf(body, sizeof(body),
             "{\"prompt\":[600],\"max_tokens\":200,\"temperature\":0,\"stop\":%s}", stop_json);
    j = request_json("/v1/completions", body, &st);
    assert_int_equal(st, 200);
    assert_string_equal(jstr(j, "choices/0/finish_reason"), "stop");
    assert_int_equal(jint(j, "usage/completion_tokens"), need);
    json_decref(j);
    assert_true(fake_engine_wait_idle(g_eng, 5000));
    assert_int_equal(fake_engine_counts(g_eng).canceled, before.canceled + 1);
    fake_engine_set_delays(g_eng, 0, 0);

    free(stop_json);
    json_decref(jstop);
    duet_free(full);
    duet_free(t4);
    duet_free(t5);
}

static void test_eos(void **state)
{
    (void)state;
    int st;
    json_t *j = request_json("/v1/completions",
                             "{\"prompt\":[1021],\"max_tokens\":10,\"temperature\":0}", &st);
    assert_int_equal(st, 200);
    char *want = expect_text(1021, 10, 0, 0); /* stops before id 0 */
    assert_string_equal(jstr(j, "choices/0/text"), want);
    assert_string_equal(jstr(j, "choices/0/finish_reason"), "stop");
    assert_int_equal(jint(j, "usage/completion_tokens"), 3); /* 1022, 1023, EOS */
    json_decref(j);
    duet_free(want);

    j = request_json("/v1/completions",
                     "{\"prompt\":[1021],\"max_tokens\":10,\"temperature\":0,\"ignore_eos\":true}",
                     &st);
    assert_int_equal(st, 200);
    assert_string_equal(jstr(j, "choices/0/finish_reason"), "length");
    assert_int_equal(jint(j, "usage/completion_tokens"), 10);
    json_decref(j);
}

static void test_n_choices(void **state)
{
    (void)state;
    int st;
    json_t *j = request_json("/v1/completions",
                             "{\"prompt\":[600],\"max_tokens\":4,\"temperature\":1.0,\"seed\":42,"
                             "\"n\":3}",
                             &st);
    assert_int_equal(st, 200);
    json_t *choices = json_object_get(j, "choices");
    assert_int_equal(json_array_size(choices), 3);
    for (int i = 0; i < 3; i++) {
        char path[64];
        snprintf(path, sizeof(path), "choices/%d/index", i);
        assert_int_equal(jint(j, path), i);
        snprintf(path, sizeof(path), "choices/%d/text", i);
        char *want = expect_text(600, 4, 1.0f, 42 + (uint64_t)i);
        assert_string_equal(jstr(j, path), want);
        duet_free(want);
    }
    assert_int_equal(jint(j, "usage/prompt_tokens"), 1);
    assert_int_equal(jint(j, "usage/completion_tokens"), 12);
    json_decref(j);

    stream_result_t sr;
    stream("/v1/chat/completions",
           "{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":3,"
           "\"temperature\":0.7,\"seed\":7,\"n\":2,\"stream\":true,"
           "\"stream_options\":{\"include_usage\":true}}",
           &sr);
    size_t np;
    int32_t last = chat_last_id("x", &np);
    for (int i = 0; i < 2; i++) {
        char *want = expect_text(last, 3, 0.7f, 7 + (uint64_t)i);
        assert_string_equal(sr.text[i], want);
        assert_string_equal(sr.finish[i], "length");
        assert_true(sr.role_first[i]);
        duet_free(want);
    }
    assert_int_equal(sr.usage_completion, 6);
    assert_int_equal(sr.usage_prompt, (long long)np);
}

/* ---- errors -------------------------------------------------------------- */

typedef struct bad_case {
    const char *method, *path, *headers, *body;
    int status;
    const char *param;
} bad_case_t;

static void test_bad_requests(void **state)
{
    (void)state;
    static char long_prompt[4096];
    int o = snprintf(long_prompt, sizeof(long_prompt), "{\"prompt\":[");
    for (int i = 0; i < 300; i++)
        o += snprintf(long_prompt + o, sizeof(long_prompt) - (size_t)o, "%s600", i ? "," : "");
    snprintf(long_prompt + o, sizeof(long_prompt) - (size_t)o, "]}");
    const char *C = "/v1/completions", *H = "/v1/chat/completions";
    const bad_case_t cases[] = {
        {"POST", C, KEY, "{\"prompt\": [600", 400, NULL},
        {"POST", C, KEY, "[600]", 400, NULL},
        {"POST", C, KEY, "", 400, NULL},
        {"POST", C, KEY, "{}", 400, "prompt"},
        {"POST", C, KEY, "{\"prompt\":{}}", 400, "prompt"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"max_tokens\":-5}", 400, "max_tokens"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"max_tokens\":\"5\"}", 400, "max_tokens"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"temperature\":-1}", 400, "temperature"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"n\":0}", 400, "n"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"stop\":[\"a\",3]}", 400, "stop[1]"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"stream\":\"yes\"}", 400, "stream"},
        {"POST", C, KEY, "{\"prompt\":[5000]}", 400, "prompt"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"logprobs\":1}", 400, "logprobs"},
        {"POST", C, KEY, "{\"prompt\":[600],\"max_tokens\":300}", 400, "max_tokens"},
        {"POST", C, KEY, long_prompt, 400, "prompt"},
        {"POST", C, KEY, "{\"prompt\":\"x\",\"model\":\"gpt-4\"}", 404, "model"},
        {"POST", H, KEY, "{}", 400, "messages"},
        {"POST", H, KEY, "{\"messages\":[]}", 400, "messages"},
        {"POST", H, KEY, "{\"messages\":[{\"role\":\"bot\",\"content\":\"x\"}]}", 400,
         "messages[0].role"},
        {"POST", H, KEY, "{\"messages\":[{\"role\":\"user\"}]}", 400, "messages[0].content"},
        {"POST", C, NULL, "{\"prompt\":\"x\"}", 401, NULL},
        {"POST", C, "Authorization: Bearer wrong-key\r\n", "{\"prompt\":\"x\"}", 401, NULL},
        {"GET", "/v1/models", "Authorization: Bearer test-ke\r\n", NULL, 401, NULL},
        {"POST", "/v1/nothing", KEY, "{}", 404, NULL},
        {"GET", "/", NULL, NULL, 404, NULL},
        {"GET", C, KEY, NULL, 405, NULL},
        {"POST", "/health", NULL, "{}", 405, NULL},
        {"GET", "/v1/models/other", KEY, NULL, 404, "model"},
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(cases); i++) {
        const bad_case_t *c = &cases[i];
        http_resp_t r;
        assert_true(http_do(g_port, c->method, c->path, c->headers, c->body, &r));
        if (r.status != c->status)
            fail_msg("case %zu (%s %s %s): status %d, expected %d: %s", i, c->method, c->path,
                     c->body ? c->body : "", r.status, c->status, r.body);
        assert_error_json(r.body, c->param);
        http_resp_free(&r);
    }
}

static void test_body_limits(void **state)
{
    (void)state;
    /* a declared length over the limit: 413 before the body is read */
    int fd = http_connect(g_port);
    assert_true(fd >= 0);
    char head[256];
    snprintf(head, sizeof(head),
             "POST /v1/completions HTTP/1.1\r\nHost: x\r\n" KEY
             "Content-Type: application/json\r\nContent-Length: %d\r\n\r\n",
             MAX_BODY * 4);
    assert_true(http_send_all(fd, head, strlen(head)));
    http_resp_t r;
    assert_true(http_read_response(fd, &r));
    assert_int_equal(r.status, 413);
    assert_error_json(r.body, NULL);
    http_resp_free(&r);

    /* a chunked body that grows over the limit: read, dropped, 413 */
    fd = http_connect(g_port);
    assert_true(fd >= 0);
    const char *h = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n" KEY
                    "Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert_true(http_send_all(fd, h, strlen(h)));
    static char chunk[8192 + 16];
    int cl = snprintf(chunk, sizeof(chunk), "2000\r\n");
    memset(chunk + cl, ' ', 8192);
    memcpy(chunk + cl + 8192, "\r\n", 2);
    for (int i = 0; i < (MAX_BODY / 8192) + 2; i++)
        assert_true(http_send_all(fd, chunk, (size_t)cl + 8192 + 2));
    assert_true(http_send_all(fd, "0\r\n\r\n", 5));
    assert_true(http_read_response(fd, &r));
    assert_int_equal(r.status, 413);
    assert_error_json(r.body, NULL);
    http_resp_free(&r);

    /* a body just under the limit is fine */
    static char big[MAX_BODY];
    int n = snprintf(big, sizeof(big), "{\"prompt\":[600],\"max_tokens\":1,\"user\":\"");
    memset(big + n, 'a', sizeof(big) - (size_t)n - 3);
    memcpy(big + sizeof(big) - 3, "\"}", 3);
    assert_true(http_do(g_port, "POST", "/v1/completions", KEY, big, &r));
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
}

/* Send raw bytes on a new connection; read the answer to EOF (the test
 * client's receive timeout bounds it). Returns the seconds it took. */
static double raw_exchange(const char *bytes, size_t n, http_resp_t *r)
{
    int fd = http_connect(g_port);
    assert_true(fd >= 0);
    double t0 = duet_now_s();
    /* the server may answer and close before it has read everything */
    (void)http_send_all(fd, bytes, n);
    if (!http_read_response(fd, r)) /* closed without a response */
        memset(r, 0, sizeof(*r));
    return duet_now_s() - t0;
}

/* Malformed HTTP: what the handler sees is answered with OpenAI error JSON;
 * what libmicrohttpd rejects before the handler (a broken request line,
 * chunk framing or Content-Length, an HTTP version it does not speak,
 * heads beyond its per-connection memory) gets its own 4xx/5xx, or a
 * closed connection, at once: never a hang. */
static void test_malformed_http(void **state)
{
    (void)state;
    static char buf[400 * 1024];
    http_resp_t r;

    /* a URL over 16 KiB: 414 JSON */
    int n = snprintf(buf, sizeof(buf), "GET /v1/models/");
    memset(buf + n, 'a', 20000);
    n += 20000;
    n += snprintf(buf + n, sizeof(buf) - (size_t)n, " HTTP/1.1\r\nHost: x\r\n" KEY "\r\n");
    raw_exchange(buf, (size_t)n, &r);
    assert_int_equal(r.status, 414);
    assert_error_json(r.body, NULL);
    http_resp_free(&r);

    /* headers over 64 KiB: 431 JSON */
    n = snprintf(buf, sizeof(buf), "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(buf + n, 'b', 70000);
    n += 70000;
    n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n\r\n");
    raw_exchange(buf, (size_t)n, &r);
    assert_int_equal(r.status, 431);
    assert_error_json(r.body, NULL);
    assert_non_null(strstr(r.body, "65536"));
    http_resp_free(&r);

    /* a transfer coding other than chunked: 501 JSON naming it */
    const char *te = "POST /v1/completions HTTP/1.1\r\nHost: x\r\n" KEY
                     "Transfer-Encoding: gzip\r\n\r\n";
    raw_exchange(te, strlen(te), &r);
    assert_int_equal(r.status, 501);
    assert_error_json(r.body, NULL);
    assert_non_null(strstr(r.body, "gzip"));
    http_resp_free(&r);

    /* rejected inside libmicrohttpd: an error status or a close, promptly */
    const char *lib[] = {
        "GARBAGE\r\n\r\n",
        "GET /health\r\n\r\n",
        "GET /health HTTP/2.0\r\nHost: x\r\n\r\n",
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\n" KEY "Content-Length: abc\r\n\r\n{}",
        "POST /v1/completions HTTP/1.1\r\nHost: x\r\n" KEY
        "Transfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(lib); i++) {
        double dt = raw_exchange(lib[i], strlen(lib[i]), &r);
        if (!(r.status == 0 || (r.status >= 400 && r.status < 600)) || dt > 5)
            fail_msg("case %zu: status %d after %.1f s", i, r.status, dt);
        http_resp_free(&r);
    }
    n = snprintf(buf, sizeof(buf), "GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ");
    memset(buf + n, 'c', 300 * 1024);
    n += 300 * 1024;
    n += snprintf(buf + n, sizeof(buf) - (size_t)n, "\r\n\r\n");
    double dt = raw_exchange(buf, (size_t)n, &r);
    assert_true(r.status == 0 || r.status == 431);
    assert_true(dt < 5);
    http_resp_free(&r);

    /* the server still serves */
    assert_true(http_do(g_port, "GET", "/health", NULL, NULL, &r));
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
}

/* ---- health, models, metrics --------------------------------------------- */

static void test_health_models(void **state)
{
    (void)state;
    http_resp_t r;
    fake_engine_set_ready(g_eng, false);
    assert_true(http_do(g_port, "GET", "/health", NULL, NULL, &r));
    assert_int_equal(r.status, 503);
    assert_error_json(r.body, NULL);
    http_resp_free(&r);
    fake_engine_set_ready(g_eng, true);
    assert_true(http_do(g_port, "GET", "/health", NULL, NULL, &r));
    assert_int_equal(r.status, 200);
    http_resp_free(&r);

    assert_true(http_do(g_port, "GET", "/v1/models", KEY, NULL, &r));
    assert_int_equal(r.status, 200);
    json_t *j = json_loads(r.body, 0, NULL);
    assert_string_equal(jstr(j, "object"), "list");
    assert_string_equal(jstr(j, "data/0/id"), "fake-model");
    assert_string_equal(jstr(j, "data/0/object"), "model");
    json_decref(j);
    http_resp_free(&r);
    assert_true(http_do(g_port, "GET", "/v1/models/fake-model", KEY, NULL, &r));
    assert_int_equal(r.status, 200);
    http_resp_free(&r);
}

/* Parse the whole exposition; return the value of `sample` (exact series
 * text before the value, e.g. `vllm:prompt_tokens_total{model_name="fake-model"}`). */
static double metric(const char *sample)
{
    http_resp_t r;
    assert_true(http_do(g_port, "GET", "/metrics", NULL, NULL, &r));
    assert_int_equal(r.status, 200);
    double found = -1;
    char *save = NULL;
    for (char *line = strtok_r(r.body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (line[0] == '#') {
            assert_true(!strncmp(line, "# HELP ", 7) || !strncmp(line, "# TYPE ", 7));
            continue;
        }
        /* name{labels} value */
        char *sp = strrchr(line, ' ');
        assert_non_null(sp);
        char *end;
        double v = strtod(sp + 1, &end);
        assert_true(*end == '\0');
        for (char *p = line; p < sp && *p != '{'; p++)
            assert_true(strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_:",
                               *p) != NULL);
        *sp = '\0';
        if (!strcmp(line, sample))
            found = v;
    }
    http_resp_free(&r);
    if (found < 0)
        fail_msg("no sample %s", sample);
    return found;
}

#define M(name) name "{model_name=\"fake-model\"}"

static void test_metrics(void **state)
{
    (void)state;
    double p0 = metric(M("vllm:prompt_tokens_total"));
    double g0 = metric(M("vllm:generation_tokens_total"));
    double t0 = metric(M("vllm:time_to_first_token_seconds_count"));
    double e0 = metric(M("vllm:e2e_request_latency_seconds_count"));
    double i0 = metric(M("vllm:inter_token_latency_seconds_count"));
    double l0 =
        metric("vllm:request_success_total{model_name=\"fake-model\",finished_reason=\"length\"}");
    int st;
    json_t *j = request_json("/v1/completions",
                             "{\"prompt\":[600,601,602],\"max_tokens\":4,\"temperature\":0}", &st);
    assert_int_equal(st, 200);
    json_decref(j);
    assert_true(metric(M("vllm:prompt_tokens_total")) == p0 + 3);
    assert_true(metric(M("vllm:generation_tokens_total")) == g0 + 4);
    assert_true(metric(M("vllm:time_to_first_token_seconds_count")) == t0 + 1);
    assert_true(metric(M("vllm:e2e_request_latency_seconds_count")) == e0 + 1);
    assert_true(metric(M("vllm:inter_token_latency_seconds_count")) == i0 + 3);
    assert_true(
        metric(
            "vllm:request_success_total{model_name=\"fake-model\",finished_reason=\"length\"}") ==
        l0 + 1);
    assert_true(
        metric("vllm:time_to_first_token_seconds_bucket{model_name=\"fake-model\",le=\"+Inf\"}") ==
        t0 + 1);
    assert_true(metric(M("vllm:num_requests_running")) == 0);
    assert_true(metric(M("vllm:num_requests_waiting")) == 0);
    assert_true(metric(M("vllm:kv_cache_usage_perc")) == 0);
    assert_true(metric(M("duet_fake_rounds_total")) > 0);
    assert_true(metric(M("duet_gateway_active_streams")) == 0);

    /* the gateway's overhead histogram counts streamed emissions only */
    double em0 = metric(M("duet_gateway_emit_latency_seconds_count"));
    assert_true(metric(M("duet_gateway_emit_latency_seconds_count")) == em0);
    stream_result_t sr;
    stream("/v1/completions",
           "{\"prompt\":[600,601,602],\"max_tokens\":6,\"temperature\":0,\"stream\":true}", &sr);
    assert_int_equal(sr.status, 200);
    double em1 = metric(M("duet_gateway_emit_latency_seconds_count"));
    /* at least one emission carried a token, at most one per token */
    assert_true(em1 >= em0 + 1 && em1 <= em0 + 6);
    assert_true(metric(M("duet_gateway_emit_latency_seconds_sum")) >= 0);
    assert_true(metric("duet_gateway_emit_latency_seconds_bucket{model_name=\"fake-model\","
                       "le=\"+Inf\"}") == em1);
}

/* ---- concurrency, disconnects, shutdown ---------------------------------- */

typedef struct conc_arg {
    int i;
    bool ok;
    int status;      /* HTTP status seen (0: no response) */
    char why[200];   /* start of the body when the check failed */
} conc_arg_t;

static void *conc_client(void *p)
{
    conc_arg_t *a = p;
    char body[256];
    snprintf(body, sizeof(body),
             "{\"prompt\":[%d],\"max_tokens\":8,\"temperature\":0,\"stream\":%s}", 300 + a->i,
             a->i % 2 ? "true" : "false");
    http_resp_t r;
    a->ok = false;
    if (!http_do(g_port, "POST", "/v1/completions", KEY, body, &r)) {
        snprintf(a->why, sizeof(a->why), "no response (socket error)");
        return NULL;
    }
    a->status = r.status;
    snprintf(a->why, sizeof(a->why), "%.180s", r.body ? r.body : "");
    char *want = NULL;
    int32_t ids[8];
    for (int k = 0; k < 8; k++)
        ids[k] = 301 + a->i + k;
    if (duet_tokenizer_decode(g_tok, ids, 8, true, &want, NULL) == DUET_OK && r.status == 200) {
        json_t *s = json_string(want);
        char *enc = json_dumps(s, JSON_ENCODE_ANY);
        /* streamed pieces are concatenated by the server side test elsewhere;
         * here it is enough that the whole text or every piece arrived */
        if (a->i % 2 == 0) {
            json_t *j = json_loads(r.body, 0, NULL);
            a->ok = j && !strcmp(jstr(j, "choices/0/text"), want);
            json_decref(j);
        } else {
            char **ev;
            int n = http_sse_events(r.body, &ev);
            char acc[4096] = "";
            for (int e = 0; e < n; e++) {
                json_t *j = json_loads(ev[e], 0, NULL);
                const char *t = j ? jstr(j, "choices/0/text") : NULL;
                if (t)
                    strncat(acc, t, sizeof(acc) - strlen(acc) - 1);
                else if (e < n - 1)
                    fprintf(stderr, "client %d: event %d has no text: '%s'\n", a->i, e, ev[e]);
                json_decref(j);
            }
            a->ok = n > 1 && !strcmp(ev[n - 1], "[DONE]") && !strcmp(acc, want);
            if (!a->ok)
                snprintf(a->why, sizeof(a->why), "%d events, last '%.20s', text '%.60s' want '%.60s'",
                         n, n > 0 ? ev[n - 1] : "", acc, want);
            http_sse_free(ev, n);
        }
        free(enc);
        json_decref(s);
    }
    duet_free(want);
    http_resp_free(&r);
    return NULL;
}

static void test_concurrent(void **state)
{
    (void)state;
    enum { N = 24 };
    fake_engine_set_delays(g_eng, 5, 2);
    pthread_t th[N];
    conc_arg_t args[N];
    for (int i = 0; i < N; i++) {
        args[i].i = i;
        assert_int_equal(pthread_create(&th[i], NULL, conc_client, &args[i]), 0);
    }
    for (int i = 0; i < N; i++) {
        pthread_join(th[i], NULL);
        if (!args[i].ok)
            fail_msg("client %d failed: HTTP %d, body starts '%s'", i, args[i].status,
                     args[i].why);
    }
    fake_engine_set_delays(g_eng, 0, 0);
}

static void disconnect_case(bool streaming)
{
    fake_engine_set_delays(g_eng, 0, 20);
    fake_engine_counts_t before = fake_engine_counts(g_eng);
    double d0 = metric(M("duet_gateway_disconnect_cancels_total"));
    int fd = http_connect(g_port);
    assert_true(fd >= 0);
    char body[160];
    snprintf(body, sizeof(body), "{\"prompt\":[600],\"max_tokens\":200,\"stream\":%s}",
             streaming ? "true" : "false");
    assert_true(http_send_request(fd, "POST", "/v1/completions", KEY, body, strlen(body)));
    if (streaming) { /* wait until generation is visibly under way */
        char buf[4096];
        size_t got = 0;
        int datas = 0;
        while (datas < 2 && got < sizeof(buf) - 1) {
            ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
            assert_true(n > 0);
            got += (size_t)n;
            buf[got] = '\0';
            datas = 0;
            for (char *p = strstr(buf, "data: "); p; p = strstr(p + 1, "data: "))
                datas++;
        }
    } else {
        usleep(150 * 1000);
    }
    close(fd);
    assert_true(fake_engine_wait_idle(g_eng, 5000));
    fake_engine_counts_t after = fake_engine_counts(g_eng);
    assert_int_equal(after.canceled, before.canceled + 1);
    assert_true(after.tokens - before.tokens < 150); /* stopped well before 200 */
    double d1 = -1;
    for (int i = 0; i < 100 && (d1 = metric(M("duet_gateway_disconnect_cancels_total"))) != d0 + 1;
         i++)
        usleep(20 * 1000);
    assert_true(d1 == d0 + 1);
    assert_true(metric(M("duet_kv_blocks_used")) == 0);
    fake_engine_set_delays(g_eng, 0, 0);
}

static void test_disconnect_stream(void **state)
{
    (void)state;
    disconnect_case(true);
}

static void test_disconnect_blocking(void **state)
{
    (void)state;
    disconnect_case(false);
}

/* A client that leaves while its stream waits for a first token that is
 * seconds away: the connection sits suspended (nothing to write), so only
 * the gateway's watcher can see the hang-up. The request must be canceled
 * before the engine produces anything, and its KV freed. */
static void test_disconnect_silent_stream(void **state)
{
    (void)state;
    fake_engine_set_delays(g_eng, 4000, 10);
    fake_engine_counts_t before = fake_engine_counts(g_eng);
    double d0 = metric(M("duet_gateway_disconnect_cancels_total"));
    int fd = http_connect(g_port);
    assert_true(fd >= 0);
    const char *body = "{\"prompt\":[600],\"max_tokens\":100,\"stream\":true}";
    assert_true(http_send_request(fd, "POST", "/v1/completions", KEY, body, strlen(body)));
    char buf[2048];
    size_t got = 0;
    while (got < sizeof(buf) - 1) { /* the response head: the stream is open */
        ssize_t n = recv(fd, buf + got, sizeof(buf) - 1 - got, 0);
        assert_true(n > 0);
        got += (size_t)n;
        buf[got] = '\0';
        if (strstr(buf, "\r\n\r\n"))
            break;
    }
    assert_non_null(strstr(buf, "200"));
    for (int i = 0; i < 100 && fake_engine_counts(g_eng).active == before.active; i++)
        usleep(10 * 1000);
    close(fd);
    assert_true(fake_engine_wait_idle(g_eng, 8000));
    fake_engine_counts_t after = fake_engine_counts(g_eng);
    assert_int_equal(after.canceled, before.canceled + 1);
    assert_int_equal(after.tokens, before.tokens); /* canceled before the first token */
    double d1 = -1;
    for (int i = 0; i < 100 && (d1 = metric(M("duet_gateway_disconnect_cancels_total"))) != d0 + 1;
         i++)
        usleep(20 * 1000);
    assert_true(d1 == d0 + 1);
    assert_true(metric(M("duet_kv_blocks_used")) == 0);
    fake_engine_set_delays(g_eng, 0, 0);
}

typedef struct inflight {
    uint16_t port;
    int status;
    bool ended;
    char *body;
} inflight_t;

static void *inflight_client(void *p)
{
    inflight_t *a = p;
    http_resp_t r;
    if (http_do(a->port, "POST", "/v1/completions", NULL,
                "{\"prompt\":[600],\"max_tokens\":250,\"stream\":true}", &r)) {
        a->status = r.status;
        a->body = strdup(r.body);
        http_resp_free(&r);
    }
    a->ended = true;
    return NULL;
}

static void test_shutdown_inflight(void **state)
{
    (void)state;
    duet_gateway_opts_t go = {0};
    duet_gateway_t *gw2 = NULL;
    assert_int_equal(duet_gateway_create(&go, g_eng, g_tok, &gw2), DUET_OK);
    fake_engine_set_delays(g_eng, 0, 50);
    inflight_t a = {.port = duet_gateway_port(gw2)};
    pthread_t th;
    assert_int_equal(pthread_create(&th, NULL, inflight_client, &a), 0);
    for (int i = 0; i < 100 && fake_engine_counts(g_eng).active == 0; i++)
        usleep(10 * 1000);
    assert_true(fake_engine_counts(g_eng).active > 0);
    double t0 = duet_now_s();
    duet_gateway_destroy(&gw2);
    assert_null(gw2);
    assert_true(duet_now_s() - t0 < 5.0);
    pthread_join(th, NULL);
    assert_true(a.ended);
    /* the stream ended with an error event and [DONE], or the socket closed */
    if (a.body)
        assert_true(a.status == 200);
    free(a.body);
    assert_true(fake_engine_wait_idle(g_eng, 5000));
    fake_engine_set_delays(g_eng, 0, 0);
}

/* the engine refuses (503) or fails mid-way (500 / an SSE error event) */
static void test_engine_faults(void **state)
{
    (void)state;
    fake_engine_set_faults(g_eng, DUET_ERR_CAPACITY, 0);
    http_resp_t r;
    assert_true(http_do(g_port, "POST", "/v1/completions", KEY, "{\"prompt\":[600]}", &r));
    assert_int_equal(r.status, 503);
    assert_error_json(r.body, NULL);
    http_resp_free(&r);

    fake_engine_set_faults(g_eng, DUET_OK, 3);
    assert_true(http_do(g_port, "POST", "/v1/completions", KEY,
                        "{\"prompt\":[600],\"max_tokens\":10}", &r));
    assert_int_equal(r.status, 500);
    assert_error_json(r.body, NULL);
    assert_non_null(strstr(r.body, "injected failure"));
    http_resp_free(&r);

    assert_true(http_do(g_port, "POST", "/v1/completions", KEY,
                        "{\"prompt\":[600],\"max_tokens\":10,\"stream\":true}", &r));
    assert_int_equal(r.status, 200);
    char **ev;
    int n = http_sse_events(r.body, &ev);
    assert_true(n >= 2);
    assert_string_equal(ev[n - 1], "[DONE]");
    assert_non_null(strstr(ev[n - 2], "\"error\""));
    assert_error_json(ev[n - 2], NULL);
    http_sse_free(ev, n);
    http_resp_free(&r);
    fake_engine_set_faults(g_eng, DUET_OK, 0);
    assert_true(fake_engine_wait_idle(g_eng, 5000));
}

/* a request that runs past request_timeout_s ends with an error; an idle or
 * half-sent connection is closed after conn_timeout_s */
static void test_timeouts(void **state)
{
    (void)state;
    /* also the other event-loop setup: one loop, left at normal priority */
    duet_gateway_opts_t go = {.request_timeout_s = 1,
                              .conn_timeout_s = 1,
                              .loop_sched = DUET_GATEWAY_SCHED_NORMAL,
                              .loop_threads = 1};
    duet_gateway_t *gw3 = NULL;
    assert_int_equal(duet_gateway_create(&go, g_eng, g_tok, &gw3), DUET_OK);
    uint16_t port = duet_gateway_port(gw3);
    fake_engine_set_delays(g_eng, 0, 50);
    http_resp_t r;
    double t0 = duet_now_s();
    assert_true(http_do(port, "POST", "/v1/completions", NULL,
                        "{\"prompt\":[600],\"max_tokens\":200}", &r));
    assert_int_equal(r.status, 504);
    assert_error_json(r.body, NULL);
    http_resp_free(&r);
    assert_true(http_do(port, "POST", "/v1/completions", NULL,
                        "{\"prompt\":[600],\"max_tokens\":200,\"stream\":true}", &r));
    assert_int_equal(r.status, 200);
    assert_non_null(strstr(r.body, "timed out"));
    assert_non_null(strstr(r.body, "data: [DONE]\n\n"));
    http_resp_free(&r);
    assert_true(duet_now_s() - t0 < 10);
    assert_true(fake_engine_wait_idle(g_eng, 5000));
    fake_engine_set_delays(g_eng, 0, 0);

    /* half a request line, then silence: the server hangs up */
    int fd = http_connect(port);
    assert_true(fd >= 0);
    assert_true(http_send_all(fd, "POST /v1/comp", 13));
    t0 = duet_now_s();
    char c;
    ssize_t got = recv(fd, &c, 1, 0);
    assert_true(got <= 0);
    assert_true(duet_now_s() - t0 < 8);
    close(fd);

    /* a body that stops half way: the server hangs up too */
    fd = http_connect(port);
    assert_true(fd >= 0);
    const char *part = "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n"
                       "{\"prompt\":";
    assert_true(http_send_all(fd, part, strlen(part)));
    t0 = duet_now_s();
    got = recv(fd, &c, 1, 0);
    assert_true(got <= 0);
    assert_true(duet_now_s() - t0 < 8);
    close(fd);

    duet_gateway_destroy(&gw3);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_completion_ids),    cmocka_unit_test(test_completion_text),
        cmocka_unit_test(test_completion_stream), cmocka_unit_test(test_chat),
        cmocka_unit_test(test_stop_strings),      cmocka_unit_test(test_eos),
        cmocka_unit_test(test_n_choices),         cmocka_unit_test(test_bad_requests),
        cmocka_unit_test(test_body_limits),       cmocka_unit_test(test_malformed_http),
        cmocka_unit_test(test_health_models),
        cmocka_unit_test(test_metrics),           cmocka_unit_test(test_concurrent),
        cmocka_unit_test(test_disconnect_stream), cmocka_unit_test(test_disconnect_blocking),
        cmocka_unit_test(test_disconnect_silent_stream),
        cmocka_unit_test(test_shutdown_inflight), cmocka_unit_test(test_engine_faults),
        cmocka_unit_test(test_timeouts),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
