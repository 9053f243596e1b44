/* server — HTTP handling of the gateway (see gateway.h for the contract).
 *
 * Threading: event loops write every response. libmicrohttpd runs a few
 * internal threads (opts.loop_threads, default 2), each an epoll loop that
 * owns its connections: a connection's HTTP parsing, request handling
 * (parse, tokenize, submit) and SSE writing all happen on its loop, so the
 * detokenizers never cross threads. A completion that has nothing to send
 * suspends its connection (MHD_suspend_connection, from the access handler
 * or the stream's content reader). The engine's callbacks (any thread) only
 * append token ids to the job under job->mu and, if the connection is
 * suspended, resume it (MHD_resume_connection): the loop wakes once for a
 * burst of tokens and writes each stream's bytes in the same pass, with no
 * per-connection thread hand-off (one thread per connection made the token
 * -> socket time a scheduler wake-up of hundreds of threads on few cores).
 * The loops ask for real-time priority where allowed (loop_thread_tune):
 * their wake-up latency is every token's latency.
 *
 * A watcher thread ticks every GW_WATCH_MS: it polls the sockets of live
 * completions for the client going away (POLLRDHUP / POLLHUP / POLLERR) and
 * resumes connections whose client left or whose request deadline passed,
 * so that a suspended request notices both within one tick. Shutdown
 * resumes every suspended connection; none suspends again.
 *
 * Lifetime: a job is shared by the connection and the engine: it holds one
 * reference for the connection and one per engine request until that
 * request's on_finish. The gateway counts live jobs so that destroy() can
 * wait for the engine to let go of them. */
#include "gateway/gateway.h"

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sched.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "gateway/metrics.h"
#include "gateway/request.h"

#define GW_MOD "gateway"
#define GW_WATCH_MS 100       /* watcher tick: disconnects and deadlines seen within it */
#define GW_STREAM_BLOCK 32768 /* bytes per content-reader call */
/* Request heads: libmicrohttpd answers heads larger than its per-connection
 * memory with its own HTML 431/414, so that memory is made well larger than
 * the limits the handler enforces itself with OpenAI error JSON. */
#define GW_MHD_CONN_MEMORY (256u * 1024u)
#define GW_MAX_URL 16384u
#define GW_MAX_HEADERS (64u * 1024u)

struct duet_gateway {
    struct MHD_Daemon *mhd;
    duet_gw_engine_t *engine;
    duet_gw_engine_info_t info;
    const duet_tokenizer_t *tok;
    char *model_name;
    char *api_key;
    size_t max_body;
    unsigned request_timeout_s;
    duet_gw_chat_style_t chat_style;
    duet_gateway_sched_t loop_sched;
    char *bos_str; /* token strings for the INST template, may be NULL */
    char *eos_str;
    int32_t stop_ids[DUET_GW_ENGINE_MAX_STOP_IDS]; /* end-of-sequence ids */
    uint32_t n_stop_ids;
    int32_t im_end_id; /* ChatML end of turn, -1 if none */
    uint32_t vocab;
    atomic_bool stopping;
    /* completions with a job, for the watcher and shutdown */
    pthread_mutex_t conns_mu;
    pthread_cond_t conns_cv;
    struct gw_conn *conns;
    bool watch_quit;
    bool watch_started;
    pthread_t watcher;
    uint16_t port;
    uint64_t id_nonce;
    atomic_uint_fast64_t id_counter;
    duet__gw_metrics_t metrics;
    pthread_mutex_t live_mu;
    pthread_cond_t live_cv;
    size_t live_jobs;
};

/* ---- jobs --------------------------------------------------------------- */

typedef struct gw_job gw_job_t;

typedef struct gw_choice {
    gw_job_t *job;
    uint32_t index;
    uint64_t engine_id;
    bool submitted;
    /* written by the engine's callbacks under job->mu */
    int32_t *tokens;
    size_t n_tokens, cap_tokens;
    bool eng_finished;
    duet_gw_engine_finish_t eng_reason;
    duet_status_t eng_status;
    char eng_detail[256];
    double last_token_t; /* for inter-token latency */
    bool queue_error;    /* a token could not be queued */
    /* the connection thread's own */
    size_t consumed;
    duet_detok_t *detok;
    duet_buf_t text;  /* all text so far (cut at a stop string) */
    size_t emitted;   /* bytes of text already sent (streaming) */
    size_t scan_from; /* where the next stop-string search starts */
    uint32_t completion_tokens;
    bool done; /* finished from the client's point of view */
    bool final_sent;
    const char *finish_reason; /* "stop" / "length" */
    bool error;
    char error_msg[300];
} gw_choice_t;

struct gw_job {
    duet_gateway_t *gw;
    pthread_mutex_t mu;
    atomic_int refs;
    /* under mu: the connection (NULL once it completed), whether it is
     * suspended waiting for the engine, and whether the engine has news the
     * connection has not pumped yet */
    struct MHD_Connection *mc;
    bool suspended;
    bool news;
    duet_gw_request_t req;
    gw_choice_t *choices;
    uint32_t n;
    char id[48];
    long long created;
    double t_arrival;
    bool first_token_seen; /* under mu */
    size_t prompt_tokens;
    size_t max_stop_len;
    /* streaming output, event loop only */
    duet_buf_t out;
    /* `data: {"id":...,"model":...,"choices":[{"index":` of every text
     * chunk, made once (NULL until the first, or if it could not be) */
    char *chunk_prefix;
    size_t out_off;
    bool stream_ended; /* [DONE] queued */
    bool finished_metrics;
    /* gateway overhead (duet_gateway_emit_latency_seconds), connection
     * thread only: when the newest token pumped reached on_token; when the
     * newest token in job->out did; when the newest token in the bytes
     * handed to libmicrohttpd did (observed at the reader's next call,
     * which libmicrohttpd makes once those bytes are written) */
    double pump_t, emit_pending_t, emit_inflight_t;
};

static void live_add(duet_gateway_t *gw, int d)
{
    pthread_mutex_lock(&gw->live_mu);
    gw->live_jobs = (size_t)((long)gw->live_jobs + d);
    if (gw->live_jobs == 0)
        pthread_cond_broadcast(&gw->live_cv);
    pthread_mutex_unlock(&gw->live_mu);
}

static void job_unref(gw_job_t *job)
{
    if (!job || atomic_fetch_sub(&job->refs, 1) != 1)
        return;
    duet_gateway_t *gw = job->gw;
    for (uint32_t i = 0; i < job->n; i++) {
        duet_free(job->choices[i].tokens);
        duet_detok_destroy(&job->choices[i].detok);
        duet_buf_cleanup(&job->choices[i].text);
    }
    duet_free(job->choices);
    duet_gw_request_cleanup(&job->req);
    duet_buf_cleanup(&job->out);
    free(job->chunk_prefix);
    pthread_mutex_destroy(&job->mu);
    duet_free(job);
    live_add(gw, -1);
}

/* Wake the job's connection: resume it if it is suspended. Caller holds
 * job->mu (so that a suspend, which checks `news` under it, cannot miss the
 * wake-up). */
static void job_wake_locked(gw_job_t *job)
{
    job->news = true;
    if (job->suspended && job->mc) {
        job->suspended = false;
        MHD_resume_connection(job->mc);
    }
}

static void on_token(void *user, int32_t token)
{
    gw_choice_t *c = user;
    gw_job_t *job = c->job;
    duet_gateway_t *gw = job->gw;
    double now = duet_now_s();
    pthread_mutex_lock(&job->mu);
    if (c->n_tokens == c->cap_tokens &&
        duet_vec_reserve((void **)&c->tokens, &c->cap_tokens, c->n_tokens + 1, sizeof(int32_t))) {
        /* cannot queue it: fail the choice rather than lose a token silently */
        c->queue_error = true;
    } else {
        c->tokens[c->n_tokens++] = token;
    }
    bool first = !job->first_token_seen;
    job->first_token_seen = true;
    double prev = c->last_token_t;
    c->last_token_t = now;
    job_wake_locked(job);
    pthread_mutex_unlock(&job->mu);
    atomic_fetch_add_explicit(&gw->metrics.generation_tokens, 1, memory_order_relaxed);
    if (first)
        duet__gw_hist_observe(&gw->metrics.ttft, now - job->t_arrival);
    if (prev > 0)
        duet__gw_hist_observe(&gw->metrics.itl, now - prev);
}

static void on_finish(void *user, duet_gw_engine_finish_t reason, duet_status_t status,
                      const char *detail)
{
    gw_choice_t *c = user;
    gw_job_t *job = c->job;
    pthread_mutex_lock(&job->mu);
    c->eng_finished = true;
    c->eng_reason = reason;
    c->eng_status = status;
    snprintf(c->eng_detail, sizeof(c->eng_detail), "%s",
             detail && *detail ? detail : duet_status_str(status));
    job_wake_locked(job);
    pthread_mutex_unlock(&job->mu);
    job_unref(job); /* the engine's reference */
}

