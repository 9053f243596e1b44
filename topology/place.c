/* topology expert placement — the paper's greedy: hot experts get replicas,
 * then copies are placed heaviest first on the least loaded shard that does
 * not hold that expert yet (LPT), then a local search moves or swaps copies
 * off the most loaded shard while that lowers it. A copy of expert e
 * carries loads[e] / replicas[e]: the router spreads a replicated expert's
 * tokens evenly over its copies. */
#include "topology/topo_int.h"

#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#define LOCAL_SEARCH_STEPS 10000
#define EPS 1e-9

typedef struct copy {
    int expert;
    double w;
} copy_t;

static int copy_cmp(const void *a, const void *b)
{
    const copy_t *x = a, *y = b;
    if (x->w != y->w)
        return x->w > y->w ? -1 : 1;
    return x->expert - y->expert;
}

typedef struct pstate {
    int n_e, n_s, cap;
    const double *w_of; /* per-copy weight of each expert */
    bool *holds;        /* [n_s * n_e] */
    int *count;         /* [n_s] */
    double *load;       /* [n_s] */
} pstate_t;

static bool has(const pstate_t *p, int s, int e)
{
    return p->holds[(size_t)s * (size_t)p->n_e + (size_t)e];
}

static void put(pstate_t *p, int s, int e, bool on)
{
    p->holds[(size_t)s * (size_t)p->n_e + (size_t)e] = on;
    p->count[s] += on ? 1 : -1;
    p->load[s] += on ? p->w_of[e] : -p->w_of[e];
}

/* One improving move or swap off the most loaded shard; false if none. */
static bool improve(pstate_t *p)
{
    int smax = 0;
    for (int s = 1; s < p->n_s; s++)
        if (p->load[s] > p->load[smax])
            smax = s;
    double top = p->load[smax];
    double best = top - EPS;
    int bx = -1, by = -1, bt = -1;
    for (int x = 0; x < p->n_e; x++) {
        if (!has(p, smax, x))
            continue;
        double wx = p->w_of[x];
        for (int t = 0; t < p->n_s; t++) {
            if (t == smax || has(p, t, x))
                continue;
            /* move x: smax keeps at least one expert, t has room */
            if (p->count[smax] > 1 && (p->cap == 0 || p->count[t] < p->cap)) {
                double m = fmax(top - wx, p->load[t] + wx);
                if (m < best) {
                    best = m;
                    bx = x, by = -1, bt = t;
                }
            }
            /* swap x with a lighter y of t that smax does not hold */
            for (int y = 0; y < p->n_e; y++) {
                if (!has(p, t, y) || has(p, smax, y) || p->w_of[y] >= wx)
                    continue;
                double d = wx - p->w_of[y];
                double m = fmax(top - d, p->load[t] + d);
                if (m < best) {
                    best = m;
                    bx = x, by = y, bt = t;
                }
            }
        }
    }
    if (bx < 0)
        return false;
    put(p, smax, bx, false);
    put(p, bt, bx, true);
    if (by >= 0) {
        put(p, bt, by, false);
        put(p, smax, by, true);
    }
    return true;
}

/* Place the copies r[] asks for into p (cleared first): LPT, then the
 * local search. Where capacity leaves a replica nowhere to go it is
 * dropped (r[e] shrinks); the first copy of an expert always has room. */
static void place_copies(pstate_t *p, const double *loads, int *r, double *w_of, copy_t *copies)
{
    int n_e = p->n_e, n_s = p->n_s;
    memset(p->holds, 0, (size_t)n_e * (size_t)n_s * sizeof(bool));
    memset(p->count, 0, (size_t)n_s * sizeof(int));
    memset(p->load, 0, (size_t)n_s * sizeof(double));
    size_t nc = 0;
    for (int e = 0; e < n_e; e++) {
        w_of[e] = loads[e] / r[e];
        for (int k = 0; k < r[e]; k++)
            copies[nc++] = (copy_t){e, w_of[e]};
    }
    qsort(copies, nc, sizeof(*copies), copy_cmp);
    for (size_t i = 0; i < nc; i++) {
        int e = copies[i].expert, best = -1;
        for (int s = 0; s < n_s; s++) {
            if (has(p, s, e) || (p->cap && p->count[s] >= p->cap))
                continue;
            /* least loaded; on a tie the emptier, so every shard gets work */
            if (best < 0 || p->load[s] < p->load[best] - EPS ||
                (fabs(p->load[s] - p->load[best]) <= EPS && p->count[s] < p->count[best]))
                best = s;
        }
        if (best >= 0)
            put(p, best, e, true);
        else
            r[e]--;
    }
    /* weights follow the copies actually placed */
    for (int e = 0; e < n_e; e++)
        w_of[e] = loads[e] / r[e];
    for (int s = 0; s < n_s; s++) {
        p->load[s] = 0;
        for (int e = 0; e < n_e; e++)
            if (has(p, s, e))
                p->load[s] += w_of[e];
    }
    for (int step = 0; step < LOCAL_SEARCH_STEPS && improve(p); step++)
        ;
}

