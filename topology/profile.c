/* profile — measuring the paper's performance model on this host.
 *
 * Compute terms come from the forward-pass steps the actors run
 * (model/forward.h), timed one at a time on one backend: the attention half
 * of a layer for b decode tokens (T_a = k1·b + k2) and its growth with the
 * context, one expert's FFN over b rows (T_e = k3·b + k4), the combine, and
 * logits + sampling. The data plane's transfer time per message size comes
 * from an M2N group of one sender and one receiver (two threads, lock-step
 * rounds) on each provider asked for. What only a running pipeline shows —
 * the control-message latency T_c, dispatch and expert-round overheads, the
 * scheduler's gap between steps — comes from the trace of a real
 * deployment (duet_profile_calibrate). Files are JSON (jansson). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <jansson.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "actors/pipeline.h"
#include "model/backend.h"
#include "model/forward.h"
#include "rdma/rdma.h"
#include "topology/plan.h"

/* ---- fits ---------------------------------------------------------------- */

void duet_prof_fit_solve(duet_prof_fit_t *f)
{
    int n = f->n;
    double sx = 0, sy = 0, sxx = 0, sxy = 0;
    for (int i = 0; i < n; i++) {
        sx += f->x[i];
        sy += f->y[i];
        sxx += f->x[i] * f->x[i];
        sxy += f->x[i] * f->y[i];
    }
    double d = n * sxx - sx * sx;
    if (n < 2 || fabs(d) < 1e-30) {
        f->a = 0;
        f->b = n ? sy / n : 0;
        return;
    }
    f->a = (n * sxy - sx * sy) / d;
    f->b = (sy - f->a * sx) / n;
}

static void fit_add(duet_prof_fit_t *f, double x, double x2, double y)
{
    if (f->n >= DUET_PROF_MAX_PTS)
        return;
    f->x[f->n] = x;
    f->x2[f->n] = x2;
    f->y[f->n] = y;
    f->n++;
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Timing under other load: the fastest of repeated measurements is the
 * closest to the work's own cost (interference only adds). */
static double minv(const double *v, int n)
{
    double m = n > 0 ? v[0] : 0;
    for (int i = 1; i < n; i++)
        if (v[i] < m)
            m = v[i];
    return m;
}

static double median(double *v, int n)
{
    if (n <= 0)
        return 0;
    qsort(v, (size_t)n, sizeof(double), cmp_dbl);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

double duet_prof_fit_eval(const duet_prof_fit_t *f, double x)
{
    int n = f->n;
    if (n < 2)
        return f->a * x + f->b;
    if (x <= f->x[0])
        return f->y[0] + f->a * (x - f->x[0]);
    for (int i = 1; i < n; i++)
        if (x <= f->x[i]) {
            double w = f->x[i] > f->x[i - 1] ? (x - f->x[i - 1]) / (f->x[i] - f->x[i - 1]) : 1;
            return f->y[i - 1] + w * (f->y[i] - f->y[i - 1]);
        }
    return f->y[n - 1] + f->a * (x - f->x[n - 1]);
}

static double pos(double t)
{
    return t > 0 ? t : 0;
}

double duet_profile_t_attn(const duet_profile_t *p, double b, double ctx)
{
    if (b <= 0)
        return 0;
    double sc = p->attn_scale > 0 ? p->attn_scale : 1.0;
    double base = pos(duet_prof_fit_eval(&p->attn, b));
    /* the context term, bounded: below the reference context a noisy slope
     * must not take away more than half of the measured time */
    double adj = (p->k_ctx > 0 ? p->k_ctx : 0) * b * (ctx - p->ctx_ref);
    if (adj < -0.5 * base)
        adj = -0.5 * base;
    return sc * (base + adj);
}

double duet_profile_t_expert(const duet_profile_t *p, double rows)
{
    double sc = p->exp_scale > 0 ? p->exp_scale : 1.0;
    return rows > 0 ? sc * pos(duet_prof_fit_eval(&p->expert, rows)) : 0;
}

double duet_profile_t_combine(const duet_profile_t *p, double rows)
{
    return rows > 0 ? pos(duet_prof_fit_eval(&p->combine, rows) + p->comb_fix) : 0;
}

double duet_profile_t_logits(const duet_profile_t *p, double b)
{
    double sc = p->logit_scale > 0 ? p->logit_scale : 1.0;
    return b > 0 ? sc * pos(duet_prof_fit_eval(&p->logits, b)) : 0;
}

static double mean(const double *v, int n)
{
    double t = 0;
    for (int i = 0; i < n; i++)
        t += v[i];
    return n > 0 ? t / n : 0;
}

double duet_profile_xfer(const duet_profile_t *p, const char *name, double bytes)
{
    const duet_prof_link_t *l = NULL;
    for (int i = 0; i < p->n_links; i++)
        if (name && !strcmp(p->links[i].name, name))
            l = &p->links[i];
    if (!l && p->n_links)
        l = &p->links[0];
    if (!l)
        return 0;
    if (l->n >= 2 && bytes >= l->bytes[0] && bytes <= l->bytes[l->n - 1]) {
        for (int i = 1; i < l->n; i++)
            if (bytes <= l->bytes[i]) {
                double w = (bytes - l->bytes[i - 1]) / (l->bytes[i] - l->bytes[i - 1]);
                return l->sec[i - 1] + w * (l->sec[i] - l->sec[i - 1]);
            }
    }
    if (l->n >= 1 && bytes < l->bytes[0])
        return l->sec[0];
    return l->lat + (l->bw > 0 ? bytes / l->bw : 0);
}

/* ---- JSON ------------------------------------------------------------------ */

static json_t *fit_json(const duet_prof_fit_t *f, const char *xn, const char *x2n)
{
    json_t *o = json_object();
    json_object_set_new(o, "slope", json_real(f->a));
    json_object_set_new(o, "intercept", json_real(f->b));
    json_t *pts = json_array();
    for (int i = 0; i < f->n; i++) {
        json_t *p = json_object();
        json_object_set_new(p, xn, json_real(f->x[i]));
        if (x2n)
            json_object_set_new(p, x2n, json_real(f->x2[i]));
        json_object_set_new(p, "seconds", json_real(f->y[i]));
        json_array_append_new(pts, p);
    }
    json_object_set_new(o, "points", pts);
    return o;
}

duet_status_t duet_profile_save(const duet_profile_t *p, const char *path)
{
    json_t *r = json_object();
    json_t *host = json_object();
    json_object_set_new(host, "name", json_string(p->host));
    json_object_set_new(host, "cores", json_integer(p->cores));
    json_object_set_new(host, "backend", json_string(p->backend));
    json_object_set_new(host, "threads", json_integer(p->threads));
    json_object_set_new(host, "parallel", json_real(p->parallel));
    json_object_set_new(host, "single_rate", json_real(p->single_rate));
    json_t *cont = json_array();
    for (int i = 0; i < p->n_contention && i < DUET_PROF_MAX_READERS; i++)
        json_array_append_new(cont, json_real(p->contention[i]));
    json_object_set_new(host, "expert_contention", cont);
    json_object_set_new(host, "spin_us", json_real(p->spin_s * 1e6));
    json_object_set_new(r, "duet_profile", json_integer(DUET_PROFILE_FORMAT));
    json_object_set_new(r, "host", host);
    json_t *mo = json_object();
    json_object_set_new(mo, "dir", json_string(p->model));
    json_object_set_new(mo, "hidden", json_integer(p->hidden));
    json_object_set_new(mo, "layers", json_integer(p->n_layers));
    json_object_set_new(mo, "sparse_layers", json_integer(p->n_sparse));
    json_object_set_new(mo, "experts", json_integer(p->n_experts));
    json_object_set_new(mo, "top_k", json_integer(p->top_k));
    json_object_set_new(r, "model", mo);
    json_t *k = json_object();
    json_object_set_new(k, "k1", json_real(p->k1));
    json_object_set_new(k, "k2", json_real(p->k2));
    json_object_set_new(k, "k_ctx", json_real(p->k_ctx));
    json_object_set_new(k, "ctx_ref", json_real(p->ctx_ref));
    json_object_set_new(k, "k3", json_real(p->k3));
    json_object_set_new(k, "k4", json_real(p->k4));
    json_object_set_new(r, "coefficients", k);
    json_object_set_new(r, "attention", fit_json(&p->attn, "tokens", NULL));
    json_object_set_new(r, "attention_ctx", fit_json(&p->attn_ctx, "context", "tokens"));
    json_object_set_new(r, "expert", fit_json(&p->expert, "rows", NULL));
    json_object_set_new(r, "combine", fit_json(&p->combine, "rows", NULL));
    json_object_set_new(r, "logits", fit_json(&p->logits, "rows", NULL));
    json_t *cal = json_object();
    json_object_set_new(cal, "calibrated", json_boolean(p->calibrated));
    json_object_set_new(cal, "dispatch_fixed", json_real(p->disp_fix));
    json_object_set_new(cal, "dispatch_per_shard", json_real(p->disp_per_shard));
    json_object_set_new(cal, "expert_round_per_attention", json_real(p->exp_fix));
    json_object_set_new(cal, "t_c", json_real(p->t_c));
    json_object_set_new(cal, "t_c_typical", json_real(p->t_c_typ));
    json_object_set_new(cal, "t_step", json_real(p->t_step));
    json_object_set_new(cal, "attention_scale", json_real(p->attn_scale));
    json_object_set_new(cal, "expert_scale", json_real(p->exp_scale));
    json_object_set_new(cal, "logits_scale", json_real(p->logit_scale));
    json_object_set_new(cal, "combine_offset", json_real(p->comb_fix));
    json_object_set_new(r, "pipeline", cal);
    json_t *links = json_array();
    for (int i = 0; i < p->n_links; i++) {
        const duet_prof_link_t *l = &p->links[i];
        json_t *o = json_object();
        json_object_set_new(o, "provider", json_string(l->name));
        json_object_set_new(o, "latency", json_real(l->lat));
        json_object_set_new(o, "bandwidth", json_real(l->bw));
        json_t *pts = json_array();
        for (int j = 0; j < l->n; j++) {
            json_t *q = json_object();
            double util = l->bw > 0 && l->sec[j] > 0 ? l->bytes[j] / l->sec[j] / l->bw : 0;
            json_object_set_new(q, "bytes", json_real(l->bytes[j]));
            json_object_set_new(q, "seconds", json_real(l->sec[j]));
            json_object_set_new(q, "util", json_real(util));
            json_array_append_new(pts, q);
        }
        json_object_set_new(o, "points", pts);
        json_array_append_new(links, o);
    }
    json_object_set_new(r, "data_plane", links);
    if (p->route_seqs > 0) {
        json_t *ro = json_object(), *ids = json_array();
        size_t n = (size_t)p->route_seqs * (size_t)p->route_steps * (size_t)p->n_sparse *
                   (size_t)p->top_k;
        for (size_t i = 0; i < n && i < DUET_PROF_MAX_ROUTE_IDS; i++)
            json_array_append_new(ids, json_integer(p->routes[i]));
        json_object_set_new(ro, "sequences", json_integer(p->route_seqs));
        json_object_set_new(ro, "steps", json_integer(p->route_steps));
        json_object_set_new(ro, "experts", ids);
        json_object_set_new(r, "routing", ro);
    }
    int rc = json_dump_file(r, path, JSON_INDENT(2) | JSON_REAL_PRECISION(10));
    json_decref(r);
    if (rc)
        return duet_errorf(DUET_ERR_IO, "profile %s: cannot write", path);
    return DUET_OK;
}

static duet_status_t jnum(json_t *o, const char *path, const char *key, double *out)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_number(v))
        return duet_errorf(DUET_ERR_INVALID, "profile %s: key '%s' is missing or not a number",
                           path, key);
    *out = json_number_value(v);
    return DUET_OK;
}

