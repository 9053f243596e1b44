/* test_safetensors — the safetensors reader's validation (each bad header
 * gives an error naming the file, the tensor and the problem), the writer,
 * sharded checkpoints through model.safetensors.index.json, and the dtype
 * table and f16 conversions. */
#include <dirent.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "model/safetensors.h"

#define TMPDIR_PREFIX "duet-test-st"
#include "tmpdir_util.h"

/* An image: 8-byte header length `hlen` (the real one if UINT64_MAX), the
 * header text, `data_len` bytes 0, 1, 2, ... */
static uint8_t *make_image(const char *header, uint64_t hlen, size_t data_len, size_t *size)
{
    size_t h = strlen(header);
    *size = 8 + h + data_len;
    uint8_t *img = malloc(*size ? *size : 1);
    assert_non_null(img);
    uint64_t n = hlen == UINT64_MAX ? h : hlen;
    for (int i = 0; i < 8; i++)
        img[i] = (uint8_t)(n >> (8 * i));
    memcpy(img + 8, header, h);
    for (size_t i = 0; i < data_len; i++)
        img[8 + h + i] = (uint8_t)i;
    return img;
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static void test_valid_header(void **state)
{
    (void)state;
    const char *h = "{\"__metadata__\": {\"format\": \"pt\"},"
                    " \"b\": {\"dtype\": \"BF16\", \"shape\": [4], \"data_offsets\": [24, 32]},"
                    " \"a\": {\"dtype\": \"F32\", \"shape\": [2, 3], \"data_offsets\": [0, 24]},"
                    " \"z\": {\"dtype\": \"I64\", \"shape\": [0, 5], \"data_offsets\": [24, 24]},"
                    " \"s\": {\"dtype\": \"F32\", \"shape\": [], \"data_offsets\": [32, 36]}}";
    size_t size;
    uint8_t *img = make_image(h, UINT64_MAX, 36, &size);
    duet_safetensors_t *st = NULL;
    assert_int_equal(duet_safetensors_parse(img, size, "mem.safetensors", &st), DUET_OK);
    assert_int_equal(duet_safetensors_count(st), 4);
    /* in data-offset order */
    assert_string_equal(duet_safetensors_name_at(st, 0), "a");
    assert_string_equal(duet_safetensors_name_at(st, 3), "s");
    assert_null(duet_safetensors_name_at(st, 4));
    const duet_tensor_t *a = duet_safetensors_find(st, "a");
    assert_non_null(a);
    assert_int_equal(a->dtype, DUET_DTYPE_F32);
    assert_int_equal(a->ndim, 2);
    assert_int_equal(a->shape[0], 2);
    assert_int_equal(a->shape[1], 3);
    assert_int_equal(a->nbytes, 24);
    assert_ptr_equal(a->data, img + 8 + strlen(h));
    duet_tensor_t b;
    assert_int_equal(duet_safetensors_get(st, "b", &b), DUET_OK);
    assert_int_equal(b.dtype, DUET_DTYPE_BF16);
    assert_int_equal(((const uint8_t *)b.data)[0], 24);
    const duet_tensor_t *s = duet_safetensors_find(st, "s");
    assert_int_equal(s->ndim, 0);
    assert_int_equal(duet_tensor_numel(s), 1);
    assert_int_equal(duet_safetensors_find(st, "z")->nbytes, 0);
    assert_null(duet_safetensors_find(st, "__metadata__"));
    assert_int_equal(duet_safetensors_get(st, "missing", &b), DUET_ERR_NOT_FOUND);
    assert_detail("mem.safetensors", "'missing'", NULL);
    duet_safetensors_destroy(&st);
    assert_null(st);
    duet_safetensors_destroy(&st); /* NULL is fine */
    free(img);
}

static void test_bad_headers(void **state)
{
    (void)state;
    static const struct {
        const char *header;
        size_t data_len;
        duet_status_t st;
        const char *m1, *m2; /* must appear in the detail besides the file name */
    } cases[] = {
        {"{\"w\": {\"dtype\": \"BF16\", \"shape\": [2, 2], \"data_offsets\": [0, 6]}}", 8,
         DUET_ERR_INVALID, "'w'", "span 6"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [8, 24]}}",
         24, DUET_ERR_INVALID, "overlap", "'a'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]},"
         " \"z\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [4, 4]},"
         " \"b\": {\"dtype\": \"F32\", \"shape\": [2], \"data_offsets\": [8, 16]}}",
         24, DUET_ERR_INVALID, "overlap", "'a'"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [4], \"data_offsets\": [0, 16]}}", 8,
         DUET_ERR_RANGE, "'a'", "past the end"},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [0], \"data_offsets\": [8, 4]}}", 8,
         DUET_ERR_INVALID, "'a'", "end before"},
        {"{\"q\": {\"dtype\": \"Q4\", \"shape\": [4], \"data_offsets\": [0, 2]}}", 8,
         DUET_ERR_INVALID, "'q'", "unknown dtype 'Q4'"},
        {"{\"big\": {\"dtype\": \"F32\", \"shape\": [4294967296, 4294967296, 16],"
         " \"data_offsets\": [0, 8]}}",
         8, DUET_ERR_INVALID, "'big'", "overflow"},
        {"{\"t\": {\"dtype\": \"F32\", \"shape\": [1, 1, 1, 1, 1], \"data_offsets\": [0, 4]}}", 8,
         DUET_ERR_UNSUPPORTED, "'t'", "dimensions"},
        {"{\"n\": {\"dtype\": \"F32\", \"shape\": [-1], \"data_offsets\": [0, 4]}}", 8,
         DUET_ERR_INVALID, "'n'", "shape[0]"},
        {"{\"n\": {\"dtype\": \"F32\", \"shape\": [1]}}", 8, DUET_ERR_INVALID, "'n'",
         "data_offsets"},
        {"{\"n\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [-4, 0]}}", 8,
         DUET_ERR_INVALID, "'n'", "data_offsets"},
        {"{\"n\": {\"shape\": [1], \"data_offsets\": [0, 4]}}", 8, DUET_ERR_INVALID, "'n'",
         "dtype"},
        {"{\"n\": [1, 2]}", 8, DUET_ERR_INVALID, "'n'", "not an object"},
        {"[1, 2, 3]", 8, DUET_ERR_INVALID, "not an object", NULL},
        {"{\"n\": {\"dtype\": \"F32\", ", 8, DUET_ERR_INVALID, "malformed header JSON", NULL},
        {"{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]},"
         " \"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [4, 8]}}",
         8, DUET_ERR_INVALID, "duplicate", NULL},
        /* only whitespace may follow the JSON object */
        {"{}  x", 0, DUET_ERR_INVALID, "malformed header JSON", NULL},
    };
    for (size_t i = 0; i < DUET_ARRAY_LEN(cases); i++) {
        size_t size;
        uint8_t *img = make_image(cases[i].header, UINT64_MAX, cases[i].data_len, &size);
        duet_safetensors_t *st = NULL;
        duet_error_clear();
        duet_status_t s = duet_safetensors_parse(img, size, "bad.safetensors", &st);
        if (s != cases[i].st)
            fail_msg("case %zu: %s, want %s (%s)", i, duet_status_str(s),
                     duet_status_str(cases[i].st), duet_error());
        assert_null(st);
        assert_detail("bad.safetensors", cases[i].m1, cases[i].m2, NULL);
        free(img);
    }
}

