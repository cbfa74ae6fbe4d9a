/* Deterministic, bounded mutation fuzzing of every parser that reads untrusted or operator
 * input: request bodies, cache entries and their replay, SSE streams, JSON with comments, the
 * daemon config, routing policies, key headers and records, the Anthropic translation, and the
 * engine's JSON, model config, tokenizer and safetensors readers. Each target mutates a small
 * inline corpus with a seeded PRNG and checks properties of the result (errors carry a message,
 * nothing leaks, round trips are stable, splits do not matter); it is meant to run under
 * ASan/UBSan. LLMGATE_FUZZ_ITERS sets the mutations per seed input, LLMGATE_FUZZ_SEED the PRNG
 * seed, LLMGATE_FUZZ_TARGET a substring of the targets to run; a failing case prints its
 * target, seed, iteration and input. */
#define _GNU_SOURCE /* RTLD_NOLOAD */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "cache/rcache.h"
#include "common/jsonc.h"
#include "common/jsonv.h"
#include "common/sse.h"
#include "engine/json.h"
#include "engine/model.h"
#include "engine/safetensors.h"
#include "engine/tokenizer.h"
#include "gateway/config.h"
#include "gateway/keys.h"
#include "gateway/openai.h"
#include "routing/adapter.h"
#include "routing/policy.h"
#include "routing/targets.h"

#if defined(__SANITIZE_ADDRESS__)
#define FUZZ_SANITIZER 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUZZ_SANITIZER 1
#endif
#endif
#ifdef FUZZ_SANITIZER
#include <dlfcn.h>
#include <sanitizer/common_interface_defs.h>
#endif

#define LEN(a)             (sizeof(a) / sizeof((a)[0]))
#define FUZZ_DEFAULT_ITERS 3000
#define FUZZ_DEFAULT_SEED  0x6c6c6d6761746531ULL
#define FUZZ_MAX_INPUT     (64 * 1024) /* mutated inputs are cut to this */
#define FUZZ_TRUNC_ALL     512         /* seeds up to this long are cut at every length */
#define FUZZ_SHOW_BYTES    4096        /* bytes of a failing input printed */

/* ================================================================ PRNG and case state */

enum case_kind { CASE_SEED, CASE_TRUNCATION, CASE_MUTATION, CASE_GENERATED };

static const char *const case_kind_name[] = {"seed", "truncation at", "mutation", "generated"};

/* The case being run, for the report when a property fails or a sanitizer aborts. */
static struct {
    const char *target;
    size_t seed_index;
    enum case_kind kind;
    size_t iter;
    uint64_t case_seed;
    const char *input;
    size_t len;
    bool active;
} fz;

static uint64_t fz_base_seed = FUZZ_DEFAULT_SEED;
static size_t fz_iters = FUZZ_DEFAULT_ITERS;
static const char *fz_only; /* LLMGATE_FUZZ_TARGET: run only targets whose name contains it */
static uint64_t fz_rng;

/* splitmix64: every case gets its own stream, derived from the case's coordinates, so a
 * failure reproduces without replaying the cases before it. */
static uint64_t splitmix(uint64_t *s)
{
    uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

static uint64_t rng_next(void)
{
    return splitmix(&fz_rng);
}

/* Uniform in [0, n); 0 when n is 0. */
static size_t rng_below(size_t n)
{
    return n ? (size_t)(rng_next() % n) : 0;
}

static bool rng_chance(unsigned percent)
{
    return rng_below(100) < percent;
}

static uint64_t hash_str(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static void case_begin(enum case_kind kind, size_t iter)
{
    fz.kind = kind;
    fz.iter = iter;
    uint64_t s = fz_base_seed ^ hash_str(fz.target);
    s ^= splitmix(&s) + fz.seed_index * 0x100000001b3ULL;
    s ^= splitmix(&s) + (uint64_t)kind * 0x5851f42d4c957f2dULL + iter;
    fz.case_seed = splitmix(&s);
    fz_rng = fz.case_seed;
}

/* ================================================================ reporting */

static void print_input(const char *s, size_t n)
{
    size_t show = n > FUZZ_SHOW_BYTES ? FUZZ_SHOW_BYTES : n;
    fprintf(stderr, "  input (%zu bytes%s): \"", n, n > show ? ", truncated" : "");
    for (size_t i = 0; i < show; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c >= 0x20 && c < 0x7f && c != '"' && c != '\\')
            fputc(c, stderr);
        else
            fprintf(stderr, "\\x%02x", c);
    }
    fputs(show < n ? "\"...\n" : "\"\n", stderr);
}

/* Prints the case being run, once (a property failed, a sanitizer aborts, or the test is torn
 * down in the middle of a case). line is the failed check's, 0 when there is none. */
static void fuzz_report(const char *what, int line)
{
    if (!fz.active) return;
    fz.active = false;
    fprintf(stderr, "fuzz: target %s, seed input #%zu, %s %zu, case rng 0x%016llx: %s", fz.target,
            fz.seed_index, case_kind_name[fz.kind], fz.iter, (unsigned long long)fz.case_seed,
            what);
    if (line) fprintf(stderr, " (test_fuzz.c:%d)", line);
    fputc('\n', stderr);
    if (fz.input) print_input(fz.input, fz.len);
    fprintf(stderr,
            "  reproduce: LLMGATE_FUZZ_TARGET='%s' LLMGATE_FUZZ_SEED=0x%llx "
            "LLMGATE_FUZZ_ITERS=%zu\n",
            fz.target, (unsigned long long)fz_base_seed,
            fz.kind == CASE_MUTATION || fz.kind == CASE_GENERATED ? fz.iter + 1 : 1);
}

#define FUZZ_CHECK(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) {                                                                             \
            fuzz_report("property failed: " #cond, __LINE__);                                      \
            fail_msg("%s", "property failed: " #cond);                                             \
        }                                                                                          \
    } while (0)

#ifdef FUZZ_SANITIZER
/* ASan/UBSan abort the process: say which case it was first. */
static void fuzz_on_death(void)
{
    fuzz_report("sanitizer report above", 0);
}

static void fuzz_watch_sanitizers(void)
{
    __sanitizer_set_death_callback(fuzz_on_death);
#if defined(__GNUC__) && !defined(__clang__)
    /* GCC links UBSan as a runtime of its own, with its own death callback. */
    void *ubsan = dlopen("libubsan.so.1", RTLD_LAZY | RTLD_NOLOAD);
    if (ubsan) {
        void (*set)(void (*)(void));
        *(void **)&set = dlsym(ubsan, "__sanitizer_set_death_callback");
        if (set) set(fuzz_on_death);
        dlclose(ubsan);
    }
#endif
}
#endif

/* Runs after every test, also after a signal cmocka caught in the middle of a case. */
static int fuzz_teardown(void **state)
{
    (void)state;
    fuzz_report("the case did not finish (crash or abort)", 0);
    return 0;
}

/* ================================================================ byte buffers */

struct fbuf {
    char *p;
    size_t len, cap;
};

static void fb_reserve(struct fbuf *b, size_t need)
{
    if (need <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < need)
        cap *= 2;
    char *p = realloc(b->p, cap);
    assert_non_null(p);
    b->p = p;
    b->cap = cap;
}

static void fb_set(struct fbuf *b, const char *s, size_t n)
{
    fb_reserve(b, n + 1);
    if (n) memcpy(b->p, s, n);
    b->len = n;
}

static void fb_add(struct fbuf *b, const char *s, size_t n)
{
    fb_reserve(b, b->len + n + 1);
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
}

static void fb_addf(struct fbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void fb_addf(struct fbuf *b, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    assert_true(n >= 0);
    fb_reserve(b, b->len + (size_t)n + 1);
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
}

static void fb_insert(struct fbuf *b, size_t at, const char *s, size_t n)
{
    fb_reserve(b, b->len + n + 1);
    memmove(b->p + at + n, b->p + at, b->len - at);
    memcpy(b->p + at, s, n);
    b->len += n;
}

static void fb_erase(struct fbuf *b, size_t at, size_t n)
{
    if (at >= b->len) return;
    if (n > b->len - at) n = b->len - at;
    memmove(b->p + at, b->p + at + n, b->len - at - n);
    b->len -= n;
}

static void fb_free(struct fbuf *b)
{
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}

/* An exact-size heap copy, so ASan sees any read past n; NUL-terminated when z. */
static char *exact_copy(const char *s, size_t n, bool z)
{
    size_t size = n + (z ? 1 : 0);
    char *p = malloc(size ? size : 1);
    assert_non_null(p);
    if (n) memcpy(p, s, n);
    if (z) p[n] = '\0';
    return p;
}

/* ================================================================ mutations */

static const char interesting_bytes[] = {
    0x00,       '"',        '\\',       '{',        '}',  '[',  ']', ',', ':',        '\n',
    '\r',       ' ',        '\t',       '0',        '1',  '9',  'e', 'E', '-',        '+',
    '.',        '/',        '*',        'u',        'n',  't',  'f', '=', (char)0xff, (char)0xc3,
    (char)0x80, (char)0xef, (char)0xbb, (char)0xbf, 0x7f, 0x01, 0x1f};

static const char *const interesting_tokens[] = {
    "1e999",
    "-1e999",
    "1e-999",
    "-0",
    "0.5",
    "NaN",
    "Infinity",
    "1.7976931348623157e308",
    "4294967296",
    "2147483648",
    "-2147483649",
    "9223372036854775807",
    "9223372036854775808",
    "18446744073709551616",
    "9e18",
    "1e19",
    "16777216",
    "123456789012345678901234567890",
    "0x10",
    "00",
    "1.",
    ".5",
    "1e",
    "-",
    "\\u0000",
    "\\ud800",
    "\\udc00",
    "\\ud83d\\ude00",
    "\\uZZZZ",
    "\\x41",
    "\\",
    "\"\"",
    "\"",
    "[]",
    "{}",
    "[{}]",
    "null",
    "true",
    "false",
    "\xc3\x28",
    "\xf0\x9f\x98",
    "\xed\xa0\x80",
    "\xe2\x82",
    "\xef\xbb\xbf",
    "//",
    "/*",
    "*/",
    "\r\n",
    "\n\n",
    "data: ",
    "event: ",
    "id: ",
    "retry: 10",
    ": comment",
    "data: [DONE]\n\n",
    ",",
    ",]",
    ",}",
    "\"a\":1,\"a\":2",
    "\"stream\":true",
    "\"n\":2",
    "\"model\":\"\"",
    "\"index\":7",
    "\"finish_reason\":\"stop\"",
    "\"usage\":{\"prompt_tokens\":9e18}",
    "\"type\":\"tool_use\"",
    "<0x0A>",
    "\xe2\x96\x81",
    "\"dtype\":\"F16\"",
    "\"shape\":[0]",
    "\"data_offsets\":[0,0]",
    "*",
    "?",
    ",,",
    "=",
    "models=",
    "tenant.rpm=1",
    " \t",
};

/* Deeply nested openings, built once: past every parser's depth limit. */
static char deep_arrays[1100];
static char deep_objects[6 * 140];

static void init_deep(void)
{
    memset(deep_arrays, '[', sizeof deep_arrays - 1);
    for (size_t i = 0; i + 5 < sizeof deep_objects; i += 5)
        memcpy(deep_objects + i, "{\"a\":", 5);
}

static char interesting_byte(void)
{
    return interesting_bytes[rng_below(sizeof interesting_bytes)];
}

static void insert_token(struct fbuf *b, size_t at)
{
    size_t pick = rng_below(LEN(interesting_tokens) + 4);
    if (pick < LEN(interesting_tokens)) {
        const char *t = interesting_tokens[pick];
        fb_insert(b, at, t, strlen(t));
    } else if (pick == LEN(interesting_tokens)) {
        static const size_t depths[] = {129, 513, 1001};
        size_t d = depths[rng_below(LEN(depths))];
        fb_insert(b, at, deep_arrays, d < sizeof deep_arrays ? d : sizeof deep_arrays - 1);
    } else if (pick == LEN(interesting_tokens) + 1) {
        fb_insert(b, at, deep_objects, strlen(deep_objects));
    } else {
        char num[32];
        int n = snprintf(num, sizeof num, "%lld", (long long)(rng_next() >> rng_below(64)));
        fb_insert(b, at, num, (size_t)n);
    }
}

static bool num_char(char c)
{
    return c && strchr("0123456789.eE+-", c);
}

/* Replaces the number at or after a random position with an interesting token. */
static void replace_number(struct fbuf *b)
{
    size_t i = rng_below(b->len + 1);
    while (i < b->len && (b->p[i] < '0' || b->p[i] > '9'))
        i++;
    if (i == b->len) return;
    size_t end = i;
    while (end < b->len && num_char(b->p[end]))
        end++;
    fb_erase(b, i, end - i);
    insert_token(b, i);
}

/* Replaces each number with an extreme one with probability 1/4: reaches the arithmetic on
 * several fields at once (sums of token counts...). */
static void replace_numbers(struct fbuf *b)
{
    static const char *const extreme[] = {"9e18",       "1e19",       "1e999",
                                          "-1e999",     "-9e18",      "9223372036854775807",
                                          "4294967295", "2147483647", "-1"};
    for (size_t i = 0; i < b->len; i++) {
        if (b->p[i] < '0' || b->p[i] > '9' || (i > 0 && num_char(b->p[i - 1]))) continue;
        size_t end = i;
        while (end < b->len && num_char(b->p[end]))
            end++;
        if (rng_chance(25)) {
            const char *t = extreme[rng_below(LEN(extreme))];
            fb_erase(b, i, end - i);
            fb_insert(b, i, t, strlen(t));
            end = i + strlen(t);
        }
        i = end;
    }
}

struct corpus {
    const char *const *seeds;
    size_t n;
};

static void mutate_once(struct fbuf *b, const struct corpus *c)
{
    size_t pos = rng_below(b->len + 1), n;
    char ch, tmp[256];
    switch (rng_below(13)) {
    case 0: /* flip a bit */
        if (b->len) b->p[rng_below(b->len)] ^= (char)(1u << rng_below(8));
        break;
    case 1: /* insert an interesting byte */
        ch = interesting_byte();
        fb_insert(b, pos, &ch, 1);
        break;
    case 2: /* delete a few bytes */ fb_erase(b, pos, 1 + rng_below(8)); break;
    case 3: /* replace a byte with an interesting one */
        if (b->len) b->p[rng_below(b->len)] = interesting_byte();
        break;
    case 4: /* insert an interesting token */ insert_token(b, pos); break;
    case 5: /* replace a number */ replace_number(b); break;
    case 6: /* duplicate a slice somewhere */
        if (pos == b->len) break;
        n = 1 + rng_below(b->len - pos < sizeof tmp ? b->len - pos : sizeof tmp);
        memcpy(tmp, b->p + pos, n);
        fb_insert(b, rng_below(b->len + 1), tmp, n);
        break;
    case 7: /* truncate */ b->len = pos; break;
    case 8: /* splice: our prefix, another entry's suffix */
        n = rng_below(c->n);
        b->len = pos;
        pos = rng_below(strlen(c->seeds[n]) + 1);
        fb_add(b, c->seeds[n] + pos, strlen(c->seeds[n]) - pos);
        break;
    case 9: /* erase a range */ fb_erase(b, pos, rng_below(b->len / 4 + 2)); break;
    case 10: /* replace a byte with any byte */
        if (b->len) b->p[rng_below(b->len)] = (char)rng_next();
        break;
    case 11: /* make several numbers extreme */ replace_numbers(b); break;
    default: /* swap two bytes */
        if (b->len < 2) break;
        n = rng_below(b->len);
        pos = rng_below(b->len);
        ch = b->p[n];
        b->p[n] = b->p[pos];
        b->p[pos] = ch;
        break;
    }
    if (b->len > FUZZ_MAX_INPUT) b->len = FUZZ_MAX_INPUT;
}

/* One to four stacked mutations of seed, mostly one or two. */
static void mutate(struct fbuf *b, const char *seed, size_t len, const struct corpus *c)
{
    fb_set(b, seed, len);
    size_t ops = 1 + (rng_chance(50) ? 0 : rng_chance(60) ? 1 : 1 + rng_below(3));
    for (size_t i = 0; i < ops; i++)
        mutate_once(b, c);
}

/* ================================================================ the driver */

typedef void (*fuzz_fn)(const char *in, size_t len);

static void run_case(const char *in, size_t len, fuzz_fn fn)
{
    char *copy = exact_copy(in, len, false);
    fz.input = copy;
    fz.len = len;
    fz.active = true;
    fn(copy, len);
    fz.active = false;
    fz.input = NULL;
    free(copy);
}

/* Every seed as is, cut at every length (or at 256 evenly spaced ones when long), then
 * fz_iters mutations of it. */
static void fuzz_corpus(const char *target, const char *const *seeds, size_t n, fuzz_fn fn)
{
    struct corpus c = {seeds, n};
    struct fbuf b = {0};
    if (fz_only && !strstr(target, fz_only)) return;
    fz.target = target;
    for (size_t s = 0; s < n; s++) {
        size_t len = strlen(seeds[s]);
        fz.seed_index = s;
        case_begin(CASE_SEED, 0);
        run_case(seeds[s], len, fn);
        size_t step = len <= FUZZ_TRUNC_ALL ? 1 : len / 256;
        for (size_t cut = 0; cut < len; cut += step) {
            case_begin(CASE_TRUNCATION, cut);
            run_case(seeds[s], cut, fn);
        }
        for (size_t it = 0; it < fz_iters; it++) {
            case_begin(CASE_MUTATION, it);
            mutate(&b, seeds[s], len, &c);
            run_case(b.p, b.len, fn);
        }
    }
    fb_free(&b);
}

/* ================================================================ shared checks */

static bool utf8_valid(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        unsigned c = p[i];
        size_t k;
        unsigned cp;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
            cp = c & 0x1f;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            cp = c & 0x0f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (n - i <= k) return false;
        for (size_t j = 1; j <= k; j++) {
            if ((p[i + j] & 0xc0) != 0x80) return false;
            cp = cp << 6 | (p[i + j] & 0x3f);
        }
        if ((k == 2 && cp < 0x800) || (k == 3 && (cp < 0x10000 || cp > 0x10ffff)) ||
            (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += k + 1;
    }
    return true;
}

/* Structural equality of two cJSON trees; unlike cJSON_Compare, infinities equal themselves.
 * printed: b was printed from a and parsed again. cJSON prints 15 significant digits when they
 * read back within DBL_EPSILON (relative) of the value (so integers beyond 2^53 change, as
 * openai.h says), a non-finite number as null, and the doubles within 1e-15 of DBL_MAX as 15
 * digits that read back as infinity (its compare_double takes infinity for equal to them). */
static bool json_same(const cJSON *a, const cJSON *b, bool printed)
{
    if (!a || !b) return a == b;
    if ((a->string == NULL) != (b->string == NULL)) return false;
    if (a->string && strcmp(a->string, b->string) != 0) return false;
    if (printed && cJSON_IsNumber(a) && !isfinite(a->valuedouble)) return cJSON_IsNull(b);
    if (printed && cJSON_IsNumber(a) && fabs(a->valuedouble) > 1.797693134862315e308)
        return cJSON_IsNumber(b) && b->valuedouble == copysign(INFINITY, a->valuedouble);
    if ((a->type & 0xff) != (b->type & 0xff)) return false;
    if (cJSON_IsNumber(a) && printed)
        return fabs(a->valuedouble - b->valuedouble) <=
               fmax(fabs(a->valuedouble), fabs(b->valuedouble)) * DBL_EPSILON;
    if (cJSON_IsNumber(a))
        return a->valuedouble == b->valuedouble || (isnan(a->valuedouble) && isnan(b->valuedouble));
    if (cJSON_IsString(a)) return strcmp(a->valuestring, b->valuestring) == 0;
    const cJSON *x = a->child, *y = b->child;
    for (; x && y; x = x->next, y = y->next)
        if (!json_same(x, y, printed)) return false;
    return !x && !y;
}

static bool json_equal(const cJSON *a, const cJSON *b)
{
    return json_same(a, b, false);
}

/* Whether needle occurs in s[0..n). */
static bool contains(const char *s, size_t n, const char *needle)
{
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (!memcmp(s + i, needle, k)) return true;
    return false;
}

/* A NUL-terminated text parsed as one JSON value with nothing after it. */
static cJSON *parse_exact(const char *s, size_t n)
{
    char *z = exact_copy(s, n, true);
    cJSON *j = memchr(s, '\0', n) ? NULL : cJSON_ParseWithOpts(z, NULL, 1);
    free(z);
    return j;
}

/* ================================================================ gateway/openai.c: request bodies
 */

static const char *const chat_seeds[] = {
    "{\"model\":\"gpt-4o-mini\",\"messages\":["
    "{\"role\":\"system\",\"content\":\"You are a careful assistant. Answer in JSON.\"},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"What is in this image? "
    "\\u00e9\\ud83d\\ude00\"},{\"type\":\"image_url\",\"image_url\":{\"url\":"
    "\"data:image/png;base64,iVBORw0KGgo=\",\"detail\":\"low\"}}]},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"call_abc\",\"type\":"
    "\"function\",\"function\":{\"name\":\"get_weather\",\"arguments\":\"{\\\"city\\\":"
    "\\\"Paris\\\"}\"}}]},"
    "{\"role\":\"tool\",\"tool_call_id\":\"call_abc\",\"content\":\"{\\\"temp\\\":21}\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"get_weather\",\"description\":"
    "\"Current weather\",\"parameters\":{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
    "\"string\"}},\"required\":[\"city\"]}}}],\"tool_choice\":\"auto\","
    "\"parallel_tool_calls\":false,\"response_format\":{\"type\":\"json_schema\",\"json_schema\":"
    "{\"name\":\"answer\",\"strict\":true,\"schema\":{\"type\":\"object\"}}},"
    "\"stream\":true,\"stream_options\":{\"include_usage\":true},\"stop\":[\"\\n\\n\",\"END\"],"
    "\"logit_bias\":{\"50256\":-100,\"1734\":5.5},\"temperature\":0.2,\"top_p\":0.9,"
    "\"max_completion_tokens\":512,\"seed\":42,\"user\":\"user-1234\",\"metadata\":{\"k\":\"v\"}}",

    "{\"model\":\"mock-model\",\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":\"Say hi\",\"name\":\"alice\"}],\"n\":3,\"max_tokens\":16,"
    "\"presence_penalty\":-0.5,\"frequency_penalty\":1.25,\"logprobs\":true,\"top_logprobs\":3,"
    "\"stream\":false,\"stop\":\"###\",\"response_format\":{\"type\":\"json_object\"}}",

    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},"
    "{\"type\":\"text\",\"text\":\"b\"}]},{\"role\":\"assistant\",\"content\":\"\","
    "\"function_call\":{\"name\":\"f\",\"arguments\":\"{}\"}},{\"role\":\"function\",\"name\":"
    "\"f\",\"content\":\"1\"}],\"model\":\"m\",\"tool_choice\":{\"type\":\"function\","
    "\"function\":{\"name\":\"f\"}},\"tools\":[],\"temperature\":0,\"seed\":-9223372036854775808}",
};

static const char *const completion_seeds[] = {
    "{\"model\":\"gpt-3.5-turbo-instruct\",\"prompt\":\"Once upon a time\",\"suffix\":\" The end."
    "\",\"echo\":false,\"logprobs\":2,\"best_of\":3,\"n\":2,\"max_tokens\":64,\"stream\":true,"
    "\"stream_options\":{\"include_usage\":false},\"stop\":[\"\\n\"],\"temperature\":1.5}",
    "{\"model\":\"m\",\"prompt\":[[1,2,3,4],[50256,0]],\"max_tokens\":1,\"logit_bias\":{\"1\":1}}",
    "{\"model\":\"m\",\"prompt\":[\"first\",\"\",\"th\\u00efrd\"],\"user\":\"u\"}",
};

static const char *const embedding_seeds[] = {
    ("{\"model\":\"text-embedding-3-small\",\"input\":\"The food was delicious and the waiter was "
     "friendly.\",\"dimensions\":256,\"encoding_format\":\"base64\",\"user\":\"u-7\"}"),
    "{\"model\":\"e\",\"input\":[[101,2023,2003,102],[7]],\"encoding_format\":\"float\"}",
    "{\"input\":[\"alpha\",\"beta\",\"gamma\"],\"model\":\"e\"}",
};

static void check_oai_error(const struct oai_request *r, const struct oai_error *err)
{
    FUZZ_CHECK(r->root == NULL);
    FUZZ_CHECK(err->message[0] != '\0');
    FUZZ_CHECK(err->status == 400 || err->status == 404 || err->status == 500);
    FUZZ_CHECK(err->type != NULL && err->type[0] != '\0');
    /* The error body is valid JSON and valid UTF-8 whatever the message quotes. */
    char body[4096];
    int n = oai_error_render(err, body, sizeof body);
    FUZZ_CHECK(n > 0 && (size_t)n == strlen(body));
    FUZZ_CHECK(utf8_valid(body, (size_t)n));
    cJSON *j = parse_exact(body, (size_t)n);
    FUZZ_CHECK(cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(j, "error")));
    FUZZ_CHECK(cJSON_IsString(
        cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(j, "error"), "message")));
    cJSON_Delete(j);
}

