/* The response cache's data side: canonical keys, the entry format, stream
 * assembly, SSE replay and the Redis commands. Everything here is pure except
 * the last section, which only talks to cache/redis.c. */
#include "cache/rcache.h"

#include <event2/buffer.h>
#include <hiredis/hiredis.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "cache/redis.h"
#include "common/hash.h"
#include "common/jsonv.h"

#define KEY_TAG       "llmgate-rc-1" /* bump when the serialisation changes */
#define MAX_DEPTH     256
#define ENTRY_MAGIC   "LGRC"
#define MAX_CHOICES   128
#define MAX_TOOLCALLS 128

#define ADD_LIT(out, lit) evbuffer_add((out), (lit), sizeof(lit) - 1)

/* ---------------------------------------------------------------- buffer */

void rcache_buf_free(struct rcache_buf *b)
{
    if (b->heap) free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
    b->heap = false;
}

static void buf_add(struct rcache_buf *b, const void *p, size_t n)
{
    if (b->oom) return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *np = b->heap ? realloc(b->p, cap) : malloc(cap);
        if (!np) {
            b->oom = true;
            return;
        }
        if (!b->heap && b->len) memcpy(np, b->p, b->len);
        b->p = np;
        b->cap = cap;
        b->heap = true;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void buf_addc(struct rcache_buf *b, char c)
{
    buf_add(b, &c, 1);
}

static void buf_adds(struct rcache_buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

/* ---------------------------------------------------------------- canonical JSON */

/* A string with the minimal escapes: quote, backslash, and control characters
 * (short forms where JSON has them); every other byte as it is (UTF-8). */
static void canon_string(struct rcache_buf *b, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    buf_addc(b, '"');
    const char *run = s;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p >= 0x20 && *p != '"' && *p != '\\') continue;
        buf_add(b, run, (size_t)((const char *)p - run));
        char esc[7] = {'\\', 0};
        size_t n = 2;
        switch (*p) {
        case '"': esc[1] = '"'; break;
        case '\\': esc[1] = '\\'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[*p >> 4];
            esc[5] = hex[*p & 15];
            n = 6;
        }
        buf_add(b, esc, n);
        run = (const char *)p + 1;
    }
    buf_adds(b, run);
    buf_addc(b, '"');
}

/* A number in one form per value: integers without a fraction or exponent,
 * others as the shortest %g that reads back to the same double, -0 as 0. */
static void canon_number(struct rcache_buf *b, double d)
{
    char s[40];
    if (d == 0) d = 0; /* -0 */
    if (isnan(d)) {
        buf_adds(b, "nan");
        return;
    }
    if (isinf(d)) {
        buf_adds(b, d > 0 ? "inf" : "-inf");
        return;
    }
    if (d == floor(d) && fabs(d) < 1e15) { /* exact in a long long: no printf */
        long long v = (long long)d;
        unsigned long long u = v < 0 ? 0ull - (unsigned long long)v : (unsigned long long)v;
        char *e = s + sizeof s, *q = e;
        do {
            *--q = (char)('0' + u % 10);
            u /= 10;
        } while (u);
        if (v < 0) *--q = '-';
        buf_add(b, q, (size_t)(e - q));
        return;
    } else {
        for (int prec = 15; prec <= 17; prec++) {
            snprintf(s, sizeof s, "%.*g", prec, d);
            if (strtod(s, NULL) == d) break;
        }
    }
    buf_adds(b, s);
}

static int cmp_keys(const void *a, const void *b)
{
    const cJSON *x = *(const cJSON *const *)a, *y = *(const cJSON *const *)b;
    return strcmp(x->string, y->string); /* compares bytes as unsigned char */
}

/* Leaves out the top-level fields that cannot change an answer. */
static bool skipped_top_level(const char *k)
{
    return strcmp(k, "model") == 0 || strcmp(k, "stream") == 0 ||
           strcmp(k, "stream_options") == 0 || strcmp(k, "user") == 0;
}

static int canon_value(struct rcache_buf *b, const cJSON *v, int depth, bool top)
{
    if (depth > MAX_DEPTH) return -1;
    if (cJSON_IsString(v)) {
        canon_string(b, v->valuestring);
    } else if (cJSON_IsNumber(v)) {
        canon_number(b, v->valuedouble);
    } else if (cJSON_IsTrue(v)) {
        buf_adds(b, "true");
    } else if (cJSON_IsFalse(v)) {
        buf_adds(b, "false");
    } else if (cJSON_IsNull(v)) {
        buf_adds(b, "null");
    } else if (cJSON_IsArray(v)) {
        buf_addc(b, '[');
        int i = 0;
        for (const cJSON *c = v->child; c; c = c->next, i++) {
            if (i) buf_addc(b, ',');
            if (canon_value(b, c, depth + 1, false) != 0) return -1;
        }
        buf_addc(b, ']');
    } else if (cJSON_IsObject(v)) {
        size_t n = 0;
        for (const cJSON *c = v->child; c; c = c->next)
            n++;
        const cJSON *stack[16], **kids = n <= 16 ? stack : malloc(n * sizeof *kids);
        if (!kids) return -1;
        n = 0;
        for (const cJSON *c = v->child; c; c = c->next)
            if (c->string && !(top && skipped_top_level(c->string))) kids[n++] = c;
        qsort(kids, n, sizeof *kids, cmp_keys);
        buf_addc(b, '{');
        int rc = 0;
        for (size_t i = 0; i < n && rc == 0; i++) {
            if (i) buf_addc(b, ',');
            canon_string(b, kids[i]->string);
            buf_addc(b, ':');
            rc = canon_value(b, kids[i], depth + 1, false);
        }
        buf_addc(b, '}');
        if (kids != stack) free(kids);
        if (rc != 0) return -1;
    } else {
        return -1; /* raw or invalid items never come from the parser */
    }
    return 0;
}

