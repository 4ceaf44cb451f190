/* The engine's transport: one custom BIO per connection, both the SSL's read and write side.
 *
 * Two memory BIOs (the first design) cost a copy each way on top of the record layer's own:
 * ciphertext read from the socket was copied into the input BIO, then out of it into OpenSSL's
 * record buffer; records were copied from OpenSSL's write buffer into the output BIO, then out
 * of it into a buffer for the socket. This BIO has no buffer of its own on the way through:
 *   - in: the proxy lends the bytes it just read (its read buffer) for the length of one call;
 *     the record layer copies them straight into its record buffer. Only bytes the engine did
 *     not read before the call ended are kept (a copy, rare: a connection that stopped
 *     delivering, a handshake that paused);
 *   - out: each record goes to the sink the proxy set, straight from OpenSSL's write buffer
 *     (the proxy writes it to the socket and copies only what the socket did not take).
 * Without a sink (the probe, tests) records collect in a buffer that tlsw_bio_out_take drains. */
#define TLSW_INTERNAL
#include "tlsw.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* A byte queue: data[off, off + len) is unread; grows by doubling, never shrinks until trim. */
struct byte_queue {
    uint8_t *data;
    size_t off, len, cap;
};

struct tlsw_bio {
    const uint8_t *lent; /* ciphertext lent for the current call (tlsw_bio_lend) */
    size_t lent_len;
    struct byte_queue kept; /* ciphertext the engine has still to read, ours */
    struct byte_queue out;  /* ciphertext for the peer when there is no sink */
    tlsw_output_fn sink;
    void *sink_arg;
};

static DBT_MUST_USE int queue_append(struct byte_queue *q, const uint8_t *data, size_t len)
{
    if (len == 0)
        return 0;
    if (q->off > 0 && q->off + q->len + len > q->cap) {
        memmove(q->data, q->data + q->off, q->len); /* slow path only: kept bytes are rare */
        q->off = 0;
    }
    if (q->len + len > q->cap) {
        size_t cap = q->cap ? q->cap : 4096;
        while (cap < q->len + len)
            cap *= 2;
        uint8_t *grown = realloc(q->data, cap);
        if (grown == NULL)
            return -1;
        q->data = grown;
        q->cap = cap;
    }
    memcpy(q->data + q->off + q->len, data, len);
    q->len += len;
    return 0;
}

static size_t queue_take(struct byte_queue *q, uint8_t *dst, size_t cap)
{
    size_t n = q->len < cap ? q->len : cap;
    if (n == 0)
        return 0; /* q->data may be NULL */
    memcpy(dst, q->data + q->off, n);
    q->off += n;
    q->len -= n;
    if (q->len == 0)
        q->off = 0;
    return n;
}

static void queue_release(struct byte_queue *q)
{
    free(q->data);
    *q = (struct byte_queue){0};
}

static int bio_read(BIO *b, char *dst, size_t cap, size_t *got)
{
    struct tlsw_bio *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    size_t n = queue_take(&t->kept, (uint8_t *)dst, cap);
    if (n < cap && t->lent_len > 0) {
        size_t m = t->lent_len < cap - n ? t->lent_len : cap - n;
        memcpy(dst + n, t->lent, m);
        t->lent += m;
        t->lent_len -= m;
        n += m;
    }
    if (n == 0) {
        /* Nothing yet means more to come, never EOF: EOF is the socket's to report. */
        BIO_set_retry_read(b);
        *got = 0;
        return 0;
    }
    *got = n;
    return 1;
}

static int bio_write(BIO *b, const char *src, size_t len, size_t *written)
{
    struct tlsw_bio *t = BIO_get_data(b);
    BIO_clear_retry_flags(b);
    if (t->sink != NULL)
        t->sink(t->sink_arg, (const uint8_t *)src, len); /* takes all: queues what it must */
    else if (queue_append(&t->out, (const uint8_t *)src, len) != 0)
        return 0; /* out of memory: the engine fails the connection */
    *written = len;
    return 1;
}

static long bio_ctrl(BIO *b, int cmd, long num, void *ptr)
{
    struct tlsw_bio *t = BIO_get_data(b);
    (void)num;
    (void)ptr;
    switch (cmd) {
    case BIO_CTRL_PENDING:
        return (long)(t->kept.len + t->lent_len);
    case BIO_CTRL_WPENDING:
        return (long)t->out.len;
    case BIO_CTRL_FLUSH:
        return 1; /* records already went to the sink, or wait in out for the caller */
    default:
        return 0; /* EOF: never (see bio_read); nothing else applies */
    }
}

static int bio_create(BIO *b)
{
    struct tlsw_bio *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return 0;
    BIO_set_data(b, t);
    BIO_set_init(b, 1);
    return 1;
}

static int bio_destroy(BIO *b)
{
    struct tlsw_bio *t = BIO_get_data(b);
    if (t != NULL) {
        queue_release(&t->kept);
        queue_release(&t->out);
        free(t);
        BIO_set_data(b, NULL);
    }
    return 1;
}

static BIO_METHOD *method;
static pthread_once_t method_once = PTHREAD_ONCE_INIT;

/* Built once for the process and never freed: every connection's BIO points at it. */
static void make_method(void)
{
    BIO_METHOD *m = BIO_meth_new(BIO_get_new_index() | BIO_TYPE_SOURCE_SINK, "dbtrust transport");
    if (m == NULL || BIO_meth_set_read_ex(m, bio_read) != 1 ||
        BIO_meth_set_write_ex(m, bio_write) != 1 || BIO_meth_set_ctrl(m, bio_ctrl) != 1 ||
        BIO_meth_set_create(m, bio_create) != 1 || BIO_meth_set_destroy(m, bio_destroy) != 1) {
        BIO_meth_free(m);
        return;
    }
    method = m;
}

BIO *tlsw_bio_new(void)
{
    pthread_once(&method_once, make_method);
    return method != NULL ? BIO_new(method) : NULL;
}

int tlsw_bio_keep(BIO *b, const uint8_t *data, size_t len)
{
    struct tlsw_bio *t = BIO_get_data(b);
    return queue_append(&t->kept, data, len);
}

void tlsw_bio_lend(BIO *b, const uint8_t *data, size_t len)
{
    struct tlsw_bio *t = BIO_get_data(b);
    t->lent = data;
    t->lent_len = len;
}

int tlsw_bio_lend_end(BIO *b)
{
    struct tlsw_bio *t = BIO_get_data(b);
    int rc = queue_append(&t->kept, t->lent, t->lent_len);
    t->lent = NULL;
    t->lent_len = 0;
    return rc;
}

void tlsw_bio_set_sink(BIO *b, tlsw_output_fn sink, void *arg)
{
    struct tlsw_bio *t = BIO_get_data(b);
    t->sink = sink;
    t->sink_arg = arg;
    if (sink != NULL && t->out.len > 0) /* what was written before there was a sink */
        sink(arg, t->out.data + t->out.off, t->out.len);
    queue_release(&t->out);
}

size_t tlsw_bio_out_pending(BIO *b)
{
    struct tlsw_bio *t = BIO_get_data(b);
    return t->out.len;
}

size_t tlsw_bio_out_take(BIO *b, uint8_t *dst, size_t cap)
{
    struct tlsw_bio *t = BIO_get_data(b);
    return queue_take(&t->out, dst, cap);
}

void tlsw_bio_trim(BIO *b)
{
    struct tlsw_bio *t = BIO_get_data(b);
    if (t->kept.len == 0)
        queue_release(&t->kept);
    if (t->out.len == 0)
        queue_release(&t->out);
}
