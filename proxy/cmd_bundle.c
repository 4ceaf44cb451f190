/* `dbtrust bundle inspect|merge` (DESIGN.md "Interfaces"): the operator's view of CA bundle files
 * before one is deployed. All reading, checking and writing is in tls/tlsw_bundle.c; this file
 * parses the command line and prints (text, or JSON built by jansson). */
#include <getopt.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <jansson.h>

#include "px_cmd.h"
#include "tlsw_bundle.h"

/* Exit status of both subcommands. */
enum {
    EXIT_CLEAN = 0,    /* inspect: no warnings; merge: written */
    EXIT_WARNINGS = 1, /* inspect: warnings printed; merge: OUT could not be written */
    EXIT_REFUSED = 2,  /* usage error, or a file could not be read or parsed */
};

static const char bundle_usage[] =
    "Usage:\n"
    "  dbtrust bundle inspect [--json] FILE...   every certificate (subject, issuer, validity,\n"
    "                                            SHA-256, SPKI pin, CA or not), every CRL\n"
    "                                            (issuer, thisUpdate, nextUpdate, entries, the\n"
    "                                            CA of the input that verifies it), then warnings\n"
    "  dbtrust bundle merge -o OUT FILE...       one de-duplicated bundle, written atomically,\n"
    "                                            with the newest CRL per issuer\n"
    "\n"
    "inspect exit status: 0 no warnings, 1 warnings printed, 2 usage error or a file that\n"
    "cannot be read or parsed.\n"
    "merge exit status: 0 written, 1 OUT could not be written, 2 usage error or an input\n"
    "refused (unreadable, not PEM, text between blocks that is not a comment, no certificate,\n"
    "a CRL no certificate of the input verifies);\n"
    "OUT is untouched unless the exit status is 0.\n";

static int usage_error(const char *cmd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static int usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "dbtrust bundle%s%s: ", cmd != NULL ? " " : "", cmd != NULL ? cmd : "");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\n%s", bundle_usage);
    return EXIT_REFUSED;
}

static void iso_time(time_t t, char *buf, size_t cap)
{
    struct tm tm;
    if (t == (time_t)-1 || gmtime_r(&t, &tm) == NULL ||
        strftime(buf, cap, "%Y-%m-%dT%H:%M:%SZ", &tm) == 0)
        dbt_strlcpy(buf, "?", cap);
}

static const char *plural(size_t n, const char *one, const char *many)
{
    return n == 1 ? one : many;
}

static const char *cert_role(const struct tlsw_bundle_cert *c)
{
    if (!c->info.is_ca)
        return "no (end-entity)";
    return c->self_signed ? "yes (self-signed root)" : "yes (intermediate)";
}

static size_t count_errors(const struct tlsw_bundle *b)
{
    size_t n = 0;
    for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++)
        n += tlsw_bundle_warn_is_error(tlsw_bundle_warning(b, i)->kind);
    return n;
}

static int inspect_status(const struct tlsw_bundle *b)
{
    if (tlsw_bundle_has_errors(b))
        return EXIT_REFUSED;
    return tlsw_bundle_warning_count(b) > 0 ? EXIT_WARNINGS : EXIT_CLEAN;
}

/* ---- text ---------------------------------------------------------------------------------- */

static void print_cert(FILE *out, const struct tlsw_bundle *b, const struct tlsw_bundle_cert *c,
                       time_t now)
{
    char nb[32], na[32];
    iso_time(c->info.not_before, nb, sizeof(nb));
    iso_time(c->info.not_after, na, sizeof(na));
    fprintf(out, "%s #%zu (line %u)\n", tlsw_bundle_file_path(b, c->file), c->index, c->line);
    fprintf(out, "  subject:      %s\n", c->info.subject);
    fprintf(out, "  issuer:       %s\n", c->info.issuer);
    fprintf(out, "  notBefore:    %s\n", nb);
    fprintf(out, "  notAfter:     %s\n", na);
    fprintf(out, "  days left:    %ld\n", tlsw_bundle_days_left(c->info.not_after, now));
    fprintf(out, "  sha256:       %s\n", c->info.sha256);
    fprintf(out, "  pin:          sha256/%s\n", c->info.spki_pin);
    fprintf(out, "  ca:           %s\n", cert_role(c));
    if (c->dup_of != TLSW_BUNDLE_NONE) {
        const struct tlsw_bundle_cert *first = tlsw_bundle_cert(b, c->dup_of);
        fprintf(out, "  duplicate of: %s #%zu\n", tlsw_bundle_file_path(b, first->file),
                first->index);
    }
    fputc('\n', out);
}

