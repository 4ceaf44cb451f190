/* dbt_utf8.h: peer-chosen names copied as valid UTF-8 only (issue 15). Every class of ill-formed
 * input becomes U+FFFD per maximal subpart (what Python's decode(errors="replace") does), control
 * characters too, and a bounded copy never cuts a character. */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>

#include "dbt_utf8.h"

#define R DBT_UTF8_REPLACEMENT

/* The copy of len bytes of in into a buffer of cap bytes, compared with want; the byte after
 * the terminator must be untouched. */
static void expect_copy(const char *in, size_t len, size_t cap, const char *want)
{
    char buf[300];
    cr_assert_lt(cap, sizeof buf);
    memset(buf, 0x5A, sizeof buf);
    size_t n = dbt_utf8_copy(buf, cap, in, len);
    cr_assert_eq(n, strlen(want), "length %zu, want %zu (\"%s\")", n, strlen(want), want);
    cr_assert_str_eq(buf, want);
    cr_assert_eq((unsigned char)buf[cap], 0x5A, "wrote past cap");
}

static void expect(const char *in, size_t len, const char *want)
{
    expect_copy(in, len, 200, want);
}

/* A checker independent of the decoder: is s (NUL-terminated) well-formed UTF-8 without
 * controls? Written against Table 3-7 directly, by ranges. */
static bool well_formed(const char *s)
{
    const unsigned char *p = (const unsigned char *)s;
    while (*p) {
        unsigned b = *p;
        size_t n;
        unsigned lo = 0x80, hi = 0xBF;
        if (b < 0x20 || b == 0x7F)
            return false;
        if (b < 0x80) {
            p++;
            continue;
        }
        if (b >= 0xC2 && b <= 0xDF)
            n = 2;
        else if (b >= 0xE0 && b <= 0xEF)
            n = 3;
        else if (b >= 0xF0 && b <= 0xF4)
            n = 4;
        else
            return false;
        if (b == 0xE0)
            lo = 0xA0;
        if (b == 0xED)
            hi = 0x9F;
        if (b == 0xF0)
            lo = 0x90;
        if (b == 0xF4)
            hi = 0x8F;
        if (b == 0xC2 && p[1] <= 0x9F)
            return false; /* C1 control */
        for (size_t i = 1; i < n; i++) {
            if (p[i] < lo || p[i] > hi)
                return false;
            lo = 0x80;
            hi = 0xBF;
        }
        p += n;
    }
    return true;
}

Test(utf8, ascii_and_valid_multibyte_kept)
{
    expect("psql", 4, "psql");
    expect("caf\xC3\xA9", 5, "caf\xC3\xA9");           /* é, 2 bytes */
    expect("\xE2\x82\xAC", 3, "\xE2\x82\xAC");         /* €, 3 bytes */
    expect("\xF0\x9F\x98\x80", 4, "\xF0\x9F\x98\x80"); /* 😀, 4 bytes */
    expect("\xEF\xBF\xBD", 3, R);                      /* U+FFFD itself */
    expect("\xF4\x8F\xBF\xBF", 4, "\xF4\x8F\xBF\xBF"); /* U+10FFFF, the last */
    expect("\xED\x9F\xBF", 3, "\xED\x9F\xBF");         /* U+D7FF, below surrogates */
    expect("\xEE\x80\x80", 3, "\xEE\x80\x80");         /* U+E000, above them */
    expect("\xC2\xA0x", 3, "\xC2\xA0x");               /* U+00A0, first after C1 */
    expect("a\\b\"c", 5, "a\\b\"c");                   /* escaping is the writer's */
}

Test(utf8, empty)
{
    expect("", 0, "");
    expect_copy("abc", 3, 1, ""); /* room for the terminator only */
    char buf[1] = {'x'};
    cr_assert_eq(dbt_utf8_copy(buf, 0, "abc", 3), 0);
    cr_assert_eq(buf[0], 'x', "cap 0 writes nothing");
    cr_assert_eq(dbt_utf8_copy_cstr(buf, 1, ""), 0);
    cr_assert_eq(buf[0], '\0');
}

Test(utf8, stray_and_impossible_bytes)
{
    expect("a\xFF"
           "b",
           3, "a" R "b");
    expect("\xFE\xFF", 2, R R);
    expect("\x80", 1, R);                         /* lone continuation byte */
    expect("\x80\xBF\x80", 3, R R R);             /* each stray continuation byte */
    expect("\xF5\x80\x80\x80", 4, R R R R);       /* lead bytes beyond U+10FFFF's range */
    expect("\xF8\x88\x80\x80\x80", 5, R R R R R); /* old 5-byte form */
}

Test(utf8, overlongs)
{
    expect("\xC0\xAF", 2, R R); /* '/' in 2 bytes: C0 and C1 never start a character */
    expect("\xC1\xBF", 2, R R);
    expect("\xE0\x80\xAF", 3, R R R); /* E0 needs A0..BF next */
    expect("\xE0\x9F\xBF", 3, R R R);
    expect("\xF0\x80\x80\xAF", 4, R R R R); /* F0 needs 90..BF next */
    expect("\xF0\x8F\xBF\xBF", 4, R R R R);
}

Test(utf8, surrogates_and_beyond_10ffff)
{
    expect("\xED\xA0\x80", 3, R R R);                   /* U+D800 */
    expect("\xED\xBF\xBF", 3, R R R);                   /* U+DFFF */
    expect("\xED\xA0\xBD\xED\xB8\x80", 6, R R R R R R); /* CESU-8 pair */
    expect("\xF4\x90\x80\x80", 4, R R R R);             /* U+110000 */
}

