/* sampling — greedy / temperature / top-k / top-p over one logits row.
 *
 * Order follows HF's warpers: logits / temperature, keep the top_k largest,
 * keep the smallest prefix (by descending probability) whose mass reaches
 * top_p, renormalise, draw once. The draw is u = hash(seed, position), so a
 * token depends only on the request's seed, its position and the logits. */
#include "model/sampling.h"

#include <math.h>
#include <stdlib.h>

struct duet_sampler {
    int32_t vocab;
    int32_t *idx; /* candidate token ids */
    float *p;     /* candidate probabilities (parallel to idx) */
};

duet_status_t duet_sampler_create(int32_t vocab, duet_sampler_t **out)
{
    if (vocab <= 0)
        return duet_errorf(DUET_ERR_INVALID, "sampler: vocabulary size %d must be positive", vocab);
    duet_sampler_t *s = duet_calloc(1, sizeof(*s));
    if (!s)
        return duet_errorf(DUET_ERR_NOMEM, "sampler: out of memory");
    s->vocab = vocab;
    s->idx = duet_calloc((size_t)vocab, sizeof(*s->idx));
    s->p = duet_calloc((size_t)vocab, sizeof(*s->p));
    if (!s->idx || !s->p) {
        duet_free(s->idx);
        duet_free(s->p);
        duet_free(s);
        return duet_errorf(DUET_ERR_NOMEM, "sampler: out of memory for %d candidates", vocab);
    }
    *out = s;
    return DUET_OK;
}

void duet_sampler_destroy(duet_sampler_t **sampler_p)
{
    if (!sampler_p || !*sampler_p)
        return;
    duet_sampler_t *s = *sampler_p;
    duet_free(s->idx);
    duet_free(s->p);
    duet_free(s);
    *sampler_p = NULL;
}

int32_t duet_sampler_vocab(const duet_sampler_t *s)
{
    return s->vocab;
}

int32_t duet_sample_greedy(const float *logits, int32_t vocab)
{
    int32_t best = 0;
    float bv = logits[0];
    for (int32_t i = 1; i < vocab; i++)
        if (logits[i] > bv || (isnan(bv) && !isnan(logits[i]))) {
            bv = logits[i];
            best = i;
        }
    return best;
}

double duet_sample_uniform(uint64_t seed, int64_t position)
{
    uint64_t s = seed;
    uint64_t h = duet_splitmix64(&s) ^ ((uint64_t)position * 0xd1b54a32d192ed03ull);
    h = duet_splitmix64(&h);
    return (double)(h >> 11) * (1.0 / 9007199254740992.0); /* 53 bits */
}

duet_status_t duet_sampling_params_check(const duet_sampling_params_t *pr)
{
    if (!pr)
        return duet_errorf(DUET_ERR_INVALID, "sampling: no parameters");
    if (isnan(pr->temperature) || pr->temperature < 0.0f)
        return duet_errorf(DUET_ERR_INVALID, "sampling: temperature %g must be >= 0",
                           (double)pr->temperature);
    if (pr->top_k < 0)
        return duet_errorf(DUET_ERR_INVALID, "sampling: top_k %d must be >= 0 (0 = off)",
                           (int)pr->top_k);
    if (isnan(pr->top_p) || pr->top_p <= 0.0f || pr->top_p > 1.0f)
        return duet_errorf(DUET_ERR_INVALID, "sampling: top_p %g must be in (0, 1]",
                           (double)pr->top_p);
    return DUET_OK;
}

/* Sort candidates by descending probability (ties: lower id first) so the
 * result does not depend on the order they were collected in. */
