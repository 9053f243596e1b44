/* zep — a node's ZeroMQ endpoint: one ROUTER that binds the node's own
 * address and connects to peers (ROUTER-to-ROUTER, routing id = node name),
 * with ROUTER_MANDATORY (unroutable = error), linger 0, a maximum message
 * size, and optional CURVE with a ZAP handler that admits only the public
 * keys on the allow-list. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <errno.h>
#include <string.h>
#include <zmq.h>

#include "mailbox/mailbox.h"

struct duet_zep {
    void *ctx;
    bool own_ctx;
    void *sock;
    char node[DUET_NAME_MAX];
    char endpoint[256];
    /* ZAP */
    pthread_t zap_thread;
    bool zap_running;
    atomic_bool zap_stop;
    void *zap_sock;
    uint8_t (*allow)[32];
    size_t nallow;
    atomic_uint_fast64_t refused;
    bool has_curve; /* direct senders authenticate with these */
    duet_curve_keys_t curve;
    int64_t maxsz;
};

bool duet_zep_has_curve(void)
{
    return zmq_has("curve") != 0;
}

duet_status_t duet_curve_keypair(duet_curve_keys_t *out)
{
    if (!duet_zep_has_curve())
        return duet_errorf(DUET_ERR_UNSUPPORTED, "libzmq was built without CURVE (libsodium)");
    if (zmq_curve_keypair(out->public_z85, out->secret_z85) != 0)
        return duet_errorf(DUET_ERR_IO, "zmq_curve_keypair: %s", zmq_strerror(zmq_errno()));
    return DUET_OK;
}

static bool zap_allowed(duet_zep_t *ep, const uint8_t *key, size_t n)
{
    if (n != 32)
        return false;
    for (size_t i = 0; i < ep->nallow; i++)
        if (memcmp(ep->allow[i], key, 32) == 0)
            return true;
    return false;
}

/* ZAP (RFC 27): request = version, request id, domain, address, routing id,
 * mechanism, credentials...; reply = version, request id, status code,
 * status text, user id, metadata. */
static void *zap_main(void *arg)
{
    duet_zep_t *ep = arg;
    while (!atomic_load(&ep->zap_stop)) {
        zmq_pollitem_t it = {ep->zap_sock, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&it, 1, 50) <= 0)
            continue;
        zmq_msg_t parts[8];
        int np = 0;
        int more = 1;
        while (more) {
            zmq_msg_t m;
            zmq_msg_init(&m);
            if (zmq_msg_recv(&m, ep->zap_sock, 0) < 0) {
                zmq_msg_close(&m);
                break;
            }
            more = zmq_msg_more(&m);
            if (np < 8)
                parts[np++] = m;
            else
                zmq_msg_close(&m);
        }
        if (np < 6)
            goto next;
        const char *mech = zmq_msg_data(&parts[5]);
        size_t mech_len = zmq_msg_size(&parts[5]);
        bool ok = mech_len == 5 && memcmp(mech, "CURVE", 5) == 0 && np >= 7 &&
                  zap_allowed(ep, zmq_msg_data(&parts[6]), zmq_msg_size(&parts[6]));
        if (!ok) {
            atomic_fetch_add(&ep->refused, 1);
            char z85[41] = "";
            if (np >= 7 && zmq_msg_size(&parts[6]) == 32)
                zmq_z85_encode(z85, zmq_msg_data(&parts[6]), 32);
            DUET_LOG_W("mailbox",
                       "node %s: refused a %.*s connection from key %s (not on the allow-list)",
                       ep->node, (int)mech_len, mech, z85[0] ? z85 : "(none)");
        }
        zmq_send(ep->zap_sock, "1.0", 3, ZMQ_SNDMORE);
        zmq_send(ep->zap_sock, zmq_msg_data(&parts[1]), zmq_msg_size(&parts[1]), ZMQ_SNDMORE);
        zmq_send(ep->zap_sock, ok ? "200" : "400", 3, ZMQ_SNDMORE);
        zmq_send(ep->zap_sock, ok ? "OK" : "key not allowed", ok ? 2 : 15, ZMQ_SNDMORE);
        zmq_send(ep->zap_sock, "", 0, ZMQ_SNDMORE);
        zmq_send(ep->zap_sock, "", 0, 0);
    next:
        for (int i = 0; i < np; i++)
            zmq_msg_close(&parts[i]);
    }
    return NULL;
}

