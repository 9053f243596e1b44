/* Shared test body support for rdma tests: every test binary takes the
 * provider as its argument ("shm", "tcp", "sim", "verbs-emu") and runs the
 * same cases over it (as UCX instantiates a test per transport). Ranks of a
 * multi-peer case run as processes (shm, tcp) or threads (in-process sim and
 * emulated verbs); they meet through a shared anonymous mapping with a
 * process-shared barrier and a blob board. */
#ifndef DUET_TESTS_RDMA_HARNESS_H
#define DUET_TESTS_RDMA_HARNESS_H

#include "rdma/rdma.h"

#include <pthread.h>

typedef struct th_provider {
    const char *name;     /* as given on the command line */
    const char *provider; /* duet provider */
    const char *device;
    bool processes; /* ranks are processes (else threads) */
} th_provider_t;

/* The provider under test (parsed from argv by th_init). */
extern th_provider_t th_prov;
extern duet_rdma_sim_t *th_sim; /* for "sim" */

/* Parse argv[1]; exits 77 (skip) when the provider is not built in. */
void th_init(int argc, char **argv);

/* A context for the provider under test; fails the test on error. */
duet_rdma_ctx_t *th_ctx(void);

#define TH_MAX_RANKS 24
#define TH_INFO_MAX 256

typedef struct th_board {
    pthread_barrier_t barrier;
    int n;
    /* info[from][to] */
    uint8_t info[TH_MAX_RANKS][TH_MAX_RANKS][TH_INFO_MAX];
    uint32_t info_len[TH_MAX_RANKS][TH_MAX_RANKS];
    int flags[64];
    uint64_t values[64];
    int dead[TH_MAX_RANKS]; /* ranks that die on purpose */
} th_board_t;

typedef int (*th_rank_fn)(int rank, th_board_t *board, void *arg);

/* Run fn for ranks 0..n-1 (processes or threads per th_prov); returns the
 * number of ranks that failed (non-zero return, crash, or an unexpected
 * death). A rank marks itself expected to die with board->dead[rank] = 1. */
int th_run_ranks(int n, th_rank_fn fn, void *arg);
void th_barrier(th_board_t *b);
/* In process mode: die by SIGKILL; in thread mode: return (the caller
 * destroys its context first). */
void th_die(th_board_t *b, int rank);

/* Flags between ranks (atomic: ranks may be threads). */
static inline void th_flag_set(th_board_t *b, int i, int v)
{
    __atomic_store_n(&b->flags[i], v, __ATOMIC_RELEASE);
}
static inline int th_flag_get(th_board_t *b, int i)
{
    return __atomic_load_n(&b->flags[i], __ATOMIC_ACQUIRE);
}

/* Deterministic test bytes. */
void th_fill(uint8_t *p, size_t n, uint64_t seed);
bool th_check(const uint8_t *p, size_t n, uint64_t seed);

/* Wait for one completion of `kind` on ctx (others are kept in order in a
 * small stash and returned by later calls). Returns false on timeout. */
bool th_wait_cqe(duet_rdma_ctx_t *ctx, duet_rdma_cqe_kind_t kind, duet_rdma_cqe_t *out,
                 int64_t timeout_ns);
/* Forget the stash (between tests / contexts). */
void th_stash_reset(void);

#define TH_CHECK(cond)                                                                             \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fprintf(stderr, "%s:%d: check failed: %s (%s)\n", __FILE__, __LINE__, #cond,           \
                    duet_error());                                                                 \
            return 1;                                                                              \
        }                                                                                          \
    } while (0)

#endif