static const duet_gw_engine_callbacks_t gw_callbacks = {on_token, on_finish};

static void job_cancel_all(gw_job_t *job)
{
    for (uint32_t i = 0; i < job->n; i++) {
        gw_choice_t *c = &job->choices[i];
        pthread_mutex_lock(&job->mu);
        bool live = c->submitted && !c->eng_finished;
        pthread_mutex_unlock(&job->mu);
        if (live)
            (void)job->gw->engine->ops->cancel(job->gw->engine, c->engine_id);
    }
}

/* ---- text: detokenize, stop strings ------------------------------------ */

static bool is_stop_id(const duet_gateway_t *gw, const gw_job_t *job, int32_t t)
{
    if (job->req.ignore_eos)
        return false;
    for (uint32_t i = 0; i < gw->n_stop_ids; i++)
        if (gw->stop_ids[i] == t)
            return true;
    return job->req.kind == DUET_GW_CHAT && gw->im_end_id >= 0 && t == gw->im_end_id;
}

/* Search for stop strings in text[scan_from..]; cut the text at the first. */
static bool choice_match_stop(gw_job_t *job, gw_choice_t *c)
{
    const duet_gw_request_t *r = &job->req;
    if (r->n_stop == 0)
        return false;
    const char *t = (const char *)c->text.data;
    size_t best = SIZE_MAX;
    for (size_t i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        if (c->text.len < c->scan_from + sl)
            continue;
        const char *p = memmem(t + c->scan_from, c->text.len - c->scan_from, r->stop[i], sl);
        if (p && (size_t)(p - t) < best)
            best = (size_t)(p - t);
    }
    if (best != SIZE_MAX) {
        c->text.len = best;
        return true;
    }
    /* a later match must overlap the last max_stop_len-1 bytes at the earliest */
    size_t keep = job->max_stop_len ? job->max_stop_len - 1 : 0;
    c->scan_from = c->text.len > keep ? c->text.len - keep : 0;
    return false;
}

/* Bytes of text that can be sent: all but a tail that may still grow into
 * a stop string. */
static size_t choice_safe_len(const gw_job_t *job, const gw_choice_t *c)
{
    if (c->done || job->req.n_stop == 0)
        return c->text.len;
    size_t hold = 0;
    const char *t = (const char *)c->text.data;
    for (size_t i = 0; i < job->req.n_stop; i++) {
        const char *s = job->req.stop[i];
        size_t sl = strlen(s);
        for (size_t k = sl - 1; k > hold; k--) {
            if (k <= c->text.len && memcmp(t + c->text.len - k, s, k) == 0) {
                hold = k;
                break;
            }
        }
    }
    return c->text.len - hold;
}

static void choice_fail(gw_choice_t *c, const char *what, const char *detail)
{
    c->error = true;
    c->done = true;
    snprintf(c->error_msg, sizeof(c->error_msg), "%s%s", what, detail);
}

/* Move the engine's news into the choices' text. Returns true when every
 * choice is done. */
static bool job_pump(gw_job_t *job)
{
    duet_gateway_t *gw = job->gw;
    bool all_done = true;
    pthread_mutex_lock(&job->mu);
    job->news = false; /* what arrives from here on wakes the connection again */
    pthread_mutex_unlock(&job->mu);
    for (uint32_t i = 0; i < job->n; i++) {
        gw_choice_t *c = &job->choices[i];
        if (c->done)
            continue;
        int32_t local[256];
        size_t nl = 0;
        bool fin = false;
        duet_gw_engine_finish_t reason = DUET_GW_ENGINE_FINISH_STOP;
        char detail[256] = "";
        bool more = true;
        while (more && !c->done) {
            pthread_mutex_lock(&job->mu);
            nl = c->n_tokens - c->consumed;
            if (nl > DUET_ARRAY_LEN(local))
                nl = DUET_ARRAY_LEN(local);
            if (nl)
                memcpy(local, c->tokens + c->consumed, nl * sizeof(int32_t));
            c->consumed += nl;
            more = c->consumed < c->n_tokens;
            if (nl)
                job->pump_t = c->last_token_t;
            fin = c->eng_finished && !more;
            reason = c->eng_reason;
            bool qerr = c->queue_error;
            snprintf(detail, sizeof(detail), "%s", c->eng_detail);
            if (c->consumed == c->n_tokens) { /* reuse the queue from the start */
                c->consumed = 0;
                c->n_tokens = 0;
            }
            pthread_mutex_unlock(&job->mu);
            if (qerr) {
                choice_fail(c, "", "out of memory queueing tokens");
                break;
            }
            for (size_t k = 0; k < nl && !c->done; k++) {
                c->completion_tokens++;
                if (is_stop_id(gw, job, local[k]))
                    continue; /* counted, never shown */
                const char *s;
                size_t sl;
                if (duet_detok_push(c->detok, local[k], &s, &sl) != DUET_OK) {
                    choice_fail(c, "engine produced an invalid token: ", duet_error());
                    break;
                }
                if (sl && duet_buf_append(&c->text, s, sl)) {
                    choice_fail(c, "", "out of memory");
                    break;
                }
                if (choice_match_stop(job, c)) {
                    c->done = true;
                    c->finish_reason = "stop";
                    pthread_mutex_lock(&gw->metrics.mu);
                    gw->metrics.stop_string_hits++;
                    pthread_mutex_unlock(&gw->metrics.mu);
                    pthread_mutex_lock(&job->mu);
                    bool live = c->submitted && !c->eng_finished;
                    pthread_mutex_unlock(&job->mu);
                    if (live)
                        (void)gw->engine->ops->cancel(gw->engine, c->engine_id);
                }
            }
        }
        if (!c->done && fin) {
            const char *s;
            size_t sl;
            if (duet_detok_flush(c->detok, &s, &sl) == DUET_OK && sl)
                (void)duet_buf_append(&c->text, s, sl);
            c->done = true;
            if (choice_match_stop(job, c)) {
                c->finish_reason = "stop";
            } else if (reason == DUET_GW_ENGINE_FINISH_STOP) {
                c->finish_reason = "stop";
            } else if (reason == DUET_GW_ENGINE_FINISH_LENGTH) {
                c->finish_reason = "length";
            } else if (reason == DUET_GW_ENGINE_FINISH_CANCELED) {
                choice_fail(c, "request canceled by the engine: ", detail);
            } else {
                choice_fail(c, "engine error: ", detail);
            }
        }
        if (!c->done)
            all_done = false;
    }
    return all_done;
}

/* ---- JSON output -------------------------------------------------------- */

static json_t *usage_json(const gw_job_t *job)
{
    uint64_t comp = 0;
    for (uint32_t i = 0; i < job->n; i++)
        comp += job->choices[i].completion_tokens;
    return json_pack("{s:I,s:I,s:I}", "prompt_tokens", (json_int_t)job->prompt_tokens,
                     "completion_tokens", (json_int_t)comp, "total_tokens",
                     (json_int_t)(job->prompt_tokens + comp));
}

static json_t *text_json(const char *s, size_t n)
{
    /* Detokenized text is valid UTF-8 (U+FFFD replaces broken bytes). */
    json_t *v = json_stringn_nocheck(s, n);
    return v ? v : json_string("");
}

static json_t *response_head(const gw_job_t *job, const char *object)
{
    return json_pack("{s:s,s:s,s:I,s:s}", "id", job->id, "object", object, "created",
                     (json_int_t)job->created, "model", job->gw->model_name);
}

/* The complete, non-streaming body. NULL on allocation failure. */
static char *job_final_json(gw_job_t *job)
{
    bool chat = job->req.kind == DUET_GW_CHAT;
    json_t *root = response_head(job, chat ? "chat.completion" : "text_completion");
    json_t *choices = json_array();
    if (!root || !choices)
        goto fail;
    for (uint32_t i = 0; i < job->n; i++) {
        gw_choice_t *c = &job->choices[i];
        json_t *text = text_json((const char *)c->text.data, c->text.len);
        json_t *ch;
        if (chat)
            ch = json_pack("{s:I,s:{s:s,s:o},s:n,s:s}", "index", (json_int_t)i, "message", "role",
                           "assistant", "content", text, "logprobs", "finish_reason",
                           c->finish_reason ? c->finish_reason : "stop");
        else
            ch = json_pack("{s:I,s:o,s:n,s:s}", "index", (json_int_t)i, "text", text, "logprobs",
                           "finish_reason", c->finish_reason ? c->finish_reason : "stop");
        if (!ch || json_array_append_new(choices, ch))
            goto fail;
    }
    json_object_set_new(root, "choices", choices);
    choices = NULL;
    json_object_set_new(root, "usage", usage_json(job));
    char *s = json_dumps(root, JSON_COMPACT);
    json_decref(root);
    return s;
fail:
    json_decref(choices);
    json_decref(root);
    return NULL;
}