static void check_oai_valid(const struct oai_request *r, enum oai_endpoint ep)
{
    FUZZ_CHECK(cJSON_IsObject(r->root));
    FUZZ_CHECK(r->endpoint == ep);
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(r->root, "model");
    FUZZ_CHECK(cJSON_IsString(m) && r->model == m->valuestring);
    FUZZ_CHECK(strlen(r->model) >= 1 && strlen(r->model) <= OAI_MAX_MODEL_LEN);
    FUZZ_CHECK(r->n >= 1 && r->n <= OAI_MAX_N);
    FUZZ_CHECK(r->max_tokens == -1 || (r->max_tokens >= 1 && r->max_tokens <= OAI_MAX_TOKENS));
    FUZZ_CHECK(!r->include_usage || r->stream);
    if (ep == OAI_EMBEDDINGS) FUZZ_CHECK(!r->stream && r->max_tokens == -1 && r->n == 1);
}

/* Parses in for ep; on success the rendered body parses again to the same request. */
static int check_oai_one(enum oai_endpoint ep, const char *in, size_t len)
{
    struct oai_request r;
    struct oai_error err;
    memset(&err, 0, sizeof err);
    int rc = oai_request_parse(ep, in, len, &r, &err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (rc != 0) {
        check_oai_error(&r, &err);
        oai_request_free(&r);
        return rc;
    }
    check_oai_valid(&r, ep);

    size_t out_len = 0;
    char *out = oai_request_render(&r, NULL, &out_len);
    FUZZ_CHECK(out != NULL && out_len == strlen(out));
    struct oai_request again;
    int rc2 = oai_request_parse(ep, out, out_len, &again, &err);
    FUZZ_CHECK(rc2 == 0);
    FUZZ_CHECK(strcmp(again.model, r.model) == 0);
    FUZZ_CHECK(again.stream == r.stream && again.include_usage == r.include_usage);
    FUZZ_CHECK(again.max_tokens == r.max_tokens && again.n == r.n);
    FUZZ_CHECK(again.prompt_chars == r.prompt_chars && again.prompt_tokens == r.prompt_tokens);
    FUZZ_CHECK(json_same(r.root, again.root, true));
    oai_request_free(&again);
    free(out);

    /* With an upstream model the body changes only there, and r does not change. */
    const char *client_model = r.model;
    out = oai_request_render(&r, "upstream-model", &out_len);
    FUZZ_CHECK(out != NULL && r.model == client_model);
    rc2 = oai_request_parse(ep, out, out_len, &again, &err);
    FUZZ_CHECK(rc2 == 0 && strcmp(again.model, "upstream-model") == 0);
    oai_request_free(&again);
    free(out);
    oai_request_free(&r);
    FUZZ_CHECK(r.root == NULL);
    return rc;
}

static enum oai_endpoint oai_ep;

static void check_oai(const char *in, size_t len)
{
    int rc = check_oai_one(oai_ep, in, len);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(rc == 0);
    check_oai_one((enum oai_endpoint)rng_below(3), in, len);
}

static void test_openai_requests(void **state)
{
    (void)state;
    oai_ep = OAI_CHAT;
    fuzz_corpus("oai_request_parse(chat)", chat_seeds, LEN(chat_seeds), check_oai);
    oai_ep = OAI_COMPLETIONS;
    fuzz_corpus("oai_request_parse(completions)", completion_seeds, LEN(completion_seeds),
                check_oai);
    oai_ep = OAI_EMBEDDINGS;
    fuzz_corpus("oai_request_parse(embeddings)", embedding_seeds, LEN(embedding_seeds), check_oai);
}

/* ================================================================ common/sse.c */

static const char *const sse_seeds[] = {
    ": OPENROUTER PROCESSING\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"index\":0,"
    "\"delta\":{\"role\":\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"}}]}\n\n"
    "data:{\"id\":\"chatcmpl-1\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":"
    "\"stop\"}]}\n\n"
    "data: {\"id\":\"chatcmpl-1\",\"choices\":[],\"usage\":{\"prompt_tokens\":5,"
    "\"completion_tokens\":2,\"total_tokens\":7}}\n\n"
    "data: [DONE]\n\n",

    "retry: 3000\r\nid: 41\r\nevent: message_start\r\ndata: {\"type\":\"message_start\"}\r\n\r\n"
    "event: content_block_delta\r\nid: 42\r\ndata: line one\r\ndata: line two\r\ndata:\r\n\r\n"
    ":keep-alive\r\n\r\nevent: ping\r\n\r\nid\r\ndata: after an empty id\r\n\r\n",

    "\xef\xbb\xbf"
    "data: first\rdata: second\r\rfield-without-colon\revent:custom\rdata:  two spaces\r\r"
    "unknown: x\rretry: 12x\rdata: \xc3\xa9t\xc3\xa9\r\n\r\ndata: [DONE]\r\rdata: tail",

    ("event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n\n\n"
     "id: \n: comment: with: colons\ndata\n\ndata: x\n"),
};

