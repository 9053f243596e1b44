/* libFuzzer target: the planner's input files — a hardware file (YAML,
 * duet_hw_load) or a profile (JSON, duet_profile_load), chosen by the first
 * byte, from the rest of the fuzz bytes. Either loads to values the planner
 * can use (finite, in range) or fails with a message; never crashes. The
 * loaders take a path, so the bytes go through a memfd. */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include "topology/plan.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int fd = memfd_create("fuzz-plan", 0);
    if (fd < 0)
        return 0;
    if (size > 1 && write(fd, data + 1, size - 1) != (ssize_t)(size - 1)) {
        close(fd);
        return 0;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    if (data[0] & 1) {
        duet_hw_list_t l = {0};
        if (duet_hw_load(path, &l) == DUET_OK) {
            for (int i = 0; i < l.n; i++)
                if (!l.hw[i].name[0] || !isfinite(l.hw[i].price) || !isfinite(l.hw[i].mem_gb))
                    abort();
            (void)duet_hw_find(&l, "H20");
        } else if (!duet_error()[0]) {
            abort(); /* a failure says why */
        }
        duet_hw_list_cleanup(&l);
    } else {
        duet_profile_t *p = calloc(1, sizeof(*p));
        if (p && duet_profile_load(path, p) == DUET_OK) {
            (void)duet_profile_t_attn(p, 8, 128);
            (void)duet_profile_t_expert(p, 16);
            for (int k = 1; k <= DUET_PROF_MAX_READERS + 1; k++)
                if (!(duet_profile_contention(p, k) >= 1.0) || !isfinite(duet_profile_contention(p, k)))
                    abort();
            long n_ids = (long)p->route_seqs * p->route_steps * p->n_sparse * p->top_k;
            if (p->route_seqs < 0 || n_ids > DUET_PROF_MAX_ROUTE_IDS)
                abort();
            for (long i = 0; i < n_ids; i++)
                if (p->routes[i] < 0 || p->routes[i] >= p->n_experts)
                    abort();
            /* a small deployment simulates from it (recorded routes replayed) */
            if (p->n_sparse <= 8 && p->n_experts <= 64) {
                duet_plan_run_t r = {.n_attention = 1,
                                     .n_expert_shards = 2,
                                     .micro_batches = 2,
                                     .requests = 4,
                                     .prompt_len = 4,
                                     .new_tokens = 3};
                duet_sim_result_t res;
                (void)duet_sim_profile(p, &r, NULL, &res);
            }
        } else if (p && !duet_error()[0]) {
            abort();
        }
        free(p);
    }
    close(fd);
    return 0;
}