static bool is_wildcard(const char *addr)
{
    return strstr(addr, "://*") || strstr(addr, "0.0.0.0") || strstr(addr, "[::]") ||
           strstr(addr, "[*]");
}

static duet_status_t zerr(const char *what, const char *node)
{
    return duet_errorf(DUET_ERR_IO, "node %s: %s: %s", node, what, zmq_strerror(zmq_errno()));
}

duet_status_t duet_zep_create(const duet_zep_config_t *cfg, duet_zep_t **ep_out)
{
    if (!cfg->node || !cfg->node[0] || strlen(cfg->node) >= DUET_NAME_MAX)
        return duet_errorf(DUET_ERR_INVALID, "zmq endpoint: node name missing or too long");
    if (cfg->bind && is_wildcard(cfg->bind) && !cfg->allow_wildcard)
        return duet_errorf(DUET_ERR_INVALID,
                           "node %s: refusing to bind all interfaces (%s); name the address",
                           cfg->node, cfg->bind);
    if (cfg->curve && !duet_zep_has_curve())
        return duet_errorf(DUET_ERR_UNSUPPORTED, "node %s: CURVE asked for but libzmq lacks it",
                           cfg->node);
    duet_status_t st;
    duet_zep_t *ep = duet_calloc(1, sizeof(*ep));
    if (!ep)
        return duet_errorf(DUET_ERR_NOMEM, "zmq endpoint");
    snprintf(ep->node, sizeof(ep->node), "%s", cfg->node);
    ep->ctx = cfg->zmq_ctx;
    if (!ep->ctx) {
        ep->ctx = zmq_ctx_new();
        ep->own_ctx = true;
        if (!ep->ctx) {
            st = zerr("zmq_ctx_new", cfg->node);
            goto err_free;
        }
    }
    ep->sock = zmq_socket(ep->ctx, ZMQ_ROUTER);
    if (!ep->sock) {
        st = zerr("zmq_socket", cfg->node);
        goto err_ctx;
    }
    int one = 1, zero = 0, hwm = 100000;
    int64_t maxsz = (int64_t)(cfg->max_msg_size ? cfg->max_msg_size : DUET_MSG_SIZE_DEFAULT);
    ep->maxsz = maxsz;
    if (cfg->curve) {
        ep->has_curve = true;
        ep->curve = *cfg->curve;
    }
    /* +256: the frame cap applies to our payload; leave room for nothing else */
    if (zmq_setsockopt(ep->sock, ZMQ_ROUTING_ID, cfg->node, strlen(cfg->node)) ||
        zmq_setsockopt(ep->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one)) ||
        zmq_setsockopt(ep->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof(one)) ||
        zmq_setsockopt(ep->sock, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_setsockopt(ep->sock, ZMQ_MAXMSGSIZE, &maxsz, sizeof(maxsz)) ||
        zmq_setsockopt(ep->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm)) ||
        zmq_setsockopt(ep->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm))) {
        st = zerr("setsockopt", cfg->node);
        goto err_sock;
    }
    if (cfg->curve) {
        size_t n = 0;
        while (cfg->allow_keys && cfg->allow_keys[n])
            n++;
        ep->allow = duet_calloc(n ? n : 1, 32);
        if (!ep->allow) {
            st = duet_errorf(DUET_ERR_NOMEM, "allow-list");
            goto err_sock;
        }
        for (size_t i = 0; i < n; i++) {
            if (strlen(cfg->allow_keys[i]) != 40 ||
                !zmq_z85_decode(ep->allow[i], cfg->allow_keys[i])) {
                st = duet_errorf(DUET_ERR_INVALID,
                                 "node %s: allow-list key %zu is not a 40-char z85 key", cfg->node,
                                 i);
                goto err_allow;
            }
        }
        ep->nallow = n;
        ep->zap_sock = zmq_socket(ep->ctx, ZMQ_REP);
        if (!ep->zap_sock || zmq_setsockopt(ep->zap_sock, ZMQ_LINGER, &zero, sizeof(zero)) ||
            zmq_bind(ep->zap_sock, "inproc://zeromq.zap.01")) {
            st = zerr("ZAP handler bind (one CURVE node per zmq context)", cfg->node);
            goto err_zap;
        }
        if (pthread_create(&ep->zap_thread, NULL, zap_main, ep)) {
            st = duet_errorf(DUET_ERR_IO, "node %s: ZAP thread", cfg->node);
            goto err_zap;
        }
        ep->zap_running = true;
        if (zmq_setsockopt(ep->sock, ZMQ_CURVE_SERVER, &one, sizeof(one)) ||
            zmq_setsockopt(ep->sock, ZMQ_CURVE_SECRETKEY, cfg->curve->secret_z85, 40) ||
            zmq_setsockopt(ep->sock, ZMQ_CURVE_PUBLICKEY, cfg->curve->public_z85, 40) ||
            zmq_setsockopt(ep->sock, ZMQ_ZAP_DOMAIN, "duet", 4)) {
            st = zerr("CURVE options", cfg->node);
            goto err_zap;
        }
    }
    if (cfg->bind && zmq_bind(ep->sock, cfg->bind)) {
        st = duet_errorf(DUET_ERR_IO, "node %s: bind %s: %s", cfg->node, cfg->bind,
                         zmq_strerror(zmq_errno()));
        goto err_zap;
    }
    if (cfg->bind) {
        size_t n = sizeof(ep->endpoint);
        if (zmq_getsockopt(ep->sock, ZMQ_LAST_ENDPOINT, ep->endpoint, &n))
            snprintf(ep->endpoint, sizeof(ep->endpoint), "%s", cfg->bind);
    }
    *ep_out = ep;
    return DUET_OK;