static duet_status_t jint(json_t *o, const char *path, const char *key, int *out)
{
    double d = 0;
    duet_status_t st = jnum(o, path, key, &d);
    if (!st) {
        if (d < 0 || d > 1e9)
            return duet_errorf(DUET_ERR_INVALID, "profile %s: key '%s' = %g is out of range", path,
                               key, d);
        *out = (int)d;
    }
    return st;
}

static duet_status_t fit_load(json_t *r, const char *path, const char *key, const char *xn,
                              const char *x2n, duet_prof_fit_t *f)
{
    json_t *o = json_object_get(r, key);
    duet_status_t st;
    memset(f, 0, sizeof(*f));
    if (!json_is_object(o))
        return duet_errorf(DUET_ERR_INVALID, "profile %s: key '%s' is missing", path, key);
    if ((st = jnum(o, path, "slope", &f->a)) || (st = jnum(o, path, "intercept", &f->b)))
        return st;
    json_t *pts = json_object_get(o, "points");
    size_t i;
    json_t *p;
    json_array_foreach(pts, i, p)
    {
        double x = 0, x2 = 0, y = 0;
        if ((st = jnum(p, path, xn, &x)) || (st = jnum(p, path, "seconds", &y)))
            return st;
        if (x2n && (st = jnum(p, path, x2n, &x2)))
            return st;
        fit_add(f, x, x2, y);
    }
    return DUET_OK;
}

duet_status_t duet_profile_load(const char *path, duet_profile_t *out)
{
    json_error_t je;
    json_t *r = json_load_file(path, 0, &je);
    if (!r)
        return duet_errorf(DUET_ERR_INVALID, "profile %s:%d:%d: %s", path, je.line, je.column,
                           je.text);
    duet_profile_t p;
    memset(&p, 0, sizeof(p));
    duet_status_t st = DUET_OK;
    /* format 1 (no key or 1): no contention table, read as none; 2: with it */
    json_t *ver = json_object_get(r, "duet_profile");
    json_int_t format = json_is_integer(ver) ? json_integer_value(ver) : ver ? -1 : 1;
    if (format < 1 || format > DUET_PROFILE_FORMAT) {
        if (json_is_integer(ver))
            st = duet_errorf(DUET_ERR_INVALID,
                             "profile %s: format 'duet_profile' = %lld; this duet reads formats "
                             "1..%d (a newer duet wrote it, or run `duet profile` again)",
                             path, (long long)format, DUET_PROFILE_FORMAT);
        else
            st = duet_errorf(DUET_ERR_INVALID,
                             "profile %s: 'duet_profile' (the format) is not an integer", path);
        goto out;
    }
    json_t *host = json_object_get(r, "host"), *mo = json_object_get(r, "model"),
           *k = json_object_get(r, "coefficients"), *cal = json_object_get(r, "pipeline");
    if (!json_is_object(host) || !json_is_object(mo) || !json_is_object(k) ||
        !json_is_object(cal)) {
        st = duet_errorf(DUET_ERR_INVALID,
                         "profile %s: not a duet profile (needs host, model, coefficients, "
                         "pipeline)",
                         path);
        goto out;
    }
    const char *s = json_string_value(json_object_get(host, "name"));
    snprintf(p.host, sizeof(p.host), "%s", s ? s : "");
    s = json_string_value(json_object_get(host, "backend"));
    snprintf(p.backend, sizeof(p.backend), "%s", s ? s : "cpu");
    s = json_string_value(json_object_get(mo, "dir"));
    snprintf(p.model, sizeof(p.model), "%s", s ? s : "");
    if ((st = jint(host, path, "cores", &p.cores)) ||
        (st = jint(host, path, "threads", &p.threads)) ||
        (st = jint(mo, path, "hidden", &p.hidden)) ||
        (st = jint(mo, path, "layers", &p.n_layers)) ||
        (st = jint(mo, path, "sparse_layers", &p.n_sparse)) ||
        (st = jint(mo, path, "experts", &p.n_experts)) ||
        (st = jint(mo, path, "top_k", &p.top_k)) || (st = jnum(k, path, "k1", &p.k1)) ||
        (st = jnum(k, path, "k2", &p.k2)) || (st = jnum(k, path, "k_ctx", &p.k_ctx)) ||
        (st = jnum(k, path, "ctx_ref", &p.ctx_ref)) || (st = jnum(k, path, "k3", &p.k3)) ||
        (st = jnum(k, path, "k4", &p.k4)) ||
        (st = fit_load(r, path, "attention", "tokens", NULL, &p.attn)) ||
        (st = fit_load(r, path, "attention_ctx", "context", "tokens", &p.attn_ctx)) ||
        (st = fit_load(r, path, "expert", "rows", NULL, &p.expert)) ||
        (st = fit_load(r, path, "combine", "rows", NULL, &p.combine)) ||
        (st = fit_load(r, path, "logits", "rows", NULL, &p.logits)) ||
        (st = jnum(cal, path, "dispatch_fixed", &p.disp_fix)) ||
        (st = jnum(cal, path, "dispatch_per_shard", &p.disp_per_shard)) ||
        (st = jnum(cal, path, "expert_round_per_attention", &p.exp_fix)) ||
        (st = jnum(cal, path, "t_c", &p.t_c)) ||
        (st = jnum(cal, path, "t_c_typical", &p.t_c_typ)) ||
        (st = jnum(cal, path, "t_step", &p.t_step)) ||
        (st = jnum(cal, path, "attention_scale", &p.attn_scale)) ||
        (st = jnum(cal, path, "expert_scale", &p.exp_scale)) ||
        (st = jnum(cal, path, "logits_scale", &p.logit_scale)) ||
        (st = jnum(cal, path, "combine_offset", &p.comb_fix)))
        goto out;
    p.calibrated = json_is_true(json_object_get(cal, "calibrated"));
    p.parallel = json_number_value(json_object_get(host, "parallel"));
    p.single_rate = json_number_value(json_object_get(host, "single_rate"));
    p.slowdown = 1;
    json_t *spin = json_object_get(host, "spin_us"); /* optional: absent = not modelled */
    if (spin) {
        double us = json_number_value(spin);
        if (!json_is_number(spin) || !isfinite(us) || us < 0 || us > 1e6) {
            st = duet_errorf(DUET_ERR_INVALID,
                             "profile %s: host.spin_us must be a number of µs in 0..1000000",
                             path);
            goto out;
        }
        p.spin_s = us * 1e-6;
    }
    if (!isfinite(p.parallel) || p.parallel < 0 || p.parallel > 4096 || !isfinite(p.single_rate) ||
        p.single_rate < 0) {
        st = duet_errorf(DUET_ERR_INVALID,
                         "profile %s: host.parallel / host.single_rate out of "
                         "range",
                         path);
        goto out;
    }
    json_t *cont = json_object_get(host, "expert_contention");
    if (format >= 2 && !json_is_array(cont)) {
        st = duet_errorf(DUET_ERR_INVALID,
                         "profile %s: format %d needs host.expert_contention (an array)", path,
                         (int)format);
        goto out;
    }
    if (format >= 2) {
        size_t ci;
        json_t *cv;
        json_array_foreach(cont, ci, cv)
        {
            double f = json_number_value(cv);
            if (ci >= DUET_PROF_MAX_READERS || !json_is_number(cv) || !isfinite(f) || f < 0.5 ||
                f > 100) {
                st = duet_errorf(DUET_ERR_INVALID,
                                 "profile %s: host.expert_contention[%zu] %s (expected at most %d "
                                 "factors in 0.5..100)",
                                 path, ci, ci >= DUET_PROF_MAX_READERS ? "is one too many" :
                                                                        "is out of range",
                                 DUET_PROF_MAX_READERS);
                goto out;
            }
            p.contention[ci] = f;
            p.n_contention = (int)ci + 1;
        }
    }
    if (p.n_experts < 1 || p.top_k < 1 || p.top_k > p.n_experts || p.hidden < 1) {
        st = duet_errorf(DUET_ERR_INVALID,
                         "profile %s: model shape (experts %d, top_k %d, "
                         "hidden %d) is not valid",
                         path, p.n_experts, p.top_k, p.hidden);
        goto out;
    }
    json_t *ro = json_object_get(r, "routing");
    if (ro) { /* optional: without it the simulator gives every shard its share */
        int seqs = 0, steps = 0;
        json_t *ids = json_object_get(ro, "experts");
        if ((st = jint(ro, path, "sequences", &seqs)) || (st = jint(ro, path, "steps", &steps)))
            goto out;
        size_t want = (size_t)seqs * (size_t)steps * (size_t)p.n_sparse * (size_t)p.top_k;
        if (!json_is_array(ids) || seqs < 1 || steps < 1 || p.n_sparse < 1 ||
            want > DUET_PROF_MAX_ROUTE_IDS ||
            json_array_size(ids) != want) {
            st = duet_errorf(DUET_ERR_INVALID,
                             "profile %s: routing: expected %d sequences x %d steps x %d sparse "
                             "layers x top-%d expert ids (at most %d), found %zu",
                             path, seqs, steps, p.n_sparse, p.top_k, DUET_PROF_MAX_ROUTE_IDS,
                             json_array_size(ids));
            goto out;
        }
        for (size_t q = 0; q < want; q++) {
            json_t *v = json_array_get(ids, q);
            json_int_t e = json_is_integer(v) ? json_integer_value(v) : -1;
            if (e < 0 || e >= p.n_experts || e > INT16_MAX) {
                st = duet_errorf(DUET_ERR_INVALID,
                                 "profile %s: routing.experts[%zu] is not an expert of 0..%d",
                                 path, q, p.n_experts - 1);
                goto out;
            }
            p.routes[q] = (int16_t)e;
        }
        p.route_seqs = seqs;
        p.route_steps = steps;
    }
    json_t *links = json_object_get(r, "data_plane");
    size_t i;
    json_t *l;
    json_array_foreach(links, i, l)
    {
        if (p.n_links >= DUET_PROF_MAX_PROV)
            break;
        duet_prof_link_t *dl = &p.links[p.n_links];
        s = json_string_value(json_object_get(l, "provider"));
        snprintf(dl->name, sizeof(dl->name), "%s", s ? s : "?");
        if ((st = jnum(l, path, "latency", &dl->lat)) || (st = jnum(l, path, "bandwidth", &dl->bw)))
            goto out;
        json_t *pts = json_object_get(l, "points");
        size_t j;
        json_t *q;
        json_array_foreach(pts, j, q)
        {
            if (dl->n >= DUET_PROF_MAX_PTS)
                break;
            if ((st = jnum(q, path, "bytes", &dl->bytes[dl->n])) ||
                (st = jnum(q, path, "seconds", &dl->sec[dl->n])))
                goto out;
            dl->n++;
        }
        p.n_links++;
    }
    *out = p;
out:
    json_decref(r);
    return st;
}

