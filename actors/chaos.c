/* chaos — see actors/chaos.h. */
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>

#include "actors/chaos.h"
#include "actors/pipe_int.h"

#define MOD "chaos"

struct duet_chaos_ref {
    int n;
    int max_new;
    int32_t **prompt;
    int32_t *n_prompt;
    int32_t **tok;
    int32_t *n_tok;
    double start_ms, run_ms, gap_ms;
};

/* Per run: what the client saw. */
typedef struct creq {
    int32_t *tok;
    int32_t n;
    int terminals;
    bool after_done; /* a message after the terminal one */
    bool order_bad;
    char error[256];
} creq_t;

typedef struct crun {
    pthread_mutex_t mu;
    duet_pipe_t *pipe;
    creq_t *r;
    int n, max_new;
    uint64_t *arr; /* arrival times of tokens (deployment time) */
    size_t n_arr, cap_arr;
    uint64_t first_submit;
} crun_t;

static void on_token(void *user, const duet_pipe_token_t *t)
{
    crun_t *c = user;
    pthread_mutex_lock(&c->mu);
    if (t->req >= 1 && t->req <= (uint64_t)c->n) {
        creq_t *r = &c->r[t->req - 1];
        if (r->terminals)
            r->after_done = true;
        if (t->error[0]) {
            if (!r->error[0])
                snprintf(r->error, sizeof(r->error), "%s", t->error);
        } else if (t->index != r->n || r->n >= c->max_new) {
            r->order_bad = true;
        } else {
            r->tok[r->n++] = t->token;
        }
        if (t->done)
            r->terminals++;
        if (c->pipe && duet_vec_reserve((void **)&c->arr, &c->cap_arr, c->n_arr + 1,
                                        sizeof(uint64_t)) == DUET_OK)
            c->arr[c->n_arr++] = duet_pipe_now_ns(c->pipe);
    }
    pthread_mutex_unlock(&c->mu);
}

static bool all_done(crun_t *c)
{
    pthread_mutex_lock(&c->mu);
    bool d = true;
    for (int i = 0; i < c->n && d; i++)
        d = c->r[i].terminals > 0;
    pthread_mutex_unlock(&c->mu);
    return d;
}

