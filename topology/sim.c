/* sim — discrete-event simulation of the disaggregated ping-pong pipeline.
 *
 * Mirrors actors/pipeline.h's protocol, not a formula: every attention
 * shard runs a step as m micro-batches; micro-batch i of sparse layer j is
 * round r = (iter·L + j)·m + i. An attention shard works through whatever
 * micro-batch is ready (all of them at the start of a step, then each one
 * whose round came back from every expert shard), one at a time: combine of
 * the previous layer, attention of the next, dispatch (an M2N write plus a
 * control message to every expert shard, arriving after max(T_c, transfer)).
 * An expert shard runs rounds strictly in order, each once every attention
 * shard's dispatch arrived, and answers every attention shard. After its
 * last layer a micro-batch runs logits; when all m are done the shard's step
 * ends and the next starts t_step later. With `cores` > 0 every computation
 * also needs one of that many shared cores (FIFO) — a CPU host where the
 * actors are threads.
 *
 * Output: throughput, time between tokens (step to step per shard),
 * utilisation per role, and optionally a Chrome/Perfetto trace with the real
 * pipeline's event names (attention, dispatch, expert, combine, logits;
 * flows m2n, n2m). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "topology/plan.h"

enum { EV_JOB_DONE, EV_DISP_ARRIVE, EV_RES_ARRIVE, EV_STEP_START, EV_SPIN_END };

typedef struct ev {
    double t;
    long seq;
    int type, who, aux;
    long round;
} ev_t;

typedef struct heap {
    ev_t *v;
    size_t n, cap;
    long seq;
} heap_t;

static int ev_less(const ev_t *a, const ev_t *b)
{
    return a->t < b->t || (a->t == b->t && a->seq < b->seq);
}

static duet_status_t heap_push(heap_t *h, double t, int type, int who, int aux, long round)
{
    if (h->n == h->cap) {
        size_t nc = h->cap ? h->cap * 2 : 1024;
        ev_t *nv = realloc(h->v, nc * sizeof(ev_t));
        if (!nv)
            return DUET_ERR_NOMEM;
        h->v = nv;
        h->cap = nc;
    }
    ev_t e = {t, h->seq++, type, who, aux, round};
    size_t i = h->n++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!ev_less(&e, &h->v[p]))
            break;
        h->v[i] = h->v[p];
        i = p;
    }
    h->v[i] = e;
    return DUET_OK;
}

static ev_t heap_pop(heap_t *h)
{
    ev_t top = h->v[0];
    ev_t last = h->v[--h->n];
    size_t i = 0;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const ev_t *best = &last;
        if (l < h->n && ev_less(&h->v[l], best)) {
            m = l;
            best = &h->v[l];
        }
        if (r < h->n && ev_less(&h->v[r], best))
            m = r;
        if (m == i)
            break;
        h->v[i] = h->v[m];
        i = m;
    }
    if (h->n)
        h->v[i] = last;
    return top;
}

/* ---- trace ---------------------------------------------------------------- */

typedef struct tev {
    double ts, dur;
    int tid;
    char ph;
    const char *name;
    long round, layer, ub, rows;
    unsigned long long id;
} tev_t;

typedef struct tbuf {
    tev_t *v;
    size_t n, cap;
    bool on;
} tbuf_t;

static void tr_add(tbuf_t *b, char ph, const char *name, int tid, double ts, double dur, long round,
                   long layer, long ub, long rows, unsigned long long id)
{
    if (!b->on)
        return;
    if (b->n == b->cap) {
        size_t nc = b->cap ? b->cap * 2 : 4096;
        tev_t *nv = realloc(b->v, nc * sizeof(tev_t));
        if (!nv) {
            b->on = false;
            return;
        }
        b->v = nv;
        b->cap = nc;
    }
    b->v[b->n++] = (tev_t){ts, dur, tid, ph, name, round, layer, ub, rows, id};
}

/* Same flow-id layout as the real pipeline (actors/trace.h). */
static unsigned long long flow_id(int kind, long round, int a, int s)
{
    unsigned long long r = (unsigned long long)round & 0xffffffffu;
    return (r << 21) | ((unsigned long long)(kind & 1) << 20) |
           ((unsigned long long)(a & 0x3ff) << 10) | (unsigned long long)(s & 0x3ff);
}

static duet_status_t tr_write(const tbuf_t *b, const char *path, int A, int S)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return duet_errorf(DUET_ERR_IO, "trace %s: cannot open for writing", path);
    fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n", f);
    fputs("{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1,\"tid\":0,"
          "\"args\":{\"name\":\"duet simulate\"}}",
          f);
    for (int k = 0; k < A + S; k++) {
        char nm[48];
        if (k < A)
            snprintf(nm, sizeof(nm), "attn/%d", k);
        else
            snprintf(nm, sizeof(nm), "expert/%d", k - A);
        fprintf(f,
                ",\n{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":%d,"
                "\"args\":{\"name\":\"%s\"}},\n"
                "{\"ph\":\"M\",\"name\":\"thread_sort_index\",\"pid\":1,\"tid\":%d,"
                "\"args\":{\"sort_index\":%d}}",
                k + 1, nm, k + 1, k + 1);
    }
    for (size_t i = 0; i < b->n; i++) {
        const tev_t *e = &b->v[i];
        if (e->ph == 'X')
            fprintf(f,
                    ",\n{\"ph\":\"X\",\"name\":\"%s\",\"cat\":\"pipe\",\"pid\":1,\"tid\":%d,"
                    "\"ts\":%.3f,\"dur\":%.3f,\"args\":{\"round\":%ld,\"layer\":%ld,\"ub\":%ld,"
                    "\"rows\":%ld}}",
                    e->name, e->tid, e->ts * 1e6, e->dur * 1e6, e->round, e->layer, e->ub, e->rows);
        else
            fprintf(f,
                    ",\n{\"ph\":\"%c\",\"name\":\"%s\",\"cat\":\"data\",\"pid\":1,\"tid\":%d,"
                    "\"ts\":%.3f,\"id\":%llu%s}",
                    e->ph, e->name, e->tid, e->ts * 1e6, e->id,
                    e->ph == 'f' ? ",\"bp\":\"e\"" : "");
    }
    fputs("\n]}\n", f);
    bool bad = ferror(f) != 0;
    if (fclose(f) || bad)
        return duet_errorf(DUET_ERR_IO, "trace %s: write failed", path);
    return DUET_OK;
}