static void sse_put(gw_job_t *job, json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s)
        return; /* out of memory: the chunk is lost, the stream still ends */
    (void)duet_buf_printf(&job->out, "data: %s\n\n", s);
    free(s);
}

static json_t *chunk_head(gw_job_t *job)
{
    bool chat = job->req.kind == DUET_GW_CHAT;
    json_t *o = response_head(job, chat ? "chat.completion.chunk" : "text_completion");
    return o;
}

/* Append `s` as the inside of a JSON string, escaped as jansson does
 * (JSON_COMPACT: '"', '\\' and control characters; UTF-8 as is). */
static duet_status_t json_escape_into(duet_buf_t *b, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch >= 0x20 && ch != '"' && ch != '\\')
            continue;
        if (duet_buf_append(b, s + run, i - run))
            return DUET_ERR_NOMEM;
        run = i + 1;
        char e[6] = {'\\', 0};
        size_t el = 2;
        switch (ch) {
        case '"': e[1] = '"'; break;
        case '\\': e[1] = '\\'; break;
        case '\b': e[1] = 'b'; break;
        case '\f': e[1] = 'f'; break;
        case '\n': e[1] = 'n'; break;
        case '\r': e[1] = 'r'; break;
        case '\t': e[1] = 't'; break;
        default:
            memcpy(e + 1, "u00", 3);
            e[4] = hex[ch >> 4];
            e[5] = hex[ch & 15];
            el = 6;
        }
        if (duet_buf_append(b, e, el))
            return DUET_ERR_NOMEM;
    }
    return duet_buf_append(b, s + run, n - run);
}

/* A text chunk's bytes written straight into job->out: the same JSON as
 * the general path below (same keys, same order) without building a tree
 * per token — the event loop formats every stream's tokens one after the
 * other, so this is most of the gateway's work per token. Returns false
 * (nothing appended) where it cannot, and the caller takes the general
 * path. */
static bool sse_text_chunk_fast(gw_job_t *job, gw_choice_t *c, const char *text, size_t len)
{
    bool chat = job->req.kind == DUET_GW_CHAT;
    if (!job->chunk_prefix) {
        json_t *o = chunk_head(job);
        char *h = o ? json_dumps(o, JSON_COMPACT) : NULL;
        json_decref(o);
        size_t hl = h ? strlen(h) : 0;
        if (hl < 2 || h[hl - 1] != '}') {
            free(h);
            return false;
        }
        h[hl - 1] = '\0'; /* drop the closing brace */
        static const char tail[] = ",\"choices\":[{\"index\":";
        char *p = malloc(6 + hl + sizeof(tail));
        if (!p) {
            free(h);
            return false;
        }
        snprintf(p, 6 + hl + sizeof(tail), "data: %s%s", h, tail);
        free(h);
        job->chunk_prefix = p;
    }
    size_t mark = job->out.len;
    char idx[16];
    snprintf(idx, sizeof(idx), "%u", c->index);
    if (duet_buf_append(&job->out, job->chunk_prefix, strlen(job->chunk_prefix)) ||
        duet_buf_append(&job->out, idx, strlen(idx)) ||
        duet_buf_printf(&job->out, chat ? ",\"delta\":{\"content\":\"" : ",\"text\":\"") ||
        json_escape_into(&job->out, text, len) ||
        duet_buf_printf(&job->out, "\"%s,\"logprobs\":null,\"finish_reason\":null}]%s}\n\n",
                        chat ? "}" : "", job->req.include_usage ? ",\"usage\":null" : "")) {
        job->out.len = mark;
        return false;
    }
    return true;
}

/* One chunk for choice `c`: delta text and, when final, the finish reason.
 * `role` only on a chat stream's first chunk. */
static void sse_choice_chunk(gw_job_t *job, gw_choice_t *c, const char *text, size_t len, bool role,
                             const char *finish)
{
    bool chat = job->req.kind == DUET_GW_CHAT;
    if (!role && !finish && len && sse_text_chunk_fast(job, c, text, len))
        return;
    json_t *o = chunk_head(job);
    json_t *ch;
    if (chat) {
        json_t *delta = json_object();
        if (role)
            json_object_set_new(delta, "role", json_string("assistant"));
        if (role || len)
            json_object_set_new(delta, "content", text_json(text, len));
        ch = json_pack("{s:I,s:o,s:n,s:o}", "index", (json_int_t)c->index, "delta", delta,
                       "logprobs", "finish_reason", finish ? json_string(finish) : json_null());
    } else {
        ch = json_pack("{s:I,s:o,s:n,s:o}", "index", (json_int_t)c->index, "text",
                       text_json(text, len), "logprobs", "finish_reason",
                       finish ? json_string(finish) : json_null());
    }
    if (o && ch) {
        json_object_set_new(o, "choices", json_pack("[o]", ch));
        if (job->req.include_usage)
            json_object_set_new(o, "usage", json_null());
    } else {
        json_decref(ch);
    }
    sse_put(job, o);
}

static json_t *error_json(const char *type, const char *param, const char *code,
                          const char *message)
{
    json_t *e = json_pack("{s:s,s:s,s:o,s:o}", "message", message, "type", type, "param",
                          param && *param ? json_string(param) : json_null(), "code",
                          code && *code ? json_string(code) : json_null());
    return e ? json_pack("{s:o}", "error", e) : NULL;
}

static void sse_error_and_done(gw_job_t *job, const char *message)
{
    sse_put(job, error_json("server_error", NULL, NULL, message));
    (void)duet_buf_printf(&job->out, "data: [DONE]\n\n");
    job->stream_ended = true;
}

static void job_record_end(gw_job_t *job, bool ok)
{
    if (job->finished_metrics)
        return;
    job->finished_metrics = true;
    duet_gateway_t *gw = job->gw;
    pthread_mutex_lock(&gw->metrics.mu);
    if (ok)
        duet__gw_hist_observe(&gw->metrics.e2e, duet_now_s() - job->t_arrival);
    for (uint32_t i = 0; i < job->n; i++) {
        const gw_choice_t *c = &job->choices[i];
        duet__gw_finish_label_t l = !ok || !c->done ? DUET__GW_FIN_ABORT
                                    : c->error      ? DUET__GW_FIN_ERROR
                                    : c->finish_reason && !strcmp(c->finish_reason, "length")
                                        ? DUET__GW_FIN_LENGTH
                                        : DUET__GW_FIN_STOP;
        gw->metrics.request_finished[l]++;
    }
    gw->metrics.active_streams--;
    pthread_mutex_unlock(&gw->metrics.mu);
}

static void job_stream_emit_chunks(gw_job_t *job, bool all_done);

/* Turn new text into SSE chunks; on the end, the usage chunk and [DONE]. */
static void job_stream_emit(gw_job_t *job, bool all_done)
{
    size_t out_before = job->out.len;
    job_stream_emit_chunks(job, all_done);
    if (job->out.len > out_before && job->pump_t > 0) {
        job->emit_pending_t = job->pump_t; /* the newest token is in job->out */
        job->pump_t = 0;
    }
}

static void job_stream_emit_chunks(gw_job_t *job, bool all_done)
{
    for (uint32_t i = 0; i < job->n; i++) {
        gw_choice_t *c = &job->choices[i];
        if (c->error) {
            job_cancel_all(job);
            job_record_end(job, true);
            sse_error_and_done(job, c->error_msg);
            return;
        }
        if (c->final_sent)
            continue;
        size_t safe = choice_safe_len(job, c);
        const char *t = (const char *)c->text.data + c->emitted;
        size_t len = safe > c->emitted ? safe - c->emitted : 0;
        if (c->done) {
            sse_choice_chunk(job, c, t, len, false, c->finish_reason ? c->finish_reason : "stop");
            c->final_sent = true;
        } else if (len) {
            sse_choice_chunk(job, c, t, len, false, NULL);
        }
        c->emitted += len;
    }
    if (all_done && !job->stream_ended) {
        if (job->req.include_usage) {
            json_t *o = chunk_head(job);
            if (o) {
                json_object_set_new(o, "choices", json_array());
                json_object_set_new(o, "usage", usage_json(job));
            }
            sse_put(job, o);
        }
        (void)duet_buf_printf(&job->out, "data: [DONE]\n\n");
        job->stream_ended = true;
        job_record_end(job, true);
    }
}

/* ---- the event loop's scheduling ---------------------------------------- */

/* struct sched_attr of sched_setattr(2) (its first version, 48 bytes) */
struct gw_sched_attr {
    uint32_t size, sched_policy;
    uint64_t sched_flags;
    int32_t sched_nice;
    uint32_t sched_priority;
    uint64_t sched_runtime, sched_deadline, sched_period;
};