err_zap:
    if (ep->zap_running) {
        atomic_store(&ep->zap_stop, true);
        pthread_join(ep->zap_thread, NULL);
    }
    if (ep->zap_sock)
        zmq_close(ep->zap_sock);
err_allow:
    duet_free(ep->allow);
err_sock:
    zmq_close(ep->sock);
err_ctx:
    if (ep->own_ctx)
        zmq_ctx_term(ep->ctx);
err_free:
    duet_free(ep);
    return st;
}

void duet_zep_destroy(duet_zep_t **ep_p)
{
    if (!ep_p || !*ep_p)
        return;
    duet_zep_t *ep = *ep_p;
    zmq_close(ep->sock);
    if (ep->zap_running) {
        atomic_store(&ep->zap_stop, true);
        pthread_join(ep->zap_thread, NULL);
    }
    if (ep->zap_sock)
        zmq_close(ep->zap_sock);
    duet_free(ep->allow);
    if (ep->own_ctx)
        zmq_ctx_term(ep->ctx);
    duet_free(ep);
    *ep_p = NULL;
}

duet_status_t duet_zep_connect(duet_zep_t *ep, const char *peer, const char *addr,
                               const char *server_key)
{
    if (zmq_setsockopt(ep->sock, ZMQ_CONNECT_ROUTING_ID, peer, strlen(peer)))
        return zerr("connect routing id", ep->node);
    if (server_key) {
        /* Client side of CURVE for this connection only: options are copied
         * into the session at connect time; the bound listener keeps its
         * server role. */
        if (strlen(server_key) != 40 ||
            zmq_setsockopt(ep->sock, ZMQ_CURVE_SERVERKEY, server_key, 40))
            return duet_errorf(DUET_ERR_INVALID, "node %s: peer %s: bad CURVE server key", ep->node,
                               peer);
    }
    if (zmq_connect(ep->sock, addr))
        return duet_errorf(DUET_ERR_IO, "node %s: connect to %s at %s: %s", ep->node, peer, addr,
                           zmq_strerror(zmq_errno()));
    return DUET_OK;
}

