/* bench_load — load generator for `duet serve` (the gateway's load
 * benchmark): streaming completions at fixed concurrency levels.
 *
 * For each concurrency level C (default 1, 16, 64, 256) it keeps exactly C
 * streaming POST /v1/completions requests in flight over HTTP/1.1
 * keep-alive connections (one event loop, epoll, non-blocking sockets; no
 * client library) for --warmup seconds (not counted), then --duration
 * seconds (default 300, as the issue asks; --duration 20 for a quick run),
 * then lets the requests in flight finish. It reports per level:
 *
 *   req/s, tokens/s        completed requests and their usage.completion_tokens
 *                          (stream_options.include_usage) per second of the
 *                          measured phase (drain included)
 *   TTFT p50/p99           request sent -> first SSE event carrying text
 *   ITL p50/p99            between consecutive SSE events carrying text
 *   errors                 non-200, an SSE error event, no [DONE], a usage
 *                          count that is not max_tokens, a socket error
 *   hung                   no byte for --hang seconds (default 30), or still
 *                          running --hang seconds after the level ended
 *   emit p99               the gateway's own overhead, from its histogram
 *                          duet_gateway_emit_latency_seconds on /metrics
 *                          (a token reaching the gateway -> its SSE bytes
 *                          written; the bucket bound the 99th percentile
 *                          falls under), counted over the measured phase
 *   RSS                    server VmRSS (/proc/PID/status) after the level's
 *                          warm-up and at its end
 *
 * and checks the goals: zero errors and zero hung requests at every level,
 * end RSS within 5 % of post-warm-up RSS, emit p99 under 1 ms.
 *
 * Server: by default it starts `DUET serve --port 0` itself (--duet PATH,
 * default the duet binary of the same build; extra
 * --serve-arg ARGs go to it, its stderr to --server-log FILE or /dev/null)
 * and stops it with SIGTERM at the end. --url http://H:P benchmarks a
 * running server instead (--pid PID for its RSS).
 *
 * Every request: greedy, ignore_eos, --max-tokens tokens (default 64), one
 * of a few short Python prompts. Exit status 0 when every goal is met, 1
 * when one is not, 2 on a usage or setup error. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---- small helpers ---------------------------------------------------- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

typedef struct samples {
    double *v;
    size_t n, cap;
} samples_t;

static void samples_add(samples_t *s, double x)
{
    if (s->n == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 4096;
        double *v = realloc(s->v, cap * sizeof(double));
        if (!v) {
            fprintf(stderr, "bench_load: out of memory\n");
            exit(2);
        }
        s->v = v;
        s->cap = cap;
    }
    s->v[s->n++] = x;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* nearest-rank percentile; NAN when empty */
static double pct(samples_t *s, double p)
{
    if (!s->n)
        return NAN;
    qsort(s->v, s->n, sizeof(double), cmp_double);
    size_t k = (size_t)ceil(p / 100.0 * (double)s->n);
    if (k < 1)
        k = 1;
    return s->v[k - 1];
}

static long rss_kib(int pid)
{
    if (pid <= 0)
        return -1;
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%d/status", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    long kib = -1;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, "VmRSS:", 6))
            kib = strtol(line + 6, NULL, 10);
    fclose(f);
    return kib;
}

/* ---- blocking GET for /metrics and /v1/models --------------------------- */

static struct sockaddr_in g_addr;
static char g_api_key[512];

