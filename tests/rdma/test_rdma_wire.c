/* Untrusted bytes of the data plane: tcp frame headers, the tcp receive
 * state machine (payload placed in registered memory only after its key and
 * bounds are checked), connection blobs and rkeys. */
#include "rdma/rdma_int.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

static uint8_t region[1000];
static int frames;
static duet__tcp_hdr_t last;
static duet_status_t last_st;

static duet_status_t resolve(void *arg, uint64_t key, uint64_t off, uint32_t len, uint8_t **out)
{
    if (key != 7)
        return DUET_ERR_NOT_FOUND;
    if (off > sizeof(region) || len > sizeof(region) - off)
        return DUET_ERR_RANGE;
    *out = region + off;
    return DUET_OK;
}

static duet_status_t frame(void *arg, const duet__tcp_hdr_t *h, duet_status_t st)
{
    frames++;
    last = *h;
    last_st = st;
    return DUET_OK;
}

static const duet__tcp_rx_cb_t cb = {resolve, frame, NULL};

/* Feed bytes in pieces of `step` through want/got, as the socket loop does. */
static duet_status_t feed(duet__tcp_rx_t *rx, const uint8_t *p, size_t n, size_t step)
{
    while (n) {
        uint8_t *dst;
        size_t max;
        duet__tcp_rx_want(rx, &dst, &max);
        size_t k = DUET_MIN(DUET_MIN(max, step), n);
        memcpy(dst, p, k);
        duet_status_t st = duet__tcp_rx_got(rx, k, &cb);
        if (st)
            return st;
        p += k;
        n -= k;
    }
    return DUET_OK;
}

static size_t put_frame(uint8_t *out, duet__tcp_hdr_t h, const void *payload)
{
    duet__tcp_hdr_encode(&h, out);
    if (payload)
        memcpy(out + DUET__TCP_HDR, payload, h.len);
    return DUET__TCP_HDR + h.len;
}

static void test_hdr_roundtrip(void **state)
{
    duet__tcp_hdr_t h = {.type = DUET__TCP_WRITE,
                         .flags = DUET__TCP_F_LAST,
                         .seq = 99,
                         .key = 7,
                         .off = 10,
                         .len = 20,
                         .imm = 0xdeadbeef,
                         .total = 20},
                    g;
    uint8_t b[DUET__TCP_HDR];
    duet__tcp_hdr_encode(&h, b);
    assert_int_equal(duet__tcp_hdr_decode(b, &g), DUET_OK);
    assert_int_equal(g.type, h.type);
    assert_int_equal(g.flags, h.flags);
    assert_int_equal(g.seq, h.seq);
    assert_int_equal(g.key, h.key);
    assert_int_equal(g.off, h.off);
    assert_int_equal(g.len, h.len);
    assert_int_equal(g.imm, h.imm);
    assert_int_equal(g.total, h.total);
    uint8_t c[DUET__TCP_HDR];
    memcpy(c, b, sizeof(c));
    c[0] ^= 1;
    assert_int_equal(duet__tcp_hdr_decode(c, &g), DUET_ERR_PROTOCOL);
    memcpy(c, b, sizeof(c));
    c[5] = 9; /* type */
    assert_int_equal(duet__tcp_hdr_decode(c, &g), DUET_ERR_PROTOCOL);
    memcpy(c, b, sizeof(c));
    c[6] = 0x80; /* flags */
    assert_int_equal(duet__tcp_hdr_decode(c, &g), DUET_ERR_PROTOCOL);
    h.len = DUET__TCP_CHUNK + 1;
    h.total = h.len;
    duet__tcp_hdr_encode(&h, c);
    assert_int_equal(duet__tcp_hdr_decode(c, &g), DUET_ERR_PROTOCOL);
    h.len = 20;
    h.total = 40;
    h.off = 5; /* would start before offset 0 */
    duet__tcp_hdr_encode(&h, c);
    assert_int_equal(duet__tcp_hdr_decode(c, &g), DUET_ERR_PROTOCOL);
    duet__tcp_hdr_t a = {.type = DUET__TCP_ACK, .seq = 1, .imm = 5}; /* positive status */
    duet__tcp_hdr_encode(&a, c);
    assert_int_equal(duet__tcp_hdr_decode(c, &g), DUET_ERR_PROTOCOL);
}

