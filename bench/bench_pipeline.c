/* bench_pipeline — the disaggregated pipeline against the single-process
 * engine, the figures of the pipeline issue's "Benchmark" section:
 *
 *  (a) the single-process engine (duet_engine_*) on --engine-threads
 *      threads (default 2);
 *  (b) 1 attention + 1 expert shard in this process (ZeroMQ inproc control
 *      plane, --provider data plane, default shm), each shard on one
 *      compute thread, attn/0 pinned to CPU 0 and expert/0 to CPU 1 (by
 *      thread name; --no-pin leaves them to the OS), for every m of --ms.
 *
 * Both decode `--batch`es of random --prompt-token prompts, greedy: --warm
 * untimed steps, then --gen timed ones. tokens/s counts every sequence's
 * token; the per-token latency is the time of one decode step. (a) is the
 * median over --reps repetitions; each (b) is one deployment per m.
 *
 * From the pipeline's trace (only the events inside the timed window) and
 * its counters, per m: per round r, T_a = attention + dispatch + combine of
 * r on attn/0, T_e = expert/0's compute of r, the gaps dispatch end ->
 * expert start (m2n) and expert end -> combine start (n2m), and busy
 * fractions (busy ns / wall ns in the window). Medians over rounds. At
 * m = 1 nothing queues, so the gaps are the transfer + wake-up time T_c;
 * at m > 1 they include waiting behind other rounds.
 *
 * Goals (per batch):
 *  - m1 -> m3 speed-up >= 0.85 of the ideal (T_a + T_e + 2 T_c) /
 *    max(T_a, T_e), with T_a, T_e from the m = 3 run and T_c (the sum of the
 *    two gaps' medians / 2) from the m = 1 run;
 *  - the busiest actor at m = 3 busy >= 0.9 of the window;
 *  - (b) m = 3 tokens/s >= 0.9 of (a).
 * Printed too: the overlap achieved at m = 3 alone — the step time that the
 * m = 3 rounds would take one after the other (rounds x (T_a + T_e + 2
 * T_c)) over the measured one — which leaves out how per-round work grows
 * with m (experts re-read per micro-batch on a memory-bound CPU).
 *
 * The bench checkpoint is written once with the mkmodel API into
 * $DUET_BENCH_DIR (default /tmp/duet-bench-model), as bench_model does.
 *
 * usage: bench_pipeline [--model DIR] [--batches 8,64] [--ms 1,2,3,4]
 *                       [--gen N] [--warm N] [--prompt N] [--reps R]
 *                       [--provider shm|sim|tcp] [--engine-threads N]
 *                       [--no-pin] [--quick] [--keep-trace DIR] */

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "actors/pipeline.h"
#include "model/backend.h"
#include "model/forward.h"
#include "model/kvcache.h"
#include "model/mkmodel.h"
#include "model/model.h"
#include "bench/bench_checkpoint.h"

#define MAX_BATCH 256
#define MAX_MS 8
#define BLOCK 16

typedef struct opts {
    const char *model;
    int batches[8], n_batches;
    int ms[MAX_MS], n_ms;
    int gen, warm, prompt, reps, engine_threads;
    const char *provider;
    bool pin;
    const char *keep_trace;
} opts_t;

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof(double), cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static int32_t rand_token(int32_t vocab)
{
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (int32_t)(g_rng % (uint64_t)(vocab - 1)) + 1;
}

static int parse_list(const char *s, int *out, int cap)
{
    int n = 0;
    while (*s && n < cap) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || v < 1 || v > 4096 || (*end && *end != ','))
            return -1;
        out[n++] = (int)v;
        s = *end ? end + 1 : end;
    }
    return *s ? -1 : n;
}

/* ---- (a) the engine -------------------------------------------------------- */

typedef struct eres {
    double tps, step_ms;
} eres_t;