static int connect_block(void)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {10, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&g_addr, sizeof(g_addr)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* The body of GET path (malloc'd, NUL-terminated) or NULL. */
static char *http_get(const char *path)
{
    int fd = connect_block();
    if (fd < 0)
        return NULL;
    char req[1024];
    int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: bench\r\n%s%s%sConnection: close\r\n\r\n",
                     path, g_api_key[0] ? "Authorization: Bearer " : "", g_api_key,
                     g_api_key[0] ? "\r\n" : "");
    if (send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
        close(fd);
        return NULL;
    }
    size_t len = 0, cap = 1 << 16;
    char *buf = malloc(cap);
    for (;;) {
        if (!buf)
            break;
        if (len + 4096 > cap) {
            char *nb = realloc(buf, cap *= 2);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
        }
        ssize_t r = recv(fd, buf + len, cap - len - 1, 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    if (!buf)
        return NULL;
    buf[len] = 0;
    if (strncmp(buf, "HTTP/1.1 200", 12) != 0) {
        free(buf);
        return NULL;
    }
    char *body = strstr(buf, "\r\n\r\n");
    if (!body) {
        free(buf);
        return NULL;
    }
    memmove(buf, body + 4, strlen(body + 4) + 1);
    return buf; /* /metrics and /v1/models are sent with a Content-Length */
}

#define EMIT_MAX_BUCKETS 64
typedef struct emit_hist {
    int n;
    double le[EMIT_MAX_BUCKETS]; /* +Inf last */
    double cum[EMIT_MAX_BUCKETS];
    bool ok;
} emit_hist_t;

static emit_hist_t emit_fetch(void)
{
    emit_hist_t h = {0};
    char *m = http_get("/metrics");
    if (!m)
        return h;
    const char *key = "duet_gateway_emit_latency_seconds_bucket{";
    for (char *p = strstr(m, key); p && h.n < EMIT_MAX_BUCKETS; p = strstr(p + 1, key)) {
        char *le = strstr(p, "le=\"");
        char *eol = strchr(p, '\n');
        if (!le || (eol && le > eol))
            continue;
        le += 4;
        h.le[h.n] = !strncmp(le, "+Inf", 4) ? INFINITY : strtod(le, NULL);
        char *val = strstr(le, "} ");
        if (!val)
            continue;
        h.cum[h.n++] = strtod(val + 2, NULL);
    }
    h.ok = h.n > 0;
    free(m);
    return h;
}

/* The bucket bound under which p of the observations between a and b
 * fall; *count gets their number. */
static double emit_pct(const emit_hist_t *a, const emit_hist_t *b, double p, double *count)
{
    *count = 0;
    if (!a->ok || !b->ok || a->n != b->n)
        return NAN;
    double total = b->cum[b->n - 1] - a->cum[a->n - 1];
    *count = total;
    if (total <= 0)
        return NAN;
    for (int i = 0; i < b->n; i++)
        if (b->cum[i] - a->cum[i] >= p / 100.0 * total)
            return b->le[i];
    return INFINITY;
}

/* ---- the event loop ----------------------------------------------------- */

enum { C_IDLE, C_CONNECTING, C_SENDING, C_HEAD, C_BODY };
enum { B_SIZE, B_DATA, B_DATA_CRLF, B_TRAILER };

typedef struct conn {
    int fd;
    int state;
    bool counting; /* started in the measured phase */
    char req[2048];
    size_t req_len, req_off;
    char head[8192];
    size_t head_len;
    int status;
    bool chunked, close_after;
    long long clen; /* -1: none */
    int bstate;
    size_t chunk_left;
    char sizeline[64];
    size_t sizeline_len;
    char *sse; /* SSE bytes not yet split into events */
    size_t sse_len, sse_cap;
    double t_send, t_first, t_last, t_progress;
    bool saw_done, saw_error;
    long usage_tokens;
    char why[160];
} conn_t;

typedef struct level_stats {
    long done, errors, hung, tokens;
    samples_t ttft, itl;
    char first_error[200];
} level_stats_t;

static const char *const g_prompts[] = {
    "def fibonacci(n):", "import numpy as np\\n", "class Stack:\\n    def __init__(self):",
    "for i in range(10):", "def quicksort(arr):", "# read a CSV file\\nimport csv\\n",
};

static char g_model[256] = "";
static int g_max_tokens = 64;
static double g_hang_s = 30;
static int g_epfd = -1;
static long g_req_seq;

static void conn_reset_io(conn_t *c)
{
    if (c->fd >= 0) {
        epoll_ctl(g_epfd, EPOLL_CTL_DEL, c->fd, NULL);
        close(c->fd);
    }
    c->fd = -1;
    c->state = C_IDLE;
}

static void note_error(level_stats_t *st, conn_t *c, const char *why)
{
    if (!c->counting)
        return;
    st->errors++;
    if (!st->first_error[0])
        snprintf(st->first_error, sizeof(st->first_error), "%s", why);
}

static bool conn_open(conn_t *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c->fd < 0)
        return false;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    int r = connect(c->fd, (struct sockaddr *)&g_addr, sizeof(g_addr));
    if (r != 0 && errno != EINPROGRESS) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP, .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_ADD, c->fd, &ev);
    c->state = C_CONNECTING;
    return true;
}

static void want_write(conn_t *c, bool w)
{
    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP | (w ? EPOLLOUT : 0), .data.ptr = c};
    epoll_ctl(g_epfd, EPOLL_CTL_MOD, c->fd, &ev);
}