static int cmp_headers(const void *a, const void *b)
{
    const struct rcache_header *x = *(const struct rcache_header *const *)a;
    const struct rcache_header *y = *(const struct rcache_header *const *)b;
    int c = strcasecmp(x->name, y->name);
    return c ? c : (x < y ? -1 : x > y); /* stable: repeated headers keep their order */
}

int rcache_key_build(const struct rcache_key_input *in, struct rcache_buf *canon,
                     uint8_t key[RCACHE_KEY_LEN])
{
    if (!cJSON_IsObject(in->body)) return -1;
    char stack[2048]; /* typical requests serialise without a malloc */
    struct rcache_buf local = {.p = stack, .cap = sizeof stack}, *b = canon ? canon : &local;
    size_t start = b->len;
    int rc = -1;
    const struct rcache_header **hs = NULL;
    if (in->n_headers && !(hs = malloc(in->n_headers * sizeof *hs))) goto out;
    for (size_t i = 0; i < in->n_headers; i++)
        hs[i] = &in->headers[i];
    if (in->n_headers) qsort(hs, in->n_headers, sizeof *hs, cmp_headers);

    buf_adds(b, "[\"" KEY_TAG "\",");
    canon_string(b, in->endpoint ? in->endpoint : "");
    buf_addc(b, ',');
    canon_string(b, in->provider ? in->provider : "");
    buf_addc(b, ',');
    canon_string(b, in->upstream_model ? in->upstream_model : "");
    buf_adds(b, ",[");
    for (size_t i = 0; i < in->n_headers; i++) {
        /* The whole name, lower-cased: names differing past any length differ in the key. */
        char small[128], *name = small;
        size_t n = strlen(hs[i]->name);
        if (n >= sizeof small && !(name = malloc(n + 1))) goto out;
        for (size_t j = 0; j <= n; j++) {
            char ch = hs[i]->name[j];
            name[j] = (ch >= 'A' && ch <= 'Z') ? (char)(ch + 32) : ch;
        }
        buf_adds(b, i ? ",[" : "[");
        canon_string(b, name);
        buf_addc(b, ',');
        canon_string(b, hs[i]->value ? hs[i]->value : "");
        buf_addc(b, ']');
        if (name != small) free(name);
    }
    buf_adds(b, "],");
    if (canon_value(b, in->body, 0, true) != 0) goto out;
    buf_addc(b, ']');
    if (b->oom) goto out;
    hash_sha256(b->p + start, b->len - start, key);
    rc = 0;
out:
    free(hs);
    rcache_buf_free(&local);
    return rc;
}

int rcache_redis_key(const char *prefix, const char *scope, const uint8_t key[RCACHE_KEY_LEN],
                     char *out, size_t cap, char *lock, size_t lock_cap)
{
    static const char hex[] = "0123456789abcdef";
    char h[2 * RCACHE_KEY_LEN + 1];
    for (int i = 0; i < RCACHE_KEY_LEN; i++) {
        h[2 * i] = hex[key[i] >> 4];
        h[2 * i + 1] = hex[key[i] & 15];
    }
    h[2 * RCACHE_KEY_LEN] = '\0';
    size_t lp = strlen(prefix), ls = strlen(scope), n = lp + 4 + ls + 2 + sizeof h - 1;
    if (n >= cap || (lock && n + 5 >= lock_cap)) return -1;
    char *o = out;
    memcpy(o, prefix, lp);
    o += lp;
    memcpy(o, "rc:{", 4);
    o += 4;
    memcpy(o, scope, ls);
    o += ls;
    memcpy(o, "}:", 2);
    o += 2;
    memcpy(o, h, sizeof h); /* with its NUL */
    if (lock) {
        memcpy(lock, out, n);
        memcpy(lock + n, ":lock", 6);
    }
    return (int)n;
}

/* ---------------------------------------------------------------- entries */

