/* plan — hardware files, model shapes, the roofline performance model of a
 * GPU type and the paper's Algorithm 1.
 *
 * Timings of a role on a hardware type: a profiled type (a CPU host, from
 * `duet profile`) uses its fitted k1..k4 and T_c; a catalogue type (Table 3)
 * uses a roofline: max(bytes / (bandwidth · 0.8), FLOPs / (peak · 0.7)) plus
 * a fixed launch cost, per layer-half. Transfers: 10 µs + (bytes + 64 KiB) /
 * NIC bandwidth, i.e. Util(size) = size / (size + 64 KiB) (a profile
 * replaces the curve with its measured points).
 *
 * Search (Algorithm 1): for every (attention type, expert type) pair, tp_e,
 * tp_a (weights must fit), expert nodes n_e (E / n_e experts each; the paper
 * uses n_e = E), n_a from the balance rule n_a = k1·n_e / (k3·K) (and its
 * neighbours, since a roofline is only piecewise linear), m in
 * min_m..max_m: binary search of the largest per-micro-batch batch b_a whose
 * iteration time T_total = (T_a + T_e + 2T_c) + T_f(m·L − 1) meets the SLO
 * and whose KV cache fits. Plans rank by throughput per cost. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "model/model.h"
#include "topology/plan.h"

#define MEM_EFF 0.8
#define FLOP_EFF 0.7
#define LAUNCH_ATTN 30e-6
#define LAUNCH_EXPERT 20e-6
#define NET_LAT_US 50.0    /* per M2N message: GPU event, post, poll, release */
#define UTIL_HALF_KB 256.0 /* Util(size) = size / (size + this) */
#define MEM_FRACTION 0.9

/* ---- hardware file -------------------------------------------------------------- */

void duet_hw_list_cleanup(duet_hw_list_t *l)
{
    if (!l)
        return;
    free(l->hw);
    l->hw = NULL;
    l->n = 0;
}

const duet_hw_t *duet_hw_find(const duet_hw_list_t *l, const char *name)
{
    for (int i = 0; l && i < l->n; i++)
        if (!strcmp(l->hw[i].name, name))
            return &l->hw[i];
    return NULL;
}

static duet_status_t hw_set(duet_hw_t *h, const char *path, int line, const char *key,
                            const char *val, const char *base_dir)
{
    char *end = NULL;
    if (!strcmp(key, "name")) {
        if (strlen(val) >= sizeof(h->name))
            return duet_errorf(DUET_ERR_INVALID, "%s:%d: name '%s' is too long", path, line, val);
        snprintf(h->name, sizeof(h->name), "%s", val);
        return DUET_OK;
    }
    if (!strcmp(key, "profile")) {
        char p[2048];
        if (val[0] == '/' || !base_dir)
            snprintf(p, sizeof(p), "%s", val);
        else
            snprintf(p, sizeof(p), "%s/%s", base_dir, val);
        duet_status_t st = duet_profile_load(p, &h->prof);
        if (st)
            return duet_error_wrap(st, "%s:%d: profile", path, line);
        h->profiled = true;
        return DUET_OK;
    }
    double v = strtod(val, &end);
    if (!end || end == val || *end || !isfinite(v) || v < 0)
        return duet_errorf(DUET_ERR_INVALID, "%s:%d: %s: '%s' is not a non-negative number", path,
                           line, key, val);
    if (!strcmp(key, "price"))
        h->price = v;
    else if (!strcmp(key, "memory_gb"))
        h->mem_gb = v;
    else if (!strcmp(key, "bandwidth_gbs"))
        h->bw_gbs = v;
    else if (!strcmp(key, "tflops"))
        h->tflops = v;
    else if (!strcmp(key, "nic_gbps"))
        h->nic_gbps = v;
    else if (!strcmp(key, "net_latency_us"))
        h->net_lat_us = v;
    else if (!strcmp(key, "util_half_kb"))
        h->util_half_kb = v;
    else if (!strcmp(key, "max_tp")) {
        if (v < 1 || v > 64 || v != floor(v))
            return duet_errorf(DUET_ERR_INVALID, "%s:%d: max_tp %s: must be 1..64", path, line,
                               val);
        h->max_tp = (int)v;
    } else if (!strcmp(key, "count")) {
        if (v > 1e6 || v != floor(v))
            return duet_errorf(DUET_ERR_INVALID, "%s:%d: count %s: must be a whole number", path,
                               line, val);
        h->count = (int)v;
    } else
        return duet_errorf(
            DUET_ERR_INVALID,
            "%s:%d: unknown key '%s' (name, price, memory_gb, bandwidth_gbs, tflops, "
            "nic_gbps, net_latency_us, util_half_kb, max_tp, count, profile)",
            path, line, key);
    return DUET_OK;
}