/* Events serialised with their lengths, to compare two runs byte for byte. */
struct ev_log {
    struct fbuf b;
    int n;
    int stop_at; /* the callback stops after this many; 0 = never */
};

static void log_event_fields(struct ev_log *l, const char *event, size_t elen, const char *data,
                             size_t dlen, const char *id, size_t idlen)
{
    fb_addf(&l->b, "E%zu:", elen);
    fb_add(&l->b, event, elen);
    fb_addf(&l->b, "D%zu:", dlen);
    fb_add(&l->b, data, dlen);
    fb_addf(&l->b, "I%zu:", idlen);
    fb_add(&l->b, id, idlen);
    l->n++;
}

static int log_event(void *ud, const struct sse_event *ev)
{
    struct ev_log *l = ud;
    FUZZ_CHECK(ev->event && ev->data && ev->id);
    FUZZ_CHECK(ev->event[ev->event_len] == '\0' && ev->data[ev->data_len] == '\0' &&
               ev->id[ev->id_len] == '\0');
    log_event_fields(l, ev->event, ev->event_len, ev->data, ev->data_len, ev->id, ev->id_len);
    return l->stop_at && l->n >= l->stop_at;
}

static bool logs_equal(const struct ev_log *a, const struct ev_log *b)
{
    return a->n == b->n && a->b.len == b->b.len && (!a->b.len || !memcmp(a->b.p, b->b.p, a->b.len));
}

struct sse_outcome {
    int rc;     /* first nonzero feed result, else 0 */
    int finish; /* sse_parser_finish */
    long retry;
    bool done;
};

/* The WHATWG rules as llmgate's parser documents them, written for clarity over a whole
 * buffer: lines end at CRLF, CR or LF; an event is dispatched at a blank line when it has a
 * data or an event field; ids persist and ids with NUL are ignored; retry takes digits only. */
static void sse_reference(const char *in, size_t len, struct ev_log *log, struct sse_outcome *o)
{
    struct fbuf data = {0}, event = {0}, id = {0};
    bool has_data = false, has_event = false;
    o->rc = 0;
    o->retry = -1;
    o->done = false;
    size_t i = len >= 3 && memcmp(in, "\xef\xbb\xbf", 3) == 0 ? 3 : 0;
    while (i < len) {
        size_t j = i;
        while (j < len && in[j] != '\n' && in[j] != '\r')
            j++;
        if (j == len) break; /* an unterminated last line is never processed */
        const char *s = in + i;
        size_t n = j - i;
        i = j + 1 + (in[j] == '\r' && j + 1 < len && in[j + 1] == '\n');
        if (n == 0) {
            if (has_data || has_event) {
                log_event_fields(log, event.len ? event.p : "", event.len, data.len ? data.p : "",
                                 data.len, id.len ? id.p : "", id.len);
                if (data.len == 6 && memcmp(data.p, "[DONE]", 6) == 0) o->done = true;
            }
            data.len = event.len = 0;
            has_data = has_event = false;
            continue;
        }
        if (s[0] == ':') continue;
        const char *colon = memchr(s, ':', n);
        size_t flen = colon ? (size_t)(colon - s) : n;
        const char *v = colon ? colon + 1 : s + n;
        size_t vlen = colon ? n - flen - 1 : 0;
        if (vlen && v[0] == ' ') {
            v++;
            vlen--;
        }
        if (flen == 4 && !memcmp(s, "data", 4)) {
            if (has_data) fb_add(&data, "\n", 1);
            fb_add(&data, v, vlen);
            has_data = true;
        } else if (flen == 5 && !memcmp(s, "event", 5)) {
            fb_set(&event, v, vlen);
            has_event = true;
        } else if (flen == 2 && !memcmp(s, "id", 2)) {
            if (!memchr(v, '\0', vlen)) fb_set(&id, v, vlen);
        } else if (flen == 5 && !memcmp(s, "retry", 5) && vlen) {
            long ms = 0;
            size_t k = 0;
            for (; k < vlen && v[k] >= '0' && v[k] <= '9'; k++)
                if (ms < 86400000L) ms = ms * 10 + (v[k] - '0');
            if (k == vlen) o->retry = ms > 86400000L ? 86400000L : ms;
        }
    }
    o->finish = i < len || has_data || has_event;
    fb_free(&data);
    fb_free(&event);
    fb_free(&id);
}

/* Feeds in through p in pieces (split points from the case's PRNG; every byte alone when
 * bytewise), each piece an exact-size copy. */
static void sse_run(struct sse_parser *p, const char *in, size_t len, bool split, bool bytewise,
                    struct sse_outcome *o)
{
    o->rc = 0;
    size_t at = 0;
    while (at < len || (at == 0 && len == 0)) {
        size_t n = len - at;
        if (bytewise)
            n = n ? 1 : 0;
        else if (split && n)
            n = rng_chance(10) ? 0 : 1 + rng_below(rng_chance(50) && n > 8 ? 8 : n);
        char *piece = exact_copy(in + at, n, false);
        int rc = sse_parser_feed(p, piece, n);
        free(piece);
        at += n;
        if (rc && !o->rc) o->rc = rc;
        if (o->rc) FUZZ_CHECK(rc == o->rc); /* errors and stops are sticky */
        if (len == 0) break;
    }
    o->retry = p->retry_ms;
    o->done = sse_parser_saw_done(p);
    o->finish = sse_parser_finish(p);
}

static bool outcomes_equal(const struct sse_outcome *a, const struct sse_outcome *b)
{
    return a->rc == b->rc && a->finish == b->finish && a->retry == b->retry && a->done == b->done;
}

static void check_sse(const char *in, size_t len)
{
    struct ev_log ref = {0}, one = {0}, split = {0};
    struct sse_outcome ro, oo, so;
    sse_reference(in, len, &ref, &ro);

    struct sse_parser p;
    sse_parser_init(&p, 0, log_event, &one);
    sse_run(&p, in, len, false, false, &oo);
    FUZZ_CHECK(oo.rc == 0);
    FUZZ_CHECK(logs_equal(&one, &ref));
    FUZZ_CHECK(outcomes_equal(&oo, &ro));

    /* The same bytes in other splits; then again after a reset, reusing the buffers. */
    sse_parser_free(&p);
    sse_parser_init(&p, 0, log_event, &split);
    sse_run(&p, in, len, true, rng_chance(20), &so);
    FUZZ_CHECK(logs_equal(&split, &one) && outcomes_equal(&so, &oo));
    sse_parser_reset(&p);
    split.n = 0;
    split.b.len = 0;
    sse_run(&p, in, len, true, false, &so);
    FUZZ_CHECK(logs_equal(&split, &one) && outcomes_equal(&so, &oo));
    sse_parser_free(&p);

    /* A small bound: whether and where it trips does not depend on the split either. */
    size_t max = 1 + rng_below(len / 2 + 32);
    struct ev_log a = {0}, b = {0};
    struct sse_outcome ao, bo;
    sse_parser_init(&p, max, log_event, &a);
    sse_run(&p, in, len, false, false, &ao);
    sse_parser_free(&p);
    sse_parser_init(&p, max, log_event, &b);
    sse_run(&p, in, len, true, rng_chance(20), &bo);
    sse_parser_free(&p);
    FUZZ_CHECK(ao.rc == 0 || ao.rc == SSE_ETOOBIG);
    FUZZ_CHECK(logs_equal(&a, &b) && outcomes_equal(&ao, &bo));
    if (ao.rc == SSE_ETOOBIG) FUZZ_CHECK(ao.finish == SSE_ETOOBIG);

    /* A callback that stops: exactly the events before it, then SSE_STOPPED for good. */
    if (one.n > 0) {
        struct ev_log s = {.stop_at = 1 + (int)rng_below((size_t)one.n)};
        struct sse_outcome stop;
        sse_parser_init(&p, 0, log_event, &s);
        sse_run(&p, in, len, true, false, &stop);
        FUZZ_CHECK(stop.rc == SSE_STOPPED && s.n == s.stop_at);
        FUZZ_CHECK(sse_parser_feed(&p, "data: x\n\n", 9) == SSE_STOPPED);
        FUZZ_CHECK(s.b.len <= one.b.len && !memcmp(s.b.p, one.b.p, s.b.len));
        sse_parser_free(&p);
        fb_free(&s.b);
    }
    fb_free(&a.b);
    fb_free(&b.b);
    fb_free(&ref.b);
    fb_free(&one.b);
    fb_free(&split.b);
}

static void test_sse(void **state)
{
    (void)state;
    fuzz_corpus("sse_parser_feed", sse_seeds, LEN(sse_seeds), check_sse);
}

/* ================================================================ cache/rcache.c */

static const char *const answer_seeds[] = {
    "{\"id\":\"chatcmpl-9x\",\"object\":\"chat.completion\",\"created\":1718000000,\"model\":"
    "\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_0ba0d124f1\",\"choices\":[{\"index\":"
    "0,\"message\":{\"role\":\"assistant\",\"content\":\"H\\u00e9llo w\\u00f6rld \\u2014 a longer "
    "answer\\nwith two lines and a \\\"quote\\\".\",\"refusal\":null},\"logprobs\":null,"
    "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":12,\"completion_tokens\":19,"
    "\"total_tokens\":31,\"prompt_tokens_details\":{\"cached_tokens\":0}}}",

    "{\"id\":\"chatcmpl-tools\",\"object\":\"chat.completion\",\"created\":1,\"model\":\"m\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":null,"
    "\"tool_calls\":[{\"id\":\"call_1\",\"type\":\"function\",\"function\":{\"name\":"
    "\"get_weather\",\"arguments\":\"{\\\"city\\\":\\\"Paris\\\"}\"}},{\"id\":\"call_2\","
    "\"type\":\"function\",\"function\":{\"name\":\"get_time\",\"arguments\":\"{}\"}}]},"
    "\"logprobs\":null,\"finish_reason\":\"tool_calls\"},{\"index\":1,\"message\":{\"role\":"
    "\"assistant\",\"content\":\"partial\",\"refusal\":\"no\"},\"finish_reason\":\"length\"}],"
    "\"usage\":{\"prompt_tokens\":80,\"completion_tokens\":24}}",

    "{\"id\":\"cmpl-7\",\"object\":\"text_completion\",\"created\":1718000001,\"model\":"
    "\"gpt-3.5-turbo-instruct\",\"choices\":[{\"text\":\" there was a \\ud83d\\ude00 fox\","
    "\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":4,"
    "\"completion_tokens\":16,\"total_tokens\":20}}",
};

/* Streams as relayed: one chunk object per line. */
static const char *const chunk_seeds[] = {
    "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\","
    "\"system_fingerprint\":\"fp\",\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\","
    "\"content\":\"\"},\"logprobs\":null,\"finish_reason\":null}]}\n"
    "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hel\"},\"finish_reason\":null}]}\n"
    "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\","
    "\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo \\u00e9\"},\"finish_reason\":null}]}\n"
    "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\","
    "\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n"
    "{\"id\":\"c1\",\"object\":\"chat.completion.chunk\",\"created\":5,\"model\":\"m\","
    "\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}",

    "{\"id\":\"c2\",\"created\":6,\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
    "\"assistant\",\"content\":null,\"tool_calls\":[{\"index\":0,\"id\":\"call_a\",\"type\":"
    "\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"\"}}]},\"finish_reason\":null}]}\n"
    "{\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":0,"
    "\"function\":{\"arguments\":\"{\\\"x\\\":\"}}]}}]}\n"
    "{\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{\"tool_calls\":[{\"index\":1,\"id\":"
    "\"call_b\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}},{\"index\":0,\"function\":"
    "{\"arguments\":\"1}\"}}]}}]}\n"
    "{\"id\":\"c2\",\"choices\":[{\"index\":1,\"delta\":{\"refusal\":\"I can't\"},"
    "\"finish_reason\":\"stop\"}]}\n"
    "{\"id\":\"c2\",\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"tool_calls\"}],"
    "\"usage\":{\"prompt_tokens\":30,\"completion_tokens\":12}}",

    "{\"id\":\"cmpl-3\",\"object\":\"text_completion\",\"created\":7,\"model\":\"i\",\"choices\":"
    "[{\"text\":\"Once\",\"index\":0,\"logprobs\":null,\"finish_reason\":null}]}\n"
    "{\"id\":\"cmpl-3\",\"object\":\"text_completion\",\"choices\":[{\"text\":\" upon\","
    "\"index\":0,\"logprobs\":null,\"finish_reason\":\"length\"}]}",
};

static const uint8_t fuzz_key[RCACHE_KEY_LEN] = {
    0x8a, 0x1f, 0x00, 0x42, 0xff, 0x10, 0x9c, 0x33, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08,
    0xde, 0xad, 0xbe, 0xef, 0x00, 0x00, 0x7f, 0x80, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88};

static char *evbuffer_take(struct evbuffer *eb, size_t *len)
{
    *len = evbuffer_get_length(eb);
    char *s = malloc(*len + 1);
    assert_non_null(s);
    FUZZ_CHECK(evbuffer_remove(eb, s, *len) == (int)*len);
    s[*len] = '\0';
    return s;
}

struct asm_feed {
    struct rcache_asm *a;
    int events;
    bool done; /* [DONE] seen: nothing may follow */
};

/* Every replayed event is one chunk object or the final [DONE]; chunks go to the assembler. */
static int asm_event(void *ud, const struct sse_event *ev)
{
    struct asm_feed *f = ud;
    FUZZ_CHECK(!f->done && ev->event_len == 0);
    f->events++;
    if (sse_is_done(ev)) {
        f->done = true;
        return 0;
    }
    cJSON *chunk = parse_exact(ev->data, ev->data_len);
    FUZZ_CHECK(cJSON_IsObject(chunk));
    rcache_asm_feed(f->a, chunk);
    cJSON_Delete(chunk);
    return 0;
}

/* Replays body as SSE (checking the offsets it reports and that a failure appends nothing)
 * and assembles the replay again. Returns the assembled answer (or NULL) when the replay
 * succeeded; *rendered says whether it did. */
static char *replay_and_assemble(const char *body, size_t len, enum rcache_kind kind,
                                 bool include_usage, size_t piece, bool *rendered, size_t *out_len,
                                 long *pt, long *ct)
{
    struct evbuffer *eb = evbuffer_new();
    assert_non_null(eb);
    evbuffer_add(eb, "PREFIX", 6);
    size_t usage_off = 0, done_off = 0;
    int rc =
        rcache_render_sse_parts(body, len, kind, include_usage, piece, eb, &usage_off, &done_off);
    FUZZ_CHECK(rc == 0 || rc == -1);
    *rendered = rc == 0;
    if (rc != 0) {
        FUZZ_CHECK(evbuffer_get_length(eb) == 6);
        evbuffer_free(eb);
        return NULL;
    }
    size_t n;
    char *sse = evbuffer_take(eb, &n);
    evbuffer_free(eb);
    FUZZ_CHECK(n >= 6 + done_off && !memcmp(sse, "PREFIX", 6));
    const char *mine = sse + 6;
    size_t mine_len = n - 6;
    FUZZ_CHECK(usage_off <= done_off && done_off + 14 == mine_len);
    FUZZ_CHECK(!memcmp(mine + done_off, "data: [DONE]\n\n", 14));
    if (!include_usage) FUZZ_CHECK(usage_off == done_off);
    if (usage_off < done_off) FUZZ_CHECK(!memcmp(mine + usage_off, "data: {", 7));

    struct asm_feed f = {.a = rcache_asm_new(kind, 1 << 20)};
    assert_non_null(f.a);
    struct sse_parser p;
    sse_parser_init(&p, 0, asm_event, &f);
    FUZZ_CHECK(sse_parser_feed(&p, mine, mine_len) == 0);
    FUZZ_CHECK(sse_parser_finish(&p) == 0 && f.done);
    sse_parser_free(&p);
    free(sse);
    char *out = rcache_asm_finish(f.a, out_len, pt, ct);
    rcache_asm_free(f.a);
    return out;
}

