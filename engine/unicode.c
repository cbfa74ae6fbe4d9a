/* UTF-8 decoding, character classes and NFC for the tokenizer (tables in unicode_data.c). */
#include "engine/unicode.h"

#include <stdlib.h>
#include <string.h>

size_t uni_decode(const unsigned char *s, size_t n, uint32_t *cp)
{
    unsigned c = s[0];
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c < 0xE0) {
        if (n >= 2 && (s[1] & 0xC0) == 0x80) {
            *cp = ((c & 0x1Fu) << 6) | (s[1] & 0x3Fu);
            return 2;
        }
    } else if (c >= 0xE0 && c < 0xF0) {
        if (n >= 3 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 &&
            !(c == 0xE0 && s[1] < 0xA0) && !(c == 0xED && s[1] >= 0xA0)) {
            *cp = ((c & 0x0Fu) << 12) | ((s[1] & 0x3Fu) << 6) | (s[2] & 0x3Fu);
            return 3;
        }
    } else if (c >= 0xF0 && c < 0xF5) {
        if (n >= 4 && (s[1] & 0xC0) == 0x80 && (s[2] & 0xC0) == 0x80 && (s[3] & 0xC0) == 0x80 &&
            !(c == 0xF0 && s[1] < 0x90) && !(c == 0xF4 && s[1] >= 0x90)) {
            *cp = ((c & 0x07u) << 18) | ((s[1] & 0x3Fu) << 12) | ((s[2] & 0x3Fu) << 6) |
                  (s[3] & 0x3Fu);
            return 4;
        }
    }
    *cp = UNI_BAD_BYTE + c;
    return 1;
}

size_t uni_encode(uint32_t cp, char *o)
{
    if (cp < 0x80) {
        o[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (char)(0xC0 | (cp >> 6));
        o[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (char)(0xE0 | (cp >> 12));
        o[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (char)(0xF0 | (cp >> 18));
    o[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

static int in_ranges(const struct uni_range *r, size_t n, uint32_t cp)
{
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < r[mid].lo)
            hi = mid;
        else if (cp > r[mid].hi)
            lo = mid + 1;
        else
            return 1;
    }
    return 0;
}

int uni_is_letter(uint32_t cp)
{
    if (cp < 0x80) return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
    return in_ranges(uni_letter, uni_letter_len, cp);
}

int uni_is_number(uint32_t cp)
{
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    return in_ranges(uni_number, uni_number_len, cp);
}

int uni_is_space(uint32_t cp)
{
    if (cp < 0x80) return cp == ' ' || (cp >= 0x09 && cp <= 0x0D);
    return in_ranges(uni_space, uni_space_len, cp);
}

int uni_ccc_of(uint32_t cp)
{
    if (cp < 0x300) return 0;
    size_t lo = 0, hi = uni_ccc_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_ccc[mid].lo)
            hi = mid;
        else if (cp > uni_ccc[mid].hi)
            lo = mid + 1;
        else
            return uni_ccc[mid].ccc;
    }
    return 0;
}

/* ---------------------------------------------------------------- NFC */

#define H_SBASE  0xAC00u
#define H_LBASE  0x1100u
#define H_VBASE  0x1161u
#define H_TBASE  0x11A7u
#define H_LCOUNT 19u
#define H_VCOUNT 21u
#define H_TCOUNT 28u
#define H_NCOUNT (H_VCOUNT * H_TCOUNT)
#define H_SCOUNT (H_LCOUNT * H_NCOUNT)

static const struct uni_decomp *find_decomp(uint32_t cp)
{
    size_t lo = 0, hi = uni_decomp_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (cp < uni_decomp[mid].cp)
            hi = mid;
        else if (cp > uni_decomp[mid].cp)
            lo = mid + 1;
        else
            return &uni_decomp[mid];
    }
    return NULL;
}

static uint32_t compose_pair(uint32_t a, uint32_t b)
{
    if (a >= H_LBASE && a < H_LBASE + H_LCOUNT && b >= H_VBASE && b < H_VBASE + H_VCOUNT)
        return H_SBASE + ((a - H_LBASE) * H_VCOUNT + (b - H_VBASE)) * H_TCOUNT;
    if (a >= H_SBASE && a < H_SBASE + H_SCOUNT && (a - H_SBASE) % H_TCOUNT == 0 && b > H_TBASE &&
        b < H_TBASE + H_TCOUNT)
        return a + (b - H_TBASE);
    size_t lo = 0, hi = uni_comp_len;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        const struct uni_comp *c = &uni_comp[mid];
        if (a < c->a || (a == c->a && b < c->b))
            hi = mid;
        else if (a > c->a || b > c->b)
            lo = mid + 1;
        else
            return c->cp;
    }
    return 0;
}

