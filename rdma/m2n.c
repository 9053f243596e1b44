/* rdma/m2n — M2N / N2M rounds over any provider.
 *
 * Protocol (per sender s, receiver r, with S slots of Z bytes):
 *  - r registers one ring of S*Z bytes per sender, so a sender holds a key
 *    to its own ring only and cannot overwrite another's; round k goes to
 *    (k%S) * Z. r's info for s carries that ring's rkey; s writes round k
 *    with immediate DATA|k mod 2^30 (a 0-byte write for an empty dispatch).
 *  - r counts arrivals per slot; round k is complete with all M arrivals.
 *  - r releases rounds in order; each release sends every sender a 0-byte
 *    URGENT write with immediate CREDIT|released mod 2^30 (cumulative, so a
 *    lost-and-retried credit is harmless). s may write round k to r only
 *    while k < released_r + S: a slow receiver throttles its senders.
 * Immediates are validated against the window [released, released+S);
 * anything else is a protocol error charged to that peer.
 */
#include "rdma/rdma_int.h"

#include <stdio.h>
#include <string.h>

#define IMM_KIND_SHIFT 30
#define IMM_MASK 0x3fffffffu
#define IMM_DATA 0u
#define IMM_CREDIT 1u
#define INFO_MAGIC 0x316e326du /* "m2n1" */
#define INFO_HDR 40

typedef struct m2n_peer {
    duet_m2n_t *g;
    uint32_t idx;
    duet_rdma_conn_t *conn;
    bool connected;
    duet_status_t dead;
    /* sender side: the peer is a receiver */
    duet_rdma_rkey_t rkey;
    uint64_t released; /* rounds < released are free again at the receiver */
    uint64_t sent_hi;  /* highest round written + 1 */
    /* receiver side: the peer is a sender */
    bool credit_dirty;
    duet_rdma_mr_t *ring; /* its S slots of Z bytes here */
} m2n_peer_t;

struct duet_m2n {
    duet_m2n_params_t p;
    m2n_peer_t *peers;
    uint32_t n_peers;
    /* receiver */
    uint64_t base;       /* oldest unreleased round */
    uint8_t *arrived;    /* [slot][sender] */
    uint64_t *lens;      /* [slot][sender] */
    uint32_t *n_arrived; /* [slot] */
    /* sender */
    uint32_t inflight;
    duet_status_t send_err;
    int64_t spin_ns;
};

static void peer_fail(m2n_peer_t *pe, duet_status_t st, const char *why)
{
    if (!pe->dead) {
        pe->dead = st;
        DUET_LOG_W("rdma", "m2n group %u: %s %u failed: %s (%s)", pe->g->p.group_id,
                   pe->g->p.is_sender ? "receiver" : "sender", pe->idx, why, duet_status_str(st));
    }
}