/* Make the calling thread (one of libmicrohttpd's event loops) run as soon
 * as a token wakes it, ahead of the engine's compute threads: the loops
 * write every stream, so their wake-up latency is every token's latency
 * (measured on 2 busy cores: p99 token -> socket 2.5-5 ms at normal
 * priority, under 0.5 ms at SCHED_FIFO; bench/RESULTS.md). In order,
 * what the process is allowed: SCHED_FIFO priority 1 (CAP_SYS_NICE or
 * RLIMIT_RTPRIO; it only runs when a socket or a token is ready, and the
 * kernel's RT throttling bounds it), else nice -10, else a 0.1 ms EEVDF
 * slice request (Linux >= 6.12, unprivileged: a short slice wakes sooner).
 * Once per thread; DUET_GATEWAY_SCHED_NORMAL leaves it alone. */
static void loop_thread_tune(duet_gateway_t *gw)
{
    static _Thread_local bool tuned;
    if (tuned)
        return;
    tuned = true;
    if (gw->loop_sched == DUET_GATEWAY_SCHED_NORMAL)
        return;
    const char *how = "normal priority (no permission to raise it)";
    struct sched_param sp = {.sched_priority = 1};
    if (pthread_setschedparam(pthread_self(), SCHED_FIFO, &sp) == 0) {
        how = "SCHED_FIFO priority 1";
    } else if (setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), -10) == 0) {
        how = "nice -10";
    } else {
        struct gw_sched_attr a = {
            .size = sizeof(a), .sched_policy = SCHED_OTHER, .sched_runtime = 100000};
        if (syscall(SYS_sched_setattr, 0, &a, 0) == 0)
            how = "a 0.1 ms scheduler slice";
    }
    DUET_LOG_I(GW_MOD, "event loop thread: %s", how);
}

/* ---- HTTP plumbing ------------------------------------------------------ */

typedef enum gw_route {
    GW_ROUTE_NONE = 0,
    GW_ROUTE_COMPLETIONS,
    GW_ROUTE_CHAT,
} gw_route_t;

typedef struct gw_conn {
    duet_gateway_t *gw;
    struct MHD_Connection *mc;
    gw_route_t route;
    duet_buf_t body;
    bool too_big;
    size_t discarded;
    gw_job_t *job;
    int sock;
    double deadline;
    atomic_bool peer_gone; /* the watcher saw the client hang up */
    bool listed;           /* in gw->conns */
    struct gw_conn *prev, *next;
} gw_conn_t;

/* Suspend the connection until the engine's next event, unless one is
 * pending already or the request must end anyway (shutdown, client gone).
 * Only from the access handler or the content reader. */
static bool job_suspend(gw_conn_t *cn)
{
    gw_job_t *job = cn->job;
    bool suspended = false;
    pthread_mutex_lock(&job->mu);
    if (!job->news && !atomic_load(&cn->gw->stopping) && !atomic_load(&cn->peer_gone)) {
        job->suspended = true;
        MHD_suspend_connection(cn->mc);
        suspended = true;
    }
    pthread_mutex_unlock(&job->mu);
    return suspended;
}

/* Resume the job's connection if it is suspended (watcher, shutdown). Not
 * under conns_mu: libmicrohttpd's own lock is only ever taken inside
 * job->mu, never inside conns_mu. */
static void job_kick(gw_job_t *job)
{
    pthread_mutex_lock(&job->mu);
    if (job->suspended && job->mc) {
        job->suspended = false;
        MHD_resume_connection(job->mc);
    }
    pthread_mutex_unlock(&job->mu);
}

static void conn_list(gw_conn_t *cn)
{
    duet_gateway_t *gw = cn->gw;
    pthread_mutex_lock(&gw->conns_mu);
    cn->prev = NULL;
    cn->next = gw->conns;
    if (gw->conns)
        gw->conns->prev = cn;
    gw->conns = cn;
    cn->listed = true;
    pthread_mutex_unlock(&gw->conns_mu);
}

static void conn_unlist(gw_conn_t *cn)
{
    duet_gateway_t *gw = cn->gw;
    pthread_mutex_lock(&gw->conns_mu);
    if (cn->listed) {
        if (cn->prev)
            cn->prev->next = cn->next;
        else
            gw->conns = cn->next;
        if (cn->next)
            cn->next->prev = cn->prev;
        cn->listed = false;
    }
    pthread_mutex_unlock(&gw->conns_mu);
}

/* The watcher: every GW_WATCH_MS, one poll() over the sockets of the live
 * completions; a client that hung up or a request past its deadline gets
 * its connection resumed, and the handler or reader ends it. */
static bool now_past(const gw_conn_t *cn, double now)
{
    return now >= cn->deadline;
}

/* The jobs of the listed connections that `pick` selects, each with a
 * reference the caller drops (job_unref); conns_mu held. */
static size_t conns_pick_jobs(duet_gateway_t *gw, gw_job_t **out, size_t cap,
                              bool (*pick)(gw_conn_t *cn, void *arg), void *arg)
{
    size_t k = 0;
    for (gw_conn_t *cn = gw->conns; cn && k < cap; cn = cn->next) {
        if (pick && !pick(cn, arg))
            continue;
        atomic_fetch_add(&cn->job->refs, 1);
        out[k++] = cn->job;
    }
    return k;
}

static void kick_and_unref(gw_job_t **jobs, size_t k)
{
    for (size_t i = 0; i < k; i++) {
        job_kick(jobs[i]);
        job_unref(jobs[i]);
    }
}

typedef struct watch_pick {
    struct pollfd *pfd;
    size_t i, n;
    double now;
} watch_pick_t;

/* the connections are visited in the order they were polled */
static bool watch_pick(gw_conn_t *cn, void *arg)
{
    watch_pick_t *w = arg;
    if (w->i >= w->n)
        return now_past(cn, w->now);
    struct pollfd *p = &w->pfd[w->i++];
    bool gone = p->fd >= 0 && (p->revents & (POLLRDHUP | POLLHUP | POLLERR | POLLNVAL)) != 0;
    if (gone)
        atomic_store(&cn->peer_gone, true);
    return gone || now_past(cn, w->now);
}

static void *watch_main(void *arg)
{
    duet_gateway_t *gw = arg;
    struct pollfd *pfd = NULL;
    gw_job_t **jobs = NULL;
    size_t cap = 0;
    pthread_mutex_lock(&gw->conns_mu);
    while (!gw->watch_quit) {
        struct timespec until;
        clock_gettime(CLOCK_REALTIME, &until);
        until.tv_nsec += GW_WATCH_MS * 1000000L;
        until.tv_sec += until.tv_nsec / 1000000000L;
        until.tv_nsec %= 1000000000L;
        (void)pthread_cond_timedwait(&gw->conns_cv, &gw->conns_mu, &until);
        if (gw->watch_quit)
            break;
        size_t n = 0, live = 0;
        for (gw_conn_t *cn = gw->conns; cn; cn = cn->next)
            live++;
        if (live > cap) {
            size_t nc = live + live / 2 + 16;
            struct pollfd *np = realloc(pfd, nc * sizeof(*np));
            if (np)
                pfd = np;
            gw_job_t **nj = realloc(jobs, nc * sizeof(*nj));
            if (nj)
                jobs = nj;
            if (np && nj)
                cap = nc;
        }
        for (gw_conn_t *cn = gw->conns; cn && n < cap; cn = cn->next)
            pfd[n++] = (struct pollfd){.fd = cn->sock, .events = POLLRDHUP};
        /* the sockets stay open while listed: on_completed unlists first */
        if (n && poll(pfd, (nfds_t)n, 0) < 0)
            n = 0;
        watch_pick_t w = {.pfd = pfd, .n = n, .now = duet_now_s()};
        size_t k = conns_pick_jobs(gw, jobs, cap, watch_pick, &w);
        pthread_mutex_unlock(&gw->conns_mu);
        kick_and_unref(jobs, k);
        pthread_mutex_lock(&gw->conns_mu);
    }
    pthread_mutex_unlock(&gw->conns_mu);
    free(pfd);
    free(jobs);
    return NULL;
}

static void count_status(duet_gateway_t *gw, unsigned status)
{
    pthread_mutex_lock(&gw->metrics.mu);
    if (status / 100 < 6)
        gw->metrics.http_by_class[status / 100]++;
    pthread_mutex_unlock(&gw->metrics.mu);
}

static enum MHD_Result queue_buf(struct MHD_Connection *mc, duet_gateway_t *gw, unsigned status,
                                 const char *ctype, const char *body, size_t len)
{
    struct MHD_Response *r =
        MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, ctype);
    if (status == 405)
        MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, POST");
    enum MHD_Result ret = MHD_queue_response(mc, status, r);
    MHD_destroy_response(r);
    count_status(gw, status);
    return ret;
}