/* ---- the simulation ---------------------------------------------------------- */

typedef struct ashard {
    int iter;
    int *queue; /* ready micro-batches, FIFO */
    int qh, qn;
    bool busy;
    int cur;    /* micro-batch being worked on */
    int *layer; /* [m] next sparse layer to run (L: logits) */
    int *got;   /* [m] results arrived for its awaited round */
    int ubs_done;
    double busy_s;
    double *step_end; /* [iterations] */
    double parts[4];  /* the job in progress: combine, attention, dispatch, logits */
} ashard_t;

typedef struct eshard {
    long next;    /* next round to run */
    int *arrived; /* [total rounds] dispatches arrived */
    bool busy;
    long cur;
    double busy_s;
    double rows; /* rows of the round in progress */
} eshard_t;

/* One computation in progress per actor (actor k < A: attention shard k,
 * else expert shard k - A), running or waiting for a core. */
typedef struct job {
    bool on;
    bool running;  /* holds a core (or its own device) */
    double work;   /* at speed 1 */
    double left;   /* work left at t_last */
    double start;  /* when it got its core */
    double rate;   /* work per second now */
    double t_last; /* when left / rate were last set */
    long ver;      /* its EV_JOB_DONE events: only the latest counts */
} job_t;

typedef struct sim {
    const duet_sim_cfg_t *c;
    int A, S, m, L;
    long total_rounds;
    ashard_t *as;
    eshard_t *es;
    job_t *jobs;
    int slots, running; /* shared cores: how many, how many busy */
    int exp_running;    /* expert rounds holding a core (memory contention) */
    double speed;
    int *waitq; /* computations waiting for a core, FIFO */
    int wh, wn;
    /* spin-waiting actors (c->spin > 0 with shared cores): per core the
     * actor computing on it and the actor spinning on it (-1: none); per
     * actor the core it last ran on, the core it holds now (computing or
     * spinning; -1: none) and the version of its spin's end event; the
     * computations waiting for a core in arrival order, each for its own */
    bool spin_on;
    int *slot_job, *slot_spin;
    int *home, *at_slot;
    long *spin_ver;
    int *wl, wl_n;
    heap_t h;
    tbuf_t tr;
    double share_default;
    double *frac;  /* with routes: [S · E] share of expert x's rows shard e runs */
    double *grows; /* with routes: [E] scratch, rows per expert of one round */
} sim_t;

static double share_of(const sim_t *s, int e)
{
    return s->c->shard_share ? s->c->shard_share[e] : s->share_default;
}

static int groups_of(const sim_t *s, int e)
{
    if (s->c->shard_groups)
        return s->c->shard_groups[e] > 0 ? s->c->shard_groups[e] : 1;
    int g = s->c->n_experts / s->S;
    return g > 0 ? g : 1;
}

static double fn0(double (*f)(void *, double), void *u, double x)
{
    return f ? f(u, x) : 0.0;
}

/* The work of attention shard a on micro-batch i, from where it stands. */
static double attn_work(sim_t *s, int a, int i, double *parts)
{
    const duet_sim_cfg_t *c = s->c;
    int j = s->as[a].layer[i];
    double b = c->tokens_ub, rows = b * c->top_k;
    double ctx = c->ctx + s->as[a].iter;
    double comb = j > 0 ? fn0(c->t_combine, c->user, rows) : 0.0;
    double att = 0, disp = 0, lg = 0;
    if (j < s->L) {
        att = c->t_attn ? c->t_attn(c->user, b, ctx) : 0.0;
        disp = c->t_dispatch ? c->t_dispatch(c->user, rows, s->S) : 0.0;
    } else {
        lg = fn0(c->t_logits, c->user, b);
    }
    if (j > 0)
        comb += s->S * c->t_c_core; /* waking for the S results it waited for */
    parts[0] = comb;
    parts[1] = att;
    parts[2] = disp;
    parts[3] = lg;
    return comb + att + disp + lg;
}

/* Rows per expert that shard e runs in round r, from the recorded routes of
 * the sequences in that round's micro-batches (every attention shard's).
 * Returns the shard's rows. */