static double max_load(const pstate_t *p)
{
    double m = 0;
    for (int s = 0; s < p->n_s; s++)
        m = fmax(m, p->load[s]);
    return m;
}

duet_status_t duet_topology_place_experts(const double *loads, int n_experts, int n_shards,
                                          int replica_budget, const duet_place_opts_t *opts,
                                          duet_placement_t **placement_out)
{
    if (!loads || !placement_out || n_experts < 1 || n_shards < 1 || replica_budget < 0)
        return duet_errorf(DUET_ERR_INVALID,
                           "placing experts: need loads, n_experts >= 1, n_shards >= 1 and a "
                           "replica budget >= 0 (got %d experts, %d shards, budget %d)",
                           n_experts, n_shards, replica_budget);
    int cap = opts ? opts->max_per_shard : 0;
    if (cap < 0)
        return duet_errorf(DUET_ERR_INVALID, "placing experts: max_per_shard %d < 0", cap);
    for (int e = 0; e < n_experts; e++)
        if (!(loads[e] >= 0) || !isfinite(loads[e]))
            return duet_errorf(DUET_ERR_INVALID, "placing experts: load of expert %d is %g", e,
                               loads[e]);
    long long room = cap ? (long long)cap * n_shards : LLONG_MAX;
    if (n_experts > room)
        return duet_errorf(DUET_ERR_CAPACITY,
                           "placing experts: %d experts do not fit on %d shards of %d each",
                           n_experts, n_shards, cap);
    size_t ne = (size_t)n_experts, ns = (size_t)n_shards;
    size_t holds_n;
    if (duet_mul_overflow(ne, ns, &holds_n) || holds_n > ((size_t)1 << 28))
        return duet_errorf(DUET_ERR_INVALID, "placing experts: %d experts x %d shards is too large",
                           n_experts, n_shards);
    /* extra copies beyond one per expert can never exceed this */
    long long most = (long long)n_experts * (n_shards - 1);
    if (cap)
        most = DUET_MIN(most, room - n_experts);
    int budget = (int)DUET_MIN((long long)replica_budget, most);

    duet_status_t st = DUET_OK;
    duet_placement_t *pl = duet_calloc(1, sizeof(*pl));
    double *w_of = duet_calloc(ne, sizeof(*w_of));
    double *best_w = duet_calloc(ne, sizeof(*best_w));
    int *r = duet_calloc(ne, sizeof(*r));
    int *seq = duet_calloc((size_t)budget + 1, sizeof(*seq));
    copy_t *copies = duet_calloc(ne + (size_t)budget, sizeof(*copies));
    pstate_t p = {.n_e = n_experts, .n_s = n_shards, .cap = cap, .w_of = w_of};
    pstate_t best = {.n_e = n_experts, .n_s = n_shards, .cap = cap, .w_of = best_w};
    p.holds = duet_calloc(holds_n, sizeof(bool));
    p.count = duet_calloc(ns, sizeof(int));
    p.load = duet_calloc(ns, sizeof(double));
    best.holds = duet_calloc(holds_n, sizeof(bool));
    best.count = duet_calloc(ns, sizeof(int));
    best.load = duet_calloc(ns, sizeof(double));
    if (pl) {
        pl->offsets = duet_calloc(ns + 1, sizeof(int));
        pl->replicas = duet_calloc(ne, sizeof(int));
        pl->shard_load = duet_calloc(ns, sizeof(double));
    }
    if (!pl || !w_of || !best_w || !r || !seq || !copies || !p.holds || !p.count || !p.load ||
        !best.holds || !best.count || !best.load || !pl->offsets || !pl->replicas ||
        !pl->shard_load) {
        st = duet_errorf(DUET_ERR_NOMEM, "out of memory placing %d experts", n_experts);
        goto out_free;
    }
    pl->n_experts = n_experts;
    pl->n_shards = n_shards;

    /* 1. the order in which replicas are handed out: each extra copy to the
     * expert whose copies are heaviest */
    for (int e = 0; e < n_experts; e++)
        r[e] = 1;
    for (int b = 0; b < budget; b++) {
        int hot = -1;
        for (int e = 0; e < n_experts; e++) {
            if (r[e] >= n_shards)
                continue;
            if (hot < 0) {
                hot = e;
                continue;
            }
            double we = loads[e] / r[e], wh = loads[hot] / r[hot];
            if (we > wh || (we == wh && r[e] < r[hot]))
                hot = e;
        }
        if (hot < 0) {
            budget = b; /* every expert on every shard */
            break;
        }
        seq[b] = hot;
        r[hot]++;
    }

    /* 2. place with the first b replicas of that order, for every b that
     * fills every shard (when the budget can), and keep the best: a replica
     * more is not always better once copies have to be packed */
    int b_min = (int)DUET_MIN((long long)budget, DUET_MAX(0LL, (long long)n_shards - n_experts));
    double best_max = INFINITY;
    /* every prefix for small budgets; about 64 evenly spaced ones (and the
     * whole budget) for large ones, to bound the time */
    int step = DUET_MAX(1, (budget - b_min) / 64);
    for (int b = b_min; b <= budget; b = (b < budget && b + step > budget) ? budget : b + step) {
        for (int e = 0; e < n_experts; e++)
            r[e] = 1;
        for (int i = 0; i < b; i++)
            r[seq[i]]++;
        place_copies(&p, loads, r, w_of, copies);
        double m = max_load(&p);
        if (m < best_max - EPS) {
            best_max = m;
            memcpy(best.holds, p.holds, holds_n * sizeof(bool));
            memcpy(best.count, p.count, ns * sizeof(int));
            memcpy(best.load, p.load, ns * sizeof(double));
            memcpy(pl->replicas, r, ne * sizeof(int));
        }
    }

    /* 3. result, each shard's experts in ascending order */
    size_t placed = 0;
    for (int s = 0; s < n_shards; s++)
        placed += (size_t)best.count[s];
    pl->experts = duet_calloc(placed ? placed : 1, sizeof(int));
    if (!pl->experts) {
        st = duet_errorf(DUET_ERR_NOMEM, "out of memory placing %d experts", n_experts);
        goto out_free;
    }
    int off = 0;
    pl->max_load = 0;
    for (int s = 0; s < n_shards; s++) {
        pl->offsets[s] = off;
        for (int e = 0; e < n_experts; e++)
            if (has(&best, s, e))
                pl->experts[off++] = e;
        pl->shard_load[s] = best.load[s];
        pl->max_load = fmax(pl->max_load, best.load[s]);
    }
    pl->offsets[n_shards] = off;
    *placement_out = pl;
    pl = NULL;
out_free:
    duet_placement_destroy(&pl);
    duet_free(copies);
    duet_free(seq);
    duet_free(r);
    duet_free(w_of);
    duet_free(best_w);
    duet_free(p.holds);
    duet_free(p.count);
    duet_free(p.load);
    duet_free(best.holds);
    duet_free(best.count);
    duet_free(best.load);
    return st;
}

void duet_placement_destroy(duet_placement_t **placement_p)
{
    if (!placement_p || !*placement_p)
        return;
    duet_placement_t *pl = *placement_p;
    duet_free(pl->offsets);
    duet_free(pl->experts);
    duet_free(pl->replicas);
    duet_free(pl->shard_load);
    duet_free(pl);
    *placement_p = NULL;
}

duet_status_t duet_topology_apply_placement(duet_topology_t *topo,
                                            const duet_placement_t *placement)
{
    if (!topo || !placement)
        return duet_errorf(DUET_ERR_INVALID, "duet_topology_apply_placement: NULL argument");
    if (placement->n_shards != topo->n_expert)
        return duet_errorf(DUET_ERR_INVALID,
                           "placement is for %d expert shards, the deployment has %d",
                           placement->n_shards, topo->n_expert);
    for (int s = 0; s < placement->n_shards; s++) {
        int a = placement->offsets[s], b = placement->offsets[s + 1];
        duet_status_t st =
            duet_topology_set_shard_experts(topo, s, placement->experts + a, (size_t)(b - a));
        if (st)
            return st;
    }
    return DUET_OK;
}
