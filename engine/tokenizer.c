/* Tokenizer: HF tokenizer.json loading, encoding (added tokens -> normalizer -> pre-tokenizer
 * -> BPE) and decoding, written to give exactly the ids and text HF `tokenizers` gives.
 * The pre-tokenizer regexes are hand-written matchers that follow Oniguruma's leftmost,
 * ordered-alternation semantics for the three patterns we recognise. */
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "engine/json.h"
#include "engine/unicode.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

const char tok_pattern_gpt2[] =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
const char tok_pattern_llama3[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
const char tok_pattern_qwen2[] =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

/* ---------------------------------------------------------------- data structures */

struct tok_token {
    uint32_t text_off, text_len;   /* vocabulary string (pool) */
    uint32_t key_off, key_len;     /* model-space key: raw bytes for byte-level, else text */
    uint32_t piece_off, piece_len; /* bytes the decoder turns it into on its own */
    int16_t byte;                  /* value of a <0xNN> byte-fallback token, else -1 */
    uint8_t present, special, in_model;
};

struct tok_added {
    int32_t id;
    uint32_t off, len; /* string matched in the text (pool): content, normalized if flagged */
    uint8_t special, lstrip, rstrip, single_word, normalized, first;
};

/* open addressing, id + 1 in each slot, 0 empty */
struct strmap {
    int32_t *slots;
    size_t mask;
    int by_key; /* 0: keyed by text, 1: by model-space key */
};

struct mergemap {
    uint64_t *keys; /* (left << 32 | right) + 1, 0 empty */
    uint32_t *rank;
    int32_t *new_id;
    size_t mask;
};

enum norm_kind { NORM_NFC, NORM_PREPEND, NORM_REPLACE };
struct norm_op {
    enum norm_kind kind;
    uint32_t a_off, a_len, b_off, b_len; /* prepend text / replace from,to (pool) */
};

enum dec_kind { DEC_NONE, DEC_BYTELEVEL, DEC_SEQ, DEC_METASPACE };

struct tokenizer {
    struct tok_token *tok;
    int32_t n_ids;
    char *pool;
    size_t pool_len, pool_cap;
    struct strmap text_map, key_map;
    struct mergemap merges;
    struct tok_added *added; /* sorted by first byte, longest first */
    size_t n_added;
    int norm_special;        /* some special added token is matched after normalization */
    size_t added_first[257]; /* added[added_first[c]..added_first[c + 1]) start with byte c */

    struct norm_op norm[8];
    size_t n_norm;

    /* pre-tokenizer */
    int byte_level, add_prefix_space, digits; /* digits: 0 off, 1 individual, 2 runs */
    enum tok_split split;
    int metaspace, ms_prepend, ms_split; /* ms_prepend: 0 never, 1 always, 2 first */
    char ms_repl[8];
    size_t ms_repl_len;

    /* model */
    int ignore_merges, byte_fallback, fuse_unk;
    int32_t unk_id;
    int32_t byte_id[256];  /* byte-level: id of each byte's token */
    int32_t byte_tok[256]; /* byte fallback: id of <0xNN> */

    /* decoder */
    enum dec_kind dec;
    int dec_byte_fallback, dec_strip;

    /* tokenizer_config.json */
    int32_t bos, eos;
    int add_bos;
    char *chat_template, *bos_text, *eos_text;
    size_t max_piece;
};

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static uint64_t hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ULL;
    }
    return h ^ (h >> 29);
}

static uint64_t hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    return x ^ (x >> 33);
}

static size_t pow2_at_least(size_t n)
{
    size_t c = 16;
    while (c < n)
        c <<= 1;
    return c;
}

static void map_key(const struct tokenizer *t, const struct strmap *m, int32_t id, const char **s,
                    size_t *n)
{
    const struct tok_token *k = &t->tok[id];
    *s = t->pool + (m->by_key ? k->key_off : k->text_off);
    *n = m->by_key ? k->key_len : k->text_len;
}

static int strmap_init(struct strmap *m, size_t count, int by_key)
{
    size_t cap = pow2_at_least(count * 2 + 1);
    m->slots = calloc(cap, sizeof *m->slots);
    m->mask = cap - 1;
    m->by_key = by_key;
    return m->slots ? 0 : -1;
}

static int32_t strmap_find(const struct tokenizer *t, const struct strmap *m, const char *s,
                           size_t n)
{
    size_t i = hash_bytes(s, n) & m->mask;
    for (;;) {
        int32_t v = m->slots[i];
        if (!v) return -1;
        const char *ks;
        size_t kn;
        map_key(t, m, v - 1, &ks, &kn);
        if (kn == n && memcmp(ks, s, n) == 0) return v - 1;
        i = (i + 1) & m->mask;
    }
}

/* Inserts id unless its key is already there (the first insertion wins). */
static void strmap_add(const struct tokenizer *t, struct strmap *m, int32_t id)
{
    const char *s;
    size_t n;
    map_key(t, m, id, &s, &n);
    size_t i = hash_bytes(s, n) & m->mask;
    for (;;) {
        int32_t v = m->slots[i];
        if (!v) {
            m->slots[i] = id + 1;
            return;
        }
        const char *ks;
        size_t kn;
        map_key(t, m, v - 1, &ks, &kn);
        if (kn == n && memcmp(ks, s, n) == 0) return;
        i = (i + 1) & m->mask;
    }
}

static int mergemap_init(struct mergemap *m, size_t count)
{
    size_t cap = pow2_at_least(count * 2 + 1);
    m->keys = calloc(cap, sizeof *m->keys);
    m->rank = malloc(cap * sizeof *m->rank);
    m->new_id = malloc(cap * sizeof *m->new_id);
    m->mask = cap - 1;
    return (m->keys && m->rank && m->new_id) ? 0 : -1;
}

/* Returns 1 and the merge of (a, b) if there is one. */
static int mergemap_find(const struct mergemap *m, int32_t a, int32_t b, uint32_t *rank,
                         int32_t *new_id)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(key) & m->mask;
    for (;;) {
        uint64_t k = m->keys[i];
        if (!k) return 0;
        if (k == key) {
            *rank = m->rank[i];
            *new_id = m->new_id[i];
            return 1;
        }
        i = (i + 1) & m->mask;
    }
}

/* Adds a merge unless the pair is already there (HF keeps the first rank as well). */
static void mergemap_add(struct mergemap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id)
{
    uint64_t key = (((uint64_t)(uint32_t)a << 32) | (uint32_t)b) + 1;
    size_t i = hash_u64(key) & m->mask;
    while (m->keys[i]) {
        if (m->keys[i] == key) return;
        i = (i + 1) & m->mask;
    }
    m->keys[i] = key;
    m->rank[i] = rank;
    m->new_id[i] = new_id;
}

/* Appends bytes (plus a NUL) to the pool; returns the offset or UINT32_MAX on failure. */
static uint32_t pool_add(struct tokenizer *t, const char *s, size_t n)
{
    if (t->pool_len + n + 1 > t->pool_cap) {
        size_t cap = t->pool_cap ? t->pool_cap : 1 << 16;
        while (cap < t->pool_len + n + 1)
            cap *= 2;
        if (cap > UINT32_MAX) return UINT32_MAX;
        char *np = realloc(t->pool, cap);
        if (!np) return UINT32_MAX;
        t->pool = np;
        t->pool_cap = cap;
    }
    uint32_t off = (uint32_t)t->pool_len;
    memcpy(t->pool + off, s, n);
    t->pool[off + n] = '\0';
    t->pool_len += n + 1;
    return off;
}

/* ---------------------------------------------------------------- byte-level alphabet */

uint32_t tok_byte_to_cp(unsigned b)
{
    if ((b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174) return b;
    if (b <= 32) return 256 + b;
    if (b >= 127 && b <= 160) return 256 + 33 + (b - 127);
    return 323; /* 173 */
}

int tok_cp_to_byte(uint32_t cp)
{
    if ((cp >= 33 && cp <= 126) || (cp >= 161 && cp <= 172) || (cp >= 174 && cp <= 255))
        return (int)cp;
    if (cp >= 256 && cp <= 288) return (int)(cp - 256);
    if (cp >= 289 && cp <= 322) return (int)(127 + cp - 289);
    if (cp == 323) return 173;
    return -1;
}

/* Byte-level string -> raw bytes into o (room for n); -1 if a character is outside the map. */
static long bytelevel_decode(const char *s, size_t n, char *o)
{
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += uni_decode((const unsigned char *)s + i, n - i, &cp);
        int b = tok_cp_to_byte(cp);
        if (b < 0) return -1;
        o[w++] = (char)b;
    }
    return (long)w;
}

/* ---------------------------------------------------------------- pre-tokenizer matchers */

enum { CL_L = 1, CL_N = 2, CL_S = 4 };

static int is_nl(uint32_t c)
{
    return c == '\r' || c == '\n';
}