struct cpbuf {
    uint32_t *v;
    size_t n, cap;
};

static int cp_push(struct cpbuf *b, uint32_t cp)
{
    if (b->n == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 64;
        uint32_t *nv = realloc(b->v, cap * sizeof *nv);
        if (!nv) return -1;
        b->v = nv;
        b->cap = cap;
    }
    b->v[b->n++] = cp;
    return 0;
}

static int decompose(struct cpbuf *b, uint32_t cp, int depth)
{
    if (cp >= H_SBASE && cp < H_SBASE + H_SCOUNT) {
        uint32_t si = cp - H_SBASE;
        if (cp_push(b, H_LBASE + si / H_NCOUNT) < 0) return -1;
        if (cp_push(b, H_VBASE + (si % H_NCOUNT) / H_TCOUNT) < 0) return -1;
        if (si % H_TCOUNT && cp_push(b, H_TBASE + si % H_TCOUNT) < 0) return -1;
        return 0;
    }
    const struct uni_decomp *d = depth < 8 && cp < UNI_BAD_BYTE ? find_decomp(cp) : NULL;
    if (!d) return cp_push(b, cp);
    if (decompose(b, d->a, depth + 1) < 0) return -1;
    return d->b ? decompose(b, d->b, depth + 1) : 0;
}

static int ccc_any(uint32_t cp)
{
    return cp >= UNI_BAD_BYTE ? 0 : uni_ccc_of(cp);
}

/* Runs of non-starters up to this long are insertion-sorted; longer ones are counted. */
#define ORDER_SHORT_RUN 32

/* Stable sort of v[0..k) by combining class (cls[i] of v[i], all nonzero) in O(k + 256),
 * through tmp (room for k). */
static void order_long_run(uint32_t *v, const uint8_t *cls, size_t k, uint32_t *tmp)
{
    size_t start[257] = {0};
    for (size_t i = 0; i < k; i++)
        start[cls[i] + 1]++;
    for (int c = 1; c <= 256; c++)
        start[c] += start[c - 1];
    for (size_t i = 0; i < k; i++)
        tmp[start[cls[i]]++] = v[i];
    memcpy(v, tmp, k * sizeof *v);
}

/* Canonical ordering: a stable sort of every run of non-starters by combining class. A run
 * of k marks costs O(k) even when k is huge: text like "a" + 40k alternating marks must not
 * stall the engine's loop (insertion sort made it quadratic). Returns -1 on OOM. */
static int canonical_order(uint32_t *v, size_t n)
{
    uint32_t *tmp = NULL;
    uint8_t *cls = NULL;
    for (size_t i = 0; i < n;) {
        if (ccc_any(v[i]) == 0) {
            i++;
            continue;
        }
        size_t end = i + 1;
        while (end < n && ccc_any(v[end]) != 0)
            end++;
        size_t k = end - i;
        if (k <= ORDER_SHORT_RUN) {
            for (size_t j = i + 1; j < end; j++) {
                uint32_t x = v[j];
                int c = ccc_any(x);
                size_t p = j;
                while (p > i && ccc_any(v[p - 1]) > c) {
                    v[p] = v[p - 1];
                    p--;
                }
                v[p] = x;
            }
        } else {
            if (!tmp) {
                tmp = malloc(n * sizeof *tmp);
                cls = malloc(n);
                if (!tmp || !cls) {
                    free(tmp);
                    free(cls);
                    return -1;
                }
            }
            for (size_t j = 0; j < k; j++)
                cls[j] = (uint8_t)ccc_any(v[i + j]);
            order_long_run(v + i, cls, k, tmp);
        }
        i = end;
    }
    free(tmp);
    free(cls);
    return 0;
}

