/* The per-worker level-1 response cache: a chained hash table of entries on a
 * doubly linked recency list; the least recently used go first when the byte
 * budget is exceeded, an expired one when it is next looked up. */
#include "cache/rcache_l1.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#define FIRST_BUCKETS 256

struct item {
    struct rcache_l1_entry pub; /* first: the public view casts back to the item */
    struct item *hnext;         /* bucket chain */
    struct item *prev, *next;   /* recency list, most recent first */
    uint64_t hash;
    uint64_t expires_ms;
    size_t bytes; /* accounted: the item, its key, body and SSE */
    char *sse;
    size_t rkey_len;
    char data[]; /* rkey, NUL, body, NUL */
};

struct rcache_l1 {
    struct item **buckets;
    size_t n_buckets; /* a power of two */
    size_t count, bytes, max_bytes;
    struct item *head, *tail; /* most / least recently used */
};

static uint64_t hash_key(const char *s, size_t n)
{
    uint64_t h = 14695981039346656037ull; /* FNV-1a */
    for (size_t i = 0; i < n; i++)
        h = (h ^ (unsigned char)s[i]) * 1099511628211ull;
    return h ^ (h >> 29);
}

struct rcache_l1 *rcache_l1_new(size_t max_bytes)
{
    struct rcache_l1 *l1 = calloc(1, sizeof *l1);
    if (!l1) return NULL;
    if (!(l1->buckets = calloc(FIRST_BUCKETS, sizeof *l1->buckets))) {
        free(l1);
        return NULL;
    }
    l1->n_buckets = FIRST_BUCKETS;
    l1->max_bytes = max_bytes;
    return l1;
}

static void lru_unlink(struct rcache_l1 *l1, struct item *it)
{
    if (it->prev)
        it->prev->next = it->next;
    else
        l1->head = it->next;
    if (it->next)
        it->next->prev = it->prev;
    else
        l1->tail = it->prev;
    it->prev = it->next = NULL;
}

static void lru_push_front(struct rcache_l1 *l1, struct item *it)
{
    it->prev = NULL;
    it->next = l1->head;
    if (l1->head) l1->head->prev = it;
    l1->head = it;
    if (!l1->tail) l1->tail = it;
}

static void item_remove(struct rcache_l1 *l1, struct item *it)
{
    struct item **p = &l1->buckets[it->hash & (l1->n_buckets - 1)];
    while (*p != it)
        p = &(*p)->hnext;
    *p = it->hnext;
    lru_unlink(l1, it);
    l1->count--;
    l1->bytes -= it->bytes;
    free(it->sse);
    free(it);
}

void rcache_l1_free(struct rcache_l1 *l1)
{
    if (!l1) return;
    for (struct item *it = l1->head, *next; it; it = next) {
        next = it->next;
        free(it->sse);
        free(it);
    }
    free(l1->buckets);
    free(l1);
}

/* Evicts least recently used entries until bytes fit, sparing keep. */
static void shrink(struct rcache_l1 *l1, const struct item *keep)
{
    struct item *it = l1->tail;
    while (it && l1->bytes > l1->max_bytes) {
        struct item *prev = it->prev;
        if (it != keep) item_remove(l1, it);
        it = prev;
    }
}

void rcache_l1_set_max_bytes(struct rcache_l1 *l1, size_t max_bytes)
{
    l1->max_bytes = max_bytes;
    shrink(l1, NULL);
}

static struct item *find(struct rcache_l1 *l1, const char *rkey, size_t rkey_len, uint64_t h)
{
    for (struct item *it = l1->buckets[h & (l1->n_buckets - 1)]; it; it = it->hnext)
        if (it->hash == h && it->rkey_len == rkey_len && memcmp(it->data, rkey, rkey_len) == 0)
            return it;
    return NULL;
}