static void sort_desc(int32_t *idx, float *p, int32_t n)
{
    /* Shell sort on (p desc, idx asc): no allocation, n is small after the
     * cuts below in practice, and fine for a full vocabulary too. */
    static const int32_t gaps[] = {1750, 701, 301, 132, 57, 23, 10, 4, 1};
    for (size_t g = 0; g < DUET_ARRAY_LEN(gaps); g++) {
        int32_t gap = gaps[g];
        for (int32_t i = gap; i < n; i++) {
            float pv = p[i];
            int32_t iv = idx[i];
            int32_t j = i;
            while (j >= gap && (p[j - gap] < pv || (p[j - gap] == pv && idx[j - gap] > iv))) {
                p[j] = p[j - gap];
                idx[j] = idx[j - gap];
                j -= gap;
            }
            p[j] = pv;
            idx[j] = iv;
        }
    }
}

/* Move the k largest (by p) of idx/p[0..n) to the front (unordered). */
static void select_topk(int32_t *idx, float *p, int32_t n, int32_t k)
{
    int32_t lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = p[lo + (hi - lo) / 2];
        int32_t i = lo, j = hi;
        while (i <= j) {
            while (p[i] > pivot)
                i++;
            while (p[j] < pivot)
                j--;
            if (i <= j) {
                float tp = p[i];
                p[i] = p[j];
                p[j] = tp;
                int32_t ti = idx[i];
                idx[i] = idx[j];
                idx[j] = ti;
                i++;
                j--;
            }
        }
        if (k - 1 <= j)
            hi = j;
        else if (k - 1 >= i)
            lo = i;
        else
            break;
    }
}

duet_status_t duet_sampler_sample(duet_sampler_t *s, const float *logits,
                                  const duet_sampling_params_t *pr, int64_t position,
                                  int32_t *token_out)
{
    duet_status_t st = duet_sampling_params_check(pr);
    if (st)
        return st;
    const int32_t V = s->vocab;
    if (pr->temperature <= 0.0f || pr->top_k == 1) {
        *token_out = duet_sample_greedy(logits, V);
        return DUET_OK;
    }
    const float inv_t = 1.0f / pr->temperature;
    float mx = -INFINITY;
    for (int32_t i = 0; i < V; i++)
        if (logits[i] > mx)
            mx = logits[i];
    if (!isfinite(mx)) {
        *token_out = duet_sample_greedy(logits, V);
        return DUET_OK;
    }
    /* Unnormalised probabilities exp((l - max) / T). */
    double sum = 0.0;
    for (int32_t i = 0; i < V; i++) {
        float e = expf((logits[i] - mx) * inv_t);
        s->idx[i] = i;
        s->p[i] = e;
        sum += e;
    }
    int32_t n = V;
    if (pr->top_k > 0 && pr->top_k < n) {
        select_topk(s->idx, s->p, n, pr->top_k);
        n = pr->top_k;
        sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += s->p[i];
    }
    if (pr->top_p < 1.0f) {
        /* Tokens below (1 - top_p) / n of the mass together hold less than
         * 1 - top_p, so the nucleus lies among the others: drop them before
         * sorting. */
        double floor_p = (1.0 - (double)pr->top_p) / (double)n * sum;
        int32_t m = 0;
        for (int32_t i = 0; i < n; i++)
            if ((double)s->p[i] >= floor_p) {
                s->p[m] = s->p[i];
                s->idx[m] = s->idx[i];
                m++;
            }
        n = m;
        sort_desc(s->idx, s->p, n);
        double target = (double)pr->top_p * sum, acc = 0.0;
        int32_t keep = n;
        for (int32_t i = 0; i < n; i++) {
            acc += s->p[i];
            if (acc >= target) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
        sum = 0.0;
        for (int32_t i = 0; i < n; i++)
            sum += s->p[i];
    }
    double u = duet_sample_uniform(pr->seed, position) * sum, acc = 0.0;
    int32_t pick = s->idx[n - 1];
    for (int32_t i = 0; i < n; i++) {
        acc += s->p[i];
        if (u < acc) {
            pick = s->idx[i];
            break;
        }
    }
    *token_out = pick;
    return DUET_OK;
}