static duet_status_t hw_check(const duet_hw_t *h, const char *path, int line)
{
    if (!h->name[0])
        return duet_errorf(DUET_ERR_INVALID, "%s:%d: hardware entry without a name", path, line);
    if (h->price <= 0)
        return duet_errorf(DUET_ERR_INVALID, "%s:%d: %s: price must be > 0", path, line, h->name);
    if (h->mem_gb <= 0)
        return duet_errorf(DUET_ERR_INVALID, "%s:%d: %s: memory_gb must be > 0", path, line,
                           h->name);
    if (!h->profiled && (h->bw_gbs <= 0 || h->tflops <= 0))
        return duet_errorf(DUET_ERR_INVALID,
                           "%s:%d: %s: needs bandwidth_gbs and tflops (or a profile)", path, line,
                           h->name);
    return DUET_OK;
}

duet_status_t duet_hw_load(const char *path, duet_hw_list_t *out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return duet_errorf(DUET_ERR_IO, "hardware file %s: cannot open", path);
    char base[1024];
    snprintf(base, sizeof(base), "%s", path);
    char *slash = strrchr(base, '/');
    if (slash)
        *slash = 0;
    else
        snprintf(base, sizeof(base), ".");
    yaml_parser_t yp;
    yaml_parser_initialize(&yp);
    yaml_parser_set_input_file(&yp, f);
    duet_hw_list_t l = {0};
    duet_status_t st = DUET_OK;
    /* depth: the document's top mapping (key "hardware") or a top sequence;
     * entries are mappings of scalars */
    int depth = 0, entry_line = 0;
    bool in_entry = false, in_list = false;
    char key[64] = "";
    bool have_key = false, top_key = true;
    duet_hw_t cur;
    for (;;) {
        yaml_event_t ev;
        if (!yaml_parser_parse(&yp, &ev)) {
            st = duet_errorf(DUET_ERR_INVALID, "%s:%zu:%zu: %s", path, yp.problem_mark.line + 1,
                             yp.problem_mark.column + 1, yp.problem ? yp.problem : "YAML error");
            break;
        }
        int line = (int)ev.start_mark.line + 1;
        yaml_event_type_t t = ev.type;
        if (t == YAML_STREAM_END_EVENT) {
            yaml_event_delete(&ev);
            break;
        }
        switch (t) {
        case YAML_SEQUENCE_START_EVENT:
            if (depth == 1)
                top_key = true; /* the value of a top-level key */
            if (in_entry)
                st = duet_errorf(DUET_ERR_INVALID, "%s:%d: %s: a list is not a value here", path,
                                 line, key);
            else
                in_list = true;
            depth++;
            break;
        case YAML_SEQUENCE_END_EVENT:
            in_list = false;
            depth--;
            break;
        case YAML_MAPPING_START_EVENT:
            if (in_list && !in_entry) {
                in_entry = true;
                entry_line = line;
                memset(&cur, 0, sizeof(cur));
                cur.max_tp = 8;
                cur.nic_gbps = 400;
                have_key = false;
            } else if (in_entry) {
                st = duet_errorf(DUET_ERR_INVALID, "%s:%d: %s: a mapping is not a value here", path,
                                 line, key);
            }
            depth++;
            break;
        case YAML_MAPPING_END_EVENT:
            if (in_entry) {
                in_entry = false;
                if (cur.profiled && cur.mem_gb <= 0)
                    cur.mem_gb = 8;
                if (cur.profiled && cur.price <= 0)
                    cur.price = 1;
                if (cur.profiled)
                    cur.max_tp = 1;
                if (!(st = hw_check(&cur, path, entry_line))) {
                    if (duet_hw_find(&l, cur.name))
                        st = duet_errorf(DUET_ERR_INVALID, "%s:%d: hardware '%s' is defined twice",
                                         path, entry_line, cur.name);
                    else {
                        duet_hw_t *nv = realloc(l.hw, sizeof(duet_hw_t) * (size_t)(l.n + 1));
                        if (!nv)
                            st = DUET_ERR_NOMEM;
                        else {
                            l.hw = nv;
                            l.hw[l.n++] = cur;
                        }
                    }
                }
            }
            depth--;
            break;
        case YAML_SCALAR_EVENT: {
            const char *v = (const char *)ev.data.scalar.value;
            if (!in_entry) {
                if (depth == 1 && !in_list) { /* top-level mapping: key, value, key, ... */
                    if (top_key && strcmp(v, "hardware") && strcmp(v, "version"))
                        st = duet_errorf(DUET_ERR_INVALID,
                                         "%s:%d: unknown top-level key '%s' (hardware, version)",
                                         path, line, v);
                    top_key = !top_key;
                }
                break;
            }
            if (!have_key) {
                snprintf(key, sizeof(key), "%s", v);
                have_key = true;
            } else {
                st = hw_set(&cur, path, line, key, v, base);
                have_key = false;
            }
            break;
        }
        default: break;
        }
        yaml_event_delete(&ev);
        if (st)
            break;
    }
    yaml_parser_delete(&yp);
    fclose(f);
    if (!st && l.n == 0)
        st = duet_errorf(DUET_ERR_INVALID,
                         "%s: no hardware entries (expected 'hardware:' with a "
                         "list)",
                         path);
    if (st) {
        duet_hw_list_cleanup(&l);
        return st;
    }
    *out = l;
    return DUET_OK;
}