static duet_status_t run_engine(const opts_t *o, int batch, int32_t vocab, const duet_model_t *m,
                                duet_backend_t *be, eres_t *out)
{
    duet_engine_opts_t eo = {0};
    int32_t per_seq = (o->prompt + o->warm + o->gen + BLOCK) / BLOCK + 1;
    eo.fwd.max_tokens = DUET_MAX(o->prompt * 4, batch);
    eo.fwd.max_seqs = batch;
    eo.fwd.max_logits = batch;
    eo.kv.block_size = BLOCK;
    eo.kv.n_blocks = batch * per_seq;
    eo.kv.max_seqs = batch;
    eo.kv.max_seq_len = per_seq * BLOCK;
    duet_engine_t *eng = NULL;
    duet_status_t st = duet_engine_create(be, m, &eo, &eng);
    if (st)
        return st;
    duet_kvcache_t *kv = duet_engine_kv(eng);
    int32_t seqs[MAX_BATCH], tok[MAX_BATCH];
    int32_t *ptoks = duet_calloc((size_t)o->prompt * 4, sizeof(int32_t));
    double *v = duet_calloc((size_t)o->reps, sizeof(double));
    duet_seq_input_t in[MAX_BATCH];
    duet_sampling_params_t sp[MAX_BATCH];
    if (!ptoks || !v) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    for (int i = 0; i < batch; i++) {
        sp[i] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0};
        if ((st = duet_kvcache_seq_open(kv, &seqs[i])))
            goto out;
    }
    /* prompts, 4 sequences a step */
    for (int s = 0; s < batch; s += 4) {
        int k = DUET_MIN(4, batch - s);
        for (int i = 0; i < k; i++) {
            for (int j = 0; j < o->prompt; j++)
                ptoks[i * o->prompt + j] = rand_token(vocab);
            in[i] =
                (duet_seq_input_t){seqs[s + i], o->prompt, ptoks + i * o->prompt, DUET_LOGITS_LAST};
        }
        if ((st = duet_engine_step(eng, k, in, NULL, NULL)) ||
            (st = duet_engine_sample(eng, sp, tok + s)))
            goto out;
    }
    for (int rep = 0; rep < o->reps; rep++) {
        double t0 = 0;
        for (int g = 0; g < o->warm + o->gen; g++) {
            if (g == o->warm)
                t0 = duet_now_s();
            for (int i = 0; i < batch; i++)
                in[i] = (duet_seq_input_t){seqs[i], 1, &tok[i], DUET_LOGITS_LAST};
            if ((st = duet_engine_step(eng, batch, in, NULL, NULL)) ||
                (st = duet_engine_sample(eng, sp, tok)))
                goto out;
        }
        v[rep] = duet_now_s() - t0;
        for (int i = 0; i < batch; i++)
            if ((st = duet_kvcache_seq_truncate(kv, seqs[i], o->prompt)))
                goto out;
    }
    double dt = median(v, o->reps);
    out->tps = (double)batch * o->gen / dt;
    out->step_ms = 1e3 * dt / o->gen;
out:
    duet_free(v);
    duet_free(ptoks);
    duet_engine_destroy(&eng);
    return st;
}

/* ---- (b) the pipeline ------------------------------------------------------ */

typedef struct pres {
    int m;
    double tps, step_ms;
    double busy_a, busy_e;
    double ta, te, g1, g2; /* medians, µs */
    double ta_mean, te_mean;
    int rounds;
    uint64_t steps;
    uint64_t coal, erounds; /* expert rounds coalesced / computed in the window (all shards) */
} pres_t;

/* Pin the threads named `name` (the runtime names a compute actor's thread
 * after the actor) to `cpu`. Returns how many. */
static int pin_thread(const char *name, int cpu)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return 0;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d))) {
        if (de->d_name[0] == '.')
            continue;
        char path[300], comm[64] = "";
        snprintf(path, sizeof(path), "/proc/self/task/%s/comm", de->d_name);
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        if (fgets(comm, sizeof(comm), f))
            comm[strcspn(comm, "\n")] = 0;
        fclose(f);
        if (strcmp(comm, name) != 0)
            continue;
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpu, &set);
        if (sched_setaffinity((pid_t)atoi(de->d_name), sizeof(set), &set) == 0)
            n++;
    }
    closedir(d);
    return n;
}

typedef struct rnd {
    double a_ns, e_ns;
    double disp_end, exp_start, exp_end, comb_start; /* µs; 0 = not seen */
} rnd_t;

/* Read the trace: per-round times of the rounds whose events lie in
 * [t0, t1] (µs, CLOCK_MONOTONIC as the trace writes them). */
