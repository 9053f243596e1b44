/* actor_bench — actor-to-actor messages/s and round-trip latency (p50/p99)
 * for small messages over inproc, ipc and tcp, each next to raw ZeroMQ
 * ROUTER-to-ROUTER sockets measured in the same run, and the simulated
 * network's messages/s. Prints numbers and PASS/FAIL against the goal
 * (actor msg/s >= 0.5 x raw on each transport; sim >= 1 M msg/s); asserts
 * nothing.
 *
 * Fairness: the raw run sends frames of exactly the actor frame's size, in
 * the same pattern: one-way pipelined with the same flow-control window
 * (at most W = credit window unacknowledged, a cumulative ack every W/4,
 * as the runtime's credits), and ping-pong for the RTT. The unwindowed raw
 * firehose is printed too, for reference. ZeroMQ contexts are set up as
 * for the actor nodes: inproc shares one, ipc/tcp give each side its own
 * (as two processes would). Each figure is the median of
 * `runs` runs after one warm-up run.
 *
 *   actor_bench [N_messages=200000] [N_roundtrips=5000] [runs=5]
 *   DUET_BENCH_ONLY=inproc|ipc|tcp|sim limits it to one transport;
 *   DUET_BENCH_ACTOR_ONLY=1 skips the raw runs (for profiling the runtime). */
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