duet_status_t duet_m2n_create(const duet_m2n_params_t *params, duet_m2n_t **m2n_out)
{
    const duet_m2n_params_t *p = params;
    if (!p || !p->ctx || !p->n_senders || !p->n_receivers || !p->slots || !m2n_out)
        return duet_errorf(DUET_ERR_INVALID, "m2n: need a context, M, N and slots >= 1");
    uint32_t mine = p->is_sender ? p->n_senders : p->n_receivers;
    if (p->rank >= mine)
        return duet_errorf(DUET_ERR_INVALID, "m2n: rank %u out of %u %s", p->rank, mine,
                           p->is_sender ? "senders" : "receivers");
    if (p->slots > IMM_MASK / 2)
        return duet_errorf(DUET_ERR_INVALID, "m2n: %u slots is too many", p->slots);
    duet_m2n_t *g = duet_calloc(1, sizeof(*g));
    if (!g)
        return duet_errorf(DUET_ERR_NOMEM, "m2n: out of memory");
    duet_status_t st;
    g->p = *p;
    g->spin_ns = p->spin_ns == 0 ? 20000 : p->spin_ns;
    g->n_peers = p->is_sender ? p->n_receivers : p->n_senders;
    g->peers = duet_calloc(g->n_peers, sizeof(*g->peers));
    if (!g->peers) {
        st = duet_errorf(DUET_ERR_NOMEM, "m2n: out of memory");
        goto err_free;
    }
    if (!p->is_sender) {
        size_t cells, bytes;
        if (duet_mul_overflow(p->n_senders, p->slots, &cells) ||
            duet_mul_overflow(p->slots, p->slot_size ? p->slot_size : 1, &bytes)) {
            st = duet_errorf(DUET_ERR_INVALID, "m2n: %u senders x %u slots x %zu bytes overflows",
                             p->n_senders, p->slots, p->slot_size);
            goto err_free;
        }
        g->arrived = duet_calloc(cells, 1);
        g->lens = duet_calloc(cells, sizeof(uint64_t));
        g->n_arrived = duet_calloc(p->slots, sizeof(uint32_t));
        if (!g->arrived || !g->lens || !g->n_arrived) {
            st = duet_errorf(DUET_ERR_NOMEM, "m2n: out of memory");
            goto err_free;
        }
    }
    for (uint32_t i = 0; i < g->n_peers; i++) {
        m2n_peer_t *pe = &g->peers[i];
        pe->g = g;
        pe->idx = i;
        if (!p->is_sender) {
            size_t ring_bytes = (size_t)p->slots * (p->slot_size ? p->slot_size : 1);
            st = duet_rdma_mr_alloc(p->ctx, ring_bytes, DUET_RDMA_ACCESS_REMOTE_WRITE, &pe->ring);
            if (st)
                goto err_conns;
        }
        st = duet_rdma_conn_create(p->ctx, (uint64_t)(uintptr_t)pe, &pe->conn);
        if (st)
            goto err_conns;
    }
    *m2n_out = g;
    return DUET_OK;

err_conns:
    for (uint32_t i = 0; i < g->n_peers; i++) {
        duet_rdma_conn_destroy(&g->peers[i].conn);
        duet_rdma_mr_dereg(&g->peers[i].ring);
    }
err_free:
    duet_free(g->arrived);
    duet_free(g->lens);
    duet_free(g->n_arrived);
    duet_free(g->peers);
    duet_free(g);
    return st;
}

void duet_m2n_destroy(duet_m2n_t **m2n_p)
{
    if (!m2n_p || !*m2n_p)
        return;
    duet_m2n_t *g = *m2n_p;
    for (uint32_t i = 0; i < g->n_peers; i++) {
        duet_rdma_conn_destroy(&g->peers[i].conn);
        duet_rdma_mr_dereg(&g->peers[i].ring);
    }
    duet_free(g->arrived);
    duet_free(g->lens);
    duet_free(g->n_arrived);
    duet_free(g->peers);
    duet_free(g);
    *m2n_p = NULL;
}

uint32_t duet_m2n_peers(const duet_m2n_t *m2n)
{
    return m2n->n_peers;
}