static duet_status_t read_trace(const char *path, double t0, double t1, pres_t *r)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return duet_errorf(DUET_ERR_IO, "trace %s: %s", path, strerror(errno));
    size_t cap = 1 << 16;
    rnd_t *rd = duet_calloc(cap, sizeof(rnd_t));
    long lo = -1, hi = -1;
    char line[1024];
    while (rd && fgets(line, sizeof(line), f)) {
        if (!strstr(line, "\"ph\":\"X\""))
            continue;
        char name[32];
        int tid;
        double ts, dur;
        long round;
        const char *p = strstr(line, "\"name\":\"");
        const char *q = strstr(line, "\"tid\":");
        const char *a = strstr(line, "\"round\":");
        if (!p || !q || !a || sscanf(p, "\"name\":\"%31[^\"]\"", name) != 1 ||
            sscanf(q, "\"tid\":%d,\"ts\":%lf,\"dur\":%lf", &tid, &ts, &dur) != 3 ||
            sscanf(a, "\"round\":%ld", &round) != 1)
            continue;
        if (round < 0 || ts < t0 || ts + dur > t1)
            continue;
        if (lo < 0)
            lo = round;
        if (round < lo || round - lo >= (long)cap)
            continue;
        if (round > hi)
            hi = round;
        rnd_t *x = &rd[round - lo];
        if (!strcmp(name, "attention")) {
            x->a_ns += dur;
        } else if (!strcmp(name, "dispatch")) {
            x->a_ns += dur;
            x->disp_end = ts + dur;
        } else if (!strcmp(name, "combine")) {
            x->a_ns += dur;
            x->comb_start = ts;
        } else if (!strcmp(name, "expert")) {
            x->e_ns += dur;
            x->exp_start = ts;
            x->exp_end = ts + dur;
        }
    }
    fclose(f);
    if (!rd)
        return DUET_ERR_NOMEM;
    int n = lo < 0 ? 0 : (int)(hi - lo + 1);
    double *va = duet_calloc((size_t)n + 1, sizeof(double) * 4);
    if (!va) {
        duet_free(rd);
        return DUET_ERR_NOMEM;
    }
    double *ve = va + n + 1, *v1 = ve + n + 1, *v2 = v1 + n + 1;
    int k = 0;
    for (int i = 0; i < n; i++) {
        rnd_t *x = &rd[i];
        /* a round whole inside the window: dispatched, computed, combined */
        if (!x->disp_end || !x->exp_start || !x->comb_start)
            continue;
        va[k] = x->a_ns;
        ve[k] = x->e_ns;
        v1[k] = x->exp_start - x->disp_end;
        v2[k] = x->comb_start - x->exp_end;
        k++;
    }
    r->rounds = k;
    r->ta = median(va, k);
    r->te = median(ve, k);
    r->g1 = median(v1, k);
    r->g2 = median(v2, k);
    duet_free(va);
    duet_free(rd);
    return k ? DUET_OK
             : duet_errorf(DUET_ERR_INVALID, "trace %s: no whole round inside the window", path);
}