/* An assembled answer is cacheable with its usage's counts, and replaying and assembling it
 * is stable after one round (which truncates "created" and drops an empty refusal). */
static void check_assembled(const char *ans, size_t len, long pt, long ct, enum rcache_kind kind)
{
    FUZZ_CHECK(len == strlen(ans));
    cJSON *j = parse_exact(ans, len);
    FUZZ_CHECK(cJSON_IsObject(j));
    long p2, c2;
    FUZZ_CHECK(rcache_answer_cacheable(j, &p2, &c2));
    FUZZ_CHECK(p2 == pt && c2 == ct);
    cJSON_Delete(j);

    bool ok;
    size_t l1, l2;
    long a, b;
    char *r1 = replay_and_assemble(ans, len, kind, true, 1 + rng_below(16), &ok, &l1, &a, &b);
    FUZZ_CHECK(ok && r1 != NULL && a == pt && b == ct);
    char *r2 = replay_and_assemble(r1, l1, kind, true, 1 + rng_below(16), &ok, &l2, &a, &b);
    FUZZ_CHECK(ok && r2 != NULL);
    FUZZ_CHECK(l1 == l2 && !memcmp(r1, r2, l1));
    free(r1);
    free(r2);
}

/* A stored answer body: replayed, and the replay assembled again. */
static void check_render(const char *body, size_t len)
{
    enum rcache_kind kind =
        contains(body, len, "text_completion") ? RCACHE_COMPLETIONS : RCACHE_CHAT;
    bool other_kind = fz.kind != CASE_SEED && rng_chance(10), ok;
    if (other_kind) kind = kind == RCACHE_CHAT ? RCACHE_COMPLETIONS : RCACHE_CHAT;
    size_t out_len = 0;
    long pt = 0, ct = 0;
    char *ans = replay_and_assemble(body, len, kind, rng_chance(50), rng_below(24), &ok, &out_len,
                                    &pt, &ct);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(ok && ans != NULL);
    if (ans) check_assembled(ans, out_len, pt, ct, kind);
    free(ans);
}

static void check_entry_fields(const struct rcache_entry *d, const struct rcache_entry *e)
{
    FUZZ_CHECK(d->kind == e->kind && d->created_ms == e->created_ms);
    FUZZ_CHECK(d->prompt_tokens == e->prompt_tokens &&
               d->completion_tokens == e->completion_tokens);
    FUZZ_CHECK(d->body_len == e->body_len && !memcmp(d->body, e->body, e->body_len));
}

/* Entries: encode -> decode gives the fields back, another key never decodes, and a corrupted
 * entry either fails or re-encodes to itself (but for the two reserved bytes). */
static void check_entry(const char *body, size_t len)
{
    struct rcache_entry e = {
        .kind = (enum rcache_kind)rng_below(2),
        .created_ms = rng_next(),
        .prompt_tokens = (long)rng_below(1u << 31),
        .completion_tokens = (long)rng_below(100000),
        .body = body,
        .body_len = len,
    };
    size_t n = 0;
    char *enc = rcache_entry_encode(&e, fuzz_key, &n);
    FUZZ_CHECK(enc != NULL && n == RCACHE_HEADER_LEN + len);
    bool object = jsonv_check(body, len) == JSONV_OBJECT;
    if (fz.kind == CASE_SEED) FUZZ_CHECK(object);
    struct rcache_entry d;
    char *exact = exact_copy(enc, n, false);
    int rc = rcache_entry_decode(exact, n, fuzz_key, &d);
    FUZZ_CHECK(rc == (object ? 0 : -1));
    if (rc == 0) {
        FUZZ_CHECK(d.body == exact + RCACHE_HEADER_LEN);
        check_entry_fields(&d, &e);
    }
    uint8_t other[RCACHE_KEY_LEN];
    memcpy(other, fuzz_key, sizeof other);
    other[rng_below(sizeof other)] ^= (uint8_t)(1u << rng_below(8));
    FUZZ_CHECK(rcache_entry_decode(exact, n, other, &d) == -1);
    free(exact);

    /* Corrupt the encoding: mostly the header, sometimes anywhere. */
    struct fbuf m = {0};
    static const char *const none[] = {""};
    struct corpus c = {none, 1};
    fb_set(&m, enc, n);
    if (rng_chance(50) && m.len)
        m.p[rng_below(m.len < RCACHE_HEADER_LEN ? m.len : RCACHE_HEADER_LEN)] = (char)rng_next();
    else
        mutate_once(&m, &c);
    exact = exact_copy(m.p, m.len, false);
    if (rcache_entry_decode(exact, m.len, fuzz_key, &d) == 0) {
        FUZZ_CHECK(m.len >= RCACHE_HEADER_LEN && d.body == exact + RCACHE_HEADER_LEN);
        FUZZ_CHECK(d.body_len == m.len - RCACHE_HEADER_LEN);
        FUZZ_CHECK(d.kind == RCACHE_CHAT || d.kind == RCACHE_COMPLETIONS);
        FUZZ_CHECK(jsonv_check(d.body, d.body_len) == JSONV_OBJECT);
        size_t n2 = 0;
        char *again = rcache_entry_encode(&d, fuzz_key, &n2);
        FUZZ_CHECK(again != NULL && n2 == m.len);
        for (size_t i = 0; i < n2; i++)
            if (i != 6 && i != 7) FUZZ_CHECK(again[i] == exact[i]);
        struct rcache_entry d2;
        FUZZ_CHECK(rcache_entry_decode(again, n2, fuzz_key, &d2) == 0);
        check_entry_fields(&d2, &d);
        free(again);
        /* what decodes is replayed */
        bool ok;
        size_t al;
        long pt, ct;
        char *ans = replay_and_assemble(d.body, d.body_len, d.kind, true, 8, &ok, &al, &pt, &ct);
        free(ans);
    }
    free(exact);
    fb_free(&m);
    free(enc);
}

/* Relayed chunks, one per line, assembled; what assembles must replay and assemble stably. */
static void check_asm(const char *in, size_t len)
{
    enum rcache_kind kind = contains(in, len, "text_completion") ? RCACHE_COMPLETIONS : RCACHE_CHAT;
    struct rcache_asm *a = rcache_asm_new(kind, rng_chance(10) ? rng_below(64) : 1 << 20);
    assert_non_null(a);
    for (size_t at = 0; at <= len;) {
        const char *nl = memchr(in + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - in) : len;
        cJSON *chunk = cJSON_ParseWithLength(in + at, end - at);
        rcache_asm_feed(a, chunk); /* NULL and non-objects poison it */
        cJSON_Delete(chunk);
        at = end + 1;
    }
    size_t out_len = 0;
    long pt = -1, ct = -1;
    char *ans = rcache_asm_finish(a, &out_len, &pt, &ct);
    rcache_asm_free(a);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(ans != NULL);
    if (ans) check_assembled(ans, out_len, pt, ct, kind);
    free(ans);
}

static void test_rcache(void **state)
{
    (void)state;
    fuzz_corpus("rcache_entry_decode", answer_seeds, LEN(answer_seeds), check_entry);
    fuzz_corpus("rcache_render_sse", answer_seeds, LEN(answer_seeds), check_render);
    fuzz_corpus("rcache_asm_feed", chunk_seeds, LEN(chunk_seeds), check_asm);
}

/* ================================================================ common/jsonc.c */

static const char *const jsonc_seeds[] = {
    "// gateway settings\n{\n  \"listen\": { \"address\": \"0.0.0.0\", /* all */ \"port\": 8080 "
    "},\n"
    "  \"url\": \"http://example.com/v1\", // not a comment inside the string\n"
    "  \"c\": \"/* nor this */\",\n  \"nested\": {\"a\": [1, -2.5e3, 0, -0, true, false, null]},\n"
    "  \"esc\": \"tab\\tquote\\\" slash\\/ \\u00e9 \\ud83d\\ude00\"\n}\n/* trailing */\n",
    "[1, 2.0, -3e-2, 1E+2, \"two\", {\"k\": {\"k\": {\"k\": []}}}, [[[[]]]], {}, \"\"]",
    "\xef\xbb\xbf{\"a\":1,\"A\":2,\"\xc3\xa9\":\"\xe2\x82\xac\",\"b\":[{\"x\":null},{\"x\":true}]}",
    ("{\n\t\"routes\": [ // comment after a bracket\n\t\t{\"name\": \"r\", \"w\": 10},\n"
     "\t\t{\"name\": \"s\", /* inline */ \"w\": 0.25}\n\t]\n}"),
};

static size_t count_lines(const char *s, size_t n)
{
    size_t lines = 1;
    for (size_t i = 0; i < n; i++)
        lines += s[i] == '\n';
    return lines;
}

/* err is "file:line:col: message" with a position inside the input, or "file: message". */
static void check_error_position(const char *err, const char *file, const char *in, size_t len)
{
    size_t fl = strlen(file);
    FUZZ_CHECK(strncmp(err, file, fl) == 0 && err[fl] == ':');
    int line = 0, col = 0;
    if (sscanf(err + fl, ":%d:%d: ", &line, &col) == 2) {
        FUZZ_CHECK(line >= 1 && col >= 1);
        FUZZ_CHECK((size_t)line <= count_lines(in, len));
    } else {
        FUZZ_CHECK(err[fl + 1] == ' ' && err[fl + 2] != '\0');
    }
}

/* Every item of the tree knows where it came from, and its value starts there. */
static void check_positions(const struct jsonc_doc *doc, const cJSON *item, bool member)
{
    size_t off = (size_t)-1;
    FUZZ_CHECK(jsonc_offset(doc, item, &off) == 0 && off < doc->len);
    char c = doc->text[off];
    if (cJSON_IsObject(item))
        FUZZ_CHECK(c == '{');
    else if (cJSON_IsArray(item))
        FUZZ_CHECK(c == '[');
    else if (cJSON_IsString(item))
        FUZZ_CHECK(c == '"');
    else if (cJSON_IsNumber(item))
        FUZZ_CHECK(c == '-' || (c >= '0' && c <= '9'));
    else if (cJSON_IsTrue(item))
        FUZZ_CHECK(c == 't');
    else if (cJSON_IsFalse(item))
        FUZZ_CHECK(c == 'f');
    else
        FUZZ_CHECK(cJSON_IsNull(item) && c == 'n');
    int l, col, el, ec, kl, kc;
    FUZZ_CHECK(jsonc_pos(doc, item, &l, &col) == 0);
    jsonc_offset_to_line_col(doc->text, doc->len, off, &el, &ec);
    FUZZ_CHECK(l == el && col == ec);
    FUZZ_CHECK(jsonc_key_pos(doc, item, &kl, &kc) == 0);
    if (member)
        FUZZ_CHECK(kl < l || (kl == l && kc < col));
    else
        FUZZ_CHECK(kl == l && kc == col);
    for (const cJSON *ch = item->child; ch; ch = ch->next)
        check_positions(doc, ch, cJSON_IsObject(item));
}