duet_status_t duet_m2n_info(const duet_m2n_t *g, uint32_t peer, void *buf, size_t cap,
                            size_t *len_out)
{
    if (peer >= g->n_peers)
        return duet_errorf(DUET_ERR_INVALID, "m2n: no peer %u (of %u)", peer, g->n_peers);
    uint8_t tmp[DUET_M2N_INFO_MAX] = {0};
    size_t blen = 0;
    duet_status_t st = duet_rdma_conn_blob(
        g->peers[peer].conn, tmp + INFO_HDR + DUET_RDMA_RKEY_WIRE, DUET_RDMA_BLOB_MAX, &blen);
    if (st)
        return st;
    duet__put32(tmp, INFO_MAGIC);
    tmp[4] = 1;
    tmp[5] = g->p.is_sender ? 1 : 2;
    duet__put16(tmp + 6, (uint16_t)blen);
    duet__put32(tmp + 8, g->p.group_id);
    duet__put32(tmp + 12, g->p.rank);
    duet__put32(tmp + 16, g->p.n_senders);
    duet__put32(tmp + 20, g->p.n_receivers);
    duet__put32(tmp + 24, g->p.slots);
    duet__put32(tmp + 28, 0);
    duet__put64(tmp + 32, g->p.slot_size);
    if (g->peers[peer].ring) {
        duet_rdma_rkey_t k = duet_rdma_mr_rkey(g->peers[peer].ring);
        duet_rdma_rkey_pack(&k, tmp + INFO_HDR);
    }
    size_t len = INFO_HDR + DUET_RDMA_RKEY_WIRE + blen;
    if (len > cap)
        return duet_errorf(DUET_ERR_RANGE, "m2n: info needs %zu bytes, buffer has %zu", len, cap);
    memcpy(buf, tmp, len);
    *len_out = len;
    return DUET_OK;
}

duet_status_t duet__m2n_info_decode(const duet_m2n_params_t *me, uint32_t peer, const void *info,
                                    size_t len, duet_rdma_rkey_t *rkey, const uint8_t **blob,
                                    size_t *blob_len)
{
    const uint8_t *p = info;
    if (!info || len < INFO_HDR + DUET_RDMA_RKEY_WIRE)
        return duet_errorf(DUET_ERR_INVALID, "m2n: info of %zu bytes is too short", len);
    if (duet__get32(p) != INFO_MAGIC || p[4] != 1)
        return duet_errorf(DUET_ERR_INVALID, "m2n: info: bad magic or version (bytes 0..4)");
    if (p[5] != (me->is_sender ? 2 : 1))
        return duet_errorf(DUET_ERR_INVALID, "m2n: info is from a %s, expected a %s (byte 5)",
                           p[5] == 1   ? "sender"
                           : p[5] == 2 ? "receiver"
                                       : "stranger",
                           me->is_sender ? "receiver" : "sender");
    size_t blen = duet__get16(p + 6);
    if (blen > DUET_RDMA_BLOB_MAX || INFO_HDR + DUET_RDMA_RKEY_WIRE + blen != len)
        return duet_errorf(DUET_ERR_INVALID, "m2n: info: blob length %zu does not match %zu bytes",
                           blen, len);
    if (duet__get32(p + 8) != me->group_id || duet__get32(p + 12) != peer ||
        duet__get32(p + 16) != me->n_senders || duet__get32(p + 20) != me->n_receivers ||
        duet__get32(p + 24) != me->slots || duet__get32(p + 28) != 0 ||
        duet__get64(p + 32) != me->slot_size)
        return duet_errorf(DUET_ERR_INVALID,
                           "m2n: info from peer %u disagrees on group/rank/M/N/slots/slot size "
                           "(got group %u rank %u, %ux%u, %u slots of %llu bytes)",
                           peer, duet__get32(p + 8), duet__get32(p + 12), duet__get32(p + 16),
                           duet__get32(p + 20), duet__get32(p + 24),
                           (unsigned long long)duet__get64(p + 32));
    duet_rdma_rkey_t k = {0};
    if (me->is_sender) {
        duet_status_t st = duet_rdma_rkey_unpack(p + INFO_HDR, DUET_RDMA_RKEY_WIRE, &k);
        if (st)
            return duet_error_wrap(st, "m2n: info from receiver %u", peer);
        uint64_t need = (uint64_t)me->slots * me->slot_size;
        if (k.len < need)
            return duet_errorf(DUET_ERR_INVALID,
                               "m2n: receiver %u's region of %llu bytes is "
                               "smaller than the %llu this sender needs",
                               peer, (unsigned long long)k.len, (unsigned long long)need);
    }
    *rkey = k;
    *blob = p + INFO_HDR + DUET_RDMA_RKEY_WIRE;
    *blob_len = blen;
    return DUET_OK;
}

