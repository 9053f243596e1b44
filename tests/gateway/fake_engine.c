/* fake_engine — see fake_engine.h. One worker thread serves every request;
 * callbacks run on it with the engine lock held (they are short). */
#include "fake_engine.h"

#include <pthread.h>
#include <string.h>
#include <time.h>

typedef struct fake_req {
    uint64_t id;
    int32_t last;
    uint32_t k;
    uint32_t max_tokens;
    float temperature;
    uint64_t seed;
    int32_t stop_ids[DUET_GW_ENGINE_MAX_STOP_IDS];
    uint32_t n_stop_ids;
    uint32_t n_prompt;
    duet_gw_engine_callbacks_t cb;
    void *user;
    double due;
    bool cancel;
    struct fake_req *next;
} fake_req_t;

typedef struct fake {
    fake_engine_opts_t o;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    pthread_t thread;
    bool quit;
    bool ready;
    uint64_t next_id;
    fake_req_t *reqs;
    fake_engine_counts_t counts;
    uint64_t rounds;
    duet_status_t refuse;
    uint32_t fail_after;
} fake_t;

int32_t fake_engine_token(int32_t last_prompt, uint32_t k, float temperature, uint64_t seed,
                          uint32_t vocab)
{
    uint64_t off = temperature > 0 ? seed % 5 : 0;
    return (int32_t)(((uint64_t)last_prompt + 1 + k + off) % vocab);
}

static void abs_time(double t, struct timespec *ts)
{
    /* convert a duet_now_s() deadline into CLOCK_REALTIME for the condvar */
    double d = t - duet_now_s();
    if (d < 0)
        d = 0;
    clock_gettime(CLOCK_REALTIME, ts);
    long long ns = ts->tv_nsec + (long long)(d * 1e9);
    ts->tv_sec += ns / 1000000000LL;
    ts->tv_nsec = ns % 1000000000LL;
}

static void finish(fake_t *f, fake_req_t **pp, duet_gw_engine_finish_t reason)
{
    fake_req_t *r = *pp;
    *pp = r->next;
    r->cb.on_finish(r->user, reason, DUET_OK, NULL);
    f->counts.finished++;
    f->counts.active--;
    duet_free(r);
    pthread_cond_broadcast(&f->cv);
}

static void *worker(void *arg)
{
    fake_t *f = arg;
    pthread_mutex_lock(&f->mu);
    while (!f->quit) {
        double now = duet_now_s();
        double next_due = now + 1.0;
        fake_req_t **pp = &f->reqs;
        while (*pp) {
            fake_req_t *r = *pp;
            if (r->cancel) {
                finish(f, pp, DUET_GW_ENGINE_FINISH_CANCELED);
                continue;
            }
            if (r->due > now) {
                if (r->due < next_due)
                    next_due = r->due;
                pp = &r->next;
                continue;
            }
            int32_t t = fake_engine_token(r->last, r->k, r->temperature, r->seed, f->o.vocab);
            r->k++;
            f->counts.tokens++;
            f->rounds++;
            r->cb.on_token(r->user, t);
            bool stop = false;
            for (uint32_t i = 0; i < r->n_stop_ids; i++)
                stop |= r->stop_ids[i] == t;
            if (stop) {
                finish(f, pp, DUET_GW_ENGINE_FINISH_STOP);
                continue;
            }
            if (f->fail_after && r->k >= f->fail_after) {
                fake_req_t *dead = *pp;
                *pp = dead->next;
                dead->cb.on_finish(dead->user, DUET_GW_ENGINE_FINISH_ERROR, DUET_ERR_DEVICE,
                                   "injected failure");
                f->counts.finished++;
                f->counts.active--;
                duet_free(dead);
                continue;
            }
            if (r->k >= r->max_tokens || r->n_prompt + r->k >= f->o.max_context) {
                finish(f, pp, DUET_GW_ENGINE_FINISH_LENGTH);
                continue;
            }
            r->due = now + f->o.token_delay_ms / 1000.0;
            if (r->due < next_due)
                next_due = r->due;
            pp = &r->next;
        }
        struct timespec ts;
        abs_time(next_due, &ts);
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    }
    /* shutting down: finish whatever is left so no one waits forever */
    while (f->reqs)
        finish(f, &f->reqs, DUET_GW_ENGINE_FINISH_CANCELED);
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

static duet_status_t fake_info(duet_gw_engine_t *eng, duet_gw_engine_info_t *out)
{
    fake_t *f = eng->impl;
    memset(out, 0, sizeof(*out));
    out->model_name = f->o.model_name;
    out->max_context = f->o.max_context;
    out->vocab_size = f->o.vocab;
    if (f->o.eos_id >= 0)
        out->eos_ids[out->n_eos_ids++] = f->o.eos_id;
    return DUET_OK;
}

static duet_status_t fake_submit(duet_gw_engine_t *eng, const duet_gw_engine_request_t *req,
                                 const duet_gw_engine_callbacks_t *cb, void *user, uint64_t *id_out)
{
    fake_t *f = eng->impl;
    if (!req->prompt || req->n_prompt == 0 || req->max_tokens == 0)
        return duet_errorf(DUET_ERR_INVALID, "fake engine: empty prompt or max_tokens 0");
    pthread_mutex_lock(&f->mu);
    duet_status_t refuse = f->refuse;
    pthread_mutex_unlock(&f->mu);
    if (refuse)
        return duet_errorf(refuse, "fake engine: refusing (injected)");
    fake_req_t *r = duet_calloc(1, sizeof(*r));
    if (!r)
        return duet_errorf(DUET_ERR_NOMEM, "fake engine: out of memory");
    r->last = req->prompt[req->n_prompt - 1];
    r->max_tokens = req->max_tokens;
    r->temperature = req->temperature;
    r->seed = req->seed;
    memcpy(r->stop_ids, req->stop_ids, sizeof(r->stop_ids));
    r->n_stop_ids = req->n_stop_ids;
    r->n_prompt = (uint32_t)req->n_prompt;
    r->cb = *cb;
    r->user = user;
    pthread_mutex_lock(&f->mu);
    r->id = ++f->next_id;
    r->due = duet_now_s() + f->o.first_delay_ms / 1000.0;
    r->next = f->reqs;
    f->reqs = r;
    f->counts.submitted++;
    f->counts.active++;
    *id_out = r->id;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    return DUET_OK;
}

static duet_status_t fake_cancel(duet_gw_engine_t *eng, uint64_t id)
{
    fake_t *f = eng->impl;
    duet_status_t st = DUET_ERR_NOT_FOUND;
    pthread_mutex_lock(&f->mu);
    for (fake_req_t *r = f->reqs; r; r = r->next) {
        if (r->id == id && !r->cancel) {
            r->cancel = true;
            f->counts.canceled++;
            st = DUET_OK;
            pthread_cond_broadcast(&f->cv);
        }
    }
    pthread_mutex_unlock(&f->mu);
    return st;
}

static duet_status_t fake_stats(duet_gw_engine_t *eng, duet_gw_engine_stats_t *out)
{
    fake_t *f = eng->impl;
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&f->mu);
    out->ready = f->ready;
    uint64_t used = 0;
    for (fake_req_t *r = f->reqs; r; r = r->next) {
        out->running++;
        used += (r->n_prompt + r->k + 15) / 16;
    }
    out->kv_blocks_total = 1024;
    out->kv_blocks_used = used;
    out->kv_usage = (double)used / 1024.0;
    out->n_extra = 1;
    out->extra[0] = (duet_gw_engine_metric_t){"duet_fake_rounds_total", "Tokens the fake produced.",
                                              true, (double)f->rounds, ""};
    pthread_mutex_unlock(&f->mu);
    return DUET_OK;
}