/* ---- compute measurements --------------------------------------------------- */

static void progress(const duet_profile_opts_t *o, const char *what, int done, int total)
{
    if (o->progress)
        o->progress(o->progress_user, what, done, total);
}

typedef struct meas {
    duet_backend_t *be;
    duet_model_t *model;
    duet_kvcache_t *kv;
    duet_fwd_t *fwd;
    duet_ubatch_t *ub;
    int32_t seqs[256];
    int n_seqs;
} meas_t;

static void meas_close_seqs(meas_t *m)
{
    for (int i = 0; i < m->n_seqs; i++)
        duet_kvcache_seq_close(m->kv, m->seqs[i]);
    m->n_seqs = 0;
}

/* Open b sequences and fill each with ctx prompt tokens (attention halves
 * of every layer: enough for the KV cache). */
static duet_status_t meas_fill(meas_t *m, int b, int ctx)
{
    duet_status_t st;
    meas_close_seqs(m);
    int32_t toks[1024];
    for (int i = 0; i < 1024; i++)
        toks[i] = 1 + (i * 7) % (m->model->cfg.vocab - 1);
    for (int i = 0; i < b; i++) {
        if ((st = duet_kvcache_seq_open(m->kv, &m->seqs[i])))
            return st;
        m->n_seqs++;
        int done = 0;
        while (done < ctx) {
            int n = ctx - done > 256 ? 256 : ctx - done;
            duet_seq_input_t in = {m->seqs[i], n, toks, DUET_LOGITS_NONE};
            if ((st = duet_fwd_begin(m->fwd, m->ub, 1, &in)))
                return st;
            for (int l = 0; l < m->model->cfg.n_layers; l++)
                if ((st = duet_fwd_attention(m->fwd, m->ub, l)))
                    return st;
            done += n;
        }
    }
    return DUET_OK;
}

/* One decode micro-batch over the open sequences: median attention half per
 * layer, combine and logits+sampling. */
static duet_status_t meas_decode(meas_t *m, int reps, double *t_attn, double *t_comb,
                                 double *t_logits)
{
    duet_status_t st;
    int b = m->n_seqs;
    const duet_config_t *cfg = &m->model->cfg;
    duet_seq_input_t in[256];
    int32_t tok[256];
    for (int i = 0; i < b; i++) {
        tok[i] = 1 + (i * 13) % (cfg->vocab - 1);
        in[i] = (duet_seq_input_t){m->seqs[i], 1, &tok[i], DUET_LOGITS_LAST};
    }
    int K = cfg->top_k;
    int64_t rows = (int64_t)b * K;
    float *y = NULL;
    int32_t *rt = calloc((size_t)rows, sizeof(int32_t));
    float *rw = calloc((size_t)rows, sizeof(float));
    duet_sampling_params_t sp[256];
    int32_t out_tok[256];
    double va[64], vc[64], vl[64];
    if (!rt || !rw ||
        (st = m->be->ops->buf_alloc(m->be, (size_t)rows * cfg->hidden * 4, (void **)&y))) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    m->be->ops->buf_zero(m->be, y, (size_t)rows * cfg->hidden * 4);
    for (int64_t r = 0; r < rows; r++) {
        rt[r] = (int32_t)(r / K);
        rw[r] = 1.0f / K;
    }
    for (int i = 0; i < b; i++)
        sp[i] = (duet_sampling_params_t){0.0f, 0, 1.0f, 0};
    if (reps > 64)
        reps = 64;
    for (int k = 0; k < reps; k++) {
        if ((st = duet_fwd_begin(m->fwd, m->ub, b, in)))
            goto out;
        double ta = 0, tc = 0;
        for (int l = 0; l < cfg->n_layers; l++) {
            uint64_t t0 = duet_now_ns();
            if ((st = duet_fwd_attention(m->fwd, m->ub, l)))
                goto out;
            uint64_t t1 = duet_now_ns();
            if ((st = duet_fwd_combine(m->fwd, m->ub, l, y, rt, rw, rows)))
                goto out;
            m->be->ops->sync(m->be);
            uint64_t t2 = duet_now_ns();
            ta += (double)(t1 - t0) * 1e-9;
            tc += (double)(t2 - t1) * 1e-9;
        }
        uint64_t t0 = duet_now_ns();
        int32_t nr = 0;
        if ((st = duet_fwd_logits(m->fwd, m->ub, &nr)) ||
            (st = duet_fwd_sample(m->fwd, m->ub, sp, out_tok)))
            goto out;
        uint64_t t1 = duet_now_ns();
        va[k] = ta / cfg->n_layers;
        vc[k] = tc / cfg->n_layers;
        vl[k] = (double)(t1 - t0) * 1e-9;
    }
    *t_attn = median(va, reps);
    *t_comb = median(vc, reps);
    *t_logits = median(vl, reps);
out:
    if (y)
        m->be->ops->buf_free(m->be, y);
    free(rt);
    free(rw);
    return st;
}

