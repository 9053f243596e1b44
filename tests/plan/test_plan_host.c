/* The simulator against the real pipeline on this host: profile the demo
 * model (compute micro-benchmarks, data plane, parallel capacity, one
 * calibration run of a 1 + 1 deployment), then for five CPU deployments
 * (different attention shards, expert shards, m) run the real pipeline in
 * this process and simulate the same deployment from the profile; the
 * simulated decode throughput must be within 15 % of the measured one.
 *
 * The machine is shared (other tests, builds): right before every run the
 * host's parallel capacity is measured again and the 1 + 1 calibration run
 * repeated (its in-pipeline speeds, T_c and step gap), so the reference and
 * the deployment see the same machine — the capacity and the 1 + 1 speeds
 * are inputs, the deployment's behaviour (shards, m, overlap, sharing the
 * cores) is the simulator's. The check uses the median over five runs.
 * The profile also carries the measured memory contention of concurrent
 * expert rounds and the router's recorded choices (the simulator replays
 * them); beside each error the test prints the model without both (even
 * shares, no contention), for comparison only, and at the end the
 * simulator's error on the 1 + 1 calibration runs themselves (the terms
 * come from those runs: a check of the calibration, not of the model).
 * Measured decode throughput is per request (duet_plan_run_measure), as
 * the simulator's is per step. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "topology/plan.h"

#define PYCODER DUET_MODELS "/pycoder-moe"
#define REPS 5

static bool g_skipped;

static int cmp_d(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void test_sim_vs_measured(void **state)
{
    (void)state;
    duet_profile_opts_t po = {
        .model_dir = PYCODER, .threads = 1, .providers = "shm", .quick = true};
    duet_profile_t p;
    if (duet_profile_measure(&po, &p))
        fail_msg("profile: %s", duet_error());
    duet_plan_run_t cal = {.model_dir = PYCODER,
                           .n_attention = 1,
                           .n_expert_shards = 1,
                           .micro_batches = 1,
                           .requests = 24,
                           .prompt_len = 8,
                           .new_tokens = 32};
    if (duet_profile_measure_parallel(&p, PYCODER, 0.2) || duet_profile_calibrate(&p, &cal))
        fail_msg("calibrate: %s", duet_error());
    printf("profile: k1 %.2f us k2 %.2f us k3 %.2f us k4 %.2f us T_c %.1f us step %.1f us "
           "disp %.1f us/shard scales attn %.2f exp %.2f logits %.2f comb +%.1f us\n",
           p.k1 * 1e6, p.k2 * 1e6, p.k3 * 1e6, p.k4 * 1e6, p.t_c * 1e6, p.t_step * 1e6,
           p.disp_per_shard * 1e6, p.attn_scale, p.exp_scale, p.logit_scale, p.comb_fix * 1e6);
    printf("memory contention of concurrent expert rounds (CPU time against alone):");
    for (int k = 1; k <= p.n_contention; k++)
        printf(" %d: x%.3f", k, duet_profile_contention(&p, k));
    printf("; routes recorded: %d sequences x %d steps\n", p.route_seqs, p.route_steps);
    /* A timing comparison needs a host whose timings repeat: three runs of
     * the same deployment must agree within 25 %, or the check is skipped
     * (a loaded machine, not the simulator, would decide it; DUET_PLAN_FORCE=1
     * compares anyway, DUET_PLAN_TRACE=1 keeps both traces in /tmp). */
    {
        double v[3];
        for (int q = 0; q < 3; q++) {
            duet_plan_measured_t me;
            if (duet_plan_run_measure(&cal, &me))
                fail_msg("run: %s", duet_error());
            v[q] = me.decode_tps;
        }
        qsort(v, 3, sizeof(double), cmp_d);
        double spread = (v[2] - v[0]) / v[1];
        printf(
            "noise: three runs of the 1 + 1 deployment: %.0f %.0f %.0f tokens/s (spread %.0f%%)\n",
            v[0], v[1], v[2], spread * 100);
        if (spread > 0.25 && !getenv("DUET_PLAN_FORCE")) {
            printf("skipped: this host's timings vary by %.0f%% between identical runs (other "
                   "load); a 15%% comparison cannot be made now\n",
                   spread * 100);
            g_skipped = true;
            return;
        }
    }
    static const int dep[][3] = {{1, 1, 1}, {1, 2, 2}, {2, 2, 2}, {1, 4, 3}, {2, 1, 4}};
    int n = (int)(sizeof(dep) / sizeof(dep[0]));
    int bad = 0;
    double calib[5 * REPS], self[5 * REPS];
    int n_calib = 0, n_self = 0;
    printf("%-4s %-4s %-3s %12s %12s %8s\n", "n_a", "S", "m", "measured", "simulated", "error");
    for (int k = 0; k < n; k++) {
        duet_plan_run_t r = {.model_dir = PYCODER,
                             .n_attention = dep[k][0],
                             .n_expert_shards = dep[k][1],
                             .micro_batches = dep[k][2],
                             .requests = 24,
                             .prompt_len = 8,
                             .new_tokens = 48};
        double meas[REPS], sim[REPS], ratio[REPS], cap[REPS], slow[REPS], ratio0[REPS];
        char tp[64], ts[64];
        snprintf(tp, sizeof(tp), "/tmp/plan-real-%d.json", k);
        snprintf(ts, sizeof(ts), "/tmp/plan-sim-%d.json", k);
        const char *tr = getenv("DUET_PLAN_TRACE"); /* debugging: keep both traces */
        for (int q = 0; q < REPS; q++) {
            duet_plan_measured_t me;
            duet_sim_result_t sr;
            r.trace_path = tr ? tp : NULL;
            if (duet_profile_measure_parallel(&p, PYCODER, 0.15) ||
                duet_profile_calibrate(&p, &cal))
                fail_msg("capacity / calibration: %s", duet_error());
            if (n_calib < 5 * REPS)
                calib[n_calib++] = p.calib_tps;
            /* for comparison only: the simulator on the calibration run
             * itself (its terms come from that run's trace) */
            {
                duet_sim_result_t sc;
                if (duet_sim_profile(&p, &cal, NULL, &sc))
                    fail_msg("simulate: %s", duet_error());
                if (n_self < 5 * REPS)
                    self[n_self++] = sc.tokens_per_s / p.calib_tps;
            }
            if (duet_plan_run_measure(&r, &me))
                fail_msg("run %d/%d/%d: %s", dep[k][0], dep[k][1], dep[k][2], duet_error());
            if (duet_sim_profile(&p, &r, tr ? ts : NULL, &sr))
                fail_msg("simulate: %s", duet_error());
            /* for comparison only: the model without contention and routes
             * (every expert shard its even share, rounds never slowed) */
            {
                static duet_profile_t p0;
                p0 = p;
                p0.n_contention = 0;
                p0.route_seqs = 0;
                duet_sim_result_t s0;
                if (duet_sim_profile(&p0, &r, NULL, &s0))
                    fail_msg("simulate: %s", duet_error());
                ratio0[q] = s0.tokens_per_s / me.decode_tps;
            }
            meas[q] = me.decode_tps;
            sim[q] = sr.tokens_per_s;
            ratio[q] = sim[q] / meas[q];
            cap[q] = p.parallel;
            slow[q] = p.slowdown;
        }
        double rs[REPS];
        for (int q = 0; q < REPS; q++)
            rs[q] = ratio[q];
        qsort(rs, REPS, sizeof(double), cmp_d);
        double err = rs[REPS / 2] - 1;
        int mid = 0;
        for (int q = 0; q < REPS; q++)
            if (ratio[q] == rs[REPS / 2])
                mid = q;
        double rs0[REPS];
        for (int q = 0; q < REPS; q++)
            rs0[q] = ratio0[q];
        qsort(rs0, REPS, sizeof(double), cmp_d);
        printf("%-4d %-4d %-3d %10.1f/s %10.1f/s %+7.1f%%  [even shares, no contention: %+6.1f%%]"
               "   (runs:",
               dep[k][0], dep[k][1], dep[k][2], meas[mid], sim[mid], err * 100,
               (rs0[REPS / 2] - 1) * 100);
        for (int q = 0; q < REPS; q++)
            printf(" %.0f/%.0f [%.2f cores, x%.2f]", meas[q], sim[q], cap[q], slow[q]);
        printf(")\n");
        if (err > 0.15 || err < -0.15)
            bad++;
    }
    /* The same 1 + 1 deployment ran before every measurement: if those runs
     * spread more than 25 % (10th to 90th percentile over the median), the
     * machine changed under the test and the comparison says nothing. */
    qsort(calib, (size_t)n_calib, sizeof(double), cmp_d);
    double lo = calib[n_calib / 10], mid_c = calib[n_calib / 2], hi = calib[n_calib * 9 / 10];
    double spread_all = (hi - lo) / mid_c;
    printf("noise during the test: the 1 + 1 reference ran at %.0f..%.0f tokens/s (10th..90th "
           "percentile, spread %.0f%%)\n",
           lo, hi, spread_all * 100);
    qsort(self, (size_t)n_self, sizeof(double), cmp_d);
    printf("the simulator on the 1 + 1 calibration runs themselves: %+.1f%% (median; %+.1f%%.."
           "%+.1f%%)\n",
           (self[n_self / 2] - 1) * 100, (self[0] - 1) * 100, (self[n_self - 1] - 1) * 100);
    fflush(stdout);
    if (spread_all > 0.25 && !getenv("DUET_PLAN_FORCE")) {
        printf("skipped: the host's speed changed by %.0f%% during the test (other load); the "
               "15%% comparison above cannot be trusted either way\n",
               spread_all * 100);
        g_skipped = true;
        return;
    }
#ifdef DUET_PLAN_SANITIZED
    printf("sanitizer build: timings are not the program's, the 15 %% check is skipped\n");
    g_skipped = true;
    (void)bad;
#else
    /* The check: at least four of these CPU deployments (different
     * n_a, expert shards, m) within 15 %. A miss beyond that one fails. */
    printf("%d of %d deployments within 15%% (at least 4 required)\n", n - bad, n);
    assert_true(n - bad >= 4);
#endif
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sim_vs_measured),
    };
    int rc = cmocka_run_group_tests(tests, NULL, NULL);
    return rc == 0 && g_skipped ? 77 : rc;
}