duet_status_t duet_m2n_connect(duet_m2n_t *g, uint32_t peer, const void *info, size_t len)
{
    if (peer >= g->n_peers)
        return duet_errorf(DUET_ERR_INVALID, "m2n: no peer %u (of %u)", peer, g->n_peers);
    m2n_peer_t *pe = &g->peers[peer];
    const uint8_t *blob;
    size_t blen;
    duet_status_t st = duet__m2n_info_decode(&g->p, peer, info, len, &pe->rkey, &blob, &blen);
    if (st)
        return st;
    st = duet_rdma_conn_connect(pe->conn, blob, blen);
    if (st)
        return duet_error_wrap(st, "m2n: connecting to peer %u", peer);
    pe->connected = true;
    return DUET_OK;
}

static void flush_credits(duet_m2n_t *g)
{
    for (uint32_t i = 0; !g->p.is_sender && i < g->n_peers; i++) {
        m2n_peer_t *pe = &g->peers[i];
        if (!pe->credit_dirty || pe->dead)
            continue;
        uint32_t imm = (IMM_CREDIT << IMM_KIND_SHIFT) | (uint32_t)(g->base & IMM_MASK);
        duet_status_t st =
            duet_rdma_write(pe->conn, NULL, 0, NULL, 0, 0, imm, DUET_RDMA_WRITE_URGENT, g->base);
        if (st == DUET_OK)
            pe->credit_dirty = false;
        else if (st != DUET_ERR_AGAIN)
            peer_fail(pe, st, "returning a credit");
    }
}

static void on_recv(m2n_peer_t *pe, const duet_rdma_cqe_t *e)
{
    duet_m2n_t *g = pe->g;
    uint32_t kind = e->imm >> IMM_KIND_SHIFT, tag = e->imm & IMM_MASK;
    if (g->p.is_sender) {
        if (kind != IMM_CREDIT) {
            peer_fail(pe, DUET_ERR_PROTOCOL, "sent data to a sender");
            return;
        }
        uint64_t rel = pe->released + ((tag - (uint32_t)pe->released) & IMM_MASK);
        if (rel > pe->sent_hi) {
            peer_fail(pe, DUET_ERR_PROTOCOL, "released rounds it never got");
            return;
        }
        pe->released = rel;
        return;
    }
    if (kind != IMM_DATA) {
        peer_fail(pe, DUET_ERR_PROTOCOL, "sent a credit to a receiver");
        return;
    }
    uint64_t r = g->base + ((tag - (uint32_t)g->base) & IMM_MASK);
    if (r >= g->base + g->p.slots || e->len > g->p.slot_size) {
        peer_fail(pe, DUET_ERR_PROTOCOL, "wrote outside its credit window or slot");
        return;
    }
    size_t cell = (size_t)(r % g->p.slots) * g->p.n_senders + pe->idx;
    if (g->arrived[cell]) {
        peer_fail(pe, DUET_ERR_PROTOCOL, "wrote the same round twice");
        return;
    }
    g->arrived[cell] = 1;
    g->lens[cell] = e->len;
    g->n_arrived[r % g->p.slots]++;
}

