/* base — implementation of status strings, per-thread error detail,
 * logging, clocks and allocation helpers. */
#include "base/base.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- status ------------------------------------------------------------ */

const char *duet_status_str(duet_status_t st)
{
    switch (st) {
    case DUET_OK: return "ok";
    case DUET_ERR_INVALID: return "invalid input";
    case DUET_ERR_NOMEM: return "out of memory";
    case DUET_ERR_IO: return "i/o error";
    case DUET_ERR_NOT_FOUND: return "not found";
    case DUET_ERR_UNSUPPORTED: return "unsupported";
    case DUET_ERR_TIMEOUT: return "timed out";
    case DUET_ERR_AGAIN: return "try again";
    case DUET_ERR_CLOSED: return "closed";
    case DUET_ERR_RANGE: return "out of range";
    case DUET_ERR_CAPACITY: return "capacity exhausted";
    case DUET_ERR_PROTOCOL: return "protocol error";
    case DUET_ERR_CANCELED: return "canceled";
    case DUET_ERR_DEVICE: return "device error";
    case DUET_ERR_INTERNAL: return "internal error";
    }
    return "unknown status";
}

#define DUET_ERROR_MAX 1024
static _Thread_local char error_detail[DUET_ERROR_MAX];

duet_status_t duet_errorf(duet_status_t st, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_detail, sizeof(error_detail), fmt, ap);
    va_end(ap);
    return st;
}

duet_status_t duet_error_wrap(duet_status_t st, const char *fmt, ...)
{
    char prefix[DUET_ERROR_MAX];
    char old[DUET_ERROR_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof(prefix), fmt, ap);
    va_end(ap);
    memcpy(old, error_detail, sizeof(old));
    const char *tail = old[0] ? old : duet_status_str(st);
    /* "<prefix>: <tail>", cut to the slot's size */
    size_t n = strnlen(prefix, sizeof(prefix) - 1);
    memcpy(error_detail, prefix, n);
    size_t room = sizeof(error_detail) - n;
    if (room > 2) {
        memcpy(error_detail + n, ": ", 2);
        size_t t = strnlen(tail, room - 3);
        memcpy(error_detail + n + 2, tail, t);
        error_detail[n + 2 + t] = '\0';
    } else {
        error_detail[n] = '\0';
    }
    return st;
}

const char *duet_error(void)
{
    return error_detail;
}

void duet_error_clear(void)
{
    error_detail[0] = '\0';
}

/* ---- logging ----------------------------------------------------------- */

static int log_level = -1;
static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

duet_log_level_t duet_log_level(void)
{
    int lvl = __atomic_load_n(&log_level, __ATOMIC_RELAXED);
    if (lvl >= 0)
        return (duet_log_level_t)lvl;
    lvl = DUET_LOG_WARN;
    const char *env = getenv("DUET_LOG");
    if (env) {
        static const char *names[] = {"error", "warn", "info", "debug", "trace"};
        for (int i = 0; i < 5; i++)
            if (strcasecmp(env, names[i]) == 0)
                lvl = i;
    }
    __atomic_store_n(&log_level, lvl, __ATOMIC_RELAXED);
    return (duet_log_level_t)lvl;
}

void duet_log_set_level(duet_log_level_t level)
{
    __atomic_store_n(&log_level, (int)level, __ATOMIC_RELAXED);
}

void duet_log_write(duet_log_level_t level, const char *module, const char *fmt, ...)
{
    static const char tags[] = "EWIDT";
    char line[2048];
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct tm tm;
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%02d:%02d:%02d.%03ld %c %s: ", tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000000, tags[level < 5 ? level : 4],
                     module ? module : "duet");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof(line))
        vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
    va_end(ap);
    pthread_mutex_lock(&log_lock);
    fprintf(stderr, "%s\n", line);
    pthread_mutex_unlock(&log_lock);
}

/* ---- clocks ------------------------------------------------------------ */

uint64_t duet_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

double duet_now_s(void)
{
    return (double)duet_now_ns() * 1e-9;
}

uint64_t duet_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

/* ---- allocation -------------------------------------------------------- */

