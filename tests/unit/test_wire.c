/* wire.h: byte order helpers, the bounded writer and the allocator of the machines. */
#include <criterion/criterion.h>
#include <string.h>

#include "wire.h"

Test(wire, be32_and_le24_round_trip)
{
    uint8_t b[4];
    wire_put_be32(b, 0x04D2162Fu);
    cr_assert(b[0] == 0x04 && b[1] == 0xD2 && b[2] == 0x16 && b[3] == 0x2F);
    cr_assert_eq(wire_be32(b), 0x04D2162Fu);
    wire_put_le24(b, 0xABCDEFu);
    cr_assert(b[0] == 0xEF && b[1] == 0xCD && b[2] == 0xAB);
    cr_assert_eq(wire_le24(b), 0xABCDEFu);
}

Test(wire, writes_append_in_order)
{
    uint8_t buf[32];
    struct wire_out w;
    static const uint8_t want[] = {'E', 0x00, 0x00, 0x01, 0x02, 'h', 'i', 0, 0xAA, 0xBB};

    memset(buf, 0x5A, sizeof buf);
    wire_out_init(&w, buf, sizeof buf);
    cr_assert_eq(w.len, 0);
    cr_assert_eq(w.overflow, 0);
    wire_out_u8(&w, 'E');
    wire_out_be32(&w, 0x0102);
    wire_out_cstr(&w, "hi");
    wire_out_bytes(&w, (const uint8_t[]){0xAA, 0xBB}, 2);
    wire_out_bytes(&w, NULL, 0); /* an empty write is legal with a NULL pointer */
    cr_assert_eq(w.len, sizeof want);
    cr_assert_eq(w.overflow, 0);
    cr_assert_arr_eq(buf, want, sizeof want);
    cr_assert_eq(buf[sizeof want], 0x5A, "wrote past the end of the data");
}

Test(wire, exact_fit_is_not_overflow)
{
    uint8_t buf[5];
    struct wire_out w;

    wire_out_init(&w, buf, sizeof buf);
    wire_out_be32(&w, 0xDEADBEEFu);
    wire_out_u8(&w, 7);
    cr_assert_eq(w.len, 5);
    cr_assert_eq(w.overflow, 0);
    cr_assert_eq(buf[4], 7);
}

Test(wire, overflow_drops_the_whole_write_and_sticks)
{
    uint8_t buf[8];
    struct wire_out w;

    memset(buf, 0x5A, sizeof buf);
    wire_out_init(&w, buf, 6);
    wire_out_be32(&w, 0x01020304u);
    wire_out_be32(&w, 0x05060708u); /* 2 bytes of room: nothing of it may land */
    cr_assert_eq(w.overflow, 1);
    cr_assert_eq(w.len, 4);
    cr_assert_eq(buf[4], 0x5A);
    cr_assert_eq(buf[5], 0x5A);
    wire_out_u8(&w, 9); /* would fit, but the message is already broken */
    cr_assert_eq(w.len, 4);
    cr_assert_eq(buf[4], 0x5A);
    cr_assert_eq(w.overflow, 1);
}

Test(wire, cstr_counts_its_terminator)
{
    uint8_t buf[3];
    struct wire_out w;

    wire_out_init(&w, buf, sizeof buf);
    wire_out_cstr(&w, "abc"); /* 4 bytes with the NUL */
    cr_assert_eq(w.overflow, 1);
    cr_assert_eq(w.len, 0);

    wire_out_init(&w, buf, sizeof buf);
    wire_out_cstr(&w, "ab");
    cr_assert_eq(w.overflow, 0);
    cr_assert_arr_eq(buf, "ab", 3);
}

Test(wire, zero_capacity)
{
    struct wire_out w;

    wire_out_init(&w, NULL, 0);
    wire_out_bytes(&w, NULL, 0);
    cr_assert_eq(w.overflow, 0);
    wire_out_u8(&w, 1);
    cr_assert_eq(w.overflow, 1);
    cr_assert_eq(w.len, 0);
}

Test(wire, alloc_fails_once_where_asked)
{
    void *p[4];

    wire_alloc_fail_after(2); /* two more succeed, the third fails, then all succeed again */
    for (size_t i = 0; i < 4; i++)
        p[i] = wire_alloc(16);
    cr_assert(p[0] && p[1] && !p[2] && p[3]);
    wire_alloc_fail_after(-1);
    void *q = wire_alloc(16);
    cr_assert_not_null(q);
    memset(q, 0x5A, 16);
    wire_free(q, 16);
    for (size_t i = 0; i < 4; i++)
        wire_free(p[i], 16); /* NULL included */
    wire_alloc_fail_after(0);
    cr_assert_null(wire_alloc(1));
    q = wire_alloc(1);
    cr_assert_not_null(q, "a planned failure happens once");
    wire_free(q, 1);
}
