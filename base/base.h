/* base — status codes, error detail, logging, clocks, allocation, small
 * containers and file mapping. Depends on nothing but libc; every other
 * duet module includes this header. */
#ifndef DUET_BASE_H
#define DUET_BASE_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h> /* and with it <features.h>: __GLIBC__ */

#define DUET_API __attribute__((visibility("default")))

#ifdef __cplusplus
extern "C" {
#endif

/* ---- status ------------------------------------------------------------ */

/* One status type for the whole project: 0 is success, errors are negative.
 * A function that fails also leaves a human-readable detail (what and where)
 * in the calling thread's error slot: see duet_error(). */
typedef enum duet_status {
    DUET_OK = 0,
    DUET_ERR_INVALID = -1,     /* bad argument or bad input (file, message, request) */
    DUET_ERR_NOMEM = -2,       /* allocation failed */
    DUET_ERR_IO = -3,          /* system call / file error */
    DUET_ERR_NOT_FOUND = -4,   /* a named thing does not exist */
    DUET_ERR_UNSUPPORTED = -5, /* operation not implemented by this provider/backend */
    DUET_ERR_TIMEOUT = -6,     /* deadline passed */
    DUET_ERR_AGAIN = -7,       /* try again later (would block, no credit) */
    DUET_ERR_CLOSED = -8,      /* peer or object closed / dead */
    DUET_ERR_RANGE = -9,       /* index, offset or size out of bounds */
    DUET_ERR_CAPACITY = -10,   /* a fixed resource is exhausted (KV blocks, slots) */
    DUET_ERR_PROTOCOL = -11,   /* peer broke the protocol */
    DUET_ERR_CANCELED = -12,   /* operation was canceled */
    DUET_ERR_DEVICE = -13,     /* GPU / NIC device error */
    DUET_ERR_INTERNAL = -14,   /* a bug: an invariant did not hold */
} duet_status_t;

DUET_API const char *duet_status_str(duet_status_t st);

/* Record an error detail for the current thread and return `st`, so a
 * failing path reads `return duet_errorf(DUET_ERR_INVALID, "%s: ...", path);`.
 * The detail should say what was wrong and where (file, key, offset). */
DUET_API duet_status_t duet_errorf(duet_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prepend context to the current detail: "loading model: <old detail>". */
DUET_API duet_status_t duet_error_wrap(duet_status_t st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* The current thread's last error detail ("" if none). Valid until the next
 * duet_errorf on this thread. */
DUET_API const char *duet_error(void);
DUET_API void duet_error_clear(void);

/* ---- logging ----------------------------------------------------------- */

typedef enum duet_log_level {
    DUET_LOG_ERROR = 0,
    DUET_LOG_WARN = 1,
    DUET_LOG_INFO = 2,
    DUET_LOG_DEBUG = 3,
    DUET_LOG_TRACE = 4,
} duet_log_level_t;

/* Level comes from DUET_LOG=error|warn|info|debug|trace (default warn). */
DUET_API duet_log_level_t duet_log_level(void);
DUET_API void duet_log_set_level(duet_log_level_t level);
DUET_API void duet_log_write(duet_log_level_t level, const char *module, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define duet_log(level, module, ...)                                                               \
    do {                                                                                           \
        if ((level) <= duet_log_level())                                                           \
            duet_log_write((level), (module), __VA_ARGS__);                                        \
    } while (0)
#define DUET_LOG_E(mod, ...) duet_log(DUET_LOG_ERROR, mod, __VA_ARGS__)
#define DUET_LOG_W(mod, ...) duet_log(DUET_LOG_WARN, mod, __VA_ARGS__)
#define DUET_LOG_I(mod, ...) duet_log(DUET_LOG_INFO, mod, __VA_ARGS__)
#define DUET_LOG_D(mod, ...) duet_log(DUET_LOG_DEBUG, mod, __VA_ARGS__)

/* ---- clocks ------------------------------------------------------------ */

DUET_API uint64_t duet_now_ns(void); /* CLOCK_MONOTONIC */
DUET_API double duet_now_s(void);
DUET_API uint64_t duet_wall_ms(void); /* CLOCK_REALTIME, for timestamps people read */

/* ---- allocation -------------------------------------------------------- */

/* These return NULL on failure (and on size overflow); callers handle it. */
DUET_API void *duet_malloc(size_t size);
DUET_API void *duet_calloc(size_t n, size_t size);
DUET_API void *duet_realloc_array(void *p, size_t n, size_t size);
DUET_API void *duet_aligned_alloc(size_t align, size_t size); /* free with duet_free */
DUET_API void duet_free(void *p);
DUET_API char *duet_strdup(const char *s);
DUET_API char *duet_strndup(const char *s, size_t n);
/* true if a*b overflows size_t; otherwise *out = a*b. */
static inline bool duet_mul_overflow(size_t a, size_t b, size_t *out)
{
    return __builtin_mul_overflow(a, b, out);
}

/* Grow *data (elements of `elem` bytes, capacity *cap) to hold at least
 * `need` elements. Amortised doubling. */
DUET_API duet_status_t duet_vec_reserve(void **data, size_t *cap, size_t need, size_t elem);

/* ---- byte buffer ------------------------------------------------------- */

typedef struct duet_buf {
    uint8_t *data;
    size_t len;
    size_t cap;
} duet_buf_t;

DUET_API duet_status_t duet_buf_append(duet_buf_t *b, const void *p, size_t n);
DUET_API duet_status_t duet_buf_printf(duet_buf_t *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
DUET_API void duet_buf_cleanup(duet_buf_t *b);

/* ---- string → int64 map (open addressing, keys copied) ----------------- */

typedef struct duet_strmap duet_strmap_t;

DUET_API duet_strmap_t *duet_strmap_create(size_t expected);
DUET_API void duet_strmap_destroy(duet_strmap_t **map_p);
/* Insert or overwrite. Keys are byte strings of length `len` (may hold NUL). */
DUET_API duet_status_t duet_strmap_put(duet_strmap_t *map, const char *key, size_t len, int64_t value);
DUET_API bool duet_strmap_get(const duet_strmap_t *map, const char *key, size_t len, int64_t *value_out);
DUET_API size_t duet_strmap_count(const duet_strmap_t *map);

/* ---- read-only file mapping -------------------------------------------- */

typedef struct duet_file_map {
    const uint8_t *data;
    size_t size;
    char *path;
} duet_file_map_t;

DUET_API duet_status_t duet_file_map_open(const char *path, duet_file_map_t *out);
DUET_API void duet_file_map_close(duet_file_map_t *map);
/* Read a whole (small) file into a NUL-terminated heap buffer. */
DUET_API duet_status_t duet_file_read_all(const char *path, size_t max_size, char **data_out, size_t *len_out);

/* ---- misc -------------------------------------------------------------- */

/* FNV-1a 64-bit. */
static inline uint64_t duet_hash_bytes(const void *p, size_t n)
{
    const uint8_t *b = (const uint8_t *)p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 1099511628211ull;
    }
    return h;
}

/* DUET_GLIBC_MALLOC: glibc's malloc is the allocator in use, so its
 * malloc_trim and mallopt may be called. Not under a sanitizer, which
 * replaces malloc (glibc's trim of arenas it never set up aborts at thread
 * exit). */
#if defined(__has_feature)
#if __has_feature(address_sanitizer) || __has_feature(thread_sanitizer)
#define DUET__FOREIGN_MALLOC 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
#define DUET__FOREIGN_MALLOC 1
#endif
#if defined(__GLIBC__) && !defined(DUET__FOREIGN_MALLOC)
#define DUET_GLIBC_MALLOC 1
#endif

/* SplitMix64: advance *state and return its next 64 well-mixed bits
 * (seeded streams for workloads, fault plans, sampling, placements). */
static inline uint64_t duet_splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Peak resident set size of this process in bytes (from /proc). */
DUET_API size_t duet_peak_rss_bytes(void);
DUET_API size_t duet_rss_bytes(void);

#define DUET_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DUET_MIN(a, b) ((a) < (b) ? (a) : (b))
#define DUET_MAX(a, b) ((a) > (b) ? (a) : (b))

#ifdef __cplusplus
}
#endif
#endif /* DUET_BASE_H */