static duet_status_t run_pipe(const opts_t *o, int batch, int m, int32_t vocab, int n_experts,
                              const char *trace, pres_t *r)
{
    int *experts = duet_calloc((size_t)n_experts, sizeof(int));
    int32_t *prompt = duet_calloc((size_t)o->prompt, sizeof(int32_t));
    int32_t *gen = duet_calloc((size_t)(o->warm + o->gen + 1), sizeof(int32_t));
    if (!experts || !prompt || !gen) {
        duet_free(experts);
        duet_free(prompt);
        duet_free(gen);
        return DUET_ERR_NOMEM;
    }
    for (int e = 0; e < n_experts; e++)
        experts[e] = e;
    const int *placement[1] = {experts};
    int counts[1] = {n_experts};
    int per_seq = (o->prompt + o->warm + o->gen + 2 + BLOCK - 1) / BLOCK + 1;
    duet_pipe_config_t cfg = {
        .model_dir = o->model,
        .n_attention = 1,
        .n_expert_shards = 1,
        .shard_experts = placement,
        .shard_n_experts = counts,
        .micro_batches = m,
        /* every prompt in one step, so the sequences decode in lock-step
         * as the engine's do (a smaller budget staggers them, and the last
         * steps of the window run part of the batch) */
        .token_budget = DUET_MAX(256, batch * o->prompt),
        .max_seqs = batch,
        .kv_blocks = 4 * batch * per_seq + 8,
        .kv_block_size = BLOCK,
        .provider = o->provider,
        .control = DUET_PIPE_CONTROL_INPROC,
        .round_timeout_ms = 60000,
        .threads = 1,
        .trace_path = trace,
        .trace_events = 1 << 20,
    };
    duet_pipe_t *p = NULL;
    duet_status_t st = duet_pipe_create(&cfg, &p);
    if (st)
        goto out;
    const int32_t want0 = 1 + o->warm, want1 = want0 + o->gen;
    for (int i = 0; i < batch; i++) {
        for (int j = 0; j < o->prompt; j++)
            prompt[j] = rand_token(vocab);
        if ((st = duet_pipe_submit(p, (uint64_t)i + 1, prompt, o->prompt, want1, -1)))
            goto out;
    }
    /* the actors run (and have named their threads) once the prompts are in */
    for (int i = 0; i < batch; i++)
        if ((st = duet_pipe_wait(p, (uint64_t)i + 1, 1, 600000)))
            goto out;
    if (o->pin && (pin_thread("attn/0", 0) != 1 || pin_thread("expert/0", 1) != 1))
        fprintf(stderr, "bench_pipeline: could not pin attn/0 and expert/0 (running unpinned)\n");
    for (int i = 0; i < batch; i++)
        if ((st = duet_pipe_wait(p, (uint64_t)i + 1, want0, 600000)))
            goto out;
    duet_pipe_actor_stats_t a0, e0, a1, e1;
    duet_pipe_stats_t ps0, ps1;
    duet_pipe_stats(p, &ps0);
    if ((st = duet_pipe_actor_stats(p, "attn/0", &a0, 10000)) ||
        (st = duet_pipe_actor_stats(p, "expert/0", &e0, 10000)))
        goto out;
    /* tokens made in the window, counted per request (not batch x gen: a
     * request ahead of the others at t0 makes fewer inside it) */
    int64_t made = 0;
    for (int i = 0; i < batch; i++)
        made -= duet_pipe_result(p, (uint64_t)i + 1, gen, want1, NULL, NULL, 0);
    double t0 = duet_now_s();
    for (int i = 0; i < batch; i++)
        if ((st = duet_pipe_wait(p, (uint64_t)i + 1, want1, 600000)))
            goto out;
    double t1 = duet_now_s();
    duet_pipe_stats(p, &ps1);
    r->coal = ps1.rounds_coalesced - ps0.rounds_coalesced;
    r->erounds = ps1.rounds_expert - ps0.rounds_expert;
    if ((st = duet_pipe_actor_stats(p, "attn/0", &a1, 10000)) ||
        (st = duet_pipe_actor_stats(p, "expert/0", &e1, 10000)))
        goto out;
    for (int i = 0; i < batch; i++) {
        bool done = false;
        char err[256] = "";
        int32_t got = duet_pipe_result(p, (uint64_t)i + 1, gen, want1, &done, err, sizeof(err));
        if (err[0] || got < want1) {
            st = duet_errorf(DUET_ERR_INTERNAL, "request %d: %d tokens of %d: %s", i + 1, got,
                             want1, err);
            goto out;
        }
    }
    double dt = t1 - t0;
    r->m = m;
    for (int i = 0; i < batch; i++)
        made += duet_pipe_result(p, (uint64_t)i + 1, gen, want1, NULL, NULL, 0);
    r->tps = (double)made / dt;
    r->steps = a1.steps - a0.steps;
    r->step_ms = r->steps ? 1e3 * dt / (double)r->steps : 0;
    r->busy_a = (double)(a1.busy_ns - a0.busy_ns) / (dt * 1e9);
    r->busy_e = (double)(e1.busy_ns - e0.busy_ns) / (dt * 1e9);
    uint64_t ra = a1.rounds - a0.rounds, re = e1.rounds - e0.rounds;
    r->ta_mean = ra ? (double)(a1.busy_ns - a0.busy_ns) / (double)ra / 1e3 : 0;
    r->te_mean = re ? (double)(e1.busy_ns - e0.busy_ns) / (double)re / 1e3 : 0;
    duet_pipe_destroy(&p); /* writes the trace */
    st = read_trace(trace, t0 * 1e6, t1 * 1e6, r);
out:
    if (st)
        st = duet_error_wrap(st, "batch %d, m = %d", batch, m);
    duet_pipe_destroy(&p);
    duet_free(experts);
    duet_free(prompt);
    duet_free(gen);
    return st;
}

