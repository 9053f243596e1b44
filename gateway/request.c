/* request — JSON body -> duet_gw_request_t, with OpenAI-style errors that
 * name the bad field. See request.h for what is accepted and refused.
 *
 * A JSON null is treated as "not given" for every optional field, since
 * many clients send explicit nulls for defaults. */
#include "gateway/request.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

duet_status_t duet_gw_error_set(duet_gw_error_t *err, int http_status, const char *type,
                                const char *param, const char *code, const char *fmt, ...)
{
    if (err) {
        err->http_status = http_status;
        snprintf(err->type, sizeof(err->type), "%s", type ? type : "invalid_request_error");
        snprintf(err->param, sizeof(err->param), "%s", param ? param : "");
        snprintf(err->code, sizeof(err->code), "%s", code ? code : "");
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->message, sizeof(err->message), fmt, ap);
        va_end(ap);
    }
    return DUET_ERR_INVALID;
}

#define BAD(err, param, ...)                                                                       \
    duet_gw_error_set((err), 400, "invalid_request_error", (param), NULL, __VA_ARGS__)
#define UNSUPPORTED(err, param) BAD((err), (param), "'%s' is not supported by this server", (param))

static const char *json_type_name(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT: return "an object";
    case JSON_ARRAY: return "an array";
    case JSON_STRING: return "a string";
    case JSON_INTEGER: return "an integer";
    case JSON_REAL: return "a number";
    case JSON_TRUE:
    case JSON_FALSE: return "a boolean";
    case JSON_NULL: return "null";
    }
    return "a value";
}

/* The field `key` of `obj`, or NULL when absent or null. */
static json_t *field(json_t *obj, const char *key)
{
    json_t *v = json_object_get(obj, key);
    return (v && !json_is_null(v)) ? v : NULL;
}

/* An integer, also accepting a real with an integral value (10.0). */
static duet_status_t get_int(json_t *v, const char *param, int64_t lo, int64_t hi, int64_t *out,
                             duet_gw_error_t *err)
{
    int64_t x;
    if (json_is_integer(v)) {
        x = (int64_t)json_integer_value(v);
    } else if (json_is_real(v)) {
        double d = json_real_value(v);
        if (!(d == floor(d)) || d < -9.0e18 || d > 9.0e18)
            return BAD(err, param, "'%s' must be an integer, got %g", param, d);
        x = (int64_t)d;
    } else {
        return BAD(err, param, "'%s' must be an integer, got %s", param, json_type_name(v));
    }
    if (x < lo || x > hi)
        return BAD(err, param, "'%s' must be between %lld and %lld, got %lld", param, (long long)lo,
                   (long long)hi, (long long)x);
    *out = x;
    return DUET_OK;
}

static duet_status_t get_num(json_t *v, const char *param, double lo, double hi, bool lo_open,
                             double *out, duet_gw_error_t *err)
{
    if (!json_is_number(v))
        return BAD(err, param, "'%s' must be a number, got %s", param, json_type_name(v));
    double x = json_number_value(v);
    if (!isfinite(x) || x > hi || x < lo || (lo_open && x == lo))
        return BAD(err, param, "'%s' must be in %s%g, %g], got %g", param, lo_open ? "(" : "[", lo,
                   hi, x);
    *out = x;
    return DUET_OK;
}

static duet_status_t get_bool(json_t *v, const char *param, bool *out, duet_gw_error_t *err)
{
    if (!json_is_boolean(v))
        return BAD(err, param, "'%s' must be a boolean, got %s", param, json_type_name(v));
    *out = json_is_true(v);
    return DUET_OK;
}

/* true if `v` (may be NULL) asks for something: a true, a non-zero number,
 * a non-empty string/array/object. */
static bool truthy(json_t *v)
{
    if (!v)
        return false;
    switch (json_typeof(v)) {
    case JSON_TRUE: return true;
    case JSON_INTEGER: return json_integer_value(v) != 0;
    case JSON_REAL: return json_real_value(v) != 0.0;
    case JSON_STRING: return json_string_length(v) != 0;
    case JSON_ARRAY: return json_array_size(v) != 0;
    case JSON_OBJECT: return json_object_size(v) != 0;
    default: return false;
    }
}

static duet_status_t parse_token_ids(json_t *arr, const char *param, duet_gw_request_t *req,
                                     duet_gw_error_t *err)
{
    size_t n = json_array_size(arr);
    if (n == 0)
        return BAD(err, param, "'%s' must not be empty", param);
    req->prompt_ids = duet_calloc(n, sizeof(int32_t));
    if (!req->prompt_ids)
        return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(arr, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > INT32_MAX)
            return BAD(err, param, "'%s[%zu]' must be a token id (a non-negative integer)", param,
                       i);
        req->prompt_ids[i] = (int32_t)json_integer_value(e);
    }
    req->n_prompt_ids = n;
    return DUET_OK;
}

