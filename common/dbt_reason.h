/* Failure reasons: one stable snake_case name used in the client error, the log line and the
 * metric label. The X-macro keeps the enum and its strings in one place (libuv's UV_ERRNO_MAP
 * pattern); never renumber or rename an entry, dashboards depend on the names. */
#ifndef DBT_REASON_H
#define DBT_REASON_H

/* X(ENUM, "name", class) - class groups reasons for protocol-native error codes. */
#define DBT_REASON_MAP(X)                                                                          \
    X(NONE, "none", DBT_CLASS_OK)                                                                  \
    X(CLIENT_CLOSED, "client_closed", DBT_CLASS_OK)                                                \
    X(UPSTREAM_CLOSED, "upstream_closed", DBT_CLASS_OK)                                            \
    X(CANCEL_FORWARDED, "cancel_forwarded", DBT_CLASS_OK)                                          \
    X(CLIENT_PROTOCOL_ERROR, "client_protocol_error", DBT_CLASS_PROTOCOL)                          \
    X(CLIENT_TIMEOUT, "client_timeout", DBT_CLASS_PROTOCOL)                                        \
    X(CLIENT_DIRECT_TLS, "client_direct_tls", DBT_CLASS_PROTOCOL)                                  \
    X(UPSTREAM_CONNECT_FAILED, "upstream_connect_failed", DBT_CLASS_UNREACHABLE)                   \
    X(UPSTREAM_CONNECT_TIMEOUT, "upstream_connect_timeout", DBT_CLASS_UNREACHABLE)                 \
    X(UPSTREAM_RESOLVE_FAILED, "upstream_resolve_failed", DBT_CLASS_UNREACHABLE)                   \
    X(UPSTREAM_REFUSED_TLS, "upstream_refused_tls", DBT_CLASS_TLS)                                 \
    X(UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE, "upstream_plaintext_after_ssl_response",              \
      DBT_CLASS_TLS)                                                                               \
    X(UPSTREAM_PROTOCOL_ERROR, "upstream_protocol_error", DBT_CLASS_PROTOCOL)                      \
    X(TLS_HANDSHAKE_FAILED, "tls_handshake_failed", DBT_CLASS_TLS)                                 \
    X(TLS_HANDSHAKE_TIMEOUT, "tls_handshake_timeout", DBT_CLASS_TLS)                               \
    X(TLS_UNTRUSTED_CHAIN, "tls_untrusted_chain", DBT_CLASS_TLS)                                   \
    X(TLS_HOSTNAME_MISMATCH, "tls_hostname_mismatch", DBT_CLASS_TLS)                               \
    X(TLS_CERT_EXPIRED, "tls_cert_expired", DBT_CLASS_TLS)                                         \
    X(TLS_CERT_NOT_YET_VALID, "tls_cert_not_yet_valid", DBT_CLASS_TLS)                             \
    X(TLS_PIN_MISMATCH, "tls_pin_mismatch", DBT_CLASS_TLS)                                         \
    X(TLS_ERROR, "tls_error", DBT_CLASS_TLS)                                                       \
    X(UPSTREAM_TIMEOUT, "upstream_timeout", DBT_CLASS_BROKEN)                                      \
    X(UPSTREAM_RESET, "upstream_reset", DBT_CLASS_BROKEN)                                          \
    X(CLIENT_RESET, "client_reset", DBT_CLASS_BROKEN)                                              \
    X(LIMIT_REACHED, "limit_reached", DBT_CLASS_LIMIT)                                             \
    X(SHUTDOWN, "shutdown", DBT_CLASS_SHUTDOWN)                                                    \
    X(INTERNAL_ERROR, "internal_error", DBT_CLASS_INTERNAL)                                        \
    X(CLIENT_TLS_REQUIRED, "client_tls_required", DBT_CLASS_CLIENT_REFUSED)                        \
    X(CLIENT_TLS_HANDSHAKE_FAILED, "client_tls_handshake_failed", DBT_CLASS_CLIENT_REFUSED)        \
    X(CLIENT_TLS_TIMEOUT, "client_tls_timeout", DBT_CLASS_CLIENT_REFUSED)                          \
    X(CLIENT_CERT_MISSING, "client_cert_missing", DBT_CLASS_CLIENT_REFUSED)                        \
    X(CLIENT_CERT_UNTRUSTED, "client_cert_untrusted", DBT_CLASS_CLIENT_REFUSED)                    \
    X(CLIENT_CERT_EXPIRED, "client_cert_expired", DBT_CLASS_CLIENT_REFUSED)                        \
    X(CLIENT_CERT_REJECTED, "client_cert_rejected", DBT_CLASS_CLIENT_REFUSED)                      \
    X(CLIENT_NOT_ALLOWED, "client_not_allowed", DBT_CLASS_CLIENT_REFUSED)                          \
    X(CLIENT_CHANNEL_BINDING, "client_channel_binding", DBT_CLASS_CLIENT_REFUSED)                  \
    X(OVERLOADED, "overloaded", DBT_CLASS_LIMIT)                                                   \
    X(CLIENT_STARTUP_LIMIT, "client_startup_limit", DBT_CLASS_LIMIT)                               \
    /* A MySQL server's ERR packet in place of its greeting, by error code (PROTOCOLS.md B5):      \
     * 1040 ER_CON_COUNT_ERROR, 1129 ER_HOST_IS_BLOCKED, any other code. Unreachable class: the    \
     * upstream could not be used and no TLS verdict was reached (dbtrust check: UNREACHABLE;      \
     * PostgreSQL would say 57P03), while the MySQL client sees the server's own code. */          \
    X(UPSTREAM_TOO_MANY_CONNECTIONS, "upstream_too_many_connections", DBT_CLASS_UNREACHABLE)       \
    X(UPSTREAM_HOST_BLOCKED, "upstream_host_blocked", DBT_CLASS_UNREACHABLE)                       \
    X(UPSTREAM_REFUSED, "upstream_refused", DBT_CLASS_UNREACHABLE)                                 \
    X(UPSTREAM_NO_DIRECT_TLS, "upstream_no_direct_tls", DBT_CLASS_TLS)                             \
    /* Revocation (CRLs of the trust generation): a certificate of the chain is on its issuer's    \
     * CRL; crl_required = on and an issuer of the chain has no CRL; crl_stale = refuse and the    \
     * CRL in force is past its nextUpdate (or before its thisUpdate). */                          \
    X(TLS_CERT_REVOKED, "tls_cert_revoked", DBT_CLASS_TLS)                                         \
    X(TLS_CRL_MISSING, "tls_crl_missing", DBT_CLASS_TLS)                                           \
    X(TLS_CRL_STALE, "tls_crl_stale", DBT_CLASS_TLS)