/* ---- main ------------------------------------------------------------------ */

static void usage(FILE *f)
{
    fprintf(f,
            "usage: bench_pipeline [--model DIR] [--batches 8,64] [--ms 1,2,3,4] [--gen N]\n"
            "                      [--warm N] [--prompt N] [--reps R] [--provider P]\n"
            "                      [--engine-threads N] [--no-pin] [--quick] [--keep-trace DIR]\n"
            "\n"
            "The single-process engine vs 1 attention + 1 expert shard (one core each) at\n"
            "m = 1..4, with per-round times, busy fractions and the issue's goals.\n"
            "  --model DIR          checkpoint (default: the bench preset, written once to\n"
            "                       $DUET_BENCH_DIR or /tmp/duet-bench-model)\n"
            "  --batches LIST       decode batch sizes (default 8,64)\n"
            "  --ms LIST            micro-batch counts (default 1,2,3,4; 1 and 3 for goals)\n"
            "  --gen N              timed decode steps (default 8)\n"
            "  --warm N             untimed decode steps first (default 2)\n"
            "  --prompt N           prompt tokens per sequence (default 16)\n"
            "  --reps R             engine repetitions, median (default 3)\n"
            "  --provider P         data plane: shm (default), sim, tcp\n"
            "  --engine-threads N   threads of the single-process engine (default 2)\n"
            "  --no-pin             do not pin attn/0 to CPU 0 and expert/0 to CPU 1\n"
            "  --quick              --batches 8 --ms 1,3 --gen 4 --reps 1\n"
            "  --keep-trace DIR     keep each run's trace as DIR/pipe-b<B>-m<M>.json\n");
}

static const char *verdict(bool ok)
{
    return ok ? "PASS" : "MISS";
}

