/* Attention shard and expert shard as two processes exchanging activations
 * over the shm data plane (tests/fixtures/mixtral-tiny):
 *
 *   test_gpu_ipc cuda   both processes on the cuda backend (fp32) on one GPU;
 *                       the expert inputs and outputs are GPU regions passed
 *                       by CUDA IPC handle, copied device to device. Exit 77
 *                       "no CUDA device" without one.
 *   test_gpu_ipc cpu    the same protocol with cpu backends and host regions
 *                       (runs anywhere: the test logic and shm's host path).
 *
 * The attention process (parent) runs every prompt: per sparse layer it
 * gathers the dispatched rows into its send region, writes them and the
 * per-expert counts into the expert process's regions; the expert process
 * (child) runs the FFNs on them in place and writes the outputs back into
 * the attention process's region, where the combine reads them. Checks: the
 * prompt logits within 2e-4 of HF's, and the greedy continuation equals
 * HF's tokens (up to a margin below 1e-3) — the same tokens as in one
 * process. Both processes are forked before either touches CUDA. */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "rdma/rdma.h"
#include "tests/model/forward_ref.h"
#if defined(DUET_HAVE_CUDA_BACKEND)
#include "gpu/cuda_backend.h"
#endif

#define DIR DUET_FIXTURES "/mixtral-tiny"
#define IMM_X 1u
#define IMM_META 2u
#define IMM_Y 3u
#define MAX_E 64
#define TIMEOUT_NS (60ll * 1000000000ll)

static bool g_cuda;

static void die(const char *who, const char *what)
{
    fprintf(stderr, "%s: FATAL: %s: %s\n", who, what, duet_error());
    exit(1);
}

#define CHECK(who, expr)                                                                           \
    do {                                                                                           \
        if ((expr) != DUET_OK)                                                                     \
            die(who, #expr);                                                                       \
    } while (0)

/* ---- control plane: length-prefixed messages on a socketpair ---------------- */

static void send_msg(int fd, const void *p, uint32_t n)
{
    if (write(fd, &n, 4) != 4 || write(fd, p, n) != (ssize_t)n) {
        perror("control write");
        exit(1);
    }
}

static uint32_t recv_msg(int fd, void *p, uint32_t cap)
{
    uint32_t n = 0;
    if (read(fd, &n, 4) != 4 || n > cap) {
        fprintf(stderr, "control read failed (%u bytes)\n", n);
        exit(1);
    }
    uint32_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, (char *)p + got, n - got);
        if (r <= 0) {
            perror("control read");
            exit(1);
        }
        got += (uint32_t)r;
    }
    return n;
}

/* Wait for a RECV with immediate `imm` (SEND completions are checked). */
static void wait_recv(const char *who, duet_rdma_ctx_t *ctx, uint32_t imm)
{
    const uint64_t t0 = duet_now_ns();
    for (;;) {
        duet_rdma_cqe_t e[8];
        int n = duet_rdma_poll(ctx, e, 8);
        bool got = false;
        for (int i = 0; i < n; i++) {
            if (e[i].kind == DUET_RDMA_CQE_SEND && e[i].status) {
                fprintf(stderr, "%s: a write failed: %s (%s)\n", who, duet_status_str(e[i].status),
                        duet_error());
                exit(1);
            }
            if (e[i].kind == DUET_RDMA_CQE_RECV && e[i].imm == imm)
                got = true;
        }
        if (got)
            return;
        if (duet_now_ns() - t0 > (uint64_t)TIMEOUT_NS) {
            fprintf(stderr, "%s: no write with immediate %u within 60 s\n", who, imm);
            exit(1);
        }
        if (n == 0)
            duet_rdma_wait(ctx, 1000000); /* 1 ms */
    }
}

