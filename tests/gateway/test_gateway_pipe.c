/* The gateway's pipeline engine (gateway/engine_pipe.h) on the bundled demo
 * model, 1 attention + 1 expert shard, m = 2, without HTTP: greedy tokens
 * equal Hugging Face's (reference.json); a stop id that is not the
 * pipeline's eos finishes with STOP right after it; cancel finishes with
 * CANCELED and leaves nothing running and no KV reserved; unknown ids are
 * NOT_FOUND; bad requests fail at submit without callbacks; the KV usage
 * reported is the attention shard's blocks in use (prompt + tokens so far),
 * not the scheduler's reservation (prompt + max_tokens). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>
#include <pthread.h>

#include "gateway/engine_pipe.h"

/* reference.json's first greedy prompt ("def fibonacci(n):\n") */
static const int32_t k_prompt[] = {487, 289, 1465, 270, 1239, 517, 8, 78, 310, 199};
static const int32_t k_greedy[] = {3, 199, 3, 547, 341, 703, 684, 17, 199, 3, 258, 1076};
#define N_PROMPT ((size_t)(sizeof(k_prompt) / sizeof(k_prompt[0])))
#define N_GREEDY ((uint32_t)(sizeof(k_greedy) / sizeof(k_greedy[0])))

typedef struct sink {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int32_t tok[1024];
    uint32_t n;
    int finished; /* on_finish calls */
    duet_gw_engine_finish_t reason;
} sink_t;

static void on_token(void *user, int32_t t)
{
    sink_t *s = user;
    pthread_mutex_lock(&s->mu);
    if (s->n < 1024)
        s->tok[s->n] = t;
    s->n++;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static void on_finish(void *user, duet_gw_engine_finish_t reason, duet_status_t st,
                      const char *detail)
{
    (void)st, (void)detail;
    sink_t *s = user;
    pthread_mutex_lock(&s->mu);
    s->finished++;
    s->reason = reason;
    pthread_cond_broadcast(&s->cv);
    pthread_mutex_unlock(&s->mu);
}

static const duet_gw_engine_callbacks_t k_cb = {on_token, on_finish};

static void sink_init(sink_t *s)
{
    memset(s, 0, sizeof(*s));
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
}

static void sink_fini(sink_t *s)
{
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
}

/* Wait (up to 60 s) until at least n tokens or a finish. */
static void sink_wait(sink_t *s, uint32_t n, bool finish)
{
    uint64_t deadline = duet_now_ns() + 60ull * 1000000000ull;
    pthread_mutex_lock(&s->mu);
    while ((finish ? !s->finished : s->n < n && !s->finished) && duet_now_ns() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 20 * 1000 * 1000;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&s->cv, &s->mu, &ts);
    }
    pthread_mutex_unlock(&s->mu);
}

static duet_gw_engine_t *g_eng;
static int g_experts[8] = {0, 1, 2, 3, 4, 5, 6, 7};

static int setup(void **state)
{
    (void)state;
    const int *rows[1] = {g_experts};
    int n_rows[1] = {8};
    duet_pipe_config_t c = {.model_dir = DUET_MODELS "/pycoder-moe",
                            .n_attention = 1,
                            .n_expert_shards = 1,
                            .shard_experts = rows,
                            .shard_n_experts = n_rows,
                            .micro_batches = 2,
                            .kv_blocks = 64,
                            .control = DUET_PIPE_CONTROL_INPROC};
    duet_gw_pipe_opts_t po = {.model_name = "pycoder"};
    if (duet_gw_pipe_create(&c, &po, &g_eng)) {
        fprintf(stderr, "engine: %s\n", duet_error());
        return -1;
    }
    return duet_gw_pipe_wait_ready(g_eng, 30000) ? 0 : -1;
}

static int teardown(void **state)
{
    (void)state;
    duet_gw_pipe_destroy(&g_eng);
    return 0;
}

static duet_gw_engine_request_t greedy_req(uint32_t max_tokens)
{
    duet_gw_engine_request_t r = {.prompt = k_prompt,
                                  .n_prompt = N_PROMPT,
                                  .temperature = 0,
                                  .top_p = 1,
                                  .seed = 7,
                                  .max_tokens = max_tokens};
    return r;
}

