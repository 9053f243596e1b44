/* Shared support for the rdma tests: provider selection, ranks as processes
 * or threads, deterministic payloads, completion waiting. */
#include "harness.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

th_provider_t th_prov;
duet_rdma_sim_t *th_sim;

static const th_provider_t known[] = {
    {"shm", "shm", NULL, true},
    {"tcp", "tcp", "127.0.0.1", true},
    {"sim", "sim", NULL, false},
    {"verbs-emu", "verbs", "emu", false},
};

void th_init(int argc, char **argv)
{
    const char *want = argc > 1 ? argv[1] : "sim";
    for (size_t i = 0; i < DUET_ARRAY_LEN(known); i++) {
        if (strcmp(known[i].name, want) != 0)
            continue;
        if (!duet_rdma_provider_exists(known[i].provider)) {
            printf("rdma provider '%s' is not built in (libibverbs missing?): skipping\n",
                   known[i].provider);
            exit(77);
        }
        th_prov = known[i];
        if (strcmp(want, "sim") == 0 && duet_rdma_sim_create(&th_sim) != DUET_OK)
            exit(1);
        return;
    }
    fprintf(stderr, "unknown provider '%s' (shm, tcp, sim, verbs-emu)\n", want);
    exit(2);
}

duet_rdma_ctx_t *th_ctx(void)
{
    duet_rdma_ctx_params_t p = {
        .provider = th_prov.provider, .device = th_prov.device, .sim = th_sim};
    duet_rdma_ctx_t *ctx = NULL;
    if (duet_rdma_ctx_create(&p, &ctx) != DUET_OK) {
        fprintf(stderr, "ctx_create(%s): %s\n", th_prov.name, duet_error());
        return NULL;
    }
    return ctx;
}

void th_barrier(th_board_t *b)
{
    pthread_barrier_wait(&b->barrier);
}

void th_die(th_board_t *b, int rank)
{
    b->dead[rank] = 1;
    if (th_prov.processes)
        raise(SIGKILL);
}

typedef struct th_thread {
    pthread_t t;
    int rank, rc;
    th_rank_fn fn;
    th_board_t *b;
    void *arg;
} th_thread_t;

static void *thread_main(void *p)
{
    th_thread_t *t = p;
    t->rc = t->fn(t->rank, t->b, t->arg);
    return NULL;
}

int th_run_ranks(int n, th_rank_fn fn, void *arg)
{
    if (n > TH_MAX_RANKS)
        return n;
    th_board_t *b =
        mmap(NULL, sizeof(*b), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (b == MAP_FAILED)
        return n;
    memset(b, 0, sizeof(*b));
    b->n = n;
    pthread_barrierattr_t ba;
    pthread_barrierattr_init(&ba);
    pthread_barrierattr_setpshared(&ba, PTHREAD_PROCESS_SHARED);
    pthread_barrier_init(&b->barrier, &ba, (unsigned)n);
    pthread_barrierattr_destroy(&ba);
    int failed = 0;
    if (th_prov.processes) {
        pid_t pids[TH_MAX_RANKS];
        fflush(NULL);
        for (int r = 0; r < n; r++) {
            pids[r] = fork();
            if (pids[r] == 0) {
                th_stash_reset();
                int rc = fn(r, b, arg);
                fflush(NULL);
                _exit(rc ? 1 : 0);
            }
        }
        for (int r = 0; r < n; r++) {
            int ws = 0;
            waitpid(pids[r], &ws, 0);
            bool ok = WIFEXITED(ws) && WEXITSTATUS(ws) == 0;
            if (b->dead[r] && WIFSIGNALED(ws) && WTERMSIG(ws) == SIGKILL) {
                ok = true;
                duet_rdma_shm_cleanup_pid(pids[r]);
            }
            if (!ok) {
                fprintf(stderr, "rank %d failed (status 0x%x)\n", r, ws);
                failed++;
            }
        }
    } else {
        th_thread_t th[TH_MAX_RANKS];
        for (int r = 0; r < n; r++) {
            th[r] = (th_thread_t){.rank = r, .fn = fn, .b = b, .arg = arg};
            pthread_create(&th[r].t, NULL, thread_main, &th[r]);
        }
        for (int r = 0; r < n; r++) {
            pthread_join(th[r].t, NULL);
            if (th[r].rc) {
                fprintf(stderr, "rank %d failed\n", r);
                failed++;
            }
        }
    }
    pthread_barrier_destroy(&b->barrier);
    munmap(b, sizeof(*b));
    return failed;
}

static uint64_t mix(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    x ^= x >> 33;
    return x;
}

void th_fill(uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t s = mix(seed + 1);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s = mix(s + i);
        memcpy(p + i, &s, 8);
    }
    s = mix(s + i);
    for (; i < n; i++)
        p[i] = (uint8_t)(s >> (8 * (i & 7)));
}

bool th_check(const uint8_t *p, size_t n, uint64_t seed)
{
    uint64_t s = mix(seed + 1);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        s = mix(s + i);
        if (memcmp(p + i, &s, 8) != 0)
            return false;
    }
    s = mix(s + i);
    for (; i < n; i++)
        if (p[i] != (uint8_t)(s >> (8 * (i & 7))))
            return false;
    return true;
}

/* A stash per thread: tests poll one context from one thread. */
#define STASH 4096
typedef struct stash_ent {
    duet_rdma_ctx_t *ctx;
    duet_rdma_cqe_t e;
} stash_ent_t;
static _Thread_local stash_ent_t stash[STASH];
static _Thread_local int n_stash;

void th_stash_reset(void)
{
    n_stash = 0;
}

bool th_wait_cqe(duet_rdma_ctx_t *ctx, duet_rdma_cqe_kind_t kind, duet_rdma_cqe_t *out,
                 int64_t timeout_ns)
{
    uint64_t deadline = duet_now_ns() + (uint64_t)timeout_ns;
    for (;;) {
        for (int i = 0; i < n_stash; i++)
            if (stash[i].ctx == ctx && stash[i].e.kind == kind) {
                *out = stash[i].e;
                memmove(stash + i, stash + i + 1, (size_t)(n_stash - i - 1) * sizeof(stash[0]));
                n_stash--;
                return true;
            }
        duet_rdma_cqe_t e[32];
        int n = duet_rdma_poll(ctx, e, 32);
        for (int i = 0; i < n; i++) {
            if (n_stash < STASH)
                stash[n_stash++] = (stash_ent_t){ctx, e[i]};
        }
        if (n > 0)
            continue;
        uint64_t now = duet_now_ns();
        if (now >= deadline)
            return false;
        duet_rdma_wait(ctx, DUET_MIN((int64_t)(deadline - now), 10000000));
    }
}
