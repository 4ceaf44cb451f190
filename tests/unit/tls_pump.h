/* In-memory TLS pumps: ciphertext moved between a tlsw_conn and its peer, and handshakes
 * stepped, with no socket. The peer is a raw OpenSSL SSL over two memory BIOs, or another
 * tlsw_conn (a server-role engine joined to a client-role one).
 *
 * test_tls and test_tls_resume include it after defining struct server (the raw OpenSSL server
 * facing the client engine) with at least: SSL *ssl; BIO *in (ciphertext from the client), *out
 * (ciphertext to it); bool done, failed. A test without such a struct defines
 * TLS_PUMP_NO_SERVER first and uses the role-neutral pieces. */
#ifndef TLS_PUMP_H
#define TLS_PUMP_H

#include <criterion/criterion.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tlsw.h"

/* Everything the engine has queued, into a raw endpoint's input BIO. */
static inline void engine_to_bio(struct tlsw_conn *c, BIO *in)
{
    uint8_t buf[4096];
    size_t n;
    while ((n = tlsw_conn_take(c, buf, sizeof(buf))) > 0)
        cr_assert_eq(BIO_write(in, buf, (int)n), (int)n);
    cr_assert_eq(tlsw_conn_pending(c), 0);
}

/* Everything a raw endpoint has written, into the engine. */
static inline void bio_to_engine(BIO *out, struct tlsw_conn *c)
{
    uint8_t buf[4096];
    int n;
    while ((n = BIO_read(out, buf, sizeof(buf))) > 0)
        tlsw_conn_feed(c, buf, (size_t)n);
}

static inline void engine_to_engine(struct tlsw_conn *from, struct tlsw_conn *to)
{
    uint8_t buf[4096];
    size_t n;
    while ((n = tlsw_conn_take(from, buf, sizeof(buf))) > 0)
        tlsw_conn_feed(to, buf, n);
}

/* One handshake step of a raw OpenSSL endpoint, either role. */
static inline void ssl_step(SSL *ssl, bool *done, bool *failed)
{
    if (*done || *failed)
        return;
    ERR_clear_error();
    int r = SSL_do_handshake(ssl);
    if (r == 1) {
        *done = true;
        return;
    }
    int e = SSL_get_error(ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        *failed = true;
    ERR_clear_error();
}

/* Runs a server-role and a client-role engine until both are done or one fails; returns the
 * server's status and leaves the client's in *client_st. A failing side's alert has been
 * delivered to the other when this returns. */
static inline enum tlsw_status pump_engines(struct tlsw_conn *srv, struct tlsw_conn *cli,
                                            enum tlsw_status *client_st)
{
    enum tlsw_status cs = TLSW_WANT_IO, ss = TLSW_WANT_IO;
    for (int i = 0; i < 20; i++) {
        cs = tlsw_conn_handshake(cli);
        engine_to_engine(cli, srv);
        ss = tlsw_conn_handshake(srv);
        engine_to_engine(srv, cli);
        if (ss == TLSW_ERROR || cs == TLSW_ERROR || (ss == TLSW_OK && cs == TLSW_OK))
            break;
    }
    if (ss == TLSW_ERROR && cs != TLSW_ERROR)
        cs = tlsw_conn_handshake(cli);
    *client_st = cs;
    return ss;
}

#ifndef TLS_PUMP_NO_SERVER
static void client_to_server(struct tlsw_conn *c, struct server *s)
{
    engine_to_bio(c, s->in);
}

static void server_to_client(struct server *s, struct tlsw_conn *c)
{
    bio_to_engine(s->out, c);
}

static void server_step(struct server *s)
{
    ssl_step(s->ssl, &s->done, &s->failed);
}

/* Runs both handshakes until the client is done or fails; returns the client's status. */
static enum tlsw_status pump_handshake(struct tlsw_conn *c, struct server *s)
{
    enum tlsw_status st = TLSW_WANT_IO;
    for (int i = 0; i < 20; i++) {
        st = tlsw_conn_handshake(c);
        client_to_server(c, s);
        server_step(s);
        server_to_client(s, c);
        if (st == TLSW_ERROR || (st == TLSW_OK && s->done))
            break;
    }
    return st;
}
#endif

#endif