static void put_u32(unsigned char *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static void put_u64(unsigned char *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (unsigned char)(v >> (8 * i));
}

static uint32_t get_u32(const unsigned char *p)
{
    uint32_t v = 0;
    for (int i = 3; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

static uint64_t get_u64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | p[i];
    return v;
}

/* Layout (little-endian): magic[4] version[1] kind[1] reserved[2] created_ms[8]
 * prompt_tokens[4] completion_tokens[4] key[32] body_len[4] body. */
char *rcache_entry_encode(const struct rcache_entry *e, const uint8_t key[RCACHE_KEY_LEN],
                          size_t *len)
{
    if (e->body_len > UINT32_MAX) return NULL;
    unsigned char *p = malloc(RCACHE_HEADER_LEN + e->body_len);
    if (!p) return NULL;
    memcpy(p, ENTRY_MAGIC, 4);
    p[4] = RCACHE_ENTRY_VERSION;
    p[5] = (unsigned char)e->kind;
    p[6] = p[7] = 0;
    put_u64(p + 8, e->created_ms);
    put_u32(p + 16, (uint32_t)(e->prompt_tokens < 0 ? 0 : e->prompt_tokens));
    put_u32(p + 20, (uint32_t)(e->completion_tokens < 0 ? 0 : e->completion_tokens));
    memcpy(p + 24, key, RCACHE_KEY_LEN);
    put_u32(p + 56, (uint32_t)e->body_len);
    memcpy(p + RCACHE_HEADER_LEN, e->body, e->body_len);
    *len = RCACHE_HEADER_LEN + e->body_len;
    return (char *)p;
}

int rcache_entry_decode(const char *data, size_t len, const uint8_t key[RCACHE_KEY_LEN],
                        struct rcache_entry *out)
{
    const unsigned char *p = (const unsigned char *)data;
    if (len < RCACHE_HEADER_LEN || memcmp(p, ENTRY_MAGIC, 4) != 0) return -1;
    if (p[4] != RCACHE_ENTRY_VERSION || p[5] > RCACHE_COMPLETIONS) return -1;
    if (memcmp(p + 24, key, RCACHE_KEY_LEN) != 0) return -1;
    uint32_t blen = get_u32(p + 56);
    if ((size_t)blen != len - RCACHE_HEADER_LEN) return -1;
    const char *body = data + RCACHE_HEADER_LEN;
    if (jsonv_check(body, blen) != JSONV_OBJECT) return -1;
    out->kind = (enum rcache_kind)p[5];
    out->created_ms = get_u64(p + 8);
    out->prompt_tokens = (long)get_u32(p + 16);
    out->completion_tokens = (long)get_u32(p + 20);
    out->body = body;
    out->body_len = blen;
    return 0;
}

/* Only complete answers are cached: not content_filter, not a cut-off stream. */
static bool finish_name_ok(const char *s)
{
    return strcmp(s, "stop") == 0 || strcmp(s, "length") == 0 || strcmp(s, "tool_calls") == 0;
}

static bool finish_ok(const cJSON *fr)
{
    return cJSON_IsString(fr) && finish_name_ok(fr->valuestring);
}

static long usage_field(const cJSON *usage, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(usage, name);
    return cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble < 4e9 ? (long)v->valuedouble
                                                                            : 0;
}

/* Whether every member of o not named in known is null or an empty array: nothing
 * a streamed replay (render_choice) would leave out. */
static bool only_known(const cJSON *o, const char *const *known)
{
    for (const cJSON *f = o->child; f; f = f->next) {
        bool named = false;
        for (const char *const *k = known; *k && !named; k++)
            named = f->string && strcmp(f->string, *k) == 0;
        if (!named && !cJSON_IsNull(f) && !(cJSON_IsArray(f) && !f->child)) return false;
    }
    return true;
}

/* A choice a streaming client can be replayed exactly: the answer is one key for
 * both forms, so a field the SSE rendering drops (logprobs, audio, a provider's
 * reasoning) makes the whole answer uncacheable. */
static bool choice_replayable(const cJSON *c)
{
    static const char *const choice_fields[] = {"index", "message", "text", "finish_reason", NULL};
    static const char *const message_fields[] = {"role", "content", "refusal", "tool_calls", NULL};
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(c, "message");
    return only_known(c, choice_fields) &&
           (!m || (cJSON_IsObject(m) && only_known(m, message_fields)));
}

bool rcache_answer_cacheable(const cJSON *answer, long *prompt_tokens, long *completion_tokens)
{
    *prompt_tokens = *completion_tokens = 0;
    if (!cJSON_IsObject(answer) || cJSON_GetObjectItemCaseSensitive(answer, "error")) return false;
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(answer, "choices");
    if (!cJSON_IsArray(choices) || !choices->child) return false;
    for (const cJSON *c = choices->child; c; c = c->next)
        if (!cJSON_IsObject(c) ||
            !finish_ok(cJSON_GetObjectItemCaseSensitive(c, "finish_reason")) ||
            !choice_replayable(c))
            return false;
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(answer, "usage");
    *prompt_tokens = usage_field(usage, "prompt_tokens");
    *completion_tokens = usage_field(usage, "completion_tokens");
    return true;
}

/* ---------------------------------------------------------------- stream assembly */

struct asm_tool {
    bool seen;
    char *id, *type;
    struct rcache_buf name, args;
};

struct asm_choice {
    bool seen, have_content, have_refusal;
    char *role, *finish;
    struct rcache_buf content, refusal; /* chat content / completions text */
    struct asm_tool *tools;
    int n_tools;
};

struct rcache_asm {
    enum rcache_kind kind;
    size_t max_bytes, bytes;
    bool poisoned;
    char *id, *model, *fingerprint;
    double created;
    bool have_created;
    cJSON *usage;
    struct asm_choice *choices;
    int n_choices;
};

struct rcache_asm *rcache_asm_new(enum rcache_kind kind, size_t max_bytes)
{
    struct rcache_asm *a = calloc(1, sizeof *a);
    if (!a) return NULL;
    a->kind = kind;
    a->max_bytes = max_bytes;
    return a;
}

void rcache_asm_free(struct rcache_asm *a)
{
    if (!a) return;
    for (int i = 0; i < a->n_choices; i++) {
        struct asm_choice *c = &a->choices[i];
        free(c->role);
        free(c->finish);
        rcache_buf_free(&c->content);
        rcache_buf_free(&c->refusal);
        for (int j = 0; j < c->n_tools; j++) {
            free(c->tools[j].id);
            free(c->tools[j].type);
            rcache_buf_free(&c->tools[j].name);
            rcache_buf_free(&c->tools[j].args);
        }
        free(c->tools);
    }
    free(a->choices);
    free(a->id);
    free(a->model);
    free(a->fingerprint);
    cJSON_Delete(a->usage);
    free(a);
}

/* Keeps the first value of a string field seen in any chunk. */
static void keep_string(struct rcache_asm *a, char **dst, const cJSON *v)
{
    if (*dst || !cJSON_IsString(v)) return;
    if (!(*dst = strdup(v->valuestring))) a->poisoned = true;
}

static void append_text(struct rcache_asm *a, struct rcache_buf *b, const cJSON *v)
{
    size_t n = strlen(v->valuestring);
    a->bytes += n;
    if (a->bytes > a->max_bytes) {
        a->poisoned = true;
        return;
    }
    buf_add(b, v->valuestring, n);
    if (b->oom) a->poisoned = true;
}

/* Grows an array of n elements of size sz to hold index idx (zeroed). */
static void *grow(void *arr, int *n, int idx, size_t sz)
{
    if (idx < *n) return arr;
    char *p = realloc(arr, (size_t)(idx + 1) * sz);
    if (!p) return NULL;
    memset(p + (size_t)*n * sz, 0, (size_t)(idx + 1 - *n) * sz);
    *n = idx + 1;
    return p;
}

static void feed_tool(struct rcache_asm *a, struct asm_choice *c, const cJSON *tc)
{
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(tc, "index");
    if (!cJSON_IsObject(tc) || !cJSON_IsNumber(idx) || idx->valuedouble < 0 ||
        idx->valuedouble >= MAX_TOOLCALLS || idx->valuedouble != floor(idx->valuedouble)) {
        a->poisoned = true;
        return;
    }
    int i = (int)idx->valuedouble;
    struct asm_tool *tools = grow(c->tools, &c->n_tools, i, sizeof *tools);
    if (!tools) {
        a->poisoned = true;
        return;
    }
    c->tools = tools;
    struct asm_tool *t = &tools[i];
    t->seen = true;
    for (const cJSON *f = tc->child; f; f = f->next) {
        if (strcmp(f->string, "index") == 0) continue;
        if (strcmp(f->string, "id") == 0) {
            keep_string(a, &t->id, f);
        } else if (strcmp(f->string, "type") == 0) {
            keep_string(a, &t->type, f);
        } else if (strcmp(f->string, "function") == 0 && cJSON_IsObject(f)) {
            for (const cJSON *g = f->child; g; g = g->next) {
                if (strcmp(g->string, "name") == 0 && cJSON_IsString(g))
                    append_text(a, &t->name, g);
                else if (strcmp(g->string, "arguments") == 0 && cJSON_IsString(g))
                    append_text(a, &t->args, g);
                else if (!cJSON_IsNull(g))
                    a->poisoned = true;
            }
        } else if (!cJSON_IsNull(f)) {
            a->poisoned = true; /* something a replay would not reproduce */
        }
    }
}

static void feed_choice(struct rcache_asm *a, const cJSON *ch)
{
    const cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
    if (!cJSON_IsObject(ch) || !cJSON_IsNumber(idx) || idx->valuedouble < 0 ||
        idx->valuedouble >= MAX_CHOICES || idx->valuedouble != floor(idx->valuedouble)) {
        a->poisoned = true;
        return;
    }
    int i = (int)idx->valuedouble;
    struct asm_choice *cs = grow(a->choices, &a->n_choices, i, sizeof *cs);
    if (!cs) {
        a->poisoned = true;
        return;
    }
    a->choices = cs;
    struct asm_choice *c = &cs[i];
    c->seen = true;
    for (const cJSON *f = ch->child; f && !a->poisoned; f = f->next) {
        const char *k = f->string;
        if (strcmp(k, "index") == 0) continue;
        if (strcmp(k, "finish_reason") == 0) {
            if (cJSON_IsString(f)) {
                free(c->finish);
                if (!(c->finish = strdup(f->valuestring))) a->poisoned = true;
            }
        } else if (strcmp(k, "logprobs") == 0) {
            if (!cJSON_IsNull(f)) a->poisoned = true; /* not reproduced by a replay */
        } else if (a->kind == RCACHE_COMPLETIONS && strcmp(k, "text") == 0 && cJSON_IsString(f)) {
            c->have_content = true;
            append_text(a, &c->content, f);
        } else if (a->kind == RCACHE_CHAT && strcmp(k, "delta") == 0 && cJSON_IsObject(f)) {
            for (const cJSON *d = f->child; d && !a->poisoned; d = d->next) {
                if (strcmp(d->string, "role") == 0) {
                    keep_string(a, &c->role, d);
                } else if (strcmp(d->string, "content") == 0 && cJSON_IsString(d)) {
                    c->have_content = true;
                    append_text(a, &c->content, d);
                } else if (strcmp(d->string, "refusal") == 0 && cJSON_IsString(d)) {
                    c->have_refusal = true;
                    append_text(a, &c->refusal, d);
                } else if (strcmp(d->string, "tool_calls") == 0 && cJSON_IsArray(d)) {
                    for (const cJSON *tc = d->child; tc; tc = tc->next)
                        feed_tool(a, c, tc);
                } else if (!cJSON_IsNull(d)) {
                    a->poisoned = true;
                }
            }
        } else if (!cJSON_IsNull(f)) {
            a->poisoned = true;
        }
    }
}

void rcache_asm_feed(struct rcache_asm *a, const cJSON *chunk)
{
    if (!a || a->poisoned) return;
    if (!cJSON_IsObject(chunk) || cJSON_GetObjectItemCaseSensitive(chunk, "error")) {
        a->poisoned = true;
        return;
    }
    keep_string(a, &a->id, cJSON_GetObjectItemCaseSensitive(chunk, "id"));
    keep_string(a, &a->model, cJSON_GetObjectItemCaseSensitive(chunk, "model"));
    keep_string(a, &a->fingerprint, cJSON_GetObjectItemCaseSensitive(chunk, "system_fingerprint"));
    const cJSON *created = cJSON_GetObjectItemCaseSensitive(chunk, "created");
    if (!a->have_created && cJSON_IsNumber(created)) {
        a->created = created->valuedouble;
        a->have_created = true;
    }
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(chunk, "usage");
    if (cJSON_IsObject(usage)) {
        cJSON_Delete(a->usage);
        if (!(a->usage = cJSON_Duplicate(usage, 1))) a->poisoned = true;
    }
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(chunk, "choices");
    if (choices && !cJSON_IsArray(choices)) a->poisoned = true;
    for (const cJSON *ch = choices ? choices->child : NULL; ch && !a->poisoned; ch = ch->next)
        feed_choice(a, ch);
}

static cJSON *buf_string(const struct rcache_buf *b)
{
    return cJSON_CreateString(b->p ? b->p : "");
}

char *rcache_asm_finish(struct rcache_asm *a, size_t *len, long *prompt_tokens,
                        long *completion_tokens)
{
    if (!a || a->poisoned || a->n_choices == 0) return NULL;
    for (int i = 0; i < a->n_choices; i++) {
        const struct asm_choice *c = &a->choices[i];
        if (!c->seen || !c->finish) return NULL;
        if (!finish_name_ok(c->finish)) return NULL;
        for (int j = 0; j < c->n_tools; j++)
            if (!c->tools[j].seen) return NULL;
    }
    /* Every part or nothing: under memory pressure a partial answer must not be stored. */
    bool chat = a->kind == RCACHE_CHAT, ok = true;
    cJSON *o = cJSON_CreateObject(), *choices = NULL;
    if (!o) return NULL;
    ok &= cJSON_AddStringToObject(o, "id", a->id ? a->id : "") != NULL;
    ok &=
        cJSON_AddStringToObject(o, "object", chat ? "chat.completion" : "text_completion") != NULL;
    ok &= cJSON_AddNumberToObject(o, "created", a->have_created ? a->created : 0) != NULL;
    ok &= cJSON_AddStringToObject(o, "model", a->model ? a->model : "") != NULL;
    ok &= (choices = cJSON_AddArrayToObject(o, "choices")) != NULL;
    for (int i = 0; ok && i < a->n_choices; i++) {
        const struct asm_choice *c = &a->choices[i];
        cJSON *ch = cJSON_CreateObject();
        if (!(ok = cJSON_AddItemToArray(choices, ch))) {
            cJSON_Delete(ch);
            break;
        }
        ok &= cJSON_AddNumberToObject(ch, "index", i) != NULL;
        if (chat) {
            cJSON *m = cJSON_AddObjectToObject(ch, "message");
            if (!(ok &= m != NULL)) break;
            ok &= cJSON_AddStringToObject(m, "role", c->role ? c->role : "assistant") != NULL;
            ok &= c->have_content ? cJSON_AddItemToObject(m, "content", buf_string(&c->content))
                                  : cJSON_AddNullToObject(m, "content") != NULL;
            ok &= c->have_refusal ? cJSON_AddItemToObject(m, "refusal", buf_string(&c->refusal))
                                  : cJSON_AddNullToObject(m, "refusal") != NULL;
            cJSON *tcs = c->n_tools ? cJSON_AddArrayToObject(m, "tool_calls") : NULL;
            ok &= !c->n_tools || tcs;
            for (int j = 0; ok && j < c->n_tools; j++) {
                const struct asm_tool *t = &c->tools[j];
                cJSON *tc = cJSON_CreateObject(), *fn;
                if (!(ok = cJSON_AddItemToArray(tcs, tc))) {
                    cJSON_Delete(tc);
                    break;
                }
                ok &= cJSON_AddStringToObject(tc, "id", t->id ? t->id : "") != NULL;
                ok &= cJSON_AddStringToObject(tc, "type", t->type ? t->type : "function") != NULL;
                if (!(ok &= (fn = cJSON_AddObjectToObject(tc, "function")) != NULL)) break;
                ok &= cJSON_AddItemToObject(fn, "name", buf_string(&t->name));
                ok &= cJSON_AddItemToObject(fn, "arguments", buf_string(&t->args));
            }
        } else {
            ok &= cJSON_AddItemToObject(ch, "text", buf_string(&c->content));
        }
        ok &= cJSON_AddNullToObject(ch, "logprobs") != NULL;
        ok &= cJSON_AddStringToObject(ch, "finish_reason", c->finish) != NULL;
    }
    if (ok && a->usage) ok = cJSON_AddItemReferenceToObject(o, "usage", a->usage);
    if (ok && a->fingerprint)
        ok = cJSON_AddStringToObject(o, "system_fingerprint", a->fingerprint) != NULL;
    if (!ok) {
        cJSON_Delete(o);
        return NULL;
    }
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (!s) return NULL;
    *len = strlen(s);
    *prompt_tokens = usage_field(a->usage, "prompt_tokens");
    *completion_tokens = usage_field(a->usage, "completion_tokens");
    return s;
}

/* ---------------------------------------------------------------- SSE replay */

/* JSON string for the wire (same escapes as the canonical form). */
static void ev_string(struct evbuffer *out, const char *s, size_t n)
{
    static const char hex[] = "0123456789abcdef";
    ADD_LIT(out, "\"");
    const char *run = s, *end = s + n;
    for (const char *p = s; p < end; p++) {
        unsigned char c = (unsigned char)*p;
        if (c >= 0x20 && c != '"' && c != '\\') continue;
        evbuffer_add(out, run, (size_t)(p - run));
        char esc[6] = {'\\', (char)c, 0};
        size_t k = 2;
        switch (c) {
        case '"':
        case '\\': break;
        case '\n': esc[1] = 'n'; break;
        case '\r': esc[1] = 'r'; break;
        case '\t': esc[1] = 't'; break;
        case '\b': esc[1] = 'b'; break;
        case '\f': esc[1] = 'f'; break;
        default:
            memcpy(esc + 1, "u00", 3);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            k = 6;
        }
        evbuffer_add(out, esc, k);
        run = p + 1;
    }
    evbuffer_add(out, run, (size_t)(end - run));
    ADD_LIT(out, "\"");
}

static void ev_cstring(struct evbuffer *out, const char *s)
{
    ev_string(out, s, strlen(s));
}

/* The common head of every chunk, up to and including "choices":[ */
struct sse_head {
    const char *id, *model, *fingerprint;
    long long created;
    bool chat;
};

static void chunk_open(struct evbuffer *out, const struct sse_head *h)
{
    ADD_LIT(out, "data: {\"id\":");
    ev_cstring(out, h->id);
    evbuffer_add_printf(out, ",\"object\":\"%s\",\"created\":%lld,\"model\":",
                        h->chat ? "chat.completion.chunk" : "text_completion", h->created);
    ev_cstring(out, h->model);
    if (h->fingerprint) {
        ADD_LIT(out, ",\"system_fingerprint\":");
        ev_cstring(out, h->fingerprint);
    }
    ADD_LIT(out, ",\"choices\":[");
}

static void chunk_close(struct evbuffer *out)
{
    ADD_LIT(out, "]}\n\n");
}

/* Length of the longest prefix of s[0..n) at most max bytes that does not split
 * a UTF-8 sequence (at least one whole sequence). */
static size_t utf8_piece(const char *s, size_t n, size_t max)
{
    if (n <= max) return n;
    size_t k = max;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
        k--;
    if (k == 0) { /* one sequence longer than max: take it whole */
        k = 1;
        while (k < n && ((unsigned char)s[k] & 0xC0) == 0x80)
            k++;
    }
    return k;
}

/* Pieces of text as delta chunks: field "content"/"refusal" (chat) or "text". */
static void text_chunks(struct evbuffer *out, const struct sse_head *h, int index,
                        const char *field, const char *s, size_t piece)
{
    size_t n = strlen(s);
    while (n > 0) {
        size_t k = utf8_piece(s, n, piece);
        chunk_open(out, h);
        if (h->chat) {
            evbuffer_add_printf(out, "{\"index\":%d,\"delta\":{\"%s\":", index, field);
            ev_string(out, s, k);
            ADD_LIT(out, "},\"logprobs\":null,\"finish_reason\":null}");
        } else {
            ADD_LIT(out, "{\"text\":");
            ev_string(out, s, k);
            evbuffer_add_printf(out, ",\"index\":%d,\"logprobs\":null,\"finish_reason\":null}",
                                index);
        }
        chunk_close(out);
        s += k;
        n -= k;
    }
}

static const char *str_or(const cJSON *v, const char *def)
{
    return cJSON_IsString(v) ? v->valuestring : def;
}

/* v as an integer when it is a number within [lo, hi], else def: the stored answer is the
 * upstream's, and casting a double out of the target's range is undefined. */
static long long int_or(const cJSON *v, double lo, double hi, long long def)
{
    return cJSON_IsNumber(v) && v->valuedouble >= lo && v->valuedouble <= hi
               ? (long long)v->valuedouble
               : def;
}

static int render_choice(struct evbuffer *out, const struct sse_head *h, const cJSON *ch, int i,
                         size_t piece)
{
    const cJSON *fr = cJSON_GetObjectItemCaseSensitive(ch, "finish_reason");
    if (!cJSON_IsObject(ch) || !cJSON_IsString(fr)) return -1;
    if (h->chat) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(ch, "message");
        if (!cJSON_IsObject(m)) return -1;
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        const cJSON *refusal = cJSON_GetObjectItemCaseSensitive(m, "refusal");
        const cJSON *tools = cJSON_GetObjectItemCaseSensitive(m, "tool_calls");
        if ((content && !cJSON_IsString(content) && !cJSON_IsNull(content)) ||
            (tools && !cJSON_IsArray(tools)))
            return -1;
        chunk_open(out, h);
        evbuffer_add_printf(out, "{\"index\":%d,\"delta\":{\"role\":", i);
        ev_cstring(out, str_or(cJSON_GetObjectItemCaseSensitive(m, "role"), "assistant"));
        evbuffer_add_printf(out, ",\"content\":%s},\"logprobs\":null,\"finish_reason\":null}",
                            cJSON_IsString(content) ? "\"\"" : "null");
        chunk_close(out);
        if (cJSON_IsString(content)) text_chunks(out, h, i, "content", content->valuestring, piece);
        if (cJSON_IsString(refusal)) text_chunks(out, h, i, "refusal", refusal->valuestring, piece);
        int j = 0;
        for (const cJSON *tc = tools ? tools->child : NULL; tc; tc = tc->next, j++) {
            const cJSON *fn = cJSON_GetObjectItemCaseSensitive(tc, "function");
            if (!cJSON_IsObject(fn)) return -1;
            chunk_open(out, h);
            evbuffer_add_printf(
                out, "{\"index\":%d,\"delta\":{\"tool_calls\":[{\"index\":%d,\"id\":", i, j);
            ev_cstring(out, str_or(cJSON_GetObjectItemCaseSensitive(tc, "id"), ""));
            ADD_LIT(out, ",\"type\":");
            ev_cstring(out, str_or(cJSON_GetObjectItemCaseSensitive(tc, "type"), "function"));
            ADD_LIT(out, ",\"function\":{\"name\":");
            ev_cstring(out, str_or(cJSON_GetObjectItemCaseSensitive(fn, "name"), ""));
            ADD_LIT(out, ",\"arguments\":");
            ev_cstring(out, str_or(cJSON_GetObjectItemCaseSensitive(fn, "arguments"), ""));
            ADD_LIT(out, "}}]},\"logprobs\":null,\"finish_reason\":null}");
            chunk_close(out);
        }
        chunk_open(out, h);
        evbuffer_add_printf(out,
                            "{\"index\":%d,\"delta\":{},\"logprobs\":null,\"finish_reason\":", i);
    } else {
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(ch, "text");
        if (!cJSON_IsString(text)) return -1;
        text_chunks(out, h, i, "text", text->valuestring, piece);
        chunk_open(out, h);
        evbuffer_add_printf(out,
                            "{\"text\":\"\",\"index\":%d,\"logprobs\":null,\"finish_reason\":", i);
    }
    ev_cstring(out, fr->valuestring);
    ADD_LIT(out, "}");
    chunk_close(out);
    return 0;
}

int rcache_render_sse(const char *body, size_t len, enum rcache_kind kind, bool include_usage,
                      size_t piece_bytes, struct evbuffer *out)
{
    return rcache_render_sse_parts(body, len, kind, include_usage, piece_bytes, out, NULL, NULL);
}

int rcache_render_sse_parts(const char *body, size_t len, enum rcache_kind kind, bool include_usage,
                            size_t piece_bytes, struct evbuffer *out, size_t *usage_off,
                            size_t *done_off)
{
    cJSON *doc = cJSON_ParseWithLength(body, len);
    const cJSON *choices = cJSON_GetObjectItemCaseSensitive(doc, "choices");
    const cJSON *created = cJSON_GetObjectItemCaseSensitive(doc, "created");
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(doc, "usage");
    struct evbuffer *tmp = evbuffer_new();
    int rc = -1;
    if (!tmp || !cJSON_IsObject(doc) || !cJSON_IsArray(choices)) goto out;
    struct sse_head h = {
        .id = str_or(cJSON_GetObjectItemCaseSensitive(doc, "id"), ""),
        .model = str_or(cJSON_GetObjectItemCaseSensitive(doc, "model"), ""),
        .fingerprint =
            cJSON_IsString(cJSON_GetObjectItemCaseSensitive(doc, "system_fingerprint"))
                ? cJSON_GetObjectItemCaseSensitive(doc, "system_fingerprint")->valuestring
                : NULL,
        .created = int_or(created, -9e18, 9e18, 0),
        .chat = kind == RCACHE_CHAT,
    };
    if (piece_bytes == 0) piece_bytes = 64;
    int i = 0;
    for (const cJSON *ch = choices->child; ch; ch = ch->next, i++) {
        const cJSON *idx = cJSON_GetObjectItemCaseSensitive(ch, "index");
        if (render_choice(tmp, &h, ch, (int)int_or(idx, INT_MIN, INT_MAX, i), piece_bytes) != 0)
            goto out;
    }
    if (usage_off) *usage_off = evbuffer_get_length(tmp);
    if (include_usage && cJSON_IsObject(usage)) {
        char *u = cJSON_PrintUnformatted(usage);
        if (!u) goto out;
        chunk_open(tmp, &h);
        ADD_LIT(tmp, "],\"usage\":");
        evbuffer_add(tmp, u, strlen(u));
        ADD_LIT(tmp, "}\n\n");
        free(u);
    }
    if (done_off) *done_off = evbuffer_get_length(tmp);
    ADD_LIT(tmp, "data: [DONE]\n\n");
    evbuffer_add_buffer(out, tmp);
    rc = 0;
out:
    if (tmp) evbuffer_free(tmp);
    cJSON_Delete(doc);
    return rc;
}

/* ---------------------------------------------------------------- Redis */

static struct redis_script claim_script = {
    .src = "local v = redis.call('GET', KEYS[1])\n"
           "if v then return {1, v} end\n"
           "if redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then return {2} end\n"
           "return {0}\n",
};
static struct redis_script store_script = {
    .src = "redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])\n"
           "if KEYS[2] and redis.call('GET', KEYS[2]) == ARGV[3] then redis.call('DEL', KEYS[2]) "
           "end\n"
           "return 1\n",
};
static struct redis_script release_script = {
    .src = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end\n"
           "return 0\n",
};
static pthread_once_t scripts_once = PTHREAD_ONCE_INIT;

static void scripts_init(void)
{
    redis_script_init(&claim_script);
    redis_script_init(&store_script);
    redis_script_init(&release_script);
}

struct call {
    rcache_cb cb;
    void *ud;
};

static struct call *call_new(rcache_cb cb, void *ud)
{
    struct call *c = malloc(sizeof *c);
    if (c) {
        c->cb = cb;
        c->ud = ud;
    }
    return c;
}

/* GET: a bulk string is a hit, nil a miss. */
static void on_get(const struct redisReply *rep, void *ud)
{
    struct call *c = ud;
    if (!rep)
        c->cb(RCACHE_DOWN, NULL, 0, c->ud);
    else if (rep->type == REDIS_REPLY_STRING)
        c->cb(RCACHE_HIT, rep->str, rep->len, c->ud);
    else if (rep->type == REDIS_REPLY_NIL)
        c->cb(RCACHE_MISS, NULL, 0, c->ud);
    else if (rep->type == REDIS_REPLY_ERROR && rep->len >= 9 &&
             memcmp(rep->str, "WRONGTYPE", 9) == 0)
        c->cb(RCACHE_BADTYPE, NULL, 0, c->ud);
    else
        c->cb(RCACHE_ERROR, NULL, 0, c->ud);
    free(c);
}

/* The claim script: {1, value} | {2} | {0}. */
static void on_claim(const struct redisReply *rep, void *ud)
{
    struct call *c = ud;
    if (!rep) {
        c->cb(RCACHE_DOWN, NULL, 0, c->ud);
    } else if (rep->type != REDIS_REPLY_ARRAY || rep->elements < 1 ||
               rep->element[0]->type != REDIS_REPLY_INTEGER) {
        c->cb(RCACHE_ERROR, NULL, 0, c->ud);
    } else if (rep->element[0]->integer == 1 && rep->elements == 2 &&
               rep->element[1]->type == REDIS_REPLY_STRING) {
        c->cb(RCACHE_HIT, rep->element[1]->str, rep->element[1]->len, c->ud);
    } else {
        c->cb(rep->element[0]->integer == 2 ? RCACHE_CLAIMED : RCACHE_MISS, NULL, 0, c->ud);
    }
    free(c);
}

static void on_done(const struct redisReply *rep, void *ud)
{
    struct call *c = ud;
    if (c->cb)
        c->cb(!rep                             ? RCACHE_DOWN
              : rep->type == REDIS_REPLY_ERROR ? RCACHE_ERROR
                                               : RCACHE_MISS,
              NULL, 0, c->ud);
    free(c);
}

int rcache_get(struct redis *rd, const char *key, rcache_cb cb, void *ud)
{
    struct call *c = call_new(cb, ud);
    if (!c) return -1;
    const char *argv[2] = {"GET", key};
    size_t lens[2] = {3, strlen(key)};
    if (redis_command_argv(rd, on_get, c, 2, argv, lens) != 0) {
        free(c);
        return -1;
    }
    redis_flush(rd); /* a lookup is on the critical path */
    return 0;
}

int rcache_claim(struct redis *rd, const char *key, const char *lock, const char *token,
                 unsigned lock_ms, rcache_cb cb, void *ud)
{
    pthread_once(&scripts_once, scripts_init);
    struct call *c = call_new(cb, ud);
    if (!c) return -1;
    char ms[16];
    snprintf(ms, sizeof ms, "%u", lock_ms ? lock_ms : 1);
    const char *keys[2] = {key, lock}, *args[2] = {token, ms};
    size_t kl[2] = {strlen(key), strlen(lock)}, al[2] = {strlen(token), strlen(ms)};
    if (redis_eval(rd, &claim_script, on_claim, c, 2, keys, kl, 2, args, al) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

int rcache_store(struct redis *rd, const char *key, const char *lock, const char *token,
                 const char *entry, size_t len, unsigned ttl_s, rcache_cb cb, void *ud)
{
    pthread_once(&scripts_once, scripts_init);
    struct call *c = call_new(cb, ud);
    if (!c) return -1;
    char ttl[16];
    snprintf(ttl, sizeof ttl, "%u", ttl_s ? ttl_s : 1);
    const char *keys[2] = {key, lock}, *args[3] = {entry, ttl, token ? token : ""};
    size_t kl[2] = {strlen(key), lock ? strlen(lock) : 0};
    size_t al[3] = {len, strlen(ttl), token ? strlen(token) : 0};
    if (redis_eval(rd, &store_script, on_done, c, lock ? 2 : 1, keys, kl, 3, args, al) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

int rcache_release(struct redis *rd, const char *lock, const char *token)
{
    pthread_once(&scripts_once, scripts_init);
    struct call *c = call_new(NULL, NULL);
    if (!c) return -1;
    const char *keys[1] = {lock}, *args[1] = {token};
    size_t kl[1] = {strlen(lock)}, al[1] = {strlen(token)};
    if (redis_eval(rd, &release_script, on_done, c, 1, keys, kl, 1, args, al) != 0) {
        free(c);
        return -1;
    }
    return 0;
}

int rcache_delete(struct redis *rd, const char *key)
{
    struct call *c = call_new(NULL, NULL);
    if (!c) return -1;
    const char *argv[2] = {"DEL", key};
    size_t lens[2] = {3, strlen(key)};
    if (redis_command_argv(rd, on_done, c, 2, argv, lens) != 0) {
        free(c);
        return -1;
    }
    return 0;
}