static duet_status_t set_prompt_string(json_t *s, duet_gw_request_t *req, duet_gw_error_t *err)
{
    req->prompt_len = json_string_length(s);
    req->prompt = duet_strndup(json_string_value(s), req->prompt_len);
    if (!req->prompt)
        return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    return DUET_OK;
}

static duet_status_t parse_prompt(json_t *root, duet_gw_request_t *req, duet_gw_error_t *err)
{
    json_t *p = field(root, "prompt");
    if (!p)
        return BAD(err, "prompt", "'prompt' is required");
    if (json_is_string(p))
        return set_prompt_string(p, req, err);
    if (!json_is_array(p))
        return BAD(err, "prompt",
                   "'prompt' must be a string, an array of token ids, or a one-element array of "
                   "either; got %s",
                   json_type_name(p));
    size_t n = json_array_size(p);
    if (n == 0)
        return BAD(err, "prompt", "'prompt' must not be empty");
    json_t *first = json_array_get(p, 0);
    if (json_is_integer(first))
        return parse_token_ids(p, "prompt", req, err);
    if (json_is_string(first) || json_is_array(first)) {
        if (n > 1)
            return BAD(err, "prompt",
                       "batched prompts (%zu) are not supported; send one prompt per request", n);
        if (json_is_string(first))
            return set_prompt_string(first, req, err);
        return parse_token_ids(first, "prompt[0]", req, err);
    }
    return BAD(err, "prompt", "'prompt[0]' must be a string, a token id or an array of token ids");
}

static duet_status_t append_text(char **buf, size_t *len, const char *s, size_t n,
                                 duet_gw_error_t *err)
{
    char *nb = duet_realloc_array(*buf, *len + n + 1, 1);
    if (!nb)
        return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    memcpy(nb + *len, s, n);
    *len += n;
    nb[*len] = '\0';
    *buf = nb;
    return DUET_OK;
}