/* Handle what is ready; *handled counts completions. */
static duet_status_t progress(duet_m2n_t *g, int *handled)
{
    duet_rdma_cqe_t e[64];
    int n;
    flush_credits(g);
    while ((n = duet_rdma_poll(g->p.ctx, e, (int)DUET_ARRAY_LEN(e))) > 0) {
        *handled += n;
        for (int i = 0; i < n; i++) {
            m2n_peer_t *pe = (m2n_peer_t *)(uintptr_t)e[i].conn_user;
            if (!pe)
                continue;
            if (e[i].kind == DUET_RDMA_CQE_RECV) {
                on_recv(pe, &e[i]);
                continue;
            }
            if ((e[i].imm >> IMM_KIND_SHIFT) == IMM_DATA && pe->g->p.is_sender) {
                pe->g->inflight--;
                if (e[i].status && !pe->g->send_err)
                    pe->g->send_err = duet_errorf(e[i].status, "m2n: round %llu to receiver %u: %s",
                                                  (unsigned long long)e[i].wr_id, pe->idx,
                                                  duet_status_str(e[i].status));
            }
            if (e[i].status)
                peer_fail(pe, e[i].status, "a write failed");
        }
        if (n < (int)DUET_ARRAY_LEN(e))
            break;
    }
    if (n < 0)
        return (duet_status_t)n;
    flush_credits(g);
    return DUET_OK;
}

duet_status_t duet_m2n_progress(duet_m2n_t *g)
{
    int handled = 0;
    return progress(g, &handled);
}

/* Wait for something to happen, until `deadline` (0 = forever). Polls for
 * up to spin_ns first: the writes of one round arrive close together, and
 * a sleep/wake-up per arrival costs a scheduling delay each time on a busy
 * host. */
static duet_status_t wait_until(duet_m2n_t *g, uint64_t deadline)
{
    if (g->spin_ns > 0) {
        uint64_t end = duet_now_ns() + (uint64_t)g->spin_ns;
        do {
            int handled = 0;
            duet_status_t st = progress(g, &handled);
            if (st || handled)
                return st;
        } while (duet_now_ns() < end);
    }
    int64_t left = -1;
    if (deadline) {
        uint64_t now = duet_now_ns();
        if (now >= deadline)
            return DUET_ERR_TIMEOUT;
        left = (int64_t)(deadline - now);
    }
    duet_status_t st = duet_rdma_wait(g->p.ctx, left < 0 || left > 50000000 ? 50000000 : left);
    return st == DUET_ERR_TIMEOUT ? DUET_OK : st;
}

static uint64_t deadline_of(int64_t timeout_ns)
{
    return timeout_ns < 0 ? 0 : duet_now_ns() + (uint64_t)timeout_ns;
}

duet_status_t duet_m2n_send(duet_m2n_t *g, uint64_t round, uint32_t dst, const duet_rdma_mr_t *src,
                            size_t src_off, size_t len, int64_t timeout_ns)
{
    if (!g->p.is_sender)
        return duet_errorf(DUET_ERR_INVALID, "m2n: send on a receiver");
    if (dst >= g->n_peers)
        return duet_errorf(DUET_ERR_INVALID, "m2n: no receiver %u (of %u)", dst, g->n_peers);
    if (len > g->p.slot_size)
        return duet_errorf(DUET_ERR_RANGE, "m2n: %zu bytes exceed the %zu-byte slot", len,
                           g->p.slot_size);
    m2n_peer_t *pe = &g->peers[dst];
    if (!pe->connected)
        return duet_errorf(DUET_ERR_INVALID, "m2n: receiver %u is not connected", dst);
    if (round < pe->released)
        return duet_errorf(DUET_ERR_INVALID, "m2n: round %llu was already released by receiver %u",
                           (unsigned long long)round, dst);
    uint64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        if (pe->dead)
            return duet_errorf(pe->dead, "m2n: receiver %u is down", dst);
        if (round < pe->released + g->p.slots) {
            uint64_t off = (round % g->p.slots) * g->p.slot_size;
            uint32_t imm = (IMM_DATA << IMM_KIND_SHIFT) | (uint32_t)(round & IMM_MASK);
            duet_status_t st =
                duet_rdma_write(pe->conn, src, src_off, &pe->rkey, off, len, imm, 0, round);
            if (st == DUET_OK) {
                g->inflight++;
                if (round + 1 > pe->sent_hi)
                    pe->sent_hi = round + 1;
                return DUET_OK;
            }
            if (st != DUET_ERR_AGAIN)
                return st;
        }
        if (timeout_ns == 0)
            return duet_errorf(DUET_ERR_AGAIN, "m2n: no credit from receiver %u for round %llu",
                               dst, (unsigned long long)round);
        duet_status_t st = duet_m2n_progress(g);
        if (st)
            return st;
        if (pe->dead || round < pe->released + g->p.slots)
            continue;
        st = wait_until(g, deadline);
        if (st == DUET_ERR_TIMEOUT)
            return duet_errorf(DUET_ERR_TIMEOUT,
                               "m2n: no credit from receiver %u for round %llu (it released "
                               "rounds < %llu)",
                               dst, (unsigned long long)round, (unsigned long long)pe->released);
        if (st)
            return st;
    }
}

