/* duet plan — the paper's Algorithm 1: choose a deployment for a model on a
 * catalogue of hardware types under a time-between-tokens SLO, print the
 * best plan of every hardware pair (ranked by throughput per cost), check
 * the top ones with the event simulator, and write the winner as a
 * deployment file that `duet run` accepts (experts placed greedily from
 * per-expert load counts when given). */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "topology/plan.h"
#include "topology/topology.h"

#define CMD "plan"

/* checked option values (cli/common.h) */
static bool int_opt(const char *opt, const char *v, long lo, long hi, int *out)
{
    return duet_cli_int_opt(CMD, opt, v, lo, hi, out);
}

static bool num_opt(const char *opt, const char *v, double lo, double hi, double *out)
{
    return duet_cli_num_opt(CMD, opt, v, lo, hi, out);
}

static void usage(FILE *f)
{
    fprintf(f,
            "usage: duet plan --model DIR|config.json --hardware FILE --slo-tbt MS [--ctx N]\n"
            "                 [--m MIN-MAX] [--colocated] [--attention TYPE] [--expert TYPE]\n"
            "                 [--loads FILE] [--replicas N] [--top N] [--rank cost|device]\n"
            "                 [--out topology.yaml] [-h|--help]\n"
            "Algorithm 1 of MegaScale-Infer: for every (attention, expert) hardware pair, tp_a,\n"
            "tp_e, expert-node count, n_a from the balance rule and m in MIN..MAX (default 1-4),\n"
            "the largest global batch whose iteration time meets the SLO (ms) and whose KV cache\n"
            "(mean context --ctx, default 2048) fits. Prints the best plan of each pair and m,\n"
            "ranked by throughput per cost (--rank device: per device); the top --top (5) are\n"
            "also run through the event simulator. --colocated adds colocated baselines (one\n"
            "instance holds everything).\n"
            "--out writes the winner as a deployment file; --loads FILE (per-expert token counts,\n"
            "numbers separated by spaces/commas, or a JSON array) places experts greedily with\n"
            "--replicas extra copies of hot experts. The model needs only config.json.\n");
}

static int by_device(const void *a, const void *b)
{
    const duet_plan_t *x = a, *y = b;
    return x->tput_per_dev > y->tput_per_dev ? -1 : x->tput_per_dev < y->tput_per_dev;
}

static int read_loads(const char *path, double *loads, int n)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "duet plan: --loads %s: %s\n", path, strerror(errno));
        return -1;
    }
    char buf[1 << 16];
    size_t len = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[len] = 0;
    int k = 0;
    char *p = buf;
    while (*p) {
        if (strchr(" \t\r\n,[]", *p)) {
            p++;
            continue;
        }
        char *end;
        double v = strtod(p, &end);
        if (end == p || v < 0 || v != v) {
            fprintf(stderr, "duet plan: --loads %s: byte %ld: expected a non-negative number\n",
                    path, (long)(p - buf));
            return -1;
        }
        if (k >= n) {
            fprintf(stderr, "duet plan: --loads %s: more than the model's %d experts\n", path, n);
            return -1;
        }
        loads[k++] = v;
        p = end;
    }
    if (k != n) {
        fprintf(stderr, "duet plan: --loads %s: %d numbers for %d experts\n", path, k, n);
        return -1;
    }
    return 0;
}

