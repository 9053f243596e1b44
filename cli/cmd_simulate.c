/* duet simulate — discrete-event simulation of a deployment file from a
 * profile: the file's attention shards, expert shards (with their experts)
 * and m; the profile's compute, transfer and control-plane times. Prints
 * throughput, time between tokens and utilisation per role; --trace writes
 * the simulated pipeline as a Chrome/Perfetto trace with the same event
 * names as a real run's trace. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "topology/plan.h"
#include "topology/topology.h"

#define CMD "simulate"

/* checked option values (cli/common.h) */
static bool int_opt(const char *opt, const char *v, long lo, long hi, int *out)
{
    return duet_cli_int_opt(CMD, opt, v, lo, hi, out);
}


static void usage(FILE *f)
{
    fprintf(f,
            "usage: duet simulate DEPLOYMENT.yaml --profile FILE [--requests N] [--prompt-len N]\n"
            "                     [--tokens N] [--dedicated] [--provider shm|tcp] [--trace FILE]\n"
            "                     [-h|--help]\n"
            "Simulate DEPLOYMENT with the timings of a `duet profile` FILE: N requests (default:\n"
            "the deployment's token budget, at most 64 per attention shard) with prompts of\n"
            "--prompt-len tokens (8) decoding --tokens tokens (32) each. Shards share the\n"
            "profile's CPU cores unless --dedicated (every shard on its own device: a deployment\n"
            "at a scale this host cannot run); on shared cores, expert rounds running at once\n"
            "slow each other by the profile's measured memory contention, and an idle shard\n"
            "keeps its core while it spin-waits (the runtime's spin time, as profiled). Expert\n"
            "shards get the rows of the profile's recorded routes (even shares if it has none).\n"
            "--trace writes a Chrome/Perfetto trace.\n");
}

int duet_cmd_simulate(int argc, char **argv)
{
    const char *file = NULL, *prof = NULL, *trace = NULL, *provider = "shm";
    int requests = 0, prompt = 8, tokens = 32;
    bool dedicated = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--profile") && more)
            prof = argv[++i];
        else if (!strcmp(a, "--trace") && more)
            trace = argv[++i];
        else if (!strcmp(a, "--requests") && more) {
            if (!int_opt(a, argv[++i], 1, 1000000, &requests))
                return 2;
        } else if (!strcmp(a, "--prompt-len") && more) {
            if (!int_opt(a, argv[++i], 1, 1000000, &prompt))
                return 2;
        } else if (!strcmp(a, "--tokens") && more) {
            if (!int_opt(a, argv[++i], 3, 1000000, &tokens))
                return 2;
        } else if (!strcmp(a, "--provider") && more)
            provider = argv[++i];
        else if (!strcmp(a, "--dedicated"))
            dedicated = true;
        else if (a[0] != '-' && !file)
            file = a;
        else {
            fprintf(stderr, "duet simulate: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (!file || !prof) {
        fprintf(stderr, "duet simulate: needs a deployment file and --profile FILE\n");
        usage(stderr);
        return 2;
    }
    if (prompt < 1 || tokens < 3 || requests < 0) {
        fprintf(stderr, "duet simulate: --prompt-len >= 1, --tokens >= 3, --requests >= 1\n");
        return 2;
    }
    duet_profile_t p;
    if (duet_profile_load(prof, &p)) {
        fprintf(stderr, "duet simulate: %s\n", duet_error());
        return 1;
    }
    duet_topology_t *t = NULL;
    duet_topo_report_t rep = {0};
    duet_topo_validate_opts_t vo = {.n_experts = p.n_experts};
    if (duet_topology_load(file, &vo, &t, &rep)) {
        duet_buf_t b = {0};
        duet_topo_report_format(&rep, &b);
        fprintf(stderr, "duet simulate: %s is not a valid deployment:\n%.*s", file, (int)b.len,
                b.data ? (const char *)b.data : "");
        duet_buf_cleanup(&b);
        duet_topo_report_cleanup(&rep);
        return 1;
    }
    duet_topo_report_cleanup(&rep);
    int A = duet_topology_attention_count(t), S = duet_topology_expert_shard_count(t);
    const duet_topo_settings_t *set = duet_topology_settings(t);
    const int **rows = calloc((size_t)S, sizeof(int *));
    int *nrows = calloc((size_t)S, sizeof(int));
    int rc = 1;
    if (!rows || !nrows) {
        fprintf(stderr, "duet simulate: out of memory\n");
        goto out;
    }
    for (int s = 0; s < S; s++) {
        const duet_topo_actor_t *e = duet_topology_expert_shard(t, s);
        rows[s] = e->experts;
        nrows[s] = (int)e->n_experts;
    }
    if (!requests) {
        requests = set->token_budget * A;
        if (requests > 64 * A)
            requests = 64 * A;
    }
    duet_plan_run_t r = {.n_attention = A,
                         .n_expert_shards = S,
                         .micro_batches = set->micro_batches,
                         .shard_experts = (const int *const *)rows,
                         .shard_n_experts = nrows,
                         .requests = requests,
                         .prompt_len = prompt,
                         .new_tokens = tokens,
                         .provider = provider};
    if (dedicated)
        p.cores = 0;
    duet_sim_result_t res;
    if (duet_sim_profile(&p, &r, trace, &res)) {
        fprintf(stderr, "duet simulate: %s\n", duet_error());
        goto out;
    }
    printf("deployment %s: %d attention shard(s), %d expert shard(s), m = %d, %d requests\n", file,
           A, S, set->micro_batches, requests);
    printf("profile %s (%s, %d cores%s)\n", prof, p.host, p.cores,
           dedicated ? ", dedicated devices" : "");
    if (!dedicated) {
        printf("shared cores: concurrent expert rounds x%.2f slower (2 at once, measured)\n",
               duet_profile_contention(&p, 2));
        if (p.spin_s > 0)
            printf("shared cores: an idle shard spin-waits %.0f us on its core before it sleeps\n",
                   p.spin_s * 1e6);
        else
            printf("shared cores: idle shards sleep at once (no spin-wait in the profile)\n");
    }
    printf("expert rows per shard: %s\n",
           p.route_seqs > 0 ? "replayed from the profile's recorded routes"
                            : "even shares (the profile has no recorded routes)");
    printf("throughput      %.1f tokens/s (decode)\n", res.tokens_per_s);
    printf("time between tokens  p50 %.3f ms  p90 %.3f ms  p99 %.3f ms\n", res.tbt_p50 * 1e3,
           res.tbt_p90 * 1e3, res.tbt_p99 * 1e3);
    printf("utilisation     attention %.0f%%, experts %.0f%%\n", res.util_attn * 100,
           res.util_expert * 100);
    printf("simulated %.3f s in %ld events\n", res.seconds, res.events);
    if (trace)
        printf("trace: %s\n", trace);
    rc = 0;
out:
    free(rows);
    free(nrows);
    duet_topology_destroy(&t);
    return rc;
}