int main(int argc, char **argv)
{
    enum {
        O_BATCHES = 256,
        O_MS,
        O_GEN,
        O_WARM,
        O_PROMPT,
        O_REPS,
        O_PROVIDER,
        O_ETHREADS,
        O_NOPIN,
        O_QUICK,
        O_KEEP
    };
    static const struct option longopts[] = {
        {"model", required_argument, NULL, 'm'},
        {"batches", required_argument, NULL, O_BATCHES},
        {"ms", required_argument, NULL, O_MS},
        {"gen", required_argument, NULL, O_GEN},
        {"warm", required_argument, NULL, O_WARM},
        {"prompt", required_argument, NULL, O_PROMPT},
        {"reps", required_argument, NULL, O_REPS},
        {"provider", required_argument, NULL, O_PROVIDER},
        {"engine-threads", required_argument, NULL, O_ETHREADS},
        {"no-pin", no_argument, NULL, O_NOPIN},
        {"quick", no_argument, NULL, O_QUICK},
        {"keep-trace", required_argument, NULL, O_KEEP},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    opts_t o = {.batches = {8, 64},
                .n_batches = 2,
                .ms = {1, 2, 3, 4},
                .n_ms = 4,
                .gen = 8,
                .warm = 2,
                .prompt = 16,
                .reps = 3,
                .engine_threads = 2,
                .provider = "shm",
                .pin = true};
    const char *env = getenv("DUET_BENCH_DIR");
    const char *bench_dir = env && *env ? env : "/tmp/duet-bench-model";
    int c;
    while ((c = getopt_long(argc, argv, "m:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'm': o.model = optarg; break;
        case O_BATCHES: o.n_batches = parse_list(optarg, o.batches, 8); break;
        case O_MS: o.n_ms = parse_list(optarg, o.ms, MAX_MS); break;
        case O_GEN: o.gen = atoi(optarg); break;
        case O_WARM: o.warm = atoi(optarg); break;
        case O_PROMPT: o.prompt = atoi(optarg); break;
        case O_REPS: o.reps = atoi(optarg); break;
        case O_PROVIDER: o.provider = optarg; break;
        case O_ETHREADS: o.engine_threads = atoi(optarg); break;
        case O_NOPIN: o.pin = false; break;
        case O_QUICK:
            o.batches[0] = 8, o.n_batches = 1;
            o.ms[0] = 1, o.ms[1] = 3, o.n_ms = 2;
            o.gen = 4, o.reps = 1;
            break;
        case O_KEEP: o.keep_trace = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc || o.n_batches < 1 || o.n_ms < 1 || o.gen < 1 || o.warm < 0 ||
        o.prompt < 1 || o.reps < 1 || o.engine_threads < 1) {
        usage(stderr);
        return 2;
    }
    for (int b = 0; b < o.n_batches; b++)
        if (o.batches[b] > MAX_BATCH) {
            fprintf(stderr, "bench_pipeline: batch %d > %d\n", o.batches[b], MAX_BATCH);
            return 2;
        }
    if (!o.model) {
        if (bench_ensure_checkpoint(bench_dir)) {
            fprintf(stderr, "bench_pipeline: writing the checkpoint: %s\n", duet_error());
            return 1;
        }
        o.model = bench_dir;
    }
    long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
    if (o.pin && ncpu < 2) {
        fprintf(stderr, "bench_pipeline: %ld CPU online: not pinning\n", ncpu);
        o.pin = false;
    }

    int rc = 1;
    duet_model_t *model = NULL;
    duet_backend_t *be = NULL;
    eres_t er[8] = {{0}};
    pres_t(*pr)[MAX_MS] = calloc((size_t)o.n_batches, sizeof(*pr));
    char trace[4200];
    duet_load_opts_t lo = {.role = DUET_ROLE_FULL, .prefault = true};
    if (!pr || duet_model_load(o.model, &lo, &model)) {
        fprintf(stderr, "bench_pipeline: %s\n", duet_error());
        goto out;
    }
    const int32_t vocab = model->cfg.vocab;
    const int n_experts = model->cfg.n_experts;
    int n_sparse = 0;
    for (int l = 0; l < model->cfg.n_layers; l++)
        n_sparse += model->cfg.sparse_layer[l] ? 1 : 0;
    printf("bench_pipeline: %s (hidden %d, %d layers, %d sparse, %d experts top-%d), %ld CPUs\n",
           o.model, model->cfg.hidden, model->cfg.n_layers, n_sparse, n_experts, model->cfg.top_k,
           ncpu);
    printf("decode: %d-token prompts, %d warm-up + %d timed steps; (a) engine on %d threads, "
           "median of %d; (b) 1 attention + 1 expert shard, 1 thread each%s, %s data plane\n",
           o.prompt, o.warm, o.gen, o.engine_threads, o.reps,
           o.pin ? " (pinned to CPUs 0 and 1)" : "", o.provider);
    fflush(stdout);
    duet_backend_opts_t bo = {.n_threads = o.engine_threads};
    if (duet_backend_open("cpu", &bo, &be)) {
        fprintf(stderr, "bench_pipeline: %s\n", duet_error());
        goto out;
    }
    for (int b = 0; b < o.n_batches; b++)
        if (run_engine(&o, o.batches[b], vocab, model, be, &er[b])) {
            fprintf(stderr, "bench_pipeline: engine, batch %d: %s\n", o.batches[b], duet_error());
            goto out;
        }
    duet_backend_close(&be);
    duet_model_destroy(&model);

    for (int b = 0; b < o.n_batches; b++)
        for (int k = 0; k < o.n_ms; k++) {
            if (o.keep_trace)
                snprintf(trace, sizeof(trace), "%s/pipe-b%d-m%d.json", o.keep_trace, o.batches[b],
                         o.ms[k]);
            else
                snprintf(trace, sizeof(trace), "/tmp/bench-pipeline-%d.json", (int)getpid());
            duet_status_t st =
                run_pipe(&o, o.batches[b], o.ms[k], vocab, n_experts, trace, &pr[b][k]);
            if (!o.keep_trace)
                unlink(trace);
            if (st) {
                fprintf(stderr, "bench_pipeline: %s\n", duet_error());
                goto out;
            }
            fprintf(stderr, "  batch %d m %d: %.1f tok/s\n", o.batches[b], o.ms[k], pr[b][k].tps);
        }

    bool all = true;
    for (int b = 0; b < o.n_batches; b++) {
        int B = o.batches[b];
        printf("\nbatch %d\n", B);
        printf("  %-14s %9s %9s %7s %7s %9s %9s %9s %9s %7s %11s\n", "config", "tok/s", "ms/token",
               "busy_a", "busy_e", "T_a us", "T_e us", "m2n us", "n2m us", "rounds", "coalesced");
        printf("  %-14s %9.1f %9.2f\n", "(a) engine", er[b].tps, er[b].step_ms);
        const pres_t *r1 = NULL, *r3 = NULL;
        for (int k = 0; k < o.n_ms; k++) {
            const pres_t *r = &pr[b][k];
            char name[32];
            snprintf(name, sizeof(name), "(b) m=%d", r->m);
            printf("  %-14s %9.1f %9.2f %7.3f %7.3f %9.1f %9.1f %9.1f %9.1f %7d %5llu/%-5llu\n",
                   name, r->tps, r->step_ms, r->busy_a, r->busy_e, r->ta, r->te, r->g1, r->g2,
                   r->rounds, (unsigned long long)r->coal, (unsigned long long)r->erounds);
            if (r->m == 1)
                r1 = r;
            if (r->m == 3)
                r3 = r;
        }
        printf("  (T_a, T_e: medians per round from the trace; means from the counters:");
        for (int k = 0; k < o.n_ms; k++)
            printf(" m=%d %.0f/%.0f", pr[b][k].m, pr[b][k].ta_mean, pr[b][k].te_mean);
        printf(" us; m2n/n2m: dispatch end -> expert start, expert end -> combine start,"
               " waiting included at m > 1)\n");
        if (!r1 || !r3) {
            printf("  goals need m = 1 and m = 3 in --ms\n");
            all = false;
            continue;
        }
        double tc = 0.5 * (r1->g1 + r1->g2);
        double ideal = (r3->ta + r3->te + 2 * tc) / DUET_MAX(r3->ta, r3->te);
        double got = r3->tps / r1->tps;
        double frac = got / ideal;
        double bneck = DUET_MAX(r3->busy_a, r3->busy_e);
        double vs_a = r3->tps / er[b].tps;
        double rounds_step = (double)n_sparse * 3;
        double serial_ms = rounds_step * (r3->ta + r3->te + 2 * tc) / 1e3;
        printf("  T_c (m=1) %.1f us; ideal m1->m3 speed-up (T_a+T_e+2T_c)/max(T_a,T_e) with the "
               "m=3 round times %.3f\n",
               tc, ideal);
        printf("  overlap at m=3: serial estimate %.2f ms/step (%d rounds x (T_a+T_e+2T_c)) / "
               "measured %.2f = %.3f\n",
               serial_ms, (int)rounds_step, r3->step_ms, serial_ms / r3->step_ms);
        printf("  goal m1->m3 >= 0.85 of ideal        %.3f / %.3f = %.3f  %s\n", got, ideal, frac,
               verdict(frac >= 0.85));
        printf("  goal bottleneck busy at m=3 >= 0.9  %.3f (%s)         %s\n", bneck,
               r3->busy_a >= r3->busy_e ? "attn/0" : "expert/0", verdict(bneck >= 0.9));
        printf("  goal (b) m=3 >= 0.9 x (a)           %.3f                  %s\n", vs_a,
               verdict(vs_a >= 0.9));
        all = all && frac >= 0.85 && bneck >= 0.9 && vs_a >= 0.9;
    }
    double load[3] = {0};
    getloadavg(load, 3);
    printf("\nload average %.2f at the end (other processes on these CPUs skew every figure)\n",
           load[0]);
    printf("all goals: %s\n", verdict(all));
    rc = 0;
out:
    duet_backend_close(&be);
    duet_model_destroy(&model);
    free(pr);
    return rc;
}