static duet_backend_t *open_backend(const char *who)
{
    duet_backend_t *be = NULL;
    if (g_cuda) {
#if defined(DUET_HAVE_CUDA_BACKEND)
        char why[256];
        if (duet_cuda_device_count(why, sizeof(why)) == 0) {
            printf("%s\n", why);
            exit(77);
        }
        duet_backend_opts_t o = {0};
        o.precision = DUET_PRECISION_FP32;
        CHECK(who, duet_backend_open("cuda", &o, &be));
#else
        printf("no CUDA device: this build has no cuda backend\n");
        exit(77);
#endif
    } else {
        duet_backend_opts_t o = {.n_threads = 1};
        CHECK(who, duet_backend_open("cpu", &o, &be));
    }
    return be;
}

/* Region flags: device memory in cuda mode. */
static unsigned dev_flag(void)
{
    return g_cuda ? DUET_RDMA_MEM_DEVICE : 0;
}

typedef struct link {
    duet_rdma_ctx_t *ctx;
    duet_rdma_conn_t *conn;
} link_t;

/* ---- expert process ---------------------------------------------------------- */

static int expert_main(int sock)
{
    const char *who = "expert";
    duet_backend_t *be = open_backend(who);
    duet_model_t *m = NULL;
    int held[MAX_E];
    for (int e = 0; e < MAX_E; e++)
        held[e] = e;
    duet_load_opts_t lo = {.role = DUET_ROLE_EXPERT, .experts = held, .n_experts = 8};
    CHECK(who, duet_model_load(DIR, &lo, &m));
    const duet_config_t *c = &m->cfg;
    const int32_t max_rows = 256 * c->top_k;
    const size_t rowb = sizeof(float) * (size_t)c->hidden;
    /* regions: x (peers write expert inputs), meta (counts), y (our output) */
    duet_rdma_mr_t *mx = NULL, *mmeta = NULL, *my = NULL;
    link_t l = {0};
    duet_rdma_ctx_params_t pp = {.provider = "shm"};
    CHECK(who, duet_rdma_ctx_create(&pp, &l.ctx));
    CHECK(who, duet_rdma_mr_alloc(l.ctx, rowb * (size_t)max_rows,
                                  DUET_RDMA_ACCESS_REMOTE_WRITE | dev_flag(), &mx));
    CHECK(who, duet_rdma_mr_alloc(l.ctx, sizeof(int32_t) * (2 + MAX_E),
                                  DUET_RDMA_ACCESS_REMOTE_WRITE, &mmeta));
    CHECK(who, duet_rdma_mr_alloc(l.ctx, rowb * (size_t)max_rows, dev_flag(), &my));
    duet_experts_t *ex = NULL;
    CHECK(who, be->ops->weights_prepare(be, m)); /* the experts on the device once */
    CHECK(who, duet_experts_create(be, m, max_rows, &ex));
    /* connect */
    CHECK(who, duet_rdma_conn_create(l.ctx, 1, &l.conn));
    {
        uint8_t buf[DUET_RDMA_BLOB_MAX];
        size_t bl = 0;
        CHECK(who, duet_rdma_conn_blob(l.conn, buf, sizeof(buf), &bl));
        send_msg(sock, buf, (uint32_t)bl);
        duet_rdma_mr_t *mine[2] = {mx, mmeta};
        for (int i = 0; i < 2; i++) {
            duet_rdma_rkey_t k = duet_rdma_mr_rkey(mine[i]);
            uint8_t w[DUET_RDMA_RKEY_WIRE];
            duet_rdma_rkey_pack(&k, w);
            send_msg(sock, w, DUET_RDMA_RKEY_WIRE);
        }
    }
    uint8_t buf[256];
    uint32_t n = recv_msg(sock, buf, sizeof(buf));
    CHECK(who, duet_rdma_conn_connect(l.conn, buf, n));
    duet_rdma_rkey_t ry;
    n = recv_msg(sock, buf, sizeof(buf));
    CHECK(who, duet_rdma_rkey_unpack(buf, n, &ry));
    int32_t ids[MAX_E];
    for (int e = 0; e < MAX_E; e++)
        ids[e] = e;
    int rounds = 0;
    for (;;) {
        wait_recv(who, l.ctx, IMM_META);
        const int32_t *meta = duet_rdma_mr_ptr(mmeta);
        const int32_t layer = meta[0], n_rows = meta[1];
        if (layer < 0)
            break;
        CHECK(who, duet_experts_forward(ex, layer, c->n_experts, ids, meta + 2,
                                        duet_rdma_mr_ptr(mx), duet_rdma_mr_ptr(my)));
        CHECK(who, be->ops->sync(be)); /* the source must be complete before the write */
        CHECK(who, duet_rdma_write(l.conn, my, 0, &ry, 0, rowb * (size_t)n_rows, IMM_Y, 0, 0));
        rounds++;
    }
    printf("expert process: %d rounds served on %s\n", rounds, be->ops->name);
    duet_experts_destroy(&ex);
    duet_rdma_mr_dereg(&mx);
    duet_rdma_mr_dereg(&mmeta);
    duet_rdma_mr_dereg(&my);
    duet_rdma_conn_destroy(&l.conn);
    duet_rdma_ctx_destroy(&l.ctx);
    duet_model_destroy(&m);
    duet_backend_close(&be);
    return 0;
}

