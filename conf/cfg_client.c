/* The client leg's list values (PROTOCOLS.md part C): client_allow ranges, parsed and matched,
 * and the client_names list.
 * Addresses go through inet_pton only, which takes the strict dotted-quad and RFC 4291 forms:
 * "10.1" or "010.0.0.1" (inet_aton would read them as 10.0.0.1 and octal 8.0.0.1) are refused
 * instead of guessed, since a wrong guess widens who may connect. */
#include "cfg_internal.h"

#include <arpa/inet.h>
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>

/* A SAN dNSName is at most 253 characters; URIs (e.g. SPIFFE IDs) are longer but rarely past
 * this, and a longer entry is more likely a pasted certificate field than a name. */
#define MAX_CLIENT_NAME 255

__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* ---- client_allow ---- */

/* ::ffff:0:0/96 (RFC 4291 2.5.5.2): how a dual-stack socket shows an IPv4 client. */
static bool is_v4_mapped(const uint8_t a[16])
{
    static const uint8_t head[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
    return memcmp(a, head, sizeof head) == 0;
}

/* The byte of a mask of prefix bits at byte index i. */
static uint8_t mask_byte(unsigned prefix, size_t i)
{
    unsigned keep = prefix >= 8 * (i + 1) ? 8 : prefix > 8 * i ? prefix - 8 * (unsigned)i : 0;
    return (uint8_t)(0xff00u >> keep);
}

/* True when a and b agree on their first prefix bits; reads only the bytes those bits cover. */
static bool same_prefix(const uint8_t *a, const uint8_t *b, unsigned prefix)
{
    for (size_t i = 0; 8 * i < prefix; i++) {
        if ((a[i] ^ b[i]) & mask_byte(prefix, i))
            return false;
    }
    return true;
}

/* Digits only, so that "/-1" or "/ 8" are not read as something else. */
static int parse_prefix(const char *s, unsigned max, unsigned *out)
{
    size_t len = strlen(s);
    unsigned v = 0;

    if (len == 0 || len > 3 || strspn(s, "0123456789") != len)
        return -1;
    for (size_t i = 0; i < len; i++)
        v = v * 10 + (unsigned)(s[i] - '0');
    if (v > max)
        return -1;
    *out = v;
    return 0;
}

/* "10.0.0.1/8" most likely is a host pasted where a network was meant, or a typo in the mask;
 * guessing either way could open the listener wider than intended, so say both. */
static int check_host_bits(const char *item, const struct cfg_cidr *c, char *why, size_t n)
{
    uint8_t net[16];
    char text[INET6_ADDRSTRLEN];

    for (size_t i = 0; i < sizeof net; i++)
        net[i] = c->addr[i] & mask_byte(c->prefix, i);
    if (memcmp(net, c->addr, sizeof net) == 0)
        return 0;
    inet_ntop(c->family, net, text, sizeof text);
    return fail(why, n, "%s has host bits set; did you mean %s/%u?", item, text, c->prefix);
}

/* Clients are matched as IPv4 when they come as mapped addresses (cfg_client_allowed), so a
 * mapped range would never match: refuse it and give the IPv4 form. A mapped address with a
 * prefix below 96 has host bits set (the ffff), so check_host_bits caught it already. */
static int check_not_mapped(const char *item, const struct cfg_cidr *c, char *why, size_t n)
{
    char v4[INET_ADDRSTRLEN];

    if (c->family != AF_INET6 || c->prefix < 96 || !is_v4_mapped(c->addr))
        return 0;
    inet_ntop(AF_INET, c->addr + 12, v4, sizeof v4);
    return fail(why, n,
                "%s is an IPv4-mapped range; write it as %s/%u (clients are matched as IPv4)", item,
                v4, c->prefix - 96);
}

static int parse_cidr(const char *item, struct cfg_cidr *out, char *why, size_t n)
{
    const char *slash = strchr(item, '/');
    size_t len = slash ? (size_t)(slash - item) : strlen(item);
    char text[INET6_ADDRSTRLEN];
    unsigned max;

    memset(out, 0, sizeof *out);
    out->family = memchr(item, ':', len) ? AF_INET6 : AF_INET;
    max = out->family == AF_INET ? 32 : 128;
    if (len >= sizeof text)
        len = sizeof text - 1; /* too long for an address: inet_pton refuses the cut copy */
    memcpy(text, item, len);
    text[len] = '\0';
    if (inet_pton(out->family, text, out->addr) != 1)
        return fail(why, n, "invalid address '%s' (use e.g. 10.0.0.0/8, 192.0.2.7 or fd00::/8)",
                    item);
    out->prefix = max;
    if (slash && parse_prefix(slash + 1, max, &out->prefix) != 0)
        return fail(why, n, "invalid prefix length in '%s' (0-%u for %s)", item, max,
                    out->family == AF_INET ? "IPv4" : "IPv6");
    if (check_host_bits(item, out, why, n) != 0)
        return -1;
    return check_not_mapped(item, out, why, n);
}

struct allow_list {
    struct cfg_cidr *out;
    size_t count;
    char *why;
    size_t n;
};

static int add_allow(const char *item, void *arg)
{
    struct allow_list *a = arg;

    if (*item == '\0')
        return fail(a->why, a->n, "empty entry in client_allow list");
    if (a->count == CFG_MAX_CLIENT_ALLOW)
        return fail(a->why, a->n, "too many client_allow entries (max %d)", CFG_MAX_CLIENT_ALLOW);
    if (parse_cidr(item, &a->out[a->count], a->why, a->n) != 0)
        return -1;
    a->count++;
    return 0;
}

int cfg_value_client_allow(const char *s, struct cfg_cidr *out, size_t *count, char *why, size_t n)
{
    struct allow_list a = {out, 0, why, n};
    int rc = cfg_each_item(s, add_allow, &a);

    if (rc == -2)
        return fail(why, n, "client_allow list too long");
    if (rc != 0)
        return -1;
    *count = a.count;
    return 0;
}

bool cfg_client_allowed(const struct cfg_listener *l, int family, const uint8_t *addr)
{
    if (l->client_allow_count == 0)
        return true;
    if (family == AF_INET6 && is_v4_mapped(addr)) {
        family = AF_INET;
        addr += 12;
    }
    for (size_t i = 0; i < l->client_allow_count; i++) {
        const struct cfg_cidr *r = &l->client_allow[i];
        if (r->family == family && same_prefix(r->addr, addr, r->prefix))
            return true;
    }
    return false;
}

/* ---- client_names ---- */

/* A SAN dNSName: labels of letters, digits, '-' and '_' (seen in internal DNS). No wildcard:
 * an entry is a name a client certificate carries, not a pattern. */
static bool valid_dns_name(const char *s)
{
    size_t label = 0, len = strlen(s);

    if (len == 0 || len > 253)
        return false;
    for (const char *p = s; *p; p++) {
        if (*p == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (strchr("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", *p)) {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return label > 0;
}

/* RFC 3986: scheme ":" rest, scheme = ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ); the rest
 * printable ASCII without blanks (a SAN URI is an IA5String). */
static bool valid_uri(const char *s)
{
    static const char alpha[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    size_t scheme = strcspn(s, ":");

    if (scheme == 0 || s[scheme] != ':' || s[scheme + 1] == '\0' || !strchr(alpha, s[0]))
        return false;
    for (size_t i = 1; i < scheme; i++) {
        if (!strchr(alpha, s[i]) && !strchr("0123456789+-.", s[i]))
            return false;
    }
    for (const char *p = s + scheme + 1; *p; p++) {
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return false;
    }
    return true;
}

/* A subject CN may hold blanks and UTF-8, but no control characters (it ends up in log lines),
 * and no blank next to "CN=": "CN= batch" would never match "batch". */
static bool valid_cn(const char *cn)
{
    if (*cn == '\0' || *cn == ' ' || *cn == '\t')
        return false;
    for (const char *p = cn; *p; p++) {
        if ((unsigned char)*p < 0x20 || (unsigned char)*p == 0x7f)
            return false;
    }
    return true;
}

/* "db.internal:5432" is a valid URI by RFC 3986 (scheme "db.internal"), but surely a pasted
 * address. One colon, a dot before it, digits after: "urn:isbn:0451450523" still passes. */
static bool looks_like_host_port(const char *s)
{
    const char *colon = strchr(s, ':');

    if (!colon || strchr(colon + 1, ':') || !memchr(s, '.', (size_t)(colon - s)))
        return false;
    return colon[1] != '\0' && strspn(colon + 1, "0123456789") == strlen(colon + 1);
}

struct name_check {
    char *why;
    size_t n;
};

static int check_client_name(const char *item, void *arg)
{
    struct name_check *nc = arg;

    if (*item == '\0')
        return fail(nc->why, nc->n, "empty entry in client_names list");
    if (strlen(item) > MAX_CLIENT_NAME)
        return fail(nc->why, nc->n, "client name '%.32s...' too long (max %d characters)", item,
                    MAX_CLIENT_NAME);
    if (strncmp(item, "CN=", 3) == 0) {
        if (valid_cn(item + 3))
            return 0;
        return fail(nc->why, nc->n,
                    "invalid client name '%s' (use CN=NAME: the name right after '=', no control "
                    "characters)",
                    item);
    }
    /* tlsw_server_opts takes the subject CN from "CN=x" only; "cn=x" would be read as a DNS
     * name and never match. */
    if (strncasecmp(item, "CN=", 3) == 0)
        return fail(nc->why, nc->n, "invalid client name '%s' (write CN= in capitals)", item);
    if (looks_like_host_port(item))
        return fail(nc->why, nc->n,
                    "invalid client name '%s' (a certificate name has no port; use the name)",
                    item);
    if (strchr(item, ':') ? valid_uri(item) : valid_dns_name(item))
        return 0;
    return fail(nc->why, nc->n,
                "invalid client name '%s' (use CN=NAME, a DNS name or a URI, without blanks)",
                item);
}

int cfg_value_client_names(const char *s, char *why, size_t n)
{
    struct name_check nc = {why, n};
    int rc = cfg_each_item(s, check_client_name, &nc);

    if (rc == -2)
        return fail(why, n, "client_names list too long");
    return rc == 0 ? 0 : -1;
}