duet_status_t duet_zep_send(duet_zep_t *ep, const char *peer, const void *data, size_t len)
{
    if (zmq_send(ep->sock, peer, strlen(peer), ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) {
        int e = zmq_errno();
        if (e == EHOSTUNREACH || e == EAGAIN)
            return DUET_ERR_AGAIN;
        return duet_errorf(DUET_ERR_IO, "node %s: send to %s: %s", ep->node, peer, zmq_strerror(e));
    }
    /* With ROUTER_MANDATORY the routing frame is accepted only if the pipe
     * can take the message, so the payload frame does not block. */
    if (zmq_send(ep->sock, data, len, ZMQ_DONTWAIT) < 0)
        return duet_errorf(DUET_ERR_IO, "node %s: send to %s: %s", ep->node, peer,
                           zmq_strerror(zmq_errno()));
    return DUET_OK;
}

/* A direct sender's routing id is "<node>\x1f<tag>": the sender is <node>. */
static size_t peer_name_len(const uint8_t *id, size_t n)
{
    const void *sep = memchr(id, 0x1f, n);
    return sep ? (size_t)((const uint8_t *)sep - id) : n;
}

/* Receive one [routing id, payload] message; hand the payload to `take`. */
static duet_status_t recv_common(duet_zep_t *ep, char peer_out[DUET_NAME_MAX],
                                 duet_status_t (*take)(void *ctx, const void *d, size_t n),
                                 void *ctx)
{
    zmq_msg_t id, body;
    zmq_msg_init(&id);
    if (zmq_msg_recv(&id, ep->sock, ZMQ_DONTWAIT) < 0) {
        zmq_msg_close(&id);
        int e = zmq_errno();
        if (e == EAGAIN)
            return DUET_ERR_AGAIN;
        return duet_errorf(DUET_ERR_IO, "node %s: recv: %s", ep->node, zmq_strerror(e));
    }
    duet_status_t st = DUET_OK;
    int more = zmq_msg_more(&id);
    zmq_msg_init(&body);
    if (!more || zmq_msg_recv(&body, ep->sock, ZMQ_DONTWAIT) < 0) {
        st = duet_errorf(DUET_ERR_PROTOCOL, "node %s: frame without payload", ep->node);
        goto out;
    }
    size_t idn = peer_name_len(zmq_msg_data(&id), zmq_msg_size(&id));
    if (idn == 0 || idn >= DUET_NAME_MAX) {
        st = duet_errorf(DUET_ERR_PROTOCOL, "node %s: peer routing id of %zu bytes", ep->node, idn);
        goto out_drain;
    }
    if (zmq_msg_more(&body)) {
        st = duet_errorf(DUET_ERR_PROTOCOL, "node %s: multi-frame message", ep->node);
        goto out_drain;
    }
    if ((st = take(ctx, zmq_msg_data(&body), zmq_msg_size(&body))))
        goto out;
    memcpy(peer_out, zmq_msg_data(&id), idn);
    peer_out[idn] = 0;
    goto out;
out_drain:
    while (zmq_msg_more(&body)) {
        zmq_msg_close(&body);
        zmq_msg_init(&body);
        if (zmq_msg_recv(&body, ep->sock, ZMQ_DONTWAIT) < 0)
            break;
    }
out:
    zmq_msg_close(&body);
    zmq_msg_close(&id);
    return st;
}

typedef struct take_heap {
    uint8_t *data;
    size_t len;
} take_heap_t;

static duet_status_t take_heap(void *ctx, const void *d, size_t n)
{
    take_heap_t *t = ctx;
    if (!(t->data = duet_malloc(n ? n : 1)))
        return duet_errorf(DUET_ERR_NOMEM, "recv of %zu bytes", n);
    memcpy(t->data, d, n);
    t->len = n;
    return DUET_OK;
}

static duet_status_t take_buf(void *ctx, const void *d, size_t n)
{
    duet_buf_t *b = ctx;
    b->len = 0;
    return duet_buf_append(b, d, n);
}

duet_status_t duet_zep_recv(duet_zep_t *ep, char peer_out[DUET_NAME_MAX], uint8_t **data_out,
                            size_t *len_out)
{
    take_heap_t t = {NULL, 0};
    duet_status_t st = recv_common(ep, peer_out, take_heap, &t);
    if (st)
        return st;
    *data_out = t.data;
    *len_out = t.len;
    return DUET_OK;
}

duet_status_t duet_zep_recv_buf(duet_zep_t *ep, char peer_out[DUET_NAME_MAX], duet_buf_t *buf)
{
    return recv_common(ep, peer_out, take_buf, buf);
}

duet_status_t duet_zep_dealer_open(duet_zep_t *ep, unsigned tag, const char *peer, const char *addr,
                                   const char *server_key, void **sock_out)
{
    char rid[DUET_NAME_MAX + 16];
    int rn = snprintf(rid, sizeof(rid), "%s\x1f%u", ep->node, tag);
    if (rn < 0 || (size_t)rn >= sizeof(rid) || rn > 255)
        return duet_errorf(DUET_ERR_INVALID, "node %s: routing id too long", ep->node);
    void *s = zmq_socket(ep->ctx, ZMQ_DEALER);
    if (!s)
        return zerr("zmq_socket (dealer)", ep->node);
    int one = 1, zero = 0, hwm = 100000;
    duet_status_t st;
    if (zmq_setsockopt(s, ZMQ_ROUTING_ID, rid, (size_t)rn) ||
        zmq_setsockopt(s, ZMQ_IMMEDIATE, &one, sizeof(one)) ||
        zmq_setsockopt(s, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm)) ||
        zmq_setsockopt(s, ZMQ_MAXMSGSIZE, &ep->maxsz, sizeof(ep->maxsz))) {
        st = zerr("dealer setsockopt", ep->node);
        goto err_close;
    }
    if (ep->has_curve && server_key) {
        if (strlen(server_key) != 40 || zmq_setsockopt(s, ZMQ_CURVE_SERVERKEY, server_key, 40) ||
            zmq_setsockopt(s, ZMQ_CURVE_PUBLICKEY, ep->curve.public_z85, 40) ||
            zmq_setsockopt(s, ZMQ_CURVE_SECRETKEY, ep->curve.secret_z85, 40)) {
            st = duet_errorf(DUET_ERR_INVALID, "node %s: peer %s: bad CURVE server key", ep->node,
                             peer);
            goto err_close;
        }
    }
    if (zmq_connect(s, addr)) {
        st = duet_errorf(DUET_ERR_IO, "node %s: connect to %s at %s: %s", ep->node, peer, addr,
                         zmq_strerror(zmq_errno()));
        goto err_close;
    }
    *sock_out = s;
    return DUET_OK;
err_close:
    zmq_close(s);
    return st;
}