/* End of the GPT-2 pattern's match at i in c[0..n). */
static size_t match_gpt2(const uint32_t *c, const uint8_t *k, size_t i, size_t n)
{
    if (c[i] == '\'' && i + 1 < n) {
        uint32_t a = c[i + 1];
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if (i + 2 < n) {
            uint32_t b = c[i + 2];
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                return i + 3;
        }
    }
    size_t j = c[i] == ' ' ? i + 1 : i;
    if (j < n && (k[j] & CL_L)) {
        while (j < n && (k[j] & CL_L))
            j++;
        return j;
    }
    if (j < n && (k[j] & CL_N)) {
        while (j < n && (k[j] & CL_N))
            j++;
        return j;
    }
    if (j < n && !k[j]) {
        while (j < n && !k[j])
            j++;
        return j;
    }
    size_t e = i;
    while (e < n && (k[e] & CL_S))
        e++;
    if (e == n) return e;        /* \s+(?!\S) at the end */
    if (e - 1 > i) return e - 1; /* leave the last space to the next word */
    return e;                    /* \s+ */
}

static uint32_t fold(uint32_t c)
{
    if (c >= 'A' && c <= 'Z') return c + 32;
    if (c == 0x17F) return 's'; /* LATIN SMALL LETTER LONG S folds to s */
    return c;
}

/* End of the Llama-3 (max_digits 3) or Qwen2 (max_digits 1) pattern's match at i. */
static size_t match_llama3(const uint32_t *c, const uint8_t *k, size_t i, size_t n,
                           size_t max_digits)
{
    if (c[i] == '\'' && i + 1 < n) {
        uint32_t a = fold(c[i + 1]);
        if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
        if (i + 2 < n) {
            uint32_t b = fold(c[i + 2]);
            if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l'))
                return i + 3;
        }
    }
    /* [^\r\n\p{L}\p{N}]?\p{L}+ */
    size_t j = i;
    if (!(k[i] & (CL_L | CL_N)) && !is_nl(c[i]) && i + 1 < n && (k[i + 1] & CL_L)) j = i + 1;
    if (k[j] & CL_L) {
        while (j < n && (k[j] & CL_L))
            j++;
        return j;
    }
    /* \p{N}{1,3} or \p{N} */
    if (k[i] & CL_N) {
        j = i + 1;
        while (j < n && j - i < max_digits && (k[j] & CL_N))
            j++;
        return j;
    }
    /*  ?[^\s\p{L}\p{N}]+[\r\n]* */
    j = c[i] == ' ' ? i + 1 : i;
    if (j < n && !k[j]) {
        while (j < n && !k[j])
            j++;
        while (j < n && is_nl(c[j]))
            j++;
        return j;
    }
    /* \s*[\r\n]+ , \s+(?!\S) , \s+ */
    size_t e = i, last_nl = (size_t)-1;
    while (e < n && (k[e] & CL_S)) {
        if (is_nl(c[e])) last_nl = e;
        e++;
    }
    if (last_nl != (size_t)-1) return last_nl + 1;
    if (e == n) return e;
    if (e - 1 > i) return e - 1;
    return e;
}

struct cpbuf {
    uint32_t *cp;
    uint32_t *off; /* byte offset of each code point, plus one past the end */
    uint8_t *cls;
    size_t n, cap;
};

static int cpbuf_fill(struct cpbuf *b, const char *s, size_t len)
{
    if (len + 1 > b->cap) {
        size_t cap = len + 1 + len / 2;
        uint32_t *ncp = realloc(b->cp, cap * sizeof *ncp);
        if (ncp) b->cp = ncp;
        uint32_t *noff = realloc(b->off, cap * sizeof *noff);
        if (noff) b->off = noff;
        uint8_t *ncls = realloc(b->cls, cap);
        if (ncls) b->cls = ncls;
        if (!ncp || !noff || !ncls) return -1;
        b->cap = cap;
    }
    const unsigned char *u = (const unsigned char *)s;
    size_t n = 0;
    for (size_t i = 0; i < len;) {
        uint32_t cp;
        size_t l;
        if (u[i] < 0x80) {
            cp = u[i];
            l = 1;
        } else {
            l = uni_decode(u + i, len - i, &cp);
        }
        b->cp[n] = cp;
        b->off[n] = (uint32_t)i;
        b->cls[n] = (uint8_t)((uni_is_letter(cp) ? CL_L : 0) | (uni_is_number(cp) ? CL_N : 0) |
                              (uni_is_space(cp) ? CL_S : 0));
        n++;
        i += l;
    }
    b->off[n] = (uint32_t)len;
    b->n = n;
    return 0;
}

static void cpbuf_free(struct cpbuf *b)
{
    free(b->cp);
    free(b->off);
    free(b->cls);
}

/* Runs the split pattern over code points [a, b) of cb, calling fn per piece (byte offsets). */
static void split_range(enum tok_split kind, const struct cpbuf *cb, size_t a, size_t b,
                        void (*fn)(void *, size_t, size_t), void *arg)
{
    size_t i = a;
    while (i < b) {
        size_t j;
        /* the matchers see the range as the whole string: offset the arrays */
        const uint32_t *c = cb->cp + a;
        const uint8_t *k = cb->cls + a;
        switch (kind) {
        case TOK_SPLIT_GPT2: j = a + match_gpt2(c, k, i - a, b - a); break;
        case TOK_SPLIT_LLAMA3: j = a + match_llama3(c, k, i - a, b - a, 3); break;
        case TOK_SPLIT_QWEN2: j = a + match_llama3(c, k, i - a, b - a, 1); break;
        default: j = b; break;
        }
        fn(arg, cb->off[i], cb->off[j]);
        i = j;
    }
}

int tok_pretokenize(enum tok_split kind, const char *text, size_t len,
                    void (*fn)(void *arg, size_t start, size_t end), void *arg)
{
    struct cpbuf cb = {0};
    if (cpbuf_fill(&cb, text, len) < 0) {
        cpbuf_free(&cb);
        return -1;
    }
    split_range(kind, &cb, 0, cb.n, fn, arg);
    cpbuf_free(&cb);
    return 0;
}

/* ---------------------------------------------------------------- BPE */

struct sym {
    int32_t id, prev, next;
    uint32_t len;
};

struct mrg {
    uint32_t rank, pos;
    int32_t new_id;
};

struct enc {
    const struct tokenizer *t;
    int parse_special;
    const char *text;   /* the input: raw-pass offsets are taken from it */
    const uint8_t *lit; /* (len of text) 1 where special tokens are plain text, or NULL */
    int32_t *ids;
    size_t n, cap;
    int failed;
    struct sym *sy;
    size_t sycap;
    struct mrg *heap;
    size_t hn, hcap;
    struct cpbuf cb;
    const char *word_base; /* buffer the pre-tokenizer callback's offsets refer to */
};

static void push_id(struct enc *e, int32_t id)
{
    if (e->n == e->cap) {
        size_t cap = e->cap ? e->cap * 2 : 64;
        int32_t *ni = realloc(e->ids, cap * sizeof *ni);
        if (!ni) {
            e->failed = 1;
            return;
        }
        e->ids = ni;
        e->cap = cap;
    }
    e->ids[e->n++] = id;
}

static int mrg_less(const struct mrg *a, const struct mrg *b)
{
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(struct enc *e, struct mrg m)
{
    if (e->hn == e->hcap) {
        size_t cap = e->hcap ? e->hcap * 2 : 64;
        struct mrg *nh = realloc(e->heap, cap * sizeof *nh);
        if (!nh) {
            e->failed = 1;
            return;
        }
        e->heap = nh;
        e->hcap = cap;
    }
    size_t i = e->hn++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!mrg_less(&m, &e->heap[p])) break;
        e->heap[i] = e->heap[p];
        i = p;
    }
    e->heap[i] = m;
}

static struct mrg heap_pop(struct enc *e)
{
    struct mrg top = e->heap[0], last = e->heap[--e->hn];
    size_t i = 0, n = e->hn;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, m = i;
        const struct mrg *best = &last;
        if (l < n && mrg_less(&e->heap[l], best)) {
            m = l;
            best = &e->heap[l];
        }
        if (r < n && mrg_less(&e->heap[r], best)) m = r;
        if (m == i) break;
        e->heap[i] = e->heap[m];
        i = m;
    }
    if (n) e->heap[i] = last;
    return top;
}

static void push_pair(struct enc *e, int32_t pos)
{
    const struct sym *s = e->sy;
    int32_t nx = s[pos].next;
    if (nx < 0) return;
    uint32_t rank;
    int32_t nid;
    if (mergemap_find(&e->t->merges, s[pos].id, s[nx].id, &rank, &nid))
        heap_push(e, (struct mrg){rank, (uint32_t)pos, nid});
}

