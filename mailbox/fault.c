/* fault — the fault plan: rules for dropping, delaying, duplicating,
 * reordering and partitioning control messages, and for crashing or
 * stalling actors, set from code or parsed from a plan file. The plan only
 * decides; the runtime (actors/) carries the verdict out on whatever
 * endpoint the message takes, so the same plan works over ZeroMQ and the
 * simulated network. Every injected fault is logged with its time. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "mailbox/mailbox.h"

struct duet_fault_plan {
    pthread_mutex_t lock;
    uint64_t rng;
    duet_fault_rule_t *rules;
    size_t nrules;
    uint64_t counts[DUET_FAULT_KIND_COUNT];
};

static const char *const kind_names[DUET_FAULT_KIND_COUNT] = {
    "drop", "delay", "dup", "reorder", "partition", "crash", "stall"};

const char *duet_fault_kind_name(duet_fault_kind_t k)
{
    return k < DUET_FAULT_KIND_COUNT ? kind_names[k] : "?";
}

bool duet_glob_match(const char *pat, const char *s)
{
    if (!pat)
        return true;
    const char *star = NULL, *ss = NULL;
    while (*s) {
        if (*pat == '*') {
            star = pat++;
            ss = s;
        } else if (*pat == *s) {
            pat++;
            s++;
        } else if (star) {
            pat = star + 1;
            s = ++ss;
        } else {
            return false;
        }
    }
    while (*pat == '*')
        pat++;
    return *pat == 0;
}

static uint64_t rng_next(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static double rng_unit(uint64_t *s)
{
    return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

duet_status_t duet_fault_plan_create(uint64_t seed, duet_fault_plan_t **plan_out)
{
    duet_fault_plan_t *p = duet_calloc(1, sizeof(*p));
    if (!p)
        return duet_errorf(DUET_ERR_NOMEM, "fault plan");
    pthread_mutex_init(&p->lock, NULL);
    p->rng = seed ^ 0x6661756c74ull;
    *plan_out = p;
    return DUET_OK;
}

static void rule_free(duet_fault_rule_t *r)
{
    duet_free((char *)r->from);
    duet_free((char *)r->to);
    duet_free((char *)r->type);
    duet_free((char *)r->actor);
    duet_free((char *)r->nodes);
}

void duet_fault_plan_destroy(duet_fault_plan_t **plan_p)
{
    if (!plan_p || !*plan_p)
        return;
    duet_fault_plan_t *p = *plan_p;
    for (size_t i = 0; i < p->nrules; i++)
        rule_free(&p->rules[i]);
    duet_free(p->rules);
    pthread_mutex_destroy(&p->lock);
    duet_free(p);
    *plan_p = NULL;
}

static char *dup_or_null(const char *s)
{
    return s ? duet_strdup(s) : NULL;
}

duet_status_t duet_fault_plan_add(duet_fault_plan_t *p, const duet_fault_rule_t *rule)
{
    if (rule->kind >= DUET_FAULT_KIND_COUNT)
        return duet_errorf(DUET_ERR_INVALID, "fault rule: bad kind %d", (int)rule->kind);
    if ((rule->kind == DUET_FAULT_CRASH || rule->kind == DUET_FAULT_STALL) && !rule->actor)
        return duet_errorf(DUET_ERR_INVALID, "fault rule %s: needs actor=", kind_names[rule->kind]);
    if (rule->kind == DUET_FAULT_PARTITION && (!rule->nodes || !strchr(rule->nodes, '|')))
        return duet_errorf(DUET_ERR_INVALID, "fault rule partition: needs nodes=a,b|c,d");
    if (rule->p < 0 || rule->p > 1)
        return duet_errorf(DUET_ERR_INVALID, "fault rule %s: p=%g not in [0,1]",
                           kind_names[rule->kind], rule->p);
    duet_fault_rule_t r = *rule;
    r.from = dup_or_null(rule->from);
    r.to = dup_or_null(rule->to);
    r.type = dup_or_null(rule->type);
    r.actor = dup_or_null(rule->actor);
    r.nodes = dup_or_null(rule->nodes);
    if (r.max_ns < r.min_ns)
        r.max_ns = r.min_ns;
    pthread_mutex_lock(&p->lock);
    duet_fault_rule_t *nr = duet_realloc_array(p->rules, p->nrules + 1, sizeof(*nr));
    if (!nr) {
        pthread_mutex_unlock(&p->lock);
        rule_free(&r);
        return duet_errorf(DUET_ERR_NOMEM, "fault plan");
    }
    p->rules = nr;
    p->rules[p->nrules++] = r;
    pthread_mutex_unlock(&p->lock);
    return DUET_OK;
}

size_t duet_fault_plan_count(const duet_fault_plan_t *p)
{
    return p->nrules;
}

const duet_fault_rule_t *duet_fault_plan_rule(const duet_fault_plan_t *p, size_t i)
{
    return i < p->nrules ? &p->rules[i] : NULL;
}

static bool parse_duration(const char *v, uint64_t *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || errno || x < 0)
        return false;
    double mul = 1e6; /* bare numbers are milliseconds */
    if (strcmp(end, "ns") == 0)
        mul = 1;
    else if (strcmp(end, "us") == 0)
        mul = 1e3;
    else if (strcmp(end, "ms") == 0 || *end == 0)
        mul = 1e6;
    else if (strcmp(end, "s") == 0)
        mul = 1e9;
    else
        return false;
    *out = (uint64_t)(x * mul);
    return true;
}

