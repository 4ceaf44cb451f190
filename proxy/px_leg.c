/* The leg: reads (decrypting when TLS is on), writes (encrypting), the TLS handshake pump,
 * half-close and close, the same for the client and the upstream side. */
#include "px_leg.h"

#include <linux/sockios.h>
#include <stdio.h>
#include <sys/ioctl.h>

#include "pg.h"
#include "px_io.h"

void px_leg_setup(struct px_leg *l, struct px_worker *w, void *owner, enum px_side side,
                  const struct px_leg_events *ev)
{
    l->w = w;
    l->owner = owner;
    l->side = side;
    l->ev = ev;
}

static void open_common(struct px_leg *l)
{
    l->s.handle.data = l;
    l->state = PX_LEG_OPEN;
    l->reading = l->halted = l->eof = l->shut_sent = false;
}

void px_leg_open_tcp(struct px_leg *l)
{
    uv_tcp_init(&l->w->loop, &l->s.tcp);
    open_common(l);
}

void px_leg_open_pipe(struct px_leg *l)
{
    uv_pipe_init(&l->w->loop, &l->s.pipe, 0);
    open_common(l);
}

/* Reads land in the worker's scratch buffer: read callbacks consume it synchronously, so one
 * buffer serves every connection and idle connections hold no read buffer. */
static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    struct px_leg *l = h->data;
    (void)suggested;
    buf->base = (char *)l->w->read_buf;
    buf->len = sizeof(l->w->read_buf);
}

static bool delivering(const struct px_leg *l)
{
    return l->state == PX_LEG_OPEN && !l->halted;
}

static void deliver(struct px_leg *l, const uint8_t *data, size_t len)
{
    l->bytes_in += len;
    if (l->stat_in)
        px_counter_add(l->stat_in, len);
    l->ev->on_bytes(l, data, len);
}

static void on_written(void *arg, size_t len, int status)
{
    struct px_leg *l = arg;
    (void)len;
    l->ev->on_write_done(l, status);
}

static int write_raw(struct px_leg *l, const uint8_t *data, size_t len)
{
    struct px_io_target t = {l->w, &l->s.stream, &l->queued, on_written, l};
    int rc = px_io_send(&t, data, len);
    if (rc == 0)
        return 0;
    l->ev->on_write_done(l, rc);
    return -1;
}

/* The TLS engine's output: each record straight from OpenSSL's write buffer to the socket (or
 * the leg's queue), no copy in between. Called from inside the engine, so a failure is only
 * noted here and reported by px_leg_flush once the engine returned. */
static void on_tls_output(void *arg, const uint8_t *data, size_t len)
{
    struct px_leg *l = arg;
    if (l->state != PX_LEG_OPEN || l->tls_write_error != 0)
        return;
    struct px_io_target t = {l->w, &l->s.stream, &l->queued, on_written, l};
    l->tls_write_error = px_io_send(&t, data, len);
}

int px_leg_flush(struct px_leg *l)
{
    int rc = l->tls_write_error;
    if (rc == 0 || rc == 1)
        return rc == 0 ? 0 : -1;
    l->tls_write_error = 1; /* reported: later records are dropped, and nothing more said */
    l->ev->on_write_done(l, rc);
    return -1;
}

static void report_tls_error(struct px_leg *l)
{
    char detail[512];
    enum dbt_reason r = tlsw_conn_failure(l->tls, detail, sizeof(detail));
    /* The alert that tells the peer why went out with the failing call. */
    if (l->state == PX_LEG_OPEN)
        l->ev->on_tls_error(l, r, detail);
}

int px_leg_send(struct px_leg *l, const uint8_t *data, size_t len)
{
    if (l->state != PX_LEG_OPEN)
        return 0;
    l->bytes_out += len;
    if (l->stat_out)
        px_counter_add(l->stat_out, len);
    if (l->tls == NULL)
        return write_raw(l, data, len);
    if (tlsw_conn_write(l->tls, data, len) != TLSW_OK) {
        report_tls_error(l);
        return -1;
    }
    return px_leg_flush(l);
}