static void print_crl(FILE *out, const struct tlsw_bundle *b, const struct tlsw_bundle_crl *c,
                      time_t now)
{
    char tu[32], nu[32];
    iso_time(c->info.this_update, tu, sizeof(tu));
    fprintf(out, "%s CRL #%zu (line %u)\n", tlsw_bundle_file_path(b, c->file), c->index, c->line);
    fprintf(out, "  issuer:       %s\n", c->info.issuer);
    fprintf(out, "  thisUpdate:   %s\n", tu);
    if (c->info.next_update == (time_t)-1) {
        fprintf(out, "  nextUpdate:   none\n");
    } else {
        iso_time(c->info.next_update, nu, sizeof(nu));
        fprintf(out, "  nextUpdate:   %s\n", nu);
        fprintf(out, "  days left:    %ld\n", tlsw_bundle_days_left(c->info.next_update, now));
    }
    fprintf(out, "  entries:      %zu\n", c->info.entries);
    fprintf(out, "  number:       %s%s\n", c->info.number[0] ? c->info.number : "none",
            c->info.delta ? " (delta CRL)" : "");
    if (c->info.verified_by[0] != '\0')
        fprintf(out, "  verified by:  %s (sha256 %.16s...)\n", c->info.verified_by,
                c->info.verified_by_sha256);
    else
        fprintf(out, "  verified by:  nothing in the input\n");
    fputc('\n', out);
}

/* "warning [expired] ca.pem #3 (CN=Old Root): expired on ..." or, about a whole file,
 * "error [unreadable] missing.pem: cannot read: No such file or directory". */
static void print_warning(FILE *out, const struct tlsw_bundle *b,
                          const struct tlsw_bundle_warning *w)
{
    fprintf(out, "%s [%s] %s", tlsw_bundle_warn_is_error(w->kind) ? "error" : "warning",
            tlsw_bundle_warn_name(w->kind), tlsw_bundle_file_path(b, w->file));
    if (w->cert != TLSW_BUNDLE_NONE) {
        const struct tlsw_bundle_cert *c = tlsw_bundle_cert(b, w->cert);
        fprintf(out, " #%zu (%s)", c->index, c->info.subject);
    }
    if (w->crl != TLSW_BUNDLE_NONE) {
        const struct tlsw_bundle_crl *c = tlsw_bundle_crl(b, w->crl);
        fprintf(out, " CRL #%zu (%s)", c->index, c->info.issuer);
    }
    fprintf(out, ": %s\n", w->detail);
}

static void print_warnings(FILE *out, const struct tlsw_bundle *b)
{
    for (size_t i = 0; i < tlsw_bundle_warning_count(b); i++)
        print_warning(out, b, tlsw_bundle_warning(b, i));
}

static void print_summary(FILE *out, const struct tlsw_bundle *b)
{
    size_t certs = tlsw_bundle_cert_count(b), files = tlsw_bundle_file_count(b);
    size_t errors = count_errors(b), warnings = tlsw_bundle_warning_count(b) - errors;
    size_t crls = tlsw_bundle_crl_count(b);
    fprintf(out, "%zu %s in %zu %s (%zu unique)", certs,
            plural(certs, "certificate", "certificates"), files, plural(files, "file", "files"),
            tlsw_bundle_unique_count(b));
    if (crls > 0)
        fprintf(out, ", %zu %s", crls, plural(crls, "CRL", "CRLs"));
    fputs(": ", out);
    if (errors + warnings == 0)
        fputs("no warnings\n", out);
    else
        fprintf(out, "%zu %s, %zu %s\n", warnings, plural(warnings, "warning", "warnings"), errors,
                plural(errors, "error", "errors"));
}

static void print_text(const struct tlsw_bundle *b, time_t now)
{
    for (size_t i = 0; i < tlsw_bundle_cert_count(b); i++)
        print_cert(stdout, b, tlsw_bundle_cert(b, i), now);
    for (size_t i = 0; i < tlsw_bundle_crl_count(b); i++)
        print_crl(stdout, b, tlsw_bundle_crl(b, i), now);
    print_warnings(stdout, b);
    print_summary(stdout, b);
}