static void check_jsonc(const char *in, size_t len)
{
    struct jsonc_doc *doc = (struct jsonc_doc *)1;
    char err[512];
    int rc = jsonc_parse(in, len, "fuzz.json", &doc, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(rc == 0);
    if (rc == 0) {
        FUZZ_CHECK(doc != NULL && doc->root != NULL && doc->len == len && doc->text[len] == '\0');
        check_positions(doc, doc->root, false);
        /* the text with comments blanked is plain JSON for cJSON, and the same tree */
        cJSON *again = cJSON_ParseWithOpts(doc->text, NULL, 1);
        FUZZ_CHECK(json_equal(again, doc->root));
        cJSON_Delete(again);
    } else {
        FUZZ_CHECK(doc == NULL && err[0] != '\0');
        check_error_position(err, "fuzz.json", in, len);
        FUZZ_CHECK(!strstr(err, "internal error"));
    }
    /* Without comments, jsonc is cJSON minus what its header says it rejects. */
    if (!memchr(in, '/', len) && !memchr(in, '\0', len)) {
        cJSON *c = parse_exact(in, len);
        if (rc == 0)
            FUZZ_CHECK(json_equal(c, doc->root));
        else if (c) /* a raw newline ends a string in jsonc (see strip_comments) */
            FUZZ_CHECK(strstr(err, "duplicate key") || strstr(err, "raw control character") ||
                       strstr(err, "\\u") || strstr(err, "nesting deeper") ||
                       (strstr(err, "unterminated string") && memchr(in, '\n', len)));
        cJSON_Delete(c);
    }
    jsonc_free(rc == 0 ? doc : NULL);
}

static void test_jsonc(void **state)
{
    (void)state;
    fuzz_corpus("jsonc_parse", jsonc_seeds, LEN(jsonc_seeds), check_jsonc);
}

/* ================================================================ gateway/config.c */

static const char *const config_seeds[] = {
    "// llmgate daemon configuration\n{\n"
    "  \"listen\": { \"address\": \"127.0.0.1\", \"port\": 8080, \"backlog\": 1024 },\n"
    "  \"workers\": 2,\n"
    "  \"limits\": { \"max_header_bytes\": 16384, \"max_body_bytes\": 4194304,\n"
    "              \"read_timeout_ms\": 30000, \"drain_timeout_ms\": 0 },\n"
    "  \"log\": { \"level\": \"warn\", \"access_log\": \"off\" },\n"
    "  \"auth\": { \"api_keys_sha256\": [\"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c"
    "15b0f00a08\"], \"redis_keys\": true, \"key_cache_ttl_ms\": 500 },\n"
    "  \"redis\": { \"address\": \"redis.internal\", \"port\": 6380, \"prefix\": \"lg:\" },\n"
    "  \"quota\": { \"on_redis_error\": \"fail_closed\", \"default_max_tokens\": 1024 },\n"
    "  \"cache\": { \"enabled\": true, \"default_ttl_s\": 600, \"l1_bytes\": 0 },\n"
    "  /* upstreams */\n"
    "  \"providers\": {\n"
    "    \"openai\": { \"base_url\": \"https://api.openai.com/v1/\", \"api_key_env\": "
    "\"LLMGATE_FUZZ_NO_SUCH_VAR\",\n"
    "                \"connect_timeout_ms\": 2000, \"forward_headers\": \"openai-*, x-request-id\" "
    "},\n"
    "    \"claude\": { \"kind\": \"anthropic\", \"base_url\": \"https://api.anthropic.com/v1\" },\n"
    "    \"az\": { \"kind\": \"azure_openai\", \"base_url\": \"https://r.openai.azure.com\", "
    "\"api_version\": \"2024-10-21\" }\n"
    "  },\n"
    "  \"models\": {\n"
    "    \"gpt-4o-mini\": { \"provider\": \"openai\", \"price_prompt\": 150, "
    "\"price_completion\": 600 },\n"
    "    \"smart\": { \"provider\": \"claude\", \"model\": \"claude-3-5-sonnet-20241022\" },\n"
    "    \"prod\": { \"provider\": \"az\", \"model\": \"gpt4o-deployment\" }\n"
    "  }\n}\n",

    "{\"providers\": {\"local\": {\"kind\": \"local\", \"base_url\": \"http://localhost\", "
    "\"socket\": \"/run/llmgate/engine.sock\", \"autostart\": false, \"threads\": 4, "
    "\"kv_blocks\": 4096, \"max_wait_ms\": 2000}},\n"
    " \"models\": {\"qwen\": {\"provider\": \"local\", \"model\": \"qwen2.5-0.5b-instruct\"}},\n"
    " \"policy\": {\"dir\": \"/etc/llmgate/policies\", \"watch\": false},\n"
    " \"usage\": {\"retention_days\": 30, \"stream_maxlen\": 100000},\n"
    " \"admin\": {\"token_env\": \"LLMGATE_FUZZ_NO_ADMIN\"}}",
};

static void check_config(const char *in, size_t len)
{
    struct config *c = (struct config *)1;
    char err[512] = "", jerr[512] = "";
    int rc = config_parse(in, len, "fuzz.conf", &c, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(rc == 0);
    /* The syntax is jsonc's: its errors come through unchanged. */
    struct jsonc_doc *doc = NULL;
    if (jsonc_parse(in, len, "fuzz.conf", &doc, jerr, sizeof jerr) != 0)
        FUZZ_CHECK(rc == -1 && strcmp(err, jerr) == 0);
    jsonc_free(doc);
    if (rc != 0) {
        FUZZ_CHECK(c == NULL && err[0] != '\0');
        check_error_position(err, "fuzz.conf", in, len);
        return;
    }
    FUZZ_CHECK(c != NULL && strcmp(c->path, "fuzz.conf") == 0 && c->n_models >= 1);
    for (size_t i = 0; i < c->n_providers; i++) {
        const struct provider_conf *p = &c->providers[i];
        FUZZ_CHECK(p->name && p->base_url);
        FUZZ_CHECK(i == 0 || strcmp(c->providers[i - 1].name, p->name) < 0);
    }
    for (size_t i = 0; i < c->n_models; i++) {
        const struct model_conf *m = &c->models[i];
        FUZZ_CHECK(m->name && m->model && m->provider_name);
        FUZZ_CHECK(i == 0 || strcmp(c->models[i - 1].name, m->name) < 0);
        FUZZ_CHECK(m->provider >= c->providers && m->provider < c->providers + c->n_providers);
        FUZZ_CHECK(strcmp(m->provider->name, m->provider_name) == 0);
        FUZZ_CHECK(config_find_model(c, m->name) == m);
    }
    FUZZ_CHECK(config_ref(c) == c);
    config_unref(c);
    config_unref(c);
}

static void test_config(void **state)
{
    (void)state;
    fuzz_corpus("config_parse", config_seeds, LEN(config_seeds), check_config);
}

/* ================================================================ routing/policy.c */

static const char policy_conf[] =
    "{\"providers\": {\"openai\": {\"base_url\": \"https://api.openai.com/v1\"},"
    " \"anthropic\": {\"kind\": \"anthropic\", \"base_url\": \"https://api.anthropic.com/v1\"},"
    " \"azure\": {\"kind\": \"azure_openai\", \"base_url\": \"https://r.openai.azure.com\"},"
    " \"local\": {\"kind\": \"local\", \"base_url\": \"http://localhost\", \"socket\": "
    "\"/tmp/e.sock\", \"autostart\": false},"
    " \"vllm\": {\"base_url\": \"http://10.0.0.7:8000/v1\"}},"
    " \"models\": {\"gpt-4o-mini\": {\"provider\": \"openai\"}, \"claude\": {\"provider\": "
    "\"anthropic\", \"model\": \"claude-3-5-haiku-20241022\"}}}";

static const char *const policy_seeds[] = {
    "// local first, cloud burst\n{\n  \"routes\": [\n    {\n"
    "      \"name\": \"chat-local-first\",\n"
    "      \"match\": { \"model\": [\"chat\", \"chat-default\"] },\n"
    "      \"targets\": [ { \"provider\": \"local\", \"model\": \"qwen2.5-0.5b-instruct\" } ],\n"
    "      \"fallback\": [ { \"provider\": \"openai\", \"model\": \"gpt-4o-mini\" } ],\n"
    "      \"fallback_on\": [\"overloaded\", \"rate_limited\", \"timeout\", \"connect_error\"],\n"
    "      \"timeouts\": { \"connect_ms\": 200, \"first_token_ms\": 3000 },\n"
    "      \"retry\": { \"attempts\": 0 },\n"
    "      \"breaker\": { \"failures\": 5, \"open_ms\": 5000 }\n    }\n  ]\n}\n",

    "{\"routes\": [{\"name\": \"canary\", \"match\": {\"model\": \"assistant\"},\n"
    " \"targets\": [{\"provider\": \"openai\", \"model\": \"gpt-4o\", \"weight\": 95},\n"
    "              {\"provider\": \"vllm\", \"model\": \"llama-3.1-70b\", \"weight\": 5}],\n"
    " \"sticky\": {\"by\": \"header\", \"header\": \"x-session-id\"},\n"
    " \"breaker\": {\"failures\": 3, \"error_ratio\": 0.2, \"window_ms\": 30000, "
    "\"min_requests\": 20, \"half_open_probes\": 2}}]}",

    "{\"routes\": [\n"
    " {\"name\": \"acme\", \"match\": {\"model\": \"gpt-4o*\", \"tenant\": \"acme\"},\n"
    "  \"targets\": [{\"provider\": \"azure\", \"model\": \"acme-gpt4o-prod\"}],\n"
    "  \"fallback\": [{\"provider\": \"openai\"}]},\n"
    " {\"match\": {\"model\": \"gpt-*\", \"header\": {\"name\": \"x-llmgate-route\", \"value\": "
    "\"staging\"}},\n  \"targets\": [{\"provider\": \"vllm\"}]},\n"
    " {\"name\": \"shared\", \"match\": {\"model\": \"gpt-4o*\"}, \"targets\": [{\"provider\": "
    "\"openai\"}],\n  \"cache\": {\"ttl_s\": 3600, \"mode\": \"always\", \"scope\": \"shared\", "
    "\"charge_tokens\": true}}]}",

    "{\"routes\": [{\"name\": \"smart\", \"match\": {\"model\": \"smart\"},\n"
    " \"targets\": [{\"provider\": \"openai\", \"model\": \"gpt-4o\"}],\n"
    " \"fallback\": [{\"provider\": \"anthropic\", \"model\": \"claude-3-5-sonnet-20241022\"}],\n"
    " \"fallback_on\": [\"rate_limited\", \"overloaded\", \"server_error\", \"context_length\"],\n"
    " \"retry\": {\"attempts\": 1, \"backoff_ms\": 200, \"backoff_max_ms\": 2000,\n"
    "           \"respect_retry_after_max_ms\": 1500, \"budget_ratio\": 0.1},\n"
    " \"timeouts\": {\"first_token_ms\": 15000, \"idle_ms\": 30000, \"total_ms\": 300000},\n"
    " \"long_input\": {\"strategy\": \"chunk\", \"chunk_tokens\": 1024, \"overlap_tokens\": 64}}]}",
};

static struct config *policy_cfg;
static char policy_dir[256];

static void check_targets(const struct policy_target *t, size_t n, bool weighted, unsigned *sum)
{
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(t[i].provider_name && t[i].provider && t[i].state);
        FUZZ_CHECK(strcmp(t[i].provider->name, t[i].provider_name) == 0);
        if (weighted) *sum += t[i].weight;
    }
}

static const char *no_header(void *ud, const char *name)
{
    (void)ud;
    (void)name;
    return NULL;
}

static void check_snapshot(const struct policy *p)
{
    FUZZ_CHECK(p->n_routes >= policy_cfg->n_models);
    for (size_t i = 0; i < p->n_routes; i++) {
        const struct policy_route *r = &p->routes[i];
        FUZZ_CHECK(r->name && r->origin && r->n_targets >= 1);
        unsigned sum = 0;
        check_targets(r->targets, r->n_targets, true, &sum);
        check_targets(r->fallback, r->n_fallback, false, &sum);
        FUZZ_CHECK(sum == r->total_weight && sum > 0);
        FUZZ_CHECK(r->fallback_on < (1u << PF_COUNT));
        for (size_t k = 0; k < r->n_models; k++)
            FUZZ_CHECK(r->models[k] != NULL);
    }
    for (size_t i = 0; i < p->n_exact; i++) {
        FUZZ_CHECK(p->exact[i].route < p->n_routes);
        FUZZ_CHECK(i == 0 || strcmp(p->exact[i - 1].name, p->exact[i].name) <= 0);
    }
    for (size_t i = 0; i < p->n_scan; i++)
        FUZZ_CHECK(p->scan[i].route < p->n_routes &&
                   (i == 0 || p->scan[i - 1].route <= p->scan[i].route));
    cJSON *j = policy_to_json(p);
    FUZZ_CHECK(j != NULL);
    cJSON_Delete(j);
    /* Matching returns one of the snapshot's routes; every configured model has one. */
    const char *models[] = {"gpt-4o-mini", "claude", "chat", "gpt-4o", "assistant", "smart", ""};
    for (size_t i = 0; i < LEN(models); i++) {
        struct route_query q = {
            .model = models[i], .tenant = i % 2 ? "acme" : NULL, .header = no_header};
        const struct policy_route *r = policy_match(p, &q);
        FUZZ_CHECK(r == NULL || (r >= p->routes && r < p->routes + p->n_routes));
        if (i < 2) FUZZ_CHECK(r != NULL);
    }
}

static void check_policy(const char *in, size_t len)
{
    struct policy_source src = {"fuzz.json", in, len};
    struct policy *p = (struct policy *)1;
    char err[512] = "";
    int rc = policy_build(policy_cfg, "fuzzdir", &src, 1, &p, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(rc == 0);
    size_t n_routes = 0;
    if (rc == 0) {
        FUZZ_CHECK(p != NULL && p->refs == 1);
        n_routes = p->n_routes;
        check_snapshot(p);
        FUZZ_CHECK(policy_ref(p) == p);
        policy_unref(p);
        policy_unref(p);
    } else {
        FUZZ_CHECK(p == NULL && err[0] != '\0');
        check_error_position(err, "fuzz.json", in, len);
    }
    /* Now and then the same text as a file in a policy directory: the same verdict. */
    if (fz.kind == CASE_SEED || rng_chance(3)) {
        char path[512];
        snprintf(path, sizeof path, "%s/10-fuzz.json", policy_dir);
        FILE *f = fopen(path, "wb");
        assert_non_null(f);
        assert_int_equal(fwrite(in, 1, len, f), len);
        assert_int_equal(fclose(f), 0);
        struct policy *q = (struct policy *)1;
        int rc2 = policy_load_dir(policy_cfg, policy_dir, &q, err, sizeof err);
        FUZZ_CHECK(rc2 == rc);
        if (rc2 == 0) {
            FUZZ_CHECK(q->n_files == 1 && q->n_routes == n_routes);
            policy_unref(q);
        } else {
            FUZZ_CHECK(q == NULL && err[0] != '\0');
        }
        unlink(path);
    }
}

static int policy_setup(void **state)
{
    (void)state;
    char err[512];
    if (config_parse(policy_conf, strlen(policy_conf), "policy.conf", &policy_cfg, err,
                     sizeof err) != 0) {
        fprintf(stderr, "policy.conf: %s\n", err);
        return -1;
    }
    const char *tmp = getenv("TMPDIR");
    snprintf(policy_dir, sizeof policy_dir, "%s/llmgate-fuzz-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    return mkdtemp(policy_dir) ? 0 : -1;
}

/* Also after a failed case: the directory goes, and the target states policies created. */
static int policy_teardown(void **state)
{
    char path[512];
    fuzz_teardown(state);
    snprintf(path, sizeof path, "%s/10-fuzz.json", policy_dir);
    unlink(path);
    int rc = rmdir(policy_dir);
    config_unref(policy_cfg);
    targets_free_all();
    return rc;
}

static void test_policy(void **state)
{
    (void)state;
    fuzz_corpus("policy_build", policy_seeds, LEN(policy_seeds), check_policy);
}

/* ================================================================ gateway/keys.c */

/* Three header values, one per line (Authorization, api-key, x-api-key); an empty line is an
 * absent header. */
static const char *const extract_seeds[] = {
    "Bearer sk-lg-0123456789abcdef0123456789abcdef0123456789abcdef\n\n",
    "\n  azure-key-with-spaces \t\nanthropic",
    "bearer    sk-proj-abc   \napi\nx",
    "Basic dXNlcjpwYXNz\n\nsk-ant-api03-xyz",
};

/* The line'th line of in (an exact-size NUL-terminated copy), or NULL when it is empty or
 * missing. */
static char *nth_line(const char *in, size_t len, int line)
{
    size_t at = 0;
    for (int i = 0; i < line; i++) {
        const char *nl = memchr(in + at, '\n', len - at);
        if (!nl) return NULL;
        at = (size_t)(nl - in) + 1;
    }
    const char *nl = memchr(in + at, '\n', len - at);
    size_t end = nl ? (size_t)(nl - in) : len;
    return end > at ? exact_copy(in + at, end - at, true) : NULL;
}

static void check_extract(const char *in, size_t len)
{
    char *h[3];
    for (int i = 0; i < 3; i++)
        h[i] = nth_line(in, len, i);
    size_t n = 0;
    const char *k = keys_extract(h[0], h[1], h[2], &n);
    if (fz.kind == CASE_SEED && fz.seed_index != 3) FUZZ_CHECK(k != NULL);
    /* The first present header decides; the key lies inside it, trimmed, 1..512 bytes. */
    int from = h[0] ? 0 : h[1] ? 1 : h[2] ? 2 : -1;
    if (k) {
        FUZZ_CHECK(from >= 0);
        const char *v = h[from];
        size_t vl = strlen(v);
        FUZZ_CHECK(k >= v && k + n <= v + vl);
        FUZZ_CHECK(n >= 1 && n <= 512);
        FUZZ_CHECK(k[0] != ' ' && k[n - 1] != ' ' && k[n - 1] != '\t');
        if (from == 0)
            FUZZ_CHECK(vl >= 7 && strncasecmp(v, "Bearer ", 7) == 0 && k >= v + 7);
        else
            FUZZ_CHECK(k[0] != '\t');
    } else if (from == 1 || from == 2) {
        /* only blank or over-long values are refused */
        size_t vl = strlen(h[from]), sp = strspn(h[from], " \t");
        size_t end = vl;
        while (end > sp && (h[from][end - 1] == ' ' || h[from][end - 1] == '\t'))
            end--;
        FUZZ_CHECK(end == sp || end - sp > 512);
    }
    for (int i = 0; i < 3; i++)
        free(h[i]);
}

/* A key hash as HGETALL returns it: field=value per line. */
static const char *const record_seeds[] = {
    "id=key_0123456789abcdef\ntenant=acme\nstatus=active\nmodels=gpt-4o*,mock-?,claude\n"
    "rpm=60\ntpm=100000\ntpd=2000000\ntpmo=50000000\nconcurrency=4\nmax_tokens=2048\n"
    "expires=1893456000\nmodel_limits={\"gpt-4o*\":{\"rpm\":5,\"tpm\":7700},\"*\":{\"concurrency\""
    ":1}}\ntenant.rpm=600\ntenant.tpd=90000000\ntenant.concurrency=32",
    "id=key_ffff\ntenant=t-1.x_y\nstatus=revoked\nmodels=\nmodel_limits=",
    "tenant=solo\nid=k\nrpm=4000000001\ntpm=-5\ntenant.tpm=12abc",
};

struct record_pairs {
    char *fields[64], *values[64];
    size_t n;
};

static void split_record(const char *in, size_t len, struct record_pairs *r)
{
    r->n = 0;
    for (size_t at = 0; at < len && r->n < LEN(r->fields);) {
        const char *nl = memchr(in + at, '\n', len - at);
        size_t end = nl ? (size_t)(nl - in) : len;
        const char *eq = memchr(in + at, '=', end - at);
        size_t fe = eq ? (size_t)(eq - in) : end;
        r->fields[r->n] = exact_copy(in + at, fe - at, true);
        r->values[r->n] = eq ? exact_copy(eq + 1, end - fe - 1, true) : exact_copy("", 0, true);
        r->n++;
        at = end + 1;
    }
}

/* to_uint of keys.c: a decimal up to 4e9, else 0. */
/* A rate limit as keys.c reads it: decimal digits only (else none), at most KEYS_LIMIT_MAX. */
static unsigned limit_value(const char *v)
{
    if (!*v) return 0;
    unsigned long long x = 0;
    for (const char *p = v; *p; p++) {
        if (*p < '0' || *p > '9') return 0;
        x = x > KEYS_LIMIT_MAX ? x : x * 10 + (unsigned)(*p - '0');
    }
    return x > KEYS_LIMIT_MAX ? KEYS_LIMIT_MAX : (unsigned)x;
}

static size_t count_globs(const char *v)
{
    size_t n = 0;
    for (const char *p = v; *p;) {
        size_t l = strcspn(p, ",");
        n += l > 0;
        p += l + (p[l] == ',');
    }
    return n > 256 ? 256 : n;
}

static void check_record(const char *in, size_t len)
{
    struct record_pairs r;
    split_record(in, len, &r);
    struct key_record *k =
        keys_record_parse((const char *const *)r.fields, (const char *const *)r.values, r.n);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(k != NULL);
    /* What the last value of each field says. */
    const char *id = NULL, *tenant = NULL, *status = NULL, *models = NULL, *rpm = NULL,
               *tconc = NULL;
    for (size_t i = 0; i < r.n; i++) {
        const char *f = r.fields[i], *v = r.values[i];
        if (!strcmp(f, "id")) id = v;
        if (!strcmp(f, "tenant")) tenant = v;
        if (!strcmp(f, "status")) status = v;
        if (!strcmp(f, "models")) models = v;
        if (!strcmp(f, "rpm")) rpm = v;
        if (!strcmp(f, "tenant.concurrency")) tconc = v;
    }
    bool want = id && id[0] && strlen(id) < sizeof k->id && tenant && keys_tenant_id_valid(tenant);
    FUZZ_CHECK((k != NULL) == want);
    if (k) {
        FUZZ_CHECK(k->refs == 1 && strcmp(k->id, id) == 0 && strcmp(k->tenant, tenant) == 0);
        FUZZ_CHECK(k->revoked == (status && strcmp(status, "active") != 0));
        FUZZ_CHECK(k->key.rpm == (rpm ? limit_value(rpm) : 0));
        FUZZ_CHECK(k->tenant_limits.conc == (tconc ? limit_value(tconc) : 0));
        FUZZ_CHECK(k->n_models == (models ? count_globs(models) : 1));
        if (!models) FUZZ_CHECK(strcmp(k->models[0], "*") == 0);
        for (size_t i = 0; i < k->n_models; i++)
            FUZZ_CHECK(k->models[i][0] && !strchr(k->models[i], ','));
        FUZZ_CHECK(k->n_model_limits <= 64);
        for (size_t i = 0; i < k->n_model_limits; i++)
            FUZZ_CHECK(k->model_limits[i].glob != NULL);
        (void)keys_model_allowed(k, "gpt-4o-mini");
        (void)keys_model_limit(k, "gpt-4o-mini");
        keys_record_release(k);
    }
    for (size_t i = 0; i < r.n; i++) {
        free(r.fields[i]);
        free(r.values[i]);
    }
}

static void test_keys(void **state)
{
    (void)state;
    fuzz_corpus("keys_extract", extract_seeds, LEN(extract_seeds), check_extract);
    fuzz_corpus("keys_record_parse", record_seeds, LEN(record_seeds), check_record);
}

/* ================================================================ routing/adapter_anthropic.c */

static const char *const anthropic_answer_seeds[] = {
    "{\"id\":\"msg_01XFDUDYJgAACzvnptvVoYEL\",\"type\":\"message\",\"role\":\"assistant\","
    "\"model\":\"claude-3-5-sonnet-20241022\",\"content\":[{\"type\":\"text\",\"text\":"
    "\"Hello! \\u00bfQu\\u00e9 tal?\"},{\"type\":\"text\",\"text\":\" Second block.\"}],"
    "\"stop_reason\":\"end_turn\",\"stop_sequence\":null,\"usage\":{\"input_tokens\":12,"
    "\"cache_creation_input_tokens\":0,\"cache_read_input_tokens\":4,\"output_tokens\":6}}",

    "{\"id\":\"msg_tools\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\","
    "\"content\":[{\"type\":\"thinking\",\"thinking\":\"...\"},{\"type\":\"text\",\"text\":"
    "\"Checking.\"},{\"type\":\"tool_use\",\"id\":\"toolu_01\",\"name\":\"get_weather\","
    "\"input\":{\"city\":\"Paris\",\"units\":[\"c\"]}}],\"stop_reason\":\"tool_use\","
    "\"usage\":{\"input_tokens\":300,\"output_tokens\":40}}",

    "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",\"message\":\"Overloaded\"}}",
};

static const char *const anthropic_stream_seeds[] = {
    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",\"type\":\"message\","
    "\"role\":\"assistant\",\"model\":\"claude-3-5-haiku-20241022\",\"content\":[],"
    "\"stop_reason\":null,\"usage\":{\"input_tokens\":25,\"output_tokens\":1,"
    "\"cache_read_input_tokens\":3}}}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\","
    "\"text\":\"\"}}\n\n"
    "event: ping\ndata: {\"type\": \"ping\"}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\"Hello\"}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":\"text_delta\","
    "\"text\":\" w\\u00f6rld\"}}\n\n"
    "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"end_turn\","
    "\"stop_sequence\":null},\"usage\":{\"output_tokens\":15}}\n\n"
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",

    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":\"claude\","
    "\"usage\":{\"input_tokens\":100,\"cache_creation_input_tokens\":20,\"output_tokens\":0}}}\n\n"
    "event: content_block_start\n"
    "data: {\"type\":\"content_block_start\",\"index\":1,\"content_block\":{\"type\":"
    "\"tool_use\",\"id\":\"toolu_9\",\"name\":\"lookup\",\"input\":{}}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
    "\"input_json_delta\",\"partial_json\":\"{\\\"q\\\": \"}}\n\n"
    "event: content_block_delta\n"
    "data: {\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
    "\"input_json_delta\",\"partial_json\":\"\\\"x\\\"}\"}}\n\n"
    "event: message_delta\n"
    "data: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_use\"},\"usage\":"
    "{\"output_tokens\":9}}\n\n"
    "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",

    "event: message_start\n"
    "data: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_3\",\"model\":\"claude\"}}\n\n"
    "event: error\n"
    "data: {\"type\":\"error\",\"error\":{\"type\":\"rate_limit_error\",\"message\":\"slow "
    "down\"}}\n\n",
};

/* OpenAI chat request -> Messages request. */
static void check_anthropic_request(const char *in, size_t len)
{
    size_t out_len = 0;
    int rc = 12345;
    char field[ADAPTER_FIELD_MAX];
    memset(field, 'x', sizeof field); /* must come back a string */
    char *out =
        anthropic_request_from_openai(in, len, "claude-3-5-haiku-20241022", &out_len, &rc, field);
    FUZZ_CHECK(rc == 0 || rc == -1 || rc == ADAPTER_UNSUPPORTED);
    FUZZ_CHECK((out != NULL) == (rc == 0));
    FUZZ_CHECK(memchr(field, '\0', sizeof field) != NULL);
    /* Untranslatable: the client is told which field (the relay's 400 names it). */
    if (rc == ADAPTER_UNSUPPORTED) FUZZ_CHECK(field[0] != '\0');
    cJSON *req = cJSON_ParseWithLength(in, len);
    if (cJSON_IsObject(req)) FUZZ_CHECK(rc != -1);
    cJSON_Delete(req);
    if (!out) return;
    FUZZ_CHECK(out_len == strlen(out));
    cJSON *j = parse_exact(out, out_len);
    FUZZ_CHECK(cJSON_IsObject(j));
    FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(j, "model")));
    /* The relay only hands it bodies oai_request_parse accepted (finite token limits). */
    struct oai_request r;
    struct oai_error oe;
    if (oai_request_parse(OAI_CHAT, in, len, &r, &oe) == 0)
        FUZZ_CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(j, "max_tokens")));
    oai_request_free(&r);
    const cJSON *sys = cJSON_GetObjectItemCaseSensitive(j, "system");
    FUZZ_CHECK(!sys || cJSON_IsString(sys));
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(j, "messages");
    FUZZ_CHECK(cJSON_IsArray(msgs));
    /* Turns alternate, and each has at least one content block. */
    const char *prev = NULL;
    for (const cJSON *m = msgs->child; m; m = m->next) {
        const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
        FUZZ_CHECK(role && (!strcmp(role, "user") || !strcmp(role, "assistant")));
        FUZZ_CHECK(!prev || strcmp(prev, role) != 0);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        FUZZ_CHECK(cJSON_IsArray(content) && content->child);
        prev = role;
    }
    cJSON_Delete(j);
    free(out);
}

