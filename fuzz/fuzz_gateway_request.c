/* libFuzzer target: an HTTP request body -> duet_gw_request_t, the chat
 * template renderer over whatever the validator accepts, and the invariants
 * that the rest of the gateway relies on.
 *
 * fuzz/CMakeLists.txt links the duet libraries it knows about, which do not
 * include duet_gateway yet (the gateway moves into actors/ later), so the
 * validator's sources are compiled into this target directly. They need
 * only base, jansson and (for chat.c) the tokenizer header, all of which
 * duet_model brings. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "gateway/chat.c"
#include "gateway/request.c"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    duet_gw_kind_t kind = (data[0] & 1) ? DUET_GW_CHAT : DUET_GW_COMPLETION;
    duet_gw_request_t req;
    duet_gw_error_t err;
    duet_status_t st = duet_gw_request_parse(kind, (const char *)data + 1, size - 1, &req, &err);
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