/* Start a request on c (reusing its connection when it has one). */
static bool conn_start(conn_t *c, bool counting)
{
    const char *prompt = g_prompts[g_req_seq++ % (sizeof(g_prompts) / sizeof(g_prompts[0]))];
    char body[1024];
    int bl = snprintf(body, sizeof(body),
                      "{\"model\":\"%s\",\"prompt\":\"%s\",\"max_tokens\":%d,\"temperature\":0,"
                      "\"ignore_eos\":true,\"stream\":true,\"stream_options\":{\"include_usage\":"
                      "true}}",
                      g_model, prompt, g_max_tokens);
    c->req_len = (size_t)snprintf(
        c->req, sizeof(c->req),
        "POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
        "%s%s%sContent-Length: %d\r\n\r\n%s",
        g_api_key[0] ? "Authorization: Bearer " : "", g_api_key, g_api_key[0] ? "\r\n" : "", bl,
        body);
    c->req_off = 0;
    c->head_len = 0;
    c->status = 0;
    c->chunked = c->close_after = false;
    c->clen = -1;
    c->bstate = B_SIZE;
    c->sizeline_len = 0;
    c->sse_len = 0;
    c->saw_done = c->saw_error = false;
    c->usage_tokens = -1;
    c->why[0] = 0;
    c->counting = counting;
    c->t_send = c->t_progress = now_s();
    c->t_first = c->t_last = 0;
    if (c->fd < 0) {
        if (!conn_open(c))
            return false;
    } else {
        c->state = C_SENDING;
        want_write(c, true);
    }
    return true;
}

static void sse_event(level_stats_t *st, conn_t *c, const char *ev, size_t len)
{
    if (len < 6 || memcmp(ev, "data: ", 6) != 0)
        return;
    ev += 6;
    len -= 6;
    if (len == 6 && !memcmp(ev, "[DONE]", 6)) {
        c->saw_done = true;
        return;
    }
    char tmp[4096];
    size_t n = len < sizeof(tmp) - 1 ? len : sizeof(tmp) - 1;
    memcpy(tmp, ev, n);
    tmp[n] = 0;
    if (!strncmp(tmp, "{\"error\"", 8)) {
        c->saw_error = true;
        snprintf(c->why, sizeof(c->why), "SSE error event: %.120s", tmp);
        return;
    }
    const char *u = strstr(tmp, "\"completion_tokens\":");
    if (u)
        c->usage_tokens = strtol(u + 20, NULL, 10);
    const char *t = strstr(tmp, "\"text\":\"");
    if (t && t[8] != '"') { /* an event that shows text */
        double now = now_s();
        if (c->counting) {
            if (c->t_first == 0)
                samples_add(&st->ttft, now - c->t_send);
            else
                samples_add(&st->itl, now - c->t_last);
        }
        if (c->t_first == 0)
            c->t_first = now;
        c->t_last = now;
    }
}

