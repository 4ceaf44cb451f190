/* The text outside the PEM blocks of a bundle file, for `dbtrust bundle inspect|merge`: where
 * OpenSSL's reader found a block, and whether what it skipped before it is harmless.
 *
 * OpenSSL's PEM reader silently skips every line before a BEGIN line. That is right for the
 * comments real bundles carry ("# Subject:", curl's title lines, `openssl x509 -text` dumps),
 * but it also skips a certificate whose BEGIN line was mangled in a copy-paste: the bundle then
 * loads without it and the rotation breaks later. Skipped text is therefore classified line by
 * line; this looks only at what OpenSSL skipped and never decodes anything itself. */
#define TLSW_INTERNAL
#include "tlsw_bundle_internal.h"

#include <string.h>

enum text_problem { TEXT_OK, TEXT_BINARY, TEXT_ARMOR, TEXT_BASE64 };

static const char *const text_problem_desc[] = {
    [TEXT_OK] = "",
    [TEXT_BINARY] = "binary data (a DER file? convert it with `openssl x509 -inform der`)",
    [TEXT_ARMOR] = "a stray or malformed BEGIN/END line (a broken PEM block?)",
    [TEXT_BASE64] = "base64 data outside a PEM block (a block without its BEGIN line?)",
};

static bool contains(const unsigned char *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    for (size_t i = 0; i + m <= n; i++)
        if (memcmp(s + i, needle, m) == 0)
            return true;
    return false;
}

/* The length of the line s[0, n) without its trailing blanks and CR. */
static size_t trimmed_len(const unsigned char *s, size_t n)
{
    while (n > 0 && (s[n - 1] == '\r' || s[n - 1] == ' ' || s[n - 1] == '\t'))
        n--;
    return n;
}

/* A line of a PEM body: long, only base64 characters, '=' padding at the end only. Hex
 * fingerprints (also long runs of "base64" characters) are common in bundle comments, so a line
 * of hex digits alone does not count. */
static bool looks_like_base64(const unsigned char *s, size_t n)
{
    size_t pad = 0;
    bool only_hex = true;
    if (n < 32)
        return false;
    while (pad < 2 && pad < n && s[n - 1 - pad] == '=')
        pad++;
    for (size_t i = 0; i < n - pad; i++) {
        unsigned char c = s[i];
        bool b64 = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '+' || c == '/';
        if (!b64)
            return false;
        if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')))
            only_hex = false;
    }
    return !only_hex;
}

static enum text_problem classify_line(const unsigned char *s, size_t n)
{
    n = trimmed_len(s, n);
    for (size_t i = 0; i < n; i++)
        if ((s[i] < 0x20 && s[i] != '\t' && s[i] != '\f' && s[i] != '\v') || s[i] == 0x7f)
            return TEXT_BINARY;
    if (n > 0 && s[0] == '#')
        return TEXT_OK; /* a comment, even a commented-out PEM block */
    /* Any dash run next to BEGIN/END: "----BEGIN ...", "-----END CERTIFICATE----", a stray
     * END line. Plain separator lines of dashes are fine. */
    if (contains(s, n, "---") && (contains(s, n, "BEGIN") || contains(s, n, "END")))
        return TEXT_ARMOR;
    return looks_like_base64(s, n) ? TEXT_BASE64 : TEXT_OK;
}

static size_t line_end(const unsigned char *data, size_t from, size_t to)
{
    const unsigned char *nl = memchr(data + from, '\n', to - from);
    return nl != NULL ? (size_t)(nl - data) : to;
}

/* A UTF-8 byte order mark at the start of the file, which OpenSSL skips too. */
static size_t bom_len(const unsigned char *data, size_t off, size_t to)
{
    return off == 0 && to >= 3 && memcmp(data, "\xEF\xBB\xBF", 3) == 0 ? 3 : 0;
}

/* A BEGIN line as OpenSSL sees one: "-----BEGIN " at the start, "-----" at the end before
 * trailing blanks. */
size_t tlsw_bundle_find_begin(const unsigned char *data, size_t from, size_t to)
{
    for (size_t off = from; off < to;) {
        size_t end = line_end(data, off, to);
        size_t s = off + bom_len(data, off, to), e = s + trimmed_len(data + s, end - s);
        if (e - s >= 16 && memcmp(data + s, "-----BEGIN ", 11) == 0 &&
            memcmp(data + e - 5, "-----", 5) == 0)
            return off;
        off = end + 1;
    }
    return to;
}

const char *tlsw_bundle_check_text(const unsigned char *data, size_t from, size_t to,
                                   size_t *bad_line)
{
    for (size_t off = from; off < to;) {
        size_t end = line_end(data, off, to);
        size_t s = off + bom_len(data, off, to);
        enum text_problem p = classify_line(data + s, end - s);
        if (p != TEXT_OK) {
            *bad_line = off;
            return text_problem_desc[p];
        }
        off = end + 1;
    }
    return NULL;
}