Test(utf8, truncated_sequences_one_replacement_each)
{
    /* A well-formed prefix cut short is one maximal subpart: one U+FFFD, then what follows. */
    expect("\xE2\x82", 2, R);
    expect("\xE2\x82"
           "A",
           3, R "A");
    expect("\xF0\x9F\x98", 3, R);
    expect("\xF0\x9F\x98"
           "\xF0\x9F\x98\x80",
           7, R "\xF0\x9F\x98\x80");
    expect("\xC3", 1, R);
    expect("x\xC3", 2, "x" R);
    expect("\xE2"
           "\xE2\x82\xAC",
           4, R "\xE2\x82\xAC");
}

Test(utf8, controls_replaced)
{
    expect("a\nb", 3, "a" R "b");
    expect("\x1B[31mred", 8, R "[31mred"); /* a terminal escape cannot reach the log */
    expect("\t\r\x7F", 3, R R R);
    expect("\xC2\x9B"
           "x",
           3, R "x"); /* C1 CSI in its UTF-8 form */
    expect("\xC2\x80\xC2\x9F", 4, R R);
    expect("a\0b", 3, "a" R "b"); /* a NUL from a length-counted field */
}

Test(utf8, cut_on_a_character_boundary)
{
    /* cap 6: 5 bytes of text. "abcd" + € (3 bytes) straddles the cut: € is dropped whole. */
    expect_copy("abcd\xE2\x82\xAC", 7, 6, "abcd");
    expect_copy("abc\xE2\x82\xAC", 6, 6, "abc");
    expect_copy("ab\xE2\x82\xAC", 5, 6, "ab\xE2\x82\xAC"); /* exact fit */
    expect_copy("abcde", 5, 6, "abcde");                   /* exact fit, ASCII */
    expect_copy("abcdef", 6, 6, "abcde");
    expect_copy("a\xF0\x9F\x98\x80", 5, 5, "a"); /* 4-byte character, 3 of room */
    /* A replacement is 3 bytes: it too is left out whole when it does not fit. */
    expect_copy("abc\xFF", 4, 6, "abc");
    expect_copy("ab\xFF", 3, 6, "ab" R);
}

Test(utf8, sixty_three_byte_cut_like_pg_ident)
{
    /* 62 ASCII + a 3-byte character: the PG_IDENT_MAX-sized buffer holds 63 bytes, so the
     * character straddles byte 63 and is dropped; the result is valid and 62 bytes long. */
    char in[80];
    memset(in, 'n', 62);
    memcpy(in + 62, "\xE2\x82\xAC", 3);
    char out[64];
    cr_assert_eq(dbt_utf8_copy(out, sizeof out, in, 65), 62);
    cr_assert(well_formed(out));
    memset(in, 'n', 60);
    memcpy(in + 60, "\xE2\x82\xAC", 3); /* ends exactly at byte 63 */
    cr_assert_eq(dbt_utf8_copy(out, sizeof out, in, 63), 63);
    cr_assert_eq(memcmp(out + 60, "\xE2\x82\xAC", 3), 0);
}

Test(utf8, next_reports_code_points_and_subpart_lengths)
{
    uint32_t cp;
    cr_assert_eq(dbt_utf8_next((const uint8_t *)"\xE2\x82\xAC", 3, &cp), 3);
    cr_assert_eq(cp, 0x20AC);
    cr_assert_eq(dbt_utf8_next((const uint8_t *)"\xF4\x8F\xBF\xBF", 4, &cp), 4);
    cr_assert_eq(cp, 0x10FFFF);
    cr_assert_eq(dbt_utf8_next((const uint8_t *)"\xF0\x9F\x98", 3, &cp), 3);
    cr_assert_eq(cp, DBT_UTF8_INVALID);
    cr_assert_eq(dbt_utf8_next((const uint8_t *)"\xF0\x9F\x41", 3, &cp), 2);
    cr_assert_eq(cp, DBT_UTF8_INVALID);
    /* len bounds the read: the bytes beyond it are never looked at */
    cr_assert_eq(dbt_utf8_next((const uint8_t *)"\xE2\x82\xAC", 2, &cp), 2);
    cr_assert_eq(cp, DBT_UTF8_INVALID);
}

/* Every 1- and 2-byte input, and every 3-byte input over a set of interesting bytes, at every
 * cap: the output is always well-formed, never longer than cap - 1. */
Test(utf8, exhaustive_short_inputs_always_well_formed)
{
    static const uint8_t pick[] = {0x00, 0x1F, 0x20, 0x41, 0x7F, 0x80, 0x8F, 0x90,
                                   0x9F, 0xA0, 0xBF, 0xC0, 0xC1, 0xC2, 0xDF, 0xE0,
                                   0xE1, 0xED, 0xEF, 0xF0, 0xF4, 0xF5, 0xFF};
    char out[16];
    uint8_t in[3];
    for (unsigned a = 0; a < 256; a++)
        for (unsigned b = 0; b < 256; b++) {
            in[0] = (uint8_t)a;
            in[1] = (uint8_t)b;
            for (size_t cap = 1; cap <= 8; cap++) {
                size_t n = dbt_utf8_copy(out, cap, in, 2);
                cr_assert_leq(n, cap - 1);
                cr_assert_eq(strlen(out), n);
                cr_assert(well_formed(out), "%02x %02x cap %zu", a, b, cap);
            }
        }
    for (size_t i = 0; i < sizeof pick; i++)
        for (size_t j = 0; j < sizeof pick; j++)
            for (size_t k = 0; k < sizeof pick; k++) {
                in[0] = pick[i];
                in[1] = pick[j];
                in[2] = pick[k];
                dbt_utf8_copy(out, sizeof out, in, sizeof in);
                cr_assert(well_formed(out), "%02x %02x %02x", in[0], in[1], in[2]);
            }
}