static int write_plan(const duet_plan_t *pl, const duet_plan_model_t *m, const char *model_dir,
                      const double *given_loads, int replicas, double ctx, const char *out)
{
    duet_topology_t *t = NULL;
    duet_placement_t *place = NULL;
    double *loads = calloc((size_t)m->n_experts, sizeof(double));
    int rc = -1;
    char abs_model[PATH_MAX];
    if (!loads)
        goto out;
    if (!realpath(model_dir, abs_model))
        snprintf(abs_model, sizeof(abs_model), "%s", model_dir);
    size_t ml = strlen(abs_model);
    if (ml > 12 && !strcmp(abs_model + ml - 12, "/config.json"))
        abs_model[ml - 12] = 0;
    double total = 0;
    for (int e = 0; e < m->n_experts; e++) {
        loads[e] = given_loads ? given_loads[e] : 1.0;
        total += loads[e];
    }
    if (duet_topology_place_experts(loads, m->n_experts, pl->n_e, replicas, NULL, &place) ||
        duet_topology_create(&t)) {
        fprintf(stderr, "duet plan: placement: %s\n", duet_error());
        goto out;
    }
    bool host = pl->hw_a->profiled;
    char name[128];
    snprintf(name, sizeof(name), "plan-%s-%s-m%d", pl->hw_a->name, pl->hw_e->name, pl->m);
    duet_topology_set_name(t, name);
    duet_topology_set_model(t, abs_model);
    duet_topology_set_micro_batches(t, pl->m);
    long per_shard = (pl->batch + pl->n_a - 1) / pl->n_a;
    duet_topology_set_token_budget(t, per_shard > 0 ? (int)(per_shard < 65536 ? per_shard : 65536)
                                                    : 1);
    long blocks = (long)((double)per_shard * (ctx + 256) / 16.0) + 16;
    duet_topology_set_kv_cache(t, (int)(blocks < 1 << 24 ? blocks : 1 << 24), 16);
    duet_topology_set_data_provider(t, host ? DUET_DATA_SHM : DUET_DATA_VERBS);
    duet_topology_set_control(t, DUET_CONTROL_IPC, false);
    duet_topo_node_spec_t ns = {.name = "ctl"};
    if (duet_topology_add_node(t, &ns) || duet_topology_add_gateway(t, "ctl", NULL) ||
        duet_topology_add_scheduler(t, "ctl") || duet_topology_add_router(t, "ctl"))
        goto err;
    duet_compute_t ca = {host ? DUET_COMPUTE_CPU : DUET_COMPUTE_CUDA, 0,
                         host ? (pl->hw_a->prof.threads > 0 ? pl->hw_a->prof.threads : 1) : 1};
    duet_compute_t ce = ca;
    for (int a = 0; a < pl->n_a; a++) {
        char nn[32];
        snprintf(nn, sizeof(nn), "attn%d", a);
        ns = (duet_topo_node_spec_t){.name = nn};
        if (duet_topology_add_node(t, &ns) || duet_topology_add_attention(t, nn, 1, &ca))
            goto err;
    }
    for (int s = 0; s < pl->n_e; s++) {
        char nn[32];
        snprintf(nn, sizeof(nn), "exp%d", s);
        ns = (duet_topo_node_spec_t){.name = nn};
        const int *ex = place->experts + place->offsets[s];
        size_t nex = (size_t)(place->offsets[s + 1] - place->offsets[s]);
        if (duet_topology_add_node(t, &ns) ||
            duet_topology_add_expert_shard(t, nn, &ce, ex, nex, NULL))
            goto err;
    }
    duet_topo_report_t rep = {0};
    duet_topo_validate_opts_t vo = {.n_experts = m->n_experts};
    if (duet_topology_validate(t, &vo, &rep)) {
        duet_buf_t b = {0};
        duet_topo_report_format(&rep, &b);
        fprintf(stderr, "duet plan: the plan's deployment does not validate:\n%.*s", (int)b.len,
                b.data ? (const char *)b.data : "");
        duet_buf_cleanup(&b);
        duet_topo_report_cleanup(&rep);
        goto out;
    }
    duet_topo_report_cleanup(&rep);
    if (duet_topology_save(t, out))
        goto err;
    printf("wrote %s (placement: most loaded expert shard %.3g, mean %.3g)\n", out, place->max_load,
           place->n_shards ? total / place->n_shards : 0);
    rc = 0;
    goto out;
err:
    fprintf(stderr, "duet plan: %s\n", duet_error());
out:
    duet_placement_destroy(&place);
    duet_topology_destroy(&t);
    free(loads);
    return rc;
}

