/* Shared by the model loader tests: a per-test temporary directory
 * (cmocka group setup/teardown) and a check that the thread's error detail
 * names everything it should. Include after <cmocka.h>; define
 * TMPDIR_PREFIX before including. */
#ifndef DUET_TESTS_MODEL_TMPDIR_H
#define DUET_TESTS_MODEL_TMPDIR_H

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"

static char tmpdir[64];

static int setup(void **state)
{
    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/" TMPDIR_PREFIX "-XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static void rm_tree(const char *dir)
{
    DIR *d = opendir(dir);
    if (!d)
        return;
    struct dirent *e;
    char path[512];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (e->d_type == DT_DIR)
            rm_tree(path);
        else
            unlink(path);
    }
    closedir(d);
    rmdir(dir);
}

static int teardown(void **state)
{
    (void)state;
    rm_tree(tmpdir);
    return 0;
}

static void assert_detail(const char *first, ...)
{
    const char *d = duet_error();
    va_list ap;
    va_start(ap, first);
    for (const char *s = first; s; s = va_arg(ap, const char *))
        if (!strstr(d, s))
            fail_msg("error detail \"%s\" does not mention \"%s\"", d, s);
    va_end(ap);
}

#endif
