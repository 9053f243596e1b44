/* gateway — the OpenAI-compatible HTTP front of duet.
 *
 * Serves, on one TCP address (127.0.0.1 unless told otherwise):
 *   POST /v1/completions, POST /v1/chat/completions  (JSON or SSE stream)
 *   GET  /v1/models, /v1/models/{id}, /health, /metrics
 * over HTTP/1.1 (libmicrohttpd: a few event-loop threads write every
 * connection; streams wait suspended, and a token resumes its connection —
 * see server.c). Each accepted
 * completion is tokenized here, submitted to a duet_gw_engine_t (engine.h) as
 * n independent requests, and the engine's tokens are detokenized, matched
 * against stop strings and written out as they arrive.
 *
 * Guarantees: every request ends — with a response, an error JSON, or an
 * SSE error event followed by "data: [DONE]". A client that goes away
 * (connection closed or reset) cancels its engine requests within one
 * engine token or one poll interval. Request bodies are bounded
 * (max_body_bytes, 413 beyond), idle connections time out, and a request
 * runs at most request_timeout_s.
 *
 * Errors: every error the handler produces is OpenAI's error JSON
 * ({"error": {"message", "type", "param", "code"}}, param naming the bad
 * field): bad JSON or fields (400), unknown model (404), missing or wrong
 * API key (401), body over the limit (413, checked by the handler for a
 * declared length and for chunked bodies), URL over 16 KiB (414), headers
 * over 64 KiB (431), a transfer coding other than chunked (501), engine
 * refusals (400/503), timeouts (504, or an SSE error event then [DONE]).
 * What libmicrohttpd rejects before any handler runs is answered by
 * libmicrohttpd with its own short HTML body and the connection closed: a
 * request line it cannot parse, broken chunk framing, a Content-Length that
 * is not a number, an HTTP version other than 1.0/1.1, a request head over
 * 256 KiB; and a connection beyond max_connections is closed unanswered.
 * None of these can hang: the connection is closed at once.
 *
 * /metrics adds duet_gateway_emit_latency_seconds: on streams, from a
 * token reaching the gateway (the engine's on_token) to its SSE bytes being
 * written to the socket (observed when libmicrohttpd asks for the next bytes,
 * which it does once the previous ones are sent) — the gateway's own
 * overhead.
 *
 * Threads: create() starts the server; callbacks of the engine may run on
 * any thread. destroy() stops accepting, cancels what is in flight and waits
 * (bounded) for the engine to finish those requests. */
#ifndef DUET_GATEWAY_H
#define DUET_GATEWAY_H

#include "base/base.h"
#include "gateway/chat.h"
#include "gateway/engine.h"
#include "model/tokenizer.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Scheduling of the gateway's event-loop threads (see gateway/server.c). */
typedef enum duet_gateway_sched {
    /* raise it where the process may: SCHED_FIFO 1, else nice -10, else a
     * short EEVDF slice; the environment variable DUET_GATEWAY_SCHED=normal
     * (or =auto) overrides this field */
    DUET_GATEWAY_SCHED_AUTO = 0,
    DUET_GATEWAY_SCHED_NORMAL = 1, /* leave it as created */
} duet_gateway_sched_t;

typedef struct duet_gateway_opts {
    const char *host;                /* IPv4 address to bind; NULL: "127.0.0.1" */
    uint16_t port;                   /* 0: an ephemeral port (see duet_gateway_port) */
    const char *api_key;             /* NULL or "": no authentication */
    const char *model_name;          /* NULL: the engine's info().model_name */
    const char *model_dir;           /* for chat-template detection; may be NULL */
    duet_gw_chat_style_t chat_style; /* AUTO: detect */
    size_t max_body_bytes;           /* 0: 1 MiB */
    unsigned conn_timeout_s;         /* idle connection timeout; 0: 60 */
    unsigned request_timeout_s;      /* longest request; 0: 3600 */
    unsigned max_connections;        /* 0: 1000 */
    duet_gateway_sched_t loop_sched; /* AUTO: raise the event loops' priority */
    unsigned loop_threads;           /* event-loop threads; 0: 2 (1 on one CPU);
                                      * DUET_GATEWAY_LOOPS=N overrides */
} duet_gateway_opts_t;

typedef struct duet_gateway duet_gateway_t;

/* Start serving. `engine` and `tok` are borrowed and must outlive the
 * gateway. On failure nothing is left running. */
DUET_API duet_status_t duet_gateway_create(const duet_gateway_opts_t *opts,
                                           duet_gw_engine_t *engine, const duet_tokenizer_t *tok,
                                           duet_gateway_t **gw_out);
/* The TCP port actually bound. */
DUET_API uint16_t duet_gateway_port(const duet_gateway_t *gw);
DUET_API void duet_gateway_destroy(duet_gateway_t **gw_p);

#ifdef __cplusplus
}
#endif
#endif /* DUET_GATEWAY_H */
