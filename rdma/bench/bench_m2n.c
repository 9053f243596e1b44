/* bench_m2n — M2N round latency and throughput of the data plane.
 *
 * For M = N processes (senders and receivers are separate processes on this
 * host) and a per-pair message size, every sender writes one message to
 * every receiver per round. Two phases per configuration:
 *   latency     rounds in lock-step (round r starts when every receiver
 *               finished r-1); latency = last receiver done - first sender
 *               start; p50 / p99 over the rounds;
 *   throughput  senders stream rounds freely, throttled only by credits
 *               (4 slots); aggregate payload bytes / elapsed time.
 * Transports: duet M2N over `shm` and `tcp`, and the baseline of the same
 * transfer as ZeroMQ messages (PUSH/PULL) over ipc:// and tcp://. memcpy
 * bandwidth (one core, 4 MiB copies) is measured in the same run.
 *
 *   bench_m2n [--transports shm,tcp,zmq-ipc,zmq-tcp] [--mn 2,4,8]
 *             [--sizes 4k,64k,256k,1m,4m] [--rounds N] [--spin-us U (<0: none)] [--quick]
 */
#include "rdma/rdma.h"

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/futex.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zmq.h>

#define MAXP 16
#define MAX_ROUNDS 4096
#define SLOTS_LAT 2
#define SLOTS_TPUT 4
#define SEC 1000000000ll

typedef struct board {
    pthread_barrier_t bar;
    uint8_t info[MAXP][MAXP][DUET_M2N_INFO_MAX];
    uint32_t info_len[MAXP][MAXP];
    uint32_t done[MAX_ROUNDS];  /* receivers finished round r */
    uint64_t start[MAX_ROUNDS]; /* first sender start */
    uint64_t end[MAX_ROUNDS];   /* last receiver done */
    uint64_t t0, t1;            /* throughput phase */
    char zep[2][MAXP][128];     /* ZeroMQ endpoints the receivers bound */
    int failed;
} board_t;

static int64_t g_spin_ns; /* --spin-us: M2N poll-before-sleep (0 = library default) */

typedef struct cfg {
    const char *transport;
    int m, n;
    size_t size;
    int rounds, tput_rounds;
} cfg_t;