/* ---- model shape ----------------------------------------------------------------- */

duet_status_t duet_plan_model_load(const char *dir_or_config, duet_plan_model_t *out)
{
    char path[1200];
    size_t n = strlen(dir_or_config);
    if (n > 5 && !strcmp(dir_or_config + n - 5, ".json"))
        snprintf(path, sizeof(path), "%s", dir_or_config);
    else
        snprintf(path, sizeof(path), "%s/config.json", dir_or_config);
    duet_config_t c;
    duet_status_t st = duet_config_load(path, &c);
    if (st)
        return st;
    duet_plan_model_t m;
    memset(&m, 0, sizeof(m));
    /* the model's folder name (of the file's folder when given config.json) */
    char nb[1200];
    snprintf(nb, sizeof(nb), "%s", path);
    char *sl = strrchr(nb, '/');
    if (sl)
        *sl = 0;
    const char *nm = strrchr(nb, '/');
    snprintf(m.name, sizeof(m.name), "%.63s", sl ? (nm ? nm + 1 : nb) : dir_or_config);
    m.hidden = c.hidden;
    m.n_layers = c.n_layers;
    for (int l = 0; l < c.n_layers; l++)
        m.n_sparse += c.sparse_layer[l] ? 1 : 0;
    m.n_heads = c.n_heads;
    m.n_kv_heads = c.n_kv_heads;
    m.head_dim = c.head_dim;
    m.vocab = c.vocab;
    m.n_experts = c.n_experts;
    m.top_k = c.top_k;
    m.expert_dim = c.expert_dim;
    m.dense_dim = c.dense_dim;
    double h = c.hidden, hd = c.head_dim;
    m.attn_params = h * hd * (c.n_heads * 2.0 + c.n_kv_heads * 2.0) + 2 * h + h * c.n_experts;
    if (c.shared_dim > 0)
        m.attn_params += 3.0 * h * c.shared_dim;
    m.expert_params = 3.0 * h * c.expert_dim;
    m.other_params = (c.tie_embeddings ? 1.0 : 2.0) * h * c.vocab;
    m.bytes_per_param = 2;
    duet_config_cleanup(&c);
    if (m.n_experts < 1 || m.top_k < 1 || m.n_sparse < 1)
        return duet_errorf(DUET_ERR_INVALID, "%s: not a mixture-of-experts model", path);
    *out = m;
    return DUET_OK;
}

/* ---- timing ---------------------------------------------------------------------- */

double duet_plan_t_attn(const duet_hw_t *hw, const duet_plan_model_t *m, int tp, double b, double s)
{
    if (b <= 0)
        return 0;
    if (hw->profiled) /* the attention half as the pipeline runs it: with its combine */
        return duet_profile_t_attn(&hw->prof, b, s) +
               duet_profile_t_combine(&hw->prof, b * m->top_k);
    double bpp = m->bytes_per_param;
    double kv_tok = 2.0 * m->n_kv_heads * m->head_dim * bpp; /* K and V of one token, one layer */
    double bytes = (m->attn_params * bpp + b * s * kv_tok) / tp;
    double flops = (2.0 * m->attn_params * b + 4.0 * b * s * m->n_heads * m->head_dim) / tp;
    double tm = bytes / (hw->bw_gbs * 1e9 * MEM_EFF);
    double tc = flops / (hw->tflops * 1e12 * FLOP_EFF);
    return (tm > tc ? tm : tc) + LAUNCH_ATTN;
}

