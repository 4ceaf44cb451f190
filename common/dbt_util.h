/* Tiny helpers shared by every module. Keep this file small. */
#ifndef DBT_UTIL_H
#define DBT_UTIL_H

#include <stddef.h>
#include <string.h>

#define DBT_MUST_USE     __attribute__((warn_unused_result))
#define DBT_ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Zeroes memory in a way the compiler may not elide (password material). */
static inline void dbt_wipe(void *p, size_t n)
{
    volatile unsigned char *v = p;
    while (n--)
        *v++ = 0;
}

/* snprintf-style copy that always terminates and never overflows. */
static inline void dbt_strlcpy(char *dst, const char *src, size_t cap)
{
    if (cap == 0)
        return;
    size_t n = strlen(src);
    if (n >= cap)
        n = cap - 1;
    memcpy(dst, src, n);
    dst[n] = '\0';
}

#endif