static double routed_rows(sim_t *s, int e, long r)
{
    const duet_sim_cfg_t *c = s->c;
    int E = c->n_experts, K = c->top_k, L = s->L, m = s->m, A = s->A;
    long it = r / ((long)L * m);
    int j = (int)((r / m) % L), i = (int)(r % m);
    double *g = s->grows;
    const double *fr = s->frac + (size_t)e * (size_t)E;
    memset(g, 0, (size_t)E * sizeof(double));
    for (int a = 0; a < A; a++)
        for (int q = a * m + i; q < c->requests; q += A * m) {
            size_t tok = (size_t)(q % c->route_seqs) * (size_t)c->route_steps +
                         (size_t)(it % c->route_steps);
            const int16_t *ids = c->routes + (tok * (size_t)L + (size_t)j) * (size_t)K;
            for (int x = 0; x < K; x++)
                g[ids[x]] += fr[ids[x]];
        }
    double rows = 0;
    for (int x = 0; x < E; x++)
        rows += g[x];
    return rows;
}

static double exp_work(sim_t *s, int e, long r)
{
    const duet_sim_cfg_t *c = s->c;
    double t = 0;
    if (s->frac) { /* recorded routes: each expert over its own rows */
        s->es[e].rows = routed_rows(s, e, r);
        for (int x = 0; x < c->n_experts && c->t_expert; x++)
            if (s->grows[x] > 0)
                t += c->t_expert(c->user, s->grows[x]);
    } else {
        double rows = c->tokens_ub * c->top_k * s->A * share_of(s, e);
        int g = groups_of(s, e);
        s->es[e].rows = rows;
        t = c->t_expert ? g * c->t_expert(c->user, rows / g) : 0.0;
    }
    if (c->t_exp_fix)
        t += c->t_exp_fix(c->user, s->A);
    t += s->A * c->t_c_core; /* waking for the A dispatches it waited for */
    return t;
}

/* The shared cores: `slots` computations at a time, each at `speed`,
 * the others wait in arrival order. (The OS's time slices are longer than
 * these computations, so a waiting thread runs after the one on the core,
 * not beside it.) */
static void core_init(sim_t *s)
{
    double c = s->c->cores;
    if (c <= 0) {
        s->slots = 0;
        return;
    }
    s->slots = (int)floor(c + 0.5);
    if (s->slots < 1)
        s->slots = 1;
    s->speed = c / s->slots;
    if (s->speed > 1)
        s->speed = 1;
}

/* Slow-down of each of k expert rounds holding cores at once. */
static double contention_of(const sim_t *s, int k)
{
    const duet_sim_cfg_t *c = s->c;
    if (s->slots == 0 || !c->contention || c->n_contention < 1 || k <= 1)
        return 1.0;
    double f = c->contention[(k < c->n_contention ? k : c->n_contention) - 1];
    return f > 1 ? f : 1.0;
}

static double rate_of(const sim_t *s, int k)
{
    if (s->slots == 0)
        return 1.0;
    return k >= s->A ? s->speed / contention_of(s, s->exp_running) : s->speed;
}

/* (Re)time job k from now at its current rate. */
static duet_status_t job_schedule(sim_t *s, int k, double now)
{
    job_t *j = &s->jobs[k];
    j->t_last = now;
    j->ver++;
    return heap_push(&s->h, now + j->left / j->rate, EV_JOB_DONE, k, 0, j->ver);
}

/* The number of expert rounds on cores changed: every running round
 * continues at the new rate from what it has left. */
static duet_status_t exp_rerate(sim_t *s, double now)
{
    duet_status_t st;
    for (int k = s->A; k < s->A + s->S; k++) {
        job_t *j = &s->jobs[k];
        if (!j->on || !j->running)
            continue;
        double r = rate_of(s, k);
        if (r == j->rate)
            continue;
        j->left -= (now - j->t_last) * j->rate;
        if (j->left < 0)
            j->left = 0;
        j->rate = r;
        if ((st = job_schedule(s, k, now)))
            return st;
    }
    return DUET_OK;
}

/* Job k gets a core (or its own device) now. */
static duet_status_t job_run(sim_t *s, int k, double now)
{
    job_t *j = &s->jobs[k];
    j->running = true;
    j->start = now;
    if (k >= s->A && s->slots > 0) {
        s->exp_running++;
        duet_status_t st = exp_rerate(s, now); /* the others slow down */
        if (st)
            return st;
    }
    j->rate = rate_of(s, k);
    return job_schedule(s, k, now);
}

/* ---- spin-waiting actors on the shared cores (c->spin > 0) ---- */

static duet_status_t spin_run_on(sim_t *s, int k, int h, double now)
{
    s->slot_job[h] = k;
    s->at_slot[k] = h;
    s->home[k] = h;
    return job_run(s, k, now);
}

/* Core h is free (nothing computes or spins on it): the first computation
 * waiting for that core, else the longest-waiting one (an idle CPU pulls
 * a queued thread over), takes it. */
static duet_status_t spin_give(sim_t *s, int h, double now)
{
    int pick = -1;
    for (int i = 0; i < s->wl_n && pick < 0; i++)
        if (s->home[s->wl[i]] == h)
            pick = i;
    if (pick < 0 && s->wl_n > 0)
        pick = 0;
    if (pick < 0)
        return DUET_OK;
    int k = s->wl[pick];
    memmove(s->wl + pick, s->wl + pick + 1, (size_t)(s->wl_n - pick - 1) * sizeof(int));
    s->wl_n--;
    return spin_run_on(s, k, h, now);
}

static bool spin_waiter_for(const sim_t *s, int h)
{
    for (int i = 0; i < s->wl_n; i++)
        if (s->home[s->wl[i]] == h)
            return true;
    return false;
}

