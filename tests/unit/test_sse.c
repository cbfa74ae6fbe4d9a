/* Unit tests for common/sse.c: splits, line endings, fields, bounds, truncation. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/sse.h"

#define ARRAY_LEN_T(a) (sizeof(a) / sizeof((a)[0]))
#define MAX_EVENTS     16
#define FIELD_CAP      512

struct collected {
    char event[MAX_EVENTS][FIELD_CAP];
    char data[MAX_EVENTS][FIELD_CAP];
    char id[MAX_EVENTS][FIELD_CAP];
    int n;
    int stop_at; /* stop after this many events; 0 = never */
    int overflow;
};

static int collect_cb(void *ud, const struct sse_event *ev)
{
    struct collected *c = ud;
    if (c->n >= MAX_EVENTS || ev->data_len >= FIELD_CAP || ev->event_len >= FIELD_CAP ||
        ev->id_len >= FIELD_CAP) {
        c->overflow = 1;
        return 1;
    }
    /* The pointers are NUL-terminated and the lengths match. */
    assert_int_equal(strlen(ev->data), ev->data_len);
    assert_int_equal(strlen(ev->event), ev->event_len);
    assert_int_equal(strlen(ev->id), ev->id_len);
    memcpy(c->event[c->n], ev->event, ev->event_len + 1);
    memcpy(c->data[c->n], ev->data, ev->data_len + 1);
    memcpy(c->id[c->n], ev->id, ev->id_len + 1);
    c->n++;
    return c->stop_at && c->n >= c->stop_at;
}

/* A realistic OpenAI chat stream: keep-alive comment, role delta, content
 * deltas, a usage chunk and the [DONE] marker. */
static const char openai_stream[] =
    ": OPENROUTER PROCESSING\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
    "\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"finish_reason\":null}]}\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n"
    "\n"
    "data:{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\\n\"}}]}\n"
    "\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,"
    "\"completion_tokens\":2,\"total_tokens\":7}}\n"
    "\n"
    "data: [DONE]\n"
    "\n";

static const char *const openai_expected[] = {
    "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
    "\"model\":\"gpt-4o\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"finish_reason\":null}]}",
    "{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}",
    "{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\\n\"}}]}",
    ("{\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,"
     "\"completion_tokens\":2,\"total_tokens\":7}}"),
    "[DONE]",
};

/* Rewrites every '\n' of src as eol ("\n", "\r\n" or "\r"); caller frees. */
static char *with_eol(const char *src, const char *eol, size_t *out_len)
{
    size_t el = strlen(eol), n = 0;
    char *out = malloc(strlen(src) * el + 1);
    assert_non_null(out);
    for (const char *s = src; *s; s++) {
        if (*s == '\n') {
            memcpy(out + n, eol, el);
            n += el;
        } else {
            out[n++] = *s;
        }
    }
    out[n] = '\0';
    *out_len = n;
    return out;
}

/* Feeds buf cut at the given ascending offsets; returns the last feed result. */
static int feed_cuts(struct sse_parser *p, const char *buf, size_t len, const size_t *cuts,
                     size_t ncuts)
{
    size_t prev = 0;
    for (size_t i = 0; i <= ncuts; i++) {
        size_t end = i < ncuts ? cuts[i] : len;
        /* Copy each piece so ASan catches reads past its end. */
        char *piece = malloc(end - prev + 1);
        assert_non_null(piece);
        memcpy(piece, buf + prev, end - prev);
        int rc = sse_parser_feed(p, piece, end - prev);
        free(piece);
        if (rc) return rc;
        prev = end;
    }
    return 0;
}

static void check_openai(const struct collected *c, const struct sse_parser *p)
{
    assert_int_equal(c->n, (int)ARRAY_LEN_T(openai_expected));
    for (int i = 0; i < c->n; i++) {
        assert_string_equal(c->data[i], openai_expected[i]);
        assert_string_equal(c->event[i], "");
    }
    assert_true(sse_parser_saw_done(p));
}