static void sse_feed(level_stats_t *st, conn_t *c, const char *p, size_t n)
{
    if (c->sse_len + n > c->sse_cap) {
        size_t cap = c->sse_cap ? c->sse_cap : 8192;
        while (cap < c->sse_len + n)
            cap *= 2;
        char *b = realloc(c->sse, cap);
        if (!b) {
            fprintf(stderr, "bench_load: out of memory\n");
            exit(2);
        }
        c->sse = b;
        c->sse_cap = cap;
    }
    memcpy(c->sse + c->sse_len, p, n);
    c->sse_len += n;
    size_t start = 0;
    for (;;) {
        char *e = memmem(c->sse + start, c->sse_len - start, "\n\n", 2);
        if (!e)
            break;
        size_t elen = (size_t)(e - (c->sse + start));
        if (c->status == 200)
            sse_event(st, c, c->sse + start, elen);
        start += elen + 2;
    }
    if (c->status != 200) /* keep the start of an error body for the report */
        return;
    memmove(c->sse, c->sse + start, c->sse_len - start);
    c->sse_len -= start;
}

/* The response ended (ok = framing complete). */
static void conn_finish(level_stats_t *st, conn_t *c, bool ok)
{
    if (c->counting) {
        if (!ok) {
            note_error(st, c, c->why[0] ? c->why : "connection closed mid-response");
        } else if (c->status != 200) {
            char w[200];
            snprintf(w, sizeof(w), "HTTP %d: %.*s", c->status,
                     (int)(c->sse_len < 120 ? c->sse_len : 120), c->sse ? c->sse : "");
            note_error(st, c, w);
        } else if (c->saw_error || !c->saw_done) {
            note_error(st, c, c->saw_error ? c->why : "stream ended without data: [DONE]");
        } else if (c->usage_tokens != g_max_tokens) {
            char w[120];
            snprintf(w, sizeof(w), "usage.completion_tokens %ld, asked for %d", c->usage_tokens,
                     g_max_tokens);
            note_error(st, c, w);
        } else {
            st->done++;
            st->tokens += c->usage_tokens;
        }
    }
    if (!ok || c->close_after)
        conn_reset_io(c);
    else
        c->state = C_IDLE;
}