/* Encodes one pre-token given in model space (raw bytes for byte-level, else text). */
static void bpe_word(struct enc *e, const char *w, size_t len)
{
    const struct tokenizer *t = e->t;
    if (len == 0) return;
    if (t->ignore_merges) {
        int32_t id = strmap_find(t, &t->key_map, w, len);
        if (id >= 0) {
            push_id(e, id);
            return;
        }
    }
    if (len > e->sycap) {
        size_t cap = len + 16;
        struct sym *ns = realloc(e->sy, cap * sizeof *ns);
        if (!ns) {
            e->failed = 1;
            return;
        }
        e->sy = ns;
        e->sycap = cap;
    }
    struct sym *s = e->sy;
    int32_t n = 0;
    int last_unk = 0;
    const unsigned char *u = (const unsigned char *)w;
    for (size_t i = 0; i < len;) {
        size_t cl;
        int32_t id;
        if (t->byte_level) {
            cl = 1;
            id = t->byte_id[u[i]];
        } else {
            uint32_t cp;
            cl = uni_decode(u + i, len - i, &cp);
            id = strmap_find(t, &t->key_map, w + i, cl);
        }
        if (id >= 0) {
            s[n] = (struct sym){id, n - 1, n + 1, (uint32_t)cl};
            n++;
            last_unk = 0;
        } else {
            int fb = t->byte_fallback;
            for (size_t b = 0; fb && b < cl; b++)
                if (t->byte_tok[u[i + b]] < 0) fb = 0;
            if (fb) {
                for (size_t b = 0; b < cl; b++, n++)
                    s[n] = (struct sym){t->byte_tok[u[i + b]], n - 1, n + 1, 1};
                last_unk = 0;
            } else if (t->unk_id >= 0) {
                if (last_unk && t->fuse_unk) {
                    s[n - 1].len += (uint32_t)cl;
                } else {
                    s[n] = (struct sym){t->unk_id, n - 1, n + 1, (uint32_t)cl};
                    n++;
                    last_unk = 1;
                }
            } /* else: dropped, as HF does without an unk token */
        }
        i += cl;
    }
    if (n == 0) return;
    s[n - 1].next = -1;
    e->hn = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        push_pair(e, i);
    while (e->hn > 0 && !e->failed) {
        struct mrg m = heap_pop(e);
        int32_t pos = (int32_t)m.pos;
        if (s[pos].len == 0 || s[pos].next < 0) continue;
        int32_t nx = s[pos].next;
        uint32_t rank;
        int32_t nid;
        if (!mergemap_find(&t->merges, s[pos].id, s[nx].id, &rank, &nid) || nid != m.new_id)
            continue; /* stale entry */
        s[pos].id = nid;
        s[pos].len += s[nx].len;
        s[nx].len = 0;
        s[pos].next = s[nx].next;
        if (s[pos].next >= 0) s[s[pos].next].prev = pos;
        if (s[pos].prev >= 0) push_pair(e, s[pos].prev);
        push_pair(e, pos);
    }
    for (int32_t i = 0; i >= 0; i = s[i].next)
        push_id(e, s[i].id);
}

/* ---------------------------------------------------------------- encoding pipeline */

static void word_cb(void *arg, size_t start, size_t end)
{
    struct enc *e = arg;
    const char *w = e->word_base + start;
    bpe_word(e, w, end - start);
}

/* Pre-tokenizes one normalized piece and BPE-encodes its words. at_origin: the piece starts
 * at offset 0 of the input (Metaspace prepend_scheme "first"). */
static void pretok_piece(struct enc *e, const char *s, size_t len, int at_origin)
{
    const struct tokenizer *t = e->t;
    char *tmp = NULL;
    if (len == 0) return;
    if (t->metaspace) {
        size_t spaces = 0;
        for (size_t i = 0; i < len; i++)
            spaces += s[i] == ' ';
        tmp = malloc(len + (spaces + 1) * t->ms_repl_len + 1);
        if (!tmp) goto oom;
        size_t w = 0;
        for (size_t i = 0; i < len; i++) {
            if (s[i] == ' ') {
                memcpy(tmp + w, t->ms_repl, t->ms_repl_len);
                w += t->ms_repl_len;
            } else {
                tmp[w++] = s[i];
            }
        }
        int starts = w >= t->ms_repl_len && memcmp(tmp, t->ms_repl, t->ms_repl_len) == 0;
        if (!starts && (t->ms_prepend == 1 || (t->ms_prepend == 2 && at_origin))) {
            memmove(tmp + t->ms_repl_len, tmp, w);
            memcpy(tmp, t->ms_repl, t->ms_repl_len);
            w += t->ms_repl_len;
        }
        if (!t->ms_split) {
            bpe_word(e, tmp, w);
        } else { /* split before each replacement character (MergedWithNext) */
            size_t st = 0;
            for (size_t i = 1; i + t->ms_repl_len <= w; i++) {
                if (memcmp(tmp + i, t->ms_repl, t->ms_repl_len) == 0) {
                    bpe_word(e, tmp + st, i - st);
                    st = i;
                }
            }
            bpe_word(e, tmp + st, w - st);
        }
        free(tmp);
        return;
    }
    if (t->add_prefix_space && s[0] != ' ') {
        tmp = malloc(len + 2);
        if (!tmp) goto oom;
        tmp[0] = ' ';
        memcpy(tmp + 1, s, len);
        s = tmp;
        len++;
    }
    if (t->split == TOK_SPLIT_NONE && !t->digits) {
        bpe_word(e, s, len);
        free(tmp);
        return;
    }
    if (cpbuf_fill(&e->cb, s, len) < 0) goto oom;
    e->word_base = s;
    if (!t->digits) {
        split_range(t->split, &e->cb, 0, e->cb.n, word_cb, e);
    } else {
        const struct cpbuf *cb = &e->cb;
        size_t i = 0;
        while (i < cb->n) {
            size_t j = i;
            int num = (cb->cls[i] & CL_N) != 0;
            if (num && t->digits == 1)
                j = i + 1;
            else
                while (j < cb->n && ((cb->cls[j] & CL_N) != 0) == num)
                    j++;
            if (num || t->split == TOK_SPLIT_NONE)
                word_cb(e, cb->off[i], cb->off[j]);
            else
                split_range(t->split, cb, i, j, word_cb, e);
            i = j;
        }
    }
    free(tmp);
    return;
oom:
    free(tmp);
    e->failed = 1;
}

static int ws_char_before(const char *s, size_t start, size_t *pos)
{
    /* steps back over one whitespace character ending at start */
    size_t i = start;
    while (i > 0 && ((unsigned char)s[i - 1] & 0xC0) == 0x80 && start - i < 3)
        i--;
    if (i == 0) return 0;
    i--;
    uint32_t cp;
    size_t l = uni_decode((const unsigned char *)s + i, start - i, &cp);
    if (i + l != start || !uni_is_space(cp)) return 0;
    *pos = i;
    return 1;
}

static int is_word_char(uint32_t cp)
{
    return cp == '_' || uni_is_letter(cp) || uni_is_number(cp);
}

/* Longest added token (of the given normalized-ness) matching at s[i..n), or -1. */
static long added_at(const struct tokenizer *t, const char *s, size_t i, size_t n, int normalized)
{
    unsigned char c = (unsigned char)s[i];
    for (size_t k = t->added_first[c]; k < t->added_first[c + 1]; k++) {
        const struct tok_added *a = &t->added[k];
        if (a->normalized != normalized || a->len > n - i) continue;
        if (memcmp(s + i, t->pool + a->off, a->len) == 0) return (long)k;
    }
    return -1;
}

typedef void (*seg_fn)(struct enc *e, const char *s, size_t len, int at_origin);

/* 1 when any byte of lit[a..b) is set. */
static int any_lit(const uint8_t *lit, size_t a, size_t b)
{
    return lit && memchr(lit + a, 1, b - a) != NULL;
}

/* Splits s on added tokens (leftmost-longest, as HF's Aho-Corasick pass does), emitting
 * token ids and handing the text between them to fn. lit (per byte of s, may be NULL) marks
 * literal text, in which a special token's string is plain text. */
static void split_added(struct enc *e, const char *s, size_t n, const uint8_t *lit, int normalized,
                        int at_origin, seg_fn fn)
{
    const struct tokenizer *t = e->t;
    size_t start_off = 0, i = 0;
    while (i < n && !e->failed) {
        long ai = t->n_added ? added_at(t, s, i, n, normalized) : -1;
        if (ai < 0) {
            i++;
            continue;
        }
        const struct tok_added *a = &t->added[ai];
        size_t st = i, sp = i + a->len;
        if (a->special && (!e->parse_special || any_lit(lit, st, sp))) {
            /* the match is left as text and the scan goes on after it, as HF does without
             * special tokens; but a match reaching out of literal text into template text
             * must not swallow a special token that starts there */
            i = !e->parse_special || !memchr(lit + st, 0, sp - st) ? sp : i + 1;
            continue;
        }
        if (a->single_word) {
            uint32_t cp;
            int ok = 1;
            if (st > 0) {
                size_t b = st - 1;
                while (b > 0 && ((unsigned char)s[b] & 0xC0) == 0x80)
                    b--;
                uni_decode((const unsigned char *)s + b, st - b, &cp);
                if (is_word_char(cp)) ok = 0;
            }
            if (sp < n) {
                uni_decode((const unsigned char *)s + sp, n - sp, &cp);
                if (is_word_char(cp)) ok = 0;
            }
            if (!ok) {
                i = sp;
                continue;
            }
        }
        if (a->lstrip) {
            size_t p;
            while (st > start_off && ws_char_before(s, st, &p) && p >= start_off)
                st = p;
        }
        if (a->rstrip) {
            while (sp < n) {
                uint32_t cp;
                size_t l = uni_decode((const unsigned char *)s + sp, n - sp, &cp);
                if (!uni_is_space(cp)) break;
                sp += l;
            }
        }
        if (st > start_off) fn(e, s + start_off, st - start_off, at_origin && start_off == 0);
        push_id(e, a->id);
        start_off = i = sp;
    }
    if (n > start_off && !e->failed)
        fn(e, s + start_off, n - start_off, at_origin && start_off == 0);
}