static void run_openai_cuts(const char *buf, size_t len, const size_t *cuts, size_t ncuts)
{
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, 4096, collect_cb, &c);
    assert_int_equal(feed_cuts(&p, buf, len, cuts, ncuts), 0);
    assert_int_equal(sse_parser_finish(&p), 0);
    assert_int_equal(c.n, (int)ARRAY_LEN_T(openai_expected));
    for (int i = 0; i < c.n; i++)
        assert_string_equal(c.data[i], openai_expected[i]);
    assert_true(sse_parser_saw_done(&p));
    sse_parser_free(&p);
}

/* ------------------------------------------------------------------ */

static void test_openai_stream_all_splits(void **state)
{
    (void)state;
    static const char *const eols[] = {"\n", "\r\n", "\r"};
    for (size_t e = 0; e < ARRAY_LEN_T(eols); e++) {
        size_t len;
        char *buf = with_eol(openai_stream, eols[e], &len);

        /* Whole. */
        run_openai_cuts(buf, len, NULL, 0);

        /* Byte by byte. */
        size_t *every = malloc(len * sizeof(*every));
        assert_non_null(every);
        for (size_t i = 0; i + 1 < len; i++)
            every[i] = i + 1;
        run_openai_cuts(buf, len, every, len - 1);
        free(every);

        /* Every two-way split, including the empty first/last piece. */
        for (size_t cut = 0; cut <= len; cut++)
            run_openai_cuts(buf, len, &cut, 1);

        /* Pseudo-random multi-way splits with a fixed seed. */
        uint32_t seed = 12345;
        for (int round = 0; round < 200; round++) {
            size_t cuts[32], n = 0, pos = 0;
            while (n < 32) {
                seed = seed * 1103515245u + 12345u;
                pos += (seed >> 16) % 40;
                if (pos > len) break;
                cuts[n++] = pos;
            }
            run_openai_cuts(buf, len, cuts, n);
        }
        free(buf);
    }
}

static void test_whole_stream_fields(void **state)
{
    (void)state;
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, 0, collect_cb, &c);
    assert_int_equal(sse_parser_feed(&p, openai_stream, strlen(openai_stream)), 0);
    check_openai(&c, &p);
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
}

static void test_multiline_data_and_fields(void **state)
{
    (void)state;
    static const char in[] = "data: a\n"
                             "data:b\n"
                             "data:  c\n"
                             "\n"
                             ": a comment\n"
                             ":another\n"
                             "event: message_start\n"
                             "id: 7\n"
                             "retry: 2500\n"
                             "unknown: field\n"
                             "data: {\"type\":\"message_start\"}\n"
                             "\n"
                             "event: ping\n"
                             "\n"
                             "id: 8\n"
                             "\n"
                             "data\n"
                             "\n"
                             "data:\n"
                             "data:\n"
                             "\n"
                             "id: bad\0id\n"
                             "data: x:y: z\n"
                             "\n";
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, 0, collect_cb, &c);
    assert_int_equal(sse_parser_feed(&p, in, sizeof(in) - 1), 0);
    assert_int_equal(c.n, 6);
    assert_string_equal(c.data[0], "a\nb\n c");
    assert_string_equal(c.event[0], "");
    assert_string_equal(c.id[0], "");
    assert_string_equal(c.event[1], "message_start");
    assert_string_equal(c.id[1], "7");
    assert_string_equal(c.data[1], "{\"type\":\"message_start\"}");
    /* An event field alone dispatches; the id persists across events. */
    assert_string_equal(c.event[2], "ping");
    assert_string_equal(c.data[2], "");
    assert_string_equal(c.id[2], "7");
    /* "id: 8" alone does not dispatch but updates the last id. */
    assert_string_equal(c.data[3], "");
    assert_string_equal(c.event[3], "");
    assert_string_equal(c.id[3], "8");
    assert_string_equal(c.data[4], "\n");
    /* An id containing NUL is ignored; only the first colon splits. */
    assert_string_equal(c.id[5], "8");
    assert_string_equal(c.data[5], "x:y: z");
    assert_int_equal(p.retry_ms, 2500);
    assert_false(sse_parser_saw_done(&p));
    assert_int_equal(sse_parser_finish(&p), 0);
    sse_parser_free(&p);
}