/* ---- attention process --------------------------------------------------------- */

typedef struct att {
    duet_backend_t *be;
    duet_model_t *m;
    duet_kvcache_t *kv;
    duet_fwd_t *fwd;
    duet_ubatch_t *ub;
    duet_dispatch_t d;
    link_t l;
    duet_rdma_mr_t *mx, *mmeta, *my;
    duet_rdma_rkey_t rx, rmeta;
    int rounds;
} att_t;

/* One step over the micro-batch through the remote experts. */
static void att_step(att_t *a, int32_t n_seqs, const duet_seq_input_t *in)
{
    const char *who = "attention";
    const duet_config_t *c = &a->m->cfg;
    const size_t rowb = sizeof(float) * (size_t)c->hidden;
    CHECK(who, duet_fwd_begin(a->fwd, a->ub, n_seqs, in));
    for (int32_t l = 0; l < c->n_layers; l++) {
        CHECK(who, duet_fwd_attention(a->fwd, a->ub, l));
        const int32_t *ids;
        const float *w;
        int32_t k;
        if (!duet_ubatch_routes(a->ub, &ids, &w, &k))
            continue;
        CHECK(who, duet_dispatch_build(&a->d, ids, w, duet_ubatch_n_tokens(a->ub), k));
        /* the dispatched rows, grouped by expert, into the send region */
        CHECK(who, a->be->ops->gather_rows(a->be, duet_ubatch_normed(a->ub), c->hidden,
                                           a->d.row_token, a->d.n_rows, duet_rdma_mr_ptr(a->mx)));
        CHECK(who, a->be->ops->sync(a->be));
        int32_t *meta = duet_rdma_mr_ptr(a->mmeta);
        meta[0] = l;
        meta[1] = a->d.n_rows;
        memcpy(meta + 2, a->d.count, sizeof(int32_t) * (size_t)c->n_experts);
        CHECK(who, duet_rdma_write(a->l.conn, a->mx, 0, &a->rx, 0, rowb * (size_t)a->d.n_rows,
                                   IMM_X, 0, 0));
        CHECK(who, duet_rdma_write(a->l.conn, a->mmeta, 0, &a->rmeta, 0,
                                   sizeof(int32_t) * (size_t)(2 + c->n_experts), IMM_META, 0, 0));
        wait_recv(who, a->l.ctx, IMM_Y);
        CHECK(who, duet_fwd_combine(a->fwd, a->ub, l, duet_rdma_mr_ptr(a->my), a->d.row_token,
                                    a->d.row_weight, a->d.n_rows));
        a->rounds++;
    }
}