static void parse_head(conn_t *c)
{
    c->head[c->head_len] = 0;
    c->status = (int)strtol(c->head + 9, NULL, 10);
    for (char *l = strstr(c->head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
        const char *h = l + 2;
        if (!strncasecmp(h, "transfer-encoding:", 18) && strcasestr(h, "chunked"))
            c->chunked = true;
        else if (!strncasecmp(h, "content-length:", 15))
            c->clen = strtoll(h + 15, NULL, 10);
        else if (!strncasecmp(h, "connection:", 11) && strncasecmp(h + 11, " close", 6) == 0)
            c->close_after = true;
    }
}

/* Feed body bytes; true when the response is complete. */
static bool body_feed(level_stats_t *st, conn_t *c, const char *p, size_t n, bool *bad)
{
    if (!c->chunked) {
        size_t take = n;
        if (c->clen >= 0 && (long long)take > c->clen)
            take = (size_t)c->clen;
        sse_feed(st, c, p, take);
        if (c->clen >= 0) {
            c->clen -= (long long)take;
            return c->clen == 0;
        }
        return false; /* until the connection closes */
    }
    size_t i = 0;
    while (i < n) {
        switch (c->bstate) {
        case B_SIZE:
        case B_TRAILER:
            if (c->sizeline_len >= sizeof(c->sizeline) - 1) {
                *bad = true;
                return false;
            }
            c->sizeline[c->sizeline_len++] = p[i++];
            if (c->sizeline_len >= 2 && c->sizeline[c->sizeline_len - 2] == '\r' &&
                c->sizeline[c->sizeline_len - 1] == '\n') {
                c->sizeline[c->sizeline_len - 2] = 0;
                size_t ll = c->sizeline_len - 2;
                c->sizeline_len = 0;
                if (c->bstate == B_TRAILER) {
                    if (ll == 0)
                        return true; /* end of trailers: the response is complete */
                    break;
                }
                c->chunk_left = strtoul(c->sizeline, NULL, 16);
                c->bstate = c->chunk_left ? B_DATA : B_TRAILER;
            }
            break;
        case B_DATA: {
            size_t take = n - i < c->chunk_left ? n - i : c->chunk_left;
            sse_feed(st, c, p + i, take);
            i += take;
            c->chunk_left -= take;
            if (!c->chunk_left) {
                c->bstate = B_DATA_CRLF;
                c->sizeline_len = 0;
            }
            break;
        }
        case B_DATA_CRLF:
            c->sizeline_len++;
            i++;
            if (c->sizeline_len == 2) {
                c->sizeline_len = 0;
                c->bstate = B_SIZE;
            }
            break;
        }
    }
    return false;
}

static void conn_readable(level_stats_t *st, conn_t *c)
{
    char buf[65536];
    for (;;) {
        ssize_t r = recv(c->fd, buf, sizeof(buf), 0);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (r <= 0) { /* closed */
            bool ok = c->state == C_BODY && !c->chunked && c->clen < 0;
            if (!ok)
                snprintf(c->why, sizeof(c->why), "connection %s in state %d",
                         r == 0 ? "closed by the server" : strerror(errno), c->state);
            conn_finish(st, c, ok);
            conn_reset_io(c);
            return;
        }
        c->t_progress = now_s();
        size_t off = 0;
        if (c->state == C_HEAD) {
            while (off < (size_t)r && c->state == C_HEAD) {
                if (c->head_len >= sizeof(c->head) - 1) {
                    snprintf(c->why, sizeof(c->why), "response head too long");
                    conn_finish(st, c, false);
                    return;
                }
                c->head[c->head_len++] = buf[off++];
                if (c->head_len >= 4 && !memcmp(c->head + c->head_len - 4, "\r\n\r\n", 4)) {
                    parse_head(c);
                    c->state = C_BODY;
                }
            }
        }
        if (c->state == C_BODY && off < (size_t)r) {
            bool bad = false;
            bool end = body_feed(st, c, buf + off, (size_t)r - off, &bad);
            if (bad) {
                snprintf(c->why, sizeof(c->why), "bad chunked framing");
                conn_finish(st, c, false);
                return;
            }
            if (end) {
                conn_finish(st, c, true);
                return;
            }
        } else if (c->state == C_BODY && !c->chunked && c->clen == 0) {
            conn_finish(st, c, true);
            return;
        }
    }
}

static void conn_writable(level_stats_t *st, conn_t *c)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t el = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el);
        if (err) {
            snprintf(c->why, sizeof(c->why), "connect: %s", strerror(err));
            conn_finish(st, c, false);
            return;
        }
        c->state = C_SENDING;
    }
    if (c->state != C_SENDING)
        return;
    while (c->req_off < c->req_len) {
        ssize_t w = send(c->fd, c->req + c->req_off, c->req_len - c->req_off, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (w <= 0) {
            snprintf(c->why, sizeof(c->why), "send: %s", strerror(errno));
            conn_finish(st, c, false);
            return;
        }
        c->req_off += (size_t)w;
    }
    c->state = C_HEAD;
    c->t_send = c->t_progress = now_s();
    want_write(c, false);
}

/* Run `conc` streams: new requests are started until `t_stop`; those
 * started before `t_count` are not counted. Then wait for the ones in
 * flight (up to g_hang_s). */
static void run_phase(conn_t *cs, int conc, double t_count, double t_stop, level_stats_t *st)
{
    struct epoll_event evs[512];
    for (;;) {
        double now = now_s();
        bool any_busy = false;
        for (int i = 0; i < conc; i++) {
            conn_t *c = &cs[i];
            if (c->state == C_IDLE) {
                if (now < t_stop) {
                    if (!conn_start(c, now >= t_count)) {
                        snprintf(c->why, sizeof(c->why), "cannot connect: %s", strerror(errno));
                        c->counting = now >= t_count;
                        note_error(st, c, c->why);
                        c->state = C_IDLE;
                        continue;
                    }
                } else {
                    continue;
                }
            }
            any_busy = true;
            double limit = now >= t_stop ? (t_stop + g_hang_s) : 1e300;
            if (now - c->t_progress > g_hang_s || now > limit) {
                if (c->counting)
                    st->hung++;
                conn_reset_io(c);
            }
        }
        if (!any_busy && now >= t_stop)
            return;
        int n = epoll_wait(g_epfd, evs, 512, 50);
        for (int k = 0; k < n; k++) {
            conn_t *c = evs[k].data.ptr;
            if (c->fd < 0)
                continue;
            if (evs[k].events & EPOLLOUT)
                conn_writable(st, c);
            if (c->fd >= 0 && (evs[k].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)))
                conn_readable(st, c);
        }
    }
}

