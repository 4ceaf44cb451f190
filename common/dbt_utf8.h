/* Text that peers choose (application_name, program_name, user and database names, certificate
 * subjects) made safe to show: valid UTF-8 only, no control characters. Such text ends up in
 * log lines and in Prometheus label values, and Prometheus rejects a whole scrape over one
 * label that is not UTF-8; a terminal reading the log would obey C0/C1 control codes.
 *
 * Policy, the same everywhere:
 *  - well-formed characters (Unicode Table 3-7: no overlongs, no surrogates, nothing above
 *    U+10FFFF) are kept as they are;
 *  - each ill-formed part becomes one U+FFFD REPLACEMENT CHARACTER: a "maximal subpart" (the
 *    longest prefix of a well-formed sequence, else one byte), as Unicode recommends and as
 *    Python's bytes.decode("utf-8", "replace") does - a stray continuation byte, 0xC0, 0xFF,
 *    an overlong or surrogate lead, a sequence cut short by the end of the input;
 *  - control characters (U+0000-U+001F, U+007F, U+0080-U+009F) become U+FFFD too;
 *  - a bounded copy ends on a character boundary: a character (or a U+FFFD) that does not fit
 *    whole is left out, never cut. */
#ifndef DBT_UTF8_H
#define DBT_UTF8_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define DBT_UTF8_INVALID     0xFFFFFFFFu    /* dbt_utf8_next: the bytes are not a character */
#define DBT_UTF8_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD, 3 bytes */

/* Decodes the character at p (len >= 1 bytes available). Returns how many bytes it spans (1-4)
 * and sets *cp to its code point, or to DBT_UTF8_INVALID with the length of the ill-formed
 * maximal subpart (at least 1) to skip. */
static inline size_t dbt_utf8_next(const uint8_t *p, size_t len, uint32_t *cp)
{
    uint8_t b = p[0];
    size_t need;
    uint32_t v;
    uint8_t lo = 0x80, hi = 0xBF; /* allowed range of the second byte */

    if (b < 0x80) {
        *cp = b;
        return 1;
    }
    if (b >= 0xC2 && b <= 0xDF) {
        need = 2;
        v = b & 0x1Fu;
    } else if (b >= 0xE0 && b <= 0xEF) {
        need = 3;
        v = b & 0x0Fu;
        if (b == 0xE0)
            lo = 0xA0; /* below: overlong */
        else if (b == 0xED)
            hi = 0x9F; /* above: UTF-16 surrogates */
    } else if (b >= 0xF0 && b <= 0xF4) {
        need = 4;
        v = b & 0x07u;
        if (b == 0xF0)
            lo = 0x90; /* below: overlong */
        else if (b == 0xF4)
            hi = 0x8F; /* above: beyond U+10FFFF */
    } else {
        *cp = DBT_UTF8_INVALID; /* continuation byte, 0xC0/0xC1 (overlong), 0xF5-0xFF */
        return 1;
    }
    for (size_t i = 1; i < need; i++) {
        if (i >= len || p[i] < lo || p[i] > hi) {
            *cp = DBT_UTF8_INVALID; /* the prefix read so far is one maximal subpart */
            return i;
        }
        v = v << 6 | (p[i] & 0x3Fu);
        lo = 0x80;
        hi = 0xBF;
    }
    *cp = v;
    return need;
}

/* A character the policy above keeps out of shown text. */
static inline bool dbt_utf8_is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7F && cp <= 0x9F);
}

/* Copies len bytes of src into dst (cap bytes, always NUL-terminated when cap > 0) following the
 * policy above. Returns the length written, without the NUL. A NUL in src counts as a control
 * character, so the result is one C string. */
static inline size_t dbt_utf8_copy(char *dst, size_t cap, const void *src, size_t len)
{
    const uint8_t *p = src;
    size_t out = 0;

    if (cap == 0)
        return 0;
    while (len > 0) {
        uint32_t cp;
        size_t n = dbt_utf8_next(p, len, &cp);
        bool keep = cp != DBT_UTF8_INVALID && !dbt_utf8_is_control(cp);
        const char *bytes = keep ? (const char *)p : DBT_UTF8_REPLACEMENT;
        size_t blen = keep ? n : sizeof(DBT_UTF8_REPLACEMENT) - 1;
        if (blen > cap - 1 - out)
            break; /* whole characters only */
        memcpy(dst + out, bytes, blen);
        out += blen;
        p += n;
        len -= n;
    }
    dst[out] = '\0';
    return out;
}

/* dbt_utf8_copy of a C string. */
static inline size_t dbt_utf8_copy_cstr(char *dst, size_t cap, const char *src)
{
    return dbt_utf8_copy(dst, cap, src, strlen(src));
}

#endif
