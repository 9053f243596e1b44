/* duet profile — measure the paper's performance model on this host and
 * write it as a profile file (JSON) for `duet plan` and `duet simulate`:
 * attention T_a = k1·b + k2 (and its growth with context), expert
 * T_e = k3·b + k4, combine, logits, the data plane's transfer time per
 * message size for each provider, and — from a short real deployment run
 * with a trace — the control latency T_c and the pipeline's overheads. */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/common.h"
#include "topology/plan.h"

#define CMD "profile"

/* checked option values (cli/common.h) */
static bool int_opt(const char *opt, const char *v, long lo, long hi, int *out)
{
    return duet_cli_int_opt(CMD, opt, v, lo, hi, out);
}


static void usage(FILE *f)
{
    fprintf(
        f, "usage: duet profile [--model DIR] [--backend cpu] [--threads N] [--providers shm,tcp]\n"
           "                    [--repeats N] [--quick] [--no-calibrate] [--out FILE] [-h|--help]\n"
           "Measure attention and expert compute times (least-squares fits T_a = k1*b + k2,\n"
           "T_e = k3*b + k4), combine and logits, the data plane's transfer time per message\n"
           "size, and (unless --no-calibrate) the control latency and pipeline overheads from a\n"
           "short real run (1 attention shard, 1 expert shard, m = 1), with the router's choices\n"
           "on that run's tokens; also the memory contention of expert rounds running at once\n"
           "on 1..cores threads. Writes JSON to FILE\n"
           "(default profile.json). --model defaults to the bundled demo model.\n");
}

static void show(void *u, const char *what, int done, int total)
{
    (void)u;
    fprintf(stderr, "\rprofile: %-22s %d/%d", what, done + 1, total);
    if (done + 1 == total)
        fputc('\n', stderr);
    fflush(stderr);
}

int duet_cmd_profile(int argc, char **argv)
{
    duet_profile_opts_t o = {.backend = "cpu", .threads = 1, .providers = "shm,tcp"};
    const char *out = "profile.json";
    bool calibrate = true;
    char defmodel[1024];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool more = i + 1 < argc;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage(stdout);
            return 0;
        } else if (!strcmp(a, "--model") && more)
            o.model_dir = argv[++i];
        else if (!strcmp(a, "--backend") && more)
            o.backend = argv[++i];
        else if (!strcmp(a, "--threads") && more) {
            if (!int_opt(a, argv[++i], 1, 256, &o.threads))
                return 2;
        }
        else if (!strcmp(a, "--providers") && more)
            o.providers = argv[++i];
        else if (!strcmp(a, "--repeats") && more) {
            if (!int_opt(a, argv[++i], 1, 64, &o.repeats))
                return 2;
        }
        else if (!strcmp(a, "--out") && more)
            out = argv[++i];
        else if (!strcmp(a, "--quick"))
            o.quick = true;
        else if (!strcmp(a, "--no-calibrate"))
            calibrate = false;
        else {
            fprintf(stderr, "duet profile: unknown or incomplete option '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    if (strcmp(o.backend, "cpu")) {
        fprintf(stderr,
                "duet profile: --backend %s: only cpu is profiled in this build of the "
                "planner\n",
                o.backend);
        return 2;
    }
    if (o.threads < 1 || o.threads > 256) {
        fprintf(stderr, "duet profile: --threads must be 1..256\n");
        return 2;
    }
    if (!o.model_dir && !(o.model_dir = duet_cli_default_model(defmodel, sizeof(defmodel)))) {
        fprintf(stderr, "duet profile: no --model given and no bundled demo model found\n");
        return 2;
    }
    o.progress = show;
    duet_profile_t p;
    duet_status_t st = duet_profile_measure(&o, &p);
    if (st) {
        fprintf(stderr, "\nduet profile: %s\n", duet_error());
        return 1;
    }
    if (calibrate) {
        fprintf(stderr, "profile: calibrating with a real deployment (1 attention shard, 1 "
                        "expert shard, m = 1)...\n");
        duet_plan_run_t r = {.model_dir = o.model_dir,
                             .n_attention = 1,
                             .n_expert_shards = 1,
                             .micro_batches = 1,
                             .threads = o.threads,
                             .requests = 16,
                             .prompt_len = 8,
                             .new_tokens = o.quick ? 12 : 24,
                             .provider = "shm"};
        if ((st = duet_profile_measure_parallel(&p, o.model_dir, 0.2)) ||
            (st = duet_profile_calibrate(&p, &r))) {
            fprintf(stderr, "duet profile: calibration: %s\n", duet_error());
            return 1;
        }
    }
    if ((st = duet_profile_save(&p, out))) {
        fprintf(stderr, "duet profile: %s\n", duet_error());
        return 1;
    }
    printf("host %s, %d cores, backend %s, %d thread(s)\n", p.host, p.cores, p.backend, p.threads);
    printf("attention  T_a = %.3f us * b + %.3f us   (+%.4f us per token per context token)\n",
           p.k1 * 1e6, p.k2 * 1e6, p.k_ctx * 1e6);
    printf("expert     T_e = %.3f us * b + %.3f us\n", p.k3 * 1e6, p.k4 * 1e6);
    printf("memory     concurrent expert rounds, CPU time against one alone:");
    for (int k = 1; k <= p.n_contention; k++)
        printf(" %d: x%.2f", k, p.contention[k - 1]);
    printf("\n");
    if (p.route_seqs > 0)
        printf("routing    %d sequences x %d decode steps of the router's choices recorded\n",
               p.route_seqs, p.route_steps);
    printf("combine    %.3f us * rows + %.3f us; logits %.3f us * b + %.3f us\n", p.combine.a * 1e6,
           p.combine.b * 1e6, p.logits.a * 1e6, p.logits.b * 1e6);
    for (int i = 0; i < p.n_links; i++) {
        const duet_prof_link_t *l = &p.links[i];
        printf("data plane %-4s latency %.1f us, %.2f GB/s; Util:", l->name, l->lat * 1e6,
               l->bw / 1e9);
        for (int k = 0; k < l->n; k++)
            printf(" %.0fK=%.2f", l->bytes[k] / 1024, l->bytes[k] / l->sec[k] / l->bw);
        printf("\n");
    }
    if (p.calibrated)
        printf("pipeline   T_c %.1f us, step gap %.1f us, dispatch %.1f us/shard; in-pipeline "
               "over stand-alone: attention x%.2f, experts x%.2f, logits x%.2f, combine +%.1f "
               "us\n",
               p.t_c * 1e6, p.t_step * 1e6, p.disp_per_shard * 1e6, p.attn_scale, p.exp_scale,
               p.logit_scale, p.comb_fix * 1e6);
    if (p.calibrated)
        printf("runtime    compute actors spin-wait %.0f us before sleeping (DUET_SPIN_US; 0: "
               "never)\n",
               p.spin_s * 1e6);
    printf("wrote %s\n", out);
    return 0;
}