static void test_bad_header_length(void **state)
{
    (void)state;
    const char *h = "{\"a\": {\"dtype\": \"F32\", \"shape\": [1], \"data_offsets\": [0, 4]}}";
    size_t size;
    duet_safetensors_t *st = NULL;
    /* shorter than the length field */
    uint8_t tiny[5] = {1, 0, 0, 0, 0};
    assert_int_equal(duet_safetensors_parse(tiny, sizeof(tiny), "tiny.safetensors", &st),
                     DUET_ERR_INVALID);
    assert_detail("tiny.safetensors", "too short", NULL);
    /* header length past the end of the file */
    uint8_t *img = make_image(h, 1000, 4, &size);
    assert_int_equal(duet_safetensors_parse(img, size, "len.safetensors", &st), DUET_ERR_INVALID);
    assert_detail("len.safetensors", "header length 1000", "past the end", NULL);
    free(img);
    /* absurd header length (over the 100 MB limit; also wraps if added) */
    img = make_image(h, UINT64_MAX - 3, 4, &size);
    assert_int_equal(duet_safetensors_parse(img, size, "huge.safetensors", &st), DUET_ERR_INVALID);
    assert_detail("huge.safetensors", "limit", NULL);
    free(img);
    img = make_image(h, 0, 4, &size);
    assert_int_equal(duet_safetensors_parse(img, size, "zero.safetensors", &st), DUET_ERR_INVALID);
    assert_detail("zero.safetensors", NULL);
    free(img);
    assert_null(st);
}