static bool spinning(const sim_t *s, int k)
{
    return s->spin_on && s->at_slot[k] >= 0 && s->slot_spin[s->at_slot[k]] == k;
}

/* The actor spinning on core h stops (it sleeps); the core is free. */
static duet_status_t spin_stop(sim_t *s, int h, double now)
{
    int k = s->slot_spin[h];
    s->slot_spin[h] = -1;
    s->at_slot[k] = -1;
    s->spin_ver[k]++;
    return spin_give(s, h, now);
}

/* Actor k spins (again) from now: its spin ends c->spin later unless a
 * computation of its own or a waiting thread ends it first. */
static duet_status_t spin_arm(sim_t *s, int k, double now)
{
    return heap_push(&s->h, now + s->c->spin, EV_SPIN_END, k, 0, ++s->spin_ver[k]);
}

static bool slot_free(const sim_t *s, int h)
{
    return s->slot_job[h] < 0 && s->slot_spin[h] < 0;
}

static duet_status_t spin_job_start(sim_t *s, int k, double now)
{
    int h = s->at_slot[k];
    if (h >= 0 && s->slot_spin[h] == k) { /* awake on its core: runs at once */
        s->slot_spin[h] = -1;
        s->spin_ver[k]++;
        return spin_run_on(s, k, h, now);
    }
    h = s->home[k];
    if (h < 0 || !slot_free(s, h)) {
        h = -1;
        for (int x = 0; x < s->slots && h < 0; x++)
            if (slot_free(s, x))
                h = x;
    }
    if (h >= 0)
        return spin_run_on(s, k, h, now);
    if (s->home[k] < 0) { /* never ran: the core with the fewest waiting */
        int best = 0, nb = s->wl_n + 1;
        for (int x = 0; x < s->slots; x++) {
            int n = 0;
            for (int i = 0; i < s->wl_n; i++)
                n += s->home[s->wl[i]] == x;
            if (n < nb) {
                nb = n;
                best = x;
            }
        }
        s->home[k] = best;
    }
    s->wl[s->wl_n++] = k;
    h = s->home[k];
    if (s->slot_spin[h] >= 0) /* the actor spinning there yields to it */
        return spin_stop(s, h, now);
    return DUET_OK;
}

static duet_status_t job_start(sim_t *s, int k, double work, double now)
{
    job_t *j = &s->jobs[k];
    long ver = j->ver;
    *j = (job_t){.on = true, .work = work, .left = work, .start = now, .ver = ver};
    if (s->spin_on)
        return spin_job_start(s, k, now);
    if (s->slots == 0)
        return job_run(s, k, now);
    if (s->running < s->slots) {
        s->running++;
        return job_run(s, k, now);
    }
    s->waitq[(s->wh + s->wn++) % (s->A + s->S)] = k;
    return DUET_OK;
}

static duet_status_t start_attn(sim_t *s, int a, double now)
{
    ashard_t *x = &s->as[a];
    if (x->busy || x->qn == 0)
        return DUET_OK;
    int i = x->queue[x->qh];
    x->qh = (x->qh + 1) % s->m;
    x->qn--;
    x->busy = true;
    x->cur = i;
    double dur = attn_work(s, a, i, x->parts);
    x->busy_s += dur;
    return job_start(s, a, dur, now);
}

static duet_status_t start_exp(sim_t *s, int e, double now)
{
    eshard_t *x = &s->es[e];
    if (x->busy || x->next >= s->total_rounds || x->arrived[x->next] < s->A)
        return DUET_OK;
    x->busy = true;
    x->cur = x->next;
    double dur = exp_work(s, e, x->cur);
    x->busy_s += dur;
    return job_start(s, s->A + e, dur, now);
}

static double msg_delay(const sim_t *s, double bytes)
{
    double x = s->c->t_xfer ? s->c->t_xfer(s->c->user, bytes) : 0.0;
    double tc = s->c->t_c - s->c->t_c_core;
    return x > tc ? x : tc;
}

/* Trace of a finished attention job: its parts, stretched to the time it
 * really took when it shared cores. */
static void trace_attn(sim_t *s, int a, int i, double t0, double t1)
{
    ashard_t *x = &s->as[a];
    const double *parts = x->parts;
    double work = parts[0] + parts[1] + parts[2] + parts[3];
    double f = work > 0 ? (t1 - t0) / work : 1;
    int j = x->layer[i];
    long round = ((long)x->iter * s->L + j) * s->m + i;
    long rows = (long)(s->c->tokens_ub * s->c->top_k);
    double t = t0;
    if (j > 0) { /* the previous layer's results come back: combine */
        long pr = round - s->m;
        tr_add(&s->tr, 'X', "combine", a + 1, t, parts[0] * f, pr, j - 1, i, rows, 0);
        for (int e = 0; e < s->S; e++)
            tr_add(&s->tr, 'f', "n2m", a + 1, t, 0, 0, 0, 0, 0, flow_id(1, pr, a, e));
        t += parts[0] * f;
    }
    if (j < s->L) {
        tr_add(&s->tr, 'X', "attention", a + 1, t, parts[1] * f, round, j, i, (long)s->c->tokens_ub,
               0);
        t += parts[1] * f;
        tr_add(&s->tr, 'X', "dispatch", a + 1, t, parts[2] * f, round, j, i, rows, 0);
        for (int e = 0; e < s->S; e++)
            tr_add(&s->tr, 's', "m2n", a + 1, t + parts[2] * f, 0, 0, 0, 0, 0,
                   flow_id(0, round, a, e));
    } else {
        tr_add(&s->tr, 'X', "logits", a + 1, t, parts[3] * f, -1, s->L, i, (long)s->c->tokens_ub,
               0);
    }
}