static duet_status_t measure_compute(const duet_profile_opts_t *o, duet_profile_t *p)
{
    meas_t m = {0};
    duet_status_t st;
    duet_backend_opts_t bo = {.n_threads = p->threads};
    duet_experts_t *ex = NULL;
    float *x = NULL, *y = NULL;
    if ((st = duet_backend_open(p->backend, &bo, &m.be)))
        return st;
    if ((st = duet_model_load(o->model_dir, NULL, &m.model)))
        goto out;
    const duet_config_t *cfg = &m.model->cfg;
    p->hidden = cfg->hidden;
    p->n_layers = cfg->n_layers;
    p->n_experts = cfg->n_experts;
    p->top_k = cfg->top_k;
    p->n_sparse = 0;
    for (int l = 0; l < cfg->n_layers; l++)
        p->n_sparse += cfg->sparse_layer[l] ? 1 : 0;
    if (m.be->ops->weights_prepare && (st = m.be->ops->weights_prepare(m.be, m.model)) &&
        st != DUET_ERR_UNSUPPORTED)
        goto out;
    int ctx_max = o->quick ? 256 : 512;
    if (ctx_max + 80 > cfg->max_pos)
        ctx_max = cfg->max_pos - 80;
    int bmax = o->quick ? 32 : 64;
    duet_kvcache_opts_t ko = {.max_seqs = 256};
    ko.n_blocks = (int32_t)((bmax * (ctx_max + 80)) / 16 + bmax + 64);
    if ((st = duet_kvcache_create(m.be, cfg, &ko, &m.kv)))
        goto out;
    duet_fwd_opts_t fo = {.max_tokens = 256, .max_seqs = 256};
    if ((st = duet_fwd_create(m.be, m.model, m.kv, &fo, &m.fwd)) ||
        (st = duet_ubatch_create(m.fwd, &m.ub)))
        goto out;
    int reps = o->repeats > 0 ? o->repeats : 5;
    /* T_a(b) at the reference context, combine and logits alongside */
    int ctx_ref = 32;
    p->ctx_ref = ctx_ref;
    static const int bs_full[] = {1, 2, 4, 8, 16, 24, 32, 48, 64};
    static const int bs_quick[] = {1, 2, 4, 8, 12, 16, 24, 32};
    const int *bs = o->quick ? bs_quick : bs_full;
    int nb = o->quick ? 8 : 9;
    /* interleaved sweeps: a burst of other load hits every size a little
     * rather than one size a lot */
    double va[16][8], vc[16][8], vl[16][8];
    int sweeps = reps > 8 ? 8 : reps;
    for (int w = 0; w < sweeps; w++) {
        progress(o, "attention", w, sweeps);
        for (int k = 0; k < nb; k++)
            if ((st = meas_fill(&m, bs[k], ctx_ref)) ||
                (st = meas_decode(&m, 3, &va[k][w], &vc[k][w], &vl[k][w])))
                goto out;
    }
    for (int k = 0; k < nb; k++) {
        fit_add(&p->attn, bs[k], ctx_ref, minv(va[k], sweeps));
        fit_add(&p->combine, (double)bs[k] * cfg->top_k, 0, minv(vc[k], sweeps));
        fit_add(&p->logits, bs[k], 0, minv(vl[k], sweeps));
    }
    duet_prof_fit_solve(&p->attn);
    duet_prof_fit_solve(&p->combine);
    duet_prof_fit_solve(&p->logits);
    p->k1 = p->attn.a;
    p->k2 = p->attn.b;
    /* growth with context at a fixed batch: slope per token per context token */
    int bc = 8;
    int ctxs[4] = {ctx_ref, ctx_max / 4, ctx_max / 2, ctx_max};
    for (int k = 0; k < 4; k++) {
        progress(o, "attention vs context", k, 4);
        double ta[8], tc, tl;
        int nrep = reps > 8 ? 8 : reps;
        if ((st = meas_fill(&m, bc, ctxs[k])))
            goto out;
        for (int q = 0; q < nrep; q++)
            if ((st = meas_decode(&m, 3, &ta[q], &tc, &tl)))
                goto out;
        fit_add(&p->attn_ctx, ctxs[k], bc, minv(ta, nrep));
    }
    meas_close_seqs(&m);
    duet_prof_fit_solve(&p->attn_ctx);
    p->k_ctx = p->attn_ctx.a / bc;
    /* T_e(rows) of one expert group */
    int rmax = o->quick ? 128 : 256;
    if ((st = duet_experts_create(m.be, m.model, rmax, &ex)) ||
        (st = m.be->ops->buf_alloc(m.be, (size_t)rmax * cfg->hidden * 4, (void **)&x)) ||
        (st = m.be->ops->buf_alloc(m.be, (size_t)rmax * cfg->hidden * 4, (void **)&y)))
        goto out;
    {
        float *hx = malloc((size_t)rmax * cfg->hidden * 4);
        if (!hx) {
            st = DUET_ERR_NOMEM;
            goto out;
        }
        for (size_t i = 0; i < (size_t)rmax * cfg->hidden; i++)
            hx[i] = (float)((i * 2654435761u) % 1000) * 1e-3f - 0.5f;
        st = m.be->ops->buf_upload(m.be, x, hx, (size_t)rmax * cfg->hidden * 4);
        free(hx);
        if (st)
            goto out;
    }
    static const int rs_full[] = {1, 2, 4, 8, 16, 32, 48, 64, 96, 128, 192, 256};
    static const int rs_quick[] = {1, 2, 4, 8, 16, 32, 48, 64, 96, 128};
    const int *rs = o->quick ? rs_quick : rs_full;
    int nr = o->quick ? 10 : 12;
    int sparse_l = 0;
    while (sparse_l < cfg->n_layers && !cfg->sparse_layer[sparse_l])
        sparse_l++;
    for (int q = 0; q < cfg->n_experts; q++) { /* warm up: first touch of each expert */
        int32_t eid = q, cnt = rs[nr - 1];
        if ((st = duet_experts_forward(ex, sparse_l, 1, &eid, &cnt, x, y)))
            goto out;
    }
    {
        double ve[16][16];
        int R = reps * 2 > 16 ? 16 : reps * 2;
        for (int q = 0; q < R; q++) {
            progress(o, "experts", q, R);
            for (int k = 0; k < nr; k++) {
                int32_t eid = (q + k) % cfg->n_experts, cnt = rs[k];
                uint64_t t0 = duet_now_ns();
                if ((st = duet_experts_forward(ex, sparse_l, 1, &eid, &cnt, x, y)))
                    goto out;
                m.be->ops->sync(m.be);
                ve[k][q] = (double)(duet_now_ns() - t0) * 1e-9;
            }
        }
        for (int k = 0; k < nr; k++)
            fit_add(&p->expert, rs[k], 0, minv(ve[k], R));
    }
    duet_prof_fit_solve(&p->expert);
    p->k3 = p->expert.a;
    p->k4 = p->expert.b;
out:
    if (x)
        m.be->ops->buf_free(m.be, x);
    if (y)
        m.be->ops->buf_free(m.be, y);
    duet_experts_destroy(&ex);
    duet_ubatch_destroy(&m.ub);
    duet_fwd_destroy(&m.fwd);
    duet_kvcache_destroy(&m.kv);
    duet_model_destroy(&m.model);
    duet_backend_close(&m.be);
    return st;
}

/* ---- data plane ----------------------------------------------------------------- */

typedef struct link_run {
    const char *provider;
    const size_t *sizes;
    int n_sizes, rounds;
    pthread_barrier_t bar;
    uint8_t info[2][DUET_M2N_INFO_MAX];
    size_t info_len[2];
    uint64_t t_send[64 * 64];
    uint64_t t_recv[64 * 64];
    duet_status_t st[2];
    char err[2][256];
} link_run_t;

typedef struct link_arg {
    link_run_t *lr;
    int rank; /* 0 sender, 1 receiver */
} link_arg_t;

static void *link_thread(void *arg)
{
    link_arg_t *la = arg;
    link_run_t *lr = la->lr;
    int me = la->rank;
    bool sender = me == 0;
    duet_rdma_ctx_t *ctx = NULL;
    duet_m2n_t *g = NULL;
    duet_rdma_mr_t *src = NULL;
    duet_status_t st = DUET_OK;
    size_t maxs = lr->sizes[lr->n_sizes - 1];
    /* every thread meets every barrier, failed or not, so a failure on one
     * side never leaves the other waiting */
    int total = 2 + lr->n_sizes * lr->rounds + 1, met = 0;
    duet_rdma_ctx_params_t cp = {.provider = lr->provider};
    duet_m2n_params_t mp = {.n_senders = 1,
                            .n_receivers = 1,
                            .is_sender = sender,
                            .rank = 0,
                            .slots = 2,
                            .slot_size = maxs};
    if ((st = duet_rdma_ctx_create(&cp, &ctx)))
        goto fail;
    mp.ctx = ctx;
    if ((st = duet_m2n_create(&mp, &g)) ||
        (st = duet_m2n_info(g, 0, lr->info[me], DUET_M2N_INFO_MAX, &lr->info_len[me])))
        goto fail;
    pthread_barrier_wait(&lr->bar);
    met++;
    if (__atomic_load_n(&lr->st[1 - me], __ATOMIC_ACQUIRE) ||
        (st = duet_m2n_connect(g, 0, lr->info[1 - me], lr->info_len[1 - me])))
        goto fail;
    if (sender) {
        if ((st = duet_rdma_mr_alloc(ctx, maxs, 0, &src)))
            goto fail;
        memset(duet_rdma_mr_ptr(src), 1, maxs);
    }
    pthread_barrier_wait(&lr->bar);
    met++;
    for (int si = 0; si < lr->n_sizes; si++) {
        for (int r = 0; r < lr->rounds; r++) {
            uint64_t round = (uint64_t)si * (uint64_t)lr->rounds + (uint64_t)r;
            pthread_barrier_wait(&lr->bar);
            met++;
            if (__atomic_load_n(&lr->st[1 - me], __ATOMIC_ACQUIRE))
                goto fail;
            if (sender) {
                lr->t_send[round] = duet_now_ns();
                if ((st = duet_m2n_send(g, round, 0, src, 0, lr->sizes[si], 10000000000ll)) ||
                    (st = duet_m2n_flush(g, 10000000000ll)))
                    goto fail;
            } else {
                if ((st = duet_m2n_recv(g, round, 10000000000ll)))
                    goto fail;
                lr->t_recv[round] = duet_now_ns();
                if ((st = duet_m2n_release(g, round)))
                    goto fail;
            }
        }
    }
    goto done;
fail:
    if (st) {
        snprintf(lr->err[me], sizeof(lr->err[me]), "%s", duet_error());
        __atomic_store_n(&lr->st[me], st, __ATOMIC_RELEASE);
    }
done:
    while (met < total) {
        pthread_barrier_wait(&lr->bar);
        met++;
    }
    duet_m2n_destroy(&g);
    duet_rdma_mr_dereg(&src);
    duet_rdma_ctx_destroy(&ctx);
    return NULL;
}

