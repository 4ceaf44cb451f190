/* Value parsers: durations, numbers, booleans, choices, addresses, names, pins. Strict on purpose:
 * a typo in a sidecar's config must stop it at start, not surface as a timeout in production. */
#include "cfg_internal.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <strings.h>
#include <sys/un.h>

__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t n, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, n, fmt, ap);
    va_end(ap);
    return -1;
}

/* Digits only: no sign, no spaces, no hex, so "-1" or " 5" never wrap around silently. */
static int parse_digits(const char *s, size_t len, uint64_t *out)
{
    uint64_t v = 0;
    if (len == 0 || len > 12)
        return -1;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    *out = v;
    return 0;
}

int cfg_value_duration(const char *s, uint32_t *out_ms, char *why, size_t n)
{
    static const struct {
        const char *unit;
        uint64_t ms;
    } units[] = {{"", 1000}, {"ms", 1}, {"s", 1000}, {"m", 60000}, {"h", 3600000}};
    size_t digits = strspn(s, "0123456789");
    uint64_t v;

    if (parse_digits(s, digits, &v) == 0) {
        for (size_t i = 0; i < DBT_ARRAY_LEN(units); i++) {
            if (strcmp(s + digits, units[i].unit) != 0)
                continue;
            if (v > UINT32_MAX / units[i].ms)
                return fail(why, n, "duration '%s' out of range (max 1193h)", s);
            *out_ms = (uint32_t)(v * units[i].ms);
            return 0;
        }
    }
    return fail(why, n, "invalid duration '%s' (use e.g. 5s, 500ms)", s);
}

int cfg_parse_duration_ms(const char *s, uint32_t *out_ms)
{
    char why[16];
    return cfg_value_duration(s, out_ms, why, sizeof why);
}

int cfg_value_bool(const char *s, bool *out, char *why, size_t n)
{
    static const char *const yes[] = {"on", "true", "yes", "1"};
    static const char *const no[] = {"off", "false", "no", "0"};

    for (size_t i = 0; i < DBT_ARRAY_LEN(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0 || strcasecmp(s, no[i]) == 0) {
            *out = strcasecmp(s, yes[i]) == 0;
            return 0;
        }
    }
    return fail(why, n, "invalid boolean '%s' (use on/off, true/false, yes/no, 1/0)", s);
}

int cfg_value_size(const char *s, int64_t *out, char *why, size_t n)
{
    static const struct {
        const char *suffix;
        unsigned shift;
    } units[] = {{"KiB", 10}, {"MiB", 20}, {"GiB", 30}, {"K", 10}, {"M", 20}, {"G", 30}};
    if (strcmp(s, "off") == 0) {
        *out = 0;
        return 0;
    }
    size_t len = strlen(s), digits = strspn(s, "0123456789");
    unsigned shift = 0;
    if (digits < len) {
        size_t i = 0;
        while (i < DBT_ARRAY_LEN(units) && strcmp(s + digits, units[i].suffix) != 0)
            i++;
        if (i == DBT_ARRAY_LEN(units))
            return fail(why, n, "invalid size '%s' (use e.g. 256MiB, 1GiB, or off)", s);
        shift = units[i].shift;
    }
    uint64_t v;
    if (digits == 0 || parse_digits(s, digits, &v) != 0 || v > (UINT64_C(1) << 40) >> shift)
        return fail(why, n, "invalid size '%s' (use e.g. 256MiB, 1GiB, or off)", s);
    v <<= shift;
    /* Below this the process itself (worker buffers, OpenSSL) would already be over it. */
    if (v != 0 && v < (UINT64_C(16) << 20))
        return fail(why, n, "%s is too small (at least 16MiB, or off)", s);
    *out = (int64_t)v;
    return 0;
}

int cfg_value_uint(const char *s, uint32_t min, uint32_t max, uint32_t *out, char *why, size_t n)
{
    uint64_t v;
    if (parse_digits(s, strlen(s), &v) != 0)
        return fail(why, n, "invalid number '%s'", s);
    if (v < min || v > max)
        return fail(why, n, "%s is out of range (%u-%u)", s, (unsigned)min, (unsigned)max);
    *out = (uint32_t)v;
    return 0;
}

int cfg_value_choice(const char *s, const struct cfg_choice *choices, const char *what, int *out,
                     char *why, size_t n)
{
    char list[256] = "";
    size_t used = 0;

    for (const struct cfg_choice *c = choices; c->name; c++) {
        if (strcasecmp(s, c->name) == 0) {
            *out = c->value;
            return 0;
        }
    }
    /* List each value once: aliases ("postgresql") are accepted but not advertised. */
    for (const struct cfg_choice *c = choices; c->name; c++) {
        bool alias = false;
        for (const struct cfg_choice *p = choices; p < c; p++)
            alias = alias || p->value == c->value;
        if (!alias && used < sizeof list)
            used += (size_t)snprintf(list + used, sizeof list - used, "%s%s", used ? " or " : "",
                                     c->name);
    }
    return fail(why, n, "invalid %s '%s' (use %s)", what, s, list);
}