static long anthropic_status;

/* A buffered Messages answer (or error) -> OpenAI JSON. */
static void check_anthropic_finish(const char *in, size_t len)
{
    static const long statuses[] = {400, 401, 404, 413, 429, 500, 503, 529};
    long status = fz.kind == CASE_SEED || rng_chance(60) ? anthropic_status
                                                         : statuses[rng_below(LEN(statuses))];
    struct adapter_call c = {.upstream_model = "claude-up", .endpoint = ADAPTER_CHAT};
    size_t out_len = 0;
    char *out = adapter_anthropic.finish(&c, status, in, len, &out_len);
    cJSON *doc = jsonv_parse(in, len); /* (unit-tested in test_jsonv) */
    bool object = cJSON_IsObject(doc);
    cJSON_Delete(doc);
    if (fz.kind == CASE_SEED || (object && status != 200)) FUZZ_CHECK(out != NULL);
    if (out) {
        FUZZ_CHECK(object && out_len == strlen(out));
        cJSON *j = parse_exact(out, out_len);
        FUZZ_CHECK(cJSON_IsObject(j));
        if (status != 200) {
            const cJSON *e = cJSON_GetObjectItemCaseSensitive(j, "error");
            FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "message")));
            FUZZ_CHECK(cJSON_IsString(cJSON_GetObjectItemCaseSensitive(e, "type")));
        } else {
            const cJSON *ch = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(j, "choices"), 0);
            const cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, "message");
            const char *role = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(m, "role"));
            FUZZ_CHECK(role && !strcmp(role, "assistant"));
            const char *fr =
                cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(ch, "finish_reason"));
            FUZZ_CHECK(fr && (!strcmp(fr, "stop") || !strcmp(fr, "length") ||
                              !strcmp(fr, "tool_calls") || !strcmp(fr, "content_filter")));
            const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
            FUZZ_CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")));
            FUZZ_CHECK(cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(u, "total_tokens")));
        }
        cJSON_Delete(j);
        free(out);
    }
    int f = adapter_anthropic.classify(status, in, len);
    FUZZ_CHECK(f >= -1 && f < PF_COUNT);
    if (status == 429) FUZZ_CHECK(f == PF_RATE_LIMITED);
    f = adapter_classify_openai(status, in, len);
    FUZZ_CHECK(f >= -1 && f < PF_COUNT);
}

struct anth_feed {
    void *st;
    int rc, failure, emitted, done;
};

static void anth_emit(void *ud, const char *data, size_t len)
{
    struct anth_feed *f = ud;
    FUZZ_CHECK(!f->done);
    f->emitted++;
    if (len == 6 && !memcmp(data, "[DONE]", 6)) {
        f->done++;
        return;
    }
    cJSON *j = parse_exact(data, len);
    FUZZ_CHECK(cJSON_IsObject(j));
    const char *object = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(j, "object"));
    FUZZ_CHECK(object && !strcmp(object, "chat.completion.chunk"));
    FUZZ_CHECK(cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(j, "choices")));
    cJSON_Delete(j);
}

static int anth_event(void *ud, const struct sse_event *ev)
{
    struct anth_feed *f = ud;
    int failure = -7;
    int rc = adapter_anthropic.stream_event(f->st, ev->event, ev->event_len, ev->data, ev->data_len,
                                            anth_emit, f, &failure);
    FUZZ_CHECK((rc >= -1 && rc <= 1) || rc == ADAPTER_STREAM_ERROR);
    if (rc < 0) FUZZ_CHECK(failure >= 0 && failure < PF_COUNT);
    FUZZ_CHECK((rc == 1) == (f->done == 1));
    f->rc = rc;
    return rc != 0; /* the relay stops at an error or at the end */
}

static void check_anthropic_stream(const char *in, size_t len)
{
    const char *req = rng_chance(50)
                          ? "{\"stream\":true,\"stream_options\":{\"include_usage\":true}}"
                          : "{\"stream\":true}";
    struct adapter_call c = {
        .upstream_model = "claude-up", .stream = true, .body = req, .body_len = strlen(req)};
    struct anth_feed f = {.st = adapter_anthropic.stream_new(&c)};
    assert_non_null(f.st);
    struct sse_parser p;
    sse_parser_init(&p, 0, anth_event, &f);
    struct sse_outcome o;
    sse_run(&p, in, len, true, false, &o);
    sse_parser_free(&p);
    adapter_anthropic.stream_free(f.st);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(f.rc == (fz.seed_index == 2 ? ADAPTER_STREAM_ERROR : 1));
}

