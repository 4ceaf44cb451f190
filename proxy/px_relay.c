#include "px_relay.h"

void px_relay_backpressure(struct px_leg *from, struct px_leg *to)
{
    if (to->queued > PX_HIGH_WATER)
        px_leg_stop_reading(from);
}

int px_relay_forward(struct px_leg *from, struct px_leg *to, const uint8_t *data, size_t len)
{
    if (px_leg_send(to, data, len) != 0)
        return -1;
    px_relay_backpressure(from, to);
    return 0;
}

void px_relay_eof(struct px_leg *from, struct px_leg *to)
{
    from->eof = true;
    px_leg_stop_reading(from);
    /* A peer that already hung up gets nothing more: the connection ends once drained. */
    if (!to->eof)
        px_leg_shutdown(to);
}

static void resume_one(struct px_leg *from, struct px_leg *to)
{
    if (to->queued <= PX_HIGH_WATER / 2)
        px_leg_start_reading(from);
}

void px_relay_resume(struct px_leg *a, struct px_leg *b)
{
    resume_one(a, b);
    resume_one(b, a);
}

bool px_relay_finished(const struct px_leg *a, const struct px_leg *b)
{
    return a->eof && b->eof && a->queued == 0 && b->queued == 0;
}
