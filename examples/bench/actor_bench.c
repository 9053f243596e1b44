/* actor_bench — actor-to-actor messages/s and round-trip latency (p50/p99)
 * for small messages over inproc, ipc and tcp, each next to raw ZeroMQ
 * ROUTER-to-ROUTER sockets measured in the same run, and the simulated
 * network's messages/s. Prints numbers; asserts nothing.
 *
 *   actor_bench [N_messages=200000] [N_roundtrips=5000] */
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "actors/actors.h"

typedef struct bm {
    uint64_t n;
    uint64_t t;
} bm_t;
static const duet_field_t bm_fields[] = {
    DUET_FIELD(bm_t, n, DUET_F_U64),
    DUET_FIELD(bm_t, t, DUET_F_U64),
};
DUET_MSG_DEFINE(bm_msg, 0xe10, "bench.msg", bm_t, bm_fields)

static uint64_t N = 200000, RT = 5000;

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* ---- raw zmq ---------------------------------------------------------------- */

typedef struct raw_rx {
    void *sock;
    uint64_t n;
    bool echo;
} raw_rx_t;

static void *raw_rx_main(void *arg)
{
    raw_rx_t *r = arg;
    char id[64], buf[64];
    for (uint64_t i = 0; i < r->n; i++) {
        int k = zmq_recv(r->sock, id, sizeof(id), 0);
        int m = zmq_recv(r->sock, buf, sizeof(buf), 0);
        if (r->echo) {
            zmq_send(r->sock, id, (size_t)k, ZMQ_SNDMORE);
            zmq_send(r->sock, buf, (size_t)m, 0);
        }
    }
    return NULL;
}

static void raw_pair(void *ctx, const char *addr, void **a, void **b)
{
    int one = 1, hwm = 100000;
    *a = zmq_socket(ctx, ZMQ_ROUTER);
    *b = zmq_socket(ctx, ZMQ_ROUTER);
    zmq_setsockopt(*a, ZMQ_ROUTING_ID, "a", 1);
    zmq_setsockopt(*b, ZMQ_ROUTING_ID, "b", 1);
    for (int i = 0; i < 2; i++) {
        void *s = i ? *b : *a;
        zmq_setsockopt(s, ZMQ_ROUTER_MANDATORY, &one, sizeof(one));
        zmq_setsockopt(s, ZMQ_SNDHWM, &hwm, sizeof(hwm));
        zmq_setsockopt(s, ZMQ_RCVHWM, &hwm, sizeof(hwm));
    }
    zmq_bind(*b, addr);
    char ep[256];
    size_t epn = sizeof(ep);
    zmq_getsockopt(*b, ZMQ_LAST_ENDPOINT, ep, &epn);
    zmq_setsockopt(*a, ZMQ_CONNECT_ROUTING_ID, "b", 1);
    zmq_connect(*a, ep);
    while (zmq_send(*a, "b", 1, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0)
        usleep(1000);
    zmq_send(*a, "warm", 4, 0);
    char buf[16];
    zmq_recv(*b, buf, sizeof(buf), 0);
    zmq_recv(*b, buf, sizeof(buf), 0);
}

static void raw_bench(const char *tr, const char *addr, double *mps, double *p50, double *p99)
{
    void *ctx = zmq_ctx_new();
    void *a, *b;
    raw_pair(ctx, addr, &a, &b);
    char msg[16] = "0123456789abcdef";
    raw_rx_t rx = {b, N, false};
    pthread_t th;
    uint64_t t0 = duet_now_ns();
    pthread_create(&th, NULL, raw_rx_main, &rx);
    for (uint64_t i = 0; i < N; i++) {
        while (zmq_send(a, "b", 1, ZMQ_SNDMORE) < 0)
            ;
        zmq_send(a, msg, sizeof(msg), 0);
    }
    pthread_join(th, NULL);
    *mps = N / ((duet_now_ns() - t0) / 1e9);
    rx.n = RT;
    rx.echo = true;
    pthread_create(&th, NULL, raw_rx_main, &rx);
    uint64_t *lat = calloc(RT, sizeof(uint64_t));
    char buf[64];
    for (uint64_t i = 0; i < RT; i++) {
        uint64_t s = duet_now_ns();
        zmq_send(a, "b", 1, ZMQ_SNDMORE);
        zmq_send(a, msg, sizeof(msg), 0);
        zmq_recv(a, buf, sizeof(buf), 0);
        zmq_recv(a, buf, sizeof(buf), 0);
        lat[i] = duet_now_ns() - s;
    }
    pthread_join(th, NULL);
    qsort(lat, RT, sizeof(uint64_t), cmp_u64);
    *p50 = lat[RT / 2] / 1e3;
    *p99 = lat[RT * 99 / 100] / 1e3;
    free(lat);
    zmq_close(a);
    zmq_close(b);
    zmq_ctx_term(ctx);
    (void)tr;
}

/* ---- actors ------------------------------------------------------------------- */

typedef struct tx {
    uint64_t sent;
    atomic_uint_fast64_t got;
    uint64_t *lat;
    uint64_t rt_i;
    atomic_int rt_done;
    int mode; /* 0 throughput, 1 round trips */
} tx_t;

static duet_status_t tx_pump(duet_actor_t *self, tx_t *t)
{
    while (t->sent < N) {
        bm_t m = {t->sent, 0};
        duet_status_t st = duet_send(self, "rx", &bm_msg, &m);
        if (st == DUET_ERR_AGAIN)
            return DUET_OK;
        if (st)
            return st;
        t->sent++;
    }
    return DUET_OK;
}

static duet_status_t tx_start(duet_actor_t *self, void *arg, void **st)
{
    tx_t *t = arg;
    *st = t;
    if (t->mode == 0)
        return tx_pump(self, t);
    bm_t m = {0, duet_now_ns()};
    return duet_send(self, "rx", &bm_msg, &m);
}

static duet_status_t tx_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    tx_t *t = state;
    if (duet_msg_body(msg, &duet_msg_sys_writable))
        return tx_pump(self, t);
    const bm_t *r = bm_msg_body(msg);
    if (r && t->mode == 1) {
        t->lat[t->rt_i++] = duet_now_ns() - r->t;
        if (t->rt_i == RT) {
            atomic_store(&t->rt_done, 1);
            return DUET_OK;
        }
        bm_t m = {t->rt_i, duet_now_ns()};
        return duet_send(self, "rx", &bm_msg, &m);
    }
    return DUET_OK;
}
static const duet_actor_ops_t tx_ops = {"tx", tx_start, tx_handle, NULL};