static duet_status_t measure_link(const duet_profile_opts_t *o, const char *prov,
                                  duet_prof_link_t *out)
{
    static const size_t sizes[] = {1024, 4096, 16384, 65536, 262144, 1048576, 4194304};
    link_run_t *lr = calloc(1, sizeof(*lr));
    if (!lr)
        return DUET_ERR_NOMEM;
    lr->provider = prov;
    lr->sizes = sizes;
    lr->n_sizes = o->quick ? 6 : 7;
    lr->rounds = o->quick ? 9 : 21;
    pthread_barrier_init(&lr->bar, NULL, 2);
    /* Set-up failures would leave the peer at a barrier: create both
     * contexts' providers up front to fail early and cleanly. */
    if (!duet_rdma_provider_exists(prov)) {
        pthread_barrier_destroy(&lr->bar);
        free(lr);
        return duet_errorf(DUET_ERR_NOT_FOUND, "data plane: no provider '%s' in this build", prov);
    }
    pthread_t th[2];
    link_arg_t la[2] = {{lr, 0}, {lr, 1}};
    for (int i = 0; i < 2; i++)
        pthread_create(&th[i], NULL, link_thread, &la[i]);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    pthread_barrier_destroy(&lr->bar);
    duet_status_t st = lr->st[0] ? lr->st[0] : lr->st[1];
    if (st) {
        st = duet_errorf(st, "data plane %s: %s", prov, lr->st[0] ? lr->err[0] : lr->err[1]);
        free(lr);
        return st;
    }
    memset(out, 0, sizeof(*out));
    snprintf(out->name, sizeof(out->name), "%s", prov);
    duet_prof_fit_t f = {0};
    for (int si = 0; si < lr->n_sizes; si++) {
        double v[64];
        int n = 0;
        for (int r = 1; r < lr->rounds; r++) { /* round 0 warms up */
            size_t k = (size_t)si * (size_t)lr->rounds + (size_t)r;
            v[n++] = (double)(lr->t_recv[k] - lr->t_send[k]) * 1e-9;
        }
        double t = median(v, n);
        out->bytes[out->n] = (double)sizes[si];
        out->sec[out->n] = t;
        out->n++;
        fit_add(&f, (double)sizes[si], 0, t);
    }
    duet_prof_fit_solve(&f);
    out->lat = f.b > 0 ? f.b : out->sec[0];
    out->bw = f.a > 0 ? 1.0 / f.a : 1e12;
    free(lr);
    return DUET_OK;
}

duet_status_t duet_profile_measure(const duet_profile_opts_t *o, duet_profile_t *out)
{
    if (!o || !o->model_dir)
        return duet_errorf(DUET_ERR_INVALID, "profile: no model directory");
    duet_profile_t *p = calloc(1, sizeof(*p));
    if (!p)
        return DUET_ERR_NOMEM;
    gethostname(p->host, sizeof(p->host) - 1);
    snprintf(p->backend, sizeof(p->backend), "%s", o->backend ? o->backend : "cpu");
    snprintf(p->model, sizeof(p->model), "%s", o->model_dir);
    p->threads = o->threads > 0 ? o->threads : 1;
    cpu_set_t cs;
    p->cores = sched_getaffinity(0, sizeof(cs), &cs) == 0 ? CPU_COUNT(&cs) : 1;
    duet_status_t st = measure_compute(o, p);
    if (st)
        goto out;
    char provs[128];
    snprintf(provs, sizeof(provs), "%s", o->providers ? o->providers : "shm,tcp");
    char *save = NULL;
    int k = 0;
    for (char *tok = strtok_r(provs, ",", &save); tok && p->n_links < DUET_PROF_MAX_PROV;
         tok = strtok_r(NULL, ",", &save), k++) {
        progress(o, "data plane", k, 2);
        if ((st = measure_link(o, tok, &p->links[p->n_links])))
            goto out;
        p->n_links++;
    }
    progress(o, "parallel capacity", 0, 1);
    if ((st = duet_profile_measure_parallel(p, o->model_dir, o->quick ? 0.2 : 0.5)))
        goto out;
    progress(o, "memory contention", 0, 1);
    if ((st = duet_profile_measure_contention(p, o->model_dir, o->quick ? 0.1 : 0.25,
                                              o->quick ? 3 : 5)))
        goto out;
    /* until calibrated: T_c from the data plane's small-message latency */
    p->t_c = p->n_links ? p->links[0].lat : 0;
    *out = *p;
out:
    free(p);
    return st;
}

/* ---- parallel capacity ------------------------------------------------------------ */

typedef struct par_arg {
    const duet_model_t *model;
    uint64_t until;
    long count;
    duet_status_t st;
    pthread_barrier_t *bar;
} par_arg_t;

static void *par_thread(void *arg)
{
    par_arg_t *pa = arg;
    duet_backend_t *be = NULL;
    duet_experts_t *ex = NULL;
    float *x = NULL, *y = NULL;
    const duet_config_t *cfg = &pa->model->cfg;
    const int rows = 32;
    duet_backend_opts_t bo = {.n_threads = 1};
    int l = 0;
    bool met = false;
    while (l < cfg->n_layers && !cfg->sparse_layer[l])
        l++;
    if ((pa->st = duet_backend_open("cpu", &bo, &be)) ||
        (pa->st = duet_experts_create(be, pa->model, rows, &ex)) ||
        (pa->st = be->ops->buf_alloc(be, (size_t)rows * cfg->hidden * 4, (void **)&x)) ||
        (pa->st = be->ops->buf_alloc(be, (size_t)rows * cfg->hidden * 4, (void **)&y)))
        goto out;
    be->ops->buf_zero(be, x, (size_t)rows * cfg->hidden * 4);
    if (pa->bar) {
        pthread_barrier_wait(pa->bar);
        met = true;
    }
    int32_t eid = 0, cnt = rows;
    while (duet_now_ns() < __atomic_load_n(&pa->until, __ATOMIC_RELAXED)) {
        if ((pa->st = duet_experts_forward(ex, l, 1, &eid, &cnt, x, y)))
            break;
        pa->count++;
    }
out:
    if (pa->bar && !met)
        pthread_barrier_wait(pa->bar);
    if (x)
        be->ops->buf_free(be, x);
    if (y)
        be->ops->buf_free(be, y);
    duet_experts_destroy(&ex);
    duet_backend_close(&be);
    return NULL;
}

duet_status_t duet_profile_measure_parallel(duet_profile_t *p, const char *model_dir,
                                            double seconds)
{
    duet_model_t *model = NULL;
    duet_status_t st = duet_model_load(model_dir, NULL, &model);
    if (st)
        return st;
    int n = p->cores > 1 ? p->cores : 1;
    if (n > 64)
        n = 64;
    uint64_t span = (uint64_t)(seconds * 1e9);
    /* one thread alone */
    par_arg_t one = {.model = model, .until = duet_now_ns() + span};
    par_thread(&one);
    double r1 = (double)one.count;
    if ((st = one.st) || one.count == 0)
        goto out;
    /* n at once: start together, stop together */
    par_arg_t pa[64];
    pthread_t th[64];
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++)
        pa[i] = (par_arg_t){.model = model, .until = UINT64_MAX, .bar = &bar};
    for (int i = 0; i < n; i++)
        pthread_create(&th[i], NULL, par_thread, &pa[i]);
    pthread_barrier_wait(&bar);
    uint64_t until = duet_now_ns() + span;
    for (int i = 0; i < n; i++)
        __atomic_store_n(&pa[i].until, until, __ATOMIC_RELAXED);
    long total = 0;
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        total += pa[i].count;
        if (pa[i].st && !st)
            st = pa[i].st;
    }
    pthread_barrier_destroy(&bar);
    if (!st) {
        p->parallel = (double)total / r1;
        if (p->parallel < 1)
            p->parallel = 1; /* one thread runs at the speed just measured */
        if (p->parallel > n)
            p->parallel = n; /* a slow single-thread sample cannot make cores */
        double rate = r1 / seconds;
        if (p->single_rate <= 0) {
            p->single_rate = rate;
            p->slowdown = 1;
        } else {
            p->slowdown = p->single_rate / rate;
        }
    }
out:
    duet_model_destroy(&model);
    return st;
}

/* ---- memory contention between expert shards ------------------------------------ *
 * An expert round of a decode micro-batch streams its experts' weights for
 * a few rows each: memory-bound. Two shards on two cores run at the same
 * time and share the memory system; each then gets less than the
 * single-thread bandwidth the expert fit saw. Thread i of k runs the
 * rounds of a shard holding experts {e : e % K == i} (K = the most threads
 * measured), so every k does the same work per thread. The figure is the
 * thread's CPU time per round (memory stalls are on-core time; waiting for
 * a core is not) against k = 1's: the bandwidth share apart from the core
 * share. */

typedef struct cont_arg {
    const duet_model_t *model;
    int idx, stride, rows;
    uint64_t until;
    long rounds;
    double cpu_s;
    duet_status_t st;
    pthread_barrier_t *bar;
} cont_arg_t;

static double thread_cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *cont_thread(void *arg)
{
    cont_arg_t *ca = arg;
    duet_backend_t *be = NULL;
    duet_experts_t *ex = NULL;
    float *x = NULL, *y = NULL;
    const duet_config_t *cfg = &ca->model->cfg;
    duet_backend_opts_t bo = {.n_threads = 1};
    int32_t eids[256], cnt[256];
    int g = 0;
    bool met = false;
    for (int e = ca->idx; e < cfg->n_experts && g < 256; e += ca->stride) {
        eids[g] = e;
        cnt[g] = ca->rows;
        g++;
    }
    int32_t rows = g * ca->rows;
    if (g == 0)
        goto out;
    if ((ca->st = duet_backend_open("cpu", &bo, &be)) ||
        (ca->st = duet_experts_create(be, ca->model, rows, &ex)) ||
        (ca->st = be->ops->buf_alloc(be, (size_t)rows * cfg->hidden * 4, (void **)&x)) ||
        (ca->st = be->ops->buf_alloc(be, (size_t)rows * cfg->hidden * 4, (void **)&y)))
        goto out;
    be->ops->buf_zero(be, x, (size_t)rows * cfg->hidden * 4);
    for (int l = 0; l < cfg->n_layers; l++) /* first touch, outside the timing */
        if (cfg->sparse_layer[l] && (ca->st = duet_experts_forward(ex, l, g, eids, cnt, x, y)))
            goto out;
    if (ca->bar) {
        pthread_barrier_wait(ca->bar);
        met = true;
    }
    double c0 = thread_cpu_s();
    while (duet_now_ns() < __atomic_load_n(&ca->until, __ATOMIC_RELAXED)) {
        for (int l = 0; l < cfg->n_layers; l++) {
            if (!cfg->sparse_layer[l])
                continue;
            if ((ca->st = duet_experts_forward(ex, l, g, eids, cnt, x, y)))
                goto out;
            ca->rounds++;
        }
    }
    ca->cpu_s = thread_cpu_s() - c0;
out:
    if (ca->bar && !met)
        pthread_barrier_wait(ca->bar);
    if (x)
        be->ops->buf_free(be, x);
    if (y)
        be->ops->buf_free(be, y);
    duet_experts_destroy(&ex);
    duet_backend_close(&be);
    return NULL;
}