static duet_status_t on_attn_done(sim_t *s, int a, double t0, double now)
{
    ashard_t *x = &s->as[a];
    int i = x->cur;
    duet_status_t st;
    if (s->tr.on)
        trace_attn(s, a, i, t0, now);
    x->busy = false;
    int j = x->layer[i];
    if (j < s->L) {
        long round = ((long)x->iter * s->L + j) * s->m + i;
        x->got[i] = 0;
        for (int e = 0; e < s->S; e++) {
            double bytes = s->c->tokens_ub * s->c->top_k * share_of(s, e) * s->c->row_bytes;
            if ((st = heap_push(&s->h, now + msg_delay(s, bytes), EV_DISP_ARRIVE, e, a, round)))
                return st;
        }
        x->layer[i] = j + 1;
    } else if (++x->ubs_done == s->m) {
        x->step_end[x->iter] = now;
        if (x->iter + 1 < s->c->iterations &&
            (st = heap_push(&s->h, now + s->c->t_step, EV_STEP_START, a, 0, 0)))
            return st;
    }
    return start_attn(s, a, now);
}

static duet_status_t on_exp_done(sim_t *s, int e, double t0, double now)
{
    eshard_t *x = &s->es[e];
    duet_status_t st;
    long r = x->cur;
    if (s->tr.on) {
        long layer = (r / s->m) % s->L, ub = r % s->m;
        for (int a = 0; a < s->A; a++)
            tr_add(&s->tr, 'f', "m2n", s->A + e + 1, t0, 0, 0, 0, 0, 0, flow_id(0, r, a, e));
        tr_add(&s->tr, 'X', "expert", s->A + e + 1, t0, now - t0, r, layer, ub,
               (long)(x->rows + 0.5), 0);
        for (int a = 0; a < s->A; a++)
            tr_add(&s->tr, 's', "n2m", s->A + e + 1, now, 0, 0, 0, 0, 0, flow_id(1, r, a, e));
    }
    x->busy = false;
    x->next = r + 1;
    for (int a = 0; a < s->A; a++) {
        double bytes = s->c->tokens_ub * s->c->top_k * share_of(s, e) * s->c->row_bytes;
        if ((st = heap_push(&s->h, now + msg_delay(s, bytes), EV_RES_ARRIVE, a, e, r)))
            return st;
    }
    return start_exp(s, e, now);
}

static duet_status_t on_job_done(sim_t *s, int k, double now)
{
    duet_status_t st = DUET_OK;
    double t0 = s->jobs[k].start;
    s->jobs[k].on = false;
    s->jobs[k].running = false;
    if (s->spin_on) {
        /* the thread keeps its core: for its next computation if it has
         * one now, else it spins there */
        int h = s->at_slot[k];
        s->slot_job[h] = -1;
        s->slot_spin[h] = k;
        if (k >= s->A) {
            s->exp_running--;
            if ((st = exp_rerate(s, now)))
                return st;
        }
        st = k < s->A ? on_attn_done(s, k, t0, now) : on_exp_done(s, k - s->A, t0, now);
        if (!st && s->slot_spin[h] == k)
            st = spin_waiter_for(s, h) ? spin_stop(s, h, now) : spin_arm(s, k, now);
        return st;
    }
    if (s->slots > 0) {
        s->running--;
        if (k >= s->A) {
            s->exp_running--;
            if ((st = exp_rerate(s, now))) /* the others speed up */
                return st;
        }
        if (s->wn > 0) { /* the next waiting computation takes the core */
            int w = s->waitq[s->wh];
            s->wh = (s->wh + 1) % (s->A + s->S);
            s->wn--;
            s->running++;
            if ((st = job_run(s, w, now)))
                return st;
        }
    }
    if (k < s->A)
        st = on_attn_done(s, k, t0, now);
    else
        st = on_exp_done(s, k - s->A, t0, now);
    return st;
}

static duet_status_t on_step_start(sim_t *s, int a, double now, bool first)
{
    ashard_t *x = &s->as[a];
    if (!first)
        x->iter++;
    x->ubs_done = 0;
    for (int i = 0; i < s->m; i++) {
        x->layer[i] = 0;
        x->queue[(x->qh + x->qn++) % s->m] = i;
    }
    return start_attn(s, a, now);
}

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double pct(const double *v, int n, double p)
{
    if (n <= 0)
        return 0;
    int k = (int)ceil(p * n) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return v[k];
}

static void sim_free(sim_t *s)
{
    for (int a = 0; s->as && a < s->A; a++) {
        free(s->as[a].queue);
        free(s->as[a].layer);
        free(s->as[a].got);
        free(s->as[a].step_end);
    }
    for (int e = 0; s->es && e < s->S; e++)
        free(s->es[e].arrived);
    free(s->as);
    free(s->es);
    free(s->jobs);
    free(s->waitq);
    free(s->h.v);
    free(s->tr.v);
    free(s->frac);
    free(s->grows);
    free(s->slot_job);
    free(s->slot_spin);
    free(s->home);
    free(s->at_slot);
    free(s->spin_ver);
    free(s->wl);
}