duet_status_t duet_zep_create_sibling(duet_zep_t *ep, const char *bind, duet_zep_t **sib_out)
{
    if (is_wildcard(bind))
        return duet_errorf(DUET_ERR_INVALID, "node %s: refusing a wildcard bind (%s)", ep->node,
                           bind);
    duet_zep_t *sb = duet_calloc(1, sizeof(*sb));
    if (!sb)
        return duet_errorf(DUET_ERR_NOMEM, "zmq endpoint");
    duet_status_t st;
    snprintf(sb->node, sizeof(sb->node), "%s", ep->node);
    sb->ctx = ep->ctx;
    sb->maxsz = ep->maxsz;
    if (!(sb->sock = zmq_socket(ep->ctx, ZMQ_ROUTER))) {
        st = zerr("zmq_socket", ep->node);
        goto err_free;
    }
    int one = 1, zero = 0, hwm = 100000;
    if (zmq_setsockopt(sb->sock, ZMQ_ROUTING_ID, ep->node, strlen(ep->node)) ||
        zmq_setsockopt(sb->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof(one)) ||
        zmq_setsockopt(sb->sock, ZMQ_ROUTER_HANDOVER, &one, sizeof(one)) ||
        zmq_setsockopt(sb->sock, ZMQ_LINGER, &zero, sizeof(zero)) ||
        zmq_setsockopt(sb->sock, ZMQ_MAXMSGSIZE, &sb->maxsz, sizeof(sb->maxsz)) ||
        zmq_setsockopt(sb->sock, ZMQ_SNDHWM, &hwm, sizeof(hwm)) ||
        zmq_setsockopt(sb->sock, ZMQ_RCVHWM, &hwm, sizeof(hwm))) {
        st = zerr("setsockopt", ep->node);
        goto err_sock;
    }
    if (ep->has_curve && (zmq_setsockopt(sb->sock, ZMQ_CURVE_SERVER, &one, sizeof(one)) ||
                          zmq_setsockopt(sb->sock, ZMQ_CURVE_SECRETKEY, ep->curve.secret_z85, 40) ||
                          zmq_setsockopt(sb->sock, ZMQ_CURVE_PUBLICKEY, ep->curve.public_z85, 40) ||
                          zmq_setsockopt(sb->sock, ZMQ_ZAP_DOMAIN, "duet", 4))) {
        st = zerr("CURVE options", ep->node);
        goto err_sock;
    }
    if (zmq_bind(sb->sock, bind)) {
        st = duet_errorf(DUET_ERR_IO, "node %s: bind %s: %s", ep->node, bind,
                         zmq_strerror(zmq_errno()));
        goto err_sock;
    }
    size_t n = sizeof(sb->endpoint);
    if (zmq_getsockopt(sb->sock, ZMQ_LAST_ENDPOINT, sb->endpoint, &n))
        snprintf(sb->endpoint, sizeof(sb->endpoint), "%s", bind);
    *sib_out = sb;
    return DUET_OK;
err_sock:
    zmq_close(sb->sock);
err_free:
    duet_free(sb);
    return st;
}