static void test_rx_stream(void **state)
{
    uint8_t buf[4096], payload[300];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 7 + 1);
    for (size_t step = 1; step <= 4096; step = step * 3 + 1) {
        duet__tcp_rx_t rx = {0};
        memset(region, 0, sizeof(region));
        frames = 0;
        size_t n = 0;
        n += put_frame(buf + n, (duet__tcp_hdr_t){.type = DUET__TCP_HELLO, .key = 1}, NULL);
        /* a 300-byte write in two chunks at offset 100 */
        n += put_frame(buf + n,
                       (duet__tcp_hdr_t){.type = DUET__TCP_WRITE,
                                         .seq = 1,
                                         .key = 7,
                                         .off = 100,
                                         .len = 200,
                                         .imm = 5,
                                         .total = 300},
                       payload);
        n += put_frame(buf + n,
                       (duet__tcp_hdr_t){.type = DUET__TCP_WRITE,
                                         .flags = 1,
                                         .seq = 1,
                                         .key = 7,
                                         .off = 300,
                                         .len = 100,
                                         .imm = 5,
                                         .total = 300},
                       payload + 200);
        assert_int_equal(feed(&rx, buf, n, step), DUET_OK);
        assert_int_equal(frames, 2); /* HELLO + the write's LAST chunk */
        assert_int_equal(last_st, DUET_OK);
        assert_int_equal(last.imm, 5);
        assert_int_equal(last.total, 300);
        assert_memory_equal(region + 100, payload, 300);
        assert_int_equal(region[99], 0);
        assert_int_equal(region[400], 0);
        /* bad key and out of bounds: payload discarded, status reported */
        n = put_frame(buf,
                      (duet__tcp_hdr_t){.type = DUET__TCP_WRITE,
                                        .flags = 1,
                                        .seq = 2,
                                        .key = 8,
                                        .off = 0,
                                        .len = 50,
                                        .total = 50},
                      payload);
        assert_int_equal(feed(&rx, buf, n, step), DUET_OK);
        assert_int_equal(last_st, DUET_ERR_NOT_FOUND);
        n = put_frame(buf,
                      (duet__tcp_hdr_t){.type = DUET__TCP_WRITE,
                                        .flags = 1,
                                        .seq = 3,
                                        .key = 7,
                                        .off = 990,
                                        .len = 50,
                                        .total = 50},
                      payload);
        assert_int_equal(feed(&rx, buf, n, step), DUET_OK);
        assert_int_equal(last_st, DUET_ERR_RANGE);
        assert_int_equal(region[990], 0);
        /* the stream is still in sync: a good write lands */
        n = put_frame(buf,
                      (duet__tcp_hdr_t){.type = DUET__TCP_WRITE,
                                        .flags = 1,
                                        .seq = 4,
                                        .key = 7,
                                        .off = 0,
                                        .len = 10,
                                        .imm = 9,
                                        .total = 10},
                      payload);
        assert_int_equal(feed(&rx, buf, n, step), DUET_OK);
        assert_int_equal(last_st, DUET_OK);
        assert_int_equal(last.imm, 9);
        assert_memory_equal(region, payload, 10);
    }
}

static void test_rx_protocol_errors(void **state)
{
    uint8_t buf[256];
    duet__tcp_rx_t rx = {0};
    /* WRITE before HELLO */
    size_t n = put_frame(
        buf, (duet__tcp_hdr_t){.type = DUET__TCP_WRITE, .flags = 1, .key = 7, .len = 0, .total = 0},
        NULL);
    assert_int_equal(feed(&rx, buf, n, 100), DUET_ERR_PROTOCOL);
    /* two HELLOs */
    memset(&rx, 0, sizeof(rx));
    n = put_frame(buf, (duet__tcp_hdr_t){.type = DUET__TCP_HELLO}, NULL);
    n += put_frame(buf + n, (duet__tcp_hdr_t){.type = DUET__TCP_HELLO}, NULL);
    assert_int_equal(feed(&rx, buf, n, 100), DUET_ERR_PROTOCOL);
    /* an ACK on a write stream */
    memset(&rx, 0, sizeof(rx));
    n = put_frame(buf, (duet__tcp_hdr_t){.type = DUET__TCP_HELLO}, NULL);
    n += put_frame(buf + n, (duet__tcp_hdr_t){.type = DUET__TCP_ACK}, NULL);
    assert_int_equal(feed(&rx, buf, n, 100), DUET_ERR_PROTOCOL);
}

static void test_blobs(void **state)
{
    uint8_t b[64] = {0};
    int pid;
    uint64_t nonce, sim_id, token;
    uint32_t id, ctx_id, addr;
    uint16_t port;
    assert_int_equal(duet__shm_blob_decode(b, 24, &pid, &nonce, &id), DUET_ERR_INVALID);
    duet__blob_header(b, DUET__PROV_SHM, 24);
    duet__put32(b + 8, 1234);
    assert_int_equal(duet__shm_blob_decode(b, 24, &pid, &nonce, &id), DUET_OK);
    assert_int_equal(pid, 1234);
    assert_int_equal(duet__shm_blob_decode(b, 23, &pid, &nonce, &id), DUET_ERR_INVALID);
    assert_int_equal(duet__tcp_blob_decode(b, 24, &addr, &port, &token, &id), DUET_ERR_INVALID);
    assert_int_equal(duet__sim_blob_decode(b, 24, &sim_id, &ctx_id, &id), DUET_ERR_INVALID);
    duet__put32(b + 8, 0); /* pid 0 */
    assert_int_equal(duet__shm_blob_decode(b, 24, &pid, &nonce, &id), DUET_ERR_INVALID);
    memset(b, 0, sizeof(b));
    duet__blob_header(b, DUET__PROV_TCP, 36);
    assert_int_equal(duet__tcp_blob_decode(b, 36, &addr, &port, &token, &id), DUET_ERR_INVALID);
    duet__put32(b + 8, 0x7f000001);
    duet__put16(b + 12, 5000);
    assert_int_equal(duet__tcp_blob_decode(b, 36, &addr, &port, &token, &id), DUET_OK);
    assert_int_equal(port, 5000);
    b[30] = 1; /* reserved */
    assert_int_equal(duet__tcp_blob_decode(b, 36, &addr, &port, &token, &id), DUET_ERR_INVALID);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_hdr_roundtrip),
        cmocka_unit_test(test_rx_stream),
        cmocka_unit_test(test_rx_protocol_errors),
        cmocka_unit_test(test_blobs),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
