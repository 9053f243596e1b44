/* Tests for base/: error detail, buffers, the string map, file mapping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "base/base.h"

static void test_error_detail(void **state)
{
    (void)state;
    duet_error_clear();
    assert_string_equal(duet_error(), "");
    duet_status_t st = duet_errorf(DUET_ERR_INVALID, "%s: key %s", "a.json", "x");
    assert_int_equal(st, DUET_ERR_INVALID);
    assert_string_equal(duet_error(), "a.json: key x");
    duet_error_wrap(st, "loading %s", "model");
    assert_string_equal(duet_error(), "loading model: a.json: key x");
    assert_string_equal(duet_status_str(DUET_ERR_CAPACITY), "capacity exhausted");
}

static void test_buf(void **state)
{
    (void)state;
    duet_buf_t b = {0};
    for (int i = 0; i < 1000; i++)
        assert_int_equal(duet_buf_printf(&b, "%d,", i), DUET_OK);
    assert_int_equal(b.data[b.len], '\0');
    assert_memory_equal(b.data, "0,1,2,", 6);
    assert_int_equal(b.len, strlen((char *)b.data));
    assert_int_equal(duet_buf_append(&b, "\0x", 2), DUET_OK);
    assert_int_equal(b.data[b.len - 1], 'x');
    duet_buf_cleanup(&b);
    assert_null(b.data);
}

static void test_strmap(void **state)
{
    (void)state;
    duet_strmap_t *m = duet_strmap_create(4);
    assert_non_null(m);
    char key[32];
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof(key), "k%d", i);
        assert_int_equal(duet_strmap_put(m, key, (size_t)n, i * 3), DUET_OK);
    }
    assert_int_equal(duet_strmap_count(m), 5000);
    for (int i = 0; i < 5000; i++) {
        int n = snprintf(key, sizeof(key), "k%d", i);
        int64_t v = -1;
        assert_true(duet_strmap_get(m, key, (size_t)n, &v));
        assert_int_equal(v, i * 3);
    }
    assert_false(duet_strmap_get(m, "k5000", 5, NULL));
    /* keys with embedded NUL are distinct from their prefix */
    assert_int_equal(duet_strmap_put(m, "a\0b", 3, 7), DUET_OK);
    assert_false(duet_strmap_get(m, "a", 1, NULL));
    int64_t v = 0;
    assert_true(duet_strmap_get(m, "a\0b", 3, &v));
    assert_int_equal(v, 7);
    duet_strmap_destroy(&m);
    assert_null(m);
    duet_strmap_destroy(&m); /* NULL is accepted */
}

static void test_file_map(void **state)
{
    (void)state;
    char path[] = "/tmp/duet_test_base_XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "hello", 5), 5);
    close(fd);
    duet_file_map_t m = {0};
    assert_int_equal(duet_file_map_open(path, &m), DUET_OK);
    assert_int_equal(m.size, 5);
    assert_memory_equal(m.data, "hello", 5);
    duet_file_map_close(&m);
    char *data = NULL;
    size_t len = 0;
    assert_int_equal(duet_file_read_all(path, 100, &data, &len), DUET_OK);
    assert_int_equal(len, 5);
    assert_string_equal(data, "hello");
    free(data);
    assert_int_equal(duet_file_read_all(path, 4, &data, &len), DUET_ERR_RANGE);
    assert_non_null(strstr(duet_error(), path));
    unlink(path);
    assert_int_equal(duet_file_map_open(path, &m), DUET_ERR_IO);
    assert_non_null(strstr(duet_error(), "cannot open"));
}

static void test_vec_overflow(void **state)
{
    (void)state;
    void *p = NULL;
    size_t cap = 0;
    assert_int_equal(duet_vec_reserve(&p, &cap, SIZE_MAX / 2, 16), DUET_ERR_NOMEM);
    assert_int_equal(duet_vec_reserve(&p, &cap, 10, 16), DUET_OK);
    assert_true(cap >= 10);
    free(p);
    size_t out;
    assert_true(duet_mul_overflow(SIZE_MAX, 2, &out));
    assert_null(duet_calloc(SIZE_MAX, 2));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_error_detail), cmocka_unit_test(test_buf),
        cmocka_unit_test(test_strmap),       cmocka_unit_test(test_file_map),
        cmocka_unit_test(test_vec_overflow),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