duet_status_t duet_m2n_flush(duet_m2n_t *g, int64_t timeout_ns)
{
    uint64_t deadline = deadline_of(timeout_ns);
    for (;;) {
        duet_status_t st = duet_m2n_progress(g);
        if (st)
            return st;
        if (g->inflight == 0)
            break;
        st = wait_until(g, deadline);
        if (st == DUET_ERR_TIMEOUT)
            return duet_errorf(DUET_ERR_TIMEOUT, "m2n: %u writes still in flight", g->inflight);
        if (st)
            return st;
    }
    duet_status_t err = g->send_err;
    g->send_err = DUET_OK;
    return err;
}

static bool in_window(const duet_m2n_t *g, uint64_t round)
{
    return round >= g->base && round < g->base + g->p.slots;
}

size_t duet_m2n_missing(const duet_m2n_t *g, uint64_t round, uint32_t *ranks, size_t cap)
{
    if (g->p.is_sender || !in_window(g, round))
        return 0;
    size_t n = 0;
    const uint8_t *a = g->arrived + (size_t)(round % g->p.slots) * g->p.n_senders;
    for (uint32_t s = 0; s < g->p.n_senders; s++)
        if (!a[s]) {
            if (n < cap)
                ranks[n] = s;
            n++;
        }
    return n;
}

static duet_status_t missing_error(duet_m2n_t *g, uint64_t round, duet_status_t st,
                                   const char *what)
{
    char list[256];
    size_t off = 0;
    list[0] = 0;
    const uint8_t *a = g->arrived + (size_t)(round % g->p.slots) * g->p.n_senders;
    for (uint32_t s = 0; s < g->p.n_senders && off < sizeof(list) - 16; s++)
        if (!a[s])
            off += (size_t)snprintf(list + off, sizeof(list) - off, "%s%u%s", off ? ", " : "", s,
                                    g->peers[s].dead ? " (down)" : "");
    return duet_errorf(st, "m2n: round %llu at receiver %u %s; missing senders: %s",
                       (unsigned long long)round, g->p.rank, what, list);
}

