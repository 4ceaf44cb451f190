/* pg_check_ssl_answer: the upstream's answer to dbtrust's SSLRequest, judged on whatever the
 * first read returned. The verdict may depend on where TCP cut (bytes behind 'S' are the
 * CVE-2021-23222 injection), so instead of whole-vs-split equality every prefix of the input is
 * judged and must agree with the rules of pg.h: DBT_NONE for exactly "S" and nothing else, the
 * server's error text never in the detail (CVE-2024-10977), a detail always set. */
#include "fuzz_common.h"
#include "pg.h"

#define MAX_PREFIX 64

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *detail = NULL, *e_detail = NULL;

    FUZZ_CHECK(pg_check_ssl_answer(data, 0, &detail) == DBT_UPSTREAM_PROTOCOL_ERROR && detail,
               "empty answer");
    (void)pg_check_ssl_answer((const uint8_t *)"E", 1, &e_detail);
    size_t max = size < MAX_PREFIX ? size : MAX_PREFIX;
    for (size_t len = 1; len <= max; len++) {
        detail = NULL;
        enum dbt_reason r = pg_check_ssl_answer(data, len, &detail);
        FUZZ_CHECK(detail != NULL, "no detail for %zu bytes", len);
        switch (data[0]) {
        case 'S':
            FUZZ_CHECK(r == (len == 1 ? DBT_NONE : DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE),
                       "'S' + %zu bytes: %s", len - 1, dbt_reason_name(r));
            break;
        case 'N':
        case 'E':
            FUZZ_CHECK(r == DBT_UPSTREAM_REFUSED_TLS, "%c: %s", data[0], dbt_reason_name(r));
            /* The unauthenticated server's words must never reach a log or a client: the
             * detail is the same whatever follows the 'E'. */
            if (data[0] == 'E')
                FUZZ_CHECK(strcmp(detail, e_detail) == 0, "detail depends on the server's text");
            break;
        default:
            FUZZ_CHECK(r == DBT_UPSTREAM_PROTOCOL_ERROR, "0x%02x: %s", data[0], dbt_reason_name(r));
            char hex[8];
            snprintf(hex, sizeof hex, "0x%02x", data[0]);
            FUZZ_CHECK(strstr(detail, hex) != NULL, "detail '%s' does not name %s", detail, hex);
        }
    }
    /* Only a TLS record may follow the 'S' once the handshake starts. */
    for (size_t i = 0; i < max; i++)
        FUZZ_CHECK(pg_is_tls_record_start(data[i]) == (data[i] == 0x15 || data[i] == 0x16),
                   "0x%02x", data[i]);
    return 0;
}