/* Write with the writer, read back, then truncate the file. */
static void test_writer_roundtrip_and_truncation(void **state)
{
    (void)state;
    char path[128];
    snprintf(path, sizeof(path), "%s/w.safetensors", tmpdir);
    duet_safetensors_writer_t *w = NULL;
    assert_int_equal(duet_safetensors_writer_create(path, &w), DUET_OK);
    int64_t s23[2] = {2, 3}, s5[1] = {5}, s3[1] = {3};
    assert_int_equal(duet_safetensors_writer_add(w, "f", DUET_DTYPE_F32, 2, s23), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w, "h", DUET_DTYPE_BF16, 1, s5), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w, "i", DUET_DTYPE_I32, 1, s3), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w, "f", DUET_DTYPE_F32, 1, s5),
                     DUET_ERR_INVALID); /* twice */
    assert_int_equal(duet_safetensors_writer_data_size(w), 24 + 10 + 12);
    float f[6] = {1, 2, 3, 4, 5, 6};
    uint16_t h[5];
    for (int i = 0; i < 5; i++)
        h[i] = duet_f32_to_bf16((float)i * 0.5f);
    int32_t iv[3] = {-1, 7, 1 << 30};
    assert_int_equal(duet_safetensors_writer_write(w, f, 10), DUET_OK); /* any chunking */
    assert_int_equal(duet_safetensors_writer_write(w, (uint8_t *)f + 10, 14), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w, "late", DUET_DTYPE_F32, 1, s5),
                     DUET_ERR_INVALID);
    assert_int_equal(duet_safetensors_writer_write(w, h, 10), DUET_OK);
    assert_int_equal(duet_safetensors_writer_write(w, iv, 12), DUET_OK);
    assert_int_equal(duet_safetensors_writer_write(w, iv, 1), DUET_ERR_RANGE);
    assert_int_equal(duet_safetensors_writer_finish(&w), DUET_OK);
    assert_null(w);

    duet_safetensors_t *st = NULL;
    assert_int_equal(duet_safetensors_open(path, &st), DUET_OK);
    assert_string_equal(duet_safetensors_path(st), path);
    assert_int_equal(duet_safetensors_count(st), 3);
    const duet_tensor_t *tf = duet_safetensors_find(st, "f"), *th = duet_safetensors_find(st, "h"),
                        *ti = duet_safetensors_find(st, "i");
    assert_memory_equal(tf->data, f, 24);
    assert_memory_equal(th->data, h, 10);
    assert_memory_equal(ti->data, iv, 12);
    assert_true(duet_tensor_aligned(tf));
    assert_true(duet_tensor_aligned(th));
    assert_false(duet_tensor_aligned(ti)); /* packed after 10 bytes of bf16 */
    assert_float_equal(duet_bf16_to_f32(((const uint16_t *)th->data)[3]), 1.5f, 0);
    duet_safetensors_destroy(&st);

    /* an aligned file, then cut its last 6 bytes: tensor 'i' runs past the end */
    duet_safetensors_writer_t *w2 = NULL;
    assert_int_equal(duet_safetensors_writer_create(path, &w2), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w2, "f", DUET_DTYPE_F32, 2, s23), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w2, "i", DUET_DTYPE_I32, 1, s3), DUET_OK);
    assert_int_equal(duet_safetensors_writer_write(w2, f, 24), DUET_OK);
    assert_int_equal(duet_safetensors_writer_write(w2, iv, 12), DUET_OK);
    assert_int_equal(duet_safetensors_writer_finish(&w2), DUET_OK);
    FILE *rf = fopen(path, "rb");
    fseek(rf, 0, SEEK_END);
    long full = ftell(rf);
    fclose(rf);
    assert_int_equal(truncate(path, full - 6), 0);
    assert_int_equal(duet_safetensors_open(path, &st), DUET_ERR_RANGE);
    assert_detail(path, "'i'", "past the end", "truncated", NULL);
    /* cut into the header */
    assert_int_equal(truncate(path, 20), 0);
    assert_int_equal(duet_safetensors_open(path, &st), DUET_ERR_INVALID);
    assert_detail(path, "past the end of the file", NULL);
    assert_int_equal(truncate(path, 3), 0);
    assert_int_equal(duet_safetensors_open(path, &st), DUET_ERR_INVALID);
    assert_detail(path, "too short", NULL);
    assert_null(st);

    /* a writer finished before all declared bytes: error, partial file removed */
    assert_int_equal(duet_safetensors_writer_create(path, &w2), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w2, "f", DUET_DTYPE_F32, 2, s23), DUET_OK);
    assert_int_equal(duet_safetensors_writer_write(w2, f, 8), DUET_OK);
    assert_int_equal(duet_safetensors_writer_finish(&w2), DUET_ERR_INVALID);
    assert_null(w2);
    assert_int_equal(access(path, F_OK), -1); /* partial file removed */
    assert_int_equal(duet_safetensors_open(path, &st), DUET_ERR_IO);
    assert_detail(path, NULL);
}

