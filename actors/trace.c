/* trace — per-actor observability blocks and the Chrome trace writer. */
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "actors/pipeline.h"
#include "actors/trace.h"

static const char *const tr_names[DUET_TR_N_NAMES] = {
    "attention", "dispatch", "expert", "combine", "logits", "m2n", "n2m", "queue", "kv_blocks",
};

duet_status_t duet__obs_init(duet_obs_t *o, const char *actor, int tid, size_t cap)
{
    memset(o, 0, sizeof(*o));
    snprintf(o->actor, sizeof(o->actor), "%s", actor);
    o->tid = tid;
    if (cap) {
        o->ev = duet_calloc(cap, sizeof(duet_trace_ev_t));
        if (!o->ev)
            return DUET_ERR_NOMEM;
        o->cap = cap;
    }
    return DUET_OK;
}

void duet__obs_cleanup(duet_obs_t *o)
{
    duet_free(o->ev);
    o->ev = NULL;
    o->n = o->cap = 0;
}

static void ts_us(char *buf, size_t cap, uint64_t ns)
{
    snprintf(buf, cap, "%" PRIu64 ".%03u", ns / 1000u, (unsigned)(ns % 1000u));
}

static void write_ev(FILE *f, const duet_obs_t *o, const duet_trace_ev_t *e, bool *first)
{
    char ts[32], dur[32];
    ts_us(ts, sizeof(ts), e->ts);
    fputs(*first ? "" : ",\n", f);
    *first = false;
    const char *nm = e->name < DUET_TR_N_NAMES ? tr_names[e->name] : "?";
    switch (e->ph) {
    case 'X':
        ts_us(dur, sizeof(dur), e->dur);
        fprintf(f,
                "{\"ph\":\"X\",\"name\":\"%s\",\"cat\":\"pipe\",\"pid\":1,\"tid\":%d,\"ts\":%s,"
                "\"dur\":%s,\"args\":{\"round\":%" PRId64 ",\"layer\":%" PRId64 ",\"ub\":%" PRId64
                ",\"rows\":%" PRId64 "}}",
                nm, o->tid, ts, dur, e->v[0], e->v[1], e->v[2], e->v[3]);
        break;
    case 's':
    case 'f':
        fprintf(f,
                "{\"ph\":\"%c\",\"name\":\"%s\",\"cat\":\"data\",\"pid\":1,\"tid\":%d,\"ts\":%s,"
                "\"id\":%" PRIu64 "%s}",
                e->ph, nm, o->tid, ts, e->id, e->ph == 'f' ? ",\"bp\":\"e\"" : "");
        break;
    case 'C':
        if (e->name == DUET_TR_C_QUEUE)
            fprintf(f,
                    "{\"ph\":\"C\",\"name\":\"queue\",\"pid\":1,\"tid\":%d,\"ts\":%s,"
                    "\"args\":{\"queued\":%" PRId64 ",\"running\":%" PRId64 "}}",
                    o->tid, ts, e->v[0], e->v[1]);
        else
            fprintf(f,
                    "{\"ph\":\"C\",\"name\":\"%s\",\"pid\":1,\"tid\":%d,\"ts\":%s,"
                    "\"args\":{\"used\":%" PRId64 "}}",
                    nm, o->tid, ts, e->v[0]);
        break;
    default: break;
    }
}