static int attention_main(int sock)
{
    const char *who = "attention";
    att_t a;
    memset(&a, 0, sizeof(a));
    a.be = open_backend(who);
    duet_load_opts_t lo = {.role = DUET_ROLE_ATTENTION};
    CHECK(who, duet_model_load(DIR, &lo, &a.m));
    ref_set_t r;
    if (ref_load(DIR, &r))
        die(who, "reference");
    const duet_config_t *c = &a.m->cfg;
    int32_t total = 0;
    for (int i = 0; i < r.n; i++)
        total += r.p[i].n;
    const int32_t max_rows = 256 * c->top_k;
    if (total * c->top_k > max_rows)
        die(who, "fixture larger than the regions");
    const size_t rowb = sizeof(float) * (size_t)c->hidden;
    duet_kvcache_opts_t ko = {.block_size = 16, .n_blocks = 128, .max_seqs = REF_MAX_PROMPTS};
    duet_fwd_opts_t fo = {.max_tokens = total, .max_seqs = REF_MAX_PROMPTS, .max_logits = total};
    CHECK(who, duet_kvcache_create(a.be, c, &ko, &a.kv));
    CHECK(who, duet_fwd_create(a.be, a.m, a.kv, &fo, &a.fwd));
    CHECK(who, duet_ubatch_create(a.fwd, &a.ub));
    CHECK(who, duet_dispatch_init(&a.d, c->n_experts, max_rows));
    duet_rdma_ctx_params_t pp = {.provider = "shm"};
    CHECK(who, duet_rdma_ctx_create(&pp, &a.l.ctx));
    CHECK(who, duet_rdma_mr_alloc(a.l.ctx, rowb * (size_t)max_rows,
                                  DUET_RDMA_ACCESS_REMOTE_WRITE | dev_flag(), &a.my));
    CHECK(who, duet_rdma_mr_alloc(a.l.ctx, rowb * (size_t)max_rows, dev_flag(), &a.mx));
    CHECK(who, duet_rdma_mr_alloc(a.l.ctx, sizeof(int32_t) * (2 + MAX_E), 0, &a.mmeta));
    CHECK(who, duet_rdma_conn_create(a.l.ctx, 1, &a.l.conn));
    uint8_t buf[256];
    uint32_t n = recv_msg(sock, buf, sizeof(buf));
    CHECK(who, duet_rdma_conn_connect(a.l.conn, buf, n));
    n = recv_msg(sock, buf, sizeof(buf));
    CHECK(who, duet_rdma_rkey_unpack(buf, n, &a.rx));
    n = recv_msg(sock, buf, sizeof(buf));
    CHECK(who, duet_rdma_rkey_unpack(buf, n, &a.rmeta));
    {
        size_t bl = 0;
        CHECK(who, duet_rdma_conn_blob(a.l.conn, buf, DUET_RDMA_BLOB_MAX, &bl));
        send_msg(sock, buf, (uint32_t)bl);
        duet_rdma_rkey_t k = duet_rdma_mr_rkey(a.my);
        duet_rdma_rkey_pack(&k, buf);
        send_msg(sock, buf, DUET_RDMA_RKEY_WIRE);
    }
    /* prompts, all together, logits at every position */
    duet_seq_input_t in[REF_MAX_PROMPTS];
    int32_t seq[REF_MAX_PROMPTS], cur[REF_MAX_PROMPTS];
    for (int i = 0; i < r.n; i++) {
        CHECK(who, duet_kvcache_seq_open(a.kv, &seq[i]));
        in[i] = (duet_seq_input_t){seq[i], r.p[i].n, r.p[i].ids, DUET_LOGITS_ALL};
    }
    att_step(&a, r.n, in);
    int32_t rows = 0;
    CHECK(who, duet_fwd_logits(a.fwd, a.ub, &rows));
    float *logits = malloc(sizeof(float) * (size_t)rows * (size_t)c->vocab);
    CHECK(who, duet_fwd_logits_download(a.fwd, a.ub, logits));
    float worst = 0.0f;
    int64_t off = 0;
    for (int i = 0; i < r.n; i++) {
        int64_t cnt = (int64_t)r.p[i].n * c->vocab;
        worst = fmaxf(worst, max_abs_diff(logits + off, r.p[i].logits, cnt));
        off += cnt;
        cur[i] = -1;
    }
    int fails = 0;
    printf("%s two processes (%s): prompt logits max |diff| %.3g (tol %.0e)\n",
           worst <= REF_LOGIT_TOL ? "ok  " : "FAIL", g_cuda ? "cuda, CUDA IPC" : "cpu, shm",
           (double)worst, (double)REF_LOGIT_TOL);
    fails += !(worst <= REF_LOGIT_TOL);
    /* greedy: the last prompt position's argmax, then decode steps */
    off = 0;
    for (int i = 0; i < r.n; i++) {
        off += (int64_t)r.p[i].n * c->vocab;
        cur[i] = duet_sample_greedy(logits + off - c->vocab, c->vocab);
    }
    bool live[REF_MAX_PROMPTS];
    int compared = 0, bad = 0;
    duet_sampling_params_t sp[REF_MAX_PROMPTS];
    for (int i = 0; i < r.n; i++) {
        live[i] = true;
        sp[i] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0};
    }
    const int32_t steps = DUET_MIN(r.p[0].n_greedy, 8);
    for (int32_t t = 0; t < steps; t++) {
        for (int i = 0; i < r.n; i++) {
            if (live[i] && r.p[i].margin[t] < REF_MARGIN_MIN)
                live[i] = false;
            if (live[i]) {
                compared++;
                if (cur[i] != r.p[i].greedy[t]) {
                    printf("  prompt %d step %d: got %d, HF %d\n", i, t, cur[i], r.p[i].greedy[t]);
                    bad++;
                    live[i] = false;
                }
            }
            in[i] = (duet_seq_input_t){seq[i], 1, &cur[i], DUET_LOGITS_LAST};
        }
        if (t + 1 == steps)
            break;
        att_step(&a, r.n, in);
        CHECK(who, duet_fwd_logits(a.fwd, a.ub, &rows));
        CHECK(who, duet_fwd_sample(a.fwd, a.ub, sp, cur));
    }
    printf("%s greedy over two processes: %d tokens compared with HF, %d mismatches\n",
           bad == 0 && compared > 0 ? "ok  " : "FAIL", compared, bad);
    fails += !(bad == 0 && compared > 0);
    /* tell the expert process to stop */
    int32_t *meta = duet_rdma_mr_ptr(a.mmeta);
    meta[0] = -1;
    meta[1] = 0;
    CHECK(who, duet_rdma_write(a.l.conn, a.mmeta, 0, &a.rmeta, 0, 8, IMM_META, 0, 0));
    printf("attention process: %d expert rounds\n", a.rounds);
    free(logits);
    ref_free(&r);
    duet_dispatch_cleanup(&a.d);
    duet_ubatch_destroy(&a.ub);
    duet_fwd_destroy(&a.fwd);
    duet_kvcache_destroy(&a.kv);
    duet_rdma_mr_dereg(&a.mx);
    duet_rdma_mr_dereg(&a.my);
    duet_rdma_mr_dereg(&a.mmeta);
    duet_rdma_conn_destroy(&a.l.conn);
    duet_rdma_ctx_destroy(&a.l.ctx);
    duet_model_destroy(&a.m);
    duet_backend_close(&a.be);
    return fails ? 1 : 0;
}

int main(int argc, char **argv)
{
    const char *mode = argc > 1 ? argv[1] : "cpu";
    if (!strcmp(mode, "cuda"))
        g_cuda = true;
    else if (strcmp(mode, "cpu")) {
        fprintf(stderr, "usage: test_gpu_ipc cpu|cuda\n");
        return 2;
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        perror("socketpair");
        return 1;
    }
    fflush(stdout);
    pid_t pid = fork(); /* before any CUDA call in either process */
    if (pid < 0) {
        perror("fork");
        return 1;
    }
    if (pid == 0) {
        close(sv[0]);
        alarm(120); /* no wait without a bound, even if the parent hangs */
        int rc = expert_main(sv[1]);
        fflush(stdout);
        _exit(rc);
    }
    close(sv[1]);
    alarm(120);
    int rc = attention_main(sv[0]);
    int status = 0;
    if (waitpid(pid, &status, 0) != pid) {
        perror("waitpid");
        return 1;
    }
    int crc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    duet_rdma_shm_cleanup_pid(pid);
    if (crc == 77 || rc == 77)
        return 77;
    if (crc) {
        fprintf(stderr, "expert process exited with %d\n", crc);
        return 1;
    }
    return rc;
}