static const duet_gw_engine_ops_t fake_ops = {
    .name = "fake",
    .info = fake_info,
    .submit = fake_submit,
    .cancel = fake_cancel,
    .stats = fake_stats,
};

duet_status_t fake_engine_create(const fake_engine_opts_t *opts, duet_gw_engine_t **out)
{
    fake_t *f = duet_calloc(1, sizeof(*f));
    duet_gw_engine_t *e = duet_calloc(1, sizeof(*e));
    if (!f || !e || opts->vocab == 0) {
        duet_free(f);
        duet_free(e);
        return duet_errorf(DUET_ERR_INVALID, "fake engine: bad options or out of memory");
    }
    f->o = *opts;
    if (!f->o.model_name)
        f->o.model_name = "fake-model";
    if (!f->o.max_context)
        f->o.max_context = 256;
    f->ready = opts->ready;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    if (pthread_create(&f->thread, NULL, worker, f) != 0) {
        duet_free(f);
        duet_free(e);
        return duet_errorf(DUET_ERR_IO, "fake engine: pthread_create failed");
    }
    e->ops = &fake_ops;
    e->impl = f;
    *out = e;
    return DUET_OK;
}

void fake_engine_destroy(duet_gw_engine_t **eng_p)
{
    if (!eng_p || !*eng_p)
        return;
    fake_t *f = (*eng_p)->impl;
    pthread_mutex_lock(&f->mu);
    f->quit = true;
    pthread_cond_broadcast(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    pthread_cond_destroy(&f->cv);
    pthread_mutex_destroy(&f->mu);
    duet_free(f);
    duet_free(*eng_p);
    *eng_p = NULL;
}

void fake_engine_set_ready(duet_gw_engine_t *eng, bool ready)
{
    fake_t *f = eng->impl;
    pthread_mutex_lock(&f->mu);
    f->ready = ready;
    pthread_mutex_unlock(&f->mu);
}

void fake_engine_set_delays(duet_gw_engine_t *eng, unsigned first_ms, unsigned token_ms)
{
    fake_t *f = eng->impl;
    pthread_mutex_lock(&f->mu);
    f->o.first_delay_ms = first_ms;
    f->o.token_delay_ms = token_ms;
    pthread_mutex_unlock(&f->mu);
}

void fake_engine_set_faults(duet_gw_engine_t *eng, duet_status_t refuse, uint32_t fail_after)
{
    fake_t *f = eng->impl;
    pthread_mutex_lock(&f->mu);
    f->refuse = refuse;
    f->fail_after = fail_after;
    pthread_mutex_unlock(&f->mu);
}

fake_engine_counts_t fake_engine_counts(duet_gw_engine_t *eng)
{
    fake_t *f = eng->impl;
    pthread_mutex_lock(&f->mu);
    fake_engine_counts_t c = f->counts;
    pthread_mutex_unlock(&f->mu);
    return c;
}

bool fake_engine_wait_idle(duet_gw_engine_t *eng, unsigned timeout_ms)
{
    fake_t *f = eng->impl;
    double until = duet_now_s() + timeout_ms / 1000.0;
    pthread_mutex_lock(&f->mu);
    while (f->counts.active > 0 && duet_now_s() < until) {
        struct timespec ts;
        abs_time(DUET_MIN(until, duet_now_s() + 0.05), &ts);
        pthread_cond_timedwait(&f->cv, &f->mu, &ts);
    }
    bool idle = f->counts.active == 0;
    pthread_mutex_unlock(&f->mu);
    return idle;
}