/* With recorded routes: which share of each expert's rows each shard runs. */
static duet_status_t routes_init(sim_t *s)
{
    const duet_sim_cfg_t *c = s->c;
    int E = c->n_experts, S = s->S;
    if (!c->routes)
        return DUET_OK;
    if (c->route_seqs < 1 || c->route_steps < 1 || c->requests < 1 || E < 1 ||
        (size_t)S * (size_t)E > ((size_t)1 << 22))
        return duet_errorf(DUET_ERR_INVALID,
                           "simulate: recorded routes need sequences, steps, requests and "
                           "experts (%d, %d, %d, %d; at most 4M shard x expert pairs)",
                           c->route_seqs, c->route_steps, c->requests, E);
    s->frac = calloc((size_t)S * (size_t)E, sizeof(double));
    s->grows = calloc((size_t)E, sizeof(double));
    int *copies = calloc((size_t)E, sizeof(int));
    if (!s->frac || !s->grows || !copies) {
        free(copies);
        return DUET_ERR_NOMEM;
    }
    for (int e = 0; e < S; e++) {
        int n = c->shard_experts ? c->shard_n_experts[e] : 0;
        if (!c->shard_experts)
            for (int x = e; x < E; x += S)
                s->frac[(size_t)e * E + x] = 1;
        for (int k = 0; k < n; k++) {
            int x = c->shard_experts[e][k];
            if (x < 0 || x >= E) {
                free(copies);
                return duet_errorf(DUET_ERR_INVALID, "simulate: shard %d holds expert %d of %d",
                                   e, x, E);
            }
            s->frac[(size_t)e * E + x] = 1;
        }
    }
    for (int e = 0; e < S; e++)
        for (int x = 0; x < E; x++)
            copies[x] += s->frac[(size_t)e * E + x] > 0;
    for (int e = 0; e < S; e++)
        for (int x = 0; x < E; x++)
            if (s->frac[(size_t)e * E + x] > 0)
                s->frac[(size_t)e * E + x] = 1.0 / copies[x];
    for (long t = 0; t < (long)c->route_seqs * c->route_steps * s->L * c->top_k; t++)
        if (c->routes[t] < 0 || c->routes[t] >= E) {
            free(copies);
            return duet_errorf(DUET_ERR_INVALID, "simulate: recorded route %ld names expert %d of %d",
                               t, c->routes[t], E);
        }
    free(copies);
    return DUET_OK;
}