/* Decrypts what the engine holds into the plaintext buffer, handed on in one piece when full:
 * one write to the other side per read, not one per TLS record. */
static void drain(struct px_leg *l)
{
    uint8_t *buf = l->w->plain_buf;
    size_t cap = sizeof(l->w->plain_buf), have = 0;
    bool app_data = false;
    for (;;) {
        size_t n = 0;
        enum tlsw_status st = tlsw_conn_read(l->tls, buf + have, cap - have, &n);
        if (st == TLSW_OK && n > 0) {
            app_data = true;
            have += n;
            if (have < cap)
                continue;
        }
        if (have > 0) {
            deliver(l, buf, have);
            have = 0;
            if (!delivering(l))
                return;
            if (st == TLSW_OK)
                continue;
        }
        if (st == TLSW_CLOSED) {
            l->ev->on_read_end(l, 0);
            return;
        }
        if (st == TLSW_ERROR) {
            report_tls_error(l);
            return;
        }
        break;
    }
    /* A ticket arrived (TLS 1.3 sends them after the handshake). */
    struct tlsw_session *s = tlsw_conn_new_session(l->tls);
    bool ticket = s != NULL;
    if (s != NULL) {
        if (l->ev->on_session)
            l->ev->on_session(l, s);
        else
            tlsw_session_free(s);
    }
    px_leg_flush(l); /* post-handshake messages may have queued an answer (KeyUpdate) */
    /* SSL_MODE_RELEASE_BUFFERS frees the record buffer after application data, not after
     * other records (a session ticket): then it is given back here, off the relay's path. */
    if (ticket || !app_data)
        tlsw_conn_release_buffers(l->tls);
}

static void handshake_step(struct px_leg *l)
{
    enum tlsw_status st = tlsw_conn_handshake(l->tls);
    if (st == TLSW_ERROR) {
        report_tls_error(l);
        return;
    }
    if (px_leg_flush(l) != 0 || st != TLSW_OK)
        return;
    l->tls_up = true;
    l->ev->on_tls_done(l);
    if (delivering(l))
        drain(l); /* the peer's first records may have arrived with the handshake */
}

/* The first byte after agreeing to TLS must start a record. Plaintext here was sent before the
 * peer saw our answer: injected by someone on the path (CVE-2021-23222 toward upstreams) or
 * pipelined by a client into a connection it asked to encrypt (CVE-2021-23214). */
static bool check_first_record(struct px_leg *l, uint8_t first)
{
    l->expect_record = false;
    if (pg_is_tls_record_start(first))
        return true;
    char detail[160];
    bool client = l->side == PX_CLIENT;
    /* "Where its handshake was due": the upstream may have agreed to TLS ('S') or been sent a
     * direct TLS ClientHello; the owner knows which. */
    snprintf(detail, sizeof(detail), "%s sent unencrypted data (first byte 0x%02x) %s",
             client ? "client" : "upstream", first,
             client ? "after asking for TLS" : "where its TLS handshake was due");
    l->ev->on_tls_error(
        l, client ? DBT_CLIENT_PROTOCOL_ERROR : DBT_UPSTREAM_PLAINTEXT_AFTER_SSL_RESPONSE, detail);
    return false;
}

/* Ciphertext for the engine, lent for this call only: the record layer copies it straight into
 * its own buffer, and whatever it did not read (a handshake that paused, a leg that stopped
 * delivering) is kept by the engine when the call ends. */