/* Runs the normalizer over s[0..len): *out is the malloc'd result, or NULL when it is s itself.
 * first: s starts the text being normalized (Prepend applies only there). 0, or -1 no memory. */
static int normalize(const struct tokenizer *t, const char *s, size_t len, int first, char **out,
                     size_t *out_len)
{
    char *cur = NULL; /* owned current text, NULL while it is still s */
    size_t cl = len;
    for (size_t k = 0; k < t->n_norm; k++) {
        const struct norm_op *op = &t->norm[k];
        const char *src = cur ? cur : s;
        char *nx = NULL;
        size_t nl = 0;
        if (op->kind == NORM_NFC) {
            if (uni_nfc(src, cl, &nx, &nl) < 0) goto oom;
            if (!nx) continue;
        } else if (op->kind == NORM_PREPEND) {
            if (cl == 0 || !first) continue; /* HF prepends to non-empty strings only */
            nl = op->a_len + cl;
            nx = malloc(nl + 1);
            if (!nx) goto oom;
            memcpy(nx, t->pool + op->a_off, op->a_len);
            memcpy(nx + op->a_len, src, cl);
        } else {
            const char *from = t->pool + op->a_off, *to = t->pool + op->b_off;
            size_t cnt = 0;
            for (size_t i = 0; i + op->a_len <= cl;) {
                if (memcmp(src + i, from, op->a_len) == 0) {
                    cnt++;
                    i += op->a_len;
                } else {
                    i++;
                }
            }
            if (!cnt) continue;
            nx = malloc(cl + cnt * op->b_len + 1);
            if (!nx) goto oom;
            for (size_t i = 0; i < cl;) {
                if (i + op->a_len <= cl && memcmp(src + i, from, op->a_len) == 0) {
                    memcpy(nx + nl, to, op->b_len);
                    nl += op->b_len;
                    i += op->a_len;
                } else {
                    nx[nl++] = src[i++];
                }
            }
        }
        free(cur);
        cur = nx;
        cl = nl;
    }
    *out = cur;
    *out_len = cl;
    return 0;
oom:
    free(cur);
    return -1;
}

static void normalized_seg(struct enc *e, const char *s, size_t len, int at_origin)
{
    pretok_piece(e, s, len, at_origin);
}

/* Normalizes a segment that mixes literal and template text run by run, so that the literal
 * mask carries over to the normalized text (*lit_out, per byte of *out; both malloc'd). Only
 * needed when a special token is matched after normalization; the result equals normalizing
 * the segment whole except where a run starts with a character that composes (NFC) with the
 * end of the run before it. 0, or -1 no memory. */
static int normalize_runs(const struct tokenizer *t, const char *s, size_t len, const uint8_t *lit,
                          char **out, uint8_t **lit_out, size_t *out_len)
{
    char *o = NULL;
    uint8_t *ol = NULL;
    size_t on = 0, cap = 0;
    for (size_t a = 0; a < len;) {
        size_t b = a + 1;
        while (b < len && lit[b] == lit[a])
            b++;
        char *norm;
        size_t nl;
        if (normalize(t, s + a, b - a, a == 0, &norm, &nl) < 0) goto oom;
        if (on + nl + 1 > cap) {
            cap = (on + nl + 1) * 2;
            char *no = realloc(o, cap);
            if (no) o = no;
            uint8_t *nlit = no ? realloc(ol, cap) : NULL;
            if (nlit) ol = nlit;
            if (!no || !nlit) {
                free(norm);
                goto oom;
            }
        }
        memcpy(o + on, norm ? norm : s + a, nl);
        memset(ol + on, lit[a], nl);
        on += nl;
        free(norm);
        a = b;
    }
    *out = o;
    *lit_out = ol;
    *out_len = on;
    return 0;
oom:
    free(o);
    free(ol);
    return -1;
}

static void raw_seg(struct enc *e, const char *s, size_t len, int at_origin)
{
    const struct tokenizer *t = e->t;
    char *norm = NULL;
    uint8_t *nlit = NULL;
    size_t nl, off = (size_t)(s - e->text);
    int all_lit = 0;
    if (e->lit && any_lit(e->lit, off, off + len)) {
        all_lit = !memchr(e->lit + off, 0, len);
        if (!all_lit && t->norm_special) {
            if (normalize_runs(t, s, len, e->lit + off, &norm, &nlit, &nl) < 0) goto oom;
            split_added(e, norm, nl, nlit, 1, at_origin, normalized_seg);
            free(norm);
            free(nlit);
            return;
        }
    }
    if (normalize(t, s, len, 1, &norm, &nl) < 0) goto oom;
    /* all literal: no special token at all; mixed without normalized specials: the mask does
     * not matter in this pass */
    int parse = e->parse_special;
    if (all_lit) e->parse_special = 0;
    split_added(e, norm ? norm : s, nl, NULL, 1, at_origin, normalized_seg);
    e->parse_special = parse;
    free(norm);
    return;
oom:
    e->failed = 1;
}

static int encode(const struct tokenizer *t, const char *text, size_t len, int parse_special,
                  const uint8_t *lit, int32_t **ids, size_t *n)
{
    struct enc e = {.t = t, .parse_special = parse_special, .text = text, .lit = lit};
    *ids = NULL;
    *n = 0;
    if (len) split_added(&e, text, len, lit, 0, 1, raw_seg);
    free(e.sy);
    free(e.heap);
    cpbuf_free(&e.cb);
    if (e.failed) {
        free(e.ids);
        return -1;
    }
    *ids = e.ids;
    *n = e.n;
    return 0;
}

int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, int parse_special,
                     int32_t **ids, size_t *n)
{
    return encode(t, text, len, parse_special, NULL, ids, n);
}

int tokenizer_encode_literal(const struct tokenizer *t, const char *text, size_t len,
                             const struct tok_range *literal, size_t n_literal, int32_t **ids,
                             size_t *n)
{
    uint8_t *lit = NULL;
    *ids = NULL;
    *n = 0;
    for (size_t k = 0; k < n_literal; k++) {
        if (literal[k].off >= len || literal[k].len == 0) continue;
        if (!lit && !(lit = calloc(len, 1))) return -1;
        size_t end = literal[k].len > len - literal[k].off ? len : literal[k].off + literal[k].len;
        memset(lit + literal[k].off, 1, end - literal[k].off);
    }
    int rc = encode(t, text, len, 1, lit, ids, n);
    free(lit);
    return rc;
}

/* ---------------------------------------------------------------- decoding */

static int utf8_all_valid(const unsigned char *s, size_t n)
{
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += uni_decode(s + i, n - i, &cp);
        if (cp >= UNI_BAD_BYTE) return 0;
    }
    return 1;
}

struct obuf {
    char *p;
    size_t n, cap;
    int failed;
};

static void ob_put(struct obuf *o, const void *s, size_t n)
{
    if (o->n + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->n + n + 1)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->failed = 1;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
}

/* Piece of id as decoded in position `index` of the decoded token list. */
static void token_piece(const struct tokenizer *t, int32_t id, size_t index, struct obuf *o)
{
    const struct tok_token *k = &t->tok[id];
    if (t->dec == DEC_METASPACE && index == 0) {
        /* HF's Metaspace decoder drops the replacement characters of the first token */
        const char *s = t->pool + k->text_off;
        for (size_t i = 0; i < k->text_len;) {
            if (i + t->ms_repl_len <= k->text_len && memcmp(s + i, t->ms_repl, t->ms_repl_len) == 0)
                i += t->ms_repl_len;
            else
                ob_put(o, s + i++, 1);
        }
        return;
    }
    ob_put(o, t->pool + k->piece_off, k->piece_len);
}