/* k threads (idx 0..k-1 of stride K) for span ns: CPU seconds per round,
 * mean over the threads. */
static duet_status_t cont_once(const duet_model_t *model, int k, int K, uint64_t span,
                               double *per_round)
{
    cont_arg_t ca[DUET_PROF_MAX_READERS];
    pthread_t th[DUET_PROF_MAX_READERS];
    pthread_barrier_t bar;
    duet_status_t st = DUET_OK;
    pthread_barrier_init(&bar, NULL, (unsigned)k + 1);
    for (int i = 0; i < k; i++)
        ca[i] = (cont_arg_t){
            .model = model, .idx = i, .stride = K, .rows = 4, .until = UINT64_MAX, .bar = &bar};
    int started = 0;
    for (; started < k; started++)
        if (pthread_create(&th[started], NULL, cont_thread, &ca[started]))
            break;
    if (started < k) { /* meet the barrier for the threads that did not start */
        st = duet_errorf(DUET_ERR_INTERNAL, "contention: cannot start thread %d", started);
        for (int i = started; i < k; i++)
            ca[i].st = st;
        pthread_barrier_destroy(&bar);
        pthread_barrier_init(&bar, NULL, (unsigned)started + 1);
    }
    pthread_barrier_wait(&bar);
    uint64_t until = duet_now_ns() + span;
    for (int i = 0; i < started; i++)
        __atomic_store_n(&ca[i].until, until, __ATOMIC_RELAXED);
    double sum = 0;
    for (int i = 0; i < started; i++) {
        pthread_join(th[i], NULL);
        if (ca[i].st && !st)
            st = ca[i].st;
        if (!st && ca[i].rounds == 0)
            st = duet_errorf(DUET_ERR_INTERNAL, "contention: thread %d ran no round", i);
        if (!st)
            sum += ca[i].cpu_s / (double)ca[i].rounds;
    }
    pthread_barrier_destroy(&bar);
    if (!st)
        *per_round = sum / k;
    return st;
}

duet_status_t duet_profile_measure_contention(duet_profile_t *p, const char *model_dir,
                                              double seconds, int repeats)
{
    duet_model_t *model = NULL;
    duet_status_t st = duet_model_load(model_dir, NULL, &model);
    if (st)
        return st;
    int K = p->cores > 1 ? p->cores : 1;
    if (K > DUET_PROF_MAX_READERS)
        K = DUET_PROF_MAX_READERS;
    if (K > model->cfg.n_experts)
        K = model->cfg.n_experts;
    if (repeats < 1)
        repeats = 1;
    uint64_t span = (uint64_t)(seconds * 1e9);
    double best[DUET_PROF_MAX_READERS];
    for (int k = 0; k < K; k++)
        best[k] = INFINITY;
    /* interleaved: a burst of other load hits every k a little */
    for (int q = 0; q < repeats && !st; q++)
        for (int k = 1; k <= K && !st; k++) {
            double t = 0;
            if (!(st = cont_once(model, k, K, span, &t)) && t < best[k - 1])
                best[k - 1] = t;
        }
    if (!st) {
        p->n_contention = K;
        p->contention[0] = 1;
        for (int k = 2; k <= K; k++) {
            double f = best[k - 1] / best[0];
            /* fewer readers cannot make memory faster: below 1 is noise */
            p->contention[k - 1] = f > p->contention[k - 2] ? f : p->contention[k - 2];
        }
    }
    duet_model_destroy(&model);
    return st;
}

double duet_profile_contention(const duet_profile_t *p, int k)
{
    if (k <= 1 || p->n_contention < 1)
        return 1.0;
    if (k > p->n_contention)
        k = p->n_contention;
    double f = p->contention[k - 1];
    return f >= 1 ? f : 1.0;
}

/* ---- a real deployment -------------------------------------------------------------- */

typedef struct tok_log {
    pthread_mutex_t mu;
    int R, T;
    int *count;      /* [R] tokens so far */
    uint64_t *times; /* [R * T] arrival of token k of request r */
    int32_t *ids;    /* [R * T] the tokens (NULL: not kept) */
    int done;
    bool error;
} tok_log_t;

static void on_token(void *user, const duet_pipe_token_t *t)
{
    tok_log_t *l = user;
    uint64_t now = duet_now_ns();
    pthread_mutex_lock(&l->mu);
    if (t->req >= 1 && t->req <= (uint64_t)l->R) {
        int r = (int)t->req - 1;
        if (t->error && t->error[0])
            l->error = true;
        if (t->index >= 0 && t->index < l->T && l->count[r] <= t->index) {
            l->times[(size_t)r * (size_t)l->T + (size_t)t->index] = now;
            if (l->ids)
                l->ids[(size_t)r * (size_t)l->T + (size_t)t->index] = t->token;
            l->count[r] = t->index + 1;
        }
        if (t->done)
            l->done++;
    }
    pthread_mutex_unlock(&l->mu);
}

/* Token i of request q's prompt in a measured run. */
static int32_t run_prompt_token(int q, int i, int vocab)
{
    return 1 + (q * 31 + i * 7) % (vocab - 1);
}

duet_status_t duet_plan_run_measure(const duet_plan_run_t *r, duet_plan_measured_t *out)
{
    int A = r->n_attention, S = r->n_expert_shards, R = r->requests, T = r->new_tokens;
    if (A < 1 || S < 1 || r->micro_batches < 1 || R < 1 || T < 3 || r->prompt_len < 1)
        return duet_errorf(DUET_ERR_INVALID,
                           "run: n_a %d, shards %d, m %d, requests %d, tokens "
                           "%d (need >= 3)",
                           A, S, r->micro_batches, R, T);
    duet_config_t cfg;
    duet_status_t st;
    char path[1200];
    snprintf(path, sizeof(path), "%s/config.json", r->model_dir);
    if ((st = duet_config_load(path, &cfg)))
        return st;
    int E = cfg.n_experts, vocab = cfg.vocab;
    duet_config_cleanup(&cfg);
    int ids[64][256];
    int nids[64] = {0};
    const int *rows[64];
    if (S > 64 || E > 256)
        return duet_errorf(DUET_ERR_INVALID, "run: at most 64 shards and 256 experts");
    if (!r->shard_experts) {
        for (int e = 0; e < E; e++)
            ids[e % S][nids[e % S]++] = e;
        for (int s = 0; s < S; s++)
            rows[s] = ids[s];
    }
    tok_log_t lg = {.R = R, .T = T, .ids = r->tokens_out};
    pthread_mutex_init(&lg.mu, NULL);
    lg.count = calloc((size_t)R, sizeof(int));
    lg.times = calloc((size_t)R * (size_t)T, sizeof(uint64_t));
    int32_t *prompt = malloc(sizeof(int32_t) * (size_t)r->prompt_len);
    duet_pipe_t *pipe = NULL;
    if (!lg.count || !lg.times || !prompt) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    int budget = R * r->prompt_len + R + 16;
    duet_pipe_config_t pc = {
        .model_dir = r->model_dir,
        .n_attention = A,
        .n_expert_shards = S,
        .shard_experts = r->shard_experts ? r->shard_experts : (const int *const *)rows,
        .shard_n_experts = r->shard_experts ? r->shard_n_experts : nids,
        .micro_batches = r->micro_batches,
        .token_budget = budget,
        .max_seqs = R,
        .kv_blocks = (R * (r->prompt_len + T) / 16 + R + 16) * 2,
        .provider = r->provider ? r->provider : "shm",
        .control = DUET_PIPE_CONTROL_INPROC,
        .threads = r->threads > 0 ? r->threads : 1,
        .round_timeout_ms = 60000,
        .on_token = on_token,
        .on_token_user = &lg,
        .trace_path = r->trace_path,
    };
    if ((st = duet_pipe_create(&pc, &pipe)))
        goto out;
    for (int q = 0; q < R; q++) {
        for (int i = 0; i < r->prompt_len; i++)
            prompt[i] = run_prompt_token(q, i, vocab);
        if ((st = duet_pipe_submit(pipe, (uint64_t)q + 1, prompt, r->prompt_len, T, -1)))
            goto out;
    }
    uint64_t deadline = duet_now_ns() + 120ull * 1000000000ull;
    for (;;) {
        pthread_mutex_lock(&lg.mu);
        int done = lg.done;
        bool err = lg.error;
        pthread_mutex_unlock(&lg.mu);
        if (err) {
            st = duet_errorf(DUET_ERR_INTERNAL, "run: a request ended with an error");
            goto out;
        }
        if (done >= R)
            break;
        if (duet_now_ns() > deadline) {
            st = duet_errorf(DUET_ERR_TIMEOUT, "run: %d of %d requests done after 120 s", done, R);
            goto out;
        }
        usleep(2000);
    }
    /* the window where every request decodes: from the latest second token
     * to the earliest last token */
    uint64_t t0 = 0, t1 = UINT64_MAX;
    for (int q = 0; q < R; q++) {
        if (lg.count[q] < T) {
            st = duet_errorf(DUET_ERR_INTERNAL, "run: request %d has %d of %d tokens", q + 1,
                             lg.count[q], T);
            goto out;
        }
        uint64_t a = lg.times[(size_t)q * (size_t)T + 1],
                 b = lg.times[(size_t)q * (size_t)T + T - 1];
        if (a > t0)
            t0 = a;
        if (b < t1)
            t1 = b;
    }
    long n = 0;
    for (int q = 0; q < R; q++)
        for (int k = 0; k < T; k++) {
            uint64_t t = lg.times[(size_t)q * (size_t)T + (size_t)k];
            if (t > t0 && t <= t1)
                n++;
        }
    if (t1 <= t0 || n == 0) {
        st = duet_errorf(DUET_ERR_INTERNAL, "run: no steady decode window (requests did not "
                                            "overlap); use more tokens");
        goto out;
    }
    /* Every request's own decode rate, T - 2 tokens over its time from
     * token 1 to token T - 1, which the simulator's figure (tokens of a
     * step over the time between steps) is; counting the tokens inside the
     * common window instead loses part of a step at its ends (the tokens
     * of one step reach the client one after the other), about 2 % here */
    double span = 0;
    for (int q = 0; q < R; q++)
        span += (double)(lg.times[(size_t)q * (size_t)T + T - 1] -
                         lg.times[(size_t)q * (size_t)T + 1]) *
                1e-9;
    out->seconds = span / R;
    out->tokens = (long)R * (T - 2);
    out->decode_tps = out->seconds > 0 ? (double)out->tokens / out->seconds : 0;
out:
    duet_pipe_destroy(&pipe);
    free(prompt);
    free(lg.count);
    free(lg.times);
    pthread_mutex_destroy(&lg.mu);
    return st;
}