static enum MHD_Result queue_json(struct MHD_Connection *mc, duet_gateway_t *gw, unsigned status,
                                  json_t *obj)
{
    char *s = obj ? json_dumps(obj, JSON_COMPACT) : NULL;
    json_decref(obj);
    if (!s)
        return MHD_NO;
    enum MHD_Result r = queue_buf(mc, gw, status, "application/json", s, strlen(s));
    free(s);
    return r;
}

static enum MHD_Result queue_error(struct MHD_Connection *mc, duet_gateway_t *gw,
                                   const duet_gw_error_t *e)
{
    DUET_LOG_D(GW_MOD, "%d %s: %s", e->http_status, e->param, e->message);
    return queue_json(mc, gw, (unsigned)e->http_status,
                      error_json(e->type, e->param, e->code, e->message));
}

static enum MHD_Result queue_errorf(struct MHD_Connection *mc, duet_gateway_t *gw, int status,
                                    const char *type, const char *param, const char *code,
                                    const char *msg)
{
    duet_gw_error_t e;
    duet_gw_error_set(&e, status, type, param, code, "%s", msg);
    return queue_error(mc, gw, &e);
}

static bool auth_ok(duet_gateway_t *gw, struct MHD_Connection *mc)
{
    if (!gw->api_key)
        return true;
    const char *h = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Authorization");
    if (!h || strncasecmp(h, "Bearer ", 7) != 0)
        return false;
    h += 7;
    size_t a = strlen(h), b = strlen(gw->api_key);
    /* constant time in the key's contents */
    unsigned char diff = (unsigned char)(a != b);
    for (size_t i = 0; i < b; i++)
        diff |= (unsigned char)(gw->api_key[i] ^ (i < a ? h[i] : 0));
    return diff == 0;
}

static void next_id(duet_gateway_t *gw, const char *prefix, char *out, size_t n)
{
    uint64_t x = atomic_fetch_add(&gw->id_counter, 1) + gw->id_nonce;
    /* splitmix64: ids look random but never repeat within a process */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    snprintf(out, n, "%s-%016llx", prefix, (unsigned long long)x);
}

/* Tokenize the prompt / rendered chat and check it against the context. */
static duet_status_t build_prompt(duet_gateway_t *gw, const duet_gw_request_t *req,
                                  int32_t **ids_out, size_t *n_out, duet_gw_error_t *err)
{
    const char *param = req->kind == DUET_GW_CHAT ? "messages" : "prompt";
    int32_t *ids = NULL;
    size_t n = 0;
    if (req->prompt_ids) {
        for (size_t i = 0; i < req->n_prompt_ids; i++)
            if ((uint32_t)req->prompt_ids[i] >= gw->vocab)
                return duet_gw_error_set(err, 400, "invalid_request_error", "prompt", NULL,
                                         "prompt[%zu] = %d is not a token id (vocabulary size %u)",
                                         i, req->prompt_ids[i], gw->vocab);
        ids = duet_calloc(req->n_prompt_ids, sizeof(int32_t));
        if (!ids)
            return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
        memcpy(ids, req->prompt_ids, req->n_prompt_ids * sizeof(int32_t));
        n = req->n_prompt_ids;
    } else {
        duet_buf_t text = {0};
        const char *s;
        size_t len;
        bool add_special;
        if (req->kind == DUET_GW_CHAT) {
            if (duet_gw_chat_render(gw->chat_style, req->messages, req->n_messages, gw->bos_str,
                                    gw->eos_str, &text) ||
                duet_buf_append(&text, "", 1)) {
                duet_buf_cleanup(&text);
                return duet_gw_error_set(err, 500, "server_error", NULL, NULL, "out of memory");
            }
            s = (const char *)text.data;
            len = text.len - 1;
            add_special = false; /* the template writes BOS itself */
        } else {
            s = req->prompt;
            len = req->prompt_len;
            add_special = true; /* as vLLM does for completions */
        }
        duet_status_t st = duet_tokenizer_encode(gw->tok, s, len, add_special, &ids, &n);
        duet_buf_cleanup(&text);
        if (st)
            return duet_gw_error_set(err, 400, "invalid_request_error", param, NULL,
                                     "cannot tokenize '%s': %s", param, duet_error());
    }
    if (n == 0) {
        duet_free(ids);
        return duet_gw_error_set(err, 400, "invalid_request_error", param, NULL,
                                 "'%s' must not be empty", param);
    }
    uint32_t ctx = gw->info.max_context;
    if (n >= ctx) {
        duet_free(ids);
        return duet_gw_error_set(err, 400, "invalid_request_error", param, NULL,
                                 "This model's maximum context length is %u tokens. However, your "
                                 "%s has %zu tokens, leaving no room for a completion. Please "
                                 "reduce the length of the %s.",
                                 ctx, param, n, param);
    }
    if (req->max_tokens > 0 && (uint64_t)n + (uint64_t)req->max_tokens > ctx) {
        duet_free(ids);
        return duet_gw_error_set(err, 400, "invalid_request_error", "max_tokens", NULL,
                                 "This model's maximum context length is %u tokens. However, you "
                                 "requested %llu tokens (%zu in the %s, %lld for the completion). "
                                 "Please reduce the length of the %s or max_tokens.",
                                 ctx, (unsigned long long)(n + (uint64_t)req->max_tokens), n, param,
                                 (long long)req->max_tokens, param);
    }
    *ids_out = ids;
    *n_out = n;
    return DUET_OK;
}

static uint64_t random_seed(const char *id)
{
    return duet_hash_bytes(id, strlen(id)) ^ duet_now_ns();
}

/* Parse, tokenize, submit. On failure a 4xx/5xx is already queued (or
 * queueing failed: MHD_NO). */
static enum MHD_Result start_job(gw_conn_t *cn)
{
    duet_gateway_t *gw = cn->gw;
    struct MHD_Connection *mc = cn->mc;
    duet_gw_error_t err;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    enum MHD_Result ret;
    gw_job_t *job = duet_calloc(1, sizeof(*job));
    if (!job)
        return queue_errorf(mc, gw, 500, "server_error", NULL, NULL, "out of memory");
    job->gw = gw;
    job->mc = mc;
    atomic_init(&job->refs, 1);
    pthread_mutex_init(&job->mu, NULL);
    live_add(gw, +1);
    job->t_arrival = duet_now_s();
    job->created = (long long)(duet_wall_ms() / 1000);

    duet_gw_kind_t kind = cn->route == GW_ROUTE_CHAT ? DUET_GW_CHAT : DUET_GW_COMPLETION;
    if (duet_gw_request_parse(kind, (const char *)cn->body.data, cn->body.len, &job->req, &err)) {
        ret = queue_error(mc, gw, &err);
        goto out_unref;
    }
    duet_gw_request_t *req = &job->req;
    if (req->model && strcmp(req->model, gw->model_name) != 0) {
        duet_gw_error_set(&err, 404, "invalid_request_error", "model", "model_not_found",
                          "The model '%.200s' does not exist. This server serves '%.200s'.",
                          req->model, gw->model_name);
        ret = queue_error(mc, gw, &err);
        goto out_unref;
    }
    if (build_prompt(gw, req, &ids, &n_ids, &err)) {
        ret = queue_error(mc, gw, &err);
        goto out_unref;
    }
    uint32_t max_tokens =
        req->max_tokens > 0 ? (uint32_t)req->max_tokens : (uint32_t)(gw->info.max_context - n_ids);
    for (size_t i = 0; i < req->n_stop; i++) {
        size_t l = strlen(req->stop[i]);
        if (l > job->max_stop_len)
            job->max_stop_len = l;
    }
    next_id(gw, kind == DUET_GW_CHAT ? "chatcmpl" : "cmpl", job->id, sizeof(job->id));
    job->prompt_tokens = n_ids;
    job->n = req->n;
    job->choices = duet_calloc(job->n, sizeof(gw_choice_t));
    if (!job->choices) {
        ret = queue_errorf(mc, gw, 500, "server_error", NULL, NULL, "out of resources");
        goto out_unref;
    }
    for (uint32_t i = 0; i < job->n; i++) {
        job->choices[i].job = job;
        job->choices[i].index = i;
        if (duet_detok_create(gw->tok, req->skip_special, &job->choices[i].detok)) {
            ret = queue_errorf(mc, gw, 500, "server_error", NULL, NULL, "out of memory");
            goto out_unref;
        }
    }