enum dbt_reason_class {
    DBT_CLASS_OK,          /* a normal end of a connection */
    DBT_CLASS_PROTOCOL,    /* a peer broke the protocol */
    DBT_CLASS_UNREACHABLE, /* upstream could not be reached (transient) */
    DBT_CLASS_TLS,         /* TLS could not be established or verified: fail closed */
    DBT_CLASS_BROKEN,      /* an established leg broke */
    DBT_CLASS_LIMIT,       /* a configured limit refused the connection */
    DBT_CLASS_SHUTDOWN,    /* dbtrust is stopping */
    DBT_CLASS_INTERNAL,    /* out of memory and the like */
    /* the client leg's policy refused the client (central trust point: client_tls, client
     * certificates, client_allow); PostgreSQL 28000, MySQL access denied */
    DBT_CLASS_CLIENT_REFUSED,
};

enum dbt_reason {
#define DBT_REASON_ENUM(name, str, cls) DBT_##name,
    DBT_REASON_MAP(DBT_REASON_ENUM)
#undef DBT_REASON_ENUM
        DBT_REASON_COUNT
};

static inline const char *dbt_reason_name(enum dbt_reason r)
{
    static const char *const names[] = {
#define DBT_REASON_NAME(name, str, cls) str,
        DBT_REASON_MAP(DBT_REASON_NAME)
#undef DBT_REASON_NAME
    };
    return (unsigned)r < DBT_REASON_COUNT ? names[r] : "unknown";
}

static inline enum dbt_reason_class dbt_reason_class(enum dbt_reason r)
{
    static const enum dbt_reason_class classes[] = {
#define DBT_REASON_CLASS(name, str, cls) cls,
        DBT_REASON_MAP(DBT_REASON_CLASS)
#undef DBT_REASON_CLASS
    };
    return (unsigned)r < DBT_REASON_COUNT ? classes[r] : DBT_CLASS_INTERNAL;
}

#endif