/* ---- the router's choices on a real decode -------------------------------------------- *
 * The run's prompts and generated tokens go through the whole model again,
 * one sequence at a time (teacher forcing: the same inputs as the decode
 * steps, so the same routes up to rounding); the experts each decode step's
 * input token chose at every sparse layer are kept in p->routes. */
static duet_status_t record_routes(duet_profile_t *p, const duet_plan_run_t *r,
                                   const int32_t *gen)
{
    duet_backend_t *be = NULL;
    duet_model_t *model = NULL;
    duet_kvcache_t *kv = NULL;
    duet_fwd_t *fwd = NULL;
    duet_ubatch_t *ub = NULL;
    duet_experts_t *ex = NULL;
    duet_dispatch_t disp = {0};
    float *xg = NULL, *yg = NULL;
    int32_t *toks = NULL, *gid = NULL, *gcnt = NULL;
    duet_status_t st;
    duet_backend_opts_t bo = {.n_threads = 1};
    int P = r->prompt_len, T = r->new_tokens;
    int n = P + T - 1; /* the inputs of every step: prompt, then tokens 0..T-2 */
    p->route_seqs = p->route_steps = 0;
    if ((st = duet_backend_open("cpu", &bo, &be)) ||
        (st = duet_model_load(r->model_dir, NULL, &model)))
        goto out;
    const duet_config_t *cfg = &model->cfg;
    int L = 0, K = cfg->top_k, E = cfg->n_experts;
    for (int l = 0; l < cfg->n_layers; l++)
        L += cfg->sparse_layer[l] ? 1 : 0;
    int steps = T - 1; /* decode steps 1..T-1 (step 0 is the prefill) */
    int per_seq = steps * L * K;
    int seqs = per_seq > 0 ? DUET_PROF_MAX_ROUTE_IDS / per_seq : 0;
    if (seqs > r->requests)
        seqs = r->requests;
    if (seqs < 1 || L < 1 || E > 32767 || n > 4096) {
        st = DUET_OK; /* nothing to record that fits: even shares */
        goto out;
    }
    if (be->ops->weights_prepare && (st = be->ops->weights_prepare(be, model)) &&
        st != DUET_ERR_UNSUPPORTED)
        goto out;
    duet_kvcache_opts_t ko = {.max_seqs = 2, .n_blocks = (n + 15) / 16 + 4};
    duet_fwd_opts_t fo = {.max_tokens = n, .max_seqs = 2};
    int32_t rows = n * K;
    toks = malloc(sizeof(int32_t) * (size_t)n);
    gid = malloc(sizeof(int32_t) * (size_t)E);
    gcnt = malloc(sizeof(int32_t) * (size_t)E);
    if (!toks || !gid || !gcnt) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    if ((st = duet_kvcache_create(be, cfg, &ko, &kv)) ||
        (st = duet_fwd_create(be, model, kv, &fo, &fwd)) || (st = duet_ubatch_create(fwd, &ub)) ||
        (st = duet_experts_create(be, model, rows, &ex)) ||
        (st = duet_dispatch_init(&disp, E, rows)) ||
        (st = be->ops->buf_alloc(be, (size_t)rows * cfg->hidden * 4, (void **)&xg)) ||
        (st = be->ops->buf_alloc(be, (size_t)rows * cfg->hidden * 4, (void **)&yg)))
        goto out;
    for (int q = 0; q < seqs; q++) {
        int32_t seq = -1;
        for (int i = 0; i < P; i++)
            toks[i] = run_prompt_token(q, i, cfg->vocab);
        for (int i = 0; i + 1 < T; i++)
            toks[P + i] = gen[(size_t)q * (size_t)T + (size_t)i];
        if ((st = duet_kvcache_seq_open(kv, &seq)))
            goto out;
        duet_seq_input_t in = {seq, n, toks, DUET_LOGITS_NONE};
        if ((st = duet_fwd_begin(fwd, ub, 1, &in)))
            goto seq_out;
        for (int l = 0, j = 0; l < cfg->n_layers; l++) {
            const int32_t *ids;
            const float *wts;
            int32_t k;
            if ((st = duet_fwd_attention(fwd, ub, l)))
                goto seq_out;
            if (!duet_ubatch_routes(ub, &ids, &wts, &k))
                continue;
            /* input token P + t - 1 is decode step t's (t = 1..T-1) */
            for (int t = 1; t < T; t++)
                for (int x = 0; x < K; x++)
                    p->routes[(((size_t)q * (size_t)steps + (size_t)(t - 1)) * (size_t)L +
                               (size_t)j) * (size_t)K + (size_t)x] =
                        (int16_t)ids[(size_t)(P + t - 1) * (size_t)k + (size_t)x];
            j++;
            if ((st = duet_dispatch_build(&disp, ids, wts, n, k)))
                goto seq_out;
            int32_t ng = 0;
            for (int32_t x = 0; x < E; x++)
                if (disp.count[x] > 0) {
                    gid[ng] = x;
                    gcnt[ng] = disp.count[x];
                    ng++;
                }
            if ((st = be->ops->gather_rows(be, duet_ubatch_normed(ub), cfg->hidden,
                                           disp.row_token, disp.n_rows, xg)) ||
                (st = duet_experts_forward(ex, l, ng, gid, gcnt, xg, yg)) ||
                (st = duet_fwd_combine(fwd, ub, l, yg, disp.row_token, disp.row_weight,
                                       disp.n_rows)))
                goto seq_out;
        }
        duet_fwd_abort(fwd, ub); /* nothing to keep */
    seq_out:
        duet_kvcache_seq_close(kv, seq);
        if (st)
            goto out;
    }
    p->route_seqs = seqs;
    p->route_steps = steps;
out:
    if (xg)
        be->ops->buf_free(be, xg);
    if (yg)
        be->ops->buf_free(be, yg);
    duet_dispatch_cleanup(&disp);
    duet_experts_destroy(&ex);
    duet_ubatch_destroy(&ub);
    duet_fwd_destroy(&fwd);
    duet_kvcache_destroy(&kv);
    duet_model_destroy(&model);
    duet_backend_close(&be);
    free(toks);
    free(gid);
    free(gcnt);
    if (st)
        p->route_seqs = p->route_steps = 0;
    return st;
}

/* ---- calibration from a real run's trace ------------------------------------------ *
 * Means, not medians: throughput is a sum of times, and on a shared machine
 * the slow tail (a preempted computation, a late wake-up) is part of it. */

typedef struct tx {
    double ts, dur;
    int tid;
    int name; /* 0 attention 1 dispatch 2 expert 3 combine 4 logits */
    long round, layer, ub, rows;
} tx_t;

/* T_c samples: a slice `consumer` (a tx_t name) on a thread of the role
 * `is_role` that was idle when the last `producer` slice of the same round
 * ended, and started after it, started that long after it. Appends to
 * out[n..]; returns the new count. */
static int handoff_gaps(const tx_t *tx, size_t ntx, int consumer, const bool *is_role,
                        int producer, double *out, int n)
{
    for (size_t i = 0; i < ntx; i++) {
        const tx_t *t = &tx[i];
        if (t->name != consumer || !is_role[t->tid])
            continue;
        double last = -1;
        for (size_t j = 0; j < ntx; j++)
            if (tx[j].name == producer && tx[j].round == t->round && tx[j].ts + tx[j].dur > last)
                last = tx[j].ts + tx[j].dur;
        double prev_end = (i > 0 && tx[i - 1].tid == t->tid) ? tx[i - 1].ts + tx[i - 1].dur : 0;
        if (last > 0 && prev_end < last && t->ts >= last)
            out[n++] = t->ts - last;
    }
    return n;
}

static int cmp_tx(const void *a, const void *b)
{
    const tx_t *x = a, *y = b;
    if (x->tid != y->tid)
        return x->tid - y->tid;
    return x->ts < y->ts ? -1 : x->ts > y->ts;
}

/* Mean context of a decode round: the prompt plus the iteration (round /
 * (sparse layers · m)); close enough for the context term. */
static double ctx_now(const tx_t *t, const duet_plan_run_t *r)
{
    (void)t;
    return r->prompt_len + r->new_tokens / 2.0;
}

/* How long the runtime's compute actors spin before they sleep, as
 * actors/runtime.c decides it for a thread actor spawned with the default
 * option: $DUET_SPIN_US (-1: never, 0: the default; anything else that is
 * not a number of µs in [-1, 1000000]: the default), else
 * DUET_DEFAULT_SPIN_US. */
static double runtime_spin_s(void)
{
    const char *e = getenv("DUET_SPIN_US");
    long v = DUET_DEFAULT_SPIN_US;
    if (e && *e) {
        char *end;
        long x = strtol(e, &end, 10);
        if (!*end && x >= -1 && x <= 1000000)
            v = x < 0 ? 0 : x > 0 ? x : DUET_DEFAULT_SPIN_US;
    }
    return (double)v * 1e-6;
}

/* The calibration divides each real expert round by g · T_e(rows / g)
 * (even shares over the shard's g expert groups), while the simulator
 * with recorded routes charges Σ T_e(rows of each expert): with the
 * router's uneven choices and a T_e that is not linear in the rows, the
 * two differ. Over the recorded routes of r's deployment (rounds made as
 * the simulator makes them), Σ routed / Σ even: the expert scale is
 * divided by it, so the simulator's rounds of r's deployment take as long
 * as the real ones did. 1 without routes. */