/* ---- server --------------------------------------------------------------- */

static pid_t g_server_pid = -1;

static bool start_server(const char *duet, char **extra, int n_extra, const char *log)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return false;
    char *argv[64];
    int a = 0;
    argv[a++] = (char *)duet;
    argv[a++] = "serve";
    argv[a++] = "--port";
    argv[a++] = "0";
    for (int i = 0; i < n_extra && a < 62; i++)
        argv[a++] = extra[i];
    argv[a] = NULL;
    pid_t pid = fork();
    if (pid < 0)
        return false;
    if (pid == 0) {
        dup2(pfd[1], 1);
        int lf = open(log ? log : "/dev/null", O_WRONLY | O_CREAT | O_TRUNC, 0644);
        if (lf >= 0)
            dup2(lf, 2);
        close(pfd[0]);
        execv(duet, argv);
        fprintf(stderr, "bench_load: cannot run %s: %s\n", duet, strerror(errno));
        _exit(127);
    }
    close(pfd[1]);
    g_server_pid = pid;
    FILE *f = fdopen(pfd[0], "r");
    char line[512] = "";
    if (!f || !fgets(line, sizeof(line), f)) {
        fprintf(stderr, "bench_load: %s serve printed nothing (see --server-log)\n", duet);
        return false;
    }
    /* keep the pipe open (not read further): the server's stdout */
    char name[256], host[64];
    unsigned port;
    if (sscanf(line, "duet: serving %255s on http://%63[0-9.]:%u", name, host, &port) != 3) {
        fprintf(stderr, "bench_load: unexpected first line from duet serve: %s", line);
        return false;
    }
    snprintf(g_model, sizeof(g_model), "%s", name);
    g_addr.sin_family = AF_INET;
    g_addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, host, &g_addr.sin_addr);
    return true;
}