    duet_gw_engine_request_t er = {
        .prompt = ids,
        .n_prompt = n_ids,
        .temperature = (float)req->temperature,
        .top_p = (float)req->top_p,
        .top_k = req->top_k,
        .max_tokens = max_tokens,
    };
    if (!req->ignore_eos) {
        for (uint32_t i = 0; i < gw->n_stop_ids && er.n_stop_ids < DUET_GW_ENGINE_MAX_STOP_IDS; i++)
            er.stop_ids[er.n_stop_ids++] = gw->stop_ids[i];
        if (kind == DUET_GW_CHAT && gw->im_end_id >= 0 &&
            er.n_stop_ids < DUET_GW_ENGINE_MAX_STOP_IDS)
            er.stop_ids[er.n_stop_ids++] = gw->im_end_id;
    }
    uint64_t base_seed = req->has_seed ? req->seed : random_seed(job->id);
    pthread_mutex_lock(&gw->metrics.mu);
    gw->metrics.prompt_tokens += n_ids;
    gw->metrics.active_streams++;
    pthread_mutex_unlock(&gw->metrics.mu);
    for (uint32_t i = 0; i < job->n; i++) {
        gw_choice_t *c = &job->choices[i];
        er.seed = base_seed + i;
        atomic_fetch_add(&job->refs, 1); /* for the engine, before it can call back */
        uint64_t eid = 0;
        duet_status_t st = gw->engine->ops->submit(gw->engine, &er, &gw_callbacks, c, &eid);
        if (st) {
            atomic_fetch_sub(&job->refs, 1);
            int status =
                st == DUET_ERR_INVALID                                                       ? 400
                : (st == DUET_ERR_CAPACITY || st == DUET_ERR_AGAIN || st == DUET_ERR_CLOSED) ? 503
                                                                                             : 500;
            char msg[400];
            snprintf(msg, sizeof(msg), "the engine refused the request: %s (%s)",
                     duet_status_str(st), duet_error());
            job_cancel_all(job);
            job_record_end(job, false);
            ret = queue_errorf(mc, gw, status,
                               status == 400 ? "invalid_request_error" : "server_error", NULL, NULL,
                               msg);
            goto out_unref;
        }
        pthread_mutex_lock(&job->mu);
        c->engine_id = eid;
        c->submitted = true;
        pthread_mutex_unlock(&job->mu);
    }
    duet_free(ids);
    cn->job = job;
    return MHD_YES;

out_unref:
    duet_free(ids);
    job_unref(job);
    return ret;
}

/* End the job for shutdown or its deadline, if either applies (streams:
 * an SSE error event and [DONE]). Returns the message, or NULL. */
static const char *job_end_reason(gw_conn_t *cn, char *buf, size_t n)
{
    if (atomic_load(&cn->gw->stopping))
        return "the server is shutting down";
    if (duet_now_s() >= cn->deadline) {
        snprintf(buf, n, "request timed out after %u s", cn->gw->request_timeout_s);
        return buf;
    }
    return NULL;
}

/* libmicrohttpd calls this when the bytes returned last time are written
 * (or at the start); it returns the next SSE bytes, or suspends the
 * connection and returns 0 when there are none yet. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max)
{
    gw_conn_t *cn = cls;
    gw_job_t *job = cn->job;
    (void)pos;
    if (job->emit_inflight_t > 0) { /* what we returned last time is written */
        double dt = duet_now_s() - job->emit_inflight_t;
        job->emit_inflight_t = 0;
        duet__gw_hist_observe(&cn->gw->metrics.emit, dt);
    }
    for (;;) {
        if (job->out_off < job->out.len) {
            size_t n = job->out.len - job->out_off;
            if (n > max)
                n = max;
            memcpy(buf, job->out.data + job->out_off, n);
            job->out_off += n;
            if (job->out_off == job->out.len) {
                job->out.len = 0;
                job->out_off = 0;
                job->emit_inflight_t = job->emit_pending_t;
                job->emit_pending_t = 0;
            }
            return (ssize_t)n;
        }
        if (job->stream_ended)
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (atomic_load(&cn->peer_gone))
            return MHD_CONTENT_READER_END_WITH_ERROR; /* on_completed cancels */
        char msg[96];
        const char *why = job_end_reason(cn, msg, sizeof(msg));
        if (why) {
            job_cancel_all(job);
            job_record_end(job, false);
            sse_error_and_done(job, why);
            continue;
        }
        bool all_done = job_pump(job);
        job_stream_emit(job, all_done);
        if (job->out.len > job->out_off)
            continue;
        if (job_suspend(cn))
            return 0; /* resumed by the engine's next callback or the watcher */
    }
}