int duet_cmd_plan(int argc, char **argv)
{
    const char *model = NULL, *hwfile = NULL, *out = NULL, *loads = NULL;
    duet_plan_opts_t o = {.ctx = 2048, .min_m = 1, .max_m = 4};
    double slo_ms = 0;
    int top = 5, replicas = 0;
    bool rank_device = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model") && more)
            model = argv[++i];
        else if (!strcmp(a, "--hardware") && more)
            hwfile = argv[++i];
        else if (!strcmp(a, "--slo-tbt") && more) {
            if (!num_opt(a, argv[++i], 1e-3, 1e7, &slo_ms))
                return 2;
        } else if (!strcmp(a, "--ctx") && more) {
            if (!num_opt(a, argv[++i], 1, 1e9, &o.ctx))
                return 2;
        } else if (!strcmp(a, "--m") && more) {
            const char *v = argv[++i];
            char lo[32], hi[32];
            const char *dash = strchr(v, '-');
            if (dash && dash != v && (size_t)(dash - v) < sizeof(lo) && strlen(dash + 1) < sizeof(hi)) {
                snprintf(lo, sizeof(lo), "%.*s", (int)(dash - v), v);
                snprintf(hi, sizeof(hi), "%s", dash + 1);
                if (!int_opt("--m (MIN)", lo, 1, 16, &o.min_m) ||
                    !int_opt("--m (MAX)", hi, 1, 16, &o.max_m))
                    return 2;
            } else if (!int_opt(a, v, 1, 16, &o.min_m)) {
                return 2;
            } else {
                o.max_m = o.min_m;
            }
        } else if (!strcmp(a, "--colocated"))
            o.colocated = true;
        else if (!strcmp(a, "--attention") && more)
            o.only_attn = argv[++i];
        else if (!strcmp(a, "--expert") && more)
            o.only_expert = argv[++i];
        else if (!strcmp(a, "--loads") && more)
            loads = argv[++i];
        else if (!strcmp(a, "--replicas") && more) {
            if (!int_opt(a, argv[++i], 0, 4096, &replicas))
                return 2;
        } else if (!strcmp(a, "--top") && more) {
            if (!int_opt(a, argv[++i], 0, 1000, &top))
                return 2;
        } else if (!strcmp(a, "--out") && more)
            out = argv[++i];
        else if (!strcmp(a, "--rank") && more) {
            const char *v = argv[++i];
            if (strcmp(v, "cost") && strcmp(v, "device")) {
                fprintf(stderr, "duet plan: --rank %s: expected cost or device\n", v);
                return 2;
            }
            rank_device = !strcmp(v, "device");
        } else {
            fprintf(stderr, "duet plan: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!model || !hwfile || slo_ms <= 0) {
        fprintf(stderr, "duet plan: needs --model, --hardware and --slo-tbt MS (> 0)\n");
        usage(stderr);
        return 2;
    }
    if (o.min_m < 1 || o.max_m > 16 || o.min_m > o.max_m || o.ctx < 1 || replicas < 0 || top < 0) {
        fprintf(stderr, "duet plan: --m must be MIN-MAX within 1..16, --ctx >= 1, --replicas and "
                        "--top >= 0\n");
        return 2;
    }
    o.slo_tbt = slo_ms / 1e3;
    duet_plan_model_t m;
    duet_hw_list_t hw = {0};
    if (duet_plan_model_load(model, &m)) {
        fprintf(stderr, "duet plan: %s\n", duet_error());
        return 1;
    }
    if (duet_hw_load(hwfile, &hw)) {
        fprintf(stderr, "duet plan: %s\n", duet_error());
        return 1;
    }
    duet_plan_list_t l = {0};
    int rc = 1;
    double *given = NULL;
    if (loads) { /* read before searching: a bad file fails fast */
        given = calloc((size_t)m.n_experts, sizeof(double));
        if (!given || read_loads(loads, given, m.n_experts))
            goto out;
    }
    if (duet_plan_search(&m, &hw, &o, &l)) {
        fprintf(stderr, "duet plan: %s\n", duet_error());
        goto out;
    }
    if (rank_device)
        qsort(l.p, (size_t)l.n, sizeof(duet_plan_t), by_device);
    printf("model %s: %d layers (%d MoE), hidden %d, %d experts, top-%d; SLO %.1f ms between "
           "tokens, context %.0f\n",
           m.name, m.n_layers, m.n_sparse, m.hidden, m.n_experts, m.top_k, slo_ms, o.ctx);
    if (l.n == 0) {
        fprintf(stderr, "duet plan: no plan meets the SLO with this hardware\n");
        goto out;
    }
    printf("%-3s %-14s %-14s %4s %4s %4s %4s %2s %7s %8s %8s %8s %8s %10s %9s %9s\n", "#",
           "attention", "expert", "tp_a", "n_a", "tp_e", "n_e", "m", "batch", "T_a ms", "T_e ms",
           "T_c ms", "TBT ms", "tokens/s", "per dev", "per cost");
    for (int i = 0; i < l.n; i++) {
        const duet_plan_t *p = &l.p[i];
        char ea[64], ee[64];
        snprintf(ea, sizeof(ea), "%s", p->hw_a->name);
        snprintf(ee, sizeof(ee), "%s", p->colocated ? "(colocated)" : p->hw_e->name);
        printf("%-3d %-14s %-14s %4d %4d %4d %4d %2d %7ld %8.3f %8.3f %8.3f %8.2f %10.0f %9.1f "
               "%9.1f\n",
               i + 1, ea, ee, p->tp_a, p->n_a, p->colocated ? 0 : p->tp_e, p->n_e, p->m, p->batch,
               p->t_a * 1e3, p->t_e * 1e3, p->t_c * 1e3, p->t_iter * 1e3, p->tput, p->tput_per_dev,
               p->tput_per_cost);
    }
    int shown = 0;
    for (int i = 0; i < l.n && shown < top; i++) {
        if (l.p[i].colocated)
            continue;
        duet_sim_result_t sr;
        if (duet_plan_simulate(&m, &l.p[i], &o, NULL, &sr)) {
            fprintf(stderr, "duet plan: simulate #%d: %s\n", i + 1, duet_error());
            goto out;
        }
        if (!shown)
            printf("event simulation of the top plans (3 iterations):\n");
        printf("  #%-3d %10.0f tokens/s (model %.0f), TBT p50 %.2f ms, utilisation attention "
               "%.0f%% experts %.0f%%\n",
               i + 1, sr.tokens_per_s, l.p[i].tput, sr.tbt_p50 * 1e3, sr.util_attn * 100,
               sr.util_expert * 100);
        shown++;
    }
    if (out) {
        const duet_plan_t *win = NULL;
        for (int i = 0; i < l.n && !win; i++)
            if (!l.p[i].colocated)
                win = &l.p[i];
        if (!win) {
            fprintf(stderr, "duet plan: no disaggregated plan to write\n");
            goto out;
        }
        if (write_plan(win, &m, model, given, replicas, o.ctx, out))
            goto out;
    }
    rc = 0;
out:
    free(given);
    duet_plan_list_cleanup(&l);
    duet_hw_list_cleanup(&hw);
    return rc;
}