/* ---- JSON ---------------------------------------------------------------------------------- */

/* A JSON string from C text that should be UTF-8 (subjects are converted to it) but may not be:
 * a path given on the command line can hold any bytes, and jansson rejects invalid UTF-8. Such
 * bytes become '?', so the document is always valid. NULL only when memory runs out. */
static json_t *jstr(const char *s)
{
    json_t *j = json_string(s);
    if (j != NULL)
        return j;
    char *copy = strdup(s);
    if (copy == NULL)
        return NULL;
    for (char *p = copy; *p != '\0'; p++)
        if ((unsigned char)*p >= 0x80)
            *p = '?';
    j = json_string(copy);
    free(copy);
    return j;
}

static json_t *cert_ref_json(const struct tlsw_bundle *b, size_t cert)
{
    const struct tlsw_bundle_cert *c = tlsw_bundle_cert(b, cert);
    return json_pack("{s:o, s:I}", "file", jstr(tlsw_bundle_file_path(b, c->file)), "index",
                     (json_int_t)c->index);
}

static json_t *cert_json(const struct tlsw_bundle *b, const struct tlsw_bundle_cert *c, time_t now)
{
    char nb[32], na[32], pin[80];
    iso_time(c->info.not_before, nb, sizeof(nb));
    iso_time(c->info.not_after, na, sizeof(na));
    snprintf(pin, sizeof(pin), "sha256/%s", c->info.spki_pin);
    return json_pack("{s:o, s:I, s:I, s:o, s:o, s:s, s:s, s:I, s:s, s:s, s:b, s:b, s:o}", "file",
                     jstr(tlsw_bundle_file_path(b, c->file)), "index", (json_int_t)c->index, "line",
                     (json_int_t)c->line, "subject", jstr(c->info.subject), "issuer",
                     jstr(c->info.issuer), "not_before", nb, "not_after", na, "days_left",
                     (json_int_t)tlsw_bundle_days_left(c->info.not_after, now), "sha256",
                     c->info.sha256, "pin", pin, "ca", (int)c->info.is_ca, "self_signed",
                     (int)c->self_signed, "duplicate_of",
                     c->dup_of != TLSW_BUNDLE_NONE ? cert_ref_json(b, c->dup_of) : json_null());
}

static json_t *crl_json(const struct tlsw_bundle *b, const struct tlsw_bundle_crl *c, time_t now)
{
    char tu[32], nu[32];
    iso_time(c->info.this_update, tu, sizeof(tu));
    iso_time(c->info.next_update, nu, sizeof(nu));
    bool has_next = c->info.next_update != (time_t)-1;
    const struct tlsw_bundle_crl *newer =
        c->newer != TLSW_BUNDLE_NONE ? tlsw_bundle_crl(b, c->newer) : NULL;
    return json_pack(
        "{s:o, s:I, s:I, s:o, s:s, s:o, s:o, s:I, s:o, s:b, s:o, s:o, s:o}", "file",
        jstr(tlsw_bundle_file_path(b, c->file)), "index", (json_int_t)c->index, "line",
        (json_int_t)c->line, "issuer", jstr(c->info.issuer), "this_update", tu, "next_update",
        has_next ? json_string(nu) : json_null(), "days_left",
        has_next ? json_integer(tlsw_bundle_days_left(c->info.next_update, now)) : json_null(),
        "entries", (json_int_t)c->info.entries, "number",
        c->info.number[0] ? json_string(c->info.number) : json_null(), "delta", (int)c->info.delta,
        "verified_by", c->info.verified_by[0] ? jstr(c->info.verified_by) : json_null(),
        "verified_by_sha256",
        c->info.verified_by[0] ? json_string(c->info.verified_by_sha256) : json_null(),
        "superseded_by",
        newer != NULL ? json_pack("{s:o, s:I}", "file", jstr(tlsw_bundle_file_path(b, newer->file)),
                                  "index", (json_int_t)newer->index)
                      : json_null());
}