int uni_nfc(const char *s, size_t n, char **out, size_t *out_len)
{
    const unsigned char *u = (const unsigned char *)s;
    *out = NULL;
    *out_len = n;
    int unsafe = 0;
    for (size_t i = 0; i < n && !unsafe;) {
        if (u[i] < 0xCC) { /* below U+0300 everything is NFC-stable */
            i++;
            continue;
        }
        uint32_t cp;
        i += uni_decode(u + i, n - i, &cp);
        if (cp < UNI_BAD_BYTE && in_ranges(uni_nfc_unsafe, uni_nfc_unsafe_len, cp)) unsafe = 1;
    }
    if (!unsafe) return 0;

    struct cpbuf b = {0};
    for (size_t i = 0; i < n;) {
        uint32_t cp;
        i += uni_decode(u + i, n - i, &cp);
        if (decompose(&b, cp, 0) < 0) goto oom;
    }
    if (canonical_order(b.v, b.n) < 0) goto oom;
    /* canonical composition */
    if (b.n > 0) {
        size_t starter = 0, w = 1;
        int last = ccc_any(b.v[0]);
        if (last != 0) last = 256; /* a leading non-starter blocks everything after it */
        for (size_t i = 1; i < b.n; i++) {
            uint32_t ch = b.v[i];
            int cc = ccc_any(ch);
            uint32_t comp =
                (last < cc || last == 0) && b.v[starter] < UNI_BAD_BYTE && ch < UNI_BAD_BYTE
                    ? compose_pair(b.v[starter], ch)
                    : 0;
            if (comp) {
                b.v[starter] = comp;
                continue;
            }
            if (cc == 0) starter = w;
            last = cc;
            b.v[w++] = ch;
        }
        b.n = w;
    }
    char *o = malloc(b.n * 4 + 1);
    if (!o) goto oom;
    size_t len = 0;
    for (size_t i = 0; i < b.n; i++) {
        if (b.v[i] >= UNI_BAD_BYTE)
            o[len++] = (char)(b.v[i] - UNI_BAD_BYTE);
        else
            len += uni_encode(b.v[i], o + len);
    }
    o[len] = '\0';
    free(b.v);
    *out = o;
    *out_len = len;
    return 0;
oom:
    free(b.v);
    return -1;
}

/* ---------------------------------------------------------------- byte streams */

/* Expected length of the sequence led by c and the valid range of its second byte. */
static int utf8_lead(unsigned c, unsigned *lo, unsigned *hi)
{
    *lo = 0x80;
    *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c == 0xE0) *lo = 0xA0;
    if (c == 0xED) *hi = 0x9F;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c == 0xF0) *lo = 0x90;
    if (c == 0xF4) *hi = 0x8F;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

/* Number of bytes after s[0] that continue a valid prefix of its sequence (<= len - 1). */
static size_t utf8_valid_tail(const unsigned char *s, size_t n, int len, unsigned lo, unsigned hi)
{
    size_t k = 1;
    while (k < (size_t)len && k < n) {
        unsigned c = s[k];
        if (k == 1 ? (c < lo || c > hi) : (c & 0xC0) != 0x80) break;
        k++;
    }
    return k - 1;
}

size_t uni_complete_prefix(const unsigned char *s, size_t n)
{
    size_t back = n > 3 ? n - 3 : 0;
    for (size_t i = n; i > back; i--) {
        unsigned c = s[i - 1];
        if ((c & 0xC0) == 0x80) continue;
        unsigned lo, hi;
        int len = utf8_lead(c, &lo, &hi);
        size_t have = n - (i - 1);
        if (len > 1 && have < (size_t)len &&
            utf8_valid_tail(s + i - 1, have, len, lo, hi) == have - 1)
            return i - 1;
        return n;
    }
    return n;
}

size_t uni_lossy(const unsigned char *s, size_t n, char *o)
{
    size_t w = 0;
    for (size_t i = 0; i < n;) {
        unsigned c = s[i];
        if (c < 0x80) {
            o[w++] = (char)c;
            i++;
            continue;
        }
        unsigned lo, hi;
        int len = utf8_lead(c, &lo, &hi);
        size_t tail = len ? utf8_valid_tail(s + i, n - i, len, lo, hi) : 0;
        if (len && tail == (size_t)len - 1) {
            memcpy(o + w, s + i, (size_t)len);
            w += (size_t)len;
            i += (size_t)len;
        } else {
            memcpy(o + w, "\xEF\xBF\xBD", 3);
            w += 3;
            i += 1 + tail;
        }
    }
    return w;
}
