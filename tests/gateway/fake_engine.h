/* fake_engine — a deterministic duet_gw_engine_t for gateway tests.
 *
 * Each request generates token k (k = 0, 1, ...) as
 *     (last prompt id + 1 + k + off) mod vocab,   off = seed % 5 when
 * temperature > 0, else 0 — so a test can compute the exact expected output.
 * The first token comes after first_delay_ms, the next ones every
 * token_delay_ms, from the engine's own thread (with no delay possibly
 * before submit() has returned, which the contract allows). It honours
 * max_tokens, stop ids and cancel, and counts what happened so tests can
 * assert on it. */
#ifndef DUET_TEST_FAKE_ENGINE_H
#define DUET_TEST_FAKE_ENGINE_H

#include "gateway/engine.h"

typedef struct fake_engine_opts {
    const char *model_name; /* default "fake-model" */
    uint32_t max_context;   /* default 256 */
    uint32_t vocab;         /* required */
    int32_t eos_id;         /* -1: none reported in info() */
    unsigned first_delay_ms;
    unsigned token_delay_ms;
    bool ready; /* initial readiness */
} fake_engine_opts_t;

typedef struct fake_engine_counts {
    uint64_t submitted;
    uint64_t canceled; /* cancel() calls that hit a live request */
    uint64_t finished;
    uint32_t active;
    uint64_t tokens;
} fake_engine_counts_t;

duet_status_t fake_engine_create(const fake_engine_opts_t *opts, duet_gw_engine_t **out);
void fake_engine_destroy(duet_gw_engine_t **eng_p);
void fake_engine_set_ready(duet_gw_engine_t *eng, bool ready);
void fake_engine_set_delays(duet_gw_engine_t *eng, unsigned first_ms, unsigned token_ms);
/* Faults: submit() fails with `refuse` (DUET_OK: accept); a request fails
 * with DUET_GW_ENGINE_FINISH_ERROR after `fail_after` tokens (0: never). */
void fake_engine_set_faults(duet_gw_engine_t *eng, duet_status_t refuse, uint32_t fail_after);
fake_engine_counts_t fake_engine_counts(duet_gw_engine_t *eng);
/* Wait (up to timeout_ms) until no request is active; true if so. */
bool fake_engine_wait_idle(duet_gw_engine_t *eng, unsigned timeout_ms);
/* The expected k-th token of a request (see above). */
int32_t fake_engine_token(int32_t last_prompt, uint32_t k, float temperature, uint64_t seed,
                          uint32_t vocab);

#endif
