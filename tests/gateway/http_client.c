/* http_client — see http_client.h. */
#include "http_client.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

int http_connect(uint16_t port)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    struct timeval tv = {.tv_sec = 30};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

bool http_send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return false;
        c += w;
        n -= (size_t)w;
    }
    return true;
}

bool http_send_request(int fd, const char *method, const char *path, const char *headers,
                       const char *body, size_t body_len)
{
    char head[2048];
    int hl = snprintf(
        head, sizeof(head), "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n%s%s",
        method, path, headers ? headers : "", body ? "Content-Type: application/json\r\n" : "");
    if (body)
        hl += snprintf(head + hl, sizeof(head) - (size_t)hl, "Content-Length: %zu\r\n", body_len);
    hl += snprintf(head + hl, sizeof(head) - (size_t)hl, "\r\n");
    if (!http_send_all(fd, head, (size_t)hl))
        return false;
    return !body || http_send_all(fd, body, body_len);
}

/* Decode a chunked body in place; false if malformed. */
static bool dechunk(char *b, size_t len, size_t *out_len)
{
    size_t r = 0, w = 0;
    for (;;) {
        char *end;
        if (r >= len)
            return false;
        unsigned long n = strtoul(b + r, &end, 16);
        char *crlf = memmem(b + r, len - r, "\r\n", 2);
        if (!crlf || end > crlf)
            return false;
        r = (size_t)(crlf - b) + 2;
        if (n == 0)
            break;
        if (r + n + 2 > len)
            return false;
        memmove(b + w, b + r, n);
        w += n;
        r += n + 2;
    }
    b[w] = '\0';
    *out_len = w;
    return true;
}

bool http_read_response(int fd, http_resp_t *out)
{
    memset(out, 0, sizeof(*out));
    size_t cap = 65536, len = 0;
    char *buf = malloc(cap + 1);
    if (!buf) {
        close(fd);
        return false;
    }
    for (;;) {
        if (len == cap) {
            cap *= 2;
            char *nb = realloc(buf, cap + 1);
            if (!nb)
                break;
            buf = nb;
        }
        ssize_t n = recv(fd, buf + len, cap - len, 0);
        if (n <= 0)
            break; /* EOF, reset or timeout: parse what came */
        len += (size_t)n;
    }
    close(fd);
    buf[len] = '\0';
    char *sep = strstr(buf, "\r\n\r\n");
    if (!sep || sscanf(buf, "HTTP/1.%*d %d", &out->status) != 1) {
        free(buf);
        return false;
    }
    *sep = '\0';
    out->head = strdup(buf);
    char *body = sep + 4;
    size_t blen = len - (size_t)(body - buf);
    char te[64];
    if (http_header(out, "Transfer-Encoding", te, sizeof(te)) && !strcasecmp(te, "chunked")) {
        if (!dechunk(body, blen, &blen)) {
            free(buf);
            free(out->head);
            out->head = NULL;
            return false;
        }
    }
    out->body = malloc(blen + 1);
    memcpy(out->body, body, blen);
    out->body[blen] = '\0';
    out->body_len = blen;
    free(buf);
    return true;
}

bool http_do(uint16_t port, const char *method, const char *path, const char *headers,
             const char *body, http_resp_t *out)
{
    int fd = http_connect(port);
    if (fd < 0)
        return false;
    if (!http_send_request(fd, method, path, headers, body, body ? strlen(body) : 0)) {
        close(fd);
        return false;
    }
    return http_read_response(fd, out);
}

void http_resp_free(http_resp_t *r)
{
    free(r->head);
    free(r->body);
    memset(r, 0, sizeof(*r));
}

const char *http_header(const http_resp_t *r, const char *name, char *buf, size_t n)
{
    size_t nl = strlen(name);
    for (const char *p = strstr(r->head, "\r\n"); p; p = strstr(p, "\r\n")) {
        p += 2;
        if (!strncasecmp(p, name, nl) && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (*v == ' ')
                v++;
            const char *e = strstr(v, "\r\n");
            size_t vl = e ? (size_t)(e - v) : strlen(v);
            if (vl >= n)
                vl = n - 1;
            memcpy(buf, v, vl);
            buf[vl] = '\0';
            return buf;
        }
    }
    return NULL;
}

int http_sse_events(const char *body, char ***events_out)
{
    int n = 0, cap = 16;
    char **ev = malloc(sizeof(char *) * (size_t)cap);
    const char *p = body;
    while (*p) {
        if (strncmp(p, "data: ", 6) != 0)
            goto bad;
        const char *e = strstr(p, "\n\n");
        if (!e)
            goto bad;
        const char *nl = memchr(p, '\n', (size_t)(e - p) + 1);
        if (nl != e) /* one data line per event */
            goto bad;
        if (n == cap) {
            cap *= 2;
            ev = realloc(ev, sizeof(char *) * (size_t)cap);
        }
        ev[n++] = strndup(p + 6, (size_t)(e - p - 6));
        p = e + 2;
    }
    *events_out = ev;
    return n;
bad:
    http_sse_free(ev, n);
    *events_out = NULL;
    return -1;
}

void http_sse_free(char **events, int n)
{
    for (int i = 0; i < n; i++)
        free(events[i]);
    free(events);
}