int tokenizer_decode_ex(const struct tokenizer *t, const int32_t *ids, size_t n, int flags,
                        char **out, size_t *out_len)
{
    struct obuf raw = {0};
    unsigned char grp[64];
    size_t gn = 0, index = 0;
    for (size_t i = 0; i <= n; i++) {
        int32_t id = i < n ? ids[i] : -1;
        int valid = id >= 0 && id < t->n_ids && t->tok[id].present &&
                    !((flags & TOK_DECODE_SKIP_SPECIAL) && t->tok[id].special);
        if (i < n && !valid) continue;
        int is_byte = valid && t->dec_byte_fallback && t->tok[id].byte >= 0;
        if (gn && (!is_byte || gn == sizeof grp)) { /* flush a run of <0xNN> tokens */
            if (utf8_all_valid(grp, gn)) {
                ob_put(&raw, grp, gn);
            } else {
                for (size_t b = 0; b < gn; b++)
                    ob_put(&raw, "\xEF\xBF\xBD", 3);
            }
            gn = 0;
        }
        if (!valid) break;
        if (is_byte)
            grp[gn++] = (unsigned char)t->tok[id].byte;
        else
            token_piece(t, id, index, &raw);
        index++;
    }
    size_t skip = 0;
    for (int k = 0; k < t->dec_strip && skip < raw.n && raw.p[skip] == ' '; k++)
        skip++;
    char *o = malloc((raw.n - skip) * 3 + 1);
    if (!o || raw.failed) {
        free(o);
        free(raw.p);
        return -1;
    }
    /* no ids: raw.p is NULL, and even NULL + 0 is undefined */
    size_t len = raw.n ? uni_lossy((const unsigned char *)raw.p + skip, raw.n - skip, o) : 0;
    o[len] = '\0';
    free(raw.p);
    *out = o;
    if (out_len) *out_len = len;
    return 0;
}

int tokenizer_decode(const struct tokenizer *t, const int32_t *ids, size_t n, char **out,
                     size_t *out_len)
{
    return tokenizer_decode_ex(t, ids, n, 0, out, out_len);
}

void tokenizer_decode_stream_init(struct tokenizer_stream *s, const struct tokenizer *t, int flags)
{
    memset(s, 0, sizeof *s);
    s->t = t;
    s->flags = flags;
    s->at_start = 1;
}

size_t tokenizer_decode_stream_max(const struct tokenizer *t)
{
    return 4 * (t->max_piece + 8) + 1;
}

int tokenizer_decode_stream_push(struct tokenizer_stream *s, int32_t id, char *out, size_t cap,
                                 size_t *out_len)
{
    const struct tokenizer *t = s->t;
    *out_len = 0;
    if (id < 0 || id >= t->n_ids || !t->tok[id].present) return 0;
    const struct tok_token *k = &t->tok[id];
    if ((s->flags & TOK_DECODE_SKIP_SPECIAL) && k->special) return 0;
    /* assemble pending bytes + this piece in out's tail, then convert to the front */
    char piece_buf[16];
    struct obuf pb = {0};
    const char *p;
    size_t pl;
    if (t->dec_byte_fallback && k->byte >= 0) {
        piece_buf[0] = (char)k->byte;
        p = piece_buf;
        pl = 1;
    } else if (t->dec == DEC_METASPACE && s->at_start) {
        token_piece(t, id, 0, &pb);
        if (pb.failed) {
            free(pb.p);
            return -1;
        }
        p = pb.p ? pb.p : "";
        pl = pb.n;
    } else {
        p = t->pool + k->piece_off;
        pl = k->piece_len;
    }
    while (s->at_start && s->stripped < t->dec_strip && pl && p[0] == ' ') {
        p++;
        pl--;
        s->stripped++;
    }
    size_t tot = s->npend + pl;
    if (cap < 4 * tot + 1) { /* lossy output (<= 3 * tot) must stay below the input copy */
        free(pb.p);
        return -1;
    }
    if (pl) s->at_start = 0;
    unsigned char *tmp = (unsigned char *)out + cap - tot;
    memmove(tmp + s->npend, p, pl);
    memcpy(tmp, s->pend, s->npend);
    free(pb.p);
    size_t done = uni_complete_prefix(tmp, tot);
    unsigned char rest[4];
    size_t nrest = tot - done;
    memcpy(rest, tmp + done, nrest);
    /* lossy writes at most 3 bytes per input byte; tmp starts >= 3 * tot into out */
    *out_len = uni_lossy(tmp, done, out);
    memcpy(s->pend, rest, nrest);
    s->npend = nrest;
    return 0;
}

int tokenizer_decode_stream_flush(struct tokenizer_stream *s, char *out, size_t cap,
                                  size_t *out_len)
{
    *out_len = 0;
    if (!s->npend) return 0;
    if (cap < 3 * s->npend) return -1;
    *out_len = uni_lossy(s->pend, s->npend, out);
    s->npend = 0;
    return 0;
}

/* ---------------------------------------------------------------- accessors */

int32_t tokenizer_vocab_size(const struct tokenizer *t)
{
    return t->n_ids;
}
int32_t tokenizer_bos(const struct tokenizer *t)
{
    return t->bos;
}
int32_t tokenizer_eos(const struct tokenizer *t)
{
    return t->eos;
}
int tokenizer_add_bos(const struct tokenizer *t)
{
    return t->add_bos && t->bos >= 0;
}
const char *tokenizer_chat_template(const struct tokenizer *t)
{
    return t->chat_template;
}
const char *tokenizer_bos_text(const struct tokenizer *t)
{
    return t->bos_text;
}
const char *tokenizer_eos_text(const struct tokenizer *t)
{
    return t->eos_text;
}

const char *tokenizer_token_text(const struct tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_ids || !t->tok[id].present) return NULL;
    if (len) *len = t->tok[id].text_len;
    return t->pool + t->tok[id].text_off;
}

const char *tokenizer_token_to_piece(const struct tokenizer *t, int32_t id, size_t *len)
{
    if (id < 0 || id >= t->n_ids || !t->tok[id].present) return NULL;
    if (len) *len = t->tok[id].piece_len;
    return t->pool + t->tok[id].piece_off;
}

int32_t tokenizer_token_id(const struct tokenizer *t, const char *s)
{
    return s ? strmap_find(t, &t->text_map, s, strlen(s)) : -1;
}

int tokenizer_is_special(const struct tokenizer *t, int32_t id)
{
    return id >= 0 && id < t->n_ids && t->tok[id].special;
}

void tokenizer_free(struct tokenizer *t)
{
    if (!t) return;
    free(t->tok);
    free(t->pool);
    free(t->text_map.slots);
    free(t->key_map.slots);
    free(t->merges.keys);
    free(t->merges.rank);
    free(t->merges.new_id);
    free(t->added);
    free(t->chat_template);
    free(t->bos_text);
    free(t->eos_text);
    free(t);
}

/* ---------------------------------------------------------------- loading */

#define FAIL(...)                                                                                  \
    do {                                                                                           \
        set_err(err, errlen, __VA_ARGS__);                                                         \
        return -1;                                                                                 \
    } while (0)

static int str_is(const struct ejson *v, const char *s)
{
    return v && v->type == EJSON_STRING && strcmp(v->str, s) == 0;
}

static const char *type_of(const struct ejson *v)
{
    const char *ty = ejson_get_str(v, "type");
    return ty ? ty : "?";
}

static int load_normalizer(struct tokenizer *t, const struct ejson *n, char *err, size_t errlen)
{
    if (!n || n->type == EJSON_NULL) return 0;
    const char *ty = type_of(n);
    if (!strcmp(ty, "Sequence")) {
        const struct ejson *l = ejson_get(n, "normalizers");
        if (!l || l->type != EJSON_ARRAY) FAIL("normalizer: Sequence without a normalizers array");
        for (size_t i = 0; i < l->n; i++)
            if (load_normalizer(t, &l->items[i], err, errlen) < 0) return -1;
        return 0;
    }
    if (t->n_norm == sizeof t->norm / sizeof t->norm[0]) FAIL("normalizer: too many steps");
    struct norm_op *op = &t->norm[t->n_norm];
    memset(op, 0, sizeof *op);
    if (!strcmp(ty, "NFC")) {
        op->kind = NORM_NFC;
    } else if (!strcmp(ty, "Prepend")) {
        const struct ejson *p = ejson_get(n, "prepend");
        if (!p || p->type != EJSON_STRING) FAIL("normalizer: Prepend without a prepend string");
        op->kind = NORM_PREPEND;
        op->a_off = pool_add(t, p->str, p->str_len);
        op->a_len = (uint32_t)p->str_len;
    } else if (!strcmp(ty, "Replace")) {
        const struct ejson *pat = ejson_get(n, "pattern");
        const struct ejson *from = ejson_get(pat, "String");
        const struct ejson *to = ejson_get(n, "content");
        if (!from || from->type != EJSON_STRING || from->str_len == 0 || !to ||
            to->type != EJSON_STRING)
            FAIL("normalizer: only Replace with a literal {\"String\": ...} pattern is supported");
        op->kind = NORM_REPLACE;
        op->a_off = pool_add(t, from->str, from->str_len);
        op->a_len = (uint32_t)from->str_len;
        op->b_off = pool_add(t, to->str, to->str_len);
        op->b_len = (uint32_t)to->str_len;
    } else {
        FAIL("normalizer: unsupported type \"%s\" (supported: NFC, Prepend, Replace, Sequence)",
             ty);
    }
    if (op->a_off == UINT32_MAX || op->b_off == UINT32_MAX) FAIL("out of memory");
    t->n_norm++;
    return 0;
}

struct pretok_flat {
    const struct ejson *items[8];
    size_t n;
};