static duet_status_t rx_handle(duet_actor_t *self, void *state, const duet_msg_t *msg)
{
    tx_t *t = state;
    const bm_t *r = bm_msg_body(msg);
    if (!r)
        return DUET_OK;
    atomic_fetch_add(&t->got, 1);
    if (r->t) /* round-trip mode: echo */
        return duet_send(self, msg->env.from, &bm_msg, r);
    return DUET_OK;
}
static duet_status_t rx_start(duet_actor_t *self, void *arg, void **st)
{
    *st = arg;
    return DUET_OK;
}
static const duet_actor_ops_t rx_ops = {"rx", rx_start, rx_handle, NULL};

static void actor_bench(int tr, const char *addr_a, const char *addr_b, double *mps, double *p50,
                        double *p99)
{
    duet_registry_t *reg;
    duet_registry_create(&reg);
    duet_simnet_t *sim = NULL;
    void *ctx = NULL;
    if (tr == 3) {
        duet_simnet_config_t sc = {.seed = 1, .latency_min_ns = 1000, .latency_max_ns = 5000};
        duet_simnet_create(&sc, &sim);
    } else if (tr == 0) {
        ctx = zmq_ctx_new();
    }
    duet_registry_add_node(reg, "a", addr_a, NULL);
    duet_registry_add_node(reg, "b", addr_b, NULL);
    duet_registry_add_actor(reg, "rx", "b");
    duet_registry_add_actor(reg, "tx", "a");
    duet_node_config_t ca = {.name = "a",
                             .registry = reg,
                             .bind = addr_a,
                             .sim = sim,
                             .zmq_ctx = ctx,
                             .heartbeat_ms = 1000,
                             .heartbeat_misses = 100};
    duet_node_config_t cb = ca;
    cb.name = "b";
    cb.bind = addr_b;
    duet_node_t *a, *b;
    if (duet_node_create(&cb, &b) || duet_node_create(&ca, &a)) {
        fprintf(stderr, "%s\n", duet_error());
        exit(1);
    }
    tx_t t = {0};
    t.lat = calloc(RT, sizeof(uint64_t));
    duet_spawn_opts_t th = {.mode = DUET_RUN_THREAD};
    duet_spawn(b, "rx", &rx_ops, &t, &th);
    uint64_t t0 = duet_now_ns();
    duet_spawn(a, "tx", &tx_ops, &t, &th);
    while (atomic_load(&t.got) < N) {
        if (sim)
            duet_simnet_run(sim, UINT64_MAX, 100000);
        else
            usleep(200);
    }
    *mps = N / ((duet_now_ns() - t0) / 1e9);
    duet_stop(a, "tx", "normal");
    while (duet_node_has_actor(a, "tx")) {
        if (sim)
            duet_simnet_run(sim, UINT64_MAX, 1000);
        else
            usleep(200);
    }
    t.mode = 1;
    duet_spawn(a, "tx", &tx_ops, &t, &th);
    while (!atomic_load(&t.rt_done)) {
        if (sim)
            duet_simnet_run(sim, UINT64_MAX, 10000);
        else
            usleep(100);
    }
    qsort(t.lat, RT, sizeof(uint64_t), cmp_u64);
    *p50 = t.lat[RT / 2] / 1e3;
    *p99 = t.lat[RT * 99 / 100] / 1e3;
    duet_node_destroy(&a);
    duet_node_destroy(&b);
    if (sim)
        duet_simnet_destroy(&sim);
    if (ctx)
        zmq_ctx_term(ctx);
    duet_registry_destroy(&reg);
    free(t.lat);
}