static void test_anthropic(void **state)
{
    (void)state;
    fuzz_corpus("anthropic_request_from_openai", chat_seeds, LEN(chat_seeds),
                check_anthropic_request);
    anthropic_status = 200;
    fuzz_corpus("anthropic finish (200)", anthropic_answer_seeds, 2, check_anthropic_finish);
    anthropic_status = 529;
    fuzz_corpus("anthropic finish (error)", anthropic_answer_seeds + 2, 1, check_anthropic_finish);
    fuzz_corpus("anthropic stream_event", anthropic_stream_seeds, LEN(anthropic_stream_seeds),
                check_anthropic_stream);
}

/* ================================================================ engine/json.c */

static const char *const ejson_seeds[] = {
    "{\"architectures\":[\"LlamaForCausalLM\"],\"hidden_size\":2048,\"rope_scaling\":{\"factor\":"
    "32.0,\"rope_type\":\"llama3\"},\"torch_dtype\":\"bfloat16\",\"eos_token_id\":[128001,128008],"
    "\"tie_word_embeddings\":true,\"rms_norm_eps\":1e-05,\"x\":null}",
    ("[\"\\u0000\",\"\\ud800\",\"\\ud83d\\ude00\",\"\xe6\xbc\xa2\xe5\xad\x97\",-0.0,1E400,-1e-400,"
     "[],{},[[[]]],{\"a\":{\"b\":[true,false]}}]"),
    "  \"a string with \\\"escapes\\\" \\\\ \\/ \\b\\f\\n\\r\\t\"\r\n\t",
    "{\"dup\":1,\"dup\":2,\"\":\"empty key\",\"k\\u00e9y\":[0,1,2.5e-3]}",
};

static void check_ejson_value(const struct ejson *v)
{
    switch (v->type) {
    case EJSON_STRING:
        FUZZ_CHECK(v->str && v->str[v->str_len] == '\0' && utf8_valid(v->str, v->str_len));
        break;
    case EJSON_NUMBER: FUZZ_CHECK(!isnan(v->num)); break;
    case EJSON_OBJECT:
        for (size_t i = 0; i < v->n; i++) {
            FUZZ_CHECK(v->keys[i] && v->keys[i][v->key_lens[i]] == '\0');
            FUZZ_CHECK(utf8_valid(v->keys[i], v->key_lens[i]));
        }
        /* fall through */
    case EJSON_ARRAY:
        for (size_t i = 0; i < v->n; i++)
            check_ejson_value(&v->items[i]);
        break;
    default: FUZZ_CHECK(v->type <= EJSON_TRUE && v->n == 0);
    }
}

static void check_ejson(const char *in, size_t len)
{
    char err[256] = "";
    struct ejson_doc *d = ejson_parse(in, len, err, sizeof err);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(d != NULL);
    /* ejson skips a leading UTF-8 BOM (RFC 8259 allows that), jsonv does not */
    size_t bom = len >= 3 && !memcmp(in, "\xef\xbb\xbf", 3) ? 3 : 0;
    enum jsonv_type vt = jsonv_check(in + bom, len - bom);
    if (d) {
        const struct ejson *root = ejson_root(d);
        FUZZ_CHECK(root != NULL);
        check_ejson_value(root);
        /* the lookups on whatever came out */
        (void)ejson_get(root, "hidden_size");
        (void)ejson_at(root, 0);
        long long ll;
        (void)ejson_get_int(root, "hidden_size", &ll);
        (void)ejson_get_str(root, "x");
        ejson_free(d);
    } else {
        long line = 0, col = 0;
        unsigned long long byte = 0;
        FUZZ_CHECK(sscanf(err, "line %ld, column %ld (byte %llu): ", &line, &col, &byte) == 3);
        FUZZ_CHECK(line >= 1 && col >= 1 && byte <= len);
    }
    /* Both strict RFC 8259 readers agree; only ejson checks UTF-8 inside strings. */
    if (utf8_valid(in, len)) {
        FUZZ_CHECK((d != NULL) == (vt != JSONV_INVALID));
    } else if (d) {
        FUZZ_CHECK(vt != JSONV_INVALID);
    }
}

/* ================================================================ engine/model.c */

/* config.json, then generation_config.json after a 0x1e byte (none: no generation config). */
static const char *const model_seeds[] = {
    "{\"architectures\":[\"LlamaForCausalLM\"],\"attention_bias\":false,\"bos_token_id\":128000,"
    "\"eos_token_id\":[128001,128008,128009],\"head_dim\":64,\"hidden_act\":\"silu\","
    "\"hidden_size\":2048,\"intermediate_size\":8192,\"max_position_embeddings\":131072,"
    "\"mlp_bias\":false,\"model_type\":\"llama\",\"num_attention_heads\":32,"
    "\"num_hidden_layers\":16,\"num_key_value_heads\":8,\"rms_norm_eps\":1e-05,"
    "\"rope_scaling\":{\"factor\":32.0,\"high_freq_factor\":4.0,\"low_freq_factor\":1.0,"
    "\"original_max_position_embeddings\":8192,\"rope_type\":\"llama3\"},\"rope_theta\":500000.0,"
    "\"tie_word_embeddings\":true,\"torch_dtype\":\"bfloat16\",\"vocab_size\":128256}"
    "\x1e{\"bos_token_id\":128000,\"do_sample\":true,\"eos_token_id\":[128001,128008,128009],"
    "\"temperature\":0.6,\"top_p\":0.9}",
    "{\"architectures\":[\"Qwen2ForCausalLM\"],\"hidden_size\":896,\"intermediate_size\":4864,"
    "\"num_hidden_layers\":24,\"num_attention_heads\":14,\"num_key_value_heads\":2,"
    "\"max_position_embeddings\":32768,\"rope_theta\":1000000.0,\"sliding_window\":32768,"
    "\"use_sliding_window\":false,\"tie_word_embeddings\":true,\"vocab_size\":151936,"
    "\"eos_token_id\":151645,\"rope_scaling\":null}"
    "\x1e{\"eos_token_id\":[151645,151643],\"top_k\":20,\"repetition_penalty\":1.1,"
    "\"bos_token_id\":151643}",
    "{\"model_type\":\"mistral\",\"hidden_size\":4096,\"intermediate_size\":14336,"
    "\"num_hidden_layers\":32,\"num_attention_heads\":32,\"num_key_value_heads\":8,"
    "\"head_dim\":128,\"sliding_window\":4096,\"vocab_size\":32768,\"rope_parameters\":"
    "{\"rope_type\":\"default\",\"rope_theta\":1000000.0}}",
};

static void check_model_config(const char *in, size_t len)
{
    const char *sep = memchr(in, 0x1e, len);
    size_t cl = sep ? (size_t)(sep - in) : len;
    char *gen = sep ? exact_copy(sep + 1, len - cl - 1, false) : NULL;
    struct model_config c;
    char notes[128], err[256] = "";
    int rc = model_config_parse(in, cl, gen, sep ? len - cl - 1 : 0, &c, notes, sizeof notes, err,
                                sizeof err);
    free(gen);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(rc == 0);
    if (rc != 0) {
        FUZZ_CHECK(!strncmp(err, "config.json: ", 13) ||
                   !strncmp(err, "generation_config.json: ", 24));
        return;
    }
    FUZZ_CHECK(strlen(notes) < sizeof notes);
    FUZZ_CHECK(c.dim >= 1 && c.dim <= 65536 && c.hidden_dim >= 1 && c.hidden_dim <= 1 << 20);
    FUZZ_CHECK(c.n_layers >= 1 && c.n_layers <= 1024 && c.vocab_size >= 1 &&
               c.vocab_size <= 1 << 24);
    FUZZ_CHECK(c.n_heads >= 1 && c.n_kv_heads >= 1 && c.n_heads % c.n_kv_heads == 0);
    FUZZ_CHECK(c.head_dim >= 2 && c.head_dim <= 1024 && c.head_dim % 2 == 0);
    FUZZ_CHECK(c.max_seq_len >= 1 && c.norm_eps > 0 && c.rope_theta >= 1);
    FUZZ_CHECK(c.n_eos >= 0 && c.n_eos <= MODEL_MAX_EOS);
    for (int i = 0; i < c.n_eos; i++) {
        FUZZ_CHECK(c.eos_ids[i] >= 0);
        for (int j = 0; j < i; j++)
            FUZZ_CHECK(c.eos_ids[i] != c.eos_ids[j]);
    }
    if (c.rope_type == ROPE_LLAMA3)
        FUZZ_CHECK(c.rope_factor > 0 && c.rope_high_freq_factor > c.rope_low_freq_factor &&
                   c.rope_orig_max_pos >= 1);
    /* the rope frequencies it implies are finite */
    float inv[512];
    model_rope_inv_freq(&c, inv);
    for (int i = 0; i < c.head_dim / 2; i++)
        FUZZ_CHECK(isfinite(inv[i]));
}

/* ================================================================ engine/tokenizer.c */

/* tokenizer.json, then tokenizer_config.json after a 0x1e byte. */
static const char *const tokenizer_seeds[] = {
    "{\"version\":\"1.0\",\"added_tokens\":[{\"id\":0,\"content\":\"<unk>\",\"special\":true},"
    "{\"id\":1,\"content\":\"<s>\",\"special\":true},{\"id\":2,\"content\":\"</s>\",\"special\":"
    "true,\"lstrip\":false,\"rstrip\":false,\"normalized\":false,\"single_word\":false}],"
    "\"normalizer\":{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"Prepend\",\"prepend\":"
    "\"\xe2\x96\x81\"},{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":"
    "\"\xe2\x96\x81\"}]},\"pre_tokenizer\":null,\"decoder\":{\"type\":\"Sequence\",\"decoders\":"
    "[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\xe2\x96\x81\"},\"content\":\" \"},"
    "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \","
    "\"start\":1,\"stop\":0}]},\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":"
    "\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":true,\"vocab\":{\"<unk>\":0,\"<s>\":1,"
    "\"</s>\":2,\"<0x0A>\":3,\"<0x21>\":4,\"<0xC3>\":5,\"<0xA9>\":6,\"\xe2\x96\x81\":7,\"h\":8,"
    "\"e\":9,\"l\":10,\"o\":11,\"\xe2\x96\x81h\":12,\"ll\":13,\"\xe2\x96\x81he\":14,\"llo\":15,"
    "\"\xe2\x96\x81hello\":16},\"merges\":[\"\xe2\x96\x81 h\",\"l l\",\"\xe2\x96\x81h e\","
    "[\"ll\",\"o\"],\"\xe2\x96\x81he llo\"]}}"
    "\x1e{\"bos_token\":\"<s>\",\"eos_token\":{\"content\":\"</s>\"},\"add_bos_token\":true,"
    "\"chat_template\":\"{% for m in messages %}{{ m['content'] }}{% endfor %}\"}",

    "{\"added_tokens\":[{\"id\":9,\"content\":\"<|endoftext|>\",\"special\":true},{\"id\":10,"
    "\"content\":\"<tool>\",\"special\":false}],\"normalizer\":null,\"pre_tokenizer\":{\"type\":"
    "\"ByteLevel\",\"add_prefix_space\":false,\"trim_offsets\":true,\"use_regex\":true},"
    "\"post_processor\":null,\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\","
    "\"vocab\":{\"a\":0,\"b\":1,\"\xc4\xa0\":2,\"\xc4\xa0"
    "a\":3,\"ab\":4,\"\xc4\x8a\":5,"
    "\"\xc3\x83\":6,\"\xc2\xa9\":7,\"!\":8},\"merges\":[\"\xc4\xa0 a\",\"a b\"]}}"
    "\x1e{\"eos_token\":\"<|endoftext|>\",\"add_bos_token\":false}",
};

static const char *const tokenizer_texts[] = {
    "hello hello!\n",
    "ab a\xc3\xa9<|endoftext|>b<tool>",
    " \xc3\x28\xff<s>hello</s>",
    "",
};

static void check_tokenizer_text(const struct tokenizer *t, const char *text, size_t len)
{
    int32_t vocab = tokenizer_vocab_size(t);
    int32_t *ids = NULL;
    size_t n = 0;
    int special = (int)rng_below(2);
    FUZZ_CHECK(tokenizer_encode(t, text, len, special, &ids, &n) == 0);
    FUZZ_CHECK((n == 0) == (ids == NULL) || n > 0);
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < vocab);
    int flags = rng_chance(50) ? TOK_DECODE_SKIP_SPECIAL : 0;
    char *out = NULL;
    size_t out_len = 0;
    FUZZ_CHECK(tokenizer_decode_ex(t, ids, n, flags, &out, &out_len) == 0);
    FUZZ_CHECK(out && out[out_len] == '\0' && utf8_valid(out, out_len));
    /* streaming gives the same text, id by id */
    struct tokenizer_stream s;
    tokenizer_decode_stream_init(&s, t, flags);
    size_t cap = tokenizer_decode_stream_max(t);
    char *piece = malloc(cap ? cap : 1);
    assert_non_null(piece);
    struct fbuf all = {0};
    for (size_t i = 0; i <= n; i++) {
        size_t pl = 0;
        int rc = i < n ? tokenizer_decode_stream_push(&s, ids[i], piece, cap, &pl)
                       : tokenizer_decode_stream_flush(&s, piece, cap, &pl);
        FUZZ_CHECK(rc == 0 && pl <= cap);
        fb_add(&all, piece, pl);
    }
    FUZZ_CHECK(all.len == out_len && (!out_len || !memcmp(all.p, out, out_len)));
    fb_free(&all);
    free(piece);
    free(out);
    free(ids);
}

static void check_tokenizer(const char *in, size_t len)
{
    const char *sep = memchr(in, 0x1e, len);
    size_t tl = sep ? (size_t)(sep - in) : len;
    char *cfg = sep ? exact_copy(sep + 1, len - tl - 1, false) : NULL;
    struct tokenizer *t = (struct tokenizer *)1;
    char err[512] = "";
    int rc = tokenizer_load_json(in, tl, cfg, sep ? len - tl - 1 : 0, &t, err, sizeof err);
    free(cfg);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(rc == 0);
    if (rc != 0) {
        FUZZ_CHECK(t == NULL && err[0] != '\0');
        return;
    }
    int32_t vocab = tokenizer_vocab_size(t);
    FUZZ_CHECK(vocab >= 1);
    FUZZ_CHECK(tokenizer_bos(t) >= -1 && tokenizer_bos(t) < vocab);
    FUZZ_CHECK(tokenizer_eos(t) >= -1 && tokenizer_eos(t) < vocab);
    for (int32_t id = 0; id < vocab && id < 64; id++) {
        size_t tl2 = 0;
        const char *text = tokenizer_token_text(t, id, &tl2);
        if (text) FUZZ_CHECK(text[tl2] == '\0');
        if (text && strlen(text) == tl2) { /* a C string cannot name a text with a NUL */
            int32_t back = tokenizer_token_id(t, text);
            const char *bt = back >= 0 ? tokenizer_token_text(t, back, NULL) : NULL;
            FUZZ_CHECK(bt && strcmp(bt, text) == 0);
        }
        (void)tokenizer_token_to_piece(t, id, &tl2);
    }
    for (size_t i = 0; i < LEN(tokenizer_texts); i++)
        check_tokenizer_text(t, tokenizer_texts[i], strlen(tokenizer_texts[i]));
    /* and a slice of the input itself, bytes as they come */
    size_t from = rng_below(len), n = rng_below(len - from + 1);
    check_tokenizer_text(t, in + from, n > 200 ? 200 : n);
    tokenizer_free(t);
}