static int flatten_pretok(const struct ejson *p, struct pretok_flat *f, char *err, size_t errlen)
{
    if (!p || p->type == EJSON_NULL) return 0;
    if (!strcmp(type_of(p), "Sequence")) {
        const struct ejson *l = ejson_get(p, "pretokenizers");
        if (!l || l->type != EJSON_ARRAY)
            FAIL("pre_tokenizer: Sequence without a pretokenizers array");
        for (size_t i = 0; i < l->n; i++)
            if (flatten_pretok(&l->items[i], f, err, errlen) < 0) return -1;
        return 0;
    }
    if (f->n == 8) FAIL("pre_tokenizer: too many steps");
    f->items[f->n++] = p;
    return 0;
}

static int load_pretok(struct tokenizer *t, const struct ejson *p, char *err, size_t errlen)
{
    struct pretok_flat f = {{0}, 0};
    if (flatten_pretok(p, &f, err, errlen) < 0) return -1;
    int stage = 0; /* 0 nothing yet, 1 digits seen, 2 split seen, 3 byte-level seen */
    for (size_t i = 0; i < f.n; i++) {
        const struct ejson *s = f.items[i];
        const char *ty = type_of(s);
        if (t->metaspace) FAIL("pre_tokenizer: nothing may follow Metaspace");
        if (!strcmp(ty, "ByteLevel")) {
            if (stage >= 3) FAIL("pre_tokenizer: ByteLevel given twice");
            int use_regex = ejson_get_bool(s, "use_regex", 1);
            t->add_prefix_space = ejson_get_bool(s, "add_prefix_space", 0);
            if (t->add_prefix_space && stage != 0)
                FAIL("pre_tokenizer: ByteLevel add_prefix_space after other pre-tokenizers is "
                     "not supported");
            if (use_regex) {
                if (t->split != TOK_SPLIT_NONE)
                    FAIL("pre_tokenizer: ByteLevel use_regex after a Split is not supported");
                t->split = TOK_SPLIT_GPT2;
            }
            t->byte_level = 1;
            stage = 3;
        } else if (!strcmp(ty, "Split")) {
            if (stage >= 2) FAIL("pre_tokenizer: Split must come before ByteLevel, once");
            const struct ejson *pat = ejson_get(ejson_get(s, "pattern"), "Regex");
            if (!pat || pat->type != EJSON_STRING)
                FAIL("pre_tokenizer: only Split with a {\"Regex\": ...} pattern is supported");
            if (!str_is(ejson_get(s, "behavior"), "Isolated") || ejson_get_bool(s, "invert", 0))
                FAIL("pre_tokenizer: only Split with behavior \"Isolated\", invert false is "
                     "supported");
            if (!strcmp(pat->str, tok_pattern_gpt2))
                t->split = TOK_SPLIT_GPT2;
            else if (!strcmp(pat->str, tok_pattern_llama3))
                t->split = TOK_SPLIT_LLAMA3;
            else if (!strcmp(pat->str, tok_pattern_qwen2))
                t->split = TOK_SPLIT_QWEN2;
            else
                FAIL("pre_tokenizer: unsupported Split regex \"%.120s\" (known: the GPT-2, "
                     "Llama-3 and Qwen2 patterns)",
                     pat->str);
            stage = 2;
        } else if (!strcmp(ty, "Digits")) {
            if (stage != 0) FAIL("pre_tokenizer: Digits must come first");
            t->digits = ejson_get_bool(s, "individual_digits", 0) ? 1 : 2;
            stage = 1;
        } else if (!strcmp(ty, "Metaspace")) {
            if (stage != 0) FAIL("pre_tokenizer: Metaspace must be the only pre-tokenizer");
            const char *r = ejson_get_str(s, "replacement");
            if (!r || !*r || strlen(r) >= sizeof t->ms_repl)
                FAIL("pre_tokenizer: Metaspace without a replacement character");
            t->metaspace = 1;
            memcpy(t->ms_repl, r, strlen(r) + 1);
            t->ms_repl_len = strlen(r);
            const char *ps = ejson_get_str(s, "prepend_scheme");
            if (!ps)
                t->ms_prepend = ejson_get_bool(s, "add_prefix_space", 1);
            else if (!strcmp(ps, "always"))
                t->ms_prepend = 1;
            else if (!strcmp(ps, "first"))
                t->ms_prepend = 2;
            else if (!strcmp(ps, "never"))
                t->ms_prepend = 0;
            else
                FAIL("pre_tokenizer: unknown Metaspace prepend_scheme \"%s\"", ps);
            t->ms_split = ejson_get_bool(s, "split", 1);
        } else {
            FAIL("pre_tokenizer: unsupported type \"%s\" (supported: ByteLevel, Split, Digits, "
                 "Metaspace, Sequence)",
                 ty);
        }
    }
    if (t->digits && !t->byte_level && t->split == TOK_SPLIT_NONE) {
        /* Digits alone is fine: pieces are digit runs and the rest */
    }
    return 0;
}

static int load_decoder(struct tokenizer *t, const struct ejson *d, char *err, size_t errlen)
{
    if (!d || d->type == EJSON_NULL) {
        t->dec = DEC_NONE;
        return 0;
    }
    const char *ty = type_of(d);
    if (!strcmp(ty, "ByteLevel")) {
        t->dec = DEC_BYTELEVEL;
        return 0;
    }
    if (!strcmp(ty, "Metaspace")) {
        const char *r = ejson_get_str(d, "replacement");
        if (!r || !*r || strlen(r) >= sizeof t->ms_repl)
            FAIL("decoder: Metaspace without a replacement character");
        memcpy(t->ms_repl, r, strlen(r) + 1);
        t->ms_repl_len = strlen(r);
        t->dec = DEC_METASPACE;
        return 0;
    }
    const struct ejson *l = NULL;
    size_t cnt = 1;
    if (!strcmp(ty, "Sequence")) {
        l = ejson_get(d, "decoders");
        if (!l || l->type != EJSON_ARRAY) FAIL("decoder: Sequence without a decoders array");
        cnt = l->n;
    }
    t->dec = DEC_SEQ;
    int fused = 0;
    for (size_t i = 0; i < cnt; i++) {
        const struct ejson *s = l ? &l->items[i] : d;
        const char *st = type_of(s);
        if (!strcmp(st, "Replace")) {
            const struct ejson *from = ejson_get(ejson_get(s, "pattern"), "String");
            if (!from || from->type != EJSON_STRING || from->str_len == 0 ||
                from->str_len >= sizeof t->ms_repl || !str_is(ejson_get(s, "content"), " "))
                FAIL("decoder: only Replace of a literal string by \" \" is supported");
            memcpy(t->ms_repl, from->str, from->str_len + 1);
            t->ms_repl_len = from->str_len;
        } else if (!strcmp(st, "ByteFallback")) {
            t->dec_byte_fallback = 1;
        } else if (!strcmp(st, "Fuse")) {
            fused = 1;
        } else if (!strcmp(st, "Strip")) {
            long long start = 0, stop = 0;
            if (!str_is(ejson_get(s, "content"), " ") || ejson_get_int(s, "start", &start) < 0 ||
                ejson_get_int(s, "stop", &stop) < 0 || stop != 0 || start < 0 || start > 8 ||
                !fused)
                FAIL("decoder: only Strip of leading \" \" after Fuse is supported");
            t->dec_strip = (int)start;
        } else {
            FAIL("decoder: unsupported type \"%s\" (supported: ByteLevel, Metaspace, Replace, "
                 "ByteFallback, Fuse, Strip, Sequence)",
                 st);
        }
    }
    return 0;
}

static int32_t special_before_a(const struct tokenizer *t, const struct ejson *pp)
{
    if (!pp || pp->type != EJSON_OBJECT) return -1;
    const char *ty = type_of(pp);
    if (!strcmp(ty, "Sequence")) {
        const struct ejson *l = ejson_get(pp, "processors");
        for (size_t i = 0; l && i < l->n; i++) {
            int32_t id = special_before_a(t, &l->items[i]);
            if (id >= 0) return id;
        }
        return -1;
    }
    if (strcmp(ty, "TemplateProcessing") != 0) return -1;
    const struct ejson *first = ejson_at(ejson_get(pp, "single"), 0);
    const struct ejson *sp = ejson_get(first, "SpecialToken");
    const char *name = ejson_get_str(sp, "id");
    if (!name) return -1;
    const struct ejson *ids = ejson_get(ejson_get(ejson_get(pp, "special_tokens"), name), "ids");
    long long id = -1;
    if (ejson_is_int(ejson_at(ids, 0))) id = (long long)ejson_at(ids, 0)->num;
    if (id < 0) id = strmap_find(t, &t->text_map, name, strlen(name));
    return (int32_t)id;
}

/* A tokenizer_config.json token value: "..." or {"content": "..."}. */
static const char *config_token(const struct ejson *cfg, const char *key)
{
    const struct ejson *v = ejson_get(cfg, key);
    if (v && v->type == EJSON_STRING) return v->str;
    return ejson_get_str(v, "content");
}