static void write_shard(const char *dir, const char *name, const char *t1, const char *t2)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    duet_safetensors_writer_t *w = NULL;
    int64_t s[1] = {4};
    float v[4] = {1, 2, 3, 4};
    assert_int_equal(duet_safetensors_writer_create(path, &w), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w, t1, DUET_DTYPE_F32, 1, s), DUET_OK);
    assert_int_equal(duet_safetensors_writer_add(w, t2, DUET_DTYPE_F32, 1, s), DUET_OK);
    assert_int_equal(duet_safetensors_writer_write(w, v, 16), DUET_OK);
    assert_int_equal(duet_safetensors_writer_write(w, v, 16), DUET_OK);
    assert_int_equal(duet_safetensors_writer_finish(&w), DUET_OK);
}

static void write_index(const char *dir, const char *text)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/model.safetensors.index.json", dir);
    write_file(path, text, strlen(text));
}

static void test_checkpoint_sharded(void **state)
{
    (void)state;
    char dir[128];
    snprintf(dir, sizeof(dir), "%s/sharded", tmpdir);
    assert_int_equal(mkdir(dir, 0755), 0);
    duet_checkpoint_t *ck = NULL;
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_ERR_NOT_FOUND);
    assert_detail(dir, "model.safetensors", NULL);

    write_shard(dir, "s1.safetensors", "a", "b");
    write_shard(dir, "s2.safetensors", "c", "d");
    write_index(dir, "{\"metadata\": {\"total_size\": 64}, \"weight_map\": {\"a\": "
                     "\"s1.safetensors\", \"b\": \"s1.safetensors\", \"c\": \"s2.safetensors\","
                     " \"d\": \"s2.safetensors\", \"e\": \"s2.safetensors\"}}");
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_OK);
    assert_int_equal(duet_checkpoint_file_count(ck), 2);
    duet_tensor_t t;
    const char *path = NULL;
    assert_int_equal(duet_checkpoint_get(ck, "c", &t, &path), DUET_OK);
    assert_non_null(strstr(path, "s2.safetensors"));
    assert_float_equal(((const float *)t.data)[2], 3.0f, 0);
    assert_int_equal(duet_checkpoint_get(ck, "a", &t, &path), DUET_OK);
    assert_non_null(strstr(path, "s1.safetensors"));
    assert_true(duet_checkpoint_has(ck, "d"));
    assert_false(duet_checkpoint_has(ck, "e"));
    assert_false(duet_checkpoint_has(ck, "zz"));
    /* listed in the index but not in its shard */
    assert_int_equal(duet_checkpoint_get(ck, "e", &t, NULL), DUET_ERR_NOT_FOUND);
    assert_detail("s2.safetensors", "'e'", NULL);
    assert_int_equal(duet_checkpoint_get(ck, "zz", &t, NULL), DUET_ERR_NOT_FOUND);
    assert_detail("model.safetensors.index.json", "'zz'", NULL);
    duet_checkpoint_destroy(&ck);
    assert_null(ck);

    /* a shard file that does not exist */
    write_index(dir, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"x\": \"s9.safetensors\"}}");
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_ERR_IO);
    assert_detail("s9.safetensors", NULL);
    /* escaping the directory */
    write_index(dir, "{\"weight_map\": {\"a\": \"../s1.safetensors\"}}");
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_ERR_INVALID);
    assert_detail("model.safetensors.index.json", "'a'", NULL);
    write_index(dir, "{\"weight_map\": [1]}");
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_ERR_INVALID);
    assert_detail("model.safetensors.index.json", "weight_map", NULL);
    write_index(dir, "{\"weight_map\": {\"a\": \"s1.safetensors\",");
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_ERR_INVALID);
    assert_detail("model.safetensors.index.json", "malformed JSON", NULL);
    /* a bad shard: the error names that shard */
    char bad[256];
    snprintf(bad, sizeof(bad), "%s/s2.safetensors", dir);
    assert_int_equal(truncate(bad, 30), 0);
    write_index(dir, "{\"weight_map\": {\"a\": \"s1.safetensors\", \"c\": \"s2.safetensors\"}}");
    assert_int_equal(duet_checkpoint_open(dir, &ck), DUET_ERR_INVALID);
    assert_detail("s2.safetensors", NULL);
    assert_null(ck);
}