/* RFC 1123 host names plus '_' (seen in internal DNS); an all-numeric name must be valid IPv4,
 * so that "10.0.0.256" is caught here instead of becoming a DNS lookup. */
static bool valid_host(const char *h, size_t len)
{
    unsigned char v6[16];
    char tmp[256];
    size_t label = 0;

    if (len == 0 || len >= sizeof tmp)
        return false;
    memcpy(tmp, h, len);
    tmp[len] = '\0';
    if (strspn(tmp, "0123456789.") == len)
        return inet_pton(AF_INET, tmp, v6) == 1;
    if (strchr(tmp, ':'))
        return inet_pton(AF_INET6, tmp, v6) == 1;
    for (size_t i = 0; i < len; i++) {
        unsigned char ch = (unsigned char)tmp[i];
        if (ch == '.') {
            if (label == 0)
                return false;
            label = 0;
        } else if (isalnum(ch) || ch == '-' || ch == '_') {
            if (++label > 63)
                return false;
        } else {
            return false;
        }
    }
    return len <= 253;
}

static int parse_port(const char *s, uint16_t *out)
{
    uint64_t v;
    if (parse_digits(s, strlen(s), &v) != 0 || v < 1 || v > 65535)
        return -1;
    *out = (uint16_t)v;
    return 0;
}

static int parse_unix(const char *s, unsigned flags, struct cfg_addr *out, char *why, size_t n)
{
    const char *path = s + strlen("unix:");
    if (!(flags & CFG_ADDR_UNIX))
        return fail(why, n, "invalid address '%s': unix sockets are only for listen", s);
    if (path[0] != '/')
        return fail(why, n, "invalid address '%s': unix socket path must be absolute", s);
    /* sockaddr_un.sun_path is 108 bytes on Linux: a longer path would only fail at bind time. */
    if (strlen(path) >= sizeof(((struct sockaddr_un *)0)->sun_path))
        return fail(why, n, "invalid address '%s': unix socket path too long (max %zu)", s,
                    sizeof(((struct sockaddr_un *)0)->sun_path) - 1);
    dbt_strlcpy(out->host, path, sizeof out->host);
    out->is_unix = true;
    return 0;
}

int cfg_value_addr(const char *s, unsigned flags, struct cfg_addr *out, char *why, size_t n)
{
    const char *host = s, *port = NULL;
    size_t hlen;

    memset(out, 0, sizeof *out);
    if (strncmp(s, "unix:", 5) == 0)
        return parse_unix(s, flags, out, why, n);
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        unsigned char v6[16];
        if (!close)
            return fail(why, n, "invalid address '%s': missing ']'", s);
        host = s + 1;
        hlen = (size_t)(close - host);
        if (close[1] == ':')
            port = close + 2;
        else if (close[1] != '\0')
            return fail(why, n, "invalid address '%s': expected ':' after ']'", s);
        if (hlen == 0 || hlen >= sizeof out->host)
            return fail(why, n, "invalid address '%s': invalid IPv6 address", s);
        memcpy(out->host, host, hlen);
        if (inet_pton(AF_INET6, out->host, v6) != 1)
            return fail(why, n, "invalid address '%s': invalid IPv6 address", s);
    } else {
        const char *colon = strrchr(s, ':');
        if (colon && strchr(s, ':') != colon)
            return fail(why, n, "invalid address '%s': IPv6 needs brackets, e.g. [::1]:5432", s);
        hlen = colon ? (size_t)(colon - s) : strlen(s);
        port = colon ? colon + 1 : NULL;
        if (hlen == 0)
            return fail(why, n, "invalid address '%s': missing host (use host:port)", s);
        if (!valid_host(s, hlen))
            return fail(why, n, "invalid address '%s': invalid host name or IP", s);
        memcpy(out->host, s, hlen);
    }
    if (!port) {
        if (flags & CFG_ADDR_PORT_OPTIONAL)
            return 0;
        return fail(why, n, "invalid address '%s': missing port (use host:port)", s);
    }
    if (parse_port(port, &out->port) != 0)
        return fail(why, n, "invalid address '%s': invalid port (1-65535)", s);
    return 0;
}