void *duet_malloc(size_t size)
{
    return malloc(size ? size : 1);
}

void *duet_calloc(size_t n, size_t size)
{
    size_t total;
    if (duet_mul_overflow(n, size, &total))
        return NULL;
    return calloc(total ? n : 1, total ? size : 1);
}

void *duet_realloc_array(void *p, size_t n, size_t size)
{
    size_t total;
    if (duet_mul_overflow(n, size, &total))
        return NULL;
    return realloc(p, total ? total : 1);
}

void *duet_aligned_alloc(size_t align, size_t size)
{
    void *p = NULL;
    if (align < sizeof(void *))
        align = sizeof(void *);
    if (posix_memalign(&p, align, size ? size : align) != 0)
        return NULL;
    return p;
}

void duet_free(void *p)
{
    free(p);
}

char *duet_strdup(const char *s)
{
    return s ? strdup(s) : NULL;
}

char *duet_strndup(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (!d)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

duet_status_t duet_vec_reserve(void **data, size_t *cap, size_t need, size_t elem)
{
    if (need <= *cap)
        return DUET_OK;
    size_t ncap = *cap ? *cap : 8;
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2)
            return duet_errorf(DUET_ERR_NOMEM, "vector of %zu elements is too large", need);
        ncap *= 2;
    }
    void *p = duet_realloc_array(*data, ncap, elem);
    if (!p)
        return duet_errorf(DUET_ERR_NOMEM, "out of memory growing a vector to %zu elements", ncap);
    *data = p;
    *cap = ncap;
    return DUET_OK;
}

/* ---- byte buffer ------------------------------------------------------- */

duet_status_t duet_buf_append(duet_buf_t *b, const void *p, size_t n)
{
    if (b->len + n + 1 < b->len)
        return duet_errorf(DUET_ERR_NOMEM, "buffer overflow");
    duet_status_t st = duet_vec_reserve((void **)&b->data, &b->cap, b->len + n + 1, 1);
    if (st)
        return st;
    if (n)
        memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0'; /* always NUL-terminated for convenience */
    return DUET_OK;
}