static int load_config(struct tokenizer *t, const struct ejson *cfg, const struct ejson *pp,
                       char *err, size_t errlen)
{
    const char *bos = config_token(cfg, "bos_token"), *eos = config_token(cfg, "eos_token");
    if (bos && !(t->bos_text = strdup(bos))) FAIL("out of memory");
    if (eos && !(t->eos_text = strdup(eos))) FAIL("out of memory");
    t->bos = bos ? tokenizer_token_id(t, bos) : -1;
    t->eos = eos ? tokenizer_token_id(t, eos) : -1;
    if (bos && t->bos < 0)
        FAIL("tokenizer_config.json: bos_token \"%.80s\" is not in the vocabulary", bos);
    if (eos && t->eos < 0)
        FAIL("tokenizer_config.json: eos_token \"%.80s\" is not in the vocabulary", eos);
    int32_t pp_bos = special_before_a(t, pp);
    const struct ejson *ab = ejson_get(cfg, "add_bos_token");
    if (ab && (ab->type == EJSON_TRUE || ab->type == EJSON_FALSE)) {
        t->add_bos = ab->type == EJSON_TRUE;
    } else {
        t->add_bos = pp_bos >= 0;
    }
    if (t->bos < 0 && pp_bos >= 0) t->bos = pp_bos;
    const struct ejson *ct = ejson_get(cfg, "chat_template");
    const char *tmpl = NULL;
    if (ct && ct->type == EJSON_STRING) {
        tmpl = ct->str;
    } else if (ct && ct->type == EJSON_ARRAY) {
        for (size_t i = 0; i < ct->n; i++) {
            const char *name = ejson_get_str(&ct->items[i], "name");
            const char *tx = ejson_get_str(&ct->items[i], "template");
            if (tx && (!tmpl || (name && !strcmp(name, "default")))) tmpl = tx;
        }
    }
    if (tmpl && !(t->chat_template = strdup(tmpl))) FAIL("out of memory");
    return 0;
}