static duet_status_t parse_message(json_t *m, size_t i, duet_gw_message_t *out,
                                   duet_gw_error_t *err)
{
    char param[64];
    snprintf(param, sizeof(param), "messages[%zu]", i);
    if (!json_is_object(m))
        return BAD(err, param, "'%s' must be an object, got %s", param, json_type_name(m));
    json_t *role = field(m, "role");
    snprintf(param, sizeof(param), "messages[%zu].role", i);
    if (!role)
        return BAD(err, param, "'%s' is required", param);
    if (!json_is_string(role))
        return BAD(err, param, "'%s' must be a string, got %s", param, json_type_name(role));
    const char *r = json_string_value(role);
    if (!strcmp(r, "system") || !strcmp(r, "developer"))
        out->role = DUET_GW_ROLE_SYSTEM;
    else if (!strcmp(r, "user"))
        out->role = DUET_GW_ROLE_USER;
    else if (!strcmp(r, "assistant"))
        out->role = DUET_GW_ROLE_ASSISTANT;
    else
        return BAD(err, param,
                   "'%s' must be one of system, developer, user, assistant; got '%.40s'", param, r);

    if (truthy(field(m, "tool_calls")) || truthy(field(m, "function_call"))) {
        snprintf(param, sizeof(param), "messages[%zu].tool_calls", i);
        return UNSUPPORTED(err, param);
    }

    json_t *c = field(m, "content");
    snprintf(param, sizeof(param), "messages[%zu].content", i);
    out->content = duet_strdup("");
    out->content_len = 0;
    if (!out->content)
        return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    if (!c) {
        if (out->role != DUET_GW_ROLE_ASSISTANT)
            return BAD(err, param, "'%s' is required", param);
        return DUET_OK;
    }
    if (json_is_string(c))
        return append_text(&out->content, &out->content_len, json_string_value(c),
                           json_string_length(c), err);
    if (!json_is_array(c))
        return BAD(err, param, "'%s' must be a string or an array of content parts, got %s", param,
                   json_type_name(c));
    for (size_t j = 0; j < json_array_size(c); j++) {
        json_t *part = json_array_get(c, j);
        snprintf(param, sizeof(param), "messages[%zu].content[%zu]", i, j);
        if (!json_is_object(part))
            return BAD(err, param, "'%s' must be an object, got %s", param, json_type_name(part));
        json_t *type = field(part, "type");
        json_t *text = field(part, "text");
        if (!type || !json_is_string(type) || strcmp(json_string_value(type), "text") != 0) {
            snprintf(param, sizeof(param), "messages[%zu].content[%zu].type", i, j);
            return BAD(err, param, "'%s' must be \"text\": only text content is supported", param);
        }
        if (!text || !json_is_string(text)) {
            snprintf(param, sizeof(param), "messages[%zu].content[%zu].text", i, j);
            return BAD(err, param, "'%s' must be a string", param);
        }
        if (append_text(&out->content, &out->content_len, json_string_value(text),
                        json_string_length(text), err))
            return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

static duet_status_t parse_messages(json_t *root, duet_gw_request_t *req, duet_gw_error_t *err)
{
    json_t *ms = field(root, "messages");
    if (!ms)
        return BAD(err, "messages", "'messages' is required");
    if (!json_is_array(ms))
        return BAD(err, "messages", "'messages' must be an array, got %s", json_type_name(ms));
    size_t n = json_array_size(ms);
    if (n == 0)
        return BAD(err, "messages", "'messages' must not be empty");
    if (n > DUET_GW_MAX_MESSAGES)
        return BAD(err, "messages", "'messages' has %zu entries; at most %d are accepted", n,
                   DUET_GW_MAX_MESSAGES);
    req->messages = duet_calloc(n, sizeof(duet_gw_message_t));
    if (!req->messages)
        return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    for (size_t i = 0; i < n; i++) {
        req->n_messages = i + 1; /* so cleanup frees what was filled */
        if (parse_message(json_array_get(ms, i), i, &req->messages[i], err))
            return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

static duet_status_t add_stop(json_t *s, const char *param, duet_gw_request_t *req,
                              duet_gw_error_t *err)
{
    if (!json_is_string(s))
        return BAD(err, param, "'%s' must be a string, got %s", param, json_type_name(s));
    size_t len = json_string_length(s);
    if (len == 0)
        return DUET_OK; /* an empty stop string can never match: ignore it */
    if (len > DUET_GW_MAX_STOP_LEN)
        return BAD(err, param, "'%s' is %zu bytes long; at most %d are accepted", param, len,
                   DUET_GW_MAX_STOP_LEN);
    char *copy = duet_strndup(json_string_value(s), len);
    if (!copy)
        return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    req->stop[req->n_stop++] = copy;
    return DUET_OK;
}

static duet_status_t parse_stop(json_t *root, duet_gw_request_t *req, duet_gw_error_t *err)
{
    json_t *s = field(root, "stop");
    if (!s)
        return DUET_OK;
    req->stop = duet_calloc(DUET_GW_MAX_STOP, sizeof(char *));
    if (!req->stop)
        return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    if (json_is_string(s))
        return add_stop(s, "stop", req, err);
    if (!json_is_array(s))
        return BAD(err, "stop", "'stop' must be a string or an array of strings, got %s",
                   json_type_name(s));
    if (json_array_size(s) > DUET_GW_MAX_STOP)
        return BAD(err, "stop", "'stop' has %zu entries; at most %d are accepted",
                   json_array_size(s), DUET_GW_MAX_STOP);
    for (size_t i = 0; i < json_array_size(s); i++) {
        char param[32];
        snprintf(param, sizeof(param), "stop[%zu]", i);
        if (add_stop(json_array_get(s, i), param, req, err))
            return DUET_ERR_INVALID;
    }
    return DUET_OK;
}

/* Fields whose meaning duet cannot honour: refused when they ask for
 * anything, accepted when they hold their neutral value. */
static duet_status_t refuse_unsupported(json_t *root, duet_gw_request_t *req, duet_gw_error_t *err)
{
    static const char *const refused[] = {
        "logprobs",     "top_logprobs",     "echo",
        "suffix",       "logit_bias",       "tools",
        "functions",    "presence_penalty", "frequency_penalty",
        "min_tokens",   "prompt_logprobs",  "guided_json",
        "guided_regex", "guided_choice",    "guided_grammar",
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(refused); i++)
        if (truthy(field(root, refused[i])))
            return UNSUPPORTED(err, refused[i]);
    json_t *v;
    if ((v = field(root, "best_of"))) {
        int64_t b;
        if (get_int(v, "best_of", 1, DUET_GW_MAX_N, &b, err))
            return DUET_ERR_INVALID;
        if ((uint32_t)b != req->n)
            return BAD(err, "best_of", "'best_of' different from 'n' is not supported");
    }
    if ((v = field(root, "repetition_penalty"))) {
        double rp;
        if (get_num(v, "repetition_penalty", 0.0, 1e6, true, &rp, err))
            return DUET_ERR_INVALID;
        if (rp != 1.0)
            return UNSUPPORTED(err, "repetition_penalty");
    }
    if ((v = field(root, "response_format"))) {
        json_t *t = json_is_object(v) ? field(v, "type") : NULL;
        if (!t || !json_is_string(t) || strcmp(json_string_value(t), "text") != 0)
            return UNSUPPORTED(err, "response_format");
    }
    return DUET_OK;
}

static duet_status_t parse_root(json_t *root, duet_gw_request_t *req, duet_gw_error_t *err)
{
    json_t *v;
    if ((v = field(root, "model"))) {
        if (!json_is_string(v))
            return BAD(err, "model", "'model' must be a string, got %s", json_type_name(v));
        req->model = duet_strndup(json_string_value(v), json_string_length(v));
        if (!req->model)
            return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
    }
    if (req->kind == DUET_GW_COMPLETION) {
        if (parse_prompt(root, req, err))
            return DUET_ERR_INVALID;
    } else {
        if (parse_messages(root, req, err))
            return DUET_ERR_INVALID;
    }

    int64_t x;
    /* chat's newer name wins, as in vLLM */
    const char *mt_name = "max_tokens";
    v = NULL;
    if (req->kind == DUET_GW_CHAT && (v = field(root, "max_completion_tokens")))
        mt_name = "max_completion_tokens";
    if (!v)
        v = field(root, "max_tokens");
    if (v) {
        if (get_int(v, mt_name, INT64_MIN, INT64_MAX, &x, err))
            return DUET_ERR_INVALID;
        if (x < 1)
            return BAD(err, mt_name, "'%s' must be at least 1, got %lld", mt_name, (long long)x);
        req->max_tokens = x > INT32_MAX ? INT32_MAX : x;
    }
    if ((v = field(root, "temperature")) &&
        get_num(v, "temperature", 0.0, 1000.0, false, &req->temperature, err))
        return DUET_ERR_INVALID;
    if ((v = field(root, "top_p")) && get_num(v, "top_p", 0.0, 1.0, true, &req->top_p, err))
        return DUET_ERR_INVALID;
    if ((v = field(root, "top_k"))) {
        if (get_int(v, "top_k", -1, INT32_MAX, &x, err))
            return DUET_ERR_INVALID;
        req->top_k = (int32_t)x;
    }
    if ((v = field(root, "seed"))) {
        if (get_int(v, "seed", INT64_MIN, INT64_MAX, &x, err))
            return DUET_ERR_INVALID;
        req->has_seed = true;
        req->seed = (uint64_t)x;
    }
    if ((v = field(root, "n"))) {
        if (get_int(v, "n", 1, DUET_GW_MAX_N, &x, err))
            return DUET_ERR_INVALID;
        req->n = (uint32_t)x;
    }
    if ((v = field(root, "stream")) && get_bool(v, "stream", &req->stream, err))
        return DUET_ERR_INVALID;
    if ((v = field(root, "ignore_eos")) && get_bool(v, "ignore_eos", &req->ignore_eos, err))
        return DUET_ERR_INVALID;
    if ((v = field(root, "skip_special_tokens")) &&
        get_bool(v, "skip_special_tokens", &req->skip_special, err))
        return DUET_ERR_INVALID;
    if ((v = field(root, "stream_options"))) {
        if (!json_is_object(v))
            return BAD(err, "stream_options", "'stream_options' must be an object, got %s",
                       json_type_name(v));
        if (!req->stream)
            return BAD(err, "stream_options", "'stream_options' is only allowed with stream=true");
        json_t *iu = field(v, "include_usage");
        if (iu && get_bool(iu, "stream_options.include_usage", &req->include_usage, err))
            return DUET_ERR_INVALID;
    }
    if (parse_stop(root, req, err))
        return DUET_ERR_INVALID;
    return refuse_unsupported(root, req, err);
}

duet_status_t duet_gw_request_parse(duet_gw_kind_t kind, const char *body, size_t len,
                                    duet_gw_request_t *req, duet_gw_error_t *err)
{
    memset(req, 0, sizeof(*req));
    memset(err, 0, sizeof(*err));
    req->kind = kind;
    req->max_tokens = -1;
    req->temperature = 1.0;
    req->top_p = 1.0;
    req->top_k = -1;
    req->n = 1;
    req->skip_special = true;

    if (!body || len == 0)
        return BAD(err, NULL, "the request body is empty; expected a JSON object");
    json_error_t jerr;
    json_t *root = json_loadb(body, len, 0, &jerr);
    if (!root)
        return BAD(err, NULL, "the request body is not valid JSON: %s (line %d, column %d)",
                   jerr.text, jerr.line, jerr.column);
    duet_status_t st = DUET_OK;
    if (!json_is_object(root))
        st = BAD(err, NULL, "the request body must be a JSON object, got %s", json_type_name(root));
    else
        st = parse_root(root, req, err);
    json_decref(root);
    return st;
}

void duet_gw_request_cleanup(duet_gw_request_t *req)
{
    if (!req)
        return;
    duet_free(req->model);
    duet_free(req->prompt);
    duet_free(req->prompt_ids);
    for (size_t i = 0; i < req->n_messages; i++)
        duet_free(req->messages[i].content);
    duet_free(req->messages);
    for (size_t i = 0; i < req->n_stop; i++)
        duet_free(req->stop[i]);
    duet_free(req->stop);
    memset(req, 0, sizeof(*req));
}