/* Is node `n` in the comma list [s, e)? */
static bool in_list(const char *s, const char *e, const char *n)
{
    size_t nl = strlen(n);
    while (s < e) {
        const char *c = memchr(s, ',', (size_t)(e - s));
        if (!c)
            c = e;
        if ((size_t)(c - s) == nl && memcmp(s, n, nl) == 0)
            return true;
        s = c + 1;
    }
    return false;
}

static bool rule_active(const duet_fault_rule_t *r, uint64_t now)
{
    return now >= r->at_ns && (r->for_ns == 0 || now < r->at_ns + r->for_ns);
}

static bool split_sides(const duet_fault_rule_t *r, const char *a, const char *b)
{
    const char *bar = strchr(r->nodes, '|');
    const char *s = r->nodes, *e = r->nodes + strlen(r->nodes);
    return (in_list(s, bar, a) && in_list(bar + 1, e, b)) ||
           (in_list(s, bar, b) && in_list(bar + 1, e, a));
}

bool duet_fault_partitioned(duet_fault_plan_t *p, uint64_t now, const char *a, const char *b)
{
    bool cut = false;
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->nrules && !cut; i++) {
        const duet_fault_rule_t *r = &p->rules[i];
        cut = r->kind == DUET_FAULT_PARTITION && rule_active(r, now) && split_sides(r, a, b);
    }
    pthread_mutex_unlock(&p->lock);
    return cut;
}

static void note_locked(duet_fault_plan_t *p, duet_fault_kind_t k, uint64_t now, const char *from,
                        const char *to, const char *type)
{
    p->counts[k]++;
    DUET_LOG_I("fault", "t=%.6fs %s %s -> %s (%s)", (double)now / 1e9, kind_names[k], from, to,
               type ? type : "?");
}

void duet_fault_note(duet_fault_plan_t *p, duet_fault_kind_t k, uint64_t now, const char *what)
{
    pthread_mutex_lock(&p->lock);
    p->counts[k]++;
    pthread_mutex_unlock(&p->lock);
    DUET_LOG_I("fault", "t=%.6fs %s %s", (double)now / 1e9, kind_names[k], what);
}

void duet_fault_decide(duet_fault_plan_t *p, uint64_t now, const char *from_node, const char *from,
                       const char *to_node, const char *to, const char *type_name,
                       duet_fault_verdict_t *out)
{
    out->copies = 1;
    memset(out->delay_ns, 0, sizeof(out->delay_ns));
    pthread_mutex_lock(&p->lock);
    for (size_t i = 0; i < p->nrules && out->copies; i++) {
        const duet_fault_rule_t *r = &p->rules[i];
        if (!rule_active(r, now))
            continue;
        if (r->kind == DUET_FAULT_PARTITION) {
            if (from_node && to_node && split_sides(r, from_node, to_node)) {
                out->copies = 0;
                note_locked(p, r->kind, now, from, to, type_name);
            }
            continue;
        }
        if (r->kind == DUET_FAULT_CRASH || r->kind == DUET_FAULT_STALL)
            continue;
        if (!duet_glob_match(r->from, from) || !duet_glob_match(r->to, to) ||
            (r->type && !(type_name && duet_glob_match(r->type, type_name))))
            continue;
        double prob = r->p > 0 ? r->p : 1.0;
        if (rng_unit(&p->rng) >= prob)
            continue;
        uint64_t span = r->max_ns - r->min_ns;
        switch (r->kind) {
        case DUET_FAULT_DROP: out->copies = 0; break;
        case DUET_FAULT_DUP:
            if (out->copies < DUET_ARRAY_LEN(out->delay_ns)) {
                out->delay_ns[out->copies] = out->delay_ns[0];
                out->copies++;
            }
            break;
        case DUET_FAULT_DELAY:
            for (unsigned c = 0; c < out->copies; c++)
                out->delay_ns[c] += r->min_ns + (span ? rng_next(&p->rng) % (span + 1) : 0);
            break;
        case DUET_FAULT_REORDER:
            /* hold this message back by a random part of the window, so
             * later messages on the same link overtake it */
            for (unsigned c = 0; c < out->copies; c++)
                out->delay_ns[c] += 1 + (r->max_ns ? rng_next(&p->rng) % r->max_ns : 0);
            break;
        default: break;
        }
        note_locked(p, r->kind, now, from, to, type_name);
    }
    pthread_mutex_unlock(&p->lock);
}