duet_status_t duet_zep_dealer_send(void *sock, const void *data, size_t len)
{
    if (zmq_send(sock, data, len, ZMQ_DONTWAIT) >= 0)
        return DUET_OK;
    int e = zmq_errno();
    if (e == EAGAIN || e == EHOSTUNREACH)
        return DUET_ERR_AGAIN;
    return duet_errorf(DUET_ERR_IO, "direct send: %s", zmq_strerror(e));
}

void duet_zep_dealer_service(void *sock)
{
    int ev;
    size_t sz = sizeof(ev);
    if (sock)
        (void)zmq_getsockopt(sock, ZMQ_EVENTS, &ev, &sz);
}

void duet_zep_dealer_close(void **sock_p, int linger_ms)
{
    if (!sock_p || !*sock_p)
        return;
    zmq_setsockopt(*sock_p, ZMQ_LINGER, &linger_ms, sizeof(linger_ms));
    zmq_close(*sock_p);
    *sock_p = NULL;
}

const char *duet_zep_endpoint(const duet_zep_t *ep)
{
    return ep->endpoint;
}

void *duet_zep_socket(duet_zep_t *ep)
{
    return ep->sock;
}

uint64_t duet_zep_refused(duet_zep_t *ep)
{
    return atomic_load(&ep->refused);
}