/* ================================================================ engine/safetensors.c */

static const char *const safetensors_seeds[] = {
    "{\"__metadata__\":{\"format\":\"pt\"},\"model.norm.weight\":{\"dtype\":\"F32\",\"shape\":[2,2]"
    ","
    "\"data_offsets\":[0,16]},\"empty\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[16,16]}"
    ",\"lm_head.weight\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[16,22]}}",
    "{\"a\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[0,2]},\"z\":{\"dtype\":\"F32\","
    "\"shape\":[0,4],\"data_offsets\":[2,2]},\"b\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1],"
    "\"data_offsets\":[4,8]}}        ",
};

/* Wraps a header into a file: the 8-byte length (mostly right), the header, the data. */
static char *safetensors_file(const char *hdr, size_t hl, size_t *total)
{
    size_t data = fz.kind == CASE_SEED || rng_chance(70) ? 24 + rng_below(25) : rng_below(48);
    *total = 8 + hl + data;
    char *f = malloc(*total);
    assert_non_null(f);
    uint64_t n = hl;
    if (fz.kind != CASE_SEED && rng_chance(10)) {
        static const uint64_t odd[] = {0, 1, 2, 7, UINT64_MAX, 100000001, 1ull << 63};
        n = rng_chance(50) ? odd[rng_below(LEN(odd))] : hl + rng_below(5) - 2;
    }
    for (int i = 0; i < 8; i++)
        f[i] = (char)(n >> (8 * i));
    memcpy(f + 8, hdr, hl);
    for (size_t i = 0; i < data; i++)
        f[8 + hl + i] = (char)(i * 37);
    return f;
}

static void check_safetensors(const char *in, size_t len)
{
    size_t total;
    char *buf = safetensors_file(in, len, &total);
    struct st_file *f = (struct st_file *)1;
    char err[512] = "";
    int rc = st_file_open_mem(buf, total, "fuzz.safetensors", &f, err, sizeof err);
    FUZZ_CHECK(rc == 0 || rc == -1);
    if (fz.kind == CASE_SEED) FUZZ_CHECK(rc == 0);
    if (rc != 0) {
        FUZZ_CHECK(f == NULL && !strncmp(err, "fuzz.safetensors: ", 18));
        free(buf);
        return;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = hlen << 8 | (unsigned char)buf[i];
    FUZZ_CHECK(hlen <= total - 8);
    const char *data = buf + 8 + hlen, *end = buf + total;
    for (size_t i = 0; i < f->n; i++) {
        const struct st_tensor *t = &f->tensors[i];
        FUZZ_CHECK(t->name && t->name[0] && st_file_find(f, t->name) == t);
        FUZZ_CHECK((int)t->dtype >= ST_F32 && t->dtype <= ST_BF16);
        FUZZ_CHECK(t->ndim >= 0 && t->ndim <= ST_MAX_DIMS);
        uint64_t count = 1;
        for (int d = 0; d < t->ndim; d++) {
            FUZZ_CHECK(t->shape[d] >= 0);
            count *= (uint64_t)t->shape[d];
        }
        FUZZ_CHECK(count * st_dtype_size(t->dtype) == t->nbytes);
        const char *p = t->data;
        FUZZ_CHECK(p >= data && p <= end && t->nbytes <= (size_t)(end - p));
        /* no two tensors with bytes share any */
        for (size_t j = 0; j < i; j++) {
            const struct st_tensor *u = &f->tensors[j];
            const char *q = u->data;
            if (t->nbytes && u->nbytes) FUZZ_CHECK(p + t->nbytes <= q || q + u->nbytes <= p);
        }
    }
    st_file_close(f);
    free(buf);
}

/* Headers made from random tensor tuples, to reach the layouts single mutations rarely do. */
static void generated_headers(size_t count)
{
    static const char *const dtypes[] = {"F32", "F16", "BF16", "I8"};
    struct fbuf h = {0};
    fz.target = "st_file_open_mem(generated)";
    if (fz_only && !strstr(fz.target, fz_only)) return;
    fz.seed_index = 0;
    for (size_t it = 0; it < count; it++) {
        case_begin(CASE_GENERATED, it);
        h.len = 0;
        fb_add(&h, "{", 1);
        size_t n = 1 + rng_below(5);
        for (size_t i = 0; i < n; i++) {
            size_t dt = rng_chance(95) ? rng_below(3) : 3, ndim = rng_below(4), elems = 1;
            fb_addf(&h, "%s\"t%zu\":{\"dtype\":\"%s\",\"shape\":[", i ? "," : "",
                    rng_chance(5) ? 0 : i, dtypes[dt]);
            for (size_t d = 0; d < ndim; d++) {
                size_t dim = rng_below(5);
                elems *= dim;
                fb_addf(&h, "%s%zu", d ? "," : "", dim);
            }
            size_t begin = rng_below(40), bytes = elems * (dt == 0 ? 4 : dt == 3 ? 1 : 2);
            size_t stop = rng_chance(90) ? begin + bytes : rng_below(64);
            fb_addf(&h, "],\"data_offsets\":[%zu,%zu]}", begin, stop);
        }
        fb_add(&h, "}", 1);
        run_case(h.p, h.len, check_safetensors);
    }
    fb_free(&h);
}

static void test_engine(void **state)
{
    (void)state;
    fuzz_corpus("ejson_parse", ejson_seeds, LEN(ejson_seeds), check_ejson);
    fuzz_corpus("model_config_parse", model_seeds, LEN(model_seeds), check_model_config);
    fuzz_corpus("tokenizer_load_json", tokenizer_seeds, LEN(tokenizer_seeds), check_tokenizer);
    fuzz_corpus("st_file_open_mem", safetensors_seeds, LEN(safetensors_seeds), check_safetensors);
    generated_headers(fz_iters * 4);
}

/* ================================================================ regressions */

/* keys_record_parse: a repeated "models" or "model_limits" field kept the first array's count
 * with the second array, so keys_record_release read (and freed) past its end. */
static void test_regression_keys_repeated_fields(void **state)
{
    (void)state;
    const char *f[] = {"id", "tenant", "models", "model_limits", "models", "model_limits"};
    const char *v[] = {"key_1", "acme",
                       "a,b,c", "{\"a\":{\"rpm\":1},\"b\":{\"rpm\":2}}",
                       "x",     "{\"x\":{\"tpm\":3}}"};
    struct key_record *k = keys_record_parse(f, v, LEN(f));
    assert_non_null(k);
    assert_int_equal(k->n_models, 1);
    assert_string_equal(k->models[0], "x");
    assert_int_equal(k->n_model_limits, 1);
    assert_string_equal(k->model_limits[0].glob, "x");
    assert_int_equal(k->model_limits[0].l.tpm, 3);
    assert_true(keys_model_allowed(k, "x"));
    assert_false(keys_model_allowed(k, "a"));
    keys_record_release(k);
    /* The last one counts when it is empty too: no per-model limits at all. */
    const char *f2[] = {"id", "tenant", "model_limits", "model_limits"};
    const char *v2[] = {"key_1", "acme", "{\"a\":{\"rpm\":1}}", ""};
    k = keys_record_parse(f2, v2, LEN(f2));
    assert_non_null(k);
    assert_int_equal(k->n_model_limits, 0);
    assert_null(keys_model_limit(k, "a"));
    keys_record_release(k);
}

/* st_file_open_mem: overlaps were checked against the previous tensor by offset only, so an
 * empty tensor sorted in between hid an overlap with the one before it. */
static void test_regression_safetensors_overlap(void **state)
{
    (void)state;
    const char *h = "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]},"
                    "\"empty\":{\"dtype\":\"BF16\",\"shape\":[0],\"data_offsets\":[8,8]},"
                    "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}";
    size_t hl = strlen(h), total = 8 + hl + 16;
    char *buf = calloc(1, total);
    assert_non_null(buf);
    buf[0] = (char)hl;
    memcpy(buf + 8, h, hl);
    struct st_file *f = (struct st_file *)1;
    char err[256] = "";
    assert_int_equal(st_file_open_mem(buf, total, "mem", &f, err, sizeof err), -1);
    assert_null(f);
    assert_non_null(strstr(err, "tensor 'b' overlaps tensor 'a'"));
    free(buf);
}

/* The Anthropic adapter summed token counts as longs cast from any JSON number: 9e18 + 9e18
 * overflowed (UBSan) and 1e999 was an undefined cast. Out-of-range counts now read as 0. */
static void test_regression_anthropic_huge_usage(void **state)
{
    (void)state;
    const char *body = "{\"id\":\"m\",\"content\":[{\"type\":\"text\",\"text\":\"x\"}],"
                       "\"usage\":{\"input_tokens\":9e18,\"cache_read_input_tokens\":9e18,"
                       "\"cache_creation_input_tokens\":1e999,\"output_tokens\":9e18}}";
    struct adapter_call c = {.upstream_model = "m"};
    size_t n = 0;
    char *out = adapter_anthropic.finish(&c, 200, body, strlen(body), &n);
    assert_non_null(out);
    cJSON *j = cJSON_Parse(out);
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(j, "usage");
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens")->valuedouble, 0);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(u, "total_tokens")->valuedouble, 0);
    cJSON_Delete(j);
    free(out);

    const char *req = "{\"stream_options\":{\"include_usage\":true}}";
    struct adapter_call sc = {
        .upstream_model = "m", .stream = true, .body = req, .body_len = strlen(req)};
    void *st = adapter_anthropic.stream_new(&sc);
    assert_non_null(st);
    struct anth_feed f = {.st = st};
    const char *start = "{\"type\":\"message_start\",\"message\":{\"usage\":{\"input_tokens\":"
                        "9e18,\"cache_read_input_tokens\":9e18}}}";
    const char *delta = "{\"type\":\"message_delta\",\"delta\":{},\"usage\":{\"output_tokens\":"
                        "9e18}}";
    const char *stop = "{\"type\":\"message_stop\"}";
    int failure;
    assert_int_equal(
        adapter_anthropic.stream_event(st, "", 0, start, strlen(start), anth_emit, &f, &failure),
        0);
    assert_int_equal(
        adapter_anthropic.stream_event(st, "", 0, delta, strlen(delta), anth_emit, &f, &failure),
        0);
    assert_int_equal(
        adapter_anthropic.stream_event(st, "", 0, stop, strlen(stop), anth_emit, &f, &failure), 1);
    assert_int_equal(f.done, 1);
    adapter_anthropic.stream_free(st);
}

/* rcache_render_sse cast a stored answer's "index" and "created" to int / long long whatever
 * their size (undefined; clang's UBSan reports it). Out of range they now count as absent. */
static void test_regression_rcache_huge_numbers(void **state)
{
    (void)state;
    const char *body = "{\"id\":\"x\",\"created\":1e300,\"model\":\"m\",\"choices\":[{\"index\":"
                       "1e19,\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},"
                       "\"finish_reason\":\"stop\"}]}";
    struct evbuffer *eb = evbuffer_new();
    assert_non_null(eb);
    assert_int_equal(rcache_render_sse(body, strlen(body), RCACHE_CHAT, false, 64, eb), 0);
    size_t n;
    char *sse = evbuffer_take(eb, &n);
    assert_non_null(strstr(sse, "\"created\":0,"));
    assert_non_null(strstr(sse, "{\"index\":0,\"delta\":{\"content\":\"hi\"}"));
    assert_null(strstr(sse, "\"index\":-"));
    free(sse);
    evbuffer_free(eb);
}

/* tokenizer_decode of no ids computed NULL + 0 (undefined; clang's UBSan reports it). */
static void test_regression_tokenizer_decode_nothing(void **state)
{
    (void)state;
    const char *json = tokenizer_seeds[1];
    const char *sep = strchr(json, 0x1e);
    struct tokenizer *t = NULL;
    char err[256];
    assert_int_equal(tokenizer_load_json(json, (size_t)(sep - json), NULL, 0, &t, err, sizeof err),
                     0);
    char *out = NULL;
    size_t len = 1;
    assert_int_equal(tokenizer_decode(t, NULL, 0, &out, &len), 0);
    assert_string_equal(out, "");
    assert_int_equal(len, 0);
    free(out);
    tokenizer_free(t);
}

/* model_config_parse bounded an explicit head_dim to 1024 but not one derived from
 * hidden_size / heads, and the CPU backend's rope() keeps head_dim / 2 values on the stack. */
static void test_regression_model_derived_head_dim(void **state)
{
    (void)state;
    const char *cfg = "{\"model_type\":\"llama\",\"hidden_size\":4096,\"intermediate_size\":64,"
                      "\"num_hidden_layers\":1,\"num_attention_heads\":2,\"vocab_size\":10}";
    struct model_config c;
    char notes[64], err[256] = "";
    assert_int_equal(
        model_config_parse(cfg, strlen(cfg), NULL, 0, &c, notes, sizeof notes, err, sizeof err),
        -1);
    assert_string_equal(err, "config.json: head_dim 2048 must be even and at most 1024 "
                             "(hidden_size / heads)");
}

/* ================================================================ main */

int main(void)
{
    const char *iters = getenv("LLMGATE_FUZZ_ITERS"), *seed = getenv("LLMGATE_FUZZ_SEED");
    if (iters && *iters) fz_iters = (size_t)strtoull(iters, NULL, 0);
    if (seed && *seed) fz_base_seed = strtoull(seed, NULL, 0);
    fz_only = getenv("LLMGATE_FUZZ_TARGET");
    if (fz_only && !*fz_only) fz_only = NULL;
    init_deep();
#ifdef FUZZ_SANITIZER
    fuzz_watch_sanitizers();
#endif
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_openai_requests, fuzz_teardown),
        cmocka_unit_test_teardown(test_sse, fuzz_teardown),
        cmocka_unit_test_teardown(test_rcache, fuzz_teardown),
        cmocka_unit_test_teardown(test_jsonc, fuzz_teardown),
        cmocka_unit_test_teardown(test_config, fuzz_teardown),
        cmocka_unit_test_setup_teardown(test_policy, policy_setup, policy_teardown),
        cmocka_unit_test_teardown(test_keys, fuzz_teardown),
        cmocka_unit_test_teardown(test_anthropic, fuzz_teardown),
        cmocka_unit_test_teardown(test_engine, fuzz_teardown),
        cmocka_unit_test(test_regression_keys_repeated_fields),
        cmocka_unit_test(test_regression_safetensors_overlap),
        cmocka_unit_test(test_regression_anthropic_huge_usage),
        cmocka_unit_test(test_regression_rcache_huge_numbers),
        cmocka_unit_test(test_regression_tokenizer_decode_nothing),
        cmocka_unit_test(test_regression_model_derived_head_dim),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