static void crun_free(crun_t *c)
{
    for (int i = 0; c->r && i < c->n; i++)
        duet_free(c->r[i].tok);
    duet_free(c->r);
    duet_free(c->arr);
    pthread_mutex_destroy(&c->mu);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Longest gap between consecutive token arrivals that overlaps [lo, hi]. */
static double max_gap_ms(const crun_t *c, uint64_t lo, uint64_t hi)
{
    uint64_t best = 0;
    for (size_t i = 1; i < c->n_arr; i++) {
        uint64_t a = c->arr[i - 1], b = c->arr[i];
        if (b < lo || a > hi)
            continue;
        if (b - a > best)
            best = b - a;
    }
    return (double)best / 1e6;
}

/* Submit the workload, wait for every answer (or the deadline). */
static duet_status_t drive(const duet_chaos_config_t *cc, const duet_chaos_ref_t *ref,
                           duet_pipe_t *p, crun_t *run)
{
    int N = ref->n;
    uint32_t arrival = cc->arrival_ms;
    uint64_t start = (uint64_t)(cc->start_ms ? cc->start_ms : 100) * 1000000ull;
    uint64_t now = duet_pipe_now_ns(p);
    if (now < start)
        duet_pipe_advance(p, start - now);
    run->first_submit = duet_pipe_now_ns(p);
    for (int i = 0; i < N; i++) {
        if (arrival && i > 0) {
            duet_pipe_advance(p, (uint64_t)arrival * 1000000ull / (uint64_t)N);
            if (cc->tick)
                cc->tick(cc->tick_user, p, (double)(duet_pipe_now_ns(p) - run->first_submit) / 1e6);
        }
        duet_status_t st = duet_pipe_submit(p, (uint64_t)i + 1, ref->prompt[i], ref->n_prompt[i],
                                            ref->max_new, -1);
        if (st)
            return duet_error_wrap(st, "chaos: submit %d", i + 1);
    }
    uint64_t deadline =
        duet_pipe_now_ns(p) + (uint64_t)(cc->deadline_ms ? cc->deadline_ms : 60000) * 1000000ull;
    while (!all_done(run) && duet_pipe_now_ns(p) < deadline) {
        duet_pipe_advance(p, 5000000ull);
        if (cc->tick)
            cc->tick(cc->tick_user, p, (double)(duet_pipe_now_ns(p) - run->first_submit) / 1e6);
    }
    return DUET_OK;
}

static duet_status_t make_run(const duet_chaos_config_t *cc, const duet_chaos_ref_t *ref,
                              const char *faults, uint64_t plan_seed, crun_t *run, duet_pipe_t **pp)
{
    memset(run, 0, sizeof(*run));
    pthread_mutex_init(&run->mu, NULL);
    run->n = ref->n;
    run->max_new = ref->max_new;
    run->r = duet_calloc((size_t)ref->n, sizeof(creq_t));
    if (!run->r)
        return DUET_ERR_NOMEM;
    for (int i = 0; i < ref->n; i++)
        if (!(run->r[i].tok = duet_calloc((size_t)ref->max_new, sizeof(int32_t))))
            return DUET_ERR_NOMEM;
    duet_pipe_config_t pc = cc->pipe;
    pc.faults = faults && faults[0] ? faults : NULL;
    if (pc.faults)
        pc.sim_seed = pc.sim_seed ^ plan_seed;
    pc.on_token = on_token;
    pc.on_token_user = run;
    duet_status_t st = duet_pipe_create(&pc, pp);
    if (st)
        return st;
    pthread_mutex_lock(&run->mu);
    run->pipe = *pp;
    pthread_mutex_unlock(&run->mu);
    return DUET_OK;
}

void duet_chaos_ref_destroy(duet_chaos_ref_t **rp)
{
    if (!rp || !*rp)
        return;
    duet_chaos_ref_t *r = *rp;
    for (int i = 0; i < r->n; i++) {
        if (r->prompt)
            duet_free(r->prompt[i]);
        if (r->tok)
            duet_free(r->tok[i]);
    }
    duet_free(r->prompt);
    duet_free(r->n_prompt);
    duet_free(r->tok);
    duet_free(r->n_tok);
    duet_free(r);
    *rp = NULL;
}

void duet_chaos_ref_times(const duet_chaos_ref_t *ref, double *start_ms, double *run_ms)
{
    *start_ms = ref->start_ms;
    *run_ms = ref->run_ms;
}

duet_status_t duet_chaos_reference(const duet_chaos_config_t *cc, duet_chaos_ref_t **out)
{
    *out = NULL;
    duet_chaos_ref_t *ref = duet_calloc(1, sizeof(*ref));
    if (!ref)
        return DUET_ERR_NOMEM;
    ref->n = cc->requests > 0 ? cc->requests : 8;
    ref->max_new = cc->max_new > 0 ? cc->max_new : 16;
    ref->prompt = duet_calloc((size_t)ref->n, sizeof(int32_t *));
    ref->n_prompt = duet_calloc((size_t)ref->n, sizeof(int32_t));
    ref->tok = duet_calloc((size_t)ref->n, sizeof(int32_t *));
    ref->n_tok = duet_calloc((size_t)ref->n, sizeof(int32_t));
    if (!ref->prompt || !ref->n_prompt || !ref->tok || !ref->n_tok) {
        duet_chaos_ref_destroy(&ref);
        return DUET_ERR_NOMEM;
    }
    crun_t run;
    duet_pipe_t *p = NULL;
    /* the prompts need the vocabulary: placeholders until the deployment is up */
    for (int i = 0; i < ref->n; i++) {
        ref->n_prompt[i] = 1;
        ref->prompt[i] = duet_calloc(64, sizeof(int32_t));
        if (!ref->prompt[i]) {
            duet_chaos_ref_destroy(&ref);
            return DUET_ERR_NOMEM;
        }
    }
    duet_status_t st = make_run(cc, ref, NULL, 0, &run, &p);
    if (st)
        goto out;
    const duet_model_t *m = duet_pipe_model(p);
    int vocab = m ? m->cfg.vocab : 100;
    uint64_t x = cc->workload_seed * 0x2545f4914f6cdd1dull + 1;
    int lo = cc->prompt_min > 0 ? cc->prompt_min : 3;
    int hi = cc->prompt_max >= lo ? cc->prompt_max : (lo > 20 ? lo : 20);
    if (hi > 64)
        hi = 64;
    if (lo > hi)
        lo = hi;
    for (int i = 0; i < ref->n; i++) {
        ref->n_prompt[i] = lo + (int32_t)(duet_splitmix64(&x) % (uint64_t)(hi - lo + 1));
        for (int32_t k = 0; k < ref->n_prompt[i]; k++)
            ref->prompt[i][k] = (int32_t)(duet_splitmix64(&x) % (uint64_t)vocab);
    }
    if ((st = drive(cc, ref, p, &run)))
        goto out;
    ref->start_ms = (double)run.first_submit / 1e6;
    for (int i = 0; i < ref->n; i++) {
        creq_t *r = &run.r[i];
        if (r->terminals != 1 || r->error[0] || r->order_bad || r->n != ref->max_new) {
            st = duet_errorf(DUET_ERR_INTERNAL,
                             "chaos: the fault-free run failed request %d (%d tokens of %d, "
                             "error '%s')",
                             i + 1, r->n, ref->max_new, r->error);
            goto out;
        }
        ref->tok[i] = r->tok;
        ref->n_tok[i] = r->n;
        r->tok = NULL;
    }
    qsort(run.arr, run.n_arr, sizeof(uint64_t), cmp_u64);
    ref->run_ms = run.n_arr ? (double)(run.arr[run.n_arr - 1] - run.first_submit) / 1e6 : 0;
    ref->gap_ms = max_gap_ms(&run, 0, UINT64_MAX);
out:
    duet_pipe_destroy(&p);
    crun_free(&run);
    if (st) {
        duet_chaos_ref_destroy(&ref);
        return st;
    }
    *out = ref;
    return DUET_OK;
}

static void problem(duet_chaos_result_t *o, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void problem(duet_chaos_result_t *o, const char *fmt, ...)
{
    if (o->first_problem[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(o->first_problem, sizeof(o->first_problem), fmt, ap);
    va_end(ap);
}

duet_status_t duet_chaos_run(const duet_chaos_config_t *cc, const duet_chaos_ref_t *ref,
                             const char *faults, uint64_t plan_seed, duet_chaos_result_t *o)
{
    memset(o, 0, sizeof(*o));
    o->detect_ms = -1;
    o->ref_gap_ms = ref->gap_ms;
    crun_t run;
    duet_pipe_t *p = NULL;
    duet_fault_plan_t *plan = NULL;
    duet_status_t st = make_run(cc, ref, faults, plan_seed, &run, &p);
    if (st)
        goto out;
    if ((st = drive(cc, ref, p, &run)))
        goto out;
    /* drain: once every fault is over (a partition healed, a stall ended)
     * and the shards had time to rejoin, frees and keep-only lists land */
    uint64_t fault_end = 0;
    if (faults && faults[0] && duet_fault_plan_create(plan_seed, &plan) == DUET_OK &&
        duet_fault_plan_parse(plan, faults, "faults") == DUET_OK)
        for (size_t i = 0; i < duet_fault_plan_count(plan); i++) {
            const duet_fault_rule_t *r = duet_fault_plan_rule(plan, i);
            if (r->at_ns + r->for_ns > fault_end)
                fault_end = r->at_ns + r->for_ns;
        }
    duet_pipe_advance(p, 200000000ull);
    if (duet_pipe_now_ns(p) < fault_end + 1000000000ull)
        duet_pipe_advance(p, fault_end + 1000000000ull - duet_pipe_now_ns(p));
    o->requests = ref->n;
    pthread_mutex_lock(&run.mu);
    for (int i = 0; i < ref->n; i++) {
        creq_t *r = &run.r[i];
        int id = i + 1;
        if (r->order_bad) {
            o->order_errors++;
            problem(o, "request %d: a token out of order, duplicated or missing", id);
        }
        if (r->terminals > 1 || r->after_done) {
            o->terminal_errors++;
            problem(o, "request %d: %d terminal messages%s", id, r->terminals,
                    r->after_done ? ", messages after the end" : "");
        }
        if (!r->terminals) {
            if (r->n == 0) {
                o->lost++;
                problem(o, "request %d lost: no answer by the deadline", id);
            } else {
                o->hung++;
                problem(o, "request %d hung: %d tokens, not done by the deadline", id, r->n);
            }
        } else if (r->error[0]) {
            o->errored++;
        } else {
            o->completed++;
        }
        int32_t cmp = r->n < ref->n_tok[i] ? r->n : ref->n_tok[i];
        bool bad = !r->error[0] && r->terminals && r->n != ref->n_tok[i];
        for (int32_t k = 0; k < cmp && !bad; k++)
            bad = r->tok[k] != ref->tok[i][k];
        if (bad) {
            o->mismatched++;
            problem(o, "request %d: tokens differ from the fault-free run", id);
        }
    }
    qsort(run.arr, run.n_arr, sizeof(uint64_t), cmp_u64);
    if (run.n_arr)
        o->run_ms = (double)(run.arr[run.n_arr - 1] - run.first_submit) / 1e6;
    o->max_gap_ms = max_gap_ms(&run, 0, UINT64_MAX);
    pthread_mutex_unlock(&run.mu);
    duet_pipe_stats_t ps;
    duet_pipe_stats(p, &ps);
    o->replays = ps.replays;
    o->epochs = ps.epochs;
    o->restarts = ps.restarts;
    o->first_epoch_ms = ps.first_epoch_ns ? (double)ps.first_epoch_ns / 1e6 : -1;
    {
        duet_pipe_counters_t *ctr = duet__pipe_counters(p);
        uint64_t ne = atomic_load(&ctr->epochs), base = duet__pipe_time_base(p);
        for (uint64_t k = 0; k < ne && k < 16; k++) {
            uint64_t t = atomic_load(&ctr->epoch_ns[k]);
            o->epoch_ms[o->n_epoch_ms++] = t > base ? (double)(t - base) / 1e6 : 0;
        }
    }
    o->sched_left = ps.running + ps.waiting + ps.kv_blocks_used;
    if (o->sched_left)
        problem(o, "after drain the scheduler still has %u running, %u waiting, %llu KV blocks",
                ps.running, ps.waiting, (unsigned long long)ps.kv_blocks_used);
    for (int k = 0; k < cc->pipe.n_attention + cc->pipe.n_expert_shards; k++) {
        char name[32];
        if (k < cc->pipe.n_attention)
            snprintf(name, sizeof(name), "attn/%d", k);
        else
            snprintf(name, sizeof(name), "expert/%d", k - cc->pipe.n_attention);
        duet_pipe_actor_stats_t as;
        if (duet_pipe_actor_stats(p, name, &as, 1000)) {
            /* a shard that is not running (crashed, not restarted) holds nothing */
            continue;
        }
        o->shards_checked++;
        o->leaked_kv_blocks += as.kv_blocks_used;
        o->leaked_kv_seqs += as.kv_seqs;
        if (as.kv_seqs || as.kv_blocks_used)
            problem(o, "after drain %s holds %llu KV sequences, %llu blocks", name,
                    (unsigned long long)as.kv_seqs, (unsigned long long)as.kv_blocks_used);
        o->leaked_dp_slots += as.dp_slots_held;
        o->leaked_dp_credits += as.dp_credits_out + as.dp_inflight;
        o->leaked_ctl_queued += as.ctl_queued;
        if (as.dp_slots_held || as.dp_credits_out || as.dp_inflight || as.ctl_queued)
            problem(o,
                    "after drain %s (data-plane epoch %llu) holds %llu data-plane slots, %llu "
                    "credits not returned, %llu writes in flight, %llu round messages waiting "
                    "for credit",
                    name, (unsigned long long)as.epoch, (unsigned long long)as.dp_slots_held,
                    (unsigned long long)as.dp_credits_out, (unsigned long long)as.dp_inflight,
                    (unsigned long long)as.ctl_queued);
    }
    /* the plan's faults: counts, detection, stall per fault */
    if (plan) {
        duet_pipe_counters_t *ctr = duet__pipe_counters(p);
        uint64_t ne = atomic_load(&ctr->epochs);
        for (size_t i = 0; i < duet_fault_plan_count(plan); i++) {
            const duet_fault_rule_t *r = duet_fault_plan_rule(plan, i);
            if (r->kind == DUET_FAULT_CRASH && o->detect_ms < 0) {
                for (uint64_t k = 0; k < ne && k < 32; k++) {
                    uint64_t t = atomic_load(&ctr->epoch_ns[k]) - duet__pipe_time_base(p);
                    if (t >= r->at_ns) {
                        o->detect_ms = (double)(t - r->at_ns) / 1e6;
                        break;
                    }
                }
            }
            if (o->n_stalls < DUET_CHAOS_MAX_FAULTS &&
                (r->kind == DUET_FAULT_CRASH || r->kind == DUET_FAULT_STALL ||
                 r->kind == DUET_FAULT_PARTITION || r->at_ns || r->for_ns)) {
                int k = o->n_stalls++;
                o->stall_at_ms[k] = (double)r->at_ns / 1e6;
                o->stall_ms[k] = max_gap_ms(&run, r->at_ns, r->at_ns + 5000000000ull);
                snprintf(o->stall_what[k], sizeof(o->stall_what[k]), "%s %s",
                         duet_fault_kind_name(r->kind),
                         r->actor   ? r->actor
                         : r->nodes ? r->nodes
                         : r->type  ? r->type
                                    : "*");
            }
        }
        /* a crash the router cannot see (its node cut off) is found by 3
         * missed heartbeats, counted from the last one heard: at most 4
         * intervals after the crash */
        uint32_t hb = cc->heartbeat_ms ? cc->heartbeat_ms : 100;
        if (cc->pipe.control == DUET_PIPE_CONTROL_SIM && o->detect_ms > 4.0 * hb) {
            o->detect_late = true;
            problem(o, "the crash was acted on after %.1f ms (> 3 missed heartbeats of %u ms)",
                    o->detect_ms, hb);
        }
    }
    /* the plan the nodes ran with is inside the deployment; count from a
     * re-parse is not the injected count: ask the nodes' plan instead */
    for (int k = 0; k < DUET_FAULT_KIND_COUNT; k++)
        o->faults[k] = duet_pipe_fault_count(p, (duet_fault_kind_t)k);
out:
    duet_fault_plan_destroy(&plan);
    duet_pipe_destroy(&p);
    crun_free(&run);
    return st;
}

bool duet_chaos_ok(const duet_chaos_result_t *r)
{
    return !r->lost && !r->hung && !r->mismatched && !r->order_errors && !r->terminal_errors &&
           !r->leaked_kv_blocks && !r->leaked_kv_seqs && !r->sched_left && !r->detect_late &&
           !r->leaked_dp_slots && !r->leaked_dp_credits && !r->leaked_ctl_queued;
}

void duet_chaos_random_plan(uint64_t seed, const duet_pipe_config_t *pc, double start_ms,
                            double span_ms, char *buf, size_t cap)
{
    uint64_t x = seed * 0x9e3779b97f4a7c15ull + 7;
    int A = pc->n_attention, S = pc->n_expert_shards;
    int nf = 1 + (int)(duet_splitmix64(&x) % 3);
    size_t n = 0;
    buf[0] = 0;
    if (span_ms < 1)
        span_ms = 1;
    for (int f = 0; f < nf && n < cap; f++) {
        double at = start_ms + (double)(duet_splitmix64(&x) % 1000) / 1000.0 * span_ms;
        int kind = (int)(duet_splitmix64(&x) % 10);
        int e = (int)(duet_splitmix64(&x) % (uint64_t)S),
            a = (int)(duet_splitmix64(&x) % (uint64_t)A);
        unsigned dur = 20 + (unsigned)(duet_splitmix64(&x) % 300);
        /* message faults hit the rounds and the client stream alike */
        static const char *const mtypes[] = {"pipe.dispatch", "pipe.result", "pipe.token",
                                             "pipe.submit", "pipe.free", "pipe.ack"};
        const char *rtype = mtypes[duet_splitmix64(&x) % 6];
        int w = 0;
        switch (kind) {
        case 0:
        case 1: /* an expert shard, or (half of case 1) the scheduler */
            if (kind == 1 && dur % 2 == 0)
                w = snprintf(buf + n, cap - n, "crash actor=scheduler at=%.3fms\n", at);
            else
                w = snprintf(buf + n, cap - n, "crash actor=expert/%d at=%.3fms\n", e, at);
            break;
        case 2: w = snprintf(buf + n, cap - n, "crash actor=attn/%d at=%.3fms\n", a, at); break;
        case 3:
            w = snprintf(buf + n, cap - n, "stall actor=expert/%d at=%.3fms for=%ums\n", e, at,
                         dur);
            break;
        case 4: /* a straggler: one expert shard's results 10x slower */
            w = snprintf(buf + n, cap - n,
                         "delay min=2ms max=4ms from=expert/%d type=pipe.result at=%.3fms "
                         "for=%ums\n",
                         e, at, dur * 3);
            break;
        case 5:
            w = snprintf(buf + n, cap - n, "drop p=0.05 type=%s at=%.3fms for=%ums\n", rtype, at,
                         dur);
            break;
        case 6:
            w = snprintf(buf + n, cap - n, "dup p=0.3 type=%s at=%.3fms for=%ums\n", rtype, at,
                         dur);
            break;
        case 7:
            if (!strcmp(rtype, "pipe.free")) /* keep_only lists rely on FIFO order */
                rtype = "pipe.token";
            w = snprintf(buf + n, cap - n, "reorder p=0.3 window=2ms type=%s at=%.3fms for=%ums\n",
                         rtype, at, dur);
            break;
        case 8:
            w = snprintf(buf + n, cap - n, "stall actor=attn/%d at=%.3fms for=%ums\n", a, at, dur);
            break;
        default: { /* one shard's node cut off from every other node */
            char side[DUET_NAME_MAX], rest[1024];
            bool exp = duet_splitmix64(&x) % 2;
            size_t rn = 0;
            rest[0] = 0;
            if (pc->n_nodes > 0 && pc->node_names) { /* the deployment's own nodes */
                int ni = exp ? (pc->expert_node ? pc->expert_node[e] : 0)
                             : (pc->attention_node ? pc->attention_node[a] : 0);
                snprintf(side, sizeof(side), "%s", pc->node_names[ni]);
                for (int i = 0; i < pc->n_nodes && rn < sizeof(rest); i++)
                    if (i != ni)
                        rn += (size_t)snprintf(rest + rn, sizeof(rest) - rn, "%s%s", rn ? "," : "",
                                               pc->node_names[i]);
            } else { /* one node per actor: ctl, a<i>, e<s> */
                snprintf(side, sizeof(side), exp ? "e%d" : "a%d", exp ? e : a);
                rn = (size_t)snprintf(rest, sizeof(rest), "ctl");
                for (int i = 0; i < A && rn < sizeof(rest); i++)
                    if (exp || i != a)
                        rn += (size_t)snprintf(rest + rn, sizeof(rest) - rn, ",a%d", i);
                for (int i = 0; i < S && rn < sizeof(rest); i++)
                    if (!exp || i != e)
                        rn += (size_t)snprintf(rest + rn, sizeof(rest) - rn, ",e%d", i);
            }
            if (!rest[0]) /* a single node: nothing to cut */
                break;
            w = snprintf(buf + n, cap - n, "partition nodes=%s|%s at=%.3fms for=%ums\n", side, rest,
                         at, dur * 3);
            break;
        }
        }
        if (w < 0 || (size_t)w >= cap - n)
            break;
        n += (size_t)w;
    }
}

void duet_chaos_print(FILE *f, const duet_chaos_result_t *r)
{
    fprintf(f,
            "requests %d: completed %d, ended with error %d, lost %d, hung %d, token mismatches "
            "%d, misnumbered %d, terminal errors %d\n",
            r->requests, r->completed, r->errored, r->lost, r->hung, r->mismatched, r->order_errors,
            r->terminal_errors);
    fprintf(f, "faults injected:");
    for (int k = 0; k < DUET_FAULT_KIND_COUNT; k++)
        if (r->faults[k])
            fprintf(f, " %s %llu", duet_fault_kind_name((duet_fault_kind_t)k),
                    (unsigned long long)r->faults[k]);
    fprintf(f, "\nrecovery: %llu requests replayed, %llu data-plane epochs, %llu restarts\n",
            (unsigned long long)r->replays, (unsigned long long)r->epochs,
            (unsigned long long)r->restarts);
    fprintf(f,
            "after drain: %llu KV sequences / %llu blocks held by attention shards, %llu left "
            "at the scheduler; data plane of %d shards: %llu slots held, %llu credits out, "
            "%llu round messages waiting for credit\n",
            (unsigned long long)r->leaked_kv_seqs, (unsigned long long)r->leaked_kv_blocks,
            (unsigned long long)r->sched_left, r->shards_checked,
            (unsigned long long)r->leaked_dp_slots, (unsigned long long)r->leaked_dp_credits,
            (unsigned long long)r->leaked_ctl_queued);
    if (r->detect_ms >= 0)
        fprintf(f, "detection: first crash -> new epoch in %.1f ms%s\n", r->detect_ms,
                r->detect_late ? " (LATE)" : "");
    fprintf(f, "run %.1f ms; longest token gap %.1f ms (without faults %.1f ms)\n", r->run_ms,
            r->max_gap_ms, r->ref_gap_ms);
    for (int k = 0; k < r->n_stalls; k++)
        fprintf(f, "  stall after %s at %.1f ms: longest token gap %.1f ms\n", r->stall_what[k],
                r->stall_at_ms[k], r->stall_ms[k]);
    if (r->first_problem[0])
        fprintf(f, "first problem: %s\n", r->first_problem);
}
