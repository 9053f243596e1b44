/* request — the body of POST /v1/completions and /v1/chat/completions,
 * parsed and validated into a plain struct.
 *
 * The body is untrusted: every field is type- and range-checked, and a bad
 * body yields an OpenAI-style error (HTTP status, message, the offending
 * field in `param`) instead of a request. Unknown fields are ignored, as
 * OpenAI and vLLM do; fields whose meaning duet cannot honour (logprobs,
 * echo, best_of > n, penalties, tools, ...) are refused rather than
 * silently dropped, so a client never gets an answer to a question it did
 * not ask.
 *
 * This file depends on base and jansson only (no tokenizer, no engine), so
 * the fuzz target can build it on its own. */
#ifndef DUET_GATEWAY_REQUEST_H
#define DUET_GATEWAY_REQUEST_H

#include "base/base.h"

#ifdef __cplusplus
extern "C" {
#endif

#define DUET_GW_MAX_N 16          /* choices per request */
#define DUET_GW_MAX_STOP 16       /* stop strings per request */
#define DUET_GW_MAX_STOP_LEN 256  /* bytes per stop string */
#define DUET_GW_MAX_MESSAGES 1024 /* chat messages per request */

typedef enum duet_gw_kind {
    DUET_GW_COMPLETION = 0, /* /v1/completions */
    DUET_GW_CHAT = 1,       /* /v1/chat/completions */
} duet_gw_kind_t;

typedef enum duet_gw_role {
    DUET_GW_ROLE_SYSTEM = 0, /* "system" and "developer" */
    DUET_GW_ROLE_USER = 1,
    DUET_GW_ROLE_ASSISTANT = 2,
} duet_gw_role_t;

typedef struct duet_gw_message {
    duet_gw_role_t role;
    char *content; /* text parts concatenated; never NULL */
    size_t content_len;
} duet_gw_message_t;

typedef struct duet_gw_request {
    duet_gw_kind_t kind;
    char *model; /* NULL when the client named none */
    /* completions: exactly one of prompt / prompt_ids is set */
    char *prompt;
    size_t prompt_len;
    int32_t *prompt_ids;
    size_t n_prompt_ids;
    /* chat */
    duet_gw_message_t *messages;
    size_t n_messages;
    /* generation */
    int64_t max_tokens; /* -1: not given (the rest of the context) */
    double temperature; /* default 1.0 */
    double top_p;       /* default 1.0 */
    int32_t top_k;      /* default -1 (off) */
    bool has_seed;
    uint64_t seed;
    char **stop; /* n_stop strings, each non-empty and NUL-terminated */
    size_t n_stop;
    uint32_t n; /* default 1 */
    bool stream;
    bool include_usage; /* stream_options.include_usage */
    bool ignore_eos;    /* vLLM extension */
    bool skip_special;  /* vLLM skip_special_tokens, default true */
} duet_gw_request_t;

/* What was wrong with a body, in the terms OpenAI's error JSON uses. */
typedef struct duet_gw_error {
    int http_status; /* 400, 404, 413, ... */
    char type[32];   /* "invalid_request_error" */
    char param[64];  /* offending field ("messages[2].content"), "" for none */
    char code[32];   /* "" for null */
    char message[512];
} duet_gw_error_t;

/* Parse `len` bytes of JSON into *req (zeroed first; free with
 * duet_gw_request_cleanup, also after a failure). On a bad body returns
 * DUET_ERR_INVALID and fills *err. */
DUET_API duet_status_t duet_gw_request_parse(duet_gw_kind_t kind, const char *body, size_t len,
                                             duet_gw_request_t *req, duet_gw_error_t *err);
DUET_API void duet_gw_request_cleanup(duet_gw_request_t *req);

/* Fill *err (and return DUET_ERR_INVALID) — shared by the HTTP layer. */
DUET_API duet_status_t duet_gw_error_set(duet_gw_error_t *err, int http_status, const char *type,
                                         const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));

#ifdef __cplusplus
}
#endif
#endif /* DUET_GATEWAY_REQUEST_H */