const struct rcache_l1_entry *rcache_l1_get(struct rcache_l1 *l1, const char *rkey, size_t rkey_len,
                                            uint64_t now_ms)
{
    if (!l1->count) return NULL;
    struct item *it = find(l1, rkey, rkey_len, hash_key(rkey, rkey_len));
    if (!it) return NULL;
    if (now_ms >= it->expires_ms) {
        item_remove(l1, it);
        return NULL;
    }
    if (l1->head != it) {
        lru_unlink(l1, it);
        lru_push_front(l1, it);
    }
    return &it->pub;
}

/* Doubles the bucket array when the table is fuller than one entry per bucket;
 * staying at the old size is harmless when memory is short. */
static void maybe_grow(struct rcache_l1 *l1)
{
    if (l1->count < l1->n_buckets) return;
    size_t n = l1->n_buckets * 2;
    struct item **b = calloc(n, sizeof *b);
    if (!b) return;
    for (size_t i = 0; i < l1->n_buckets; i++) {
        for (struct item *it = l1->buckets[i], *next; it; it = next) {
            next = it->hnext;
            it->hnext = b[it->hash & (n - 1)];
            b[it->hash & (n - 1)] = it;
        }
    }
    free(l1->buckets);
    l1->buckets = b;
    l1->n_buckets = n;
}

int rcache_l1_put(struct rcache_l1 *l1, const char *rkey, size_t rkey_len,
                  const struct rcache_entry *e, uint64_t expires_ms)
{
    size_t bytes = sizeof(struct item) + rkey_len + 1 + e->body_len + 1;
    if (bytes > l1->max_bytes) return 1;
    uint64_t h = hash_key(rkey, rkey_len);
    struct item *old = find(l1, rkey, rkey_len, h);
    if (old && old->pub.e.created_ms > e->created_ms) return 1;
    struct item *it = malloc(bytes);
    if (!it) return -1;
    memset(it, 0, sizeof *it);
    it->hash = h;
    it->expires_ms = expires_ms;
    it->bytes = bytes;
    it->rkey_len = rkey_len;
    memcpy(it->data, rkey, rkey_len);
    it->data[rkey_len] = '\0';
    char *body = it->data + rkey_len + 1;
    memcpy(body, e->body, e->body_len);
    body[e->body_len] = '\0';
    it->pub.e = *e;
    it->pub.e.body = body;
    if (old) item_remove(l1, old);
    struct item **b = &l1->buckets[h & (l1->n_buckets - 1)];
    it->hnext = *b;
    *b = it;
    lru_push_front(l1, it);
    l1->count++;
    l1->bytes += bytes;
    shrink(l1, it);
    maybe_grow(l1);
    return 0;
}

int rcache_l1_set_sse(struct rcache_l1 *l1, const struct rcache_l1_entry *le, char *sse, size_t len,
                      size_t usage_off, size_t done_off)
{
    struct item *it = (struct item *)le; /* pub is the item's first member */
    if (it->bytes + len > l1->max_bytes || usage_off > done_off || done_off > len) {
        free(sse);
        return -1;
    }
    free(it->sse);
    l1->bytes -= it->bytes;
    it->bytes = sizeof(struct item) + it->rkey_len + 1 + it->pub.e.body_len + 1 + len;
    l1->bytes += it->bytes;
    it->sse = sse;
    it->pub.sse = sse;
    it->pub.sse_len = len;
    it->pub.sse_usage_off = usage_off;
    it->pub.sse_done_off = done_off;
    shrink(l1, it);
    return 0;
}

void rcache_l1_evict(struct rcache_l1 *l1, const char *rkey, size_t rkey_len)
{
    if (!l1->count) return;
    struct item *it = find(l1, rkey, rkey_len, hash_key(rkey, rkey_len));
    if (it) item_remove(l1, it);
}

size_t rcache_l1_bytes(const struct rcache_l1 *l1)
{
    return l1->bytes;
}

size_t rcache_l1_count(const struct rcache_l1 *l1)
{
    return l1->count;
}