duet_status_t duet_buf_printf(duet_buf_t *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return duet_errorf(DUET_ERR_INVALID, "bad format string");
    duet_status_t st = duet_vec_reserve((void **)&b->data, &b->cap, b->len + (size_t)n + 1, 1);
    if (st)
        return st;
    va_start(ap, fmt);
    vsnprintf((char *)b->data + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return DUET_OK;
}

void duet_buf_cleanup(duet_buf_t *b)
{
    free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
}

/* ---- string map -------------------------------------------------------- */

typedef struct strmap_slot {
    char *key; /* NULL = empty */
    size_t len;
    uint64_t hash;
    int64_t value;
} strmap_slot_t;

struct duet_strmap {
    strmap_slot_t *slots;
    size_t cap; /* power of two */
    size_t count;
};

duet_strmap_t *duet_strmap_create(size_t expected)
{
    duet_strmap_t *m = calloc(1, sizeof(*m));
    if (!m)
        return NULL;
    size_t cap = 16;
    while (cap < expected * 2 + 1)
        cap *= 2;
    m->slots = calloc(cap, sizeof(*m->slots));
    if (!m->slots) {
        free(m);
        return NULL;
    }
    m->cap = cap;
    return m;
}

void duet_strmap_destroy(duet_strmap_t **map_p)
{
    if (!map_p || !*map_p)
        return;
    duet_strmap_t *m = *map_p;
    for (size_t i = 0; i < m->cap; i++)
        free(m->slots[i].key);
    free(m->slots);
    free(m);
    *map_p = NULL;
}

static strmap_slot_t *strmap_find(strmap_slot_t *slots, size_t cap, const char *key, size_t len,
                                  uint64_t h)
{
    size_t i = (size_t)h & (cap - 1);
    for (;;) {
        strmap_slot_t *s = &slots[i];
        if (!s->key || (s->hash == h && s->len == len && memcmp(s->key, key, len) == 0))
            return s;
        i = (i + 1) & (cap - 1);
    }
}

duet_status_t duet_strmap_put(duet_strmap_t *m, const char *key, size_t len, int64_t value)
{
    if ((m->count + 1) * 4 > m->cap * 3) {
        size_t ncap = m->cap * 2;
        strmap_slot_t *ns = calloc(ncap, sizeof(*ns));
        if (!ns)
            return duet_errorf(DUET_ERR_NOMEM, "out of memory growing a map");
        for (size_t i = 0; i < m->cap; i++)
            if (m->slots[i].key)
                *strmap_find(ns, ncap, m->slots[i].key, m->slots[i].len, m->slots[i].hash) =
                    m->slots[i];
        free(m->slots);
        m->slots = ns;
        m->cap = ncap;
    }
    uint64_t h = duet_hash_bytes(key, len);
    strmap_slot_t *s = strmap_find(m->slots, m->cap, key, len, h);
    if (!s->key) {
        s->key = duet_strndup(key, len);
        if (!s->key)
            return duet_errorf(DUET_ERR_NOMEM, "out of memory in map");
        s->len = len;
        s->hash = h;
        m->count++;
    }
    s->value = value;
    return DUET_OK;
}

bool duet_strmap_get(const duet_strmap_t *m, const char *key, size_t len, int64_t *value_out)
{
    uint64_t h = duet_hash_bytes(key, len);
    strmap_slot_t *s = strmap_find(m->slots, m->cap, key, len, h);
    if (!s->key)
        return false;
    if (value_out)
        *value_out = s->value;
    return true;
}

size_t duet_strmap_count(const duet_strmap_t *m)
{
    return m->count;
}

/* ---- files ------------------------------------------------------------- */

duet_status_t duet_file_map_open(const char *path, duet_file_map_t *out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return duet_errorf(DUET_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        int e = errno;
        close(fd);
        return duet_errorf(DUET_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(sb.st_mode)) {
        close(fd);
        return duet_errorf(DUET_ERR_INVALID, "%s: not a regular file", path);
    }
    void *p = NULL;
    if (sb.st_size > 0) {
        p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
        if (p == MAP_FAILED) {
            int e = errno;
            close(fd);
            return duet_errorf(DUET_ERR_IO, "%s: cannot map: %s", path, strerror(e));
        }
    }
    close(fd);
    out->data = p;
    out->size = (size_t)sb.st_size;
    out->path = duet_strdup(path);
    return DUET_OK;
}

void duet_file_map_close(duet_file_map_t *map)
{
    if (!map)
        return;
    if (map->data && map->size)
        munmap((void *)map->data, map->size);
    free(map->path);
    map->data = NULL;
    map->size = 0;
    map->path = NULL;
}

duet_status_t duet_file_read_all(const char *path, size_t max_size, char **data_out, size_t *len_out)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return duet_errorf(DUET_ERR_IO, "%s: cannot open: %s", path, strerror(errno));
    duet_buf_t b = {0};
    char chunk[65536];
    size_t n;
    duet_status_t st = DUET_OK;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        if (b.len + n > max_size) {
            st = duet_errorf(DUET_ERR_RANGE, "%s: file is larger than the %zu-byte limit", path,
                             max_size);
            break;
        }
        if ((st = duet_buf_append(&b, chunk, n)))
            break;
    }
    if (!st && ferror(f))
        st = duet_errorf(DUET_ERR_IO, "%s: read error", path);
    fclose(f);
    if (st) {
        duet_buf_cleanup(&b);
        return st;
    }
    if (!b.data && (st = duet_buf_append(&b, "", 0)))
        return st;
    *data_out = (char *)b.data;
    if (len_out)
        *len_out = b.len;
    return DUET_OK;
}

static size_t proc_status_kb(const char *key)
{
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return 0;
    char line[256];
    size_t kb = 0, klen = strlen(key);
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, klen) == 0) {
            kb = strtoull(line + klen, NULL, 10);
            break;
        }
    }
    fclose(f);
    return kb * 1024;
}

size_t duet_peak_rss_bytes(void)
{
    return proc_status_kb("VmHWM:");
}

size_t duet_rss_bytes(void)
{
    return proc_status_kb("VmRSS:");
}