duet_status_t duet_m2n_recv(duet_m2n_t *g, uint64_t round, int64_t timeout_ns)
{
    if (g->p.is_sender)
        return duet_errorf(DUET_ERR_INVALID, "m2n: recv on a sender");
    if (!in_window(g, round))
        return duet_errorf(DUET_ERR_INVALID, "m2n: round %llu is outside [%llu, %llu)",
                           (unsigned long long)round, (unsigned long long)g->base,
                           (unsigned long long)(g->base + g->p.slots));
    uint64_t deadline = deadline_of(timeout_ns);
    uint64_t last_probe = duet_now_ns();
    uint32_t slot = (uint32_t)(round % g->p.slots);
    for (;;) {
        duet_status_t st = duet_m2n_progress(g);
        if (st)
            return st;
        if (g->n_arrived[slot] == g->p.n_senders)
            return DUET_OK;
        /* A missing sender whose connection died will never deliver: once
         * every live sender has, the round is as complete as it gets. A
         * receiver only learns that an RC peer died by writing to it, so
         * while waiting it re-sends its (idempotent) credit as a probe. */
        const uint8_t *a = g->arrived + (size_t)slot * g->p.n_senders;
        bool down = false, alive_missing = false;
        bool probe = duet_now_ns() - last_probe > 100000000ull;
        if (probe)
            last_probe = duet_now_ns();
        for (uint32_t s = 0; s < g->p.n_senders; s++) {
            m2n_peer_t *pe = &g->peers[s];
            if (a[s])
                continue;
            if (!pe->dead && pe->connected) {
                duet_status_t cs = duet_rdma_conn_status(pe->conn);
                if (cs != DUET_OK && cs != DUET_ERR_AGAIN)
                    peer_fail(pe, cs, "connection lost");
                else if (probe)
                    pe->credit_dirty = true;
            }
            down |= pe->dead != DUET_OK;
            alive_missing |= pe->dead == DUET_OK;
        }
        if (down && !alive_missing)
            return missing_error(g, round, DUET_ERR_CLOSED, "cannot complete");
        if (timeout_ns == 0)
            return missing_error(g, round, DUET_ERR_AGAIN, "is not complete");
        st = wait_until(g, deadline);
        if (st == DUET_ERR_TIMEOUT)
            return missing_error(g, round, DUET_ERR_TIMEOUT, "timed out");
        if (st)
            return st;
    }
}

duet_status_t duet_m2n_data(const duet_m2n_t *g, uint64_t round, uint32_t src,
                            const void **data_out, size_t *len_out)
{
    if (g->p.is_sender || !in_window(g, round) || src >= g->p.n_senders)
        return duet_errorf(DUET_ERR_INVALID, "m2n: no data for round %llu from sender %u",
                           (unsigned long long)round, src);
    size_t cell = (size_t)(round % g->p.slots) * g->p.n_senders + src;
    if (!g->arrived[cell])
        return duet_errorf(DUET_ERR_AGAIN, "m2n: sender %u's round %llu has not arrived", src,
                           (unsigned long long)round);
    *data_out = (const uint8_t *)duet_rdma_mr_ptr(g->peers[src].ring) +
                (size_t)(round % g->p.slots) * g->p.slot_size;
    *len_out = (size_t)g->lens[cell];
    return DUET_OK;
}

duet_status_t duet_m2n_release(duet_m2n_t *g, uint64_t round)
{
    if (g->p.is_sender)
        return duet_errorf(DUET_ERR_INVALID, "m2n: release on a sender");
    if (round != g->base)
        return duet_errorf(DUET_ERR_INVALID, "m2n: release round %llu out of order (next is %llu)",
                           (unsigned long long)round, (unsigned long long)g->base);
    uint32_t slot = (uint32_t)(round % g->p.slots);
    uint8_t *a = g->arrived + (size_t)slot * g->p.n_senders;
    for (uint32_t s = 0; s < g->p.n_senders; s++)
        if (!a[s] && !g->peers[s].dead)
            return missing_error(g, round, DUET_ERR_INVALID, "cannot be released (incomplete)");
    memset(a, 0, g->p.n_senders);
    g->n_arrived[slot] = 0;
    g->base++;
    for (uint32_t s = 0; s < g->n_peers; s++)
        g->peers[s].credit_dirty = true;
    flush_credits(g);
    return DUET_OK;
}

void duet_m2n_usage(const duet_m2n_t *g, duet_m2n_usage_t *out)
{
    memset(out, 0, sizeof(*out));
    if (!g)
        return;
    if (g->p.is_sender) {
        out->inflight = g->inflight;
        for (uint32_t d = 0; d < g->n_peers; d++)
            if (g->peers[d].sent_hi > g->peers[d].released)
                out->credits_out += g->peers[d].sent_hi - g->peers[d].released;
        return;
    }
    for (uint32_t k = 0; k < g->p.slots; k++)
        out->slots_held += g->n_arrived[k];
}