uint64_t duet_fault_count(const duet_fault_plan_t *p, duet_fault_kind_t k)
{
    duet_fault_plan_t *mp = (duet_fault_plan_t *)p;
    pthread_mutex_lock(&mp->lock);
    uint64_t n = k < DUET_FAULT_KIND_COUNT ? p->counts[k] : 0;
    pthread_mutex_unlock(&mp->lock);
    return n;
}

/* ---- plan file --------------------------------------------------------- */

duet_status_t duet_fault_plan_parse(duet_fault_plan_t *p, const char *text, const char *src)
{
    src = src ? src : "<fault plan>";
    int lineno = 0;
    const char *s = text;
    while (*s) {
        lineno++;
        const char *eol = strchr(s, '\n');
        size_t n = eol ? (size_t)(eol - s) : strlen(s);
        char line[1024];
        if (n >= sizeof(line))
            return duet_errorf(DUET_ERR_INVALID, "%s:%d: line longer than %zu bytes", src, lineno,
                               sizeof(line) - 1);
        memcpy(line, s, n);
        line[n] = 0;
        s += n + (eol ? 1 : 0);
        char *hash = strchr(line, '#');
        if (hash)
            *hash = 0;
        char *save = NULL;
        char *tok = strtok_r(line, " \t\r", &save);
        if (!tok)
            continue;
        duet_fault_rule_t r = {0};
        int k = -1;
        for (int i = 0; i < DUET_FAULT_KIND_COUNT; i++)
            if (strcmp(tok, kind_names[i]) == 0)
                k = i;
        if (k < 0)
            return duet_errorf(
                DUET_ERR_INVALID,
                "%s:%d: unknown fault '%s' (drop, delay, dup, reorder, partition, crash, stall)",
                src, lineno, tok);
        r.kind = (duet_fault_kind_t)k;
        while ((tok = strtok_r(NULL, " \t\r", &save))) {
            char *eq = strchr(tok, '=');
            if (!eq)
                return duet_errorf(DUET_ERR_INVALID, "%s:%d: '%s' is not key=value", src, lineno,
                                   tok);
            *eq = 0;
            const char *key = tok, *v = eq + 1;
            bool ok = true;
            if (strcmp(key, "p") == 0) {
                char *end;
                r.p = strtod(v, &end);
                ok = *end == 0 && end != v && r.p >= 0 && r.p <= 1;
            } else if (strcmp(key, "from") == 0)
                r.from = v;
            else if (strcmp(key, "to") == 0)
                r.to = v;
            else if (strcmp(key, "type") == 0)
                r.type = v;
            else if (strcmp(key, "actor") == 0)
                r.actor = v;
            else if (strcmp(key, "nodes") == 0)
                r.nodes = v;
            else if (strcmp(key, "at") == 0)
                ok = parse_duration(v, &r.at_ns);
            else if (strcmp(key, "for") == 0)
                ok = parse_duration(v, &r.for_ns);
            else if (strcmp(key, "min") == 0)
                ok = parse_duration(v, &r.min_ns);
            else if (strcmp(key, "max") == 0 || strcmp(key, "window") == 0)
                ok = parse_duration(v, &r.max_ns);
            else if (strcmp(key, "ms") == 0 || strcmp(key, "fixed") == 0) {
                ok = parse_duration(v, &r.min_ns);
                r.max_ns = r.min_ns;
            } else
                return duet_errorf(DUET_ERR_INVALID, "%s:%d: %s: unknown key '%s'", src, lineno,
                                   kind_names[k], key);
            if (!ok)
                return duet_errorf(DUET_ERR_INVALID, "%s:%d: %s: bad value '%s' for key '%s'", src,
                                   lineno, kind_names[k], v, key);
        }
        duet_status_t st = duet_fault_plan_add(p, &r);
        if (st)
            return duet_error_wrap(st, "%s:%d", src, lineno);
    }
    return DUET_OK;
}

duet_status_t duet_fault_plan_load(duet_fault_plan_t *p, const char *path)
{
    char *text;
    size_t len;
    duet_status_t st = duet_file_read_all(path, 1 << 20, &text, &len);
    if (st)
        return st;
    st = duet_fault_plan_parse(p, text, path);
    duet_free(text);
    return st;
}
