/* http_client — the smallest HTTP/1.1 client that the gateway tests need:
 * one request per connection ("Connection: close"), the response read to
 * EOF, chunked bodies decoded, and SSE bodies split into their data lines.
 * Every socket has a receive timeout so a broken server fails a test
 * instead of hanging it. */
#ifndef DUET_TEST_HTTP_CLIENT_H
#define DUET_TEST_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct http_resp {
    int status;
    char *head; /* status line + headers, NUL-terminated */
    char *body; /* decoded body, NUL-terminated */
    size_t body_len;
} http_resp_t;

/* Connect to 127.0.0.1:port; -1 on failure. */
int http_connect(uint16_t port);
/* Send a raw request; false on a socket error. */
bool http_send_all(int fd, const void *p, size_t n);
/* Build and send a request; `headers` is extra header lines ("K: v\r\n...")
 * or NULL. body may be NULL. */
bool http_send_request(int fd, const char *method, const char *path, const char *headers,
                       const char *body, size_t body_len);
/* Read the whole response from fd (until EOF) and close it. */
bool http_read_response(int fd, http_resp_t *out);
/* connect + send + read. */
bool http_do(uint16_t port, const char *method, const char *path, const char *headers,
             const char *body, http_resp_t *out);
void http_resp_free(http_resp_t *r);
/* Value of header `name` (case-insensitive) copied into buf, or NULL. */
const char *http_header(const http_resp_t *r, const char *name, char *buf, size_t n);
/* Split an SSE body into the payloads of its "data: " lines. Returns the
 * count, or -1 if the body is not well-formed SSE (each event must be
 * "data: ...\n\n"). *events_out is an array of malloc'd strings. */
int http_sse_events(const char *body, char ***events_out);
void http_sse_free(char **events, int n);

#endif