duet_status_t duet_sim_run(const duet_sim_cfg_t *c, duet_sim_result_t *out)
{
    if (!c || !out || c->n_attention < 1 || c->n_expert_shards < 1 || c->micro_batches < 1 ||
        c->n_layers < 1 || c->iterations < 1 || c->top_k < 1 || c->tokens_ub < 0)
        return duet_errorf(DUET_ERR_INVALID,
                           "simulate: bad configuration (n_a %d, S %d, m %d, "
                           "layers %d, iterations %d)",
                           c ? c->n_attention : 0, c ? c->n_expert_shards : 0,
                           c ? c->micro_batches : 0, c ? c->n_layers : 0, c ? c->iterations : 0);
    if ((long)c->iterations * c->n_layers * c->micro_batches > 4000000 || c->n_attention > 4096 ||
        c->n_expert_shards > 4096)
        return duet_errorf(DUET_ERR_INVALID,
                           "simulate: %d iterations x %d layers x %d micro-batches "
                           "on %d + %d shards is too large",
                           c->iterations, c->n_layers, c->micro_batches, c->n_attention,
                           c->n_expert_shards);
    sim_t s = {0};
    duet_status_t st = DUET_OK;
    s.c = c;
    s.A = c->n_attention;
    s.S = c->n_expert_shards;
    s.m = c->micro_batches;
    s.L = c->n_layers;
    s.total_rounds = (long)c->iterations * s.L * s.m;
    s.share_default = 1.0 / s.S;
    s.tr.on = c->trace_path != NULL;
    s.as = calloc((size_t)s.A, sizeof(ashard_t));
    s.es = calloc((size_t)s.S, sizeof(eshard_t));
    s.jobs = calloc((size_t)(s.A + s.S), sizeof(job_t));
    s.waitq = calloc((size_t)(s.A + s.S), sizeof(int));
    core_init(&s);
    if (!s.as || !s.es || !s.jobs || !s.waitq) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    if (s.slots > 0 && c->spin > 0) {
        int n = s.A + s.S;
        s.spin_on = true;
        s.slot_job = malloc((size_t)s.slots * sizeof(int));
        s.slot_spin = malloc((size_t)s.slots * sizeof(int));
        s.home = malloc((size_t)n * sizeof(int));
        s.at_slot = malloc((size_t)n * sizeof(int));
        s.spin_ver = calloc((size_t)n, sizeof(long));
        s.wl = malloc((size_t)n * sizeof(int));
        if (!s.slot_job || !s.slot_spin || !s.home || !s.at_slot || !s.spin_ver || !s.wl) {
            st = DUET_ERR_NOMEM;
            goto out;
        }
        for (int x = 0; x < s.slots; x++)
            s.slot_job[x] = s.slot_spin[x] = -1;
        uint64_t x = c->placement_seed;
        for (int k = 0; k < n; k++) {
            s.home[k] = s.at_slot[k] = -1;
            if (c->placement_seed)
                s.home[k] = (int)(duet_splitmix64(&x) % (uint64_t)s.slots);
        }
    }
    if ((st = routes_init(&s)))
        goto out;
    for (int a = 0; a < s.A; a++) {
        ashard_t *x = &s.as[a];
        x->queue = calloc((size_t)s.m, sizeof(int));
        x->layer = calloc((size_t)s.m, sizeof(int));
        x->got = calloc((size_t)s.m, sizeof(int));
        x->step_end = calloc((size_t)c->iterations, sizeof(double));
        if (!x->queue || !x->layer || !x->got || !x->step_end) {
            st = DUET_ERR_NOMEM;
            goto out;
        }
    }
    for (int e = 0; e < s.S; e++) {
        s.es[e].arrived = calloc((size_t)s.total_rounds, sizeof(int));
        if (!s.es[e].arrived) {
            st = DUET_ERR_NOMEM;
            goto out;
        }
    }
    for (int a = 0; a < s.A && !st; a++)
        st = on_step_start(&s, a, 0.0, true);
    long events = 0;
    double now = 0;
    while (!st && s.h.n > 0) {
        ev_t ev = heap_pop(&s.h);
        now = ev.t;
        events++;
        switch (ev.type) {
        case EV_JOB_DONE:
            if (ev.round == s.jobs[ev.who].ver && s.jobs[ev.who].on) /* else re-timed */
                st = on_job_done(&s, ev.who, now);
            break;
        case EV_DISP_ARRIVE:
            s.es[ev.who].arrived[ev.round]++;
            if (spinning(&s, s.A + ev.who)) /* a message: the spin starts again */
                st = spin_arm(&s, s.A + ev.who, now);
            if (!st)
                st = start_exp(&s, ev.who, now);
            break;
        case EV_SPIN_END:
            if (ev.round == s.spin_ver[ev.who] && spinning(&s, ev.who))
                st = spin_stop(&s, s.at_slot[ev.who], now);
            break;
        case EV_RES_ARRIVE: {
            ashard_t *x = &s.as[ev.who];
            if (spinning(&s, ev.who) && (st = spin_arm(&s, ev.who, now)))
                break;
            int i = (int)(ev.round % s.m);
            if (++x->got[i] == s.S) {
                x->queue[(x->qh + x->qn++) % s.m] = i;
                st = start_attn(&s, ev.who, now);
            }
            break;
        }
        case EV_STEP_START: st = on_step_start(&s, ev.who, now, false); break;
        default: break;
        }
    }
    if (st)
        goto out;
    /* every shard must have finished every iteration: otherwise the model
     * deadlocked, which is a bug in the simulation */
    for (int a = 0; a < s.A; a++)
        if (s.as[a].iter != c->iterations - 1 || s.as[a].ubs_done != s.m) {
            st = duet_errorf(DUET_ERR_INTERNAL,
                             "simulate: attention shard %d stopped at iteration "
                             "%d",
                             a, s.as[a].iter);
            goto out;
        }
    memset(out, 0, sizeof(*out));
    out->seconds = now;
    out->events = events;
    int I = c->iterations;
    double *tbt = calloc((size_t)s.A * (size_t)(I > 1 ? I - 1 : 1) + 1, sizeof(double));
    if (!tbt) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    int nt = 0;
    double tps = 0;
    for (int a = 0; a < s.A; a++) {
        const ashard_t *x = &s.as[a];
        double span, steps;
        if (I > 1) {
            span = x->step_end[I - 1] - x->step_end[0];
            steps = I - 1;
            for (int k = 1; k < I; k++)
                tbt[nt++] = x->step_end[k] - x->step_end[k - 1];
        } else {
            span = x->step_end[0];
            steps = 1;
            tbt[nt++] = span;
        }
        if (span > 0)
            tps += c->tokens_ub * s.m * steps / span;
    }
    qsort(tbt, (size_t)nt, sizeof(double), cmp_d);
    out->tokens_per_s = tps;
    out->tbt_p50 = pct(tbt, nt, 0.50);
    out->tbt_p90 = pct(tbt, nt, 0.90);
    out->tbt_p99 = pct(tbt, nt, 0.99);
    free(tbt);
    for (int a = 0; a < s.A; a++)
        out->util_attn += now > 0 ? s.as[a].busy_s / now / s.A : 0;
    for (int e = 0; e < s.S; e++)
        out->util_expert += now > 0 ? s.es[e].busy_s / now / s.S : 0;
    if (c->trace_path)
        st = tr_write(&s.tr, c->trace_path, s.A, s.S);
out:
    sim_free(&s);
    return st;
}

/* ---- a host deployment from a profile -------------------------------------- */

typedef struct prof_user {
    const duet_profile_t *p;
    const char *link;
    double slow; /* compute terms x this (the host now against the profile) */
} prof_user_t;

static double pf_attn(void *u, double b, double ctx)
{
    return ((prof_user_t *)u)->slow * duet_profile_t_attn(((prof_user_t *)u)->p, b, ctx);
}

static double pf_expert(void *u, double rows)
{
    return ((prof_user_t *)u)->slow * duet_profile_t_expert(((prof_user_t *)u)->p, rows);
}

static double pf_dispatch(void *u, double rows, int n_shards)
{
    const prof_user_t *pu = u;
    (void)rows;
    return pu->p->disp_fix + pu->p->disp_per_shard * n_shards;
}

static double pf_combine(void *u, double rows)
{
    return ((prof_user_t *)u)->slow * duet_profile_t_combine(((prof_user_t *)u)->p, rows);
}

static double pf_logits(void *u, double b)
{
    return ((prof_user_t *)u)->slow * duet_profile_t_logits(((prof_user_t *)u)->p, b);
}

