/* duet chaos TOPOLOGY --faults PLAN --seed S --requests N [--sim]
 *            [--campaign K] [--deadline-ms D] — a workload under a fault plan
 * against a fault-free reference run, with the recovery invariants checked
 * (actors/chaos.h). Every node of the file runs in this process. */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "actors/chaos.h"
#include "cli/cli.h"
#include "cli/pipe_topo.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: duet chaos TOPOLOGY [--faults PLAN] [--seed S] [--requests N] [--sim]\n"
               "                  [--campaign K] [--deadline-ms D] [--max-tokens T] [-m DIR]\n"
               "\n"
               "Run N requests (prompts drawn from --seed, greedy) through the deployment\n"
               "TOPOLOGY, all of its nodes in this process: first without faults (the\n"
               "reference), then under the fault plan. Reports requests completed, ended with\n"
               "an error, lost (no answer by the deadline), hung (started, not done by the\n"
               "deadline), token mismatches against the reference, tokens misnumbered,\n"
               "leaked KV, data-plane slots and credits after drain, how fast the first crash\n"
               "was acted on, and the stall each fault caused (longest gap in the token\n"
               "stream after it). Exit status 1 if\n"
               "anything was lost, hung, mismatched, misnumbered or leaked.\n"
               "\n"
               "PLAN is a fault-plan file (or the rules themselves), one rule a line:\n"
               "  crash actor=expert/1 at=300ms          stall actor=attn/0 at=1s for=200ms\n"
               "  drop p=0.05 type=pipe.result for=1s    dup p=0.3 type=pipe.dispatch\n"
               "  delay min=2ms max=4ms from=expert/0 type=pipe.result   (a straggler)\n"
               "  reorder p=0.3 window=2ms type=pipe.result\n"
               "  partition nodes=e1|ctl,a0 at=200ms for=300ms\n"
               "Times count from the deployment's start (virtual time with --sim). Actor\n"
               "names: attn/<i>, expert/<s>, router, scheduler.\n"
               "\n"
               "options:\n"
               "  --faults PLAN      the fault plan (none: only the reference checks)\n"
               "  --seed S           workload and fault seed (default 1)\n"
               "  --plan-seed P      seed of the plan's probabilities and of the simulated\n"
               "                     network (default: S; a campaign's failing seed prints it)\n"
               "  --requests N       requests (default 8)\n"
               "  --max-tokens T     tokens per request (default 16)\n"
               "  --sim              single-threaded on the simulated network, reproducible\n"
               "  --campaign K       K runs with seeds S, S+1, ..., each with a random plan\n"
               "                     of 1-3 faults (crashes of shards and of the scheduler,\n"
               "                     stalls, stragglers, partitions;\n"
               "                     drop/dup/reorder of pipe.dispatch, pipe.result,\n"
               "                     pipe.token, pipe.submit, pipe.free, pipe.ack); prints the\n"
               "                     first failing seed with its plan (implies no --faults)\n"
               "  --deadline-ms D    a request not done D ms after the last arrival is hung\n"
               "                     (default 60000)\n"
               "  --round-timeout-ms R  a round without progress fails after R ms (default 500)\n"
               "  -m, --model DIR    model directory instead of the file's\n"
               "  -h, --help         this help\n");
}