static enum MHD_Result run_stream(gw_conn_t *cn)
{
    gw_job_t *job = cn->job;
    bool chat = job->req.kind == DUET_GW_CHAT;
    if (chat) /* the first chunk of each choice carries the role */
        for (uint32_t i = 0; i < job->n; i++)
            sse_choice_chunk(job, &job->choices[i], "", 0, true, NULL);
    struct MHD_Response *r = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, GW_STREAM_BLOCK,
                                                               stream_reader, cn, NULL);
    if (!r)
        return MHD_NO;
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(r, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    MHD_add_response_header(r, "X-Request-Id", job->id);
    enum MHD_Result ret = MHD_queue_response(cn->mc, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    count_status(cn->gw, 200);
    return ret;
}

/* A non-streaming completion: called when it starts and again each time
 * its connection is resumed; suspends until the job is done. */
static enum MHD_Result run_blocking(gw_conn_t *cn)
{
    gw_job_t *job = cn->job;
    duet_gateway_t *gw = cn->gw;
    for (;;) {
        if (job_pump(job))
            break;
        if (atomic_load(&cn->peer_gone))
            return MHD_NO; /* on_completed cancels */
        char msg[96];
        const char *why = job_end_reason(cn, msg, sizeof(msg));
        if (why) {
            job_cancel_all(job);
            job_record_end(job, false);
            return queue_errorf(cn->mc, gw, atomic_load(&gw->stopping) ? 503 : 504,
                                "server_error", NULL, NULL, why);
        }
        if (job_suspend(cn))
            return MHD_YES; /* called again once resumed */
    }
    for (uint32_t i = 0; i < job->n; i++) {
        if (job->choices[i].error) {
            job_cancel_all(job);
            job_record_end(job, true);
            return queue_errorf(cn->mc, gw, 500, "server_error", NULL, NULL,
                                job->choices[i].error_msg);
        }
    }
    job_record_end(job, true);
    char *body = job_final_json(job);
    if (!body)
        return queue_errorf(cn->mc, gw, 500, "server_error", NULL, NULL, "out of memory");
    enum MHD_Result ret = queue_buf(cn->mc, gw, 200, "application/json", body, strlen(body));
    free(body);
    return ret;
}

/* ---- GET endpoints ------------------------------------------------------ */

static enum MHD_Result serve_models(duet_gateway_t *gw, struct MHD_Connection *mc, const char *one)
{
    json_t *m =
        json_pack("{s:s,s:s,s:I,s:s,s:s,s:I}", "id", gw->model_name, "object", "model", "created",
                  (json_int_t)(duet_wall_ms() / 1000), "owned_by", "duet", "root", gw->model_name,
                  "max_model_len", (json_int_t)gw->info.max_context);
    if (one) {
        if (strcmp(one, gw->model_name) != 0) {
            json_decref(m);
            char msg[300];
            snprintf(msg, sizeof(msg), "The model '%.200s' does not exist.", one);
            return queue_errorf(mc, gw, 404, "invalid_request_error", "model", "model_not_found",
                                msg);
        }
        return queue_json(mc, gw, 200, m);
    }
    return queue_json(mc, gw, 200, json_pack("{s:s,s:[o]}", "object", "list", "data", m));
}

static enum MHD_Result serve_health(duet_gateway_t *gw, struct MHD_Connection *mc)
{
    duet_gw_engine_stats_t s;
    memset(&s, 0, sizeof(s));
    duet_status_t st = gw->engine->ops->stats(gw->engine, &s);
    if (st == DUET_OK && s.ready && !atomic_load(&gw->stopping))
        return queue_json(mc, gw, 200, json_pack("{s:s}", "status", "ok"));
    return queue_errorf(mc, gw, 503, "server_error", NULL, NULL,
                        st ? "the engine does not answer" : "the engine is not ready to serve");
}

static enum MHD_Result serve_metrics(duet_gateway_t *gw, struct MHD_Connection *mc)
{
    duet_gw_engine_stats_t s;
    memset(&s, 0, sizeof(s));
    if (gw->engine->ops->stats(gw->engine, &s))
        memset(&s, 0, sizeof(s));
    duet_buf_t out = {0};
    enum MHD_Result ret;
    if (duet__gw_metrics_render(&gw->metrics, gw->model_name, &s, &out))
        ret = queue_errorf(mc, gw, 500, "server_error", NULL, NULL, "out of memory");
    else
        ret = queue_buf(mc, gw, 200, "text/plain; version=0.0.4; charset=utf-8",
                        (const char *)out.data, out.len);
    duet_buf_cleanup(&out);
    return ret;
}

/* ---- the access handler ------------------------------------------------- */

static enum MHD_Result header_bytes(void *cls, enum MHD_ValueKind kind, const char *key,
                                    const char *value)
{
    (void)kind;
    *(size_t *)cls += (key ? strlen(key) : 0) + (value ? strlen(value) : 0) + 4;
    return MHD_YES;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *mc, const char *url,
                                  const char *method, const char *version, const char *upload_data,
                                  size_t *upload_data_size, void **con_cls)
{
    duet_gateway_t *gw = cls;
    gw_conn_t *cn = *con_cls;
    (void)version;
    loop_thread_tune(gw);

    if (!cn) { /* first call: headers only */
        if (strlen(url) > GW_MAX_URL) {
            char msg[160];
            snprintf(msg, sizeof(msg), "The request URL is longer than the limit of %u bytes",
                     GW_MAX_URL);
            return queue_errorf(mc, gw, 414, "invalid_request_error", NULL, NULL, msg);
        }
        size_t hb = 0;
        MHD_get_connection_values(mc, MHD_HEADER_KIND, header_bytes, &hb);
        if (hb > GW_MAX_HEADERS) {
            char msg[160];
            snprintf(msg, sizeof(msg), "The request headers (%zu bytes) are larger than the limit "
                     "of %u bytes", hb, GW_MAX_HEADERS);
            return queue_errorf(mc, gw, 431, "invalid_request_error", NULL, NULL, msg);
        }
        const char *te =
            MHD_lookup_connection_value(mc, MHD_HEADER_KIND, MHD_HTTP_HEADER_TRANSFER_ENCODING);
        if (te && strcasecmp(te, "chunked") != 0) {
            char msg[200];
            snprintf(msg, sizeof(msg), "Transfer-Encoding '%.64s' is not supported; send the body "
                     "with Content-Length or Transfer-Encoding: chunked", te);
            return queue_errorf(mc, gw, 501, "invalid_request_error", NULL, NULL, msg);
        }
        bool post = !strcmp(method, "POST");
        bool get = !strcmp(method, "GET");
        gw_route_t route = GW_ROUTE_NONE;
        if (!strcmp(url, "/v1/completions"))
            route = GW_ROUTE_COMPLETIONS;
        else if (!strcmp(url, "/v1/chat/completions"))
            route = GW_ROUTE_CHAT;
        bool v1 = !strncmp(url, "/v1/", 4);
        if (v1 && !auth_ok(gw, mc))
            return queue_errorf(mc, gw, 401, "invalid_request_error", NULL, "invalid_api_key",
                                "Incorrect or missing API key. Send 'Authorization: Bearer "
                                "<key>'.");
        if (route == GW_ROUTE_NONE) {
            char msg[300];
            if (!strcmp(url, "/health") || !strcmp(url, "/metrics") || !strcmp(url, "/v1/models") ||
                !strncmp(url, "/v1/models/", 11)) {
                if (!get) {
                    snprintf(msg, sizeof(msg), "Method %.16s is not allowed on %.200s", method,
                             url);
                    return queue_errorf(mc, gw, 405, "invalid_request_error", NULL, NULL, msg);
                }
                if (!strcmp(url, "/health"))
                    return serve_health(gw, mc);
                if (!strcmp(url, "/metrics"))
                    return serve_metrics(gw, mc);
                return serve_models(gw, mc, url[10] == '/' ? url + 11 : NULL);
            }
            snprintf(msg, sizeof(msg), "Unknown request URL: %.16s %.200s", method, url);
            return queue_errorf(mc, gw, 404, "invalid_request_error", NULL, NULL, msg);
        }
        if (!post) {
            char msg[300];
            snprintf(msg, sizeof(msg), "Method %.16s is not allowed on %.200s; use POST", method,
                     url);
            return queue_errorf(mc, gw, 405, "invalid_request_error", NULL, NULL, msg);
        }
        const char *cl = MHD_lookup_connection_value(mc, MHD_HEADER_KIND, "Content-Length");
        if (cl && strtoull(cl, NULL, 10) > gw->max_body) {
            char msg[160];
            snprintf(msg, sizeof(msg), "The request body is larger than the limit of %zu bytes",
                     gw->max_body);
            return queue_errorf(mc, gw, 413, "invalid_request_error", NULL, NULL, msg);
        }
        cn = duet_calloc(1, sizeof(*cn));
        if (!cn)
            return MHD_NO;
        cn->gw = gw;
        cn->mc = mc;
        cn->route = route;
        cn->sock = -1;
        const union MHD_ConnectionInfo *ci =
            MHD_get_connection_info(mc, MHD_CONNECTION_INFO_CONNECTION_FD);
        if (ci) {
            cn->sock = ci->connect_fd;
            /* tokens are small writes that must leave at once: no Nagle */
            int one = 1;
            (void)setsockopt(cn->sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        }
        *con_cls = cn;
        return MHD_YES;
    }

    if (*upload_data_size) { /* body bytes */
        size_t n = *upload_data_size;
        *upload_data_size = 0;
        if (cn->too_big || cn->body.len + n > gw->max_body) {
            /* chunked body over the limit: drop it, answer 413 at the end;
             * a client that keeps pushing far beyond is cut off */
            cn->too_big = true;
            cn->discarded += n;
            duet_buf_cleanup(&cn->body);
            return cn->discarded > 16 * gw->max_body ? MHD_NO : MHD_YES;
        }
        return duet_buf_append(&cn->body, upload_data, n) ? MHD_NO : MHD_YES;
    }

    /* whole body received */
    if (cn->too_big) {
        char msg[160];
        snprintf(msg, sizeof(msg), "The request body is larger than the limit of %zu bytes",
                 gw->max_body);
        return queue_errorf(mc, gw, 413, "invalid_request_error", NULL, NULL, msg);
    }
    if (cn->job) /* a stream's response is queued; a blocking one was resumed */
        return cn->job->req.stream ? MHD_YES : run_blocking(cn);
    if (atomic_load(&gw->stopping))
        return queue_errorf(mc, gw, 503, "server_error", NULL, NULL, "the server is shutting down");
    enum MHD_Result r = start_job(cn);
    if (!cn->job)
        return r;
    cn->deadline = cn->job->t_arrival + (double)gw->request_timeout_s;
    conn_list(cn);
    return cn->job->req.stream ? run_stream(cn) : run_blocking(cn);
}

static void on_completed(void *cls, struct MHD_Connection *mc, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    duet_gateway_t *gw = cls;
    gw_conn_t *cn = *con_cls;
    (void)mc;
    if (!cn)
        return;
    *con_cls = NULL;
    conn_unlist(cn); /* before the socket closes: the watcher polls it */
    if (cn->job) {
        gw_job_t *job = cn->job;
        pthread_mutex_lock(&job->mu); /* the engine must not resume it any more */
        job->mc = NULL;
        job->suspended = false;
        pthread_mutex_unlock(&job->mu);
        bool unfinished = false;
        for (uint32_t i = 0; i < job->n; i++)
            if (!job->choices[i].done)
                unfinished = true;
        if (unfinished || toe != MHD_REQUEST_TERMINATED_COMPLETED_OK) {
            /* count before canceling: whoever sees the engine idle also
             * sees the count */
            if (!job->finished_metrics) {
                pthread_mutex_lock(&gw->metrics.mu);
                gw->metrics.cancels_on_disconnect++;
                pthread_mutex_unlock(&gw->metrics.mu);
            }
            job_record_end(job, false);
            job_cancel_all(job);
        }
        job_unref(job);
    }
    duet_buf_cleanup(&cn->body);
    duet_free(cn);
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char msg[512];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    size_t l = strlen(msg);
    while (l && (msg[l - 1] == '\n' || msg[l - 1] == '\r'))
        msg[--l] = '\0';
    DUET_LOG_D(GW_MOD, "libmicrohttpd: %s", msg);
}

/* ---- create / destroy --------------------------------------------------- */

static char *token_str_dup(const duet_tokenizer_t *tok, int32_t id)
{
    size_t len = 0;
    const char *s = id >= 0 ? duet_tokenizer_token_str(tok, id, &len) : NULL;
    return s ? duet_strndup(s, len) : NULL;
}

static void watch_stop(duet_gateway_t *gw)
{
    if (!gw->watch_started)
        return;
    pthread_mutex_lock(&gw->conns_mu);
    gw->watch_quit = true;
    pthread_cond_broadcast(&gw->conns_cv);
    pthread_mutex_unlock(&gw->conns_mu);
    pthread_join(gw->watcher, NULL);
    gw->watch_started = false;
}

duet_status_t duet_gateway_create(const duet_gateway_opts_t *opts, duet_gw_engine_t *engine,
                                  const duet_tokenizer_t *tok, duet_gateway_t **gw_out)
{
    duet_status_t st;
    if (!opts || !engine || !engine->ops || !tok || !gw_out)
        return duet_errorf(DUET_ERR_INVALID, "gateway: opts, engine and tokenizer are required");
    duet_gateway_t *gw = duet_calloc(1, sizeof(*gw));
    if (!gw)
        return duet_errorf(DUET_ERR_NOMEM, "gateway: out of memory");
    gw->engine = engine;
    gw->tok = tok;
    duet__gw_metrics_init(&gw->metrics);
    pthread_mutex_init(&gw->live_mu, NULL);
    pthread_cond_init(&gw->live_cv, NULL);
    pthread_mutex_init(&gw->conns_mu, NULL);
    pthread_cond_init(&gw->conns_cv, NULL);

    st = engine->ops->info(engine, &gw->info);
    if (st) {
        duet_error_wrap(st, "gateway: engine info");
        goto err_free;
    }
    const char *name = opts->model_name && *opts->model_name ? opts->model_name
                       : gw->info.model_name                 ? gw->info.model_name
                                                             : "duet";
    gw->model_name = duet_strdup(name);
    gw->api_key = opts->api_key && *opts->api_key ? duet_strdup(opts->api_key) : NULL;
    if (!gw->model_name || (opts->api_key && *opts->api_key && !gw->api_key)) {
        st = duet_errorf(DUET_ERR_NOMEM, "gateway: out of memory");
        goto err_free;
    }
    if (gw->info.max_context < 2) {
        st = duet_errorf(DUET_ERR_INVALID, "gateway: engine max_context %u is too small",
                         gw->info.max_context);
        goto err_free;
    }
    gw->vocab =
        gw->info.vocab_size ? gw->info.vocab_size : (uint32_t)duet_tokenizer_vocab_size(tok);
    gw->max_body = opts->max_body_bytes ? opts->max_body_bytes : (1u << 20);
    gw->request_timeout_s = opts->request_timeout_s ? opts->request_timeout_s : 3600;
    gw->loop_sched = opts->loop_sched;
    const char *sched_env = getenv("DUET_GATEWAY_SCHED");
    if (sched_env && !strcmp(sched_env, "normal"))
        gw->loop_sched = DUET_GATEWAY_SCHED_NORMAL;
    else if (sched_env && !strcmp(sched_env, "auto"))
        gw->loop_sched = DUET_GATEWAY_SCHED_AUTO;
    gw->chat_style = opts->chat_style != DUET_GW_CHAT_AUTO
                         ? opts->chat_style
                         : duet_gw_chat_detect(tok, opts->model_dir);
    int32_t bos = duet_tokenizer_bos(tok), eos = duet_tokenizer_eos(tok);
    gw->bos_str = token_str_dup(tok, bos);
    gw->eos_str = token_str_dup(tok, eos);
    for (uint32_t i = 0; i < gw->info.n_eos_ids && i < DUET_GW_ENGINE_MAX_STOP_IDS; i++)
        gw->stop_ids[gw->n_stop_ids++] = gw->info.eos_ids[i];
    if (gw->n_stop_ids == 0 && eos >= 0)
        gw->stop_ids[gw->n_stop_ids++] = eos;
    gw->im_end_id = duet_tokenizer_token_id(tok, "<|im_end|>");
    gw->id_nonce = duet_now_ns() ^ ((uint64_t)getpid() << 32);

    if (pthread_create(&gw->watcher, NULL, watch_main, gw) != 0) {
        st = duet_errorf(DUET_ERR_IO, "gateway: cannot start the watcher thread");
        goto err_free;
    }
    gw->watch_started = true;

    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(opts->port)};
    const char *host = opts->host && *opts->host ? opts->host : "127.0.0.1";
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        st = duet_errorf(DUET_ERR_INVALID, "gateway: host '%s' is not an IPv4 address", host);
        goto err_free;
    }
    /* event-loop threads on epoll write every connection (see the top) */
    unsigned loop_threads = opts->loop_threads;
    const char *loops_env = getenv("DUET_GATEWAY_LOOPS");
    if (loops_env && atoi(loops_env) > 0 && atoi(loops_env) <= 64)
        loop_threads = (unsigned)atoi(loops_env);
    if (loop_threads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
        loop_threads = ncpu >= 2 ? 2 : 1;
    }
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_ALLOW_SUSPEND_RESUME |
                     MHD_USE_ERROR_LOG;
    gw->mhd = MHD_start_daemon(
        flags, 0, NULL, NULL, on_request, gw, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
        MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)(opts->conn_timeout_s ? opts->conn_timeout_s : 60),
        MHD_OPTION_CONNECTION_LIMIT,
        (unsigned)(opts->max_connections ? opts->max_connections : 1000),
        MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)GW_MHD_CONN_MEMORY,
        MHD_OPTION_NOTIFY_COMPLETED, on_completed, gw, MHD_OPTION_EXTERNAL_LOGGER, mhd_log, gw,
        MHD_OPTION_LISTENING_ADDRESS_REUSE, (unsigned)1, MHD_OPTION_THREAD_POOL_SIZE, loop_threads, MHD_OPTION_END);
    if (!gw->mhd) {
        st = duet_errorf(DUET_ERR_IO, "gateway: cannot listen on %s:%u (port in use?)", host,
                         (unsigned)opts->port);
        goto err_free;
    }
    const union MHD_DaemonInfo *di = MHD_get_daemon_info(gw->mhd, MHD_DAEMON_INFO_LISTEN_FD);
    struct sockaddr_in bound;
    socklen_t bl = sizeof(bound);
    if (di && getsockname(di->listen_fd, (struct sockaddr *)&bound, &bl) == 0)
        gw->port = ntohs(bound.sin_port);
    else
        gw->port = opts->port;
    DUET_LOG_I(GW_MOD, "serving '%s' on http://%s:%u (chat template %s)", gw->model_name, host,
               (unsigned)gw->port, duet_gw_chat_style_name(gw->chat_style));
    *gw_out = gw;
    return DUET_OK;