static int cmp_added(const void *a, const void *b)
{
    const struct tok_added *x = a, *y = b;
    if (x->first != y->first) return x->first < y->first ? -1 : 1;
    if (x->len != y->len) return x->len > y->len ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

/* Sets text, model key and piece of every token once the pipeline is known. */
static int finish_tokens(struct tokenizer *t, char *err, size_t errlen)
{
    char *scratch = NULL;
    size_t scap = 0;
    for (int32_t id = 0; id < t->n_ids; id++) {
        struct tok_token *k = &t->tok[id];
        k->byte = -1;
        if (!k->present) continue;
        const char *s = t->pool + k->text_off;
        size_t n = k->text_len;
        if (n + 1 > scap) {
            scap = n * 2 + 16;
            char *ns = realloc(scratch, scap);
            if (!ns) goto oom;
            scratch = ns;
        }
        k->key_off = k->text_off;
        k->key_len = k->text_len;
        if (t->byte_level) {
            long l = bytelevel_decode(s, n, scratch);
            if (l >= 0) {
                uint32_t off = pool_add(t, scratch, (size_t)l);
                if (off == UINT32_MAX) goto oom;
                k->key_off = off;
                k->key_len = (uint32_t)l;
            } else {
                k->key_len = UINT32_MAX; /* not reachable by BPE */
            }
            s = t->pool + k->text_off;
        }
        if (n == 6 && s[0] == '<' && s[1] == '0' && s[2] == 'x' && s[5] == '>') {
            char hx[3] = {s[3], s[4], 0};
            char *end;
            long v = strtol(hx, &end, 16);
            if (*end == '\0' && v >= 0 && v < 256 && hx[0] != '-' && hx[0] != '+')
                k->byte = (int16_t)v;
        }
        /* piece: what the decoder makes of this token alone */
        size_t pl = 0;
        if (t->dec == DEC_BYTELEVEL) {
            long l = bytelevel_decode(s, n, scratch);
            if (l >= 0)
                pl = (size_t)l;
            else
                memcpy(scratch, s, pl = n);
        } else if (t->dec == DEC_SEQ || t->dec == DEC_METASPACE) {
            if (t->dec_byte_fallback && k->byte >= 0) {
                scratch[pl++] = (char)k->byte;
            } else if (t->ms_repl_len) {
                for (size_t i = 0; i < n;) {
                    if (i + t->ms_repl_len <= n && memcmp(s + i, t->ms_repl, t->ms_repl_len) == 0) {
                        scratch[pl++] = ' ';
                        i += t->ms_repl_len;
                    } else {
                        scratch[pl++] = s[i++];
                    }
                }
            } else {
                memcpy(scratch, s, pl = n);
            }
        } else {
            memcpy(scratch, s, pl = n);
        }
        uint32_t off = pool_add(t, scratch, pl);
        if (off == UINT32_MAX) goto oom;
        k = &t->tok[id];
        k->piece_off = off;
        k->piece_len = (uint32_t)pl;
        if (pl > t->max_piece) t->max_piece = pl;
        if (k->text_len > t->max_piece) t->max_piece = k->text_len;
    }
    free(scratch);
    return 0;
oom:
    free(scratch);
    FAIL("out of memory");
}

static int32_t model_text_id(struct tokenizer *t, const char *s, size_t n, char *scratch)
{
    if (!t->byte_level) return strmap_find(t, &t->key_map, s, n);
    long l = bytelevel_decode(s, n, scratch);
    return l < 0 ? -1 : strmap_find(t, &t->key_map, scratch, (size_t)l);
}

static int load_model(struct tokenizer *t, const struct ejson *root, char *err, size_t errlen)
{
    const struct ejson *m = ejson_get(root, "model");
    if (!m || m->type != EJSON_OBJECT) FAIL("tokenizer.json: no \"model\" object");
    const char *ty = ejson_get_str(m, "type");
    if (ty && strcmp(ty, "BPE") != 0)
        FAIL("model: unsupported type \"%s\" (only BPE is supported)", ty);
    const struct ejson *vocab = ejson_get(m, "vocab"), *merges = ejson_get(m, "merges");
    if (!vocab || vocab->type != EJSON_OBJECT) FAIL("model: \"vocab\" must be an object");
    if (merges && merges->type != EJSON_ARRAY) FAIL("model: \"merges\" must be an array");
    const char *csp = ejson_get_str(m, "continuing_subword_prefix");
    const char *eow = ejson_get_str(m, "end_of_word_suffix");
    if ((csp && *csp) || (eow && *eow))
        FAIL("model: continuing_subword_prefix / end_of_word_suffix are not supported");
    const struct ejson *dropout = ejson_get(m, "dropout");
    if (dropout && dropout->type == EJSON_NUMBER && dropout->num > 0.0)
        FAIL("model: BPE dropout is not supported");
    t->ignore_merges = ejson_get_bool(m, "ignore_merges", 0);
    t->byte_fallback = ejson_get_bool(m, "byte_fallback", 0);
    t->fuse_unk = ejson_get_bool(m, "fuse_unk", 0);

    const struct ejson *added = ejson_get(root, "added_tokens");
    if (added && added->type != EJSON_ARRAY)
        FAIL("tokenizer.json: \"added_tokens\" must be an array");
    long long max_id = -1;
    for (size_t i = 0; i < vocab->n; i++) {
        if (!ejson_is_int(&vocab->items[i]) || vocab->items[i].num < 0 ||
            vocab->items[i].num > 16777216.0)
            FAIL("model.vocab: id of \"%.60s\" is not a valid token id", vocab->keys[i]);
        if ((long long)vocab->items[i].num > max_id) max_id = (long long)vocab->items[i].num;
    }
    size_t n_added = added ? added->n : 0;
    for (size_t i = 0; i < n_added; i++) {
        long long id;
        if (ejson_get_int(&added->items[i], "id", &id) < 0 || id < 0 || id > 16777216 ||
            !ejson_get_str(&added->items[i], "content"))
            FAIL("added_tokens[%zu]: needs an integer \"id\" and a \"content\" string", i);
        if (id > max_id) max_id = id;
    }
    if (max_id < 0) FAIL("model.vocab is empty");
    t->n_ids = (int32_t)(max_id + 1);
    t->tok = calloc((size_t)t->n_ids, sizeof *t->tok);
    t->added = calloc(n_added ? n_added : 1, sizeof *t->added);
    if (!t->tok || !t->added) FAIL("out of memory");
    for (size_t i = 0; i < vocab->n; i++) {
        int32_t id = (int32_t)vocab->items[i].num;
        struct tok_token *k = &t->tok[id];
        if (k->present) continue;
        k->text_off = pool_add(t, vocab->keys[i], vocab->key_lens[i]);
        if (k->text_off == UINT32_MAX) FAIL("out of memory");
        k->text_len = (uint32_t)vocab->key_lens[i];
        k->present = k->in_model = 1;
    }
    for (size_t i = 0; i < n_added; i++) {
        const struct ejson *a = &added->items[i];
        struct tok_added *ad = &t->added[t->n_added];
        long long id;
        ejson_get_int(a, "id", &id);
        const struct ejson *content = ejson_get(a, "content");
        if (content->str_len == 0) continue;
        ad->id = (int32_t)id;
        ad->off = pool_add(t, content->str, content->str_len);
        if (ad->off == UINT32_MAX) FAIL("out of memory");
        ad->len = (uint32_t)content->str_len;
        ad->special = (uint8_t)ejson_get_bool(a, "special", 0);
        ad->lstrip = (uint8_t)ejson_get_bool(a, "lstrip", 0);
        ad->rstrip = (uint8_t)ejson_get_bool(a, "rstrip", 0);
        ad->single_word = (uint8_t)ejson_get_bool(a, "single_word", 0);
        ad->normalized = (uint8_t)ejson_get_bool(a, "normalized", !ad->special);
        if (ad->special && ad->normalized) t->norm_special = 1;
        struct tok_token *k = &t->tok[id];
        if (!k->present) {
            k->text_off = ad->off;
            k->text_len = ad->len;
            k->present = 1;
        }
        k->special = ad->special;
        t->n_added++;
    }
    if (load_normalizer(t, ejson_get(root, "normalizer"), err, errlen) < 0) return -1;
    /* normalized added tokens are matched in normalized text by their normalized content */
    for (size_t i = 0; i < t->n_added; i++) {
        struct tok_added *ad = &t->added[i];
        if (!ad->normalized || !t->n_norm) continue;
        char *nc;
        size_t nl;
        if (normalize(t, t->pool + ad->off, ad->len, 1, &nc, &nl) < 0) FAIL("out of memory");
        if (nc) {
            ad->off = pool_add(t, nc, nl);
            ad->len = (uint32_t)nl;
            free(nc);
            if (ad->off == UINT32_MAX) FAIL("out of memory");
        }
    }
    for (size_t i = 0; i < t->n_added; i++)
        t->added[i].first = (uint8_t)t->pool[t->added[i].off];
    /* by first byte, longest first: the first hit at a position is the leftmost-longest match */
    qsort(t->added, t->n_added, sizeof *t->added, cmp_added);
    for (size_t c = 0, k = 0; c <= 256; c++) {
        while (k < t->n_added && t->added[k].first < c)
            k++;
        t->added_first[c] = k;
    }

    if (load_pretok(t, ejson_get(root, "pre_tokenizer"), err, errlen) < 0) return -1;
    if (load_decoder(t, ejson_get(root, "decoder"), err, errlen) < 0) return -1;
    if (finish_tokens(t, err, errlen) < 0) return -1;

    if (strmap_init(&t->text_map, (size_t)t->n_ids, 0) < 0 ||
        strmap_init(&t->key_map, (size_t)t->n_ids, 1) < 0)
        FAIL("out of memory");
    for (size_t i = 0; i < t->n_added; i++)
        strmap_add(t, &t->text_map, t->added[i].id);
    for (int32_t id = 0; id < t->n_ids; id++) {
        if (!t->tok[id].present) continue;
        strmap_add(t, &t->text_map, id);
        if (t->tok[id].in_model && t->tok[id].key_len != UINT32_MAX) strmap_add(t, &t->key_map, id);
    }
    for (unsigned b = 0; b < 256; b++) {
        char key[4];
        key[0] = (char)b;
        t->byte_id[b] = strmap_find(t, &t->key_map, key, 1);
        char hx[8];
        snprintf(hx, sizeof hx, "<0x%02X>", b);
        t->byte_tok[b] = strmap_find(t, &t->key_map, hx, 6);
    }
    const char *unk = ejson_get_str(m, "unk_token");
    t->unk_id = unk ? strmap_find(t, &t->key_map, unk, strlen(unk)) : -1;

    size_t nm = merges ? merges->n : 0;
    if (mergemap_init(&t->merges, nm) < 0) FAIL("out of memory");
    char *scratch = NULL;
    size_t scap = 0;
    for (size_t r = 0; r < nm; r++) {
        const struct ejson *mg = &merges->items[r];
        const char *a, *b;
        size_t al, bl;
        if (mg->type == EJSON_STRING) {
            const char *sp = memchr(mg->str, ' ', mg->str_len);
            if (!sp) {
                free(scratch);
                FAIL("model.merges[%zu]: \"%.60s\" is not \"left right\"", r, mg->str);
            }
            a = mg->str;
            al = (size_t)(sp - mg->str);
            b = sp + 1;
            bl = mg->str_len - al - 1;
        } else if (mg->type == EJSON_ARRAY && mg->n == 2 && mg->items[0].type == EJSON_STRING &&
                   mg->items[1].type == EJSON_STRING) {
            a = mg->items[0].str;
            al = mg->items[0].str_len;
            b = mg->items[1].str;
            bl = mg->items[1].str_len;
        } else {
            free(scratch);
            FAIL("model.merges[%zu]: expected \"left right\" or [\"left\", \"right\"]", r);
        }
        if (al + bl + 1 > scap) {
            scap = (al + bl) * 2 + 64;
            char *ns = realloc(scratch, scap * 2);
            if (!ns) {
                free(scratch);
                FAIL("out of memory");
            }
            scratch = ns;
        }
        char *cat = scratch + scap; /* second half: the concatenation */
        int32_t ia = model_text_id(t, a, al, scratch);
        int32_t ib = model_text_id(t, b, bl, scratch);
        memcpy(cat, a, al);
        memcpy(cat + al, b, bl);
        int32_t ic = model_text_id(t, cat, al + bl, scratch);
        if (ia < 0 || ib < 0 || ic < 0) {
            const char *bad = ia < 0 ? a : ib < 0 ? b : cat;
            size_t bl2 = ia < 0 ? al : ib < 0 ? bl : al + bl;
            set_err(err, errlen, "model.merges[%zu]: token \"%.*s\" is not in the vocabulary", r,
                    (int)(bl2 > 120 ? 120 : bl2), bad);
            free(scratch);
            return -1;
        }
        mergemap_add(&t->merges, ia, ib, (uint32_t)r, ic);
    }
    free(scratch);
    return 0;
}

int tokenizer_load_json(const char *tokenizer_json, size_t len, const char *config_json,
                        size_t config_len, struct tokenizer **out, char *err, size_t errlen)
{
    char jerr[256];
    *out = NULL;
    struct ejson_doc *doc = ejson_parse(tokenizer_json, len, jerr, sizeof jerr);
    if (!doc) {
        set_err(err, errlen, "tokenizer.json: %s", jerr);
        return -1;
    }
    struct ejson_doc *cdoc = NULL;
    if (config_json) {
        cdoc = ejson_parse(config_json, config_len, jerr, sizeof jerr);
        if (!cdoc) {
            set_err(err, errlen, "tokenizer_config.json: %s", jerr);
            ejson_free(doc);
            return -1;
        }
    }
    struct tokenizer *t = calloc(1, sizeof *t);
    char msg[512];
    if (!t) {
        set_err(err, errlen, "out of memory");
        goto fail;
    }
    t->bos = t->eos = t->unk_id = -1;
    const struct ejson *root = ejson_root(doc);
    if (root->type != EJSON_OBJECT) {
        set_err(err, errlen, "tokenizer.json: top level is not an object");
        goto fail;
    }
    if (load_model(t, root, msg, sizeof msg) < 0 ||
        load_config(t, cdoc ? ejson_root(cdoc) : NULL, ejson_get(root, "post_processor"), msg,
                    sizeof msg) < 0) {
        set_err(err, errlen, "%s%s", strncmp(msg, "tokenizer", 9) ? "tokenizer.json: " : "", msg);
        goto fail;
    }
    ejson_free(doc);
    ejson_free(cdoc);
    *out = t;
    return 0;
fail:
    tokenizer_free(t);
    ejson_free(doc);
    ejson_free(cdoc);
    return -1;
}

static char *read_file(const char *path, size_t *len)
{
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    char *buf = NULL;
    size_t n = 0, cap = 0;
    struct stat st;
    if (fstat(fileno(f), &st) == 0 && st.st_size > 0)
        cap = (size_t)st.st_size + 65536; /* one allocation for regular files */
    if (cap && !(buf = malloc(cap))) cap = 0;
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            char *nb = realloc(buf, cap);
            if (!nb) {
                free(buf);
                fclose(f);
                return NULL;
            }
            buf = nb;
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        free(buf);
        return NULL;
    }
    *len = n;
    return buf;
}

int tokenizer_load(const char *model_dir, struct tokenizer **out, char *err, size_t errlen)
{
    char path[4096];
    size_t len = 0, clen = 0;
    *out = NULL;
    snprintf(path, sizeof path, "%s/tokenizer.json", model_dir);
    char *tj = read_file(path, &len);
    if (!tj) {
        set_err(err, errlen, "%s: cannot read", path);
        return -1;
    }
    snprintf(path, sizeof path, "%s/tokenizer_config.json", model_dir);
    char *cj = read_file(path, &clen);
    char msg[512];
    int rc = tokenizer_load_json(tj, len, cj, clen, out, msg, sizeof msg);
    if (rc < 0) set_err(err, errlen, "%s: %s", model_dir, msg);
    free(tj);
    free(cj);
    return rc;
}