/* Wait until the scheduler reports nothing running and no KV reserved. */
static void assert_idle(void)
{
    duet_gw_engine_stats_t st;
    for (int i = 0; i < 400; i++) {
        assert_int_equal(g_eng->ops->stats(g_eng, &st), DUET_OK);
        if (st.running == 0 && st.waiting == 0 && st.kv_blocks_used == 0)
            break;
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    assert_true(st.ready);
    assert_int_equal(st.running, 0);
    assert_int_equal(st.waiting, 0);
    assert_int_equal(st.kv_blocks_used, 0);
    assert_int_equal(st.kv_blocks_total, 64);
}

static void test_info(void **state)
{
    (void)state;
    duet_gw_engine_info_t in;
    assert_int_equal(g_eng->ops->info(g_eng, &in), DUET_OK);
    assert_string_equal(in.model_name, "pycoder");
    assert_int_equal(in.max_context, 64 * 16); /* KV caps max_position_embeddings 1024 */
    assert_true(in.vocab_size > 1076);
}

static void test_greedy_length(void **state)
{
    (void)state;
    sink_t s;
    sink_init(&s);
    duet_gw_engine_request_t r = greedy_req(N_GREEDY);
    uint64_t id = 0;
    assert_int_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    sink_wait(&s, 0, true);
    assert_int_equal(s.finished, 1);
    assert_int_equal(s.reason, DUET_GW_ENGINE_FINISH_LENGTH);
    assert_int_equal(s.n, N_GREEDY);
    assert_memory_equal(s.tok, k_greedy, sizeof(k_greedy));
    assert_int_equal(g_eng->ops->cancel(g_eng, id), DUET_ERR_NOT_FOUND);
    assert_idle();
    sink_fini(&s);
}

static void test_stop_ids(void **state)
{
    (void)state;
    sink_t s;
    sink_init(&s);
    duet_gw_engine_request_t r = greedy_req(N_GREEDY);
    /* the first id goes to the pipeline as eos (never generated here); the
     * second is matched by the engine: greedy[3] = 547 */
    r.stop_ids[0] = 2;
    r.stop_ids[1] = 547;
    r.n_stop_ids = 2;
    uint64_t id = 0;
    assert_int_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    sink_wait(&s, 0, true);
    assert_int_equal(s.finished, 1);
    assert_int_equal(s.reason, DUET_GW_ENGINE_FINISH_STOP);
    assert_int_equal(s.n, 4);
    assert_memory_equal(s.tok, k_greedy, 4 * sizeof(int32_t));
    assert_idle(); /* the pipeline's KV was freed by the engine's cancel */
    sink_fini(&s);

    /* a stop id that is the pipeline's eos: greedy[1] = 199 */
    sink_init(&s);
    r.stop_ids[0] = 199;
    r.n_stop_ids = 1;
    assert_int_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    sink_wait(&s, 0, true);
    assert_int_equal(s.reason, DUET_GW_ENGINE_FINISH_STOP);
    assert_int_equal(s.n, 2);
    assert_idle();
    sink_fini(&s);
}

static void test_cancel(void **state)
{
    (void)state;
    sink_t s;
    sink_init(&s);
    duet_gw_engine_request_t r = greedy_req(900);
    uint64_t id = 0;
    assert_int_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    sink_wait(&s, 2, false);
    assert_int_equal(g_eng->ops->cancel(g_eng, id), DUET_OK);
    duet_status_t again = g_eng->ops->cancel(g_eng, id); /* idempotent */
    assert_true(again == DUET_OK || again == DUET_ERR_NOT_FOUND);
    sink_wait(&s, 0, true);
    assert_int_equal(s.finished, 1);
    assert_int_equal(s.reason, DUET_GW_ENGINE_FINISH_CANCELED);
    assert_true(s.n < 900);
    assert_idle();
    sink_fini(&s);
    assert_int_equal(g_eng->ops->cancel(g_eng, 999999), DUET_ERR_NOT_FOUND);
}

static double extra_metric(const duet_gw_engine_stats_t *st, const char *name)
{
    for (uint32_t i = 0; i < st->n_extra; i++)
        if (st->extra[i].name && !strcmp(st->extra[i].name, name))
            return st->extra[i].value;
    fail_msg("no metric %s", name);
    return -1;
}

static uint64_t blocks_for(uint64_t tokens)
{
    return (tokens + 15) / 16; /* kv_block_size 16 */
}

static void test_kv_usage(void **state)
{
    (void)state;
    sink_t s;
    sink_init(&s);
    duet_gw_engine_request_t r = greedy_req(900); /* reserves ceil(910 / 16) = 57 blocks */
    uint64_t id = 0;
    assert_int_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    sink_wait(&s, 2, false);
    pthread_mutex_lock(&s.mu);
    uint32_t before = s.n;
    pthread_mutex_unlock(&s.mu);
    duet_gw_engine_stats_t st;
    assert_int_equal(g_eng->ops->stats(g_eng, &st), DUET_OK);
    pthread_mutex_lock(&s.mu);
    uint32_t after = s.n;
    bool finished = s.finished;
    pthread_mutex_unlock(&s.mu);
    assert_false(finished);
    assert_true(extra_metric(&st, "duet_kv_usage_live") == 1);
    assert_true(extra_metric(&st, "duet_kv_blocks_reserved") == 57);
    /* in the cache: the prompt and the tokens fed back so far (the newest
     * generated token is fed by the next step; one step may be in flight) */
    if (st.kv_blocks_used < blocks_for(N_PROMPT + before - 1) ||
        st.kv_blocks_used > blocks_for(N_PROMPT + after + 1))
        fail_msg("KV blocks in use %llu, with %u..%u tokens generated (prompt %zu)",
                 (unsigned long long)st.kv_blocks_used, before, after, N_PROMPT);
    assert_true(st.kv_blocks_used < 57);
    assert_true(st.kv_usage > 0 && st.kv_usage == (double)st.kv_blocks_used / 64.0);
    assert_int_equal(g_eng->ops->cancel(g_eng, id), DUET_OK);
    sink_wait(&s, 0, true);
    assert_idle();
    assert_int_equal(g_eng->ops->stats(g_eng, &st), DUET_OK);
    assert_true(extra_metric(&st, "duet_kv_blocks_reserved") == 0);
    assert_true(st.kv_usage == 0);
    sink_fini(&s);
}

static const duet_gw_engine_metric_t *extra_find(const duet_gw_engine_stats_t *st,
                                                 const char *name, const char *labels)
{
    for (uint32_t i = 0; i < st->n_extra; i++)
        if (st->extra[i].name && !strcmp(st->extra[i].name, name) &&
            !strcmp(st->extra[i].labels, labels))
            return &st->extra[i];
    return NULL;
}

/* Per-actor counters come from the shards themselves (pipe.stats_req);
 * samples of one metric are consecutive (the /metrics renderer needs it). */
static void test_actor_metrics(void **state)
{
    (void)state;
    sink_t s;
    sink_init(&s);
    duet_gw_engine_request_t r = greedy_req(8);
    uint64_t id = 0;
    assert_int_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    sink_wait(&s, 0, true);
    sink_fini(&s);
    duet_gw_engine_stats_t st;
    assert_int_equal(g_eng->ops->stats(g_eng, &st), DUET_OK);
    const char *actors[] = {"actor=\"attn/0\"", "actor=\"expert/0\""};
    for (int a = 0; a < 2; a++) {
        const duet_gw_engine_metric_t *up = extra_find(&st, "duet_actor_up", actors[a]);
        const duet_gw_engine_metric_t *busy =
            extra_find(&st, "duet_actor_busy_seconds_total", actors[a]);
        const duet_gw_engine_metric_t *bytes =
            extra_find(&st, "duet_actor_data_bytes_total", actors[a]);
        const duet_gw_engine_metric_t *rounds =
            extra_find(&st, "duet_actor_rounds_total", actors[a]);
        if (!up || !busy || !bytes || !rounds)
            fail_msg("no per-actor metrics for %s", actors[a]);
        assert_true(up->value == 1 && !up->counter);
        assert_true(busy->value > 0 && busy->counter);
        assert_true(bytes->value > 0 && rounds->value > 0);
    }
    for (uint32_t i = 0; i < st.n_extra; i++) /* one run per name */
        for (uint32_t j = i + 2; j < st.n_extra; j++)
            if (!strcmp(st.extra[i].name, st.extra[j].name))
                for (uint32_t k = i + 1; k < j; k++)
                    assert_string_equal(st.extra[k].name, st.extra[i].name);
    assert_non_null(extra_find(&st, "duet_pipe_epochs_total", ""));
    assert_non_null(extra_find(&st, "duet_pipe_restarts_total", ""));
}

static void test_bad_requests(void **state)
{
    (void)state;
    sink_t s;
    sink_init(&s);
    uint64_t id = 0;
    duet_gw_engine_request_t r = greedy_req(2000); /* beyond the context */
    assert_int_not_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    r = greedy_req(4);
    int32_t bad = 1 << 30;
    r.prompt = &bad;
    r.n_prompt = 1;
    assert_int_not_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    r = greedy_req(0);
    assert_int_not_equal(g_eng->ops->submit(g_eng, &r, &k_cb, &s, &id), DUET_OK);
    assert_int_equal(s.finished, 0);
    assert_int_equal(s.n, 0);
    sink_fini(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_info),         cmocka_unit_test(test_greedy_length),
        cmocka_unit_test(test_stop_ids),     cmocka_unit_test(test_cancel),
        cmocka_unit_test(test_kv_usage),     cmocka_unit_test(test_actor_metrics),
        cmocka_unit_test(test_bad_requests),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
