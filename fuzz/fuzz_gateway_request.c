/* libFuzzer target: an HTTP request body -> duet_gw_request_t, the chat
 * template renderer over whatever the validator accepts, and the invariants
 * that the rest of the gateway relies on.
 *
 * fuzz/CMakeLists.txt links the duet libraries it knows about, which do not
 * include duet_gateway yet (the gateway moves into actors/ later), so the
 * validator's sources are compiled into this target directly. They need
 * only base, jansson and (for chat.c) the tokenizer header, all of which
 * duet_model brings.
 *
 * Byte 0: bit 0 picks chat or completion; bit 1 picks the input form. Raw:
 * the rest is the body. Structured: each following pair of bytes picks a
 * known field and one of a set of JSON values (right and wrong types,
 * bounds, nesting), so that an empty corpus reaches the field checks at once
 * (jansson is not instrumented, so raw bytes rarely get past its parser). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/chat.c"
#include "gateway/request.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *const k_keys[] = {
    "model",     "prompt",      "messages",   "max_tokens",     "temperature",
    "top_p",     "top_k",       "seed",       "stop",           "n",
    "stream",    "stream_options", "ignore_eos", "skip_special_tokens", "logprobs",
    "user",      "echo",        "presence_penalty", "max_completion_tokens", "best_of",
};
static const char *const k_values[] = {
    "1", "-1", "0", "0.5", "2", "1e309", "-0", "3.5", "9999999999999", "4294967296", "null",
    "true", "false", "\"x\"", "\"\"", "\"\\u0000a\"", "{}", "[]", "[1,2,3]", "[-5]", "[[1]]",
    "[\"a\",\"b\"]", "[\"\",\"x\"]", "{\"include_usage\":true}", "{\"include_usage\":1}",
    "[{\"role\":\"user\",\"content\":\"hi\"}]",
    ("[{\"role\":\"system\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]},"
     "{\"role\":\"assistant\",\"content\":\"b\"},{\"role\":\"user\",\"content\":\"c\"}]"),
    "[{\"role\":\"bot\",\"content\":\"x\"}]", "[{\"role\":\"user\"}]",
    "[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]", "[\"x\",\"y\",\"z\",\"w\",\"v\"]",
    "\"\\ud800\"",
};

/* Structured input -> a JSON object body (malloc'd). */
static char *structured_body(const uint8_t *d, size_t n, size_t *len)
{
    duet_buf_t b = {0};
    (void)duet_buf_append(&b, "{", 1);
    for (size_t i = 0; i + 1 < n; i += 2) {
        const char *k = k_keys[d[i] % DUET_ARRAY_LEN(k_keys)];
        const char *v = k_values[d[i + 1] % DUET_ARRAY_LEN(k_values)];
        (void)duet_buf_printf(&b, "%s\"%s\":%s", i ? "," : "", k, v);
    }
    (void)duet_buf_append(&b, "}", 1);
    *len = b.len;
    return (char *)b.data;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    duet_gw_kind_t kind = (data[0] & 1) ? DUET_GW_CHAT : DUET_GW_COMPLETION;
    duet_gw_request_t req;
    duet_gw_error_t err;
    size_t blen = size - 1;
    char *body = (data[0] & 2) ? structured_body(data + 1, size - 1, &blen) : NULL;
    if (!body)
        blen = size - 1;
    duet_status_t st = duet_gw_request_parse(kind, body ? body : (const char *)data + 1, blen,
                                             &req, &err);
    duet_free(body);
    if (st != DUET_OK) {
        if (err.http_status < 400 || err.http_status > 599 || err.message[0] == '\0' ||
            memchr(err.message, '\0', sizeof(err.message)) == NULL ||
            memchr(err.param, '\0', sizeof(err.param)) == NULL)
            abort();
        duet_gw_request_cleanup(&req);
        return 0;
    }
    /* what the server assumes of an accepted request */
    if (req.kind != kind || req.n < 1 || req.n > DUET_GW_MAX_N || req.n_stop > DUET_GW_MAX_STOP)
        abort();
    if (req.max_tokens != -1 && req.max_tokens < 1)
        abort();
    if (!isfinite(req.temperature) || req.temperature < 0 || !(req.top_p > 0 && req.top_p <= 1) ||
        req.top_k < -1)
        abort();
    if (req.include_usage && !req.stream)
        abort();
    for (size_t i = 0; i < req.n_stop; i++) {
        size_t l = strlen(req.stop[i]);
        if (l == 0 || l > DUET_GW_MAX_STOP_LEN)
            abort();
    }
    if (kind == DUET_GW_COMPLETION) {
        if ((req.prompt == NULL) == (req.prompt_ids == NULL))
            abort();
        if (req.prompt_ids && req.n_prompt_ids == 0)
            abort();
        for (size_t i = 0; i < req.n_prompt_ids; i++)
            if (req.prompt_ids[i] < 0)
                abort();
    } else {
        if (req.n_messages == 0 || req.n_messages > DUET_GW_MAX_MESSAGES || !req.messages)
            abort();
        for (duet_gw_chat_style_t s = DUET_GW_CHAT_CHATML; s <= DUET_GW_CHAT_INST; s++) {
            duet_buf_t b = {0};
            if (duet_gw_chat_render(s, req.messages, req.n_messages, "<s>", "</s>", &b) != DUET_OK)
                abort();
            size_t content = 0;
            for (size_t i = 0; i < req.n_messages; i++)
                content += req.messages[i].content_len;
            if (b.len < content)
                abort();
            duet_buf_cleanup(&b);
        }
    }
    duet_gw_request_cleanup(&req);
    return 0;
}