double duet_plan_t_expert(const duet_hw_t *hw, const duet_plan_model_t *m, int tp, double b)
{
    if (b <= 0)
        return 0;
    if (hw->profiled)
        return duet_profile_t_expert(&hw->prof, b);
    double bytes = m->expert_params * m->bytes_per_param / tp;
    double flops = 2.0 * m->expert_params * b / tp;
    double tm = bytes / (hw->bw_gbs * 1e9 * MEM_EFF);
    double tc = flops / (hw->tflops * 1e12 * FLOP_EFF);
    return (tm > tc ? tm : tc) + LAUNCH_EXPERT;
}

double duet_plan_t_xfer(const duet_hw_t *hw, int n_dev, double bytes, double msg)
{
    if (bytes <= 0)
        return 0;
    if (hw->profiled)
        return duet_profile_xfer(&hw->prof, NULL, msg > 0 ? msg : bytes);
    double nic = hw->nic_gbps / 8.0 * 1e9 * (n_dev > 0 ? n_dev : 1);
    double half = (hw->util_half_kb > 0 ? hw->util_half_kb : UTIL_HALF_KB) * 1024.0;
    double lat = (hw->net_lat_us > 0 ? hw->net_lat_us : NET_LAT_US) * 1e-6;
    if (msg <= 0)
        msg = bytes;
    double util = msg / (msg + half);
    return lat + bytes / (nic * util);
}

static double t_c_of(const duet_plan_model_t *m, const duet_plan_t *pl, double b_a)
{
    double bpp = m->bytes_per_param;
    double per_node_e = (double)pl->n_a * b_a * m->top_k / pl->n_e; /* rows an expert node gets */
    double a_bytes = b_a * m->hidden * m->top_k * bpp, e_bytes = per_node_e * m->hidden * bpp;
    /* attention node: one message to each expert node; expert node: one
     * from each attention node */
    double out_a = duet_plan_t_xfer(pl->hw_a, pl->tp_a, a_bytes, a_bytes / pl->n_e);
    double in_e = duet_plan_t_xfer(pl->hw_e, pl->tp_e, e_bytes, e_bytes / pl->n_a);
    double t = out_a > in_e ? out_a : in_e;
    if (pl->hw_a->profiled && pl->hw_a->prof.t_c > t)
        t = pl->hw_a->prof.t_c;
    return t;
}

/* ---- evaluation ------------------------------------------------------------------- */

typedef struct evalr {
    double t_a, t_e, t_c, t_iter;
    bool mem_ok;
} evalr_t;