static void stop_server(void)
{
    if (g_server_pid <= 0)
        return;
    kill(g_server_pid, SIGTERM);
    for (int i = 0; i < 300; i++) {
        int stt;
        if (waitpid(g_server_pid, &stt, WNOHANG) == g_server_pid) {
            g_server_pid = -1;
            return;
        }
        usleep(100000);
    }
    fprintf(stderr, "bench_load: the server did not stop in 30 s after SIGTERM; killing it\n");
    kill(g_server_pid, SIGKILL);
    waitpid(g_server_pid, NULL, 0);
    g_server_pid = -1;
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_load [options]\n"
            "Streaming load on `duet serve` at fixed concurrency levels (see the source's\n"
            "head comment for what each column means).\n\n"
            "  --duet PATH         the duet binary to start (default: this build's)\n"
            "  --serve-arg ARG     pass ARG to duet serve (repeatable), e.g. --serve-arg=--model\n"
            "  --server-log FILE   duet serve's stderr (default /dev/null)\n"
            "  --url http://H:P    use a running server instead of starting one\n"
            "  --pid PID           its process id, for RSS (with --url)\n"
            "  --api-key KEY       send 'Authorization: Bearer KEY'\n"
            "  --concurrency LIST  levels, comma separated (default 1,16,64,256)\n"
            "  --duration S        measured seconds per level (default 300)\n"
            "  --warmup S          unmeasured seconds before each level (default 10)\n"
            "  --max-tokens N      tokens per request (default 64)\n"
            "  --hang S            a request without progress for S seconds is hung (default 30)\n"
            "  -h, --help          this help\n");
}

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"duet", required_argument, NULL, 'd'},      {"serve-arg", required_argument, NULL, 'a'},
        {"server-log", required_argument, NULL, 'L'}, {"url", required_argument, NULL, 'u'},
        {"pid", required_argument, NULL, 'P'},       {"api-key", required_argument, NULL, 'k'},
        {"concurrency", required_argument, NULL, 'c'}, {"duration", required_argument, NULL, 'D'},
        {"warmup", required_argument, NULL, 'w'},    {"max-tokens", required_argument, NULL, 'm'},
        {"hang", required_argument, NULL, 'H'},      {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
#ifdef DUET_BENCH_DUET_BIN
    const char *duet = DUET_BENCH_DUET_BIN;
#else
    const char *duet = "./cli/duet";
#endif
    const char *url = NULL, *log = NULL;
    const char *conc_list = "1,16,64,256";
    char *extra[32];
    int n_extra = 0, pid = -1;
    double duration = 300, warmup = 10;
    int o;
    while ((o = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (o) {
        case 'd': duet = optarg; break;
        case 'a':
            if (n_extra < 32)
                extra[n_extra++] = optarg;
            break;
        case 'L': log = optarg; break;
        case 'u': url = optarg; break;
        case 'P': pid = atoi(optarg); break;
        case 'k': snprintf(g_api_key, sizeof(g_api_key), "%s", optarg); break;
        case 'c': conc_list = optarg; break;
        case 'D': duration = atof(optarg); break;
        case 'w': warmup = atof(optarg); break;
        case 'm': g_max_tokens = atoi(optarg); break;
        case 'H': g_hang_s = atof(optarg); break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (duration <= 0 || warmup < 0 || g_max_tokens < 1 || g_hang_s <= 0) {
        fprintf(stderr, "bench_load: --duration, --max-tokens and --hang must be positive\n");
        return 2;
    }
    int levels[16], n_levels = 0;
    for (const char *p = conc_list; *p && n_levels < 16;) {
        char *end;
        long v = strtol(p, &end, 10);
        if (end == p || v < 1 || v > 4096) {
            fprintf(stderr, "bench_load: bad --concurrency '%s'\n", conc_list);
            return 2;
        }
        levels[n_levels++] = (int)v;
        p = *end == ',' ? end + 1 : end;
    }
    signal(SIGPIPE, SIG_IGN);

    if (url) {
        char host[64];
        unsigned port;
        if (sscanf(url, "http://%63[0-9.]:%u", host, &port) != 2) {
            fprintf(stderr, "bench_load: --url must look like http://127.0.0.1:8000\n");
            return 2;
        }
        g_addr.sin_family = AF_INET;
        g_addr.sin_port = htons((uint16_t)port);
        inet_pton(AF_INET, host, &g_addr.sin_addr);
        char *models = http_get("/v1/models");
        char *id = models ? strstr(models, "\"id\":\"") : NULL;
        if (!id) {
            fprintf(stderr, "bench_load: GET %s/v1/models failed\n", url);
            free(models);
            return 2;
        }
        id += 6;
        size_t l = strcspn(id, "\"");
        snprintf(g_model, sizeof(g_model), "%.*s", (int)(l < 255 ? l : 255), id);
        free(models);
    } else {
        if (!start_server(duet, extra, n_extra, log)) {
            stop_server();
            return 2;
        }
        pid = g_server_pid;
    }
    g_epfd = epoll_create1(EPOLL_CLOEXEC);
    int maxc = 1;
    for (int i = 0; i < n_levels; i++)
        if (levels[i] > maxc)
            maxc = levels[i];
    conn_t *cs = calloc((size_t)maxc, sizeof(conn_t));
    for (int i = 0; i < maxc; i++)
        cs[i].fd = -1;

    long rss_start = rss_kib(pid);
    printf("bench_load: model %s, %d tokens per request, warm-up %.0f s + %.0f s per level, "
           "hang after %.0f s without progress\n",
           g_model, g_max_tokens, warmup, duration, g_hang_s);
    printf("server RSS at start: %.1f MiB\n\n", rss_start / 1024.0);
    printf("%5s %8s %9s %9s %9s %9s %9s %6s %5s %10s %9s %9s %7s\n", "conc", "req/s", "tok/s",
           "TTFT50ms", "TTFT99ms", "ITL50ms", "ITL99ms", "errors", "hung", "emit99ms", "RSSw MiB",
           "RSSe MiB", "RSS d%");
    fflush(stdout);
    bool goals = true;
    char notes[4096] = "";
    for (int li = 0; li < n_levels; li++) {
        int conc = levels[li];
        level_stats_t st;
        memset(&st, 0, sizeof(st));
        double t0 = now_s();
        /* warm-up: requests started now are not counted; they overlap into
         * the measured phase, as a steady load does */
        level_stats_t wst;
        memset(&wst, 0, sizeof(wst));
        if (warmup > 0)
            run_phase(cs, conc, 1e300, t0 + warmup, &wst); /* drains too */
        long rss_w = rss_kib(pid);
        emit_hist_t e0 = emit_fetch();
        double t1 = now_s();
        run_phase(cs, conc, t1, t1 + duration, &st);
        double el = now_s() - t1;
        emit_hist_t e1 = emit_fetch();
        long rss_e = rss_kib(pid);
        double ecount = 0;
        double e99 = emit_pct(&e0, &e1, 99, &ecount);
        double rd = rss_w > 0 ? 100.0 * (double)(rss_e - rss_w) / (double)rss_w : NAN;
        char e99s[32];
        if (isnan(e99))
            snprintf(e99s, sizeof(e99s), "n/a");
        else if (isinf(e99))
            snprintf(e99s, sizeof(e99s), ">1000");
        else
            snprintf(e99s, sizeof(e99s), "<=%g", e99 * 1e3);
        printf("%5d %8.2f %9.1f %9.2f %9.2f %9.2f %9.2f %6ld %5ld %10s %9.1f %9.1f %+7.2f\n",
               conc, st.done / el, st.tokens / el, pct(&st.ttft, 50) * 1e3,
               pct(&st.ttft, 99) * 1e3, pct(&st.itl, 50) * 1e3, pct(&st.itl, 99) * 1e3, st.errors,
               st.hung, e99s, rss_w / 1024.0, rss_e / 1024.0, rd);
        double e50 = emit_pct(&e0, &e1, 50, &ecount), e90 = emit_pct(&e0, &e1, 90, &ecount);
        size_t nl = strlen(notes);
        snprintf(notes + nl, sizeof(notes) - nl,
                 "  conc %d: %ld requests in %.1f s; %.0f emits, p50 <= %g ms, p90 <= %g ms, "
                 "p99 %s ms%s%s\n",
                 conc, st.done, el, ecount, e50 * 1e3, e90 * 1e3, e99s,
                 st.first_error[0] ? "; first error: " : "", st.first_error);
        if (st.errors || st.hung || st.done == 0)
            goals = false;
        if (rss_w > 0 && fabs(rd) > 5.0)
            goals = false;
        if (isnan(e99) || e99 > 0.001)
            goals = false;
        fflush(stdout);
        free(st.ttft.v);
        free(st.itl.v);
        free(wst.ttft.v);
        free(wst.itl.v);
    }
    long rss_end = rss_kib(pid);
    printf("\n%s", notes);
    printf("server RSS at start %.1f MiB, at end %.1f MiB\n", rss_start / 1024.0,
           rss_end / 1024.0);
    printf("goals (0 errors, 0 hung, |RSS end - RSS after warm-up| <= 5 %%, emit p99 < 1 ms): "
           "%s\n",
           goals ? "MET" : "NOT MET");
    for (int i = 0; i < maxc; i++) {
        conn_reset_io(&cs[i]);
        free(cs[i].sse);
    }
    free(cs);
    close(g_epfd);
    stop_server();
    return goals ? 0 : 1;
}