static void test_checkpoint_real(void **state)
{
    (void)state;
    duet_checkpoint_t *ck = NULL;
    assert_int_equal(duet_checkpoint_open(DUET_MODELS "/pycoder-moe", &ck), DUET_OK);
    assert_int_equal(duet_checkpoint_file_count(ck), 3);
    duet_tensor_t t;
    const char *path;
    assert_int_equal(
        duet_checkpoint_get(ck, "model.layers.3.block_sparse_moe.experts.7.w2.weight", &t, &path),
        DUET_OK);
    assert_int_equal(t.dtype, DUET_DTYPE_BF16);
    assert_int_equal(t.shape[0], 256);
    assert_int_equal(t.shape[1], 384);
    duet_checkpoint_destroy(&ck);

    assert_int_equal(duet_checkpoint_open(DUET_FIXTURES "/mixtral-tiny", &ck), DUET_OK);
    assert_int_equal(duet_checkpoint_file_count(ck), 1);
    assert_int_equal(duet_checkpoint_get(ck, "lm_head.weight", &t, &path), DUET_OK);
    assert_int_equal(t.shape[0], 1024);
    duet_checkpoint_destroy(&ck);

    /* the reference outputs are read with the same reader */
    duet_safetensors_t *ref = NULL;
    assert_int_equal(
        duet_safetensors_open(DUET_FIXTURES "/mixtral-tiny/reference.safetensors", &ref), DUET_OK);
    const duet_tensor_t *ids = duet_safetensors_find(ref, "p1.ids");
    const duet_tensor_t *lg = duet_safetensors_find(ref, "p1.logits");
    assert_non_null(ids);
    assert_non_null(lg);
    assert_int_equal(ids->dtype, DUET_DTYPE_I32);
    assert_int_equal(ids->shape[0], 5);
    assert_int_equal(lg->dtype, DUET_DTYPE_F32);
    assert_int_equal(lg->shape[0], 5);
    assert_int_equal(lg->shape[1], 1024);
    duet_safetensors_destroy(&ref);
}