err_free:
    watch_stop(gw);
    pthread_cond_destroy(&gw->conns_cv);
    pthread_mutex_destroy(&gw->conns_mu);
    duet_free(gw->bos_str);
    duet_free(gw->eos_str);
    duet_free(gw->api_key);
    duet_free(gw->model_name);
    pthread_cond_destroy(&gw->live_cv);
    pthread_mutex_destroy(&gw->live_mu);
    duet__gw_metrics_cleanup(&gw->metrics);
    duet_free(gw);
    return st;
}

uint16_t duet_gateway_port(const duet_gateway_t *gw)
{
    return gw ? gw->port : 0;
}

void duet_gateway_destroy(duet_gateway_t **gw_p)
{
    if (!gw_p || !*gw_p)
        return;
    duet_gateway_t *gw = *gw_p;
    *gw_p = NULL;
    atomic_store(&gw->stopping, true);
    /* every suspended request wakes and ends (none suspends again: they
     * check `stopping` under their job's lock); libmicrohttpd must not see a
     * suspended connection when it stops */
    pthread_mutex_lock(&gw->conns_mu);
    size_t live = 0;
    for (gw_conn_t *cn = gw->conns; cn; cn = cn->next)
        live++;
    gw_job_t **jobs = duet_calloc(live ? live : 1, sizeof(*jobs));
    if (jobs) {
        size_t k = conns_pick_jobs(gw, jobs, live, NULL, NULL);
        pthread_mutex_unlock(&gw->conns_mu);
        kick_and_unref(jobs, k);
        duet_free(jobs);
    } else { /* out of memory: kick under the lock (the loop still runs) */
        for (gw_conn_t *cn = gw->conns; cn; cn = cn->next)
            job_kick(cn->job);
        pthread_mutex_unlock(&gw->conns_mu);
    }
    MHD_stop_daemon(gw->mhd); /* joins its thread, closes every connection */
    watch_stop(gw);

    /* Jobs still referenced by the engine: their cancel was sent; wait (a
     * bounded time) for the engine's on_finish so no callback hits freed
     * memory. An engine that never answers leaks the gateway, not crashes. */
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += 10;
    pthread_mutex_lock(&gw->live_mu);
    int rc = 0;
    while (gw->live_jobs > 0 && rc == 0)
        rc = pthread_cond_timedwait(&gw->live_cv, &gw->live_mu, &until);
    bool leak = gw->live_jobs > 0;
    pthread_mutex_unlock(&gw->live_mu);
    if (leak) {
        DUET_LOG_E(GW_MOD,
                   "%zu requests were never finished by the engine; not freeing the "
                   "gateway",
                   gw->live_jobs);
        return;
    }
    pthread_cond_destroy(&gw->conns_cv);
    pthread_mutex_destroy(&gw->conns_mu);
    duet_free(gw->bos_str);
    duet_free(gw->eos_str);
    duet_free(gw->api_key);
    duet_free(gw->model_name);
    pthread_cond_destroy(&gw->live_cv);
    pthread_mutex_destroy(&gw->live_mu);
    duet__gw_metrics_cleanup(&gw->metrics);
    duet_free(gw);
}