static uint64_t N = 200000, RT = 5000, RUNS = 5;
static size_t MSGLEN = 16; /* set to the actor frame's size in main() */
#define WINDOW 256u        /* the runtime's default credit window */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, size_t n)
{
    qsort(v, n, sizeof(double), cmp_dbl);
    return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

/* ---- raw zmq ---------------------------------------------------------------- */

typedef struct raw_rx {
    void *sock;
    uint64_t n;
    int mode; /* 0 firehose, 1 windowed (ack every WINDOW/4), 2 echo */
} raw_rx_t;

static void *raw_rx_main(void *arg)
{
    raw_rx_t *r = arg;
    char id[64], buf[512];
    for (uint64_t i = 0; i < r->n; i++) {
        int k = zmq_recv(r->sock, id, sizeof(id), 0);
        int m = zmq_recv(r->sock, buf, sizeof(buf), 0);
        if (k < 0 || m < 0)
            break;
        if (r->mode == 2) {
            zmq_send(r->sock, id, (size_t)k, ZMQ_SNDMORE);
            zmq_send(r->sock, buf, (size_t)m, 0);
        } else if (r->mode == 1 && ((i + 1) % (WINDOW / 4) == 0 || i + 1 == r->n)) {
            uint64_t total = i + 1;
            zmq_send(r->sock, id, (size_t)k, ZMQ_SNDMORE);
            zmq_send(r->sock, &total, sizeof(total), 0);
        }
    }
    return NULL;
}

static void raw_pair(void *ctx_a, void *ctx_b, const char *addr, void **a, void **b)
{
    int one = 1, hwm = 100000;
    *a = zmq_socket(ctx_a, ZMQ_ROUTER);
    *b = zmq_socket(ctx_b, ZMQ_ROUTER);
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

typedef struct result {
    double mps, p50, p99;
} result_t;

/* One-way throughput; windowed: at most WINDOW unacknowledged. */
static double raw_throughput(void *a, void *b, bool windowed)
{
    char msg[512];
    memset(msg, 'x', sizeof(msg));
    raw_rx_t rx = {b, N, windowed ? 1 : 0};
    pthread_t th;
    uint64_t t0 = duet_now_ns();
    pthread_create(&th, NULL, raw_rx_main, &rx);
    uint64_t acked = 0;
    char id[16];
    for (uint64_t i = 0; i < N; i++) {
        while (windowed && i - acked >= WINDOW) {
            uint64_t total = 0;
            zmq_recv(a, id, sizeof(id), 0);
            zmq_recv(a, &total, sizeof(total), 0);
            acked = total > acked ? total : acked;
        }
        zmq_send(a, "b", 1, ZMQ_SNDMORE);
        zmq_send(a, msg, MSGLEN, 0);
    }
    pthread_join(th, NULL);
    double mps = N / ((duet_now_ns() - t0) / 1e9);
    if (windowed) { /* drain the acks still queued */
        uint64_t total = 0;
        while (acked < N && zmq_recv(a, id, sizeof(id), 0) >= 0 &&
               zmq_recv(a, &total, sizeof(total), 0) >= 0)
            acked = total;
    }
    return mps;
}

/* As the actor nodes: inproc shares one context; over ipc and tcp each side
 * has its own (its own ZeroMQ I/O thread), as two nodes or processes do. */
static void raw_bench(const char *addr, result_t *win, double *fire)
{
    void *ctx = zmq_ctx_new();
    void *ctx_b = strncmp(addr, "inproc:", 7) == 0 ? ctx : zmq_ctx_new();
    void *a, *b;
    raw_pair(ctx, ctx_b, addr, &a, &b);
    win->mps = raw_throughput(a, b, true);
    *fire = raw_throughput(a, b, false);
    raw_rx_t rx = {b, RT, 2};
    pthread_t th;
    pthread_create(&th, NULL, raw_rx_main, &rx);
    uint64_t *lat = calloc(RT, sizeof(uint64_t));
    char msg[512], buf[512];
    memset(msg, 'x', sizeof(msg));
    for (uint64_t i = 0; i < RT; i++) {
        uint64_t s = duet_now_ns();
        zmq_send(a, "b", 1, ZMQ_SNDMORE);
        zmq_send(a, msg, MSGLEN, 0);
        zmq_recv(a, buf, sizeof(buf), 0);
        zmq_recv(a, buf, sizeof(buf), 0);
        lat[i] = duet_now_ns() - s;
    }
    pthread_join(th, NULL);
    qsort(lat, RT, sizeof(uint64_t), cmp_u64);
    win->p50 = lat[RT / 2] / 1e3;
    win->p99 = lat[RT * 99 / 100] / 1e3;
    free(lat);
    int zero = 0;
    zmq_setsockopt(a, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_setsockopt(b, ZMQ_LINGER, &zero, sizeof(zero));
    zmq_close(a);
    zmq_close(b);
    if (ctx_b != ctx)
        zmq_ctx_term(ctx_b);
    zmq_ctx_term(ctx);
}

/* ---- actors ------------------------------------------------------------------- */

/* `got` (the receiver's counter) sits on a cache line of its own: sharing
 * one with the sender's fields would bounce it between the two threads on
 * every message, a cost the raw run does not pay. */
typedef struct tx {
    uint64_t sent;
    _Alignas(64) atomic_uint_fast64_t got;
    _Alignas(64) char pad_;
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

static void actor_bench(int tr, const char *addr_a, const char *addr_b, result_t *res)
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
            usleep(500);
    }
    res->mps = N / ((duet_now_ns() - t0) / 1e9);
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
    res->p50 = t.lat[RT / 2] / 1e3;
    res->p99 = t.lat[RT * 99 / 100] / 1e3;
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
    (void)ctx, (void)from, (void)d, (void)n;
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
    char msg[512];
    memset(msg, 'x', sizeof(msg));
    g_sim_rx = 0;
    uint64_t t0 = duet_now_ns();
    for (uint64_t i = 0; i < N; i += 1000) {
        for (int k = 0; k < 1000; k++)
            duet_simnet_send(sim, k & 1 ? "a" : "b", k & 1 ? "b" : "a", msg, MSGLEN, 0);
        duet_simnet_run(sim, UINT64_MAX, 0);
    }
    *mps = g_sim_rx / ((duet_now_ns() - t0) / 1e9);
    duet_simnet_destroy(&sim);
}

/* The size of the frame the throughput run sends (envelope + body). */
static size_t actor_frame_size(void)
{
    duet_env_t env = {.type = bm_msg.id, .seq = N / 2, .flags = DUET_ENV_F_CREDIT};
    snprintf(env.from, sizeof(env.from), "tx");
    snprintf(env.to, sizeof(env.to), "rx");
    env.epoch = duet_wall_ms() * 1000000ull + 2; /* as the runtime numbers incarnations */
    bm_t m = {N / 2, 0};
    duet_buf_t b = {0};
    size_t n = duet_msg_encode(&env, &m, NULL, &b) == DUET_OK ? b.len : 48;
    duet_buf_cleanup(&b);
    return n;
}

int main(int argc, char **argv)
{
    if (argc > 1)
        N = strtoull(argv[1], NULL, 10);
    if (argc > 2)
        RT = strtoull(argv[2], NULL, 10);
    if (argc > 3)
        RUNS = strtoull(argv[3], NULL, 10);
    if (N < WINDOW || RT < 100 || RUNS < 1 || RUNS > 64) {
        fprintf(stderr, "usage: actor_bench [N>=%u] [roundtrips>=100] [runs 1..64]\n", WINDOW);
        return 2;
    }
    duet_actors_init();
    duet_msg_type_register(&bm_msg);
    MSGLEN = actor_frame_size();
    int pid = (int)getpid();
    const char *names[] = {"inproc", "ipc", "tcp"};
    printf("%llu messages of %zu bytes, %llu round trips, window %u; median of %llu runs after "
           "a warm-up run\n",
           (unsigned long long)N, MSGLEN, (unsigned long long)RT, WINDOW, (unsigned long long)RUNS);
    printf("%-7s %12s %12s %6s %12s | %9s %9s | %9s %9s | %s\n", "", "actor msg/s", "raw msg/s",
           "ratio", "raw-nowin", "actor p50", "actor p99", "raw p50", "raw p99", "goal >= 0.50");
    const char *only = getenv("DUET_BENCH_ONLY"); /* inproc|ipc|tcp|sim */
    bool all_pass = true;
    for (int tr = 0; tr < 3; tr++) {
        if (only && strcmp(only, names[tr]) != 0)
            continue;
        double am[64], a50[64], a99[64], rm[64], r50[64], r99[64], rf[64];
        for (uint64_t run = 0; run <= RUNS; run++) {
            char ra[128], aa[128], ab[128];
            switch (tr) {
            case 0:
                snprintf(ra, sizeof(ra), "inproc://bench-raw-%llu", (unsigned long long)run);
                snprintf(aa, sizeof(aa), "inproc://bench-a-%llu", (unsigned long long)run);
                snprintf(ab, sizeof(ab), "inproc://bench-b-%llu", (unsigned long long)run);
                break;
            case 1:
                snprintf(ra, sizeof(ra), "ipc:///tmp/duet-bench-%d-%llu-raw", pid,
                         (unsigned long long)run);
                snprintf(aa, sizeof(aa), "ipc:///tmp/duet-bench-%d-%llu-a", pid,
                         (unsigned long long)run);
                snprintf(ab, sizeof(ab), "ipc:///tmp/duet-bench-%d-%llu-b", pid,
                         (unsigned long long)run);
                break;
            default:
                snprintf(ra, sizeof(ra), "tcp://127.0.0.1:*");
                snprintf(aa, sizeof(aa), "tcp://127.0.0.1:*");
                snprintf(ab, sizeof(ab), "tcp://127.0.0.1:*");
            }
            result_t raw, act;
            double fire;
            /* alternate the order so that neither side always runs second */
            if (getenv("DUET_BENCH_ACTOR_ONLY")) { /* for profiling the runtime */
                actor_bench(tr, aa, ab, &act);
                raw = act;
                fire = act.mps;
            } else if (run % 2) {
                actor_bench(tr, aa, ab, &act);
                raw_bench(ra, &raw, &fire);
            } else {
                raw_bench(ra, &raw, &fire);
                actor_bench(tr, aa, ab, &act);
            }
            if (tr == 1) {
                unlink(ra + 6);
                unlink(aa + 6);
                unlink(ab + 6);
            }
            if (run == 0)
                continue; /* warm-up */
            size_t k = run - 1;
            am[k] = act.mps, a50[k] = act.p50, a99[k] = act.p99;
            rm[k] = raw.mps, r50[k] = raw.p50, r99[k] = raw.p99, rf[k] = fire;
        }
        double ratio[64];
        for (uint64_t k = 0; k < RUNS; k++)
            ratio[k] = am[k] / rm[k];
        double mr = median(ratio, RUNS);
        bool actor_only = getenv("DUET_BENCH_ACTOR_ONLY") != NULL;
        bool pass = mr >= 0.5 && !actor_only;
        all_pass &= pass;
        printf("%-7s %12.0f %12.0f %6.2f %12.0f | %9.1f %9.1f | %9.1f %9.1f | %s\n", names[tr],
               median(am, RUNS), median(rm, RUNS), mr, median(rf, RUNS), median(a50, RUNS),
               median(a99, RUNS), median(r50, RUNS), median(r99, RUNS),
               actor_only ? "n/a (raw skipped)"
               : pass     ? "PASS"
                          : "FAIL");
        fflush(stdout);
    }
    if (!only || strcmp(only, "sim") == 0) {
        double sm[64], sr[64], s50 = 0;
        for (uint64_t run = 0; run <= RUNS; run++) {
            result_t r;
            actor_bench(3, NULL, NULL, &r);
            double bare;
            simnet_raw(&bare);
            if (run == 0)
                continue;
            sm[run - 1] = r.mps;
            sr[run - 1] = bare;
            s50 = r.p50;
        }
        double m = median(sm, RUNS);
        bool pass = m >= 1e6;
        all_pass &= pass;
        printf("%-7s %12.0f %12.0f %6s %12s | virtual RTT p50 %.1f us; raw = bare simnet "
               "frames/s | %s (>= 1 M msg/s)\n",
               "sim", m, median(sr, RUNS), "-", "-", s50, pass ? "PASS" : "FAIL");
    }
    printf("goal: %s\n", all_pass ? "PASS" : "FAIL");
    return 0;
}