static void test_dtypes(void **state)
{
    (void)state;
    for (int i = 0; i < DUET_DTYPE_COUNT; i++) {
        const char *n = duet_dtype_name((duet_dtype_t)i);
        duet_dtype_t back;
        assert_true(duet_dtype_parse(n, strlen(n), &back));
        assert_int_equal(back, i);
        assert_true(duet_dtype_size((duet_dtype_t)i) > 0);
    }
    duet_dtype_t dt;
    assert_false(duet_dtype_parse("BF1", 3, &dt));
    assert_false(duet_dtype_parse("BF16x", 5, &dt));
    assert_true(duet_dtype_parse("BF16x", 4, &dt));
    assert_int_equal(duet_dtype_size(DUET_DTYPE_BF16), 2);
    assert_int_equal(duet_dtype_size(DUET_DTYPE_F64), 8);
    assert_int_equal(duet_dtype_size(DUET_DTYPE_COUNT), 0);
}

static void test_f16(void **state)
{
    (void)state;
    /* every half: widening is exact, and narrowing it back is the identity */
    for (uint32_t h = 0; h < 65536; h++) {
        float f = duet_f16_to_f32((uint16_t)h);
        uint32_t e = (h >> 10) & 31, m = h & 1023;
        double want = e == 0 ? ldexp((double)m, -24) : ldexp(1024.0 + m, (int)e - 25);
        if (h & 0x8000)
            want = -want;
        if (e == 31) {
            if (m)
                assert_true(isnan(f));
            else
                assert_true(isinf(f) && (f < 0) == !!(h & 0x8000));
            continue;
        }
        if ((double)f != want)
            fail_msg("f16 %#x -> %g, want %g", h, (double)f, want);
        assert_int_equal(duet_f32_to_f16(f), h);
    }
    assert_true(isnan(duet_f16_to_f32(duet_f32_to_f16(NAN))));
    /* round to nearest even */
    assert_int_equal(duet_f32_to_f16(1.0f + 0x1p-11f), 0x3c00);     /* tie, even down */
    assert_int_equal(duet_f32_to_f16(1.0f + 3 * 0x1p-11f), 0x3c02); /* tie, even up */
    assert_int_equal(duet_f32_to_f16(1.0f + 0x1p-11f + 0x1p-20f), 0x3c01);
    assert_int_equal(duet_f32_to_f16(65504.0f), 0x7bff);
    assert_int_equal(duet_f32_to_f16(65519.0f), 0x7bff);
    assert_int_equal(duet_f32_to_f16(65520.0f), 0x7c00); /* overflow to inf */
    assert_int_equal(duet_f32_to_f16(-1e10f), 0xfc00);
    assert_int_equal(duet_f32_to_f16(0x1p-24f), 0x0001); /* smallest subnormal */
    assert_int_equal(duet_f32_to_f16(0x1p-25f), 0x0000); /* tie to even: 0 */
    assert_int_equal(duet_f32_to_f16(1.5f * 0x1p-25f), 0x0001);
    assert_int_equal(duet_f32_to_f16(3 * 0x1p-25f), 0x0002);        /* tie, even up */
    assert_int_equal(duet_f32_to_f16(0x1p-14f - 0x1p-26f), 0x0400); /* rounds up to normal */
    assert_int_equal(duet_f32_to_f16(-0.0f), 0x8000);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_header),
        cmocka_unit_test(test_bad_headers),
        cmocka_unit_test(test_bad_header_length),
        cmocka_unit_test(test_writer_roundtrip_and_truncation),
        cmocka_unit_test(test_checkpoint_sharded),
        cmocka_unit_test(test_checkpoint_real),
        cmocka_unit_test(test_dtypes),
        cmocka_unit_test(test_f16),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