static void feed_tls(struct px_leg *l, const uint8_t *data, size_t len)
{
    struct tlsw_conn *tls = l->tls;
    tlsw_conn_lend(tls, data, len);
    if (!l->tls_up)
        handshake_step(l);
    else
        drain(l);
    tlsw_conn_lend_end(tls);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
    struct px_leg *l = s->data;
    if (nread == 0 || !delivering(l))
        return;
    if (nread < 0) {
        l->ev->on_read_end(l, (int)nread);
        return;
    }
    const uint8_t *data = (const uint8_t *)buf->base;
    l->recent_io = true;
    if (l->tls == NULL) {
        deliver(l, data, (size_t)nread);
        return;
    }
    if (l->expect_record && !check_first_record(l, data[0]))
        return;
    feed_tls(l, data, (size_t)nread);
}

void px_leg_start_reading(struct px_leg *l)
{
    if (!l->reading && !l->eof && !l->halted && l->state == PX_LEG_OPEN) {
        l->reading = true;
        uv_read_start(&l->s.stream, on_alloc, on_read);
    }
}

void px_leg_stop_reading(struct px_leg *l)
{
    if (l->reading) {
        uv_read_stop(&l->s.stream);
        l->reading = false;
    }
}

void px_leg_halt(struct px_leg *l)
{
    px_leg_stop_reading(l);
    l->halted = true;
}

void px_leg_start_tls_with(struct px_leg *l, struct tlsw_conn *tls, const uint8_t *data, size_t len)
{
    l->tls = tls;
    l->tls_up = false;
    l->tls_write_error = 0;
    l->expect_record = true;
    tlsw_conn_set_output(tls, on_tls_output, l);
    if (len > 0) {
        if (check_first_record(l, data[0]))
            feed_tls(l, data, len);
        return;
    }
    /* The client role speaks first. A server has nothing to say before the ClientHello, and
     * asking OpenSSL early would allocate its 16 KiB record buffer for a client that may never
     * send one (a stalled handshake must stay small). */
    if (l->side == PX_UPSTREAM)
        handshake_step(l);
}

void px_leg_start_tls(struct px_leg *l, struct tlsw_conn *tls)
{
    px_leg_start_tls_with(l, tls, NULL, 0);
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
    struct px_leg *l = req->data;
    (void)status;
    if (l->state == PX_LEG_OPEN)
        l->ev->on_shutdown_done(l);
}

void px_leg_shutdown(struct px_leg *l)
{
    if (l->shut_sent || l->state != PX_LEG_OPEN)
        return;
    l->shut_sent = true;
    if (l->tls) {
        tlsw_conn_shutdown(l->tls);
        if (px_leg_flush(l) != 0)
            return;
    }
    l->shutdown_req.data = l;
    uv_shutdown(&l->shutdown_req, &l->s.stream, on_shutdown);
}

static void on_handle_closed(uv_handle_t *h)
{
    struct px_leg *l = h->data;
    l->state = PX_LEG_NONE;
    l->ev->on_closed(l);
}

void px_leg_close(struct px_leg *l)
{
    if (l->state != PX_LEG_OPEN)
        return;
    l->state = PX_LEG_CLOSING;
    l->reading = false;
    uv_close(&l->s.handle, on_handle_closed);
}

size_t px_leg_unsent(const struct px_leg *l)
{
    uv_os_fd_t fd;
    int n = 0;
    if (l->state != PX_LEG_OPEN || l->s.handle.type != UV_TCP ||
        uv_fileno(&l->s.handle, &fd) != 0 || ioctl(fd, SIOCOUTQ, &n) != 0 || n < 0)
        return 0;
    return (size_t)n;
}

void px_leg_abort(struct px_leg *l)
{
    if (l->state != PX_LEG_OPEN)
        return;
    if (l->s.handle.type != UV_TCP || l->shut_sent) {
        px_leg_close(l);
        return;
    }
    l->state = PX_LEG_CLOSING;
    l->reading = false;
    if (uv_tcp_close_reset(&l->s.tcp, on_handle_closed) != 0)
        uv_close(&l->s.handle, on_handle_closed); /* SO_LINGER refused: a FIN is all we have */
}

void px_leg_trim(struct px_leg *l)
{
    if (l->tls)
        tlsw_conn_trim(l->tls);
}
