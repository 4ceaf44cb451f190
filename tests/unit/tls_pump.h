/* An OpenSSL server engine over two memory BIOs joined to a tlsw_conn in memory: moving the
 * ciphertext both ways and stepping both handshakes (test_tls, test_tls_resume). Include it
 * after defining struct server with at least: SSL *ssl; BIO *in (ciphertext from the client),
 * *out (ciphertext to it); bool done, failed. */
#ifndef TLS_PUMP_H
#define TLS_PUMP_H

#include <criterion/criterion.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "tlsw.h"

static void client_to_server(struct tlsw_conn *c, struct server *s)
{
    uint8_t buf[4096];
    size_t n;
    while ((n = tlsw_conn_take(c, buf, sizeof(buf))) > 0)
        cr_assert_eq(BIO_write(s->in, buf, (int)n), (int)n);
    cr_assert_eq(tlsw_conn_pending(c), 0);
}

static void server_to_client(struct server *s, struct tlsw_conn *c)
{
    uint8_t buf[4096];
    int n;
    while ((n = BIO_read(s->out, buf, sizeof(buf))) > 0)
        tlsw_conn_feed(c, buf, (size_t)n);
}

static void server_step(struct server *s)
{
    if (s->done || s->failed)
        return;
    ERR_clear_error();
    int r = SSL_do_handshake(s->ssl);
    if (r == 1) {
        s->done = true;
        return;
    }
    int e = SSL_get_error(s->ssl, r);
    if (e != SSL_ERROR_WANT_READ && e != SSL_ERROR_WANT_WRITE)
        s->failed = true;
    ERR_clear_error();
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
