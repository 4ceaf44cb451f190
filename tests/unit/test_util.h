/* What several unit test executables need: a leak check Criterion cannot overlook, and a fresh
 * temporary directory per test. Header-only: each tests/unit/test_*.c is its own executable. */
#ifndef TEST_UTIL_H
#define TEST_UTIL_H

#include <criterion/criterion.h>

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/lsan_interface.h>
#endif

/* For a suite's .fini. Criterion ignores LSan's exit-time report and failed asserts in .fini, so
 * a leak is made a crash here, while the test runs: every object a test made must be gone. */
static inline void leak_check(void)
{
#if defined(__SANITIZE_ADDRESS__)
    if (__lsan_do_recoverable_leak_check() != 0)
        abort();
#endif
}

/* The running test's directory: tmpdir_make() in the suite's .init, tmpdir_remove() in its
 * .fini. (Unused in the executables that need no files.) */
static char tmpdir[64] __attribute__((unused));

/* Makes a new /tmp/dbtrust-<name>-XXXXXX. */
static inline void tmpdir_make(const char *name)
{
    cr_assert_lt(snprintf(tmpdir, sizeof(tmpdir), "/tmp/dbtrust-%s-XXXXXX", name),
                 (int)sizeof(tmpdir));
    cr_assert_not_null(mkdtemp(tmpdir));
}

/* Removes tmpdir with the files, and the empty directories, a test left in it. */
static inline void tmpdir_remove(void)
{
    DIR *d = opendir(tmpdir);
    struct dirent *e;
    char p[512];
    while (d != NULL && (e = readdir(d)) != NULL) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
            continue;
        snprintf(p, sizeof(p), "%s/%s", tmpdir, e->d_name);
        if (unlink(p) != 0)
            rmdir(p);
    }
    if (d != NULL)
        closedir(d);
    rmdir(tmpdir);
}

/* tmpdir/name, written into buf. */
static inline const char *tmp_path(char *buf, size_t cap, const char *name)
{
    snprintf(buf, cap, "%s/%s", tmpdir, name);
    return buf;
}

#endif