static uint64_t g_sim_rx;
static void sim_count(void *ctx, const char *from, const uint8_t *d, size_t n)
{
    g_sim_rx++;
}

/* The bare simulated network: frames between two sim nodes. */
static void simnet_raw(double *mps)
{
    duet_simnet_t *sim;
    duet_simnet_config_t sc = {.seed = 1, .latency_min_ns = 1000, .latency_max_ns = 5000};
    duet_simnet_create(&sc, &sim);
    duet_simnet_attach(sim, "a", sim_count, NULL);
    duet_simnet_attach(sim, "b", sim_count, NULL);
    char msg[32] = "0123456789abcdef0123456789abcde";
    g_sim_rx = 0;
    uint64_t t0 = duet_now_ns();
    for (uint64_t i = 0; i < N; i += 1000) {
        for (int k = 0; k < 1000; k++)
            duet_simnet_send(sim, k & 1 ? "a" : "b", k & 1 ? "b" : "a", msg, sizeof(msg), 0);
        duet_simnet_run(sim, UINT64_MAX, 0);
    }
    *mps = g_sim_rx / ((duet_now_ns() - t0) / 1e9);
    duet_simnet_destroy(&sim);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        N = strtoull(argv[1], NULL, 10);
    if (argc > 2)
        RT = strtoull(argv[2], NULL, 10);
    duet_actors_init();
    duet_msg_type_register(&bm_msg);
    int pid = (int)getpid();
    const char *names[] = {"inproc", "ipc", "tcp"};
    printf("%-8s %14s %14s %6s | %11s %11s | %11s %11s\n", "", "actor msg/s", "raw zmq msg/s",
           "ratio", "actor p50us", "actor p99us", "raw p50us", "raw p99us");
    const char *only = getenv("DUET_BENCH_ONLY"); /* inproc|ipc|tcp|sim */
    for (int tr = 0; tr < 3; tr++) {
        if (only && strcmp(only, names[tr]) != 0)
            continue;
        char ra[128], aa[128], ab[128];
        switch (tr) {
        case 0:
            snprintf(ra, sizeof(ra), "inproc://bench-raw");
            snprintf(aa, sizeof(aa), "inproc://bench-a");
            snprintf(ab, sizeof(ab), "inproc://bench-b");
            break;
        case 1:
            snprintf(ra, sizeof(ra), "ipc:///tmp/duet-bench-%d-raw", pid);
            snprintf(aa, sizeof(aa), "ipc:///tmp/duet-bench-%d-a", pid);
            snprintf(ab, sizeof(ab), "ipc:///tmp/duet-bench-%d-b", pid);
            break;
        default:
            snprintf(ra, sizeof(ra), "tcp://127.0.0.1:*");
            snprintf(aa, sizeof(aa), "tcp://127.0.0.1:*");
            snprintf(ab, sizeof(ab), "tcp://127.0.0.1:*");
        }
        double rm, r50, r99, am, a50, a99;
        raw_bench(names[tr], ra, &rm, &r50, &r99);
        actor_bench(tr, aa, ab, &am, &a50, &a99);
        printf("%-8s %14.0f %14.0f %6.2f | %11.1f %11.1f | %11.1f %11.1f\n", names[tr], am, rm,
               am / rm, a50, a99, r50, r99);
    }
    if (only && strcmp(only, "sim") != 0)
        return 0;
    double sm, s50, s99;
    actor_bench(3, NULL, NULL, &sm, &s50, &s99);
    double raw_sim;
    simnet_raw(&raw_sim);
    printf("%-8s %14.0f %14.0f %6s | virtual-time RTT p50 %.1f us (raw column: bare simnet "
           "frames/s)\n",
           "sim", sm, raw_sim, "-", s50);
    return 0;
}