static void test_mixed_line_endings(void **state)
{
    (void)state;
    static const char in[] = "data: a\r\ndata: b\rdata: c\n\r\n"
                             "data: d\r\r"
                             "data: e\n\n";
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, 0, collect_cb, &c);
    /* Split right between a \r and its \n. */
    size_t cut = strlen("data: a\r");
    assert_int_equal(feed_cuts(&p, in, sizeof(in) - 1, &cut, 1), 0);
    assert_int_equal(c.n, 3);
    assert_string_equal(c.data[0], "a\nb\nc");
    assert_string_equal(c.data[1], "d");
    assert_string_equal(c.data[2], "e");
    sse_parser_free(&p);
}

static void test_bom(void **state)
{
    (void)state;
    static const char in[] = "\xEF\xBB\xBF"
                             "data: a\n\n"
                             "\xEF\xBB\xBF"
                             "data: b\n\n";
    for (size_t cut = 0; cut <= sizeof(in) - 1; cut++) {
        struct collected c = {0};
        struct sse_parser p;
        sse_parser_init(&p, 0, collect_cb, &c);
        assert_int_equal(feed_cuts(&p, in, sizeof(in) - 1, &cut, 1), 0);
        /* Only the leading BOM is skipped; the second one makes an unknown field. */
        assert_int_equal(c.n, 1);
        assert_string_equal(c.data[0], "a");
        sse_parser_free(&p);
    }

    /* A partial BOM is data, not skipped. */
    struct collected c = {0};
    struct sse_parser p;
    sse_parser_init(&p, 0, collect_cb, &c);
    assert_int_equal(sse_parser_feed(&p, "\xEF", 1), 0);
    assert_int_equal(sse_parser_feed(&p, "\xBB", 1), 0);
    assert_int_equal(sse_parser_feed(&p, ":x\ndata: q\n\n", 12), 0);
    assert_int_equal(c.n, 1);
    assert_string_equal(c.data[0], "q");

    /* A stream that is only a partial BOM is truncated. */
    sse_parser_reset(&p);
    assert_int_equal(sse_parser_feed(&p, "\xEF\xBB", 2), 0);
    assert_int_equal(sse_parser_finish(&p), 1);
    sse_parser_free(&p);
}

static void test_oversize_event(void **state)
{
    (void)state;
    char big[200];
    memset(big, 'x', sizeof(big));
    memcpy(big, "data: ", 6);

    /* One long data line, whole or split. */
    for (size_t cut = 0; cut <= sizeof(big); cut += 17) {
        struct collected c = {0};
        struct sse_parser p;
        sse_parser_init(&p, 64, collect_cb, &c);
        assert_int_equal(sse_parser_feed(&p, "data: ok\n\n", 10), 0);
        assert_int_equal(feed_cuts(&p, big, sizeof(big), &cut, 1), SSE_ETOOBIG);
        /* Sticky: even a valid event is refused until reset. */
        assert_int_equal(sse_parser_feed(&p, "data: a\n\n", 9), SSE_ETOOBIG);
        assert_int_equal(sse_parser_finish(&p), SSE_ETOOBIG);
        assert_int_equal(c.n, 1);
        sse_parser_reset(&p);
        assert_int_equal(sse_parser_feed(&p, "data: a\n\n", 9), 0);
        assert_int_equal(c.n, 2);
        sse_parser_free(&p);
    }

    /* Many short data lines adding up past the bound. */
    struct sse_parser p;
    sse_parser_init(&p, 64, NULL, NULL);
    int rc = 0;
    for (int i = 0; i < 20 && rc == 0; i++)
        rc = sse_parser_feed(&p, "data: 0123456789\n", 17);
    assert_int_equal(rc, SSE_ETOOBIG);
    sse_parser_free(&p);

    /* An event of exactly the bound is fine. */
    sse_parser_init(&p, 10, NULL, NULL);
    assert_int_equal(sse_parser_feed(&p, "data:0123\ndata:4\n\n", 18), 0);
    sse_parser_free(&p);
}