static char *read_plan(const char *arg)
{
    FILE *f = fopen(arg, "rb");
    if (!f) {
        if (strchr(arg, '='))
            return strdup(arg); /* the rules themselves */
        fprintf(stderr, "duet chaos: cannot open fault plan %s\n", arg);
        return NULL;
    }
    char *buf = NULL;
    size_t n = 0, cap = 0;
    int ch;
    while ((ch = fgetc(f)) != EOF) {
        if (n + 2 > cap) {
            cap = cap ? cap * 2 : 4096;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        buf[n++] = (char)ch;
    }
    fclose(f);
    if (!buf)
        return strdup("");
    buf[n] = 0;
    return buf;
}

int duet_cmd_chaos(int argc, char **argv)
{
    enum { O_FAULTS = 256, O_SEED, O_REQ, O_SIM, O_CAMP, O_DEAD, O_MAXT, O_RTO, O_PSEED };
    static const struct option longopts[] = {
        {"faults", required_argument, NULL, O_FAULTS},
        {"seed", required_argument, NULL, O_SEED},
        {"plan-seed", required_argument, NULL, O_PSEED},
        {"requests", required_argument, NULL, O_REQ},
        {"sim", no_argument, NULL, O_SIM},
        {"campaign", required_argument, NULL, O_CAMP},
        {"deadline-ms", required_argument, NULL, O_DEAD},
        {"max-tokens", required_argument, NULL, O_MAXT},
        {"round-timeout-ms", required_argument, NULL, O_RTO},
        {"model", required_argument, NULL, 'm'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *faults_arg = NULL, *model = NULL;
    unsigned long long seed = 1, plan_seed = 0;
    bool have_plan_seed = false;
    long requests = 8, campaign = 0, deadline = 60000, maxt = 16, rto = 500;
    bool sim = false;
    int c;
    optind = 1;
    opterr = 0;
    char *end;
    while ((c = getopt_long(argc, argv, ":m:h", longopts, NULL)) != -1) {
        switch (c) {
        case O_FAULTS: faults_arg = optarg; break;
        case O_SEED:
        case O_PSEED: {
            unsigned long long v = strtoull(optarg, &end, 10);
            if (*end || !*optarg) {
                fprintf(stderr, "duet chaos: %s %s: not a number\n",
                        c == O_SEED ? "--seed" : "--plan-seed", optarg);
                return 2;
            }
            if (c == O_SEED) {
                seed = v;
            } else {
                plan_seed = v;
                have_plan_seed = true;
            }
            break;
        }
        case O_REQ:
        case O_CAMP:
        case O_DEAD:
        case O_MAXT:
        case O_RTO: {
            long v = strtol(optarg, &end, 10);
            if (*end || v < (c == O_CAMP ? 0 : 1) || v > 100000000) {
                fprintf(stderr, "duet chaos: %s %s: not a valid count\n", argv[optind - 2], optarg);
                return 2;
            }
            if (c == O_REQ)
                requests = v;
            else if (c == O_CAMP)
                campaign = v;
            else if (c == O_DEAD)
                deadline = v;
            else if (c == O_MAXT)
                maxt = v;
            else
                rto = v;
            break;
        }
        case O_SIM: sim = true; break;
        case 'm': model = optarg; break;
        case 'h': usage(stdout); return 0;
        default: usage(stderr); return 2;
        }
    }
    if (optind != argc - 1) {
        usage(stderr);
        return 2;
    }
    if (campaign && faults_arg) {
        fprintf(stderr, "duet chaos: --campaign makes its own plans; leave out --faults\n");
        return 2;
    }
    const char *path = argv[optind];
    duet__topo_pipe_t tp;
    if (duet__topo_pipe_init(&tp, "chaos", path, model, false))
        return 2;
    char *plan = NULL;
    if (faults_arg && !(plan = read_plan(faults_arg))) {
        duet__topo_pipe_cleanup(&tp);
        return 2;
    }
    if (plan) { /* a bad plan is an error before anything runs */
        duet_fault_plan_t *fp = NULL;
        duet_status_t ps = duet_fault_plan_create(seed, &fp);
        if (!ps)
            ps = duet_fault_plan_parse(fp, plan, faults_arg);
        duet_fault_plan_destroy(&fp);
        if (ps) {
            fprintf(stderr, "duet chaos: %s\n", duet_error());
            free(plan);
            duet__topo_pipe_cleanup(&tp);
            return 2;
        }
    }
    duet_chaos_config_t cc = {.pipe = tp.cfg,
                              .workload_seed = seed,
                              .requests = (int)requests,
                              .max_new = (int)maxt,
                              .deadline_ms = (uint32_t)deadline};
    cc.pipe.round_timeout_ms = (uint32_t)rto;
    if (sim) {
        cc.pipe.control = DUET_PIPE_CONTROL_SIM;
        cc.pipe.provider = "sim";
        cc.pipe.sim_seed = seed;
        cc.pipe.sim_latency_max_ns = 200000;
        cc.pipe.threads = 1;
        /* one node per actor under the simulation (the file's node names
         * stay for partition rules only with real threads) */
    }
    int rc = 0;
    duet_chaos_ref_t *ref = NULL;
    duet_chaos_result_t res;
    if (duet_chaos_reference(&cc, &ref)) {
        fprintf(stderr, "duet chaos: reference run: %s\n", duet_error());
        rc = 2;
        goto out;
    }
    double start_ms, run_ms;
    duet_chaos_ref_times(ref, &start_ms, &run_ms);
    printf("reference: %d requests x %ld tokens in %.1f ms from %.1f ms%s\n", (int)requests, maxt,
           run_ms, start_ms, sim ? " (virtual time)" : "");
    if (!campaign) {
        if (duet_chaos_run(&cc, ref, plan, have_plan_seed ? plan_seed : seed, &res)) {
            fprintf(stderr, "duet chaos: %s\n", duet_error());
            rc = 2;
            goto out;
        }
        duet_chaos_print(stdout, &res);
        rc = duet_chaos_ok(&res) ? 0 : 1;
        printf("%s\n", rc ? "FAILED" : "ok");
        goto out;
    }
    uint64_t tot[DUET_FAULT_KIND_COUNT] = {0}, lost = 0, hung = 0, mism = 0, errored = 0,
             replays = 0, epochs = 0, sched_crashes = 0;
    for (long k = 0; k < campaign; k++) {
        uint64_t s = seed + (uint64_t)k;
        char rp[2048];
        duet_chaos_random_plan(s, &cc.pipe, start_ms, run_ms, rp, sizeof(rp));
        for (const char *q = rp; (q = strstr(q, "crash actor=scheduler")); q++)
            sched_crashes++;
        if (duet_chaos_run(&cc, ref, rp, s, &res)) {
            fprintf(stderr, "duet chaos: seed %llu: %s\nplan:\n%s", (unsigned long long)s,
                    duet_error(), rp);
            rc = 2;
            goto out;
        }
        for (int i = 0; i < DUET_FAULT_KIND_COUNT; i++)
            tot[i] += res.faults[i];
        lost += (uint64_t)res.lost;
        hung += (uint64_t)res.hung;
        mism += (uint64_t)res.mismatched;
        errored += (uint64_t)res.errored;
        replays += res.replays;
        epochs += res.epochs;
        double worst = 0;
        for (int i = 0; i < res.n_stalls; i++)
            if (res.stall_ms[i] > worst)
                worst = res.stall_ms[i];
        printf("seed %llu: %d faults, %d completed, %d errors, %llu replays, %llu epochs, "
               "longest gap %.1f ms%s\n",
               (unsigned long long)s, res.n_stalls, res.completed, res.errored,
               (unsigned long long)res.replays, (unsigned long long)res.epochs, worst,
               duet_chaos_ok(&res) ? "" : " FAILED");
        if (!duet_chaos_ok(&res)) {
            printf("seed %llu FAILED; its plan:\n%s", (unsigned long long)s, rp);
            duet_chaos_print(stdout, &res);
            printf("replay: duet chaos %s --seed %llu --plan-seed %llu --requests %ld "
                   "--max-tokens %ld%s --faults PLANFILE\n",
                   path, seed, (unsigned long long)s, requests, maxt, sim ? " --sim" : "");
            rc = 1;
            break;
        }
    }
    printf("campaign: %ld seeds from %llu; faults injected:", campaign, seed);
    for (int i = 0; i < DUET_FAULT_KIND_COUNT; i++)
        if (tot[i])
            printf(" %s %llu", duet_fault_kind_name((duet_fault_kind_t)i),
                   (unsigned long long)tot[i]);
    printf(" (of the crashes, %llu of the scheduler)", (unsigned long long)sched_crashes);
    printf("; requests lost %llu, hung %llu, mismatched %llu, ended with error %llu; %llu "
           "replays, %llu epochs\n",
           (unsigned long long)lost, (unsigned long long)hung, (unsigned long long)mism,
           (unsigned long long)errored, (unsigned long long)replays, (unsigned long long)epochs);
    printf("%s\n", rc ? "FAILED" : "ok");
out:
    duet_chaos_ref_destroy(&ref);
    free(plan);
    duet__topo_pipe_cleanup(&tp);
    return rc;
}