static json_t *warning_json(const struct tlsw_bundle *b, const struct tlsw_bundle_warning *w)
{
    const struct tlsw_bundle_cert *c =
        w->cert != TLSW_BUNDLE_NONE ? tlsw_bundle_cert(b, w->cert) : NULL;
    return json_pack("{s:s, s:s, s:o, s:o, s:o, s:o, s:o, s:o}", "kind",
                     tlsw_bundle_warn_name(w->kind), "severity",
                     tlsw_bundle_warn_is_error(w->kind) ? "error" : "warning", "file",
                     jstr(tlsw_bundle_file_path(b, w->file)), "index",
                     c != NULL ? json_integer((json_int_t)c->index) : json_null(), "line",
                     w->line != 0 ? json_integer(w->line) : json_null(), "subject",
                     c != NULL ? jstr(c->info.subject) : json_null(), "duplicate_of",
                     w->other != TLSW_BUNDLE_NONE ? cert_ref_json(b, w->other) : json_null(),
                     "message", jstr(w->detail));
}

/* The CRL a warning is about, added to its JSON object when there is one. */
static json_t *with_crl_ref(json_t *o, const struct tlsw_bundle *b,
                            const struct tlsw_bundle_warning *w)
{
    if (o != NULL && w->crl != TLSW_BUNDLE_NONE) {
        const struct tlsw_bundle_crl *c = tlsw_bundle_crl(b, w->crl);
        json_object_set_new(
            o, "crl",
            json_pack("{s:I, s:o}", "index", (json_int_t)c->index, "issuer", jstr(c->info.issuer)));
    }
    return o;
}

/* Appends item (taken) to a; when that fails a is dropped and NULL returned, which ends the
 * caller's loop. */
static json_t *append(json_t *a, json_t *item)
{
    if (a != NULL && json_array_append_new(a, item) != 0) {
        json_decref(a);
        return NULL;
    }
    return a;
}

/* The arrays of the document; each NULL when memory runs out (json_pack then fails too). */
static json_t *files_json(const struct tlsw_bundle *b)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < tlsw_bundle_file_count(b); i++)
        a = append(a, json_pack("{s:o, s:I}", "path", jstr(tlsw_bundle_file_path(b, i)),
                                "certificates", (json_int_t)tlsw_bundle_file_cert_count(b, i)));
    return a;
}

static json_t *certs_json(const struct tlsw_bundle *b, time_t now)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < tlsw_bundle_cert_count(b); i++)
        a = append(a, cert_json(b, tlsw_bundle_cert(b, i), now));
    return a;
}

static json_t *warnings_json(const struct tlsw_bundle *b)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < tlsw_bundle_warning_count(b); i++)
        a = append(a, with_crl_ref(warning_json(b, tlsw_bundle_warning(b, i)), b,
                                   tlsw_bundle_warning(b, i)));
    return a;
}

static json_t *crls_json(const struct tlsw_bundle *b, time_t now)
{
    json_t *a = json_array();
    for (size_t i = 0; a != NULL && i < tlsw_bundle_crl_count(b); i++)
        a = append(a, crl_json(b, tlsw_bundle_crl(b, i), now));
    return a;
}

static int print_json(const struct tlsw_bundle *b, time_t now)
{
    size_t errors = count_errors(b);
    json_t *doc = json_pack(
        "{s:o, s:o, s:o, s:o, s:{s:I, s:I, s:I, s:I, s:I, s:I}}", "files", files_json(b),
        "certificates", certs_json(b, now), "crls", crls_json(b, now), "warnings", warnings_json(b),
        "summary", "files", (json_int_t)tlsw_bundle_file_count(b), "certificates",
        (json_int_t)tlsw_bundle_cert_count(b), "unique", (json_int_t)tlsw_bundle_unique_count(b),
        "crls", (json_int_t)tlsw_bundle_crl_count(b), "warnings",
        (json_int_t)(tlsw_bundle_warning_count(b) - errors), "errors", (json_int_t)errors);
    if (doc == NULL || json_dumpf(doc, stdout, JSON_INDENT(2)) != 0) {
        json_decref(doc);
        fputs("dbtrust bundle inspect: cannot build the JSON document (out of memory)\n", stderr);
        return -1;
    }
    fputc('\n', stdout);
    json_decref(doc);
    return 0;
}

/* ---- subcommands --------------------------------------------------------------------------- */