static double pf_exp_fix(void *u, int n_a)
{
    const prof_user_t *pu = u;
    return pu->slow * pu->p->exp_fix * n_a;
}

static double pf_xfer(void *u, double bytes)
{
    const prof_user_t *pu = u;
    return duet_profile_xfer(pu->p, pu->link, bytes);
}

duet_status_t duet_sim_profile(const duet_profile_t *p, const duet_plan_run_t *r,
                               const char *trace_path, duet_sim_result_t *out)
{
    int A = r->n_attention, S = r->n_expert_shards, m = r->micro_batches;
    if (A < 1 || S < 1 || m < 1 || r->requests < 1)
        return duet_errorf(DUET_ERR_INVALID, "simulate: n_a %d, shards %d, m %d, requests %d", A, S,
                           m, r->requests);
    if (p->n_experts < 1 || p->top_k < 1 || p->n_sparse < 1)
        return duet_errorf(DUET_ERR_INVALID, "simulate: the profile has no model shape");
    prof_user_t pu = {p, r->provider ? r->provider : "shm", p->slowdown > 0 ? p->slowdown : 1.0};
    double share[256];
    int groups[256];
    if (S > 256)
        return duet_errorf(DUET_ERR_INVALID, "simulate: at most 256 expert shards");
    /* the experts each shard holds (replicas split an expert's rows) */
    int copies[4096] = {0};
    if (p->n_experts > 4096)
        return duet_errorf(DUET_ERR_INVALID, "simulate: at most 4096 experts");
    for (int s = 0; s < S; s++) {
        if (r->shard_experts) {
            for (int k = 0; k < r->shard_n_experts[s]; k++)
                copies[r->shard_experts[s][k]]++;
        } else {
            for (int e = s; e < p->n_experts; e += S)
                copies[e]++;
        }
    }
    for (int s = 0; s < S; s++) {
        double sh = 0;
        int g = 0;
        if (r->shard_experts) {
            for (int k = 0; k < r->shard_n_experts[s]; k++) {
                int e = r->shard_experts[s][k];
                sh += 1.0 / (p->n_experts * (double)(copies[e] ? copies[e] : 1));
                g++;
            }
        } else {
            for (int e = s; e < p->n_experts; e += S) {
                sh += 1.0 / p->n_experts;
                g++;
            }
        }
        share[s] = sh;
        groups[s] = g;
    }
    duet_sim_cfg_t c = {
        .n_attention = A,
        .n_expert_shards = S,
        .micro_batches = m,
        .n_layers = p->n_sparse,
        .iterations = r->new_tokens > 2 ? r->new_tokens : 2,
        .tokens_ub = (double)r->requests / (A * m),
        .ctx = r->prompt_len,
        .top_k = p->top_k,
        .n_experts = p->n_experts,
        .shard_share = share,
        .shard_groups = groups,
        .t_attn = pf_attn,
        .t_expert = pf_expert,
        .t_dispatch = pf_dispatch,
        .t_combine = pf_combine,
        .t_logits = pf_logits,
        .t_exp_fix = pf_exp_fix,
        .t_xfer = pf_xfer,
        .user = &pu,
        .t_c = p->t_c,
        .t_step = p->t_step,
        .row_bytes = 4.0 * p->hidden,
        .cores = p->parallel > 0 ? p->parallel : p->cores,
        .contention = p->contention,
        .n_contention = p->n_contention,
        .routes = p->route_seqs > 0 ? p->routes : NULL,
        .route_seqs = p->route_seqs,
        .route_steps = p->route_steps,
        .requests = r->requests,
        .shard_experts = r->shard_experts,
        .shard_n_experts = r->shard_n_experts,
        .t_c_core = p->t_c_typ > 0 && p->t_c_typ < p->t_c ? p->t_c_typ : p->t_c,
        .spin = p->spin_s,
        .trace_path = trace_path,
    };
    if (!(c.spin > 0 && c.cores > 0))
        return duet_sim_run(&c, out);
    /* Spinning threads keep their cores, so where the OS put each thread
     * matters (two expert shards behind one core while an attention shard
     * spins on the other are slower than one of each per core), and a real
     * run gets whatever placement its threads' start-up left: the expected
     * run over SIM_PLACEMENTS placements drawn at random, the trace of the
     * first. */
    enum { SIM_PLACEMENTS = 16 };
    duet_sim_result_t sum = {0};
    duet_status_t st = DUET_OK;
    for (int q = 0; q < SIM_PLACEMENTS && !st; q++) {
        duet_sim_result_t o;
        c.placement_seed = (unsigned long long)q + 1;
        c.trace_path = q == 0 ? trace_path : NULL;
        if ((st = duet_sim_run(&c, &o)))
            break;
        sum.seconds += o.seconds / SIM_PLACEMENTS;
        sum.tokens_per_s += o.tokens_per_s / SIM_PLACEMENTS;
        sum.tbt_p50 += o.tbt_p50 / SIM_PLACEMENTS;
        sum.tbt_p90 += o.tbt_p90 / SIM_PLACEMENTS;
        sum.tbt_p99 += o.tbt_p99 / SIM_PLACEMENTS;
        sum.util_attn += o.util_attn / SIM_PLACEMENTS;
        sum.util_expert += o.util_expert / SIM_PLACEMENTS;
        sum.events += o.events;
    }
    if (!st)
        *out = sum;
    return st;
}