static evalr_t eval_at(const duet_plan_model_t *m, const duet_plan_t *pl, double b_a, double s)
{
    evalr_t r = {0};
    double L = m->n_sparse;
    double bpp = m->bytes_per_param;
    double kv_tok_all = 2.0 * m->n_kv_heads * m->head_dim * bpp * m->n_layers;
    if (pl->colocated) {
        int tp = pl->tp_a;
        double B = b_a * pl->m;
        double per_exp = B * m->top_k / m->n_experts;
        r.t_a = duet_plan_t_attn(pl->hw_a, m, tp, B, s);
        r.t_e = m->n_experts * duet_plan_t_expert(pl->hw_a, m, tp, per_exp);
        /* tensor-parallel all-reduce of the hidden states twice per layer */
        r.t_c = tp > 1 ? 2.0 * (5e-6 + B * m->hidden * bpp * 2.0 * (tp - 1) / tp /
                                           (pl->hw_a->bw_gbs * 1e9 * 0.25))
                       : 0;
        r.t_iter = L * (r.t_a + r.t_e + r.t_c);
        double w = (m->attn_params * m->n_layers + m->other_params +
                    m->expert_params * m->n_experts * m->n_sparse) *
                   bpp;
        r.mem_ok = w + B * s * kv_tok_all < tp * pl->hw_a->mem_gb * 1e9 * MEM_FRACTION;
        return r;
    }
    double per_exp = (double)pl->n_a * b_a * m->top_k / m->n_experts;
    r.t_a = duet_plan_t_attn(pl->hw_a, m, pl->tp_a, b_a, s);
    r.t_e = pl->experts_per_shard * duet_plan_t_expert(pl->hw_e, m, pl->tp_e, per_exp);
    r.t_c = t_c_of(m, pl, b_a);
    double tf = r.t_a > r.t_e ? r.t_a : r.t_e;
    r.t_iter = (r.t_a + r.t_e + 2 * r.t_c) + tf * (pl->m * L - 1);
    /* with fewer micro-batches than it takes to hide the round trip, the
     * pipeline waits: a micro-batch comes back after T_a + T_e + 2 T_c */
    double cycle = r.t_a + r.t_e + 2 * r.t_c;
    double per_layer = pl->m * tf > cycle ? pl->m * tf : cycle;
    double alt = per_layer * L;
    if (alt > r.t_iter)
        r.t_iter = alt;
    if (pl->hw_a->profiled) /* a host: logits of every micro-batch and the scheduler's gap */
        r.t_iter += pl->m * duet_profile_t_logits(&pl->hw_a->prof, b_a) + pl->hw_a->prof.t_step;
    double attn_w = (m->attn_params * m->n_layers + m->other_params) * bpp;
    double kv = pl->m * b_a * s * kv_tok_all;
    double exp_w = pl->experts_per_shard * m->expert_params * m->n_sparse * bpp;
    r.mem_ok = kv + attn_w < pl->tp_a * pl->hw_a->mem_gb * 1e9 * MEM_FRACTION &&
               exp_w < pl->tp_e * pl->hw_e->mem_gb * 1e9 * MEM_FRACTION;
    return r;
}

static void fill(const duet_plan_model_t *m, duet_plan_t *pl, long b_a, double s)
{
    evalr_t r = eval_at(m, pl, (double)b_a, s);
    pl->t_a = r.t_a;
    pl->t_e = r.t_e;
    pl->t_c = r.t_c;
    pl->t_iter = r.t_iter;
    if (pl->colocated) {
        pl->batch = b_a * pl->m;
        pl->devices = pl->tp_a;
        pl->cost = pl->tp_a * pl->hw_a->price;
    } else {
        pl->batch = b_a * pl->m * pl->n_a;
        pl->devices = (double)pl->tp_a * pl->n_a + (double)pl->tp_e * pl->n_e;
        pl->cost = pl->tp_a * pl->n_a * pl->hw_a->price + pl->tp_e * pl->n_e * pl->hw_e->price;
    }
    pl->tput = pl->t_iter > 0 ? (double)pl->batch / pl->t_iter : 0;
    pl->tput_per_dev = pl->tput / pl->devices;
    pl->tput_per_cost = pl->tput / pl->cost;
}

bool duet_plan_eval(const duet_plan_model_t *m, duet_plan_t *pl, const duet_plan_opts_t *o)
{
    double s = o->ctx > 0 ? o->ctx : 2048;
    if (pl->m < 1 || pl->tp_a < 1 ||
        (!pl->colocated && (pl->n_a < 1 || pl->n_e < 1 || pl->tp_e < 1)))
        return false;
    if (!pl->colocated)
        pl->experts_per_shard = (m->n_experts + pl->n_e - 1) / pl->n_e;
    long lo = 0, hi = 1;
    evalr_t r = eval_at(m, pl, 1, s);
    if (!r.mem_ok || r.t_iter > o->slo_tbt)
        return false;
    lo = 1;
    while (hi < (1l << 22)) {
        hi *= 2;
        r = eval_at(m, pl, (double)hi, s);
        if (!r.mem_ok || r.t_iter > o->slo_tbt)
            break;
        lo = hi;
    }
    while (hi - lo > 1) {
        long mid = (lo + hi) / 2;
        r = eval_at(m, pl, (double)mid, s);
        if (r.mem_ok && r.t_iter <= o->slo_tbt)
            lo = mid;
        else
            hi = mid;
    }
    fill(m, pl, lo, s);
    return true;
}

bool duet_plan_eval_at(const duet_plan_model_t *m, duet_plan_t *pl, const duet_plan_opts_t *o,
                       long b_a)
{
    double s = o->ctx > 0 ? o->ctx : 2048;
    if (b_a < 1 || pl->m < 1 || pl->tp_a < 1 ||
        (!pl->colocated && (pl->n_a < 1 || pl->n_e < 1 || pl->tp_e < 1)))
        return false;
    if (!pl->colocated)
        pl->experts_per_shard = (m->n_experts + pl->n_e - 1) / pl->n_e;
    evalr_t r = eval_at(m, pl, (double)b_a, s);
    if (!r.mem_ok || r.t_iter > o->slo_tbt)
        return false;
    fill(m, pl, b_a, s);
    return true;
}