static double route_vs_even(const duet_profile_t *p, const duet_plan_run_t *r)
{
    int E = p->n_experts, K = p->top_k, L = p->n_sparse, S = r->n_expert_shards;
    int am = r->n_attention * r->micro_batches, m = r->micro_batches;
    if (p->route_seqs < 1 || p->route_steps < 1 || E < 1 || E > 4096 || S < 1 || am < 1 ||
        r->shard_experts)
        return 1.0;
    double *rows = calloc((size_t)E, sizeof(double));
    if (!rows)
        return 1.0;
    double routed = 0, even = 0;
    int g = E / S > 0 ? E / S : 1;
    for (int t = 0; t < p->route_steps; t++)
        for (int j = 0; j < L; j++)
            for (int i = 0; i < m; i++) {
                memset(rows, 0, (size_t)E * sizeof(double));
                for (int q = 0; q < r->requests; q++) {
                    if ((q % am) % m != i)
                        continue;
                    const int16_t *ids =
                        p->routes +
                        (((size_t)(q % p->route_seqs) * (size_t)p->route_steps + (size_t)t) *
                             (size_t)L +
                         (size_t)j) *
                            (size_t)K;
                    for (int x = 0; x < K; x++)
                        if (ids[x] >= 0 && ids[x] < E)
                            rows[ids[x]] += 1;
                }
                for (int sh = 0; sh < S; sh++) {
                    double n = 0;
                    for (int x = sh; x < E; x += S) {
                        n += rows[x];
                        routed += duet_profile_t_expert(p, rows[x]);
                    }
                    even += g * duet_profile_t_expert(p, n / g);
                }
            }
    free(rows);
    return routed > 0 && even > 0 ? routed / even : 1.0;
}

duet_status_t duet_profile_calibrate(duet_profile_t *p, const duet_plan_run_t *r0)
{
    p->spin_s = runtime_spin_s();
    p->attn_scale = p->exp_scale = p->logit_scale = 1;
    p->comb_fix = 0;
    p->exp_fix = 0;
    /* event times are divided by the slowdown the host showed just before
     * (duet_profile_measure_parallel), so the offsets are in profile time */
    double sl = p->slowdown > 0 ? p->slowdown : 1.0;
    char tpath[256];
    snprintf(tpath, sizeof(tpath), "/tmp/duet-calib-%d.json", (int)getpid());
    duet_plan_run_t r = *r0;
    r.trace_path = tpath;
    /* the routes: once (the run is greedy, its tokens are the same each time) */
    int32_t *gen = NULL;
    if (p->route_seqs == 0 && r.requests > 0 && r.new_tokens > 0 &&
        !(gen = calloc((size_t)r.requests * (size_t)r.new_tokens, sizeof(int32_t))))
        return DUET_ERR_NOMEM;
    r.tokens_out = gen;
    duet_plan_measured_t meas;
    duet_status_t st = duet_plan_run_measure(&r, &meas);
    if (!st && gen)
        st = record_routes(p, &r, gen);
    free(gen);
    if (st)
        return st;
    p->calib_tps = meas.decode_tps;
    json_error_t je;
    json_t *root = json_load_file(tpath, 0, &je);
    remove(tpath);
    if (!root)
        return duet_errorf(DUET_ERR_INVALID, "calibration trace: %s", je.text);
    json_t *evs = json_object_get(root, "traceEvents");
    size_t n = json_array_size(evs), ntx = 0;
    tx_t *tx = calloc(n + 1, sizeof(tx_t));
    double *v1 = calloc(n + 1, sizeof(double)), *v2 = calloc(n + 1, sizeof(double)),
           *v3 = calloc(n + 1, sizeof(double)), *v4 = calloc(n + 1, sizeof(double)),
           *v5 = calloc(n + 1, sizeof(double)), *v6 = calloc(n + 1, sizeof(double));
    bool is_attn[4096] = {0}, is_exp[4096] = {0};
    if (!tx || !v1 || !v2 || !v3 || !v4 || !v5 || !v6) {
        st = DUET_ERR_NOMEM;
        goto out;
    }
    static const char *const names[] = {"attention", "dispatch", "expert", "combine", "logits"};
    for (size_t i = 0; i < n; i++) {
        json_t *e = json_array_get(evs, i);
        const char *ph = json_string_value(json_object_get(e, "ph"));
        const char *nm = json_string_value(json_object_get(e, "name"));
        int tid = (int)json_integer_value(json_object_get(e, "tid"));
        if (!ph || !nm || tid < 0 || tid >= 4096)
            continue;
        if (ph[0] == 'M' && !strcmp(nm, "thread_name")) {
            const char *an = json_string_value(json_object_get(json_object_get(e, "args"), "name"));
            if (an && !strncmp(an, "attn/", 5))
                is_attn[tid] = true;
            if (an && !strncmp(an, "expert/", 7))
                is_exp[tid] = true;
            continue;
        }
        if (ph[0] != 'X')
            continue;
        int k = -1;
        for (int q = 0; q < 5; q++)
            if (!strcmp(nm, names[q]))
                k = q;
        if (k < 0)
            continue;
        json_t *a = json_object_get(e, "args");
        tx_t t = {json_number_value(json_object_get(e, "ts")) * 1e-6,
                  json_number_value(json_object_get(e, "dur")) * 1e-6,
                  tid,
                  k,
                  (long)json_integer_value(json_object_get(a, "round")),
                  (long)json_integer_value(json_object_get(a, "layer")),
                  (long)json_integer_value(json_object_get(a, "ub")),
                  (long)json_integer_value(json_object_get(a, "rows"))};
        tx[ntx++] = t;
    }
    qsort(tx, ntx, sizeof(tx_t), cmp_tx);
    /* decode rounds only: the micro-batch size the run was shaped for */
    double b_dec = (double)r.requests / (r.n_attention * r.micro_batches);
    int n1 = 0, n2 = 0, n3 = 0, n4 = 0, n5 = 0, n6 = 0;
    int K = p->top_k;
    for (size_t i = 0; i < ntx; i++) {
        const tx_t *t = &tx[i];
        if (t->name == 0 && is_attn[t->tid] && t->rows == (long)b_dec && t->rows > 0 &&
            duet_profile_t_attn(p, (double)t->rows, ctx_now(t, &r)) > 0)
            v1[n1++] = t->dur / sl / duet_profile_t_attn(p, (double)t->rows, ctx_now(t, &r));
        else if (t->name == 1 && is_attn[t->tid] && t->rows == (long)b_dec * K)
            v2[n2++] = t->dur;
        else if (t->name == 3 && is_attn[t->tid] && t->rows == (long)b_dec * K)
            v4[n4++] = t->dur / sl - duet_prof_fit_eval(&p->combine, (double)t->rows);
        else if (t->name == 4 && is_attn[t->tid] && t->rows == (long)b_dec &&
                 duet_profile_t_logits(p, (double)t->rows) > 0)
            v5[n5++] = t->dur / sl / duet_profile_t_logits(p, (double)t->rows);
        else if (t->name == 2 && is_exp[t->tid] && t->rows > 0 &&
                 (r.n_expert_shards == 1 ? t->rows == (long)b_dec * K * r.n_attention
                                         : t->rows <= (long)b_dec * K * r.n_attention)) {
            /* decode rounds of the whole batch (the first steps, before
             * every request is in, have fewer rows and cold caches) */
            /* its groups: the experts of this shard (round-robin placement) */
            int g = p->n_experts / r.n_expert_shards;
            if (g < 1)
                g = 1;
            double pred = g * duet_profile_t_expert(p, (double)t->rows / g);
            if (pred > 0)
                v3[n3++] = t->dur / sl / pred;
        }
    }
    /* T_c: an expert shard idle when a round's last dispatch ended starts it
     * T_c later; an attention shard idle when a round's last result left
     * combines it T_c later. */
    n6 = handoff_gaps(tx, ntx, 2, is_exp, 1, v6, n6);
    n6 = handoff_gaps(tx, ntx, 3, is_attn, 2, v6, n6);
    /* scheduler gap: a step's last logits to the next step's first attention */
    double *gaps = v2 + n2; /* room after the dispatch samples */
    int ng = 0;
    for (size_t i = 0; i + 1 < ntx; i++)
        if (tx[i].name == 4 && tx[i + 1].tid == tx[i].tid && tx[i + 1].name == 0 &&
            tx[i + 1].layer == 0 && is_attn[tx[i].tid])
            gaps[ng++] = tx[i + 1].ts - (tx[i].ts + tx[i].dur);
    if (n1 < 3 || n2 < 3 || n3 < 3 || n6 < 3 || ng < 2) {
        st = duet_errorf(DUET_ERR_INTERNAL,
                         "calibration trace: too few events (attention %d, dispatch %d, expert %d, "
                         "latency %d, steps %d)",
                         n1, n2, n3, n6, ng);
        goto out;
    }
    p->attn_scale = mean(v1, n1);
    p->disp_fix = 0;
    p->disp_per_shard = mean(v2, n2) / r.n_expert_shards;
    p->exp_scale = mean(v3, n3) / route_vs_even(p, &r);
    p->exp_fix = 0; /* a 1 + 1 run cannot tell it from the scale */
    p->comb_fix = n4 >= 3 ? mean(v4, n4) : 0;
    if (p->comb_fix < 0)
        p->comb_fix = 0;
    p->logit_scale = n5 >= 3 ? mean(v5, n5) : 1;
    p->t_c = mean(v6, n6);
    p->t_c_typ = median(v6, n6);
    p->t_step = mean(gaps, ng);
    p->calibrated = true;
out:
    free(tx);
    free(v1);
    free(v2);
    free(v3);
    free(v4);
    free(v5);
    free(v6);
    json_decref(root);
    return st;
}