int cfg_parse_addr(const char *s, bool allow_unix, uint16_t default_port, struct cfg_addr *out)
{
    char why[16];
    unsigned flags = (allow_unix ? CFG_ADDR_UNIX : 0) | (default_port ? CFG_ADDR_PORT_OPTIONAL : 0);
    if (cfg_value_addr(s, flags, out, why, sizeof why) != 0)
        return -1;
    if (!out->is_unix && out->port == 0)
        out->port = default_port;
    return 0;
}

void cfg_addr_format(const struct cfg_addr *a, char *buf, size_t n)
{
    if (a->is_unix)
        snprintf(buf, n, "unix:%s", a->host);
    else if (strchr(a->host, ':'))
        snprintf(buf, n, "[%s]:%u", a->host, (unsigned)a->port);
    else
        snprintf(buf, n, "%s:%u", a->host, (unsigned)a->port);
}

/* Works in a scratch copy of s, so that items can be terminated in place. */
int cfg_each_item(const char *s, int (*each)(const char *item, void *arg), void *arg)
{
    char tmp[4096];
    char *p = tmp;

    if (strlen(s) >= sizeof tmp)
        return -2;
    dbt_strlcpy(tmp, s, sizeof tmp);
    for (;;) {
        char *comma = strchr(p, ',');
        char *end = comma ? comma : p + strlen(p);
        while (p < end && isspace((unsigned char)*p))
            p++;
        while (end > p && isspace((unsigned char)end[-1]))
            end--;
        *end = '\0';
        int rc = each(p, arg);
        if (rc != 0)
            return rc;
        if (!comma)
            return 0;
        p = comma + 1;
    }
}

struct upstream_list {
    struct cfg_addr *out;
    size_t count;
    char *why;
    size_t n;
};

static int add_upstream(const char *item, void *arg)
{
    struct upstream_list *u = arg;
    if (*item == '\0')
        return fail(u->why, u->n, "empty entry in upstream list");
    if (u->count == CFG_MAX_UPSTREAMS)
        return fail(u->why, u->n, "too many upstreams (max %d)", CFG_MAX_UPSTREAMS);
    if (cfg_value_addr(item, CFG_ADDR_PORT_OPTIONAL, &u->out[u->count], u->why, u->n) != 0)
        return -1;
    u->count++;
    return 0;
}

int cfg_value_upstreams(const char *s, struct cfg_addr *out, size_t *count, char *why, size_t n)
{
    struct upstream_list u = {out, 0, why, n};
    int rc = cfg_each_item(s, add_upstream, &u);
    if (rc == -2)
        return fail(why, n, "upstream list too long");
    if (rc != 0)
        return -1;
    *count = u.count;
    return 0;
}

int cfg_value_host(const char *s, char *why, size_t n)
{
    if (!valid_host(s, strlen(s)))
        return fail(why, n, "invalid host name or IP '%s'", s);
    return 0;
}

struct pin_check {
    char *why;
    size_t n;
};

static int check_pin(const char *item, void *arg)
{
    static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    struct pin_check *pc = arg;
    const char *d = item + strlen("sha256/");

    /* 32 bytes of SHA-256 are 43 base64 characters and one '=' of padding. */
    if (strncmp(item, "sha256/", 7) != 0 || strlen(d) != 44 || strspn(d, b64) != 43 || d[43] != '=')
        return fail(pc->why, pc->n, "invalid pin '%s' (use sha256/BASE64 of the SPKI digest)",
                    item);
    return 0;
}

int cfg_value_pins(const char *s, char *why, size_t n)
{
    struct pin_check pc = {why, n};
    int rc = cfg_each_item(s, check_pin, &pc);
    if (rc == -2)
        return fail(why, n, "pin list too long");
    return rc == 0 ? 0 : -1;
}

static bool only_name_chars(const char *s)
{
    return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-") ==
           strlen(s);
}

int cfg_value_name(const char *s, char *why, size_t n)
{
    size_t len = strlen(s);
    if (len == 0 || len > 63 || !only_name_chars(s))
        return fail(why, n, "invalid listener name '%s' (1-63 of A-Z a-z 0-9 _ . -)", s);
    return 0;
}

int cfg_value_user(const char *s, char *why, size_t n)
{
    size_t len = strlen(s);
    /* A leading '-' would read as an option to tools that get the name later. */
    if (len == 0 || len > 63 || !only_name_chars(s) || s[0] == '-')
        return fail(why, n, "invalid user name '%s'", s);
    return 0;
}

int cfg_value_string(const char *s, size_t cap, char *why, size_t n)
{
    if (strlen(s) >= cap)
        return fail(why, n, "value too long (max %zu characters)", cap - 1);
    return 0;
}