duet_status_t duet__trace_write(const char *path, duet_obs_t *const *obs, int n)
{
    FILE *f = fopen(path, "w");
    if (!f)
        return duet_errorf(DUET_ERR_IO, "trace %s: cannot open for writing", path);
    fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n", f);
    bool first = true;
    uint64_t last = 0;
    for (int i = 0; i < n; i++) {
        const duet_obs_t *o = obs[i];
        if (!o)
            continue;
        fputs(first ? "" : ",\n", f);
        first = false;
        fprintf(f,
                "{\"ph\":\"M\",\"name\":\"process_name\",\"pid\":1,\"tid\":%d,"
                "\"args\":{\"name\":\"duet\"}},\n"
                "{\"ph\":\"M\",\"name\":\"thread_name\",\"pid\":1,\"tid\":%d,"
                "\"args\":{\"name\":\"%s\"}},\n"
                "{\"ph\":\"M\",\"name\":\"thread_sort_index\",\"pid\":1,\"tid\":%d,"
                "\"args\":{\"sort_index\":%d}}",
                o->tid, o->tid, o->actor, o->tid, o->tid);
        for (size_t k = 0; k < o->n; k++) {
            write_ev(f, o, &o->ev[k], &first);
            uint64_t end = o->ev[k].ts + o->ev[k].dur;
            if (end > last)
                last = end;
        }
    }
    /* the per-actor counters, as args of one final instant event each */
    for (int i = 0; i < n; i++) {
        const duet_obs_t *o = obs[i];
        if (!o)
            continue;
        char ts[32];
        ts_us(ts, sizeof(ts), last);
        fputs(first ? "" : ",\n", f);
        first = false;
        fprintf(f,
                "{\"ph\":\"i\",\"s\":\"t\",\"name\":\"stats\",\"pid\":1,\"tid\":%d,\"ts\":%s,"
                "\"args\":{\"actor\":\"%s\",\"busy_ns\":%" PRIu64 ",\"rounds\":%" PRIu64
                ",\"tokens\":%" PRIu64 ",\"bytes\":%" PRIu64 ",\"steps\":%" PRIu64
                ",\"dropped_events\":%" PRIu64 "}}",
                o->tid, ts, o->actor, o->busy_ns, o->rounds, o->tokens, o->bytes, o->steps,
                o->dropped);
    }
    fputs("\n]}\n", f);
    bool bad = ferror(f) != 0;
    if (fclose(f) || bad)
        return duet_errorf(DUET_ERR_IO, "trace %s: write failed", path);
    return DUET_OK;
}

/* Merge per-node trace files (each written by duet__trace_write) into one. */
duet_status_t duet_pipe_trace_merge(const char *out, const char *const *parts, int n)
{
    FILE *f = fopen(out, "w");
    if (!f)
        return duet_errorf(DUET_ERR_IO, "trace %s: cannot open for writing", out);
    fputs("{\"displayTimeUnit\":\"ns\",\"traceEvents\":[\n", f);
    bool first = true;
    duet_status_t st = DUET_OK;
    for (int i = 0; i < n && !st; i++) {
        FILE *in = fopen(parts[i], "rb");
        if (!in)
            continue; /* a node that wrote nothing */
        char *buf = NULL;
        size_t len = 0, cap = 0;
        char chunk[65536];
        size_t got;
        while ((got = fread(chunk, 1, sizeof(chunk), in)) > 0) {
            if ((st = duet_vec_reserve((void **)&buf, &cap, len + got + 1, 1)))
                break;
            memcpy(buf + len, chunk, got);
            len += got;
        }
        fclose(in);
        if (!st && buf) {
            buf[len] = 0;
            char *lo = strchr(buf, '[');
            char *hi = strrchr(buf, ']');
            if (lo && hi && hi > lo + 1) {
                lo++;
                while (lo < hi && (*lo == '\n' || *lo == ' '))
                    lo++;
                while (hi > lo && (hi[-1] == '\n' || hi[-1] == ' '))
                    hi--;
                if (hi > lo) {
                    fputs(first ? "" : ",\n", f);
                    first = false;
                    fwrite(lo, 1, (size_t)(hi - lo), f);
                }
            }
        }
        duet_free(buf);
    }
    fputs("\n]}\n", f);
    bool bad = ferror(f) != 0;
    if (fclose(f) || bad)
        return st ? st : duet_errorf(DUET_ERR_IO, "trace %s: write failed", out);
    return st;
}