static void amin(uint64_t *p, uint64_t v)
{
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while ((cur == 0 || v < cur) &&
           !__atomic_compare_exchange_n(p, &cur, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

static void amax(uint64_t *p, uint64_t v)
{
    uint64_t cur = __atomic_load_n(p, __ATOMIC_RELAXED);
    while (v > cur &&
           !__atomic_compare_exchange_n(p, &cur, v, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    }
}

/* Lock-step between rounds sleeps on a shared futex rather than spinning:
 * with more processes than cores, spinners would steal the receivers' CPU
 * and the numbers would measure the scheduler. Same driver for every
 * transport, baseline included. */
static void wait_round_done(board_t *b, int r, int n)
{
    if (r < 0)
        return;
    uint32_t v;
    while ((v = __atomic_load_n(&b->done[r], __ATOMIC_ACQUIRE)) < (uint32_t)n)
        syscall(SYS_futex, &b->done[r], FUTEX_WAIT, v, NULL, NULL, 0);
}

static void round_done(board_t *b, int r)
{
    amax(&b->end[r], duet_now_ns());
    __atomic_add_fetch(&b->done[r], 1, __ATOMIC_RELEASE);
    syscall(SYS_futex, &b->done[r], FUTEX_WAKE, INT32_MAX, NULL, NULL, 0);
}

/* ---- duet M2N ---------------------------------------------------------- */

#define CHECK(x)                                                                                   \
    do {                                                                                           \
        duet_status_t st_ = (x);                                                                   \
        if (st_ != DUET_OK) {                                                                      \
            fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, duet_error());              \
            __atomic_store_n(&b->failed, 1, __ATOMIC_RELAXED);                                     \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

static int duet_phase(board_t *b, const cfg_t *c, int rank, duet_rdma_ctx_t *ctx, uint32_t slots,
                      bool lockstep, int rounds, uint32_t gid)
{
    bool sender = rank < c->m;
    duet_m2n_params_t p = {.ctx = ctx,
                           .n_senders = (uint32_t)c->m,
                           .n_receivers = (uint32_t)c->n,
                           .is_sender = sender,
                           .rank = (uint32_t)(sender ? rank : rank - c->m),
                           .slots = slots,
                           .slot_size = c->size,
                           .group_id = gid,
                           .spin_ns = g_spin_ns};
    duet_m2n_t *g;
    CHECK(duet_m2n_create(&p, &g));
    int base = sender ? c->m : 0;
    for (uint32_t i = 0; i < duet_m2n_peers(g); i++) {
        size_t len;
        CHECK(duet_m2n_info(g, i, b->info[rank][base + (int)i], DUET_M2N_INFO_MAX, &len));
        b->info_len[rank][base + (int)i] = (uint32_t)len;
    }
    pthread_barrier_wait(&b->bar);
    for (uint32_t i = 0; i < duet_m2n_peers(g); i++)
        CHECK(
            duet_m2n_connect(g, i, b->info[base + (int)i][rank], b->info_len[base + (int)i][rank]));
    duet_rdma_mr_t *src = NULL;
    if (sender) {
        CHECK(duet_rdma_mr_alloc(ctx, c->size, 0, &src));
        memset(duet_rdma_mr_ptr(src), rank + 1, c->size);
    }
    pthread_barrier_wait(&b->bar);
    if (!lockstep && rank == 0)
        b->t0 = duet_now_ns();
    for (int r = 0; r < rounds; r++) {
        if (sender) {
            if (lockstep) {
                wait_round_done(b, r - 1, c->n);
                amin(&b->start[r], duet_now_ns());
            }
            for (int k = 0; k < c->n; k++) /* stagger the order to spread load */
                CHECK(duet_m2n_send(g, (uint64_t)r, (uint32_t)((k + rank) % c->n), src, 0, c->size,
                                    30 * SEC));
            if (lockstep)
                CHECK(duet_m2n_flush(g, 30 * SEC));
        } else {
            CHECK(duet_m2n_recv(g, (uint64_t)r, 30 * SEC));
            const void *d;
            size_t len;
            CHECK(duet_m2n_data(g, (uint64_t)r, 0, &d, &len));
            if (len != c->size || ((const uint8_t *)d)[len - 1] != 1) {
                fprintf(stderr, "bench: round %d: bad data\n", r);
                return 1;
            }
            CHECK(duet_m2n_release(g, (uint64_t)r));
            if (lockstep)
                round_done(b, r);
        }
    }
    if (sender)
        CHECK(duet_m2n_flush(g, 30 * SEC));
    else if (!lockstep)
        amax(&b->t1, duet_now_ns());
    pthread_barrier_wait(&b->bar); /* no one leaves while others still talk */
    duet_m2n_destroy(&g);
    duet_rdma_mr_dereg(&src);
    return 0;
}

static int duet_rank(board_t *b, const cfg_t *c, int rank)
{
    duet_rdma_ctx_params_t p = {.provider = c->transport};
    duet_rdma_ctx_t *ctx;
    CHECK(duet_rdma_ctx_create(&p, &ctx));
    int rc = duet_phase(b, c, rank, ctx, SLOTS_LAT, true, c->rounds, 0);
    if (!rc)
        rc = duet_phase(b, c, rank, ctx, SLOTS_TPUT, false, c->tput_rounds, 1);
    duet_rdma_ctx_destroy(&ctx);
    return rc;
}

/* ---- ZeroMQ baseline: PUSH per (sender, receiver), PULL per receiver --- */

static void zmq_endpoint(char *out, size_t cap, const cfg_t *c, int phase, int recv_rank)
{
    if (strcmp(c->transport, "zmq-ipc") == 0)
        snprintf(out, cap, "ipc:///tmp/duet-bench-%d-%d-%d.ipc", (int)getppid(), phase, recv_rank);
    else
        snprintf(out, cap, "tcp://127.0.0.1:*"); /* a free port, published on the board */
}

static int zmq_phase(board_t *b, const cfg_t *c, int rank, void *zctx, bool lockstep, int rounds,
                     int phase)
{
    bool sender = rank < c->m;
    char ep[128];
    size_t msg = c->size + 8;
    uint8_t *buf = malloc(msg);
    uint8_t *slots = sender ? NULL : malloc(c->size * (size_t)c->m);
    if (!buf || (!sender && !slots))
        return 1;
    void *socks[MAXP] = {0};
    int hwm = lockstep ? 1000 : SLOTS_TPUT;
    if (!sender) {
        socks[0] = zmq_socket(zctx, ZMQ_PULL);
        zmq_setsockopt(socks[0], ZMQ_RCVHWM, &hwm, sizeof(hwm));
        zmq_endpoint(ep, sizeof(ep), c, phase, rank - c->m);
        if (zmq_bind(socks[0], ep) != 0) {
            fprintf(stderr, "zmq_bind %s: %s\n", ep, zmq_strerror(errno));
            return 1;
        }
        size_t len = sizeof(b->zep[phase][rank - c->m]);
        zmq_getsockopt(socks[0], ZMQ_LAST_ENDPOINT, b->zep[phase][rank - c->m], &len);
    }
    pthread_barrier_wait(&b->bar);
    if (sender) {
        for (int k = 0; k < c->n; k++) {
            socks[k] = zmq_socket(zctx, ZMQ_PUSH);
            zmq_setsockopt(socks[k], ZMQ_SNDHWM, &hwm, sizeof(hwm));
            zmq_endpoint(ep, sizeof(ep), c, phase, k);
            if (zmq_connect(socks[k], b->zep[phase][k]) != 0)
                return 1;
        }
        memset(buf, rank + 1, msg);
    }
    pthread_barrier_wait(&b->bar);
    if (!lockstep && rank == 0)
        b->t0 = duet_now_ns();
    for (int r = 0; r < rounds; r++) {
        if (sender) {
            if (lockstep) {
                wait_round_done(b, r - 1, c->n);
                amin(&b->start[r], duet_now_ns());
            }
            memcpy(buf, &r, sizeof(r));
            for (int k = 0; k < c->n; k++)
                if (zmq_send(socks[(k + rank) % c->n], buf, msg, 0) != (int)msg)
                    return 1;
        } else {
            /* a message per sender; copy it into its slot as M2N places it */
            for (int s = 0; s < c->m; s++) {
                int got = zmq_recv(socks[0], buf, msg, 0);
                if (got != (int)msg)
                    return 1;
                memcpy(slots + (size_t)(buf[8] - 1) % (size_t)c->m * c->size, buf + 8, c->size);
            }
            if (lockstep)
                round_done(b, r);
        }
    }
    if (!sender && !lockstep)
        amax(&b->t1, duet_now_ns());
    pthread_barrier_wait(&b->bar);
    int linger = 0;
    for (int k = 0; k < MAXP; k++)
        if (socks[k]) {
            zmq_setsockopt(socks[k], ZMQ_LINGER, &linger, sizeof(linger));
            zmq_close(socks[k]);
        }
    if (!sender && strcmp(c->transport, "zmq-ipc") == 0) {
        zmq_endpoint(ep, sizeof(ep), c, phase, rank - c->m);
        unlink(ep + 6);
    }
    free(buf);
    free(slots);
    return 0;
}

static int zmq_rank(board_t *b, const cfg_t *c, int rank)
{
    void *zctx = zmq_ctx_new();
    int rc = zmq_phase(b, c, rank, zctx, true, c->rounds, 0);
    if (!rc)
        rc = zmq_phase(b, c, rank, zctx, false, c->tput_rounds, 1);
    zmq_ctx_term(zctx);
    return rc;
}

/* ---- driver ------------------------------------------------------------ */

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static int run(const cfg_t *c, double *p50, double *p90, double *p99, double *gbps)
{
    board_t *b = mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED)
        return 1;
    memset(b, 0, sizeof(*b));
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&b->bar, &ba, (unsigned)(c->m + c->n));
    pid_t pids[2 * MAXP];
    fflush(NULL);
    for (int r = 0; r < c->m + c->n; r++) {
        pids[r] = fork();
        if (pids[r] == 0) {
            bool zmq = strncmp(c->transport, "zmq", 3) == 0;
            _exit(zmq ? zmq_rank(b, c, r) : duet_rank(b, c, r));
        }
    }
    /* A rank that fails would leave the others waiting at a barrier: on
     * the first failure, stop them all. */
    int failed = 0;
    for (int left = c->m + c->n; left > 0; left--) {
        int ws;
        pid_t pid = wait(&ws);
        if (pid < 0)
            break;
        if (!(WIFEXITED(ws) && WEXITSTATUS(ws) == 0) && !failed) {
            failed = 1;
            for (int r = 0; r < c->m + c->n; r++)
                if (pids[r] != pid)
                    kill(pids[r], SIGKILL);
        }
    }
    if (failed && strncmp(c->transport, "zmq", 3) != 0)
        for (int r = 0; r < c->m + c->n; r++)
            duet_rdma_shm_cleanup_pid(pids[r]);
    if (!failed) {
        uint64_t lat[MAX_ROUNDS];
        int n = 0;
        for (int r = c->rounds / 10; r < c->rounds; r++) /* skip warm-up */
            lat[n++] = b->end[r] - b->start[r];
        qsort(lat, (size_t)n, sizeof(lat[0]), cmp_u64);
        *p50 = (double)lat[n / 2] / 1e3;
        *p90 = (double)lat[(n * 9) / 10] / 1e3;
        *p99 = (double)lat[(n * 99) / 100 < n ? (n * 99) / 100 : n - 1] / 1e3;
        double bytes = (double)c->size * c->m * c->n * c->tput_rounds;
        *gbps = bytes / (double)(b->t1 - b->t0);
    }
    pthread_barrier_destroy(&b->bar);
    munmap(b, sizeof(*b));
    return failed;
}

/* One core copying `size`-byte messages round-robin into `ws` bytes of
 * slots, ~256 MiB in all. */
static double memcpy_once(size_t size, size_t ws)
{
    ws = DUET_MAX(ws, size);
    uint8_t *src = malloc(size), *dst = malloc(ws);
    if (!src || !dst) {
        free(src);
        free(dst);
        return 0;
    }
    memset(src, 1, size);
    memset(dst, 2, ws);
    size_t slots = ws / size, reps = DUET_MAX((size_t)16, ((size_t)256 << 20) / size);
    uint64_t t0 = duet_now_ns();
    for (size_t i = 0; i < reps; i++) {
        src[0] = (uint8_t)i;
        memcpy(dst + (i % slots) * size, src, size);
    }
    uint64_t t1 = duet_now_ns();
    volatile uint8_t sink = dst[(reps / 2 % slots) * size];
    (void)sink;
    free(src);
    free(dst);
    return (double)size * (double)reps / (double)(t1 - t0);
}

/* Best of three (the host is shared: the best run is the machine's). */
static double memcpy_gbps(size_t size, size_t ws)
{
    double best = 0;
    for (int i = 0; i < 3; i++)
        best = DUET_MAX(best, memcpy_once(size, ws));
    return best;
}

static size_t parse_size(const char *s)
{
    char *end;
    double v = strtod(s, &end);
    if (*end == 'k' || *end == 'K')
        v *= 1024;
    else if (*end == 'm' || *end == 'M')
        v *= 1024 * 1024;
    return (size_t)v;
}

int main(int argc, char **argv)
{
    const char *transports = "shm,tcp,zmq-ipc,zmq-tcp", *mns = "2,4,8",
               *sizes = "4k,64k,256k,1m,4m";
    int rounds = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--transports") && i + 1 < argc)
            transports = argv[++i];
        else if (!strcmp(argv[i], "--mn") && i + 1 < argc)
            mns = argv[++i];
        else if (!strcmp(argv[i], "--sizes") && i + 1 < argc)
            sizes = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc)
            rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--spin-us") && i + 1 < argc)
            g_spin_ns = (int64_t)(atof(argv[++i]) * 1000);
        else if (!strcmp(argv[i], "--quick")) {
            mns = "4";
            sizes = "256k";
        } else {
            fprintf(stderr,
                    "usage: %s [--transports shm,tcp,zmq-ipc,zmq-tcp] [--mn 2,4,8] "
                    "[--sizes 4k,...,4m] [--rounds N] [--spin-us U (<0: none)] [--quick]\n",
                    argv[0]);
            return 2;
        }
    }
    signal(SIGPIPE, SIG_IGN);
    printf("# memcpy_GB/s: one core copying messages of that size round-robin into a 64 MiB\n"
           "# ring (DRAM, best of 3, measured before each configuration); hot_GB/s: the same\n"
           "# into M x %d slots (one receiver's ring footprint, cache-resident when small)\n",
           SLOTS_TPUT);
    printf("# %-8s %3s %3s %8s %9s %9s %9s %10s %11s %8s %9s\n", "transport", "M", "N", "size",
           "p50_us", "p90_us", "p99_us", "tput_GB/s", "memcpy_GB/s", "%memcpy", "hot_GB/s");
    char tl[256], ml[64], sl[128];
    snprintf(ml, sizeof(ml), "%s", mns);
    for (char *mp = ml, *ms; (ms = strtok_r(mp, ",", &mp)) != NULL;) {
        int mn = atoi(ms);
        if (mn < 1 || mn > MAXP)
            continue;
        snprintf(sl, sizeof(sl), "%s", sizes);
        for (char *sp = sl, *ss; (ss = strtok_r(sp, ",", &sp)) != NULL;) {
            size_t size = parse_size(ss);
            /* enough lock-step rounds for a p99 that is not just the maximum,
             * and a few hundred MB to a GB of traffic per configuration */
            double per_round = (double)size * mn * mn;
            int lat = rounds ? rounds : (int)DUET_MAX(100, DUET_MIN(1000, 2e9 / per_round));
            int tput = rounds ? rounds : (int)DUET_MAX(50, DUET_MIN(4000, 1e9 / per_round));
            lat = DUET_MIN(lat, MAX_ROUNDS);
            tput = DUET_MIN(tput, MAX_ROUNDS);
            double mc = memcpy_gbps(size, (size_t)64 << 20);
            double hot = memcpy_gbps(size, (size_t)mn * SLOTS_TPUT * size);
            snprintf(tl, sizeof(tl), "%s", transports);
            for (char *tp = tl, *ts; (ts = strtok_r(tp, ",", &tp)) != NULL;) {
                if (strncmp(ts, "zmq", 3) != 0 && !duet_rdma_provider_exists(ts))
                    continue;
                cfg_t c = {ts, mn, mn, size, lat, tput};
                double p50, p90, p99, g;
                if (run(&c, &p50, &p90, &p99, &g)) {
                    printf("  %-8s %3d %3d %8zu   FAILED\n", ts, mn, mn, size);
                    continue;
                }
                printf("  %-8s %3d %3d %8zu %9.1f %9.1f %9.1f %10.2f %11.2f %7.0f%% %9.2f\n", ts,
                       mn, mn, size, p50, p90, p99, g, mc, 100.0 * g / mc, hot);
                fflush(stdout);
            }
        }
    }
    return 0;
}