static void test_callback_stop(void **state)
{
    (void)state;
    struct collected c = {.stop_at = 2};
    struct sse_parser p;
    sse_parser_init(&p, 0, collect_cb, &c);
    assert_int_equal(sse_parser_feed(&p, openai_stream, strlen(openai_stream)), SSE_STOPPED);
    assert_int_equal(c.n, 2);
    assert_int_equal(sse_parser_feed(&p, "data: x\n\n", 9), SSE_STOPPED);
    assert_int_equal(c.n, 2);
    sse_parser_reset(&p);
    c.stop_at = 0;
    assert_int_equal(sse_parser_feed(&p, "data: x\n\n", 9), 0);
    assert_int_equal(c.n, 3);
    sse_parser_free(&p);
}

static void test_finish_detects_truncation(void **state)
{
    (void)state;
    size_t len = strlen(openai_stream);
    /* Cut the stream at every point: finish() reports pending bytes exactly
     * when the cut is not on an event boundary, and [DONE] only at the end. */
    for (size_t cut = 0; cut <= len; cut++) {
        struct collected c = {0};
        struct sse_parser p;
        sse_parser_init(&p, 0, collect_cb, &c);
        assert_int_equal(sse_parser_feed(&p, openai_stream, cut), 0);
        int fin = sse_parser_finish(&p);
        bool at_boundary =
            cut == 0 || cut == strlen(": OPENROUTER PROCESSING\n") ||
            (cut >= 2 && openai_stream[cut - 1] == '\n' && openai_stream[cut - 2] == '\n');
        assert_int_equal(fin, at_boundary ? 0 : 1);
        assert_int_equal(sse_parser_saw_done(&p), cut == len);
        sse_parser_free(&p);
    }

    struct sse_parser p;
    sse_parser_init(&p, 0, NULL, NULL);
    assert_int_equal(sse_parser_feed(&p, "data: x\n", 8), 0);
    assert_int_equal(sse_parser_finish(&p), 1);
    assert_int_equal(sse_parser_feed(&p, "data: x\r", 8), 0);
    assert_int_equal(sse_parser_finish(&p), 1);
    assert_int_equal(sse_parser_feed(&p, "data: x\r\r", 9), 0);
    assert_int_equal(sse_parser_finish(&p), 0);
    assert_int_equal(sse_parser_feed(&p, ": only a comment", 16), 0);
    assert_int_equal(sse_parser_finish(&p), 1);
    sse_parser_free(&p);
}

static void test_done_detection(void **state)
{
    (void)state;
    struct sse_event ev = {.event = "", .data = "[DONE]", .data_len = 6, .id = ""};
    assert_true(sse_is_done(&ev));
    ev.data = "[DONE] ";
    ev.data_len = 7;
    assert_false(sse_is_done(&ev));
    ev.data = "[done]";
    ev.data_len = 6;
    assert_false(sse_is_done(&ev));

    struct sse_parser p;
    sse_parser_init(&p, 0, NULL, NULL);
    assert_int_equal(sse_parser_feed(&p, "data:  [DONE]\n\n", 15), 0);
    assert_false(sse_parser_saw_done(&p)); /* only one space is stripped */
    assert_int_equal(sse_parser_feed(&p, "data:[DONE]\n\n", 13), 0);
    assert_true(sse_parser_saw_done(&p));
    sse_parser_reset(&p);
    assert_false(sse_parser_saw_done(&p));
    sse_parser_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_openai_stream_all_splits),
        cmocka_unit_test(test_whole_stream_fields),
        cmocka_unit_test(test_multiline_data_and_fields),
        cmocka_unit_test(test_mixed_line_endings),
        cmocka_unit_test(test_bom),
        cmocka_unit_test(test_oversize_event),
        cmocka_unit_test(test_callback_stop),
        cmocka_unit_test(test_finish_detects_truncation),
        cmocka_unit_test(test_done_detection),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