/* Slopes k1 (attention, per token) and k3 (expert, per row) around the
 * sizes a plan runs at: secants over [8, 256]. */
static void slopes(const duet_hw_t *ha, const duet_hw_t *he, const duet_plan_model_t *m, int tp_a,
                   int tp_e, double s, double *k1, double *k3)
{
    *k1 = (duet_plan_t_attn(ha, m, tp_a, 256, s) - duet_plan_t_attn(ha, m, tp_a, 8, s)) / 248.0;
    *k3 = (duet_plan_t_expert(he, m, tp_e, 256) - duet_plan_t_expert(he, m, tp_e, 8)) / 248.0;
}

static duet_status_t list_push(duet_plan_list_t *l, const duet_plan_t *p)
{
    duet_plan_t *nv = realloc(l->p, sizeof(duet_plan_t) * (size_t)(l->n + 1));
    if (!nv)
        return DUET_ERR_NOMEM;
    l->p = nv;
    l->p[l->n++] = *p;
    return DUET_OK;
}

void duet_plan_list_cleanup(duet_plan_list_t *l)
{
    if (!l)
        return;
    free(l->p);
    l->p = NULL;
    l->n = 0;
}

static int cmp_plan(const void *a, const void *b)
{
    const duet_plan_t *x = a, *y = b;
    if (x->tput_per_cost != y->tput_per_cost)
        return x->tput_per_cost > y->tput_per_cost ? -1 : 1;
    return x->tput > y->tput ? -1 : x->tput < y->tput;
}

static bool better(const duet_plan_t *a, const duet_plan_t *b)
{
    return a->tput_per_cost > b->tput_per_cost * (1 + 1e-12) ||
           (fabs(a->tput_per_cost - b->tput_per_cost) <= b->tput_per_cost * 1e-12 &&
            a->tput > b->tput);
}

static bool fits_count(const duet_plan_t *p)
{
    if (p->colocated)
        return !p->hw_a->count || p->tp_a <= p->hw_a->count;
    long da = (long)p->tp_a * p->n_a, de = (long)p->tp_e * p->n_e;
    if (p->hw_a == p->hw_e)
        return !p->hw_a->count || da + de <= p->hw_a->count;
    return (!p->hw_a->count || da <= p->hw_a->count) && (!p->hw_e->count || de <= p->hw_e->count);
}