/* Loads the files named by argv[first..argc); NULL (after saying so) when memory runs out. */
static struct tlsw_bundle *load(const char *cmd, int argc, char **argv, int first, time_t now)
{
    struct tlsw_bundle *b = NULL;
    if (tlsw_bundle_load((const char *const *)argv + first, (size_t)(argc - first), now, &b) != 0)
        fprintf(stderr, "dbtrust bundle %s: out of memory\n", cmd);
    return b;
}

static int cmd_inspect(int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    bool json = false;
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
        if (ch == 'j') {
            json = true;
        } else if (ch == 'h') {
            fputs(bundle_usage, stdout);
            return EXIT_CLEAN;
        } else {
            return usage_error("inspect", "invalid option '%s'", argv[optind - 1]);
        }
    }
    if (optind >= argc)
        return usage_error("inspect", "no FILE given");

    time_t now = time(NULL);
    struct tlsw_bundle *b = load("inspect", argc, argv, optind, now);
    if (b == NULL)
        return EXIT_REFUSED;
    int status = inspect_status(b);
    if (json) {
        if (print_json(b, now) != 0)
            status = EXIT_REFUSED;
    } else {
        print_text(b, now);
    }
    tlsw_bundle_free(b);
    return status;
}

static int merge_into(const struct tlsw_bundle *b, const char *out)
{
    char err[1024];
    size_t files = tlsw_bundle_file_count(b), unique = tlsw_bundle_unique_count(b);
    size_t dups = tlsw_bundle_cert_count(b) - unique;

    /* Expired certificates are kept (the operator may still need them during a rotation); they
     * and every other finding are reported, on stderr so stdout carries only the summary. */
    print_warnings(stderr, b);
    if (tlsw_bundle_mergeable(b, err, sizeof(err)) != 0) {
        fprintf(stderr, "dbtrust bundle merge: refusing to write %s: %s\n", out, err);
        return EXIT_REFUSED;
    }
    if (tlsw_bundle_write(b, out, err, sizeof(err)) != 0) {
        fprintf(stderr, "dbtrust bundle merge: %s\n", err);
        return EXIT_WARNINGS;
    }
    size_t crls = tlsw_bundle_crl_kept_count(b);
    printf("wrote %zu %s", unique, plural(unique, "certificate", "certificates"));
    if (tlsw_bundle_crl_count(b) > 0)
        printf(" and %zu %s (newest per issuer)", crls, plural(crls, "CRL", "CRLs"));
    printf(" from %zu %s to %s, %zu %s dropped\n", files, plural(files, "file", "files"), out, dups,
           plural(dups, "duplicate", "duplicates"));
    return EXIT_CLEAN;
}

static int cmd_merge(int argc, char **argv)
{
    static const struct option opts[] = {
        {"output", required_argument, NULL, 'o'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *out = NULL;
    int ch;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, ":o:h", opts, NULL)) != -1) {
        if (ch == 'o') {
            out = optarg;
        } else if (ch == 'h') {
            fputs(bundle_usage, stdout);
            return EXIT_CLEAN;
        } else if (ch == ':') {
            return usage_error("merge", "option '%s' needs an argument", argv[optind - 1]);
        } else {
            return usage_error("merge", "invalid option '%s'", argv[optind - 1]);
        }
    }
    if (out == NULL || *out == '\0')
        return usage_error("merge", "-o OUT is required");
    if (optind >= argc)
        return usage_error("merge", "no FILE given");

    struct tlsw_bundle *b = load("merge", argc, argv, optind, time(NULL));
    if (b == NULL)
        return EXIT_REFUSED;
    int status = merge_into(b, out);
    tlsw_bundle_free(b);
    return status;
}

int px_cmd_bundle(int argc, char **argv)
{
    if (argc < 2)
        return usage_error(NULL, "missing subcommand (inspect or merge)");
    if (strcmp(argv[1], "inspect") == 0)
        return cmd_inspect(argc - 1, argv + 1);
    if (strcmp(argv[1], "merge") == 0)
        return cmd_merge(argc - 1, argv + 1);
    if (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0 ||
        strcmp(argv[1], "help") == 0) {
        fputs(bundle_usage, stdout);
        return EXIT_CLEAN;
    }
    return usage_error(NULL, "unknown subcommand '%s'", argv[1]);
}