duet_status_t duet_plan_search(const duet_plan_model_t *m, const duet_hw_list_t *hw,
                               const duet_plan_opts_t *o, duet_plan_list_t *out)
{
    duet_plan_list_t l = {0};
    duet_status_t st = DUET_OK;
    int min_m = o->min_m > 0 ? o->min_m : 1, max_m = o->max_m > 0 ? o->max_m : 4;
    double s = o->ctx > 0 ? o->ctx : 2048;
    int E = m->n_experts;
    for (int ia = 0; ia < hw->n && !st; ia++) {
        const duet_hw_t *ha = &hw->hw[ia];
        if (o->only_attn && strcmp(o->only_attn, ha->name))
            continue;
        if (o->colocated) { /* no pipeline: m does not apply */
            for (int mm = 1; mm <= 1 && !st; mm++) {
                duet_plan_t best = {0};
                bool have = false;
                for (int tp = 1; tp <= ha->max_tp && !st; tp *= 2) {
                    duet_plan_t p = {
                        .hw_a = ha, .hw_e = ha, .colocated = true, .tp_a = tp, .n_a = 1, .m = mm};
                    if (!fits_count(&p) || !duet_plan_eval(m, &p, o))
                        continue;
                    if (!have || p.tput_per_dev > best.tput_per_dev) {
                        best = p;
                        have = true;
                    }
                }
                if (have)
                    st = list_push(&l, &best);
            }
        }
        for (int ie = 0; ie < hw->n && !st; ie++) {
            const duet_hw_t *he = &hw->hw[ie];
            if (o->only_expert && strcmp(o->only_expert, he->name))
                continue;
            if (o->homogeneous_only && ia != ie)
                continue;
            if (o->heterogeneous_only && ia == ie)
                continue;
            if (ha->profiled != he->profiled)
                continue; /* a host profile and a catalogue GPU do not mix */
            for (int mm = min_m; mm <= max_m && !st; mm++) {
                duet_plan_t best = {0};
                bool have = false;
                for (int tp_e = 1; tp_e <= he->max_tp; tp_e *= 2)
                    for (int tp_a = 1; tp_a <= ha->max_tp; tp_a *= 2)
                        for (int n_e = 1; n_e <= E; n_e++) {
                            if (E % n_e)
                                continue;
                            double k1, k3;
                            slopes(ha, he, m, tp_a, tp_e, s, &k1, &k3);
                            double nb = k3 > 0 ? k1 * n_e / (k3 * m->top_k) : 1;
                            int base = nb < 1 ? 1 : (int)lround(nb);
                            if (base > 256)
                                base = 256;
                            int cands[5] = {base, base - 1, base + 1, base / 2, base * 2};
                            for (int c = 0; c < 5; c++) {
                                if (cands[c] < 1 || (c > 0 && cands[c] == base))
                                    continue;
                                duet_plan_t p = {.hw_a = ha,
                                                 .hw_e = he,
                                                 .tp_a = tp_a,
                                                 .tp_e = tp_e,
                                                 .n_a = cands[c],
                                                 .n_e = n_e,
                                                 .m = mm};
                                if (!fits_count(&p) || !duet_plan_eval(m, &p, o))
                                    continue;
                                if (!have || better(&p, &best)) {
                                    best = p;
                                    have = true;
                                }
                            }
                        }
                if (have)
                    st = list_push(&l, &best);
            }
        }
    }
    if (st) {
        duet_plan_list_cleanup(&l);
        return st;
    }
    qsort(l.p, (size_t)l.n, sizeof(duet_plan_t), cmp_plan);
    *out = l;
    return DUET_OK;
}

/* ---- simulate a plan ---------------------------------------------------------------- */

typedef struct plan_user {
    const duet_plan_model_t *m;
    const duet_plan_t *pl;
} plan_user_t;

static double pu_attn(void *u, double b, double ctx)
{
    const plan_user_t *p = u;
    return duet_plan_t_attn(p->pl->hw_a, p->m, p->pl->tp_a, b, ctx);
}

static double pu_expert(void *u, double rows)
{
    const plan_user_t *p = u;
    return duet_plan_t_expert(p->pl->hw_e, p->m, p->pl->tp_e, rows);
}

/* One message of `bytes` between an attention node and an expert node:
 * the attention node sends n_e of them at once, the expert node takes n_a. */
static double pu_xfer(void *u, double bytes)
{
    const plan_user_t *p = u;
    double a = duet_plan_t_xfer(p->pl->hw_a, p->pl->tp_a, bytes * p->pl->n_e, bytes);
    double e = duet_plan_t_xfer(p->pl->hw_e, p->pl->tp_e, bytes * p->pl->n_a, bytes);
    return a > e ? a : e;
}

duet_status_t duet_plan_simulate(const duet_plan_model_t *m, const duet_plan_t *pl,
                                 const duet_plan_opts_t *o, const char *trace_path,
                                 duet_sim_result_t *out)
{
    if (pl->colocated)
        return duet_errorf(DUET_ERR_UNSUPPORTED, "simulate: colocated plans have no pipeline");
    plan_user_t pu = {m, pl};
    double s = o && o->ctx > 0 ? o->ctx : 2048;
    duet_sim_cfg_t c = {
        .n_attention = pl->n_a,
        .n_expert_shards = pl->n_e,
        .micro_batches = pl->m,
        .n_layers = m->n_sparse,
        .iterations = 3,
        .tokens_ub = (double)pl->batch / ((double)pl->n_a * pl->m),
        .ctx = s,
        .top_k = m->top_k,
        .n_experts = m->n_experts,
        .t_attn = pu_attn,
        .t_expert = pu_expert,
        .t_xfer = pu_xfer,
        .user = &pu,
        .t_c = 0,
        .t_step = 0,
        .row_bytes = m->hidden * m->bytes_per_param,
        .cores = 0,
        .trace_path = trace_path,
    };
    if (pl->hw_a->profiled) {
        c.t_c = pl->hw_a->prof.t_c;
        c.t_step = pl->hw_a->prof.t_step;
    }
    return duet_sim_run(&c, out);
}
