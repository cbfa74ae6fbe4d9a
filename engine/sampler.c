/* Token sampling: penalties, temperature, top-k (a bounded heap), top-p (a cutoff that is exact,
 * then a sort of the survivors) and one draw from the per-sequence xoshiro256** stream. */
#include "engine/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sampler_params_default(struct sampler_params *p)
{
    *p = (struct sampler_params){.temperature = 1.0f, .top_p = 1.0f};
}

/* ---- PRNG ------------------------------------------------------------------------------------ */

static uint64_t splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

void sampler_rng_seed(struct sampler_rng *r, uint64_t seed)
{
    uint64_t x = seed;
    for (int i = 0; i < 4; i++)
        r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
    return (x << k) | (x >> (64 - k));
}

uint64_t sampler_rng_next(struct sampler_rng *r)
{
    uint64_t *s = r->s;
    uint64_t out = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return out;
}

double sampler_rng_uniform(struct sampler_rng *r)
{
    return (double)(sampler_rng_next(r) >> 11) * 0x1.0p-53;
}

/* ---- sampler --------------------------------------------------------------------------------- */

int sampler_init(struct sampler *s, const struct sampler_params *p, int vocab)
{
    memset(s, 0, sizeof *s);
    if (vocab < 1) return -1;
    s->params = *p;
    s->vocab = vocab;
    s->counts = calloc((size_t)vocab, sizeof *s->counts);
    s->cand = malloc((size_t)vocab * sizeof *s->cand);
    if (!s->counts || !s->cand) {
        sampler_release(s);
        return -1;
    }
    sampler_rng_seed(&s->rng, p->seed);
    return 0;
}

void sampler_release(struct sampler *s)
{
    free(s->counts);
    free(s->cand);
    s->counts = NULL;
    s->cand = NULL;
}

void sampler_accept(struct sampler *s, int32_t id)
{
    if (id < 0 || id >= s->vocab) return;
    if (s->counts[id] < UINT32_MAX) s->counts[id]++;
    s->penalised = s->params.presence_penalty != 0.0f || s->params.frequency_penalty != 0.0f;
}

int32_t sampler_argmax(const float *logits, int n)
{
    int32_t best = 0;
    float bv = -INFINITY;
    int found = 0;
    for (int i = 0; i < n; i++) {
        if (isnan(logits[i])) continue;
        if (!found || logits[i] > bv) {
            best = i;
            bv = logits[i];
            found = 1;
        }
    }
    return best;
}

/* OpenAI's penalties: logit -= count * frequency + (count > 0) * presence. */
static void apply_penalties(const struct sampler *s, float *logits)
{
    const float fp = s->params.frequency_penalty, pp = s->params.presence_penalty;
    for (int i = 0; i < s->vocab; i++)
        if (s->counts[i]) logits[i] -= (float)s->counts[i] * fp + pp;
}

/* Higher p first, then lower id: a total order, so the draw does not depend on qsort. */
static int cand_cmp(const void *a, const void *b)
{
    const struct sampler_cand *x = a, *y = b;
    if (x->p > y->p) return -1;
    if (x->p < y->p) return 1;
    return (x->id > y->id) - (x->id < y->id);
}

/* "x ranks below y" in cand_cmp's order. */
static int cand_below(const struct sampler_cand *x, const struct sampler_cand *y)
{
    return cand_cmp(x, y) > 0;
}

static void heap_sift_down(struct sampler_cand *h, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, m = i;
        if (l < n && cand_below(&h[l], &h[m])) m = l;
        if (r < n && cand_below(&h[r], &h[m])) m = r;
        if (m == i) return;
        struct sampler_cand t = h[i];
        h[i] = h[m];
        h[m] = t;
        i = m;
    }
}

/* Keeps the k best of c[0..n) in c[0..k) with a min-heap of size k: O(n log k). */
static int keep_top_k(struct sampler_cand *c, int n, int k)
{
    if (k <= 0 || k >= n) return n;
    for (int i = k / 2 - 1; i >= 0; i--)
        heap_sift_down(c, k, i);
    for (int i = k; i < n; i++) {
        if (cand_below(&c[0], &c[i])) {
            c[0] = c[i];
            heap_sift_down(c, k, 0);
        }
    }
    return k;
}

int32_t sampler_sample(struct sampler *s, float *logits)
{
    const struct sampler_params *p = &s->params;
    if (s->penalised) apply_penalties(s, logits);
    if (!(p->temperature > 0.0f)) return sampler_argmax(logits, s->vocab);

    struct sampler_cand *c = s->cand;
    int n = 0;
    const float inv_t = 1.0f / p->temperature;
    for (int i = 0; i < s->vocab; i++)
        if (!isnan(logits[i]) && logits[i] > -INFINITY)
            c[n++] = (struct sampler_cand){logits[i] * inv_t, i};
    if (n == 0) return sampler_argmax(logits, s->vocab);
    n = keep_top_k(c, n, p->top_k);

    /* softmax over the survivors (the values are scaled logits until here) */
    float mx = c[0].p;
    for (int i = 1; i < n; i++)
        if (c[i].p > mx) mx = c[i].p;
    double sum = 0.0;
    for (int i = 0; i < n; i++) {
        c[i].p = expf(c[i].p - mx);
        sum += c[i].p;
    }
    for (int i = 0; i < n; i++)
        c[i].p = (float)(c[i].p / sum);

    double mass = 1.0;
    if (p->top_p > 0.0f && p->top_p < 1.0f && n > 1) {
        /* A token below (1 - top_p) / (n - 1) can never be inside the nucleus: the tokens from
         * it downwards would weigh less than 1 - top_p. Only the others need sorting. */
        float cutoff = (1.0f - p->top_p) / (float)(n - 1);
        int m = 0;
        for (int i = 0; i < n; i++)
            if (c[i].p >= cutoff) c[m++] = c[i];
        if (m == 0) m = n; /* cannot happen with exact arithmetic; keep everything */
        n = m;
        qsort(c, (size_t)n, sizeof *c, cand_cmp);
        double cum = 0.0;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= p->top_p) {
                n = i + 1;
                break;
            }
        }
        mass = cum;
    } else if (p->top_k > 0) {
        qsort(c, (size_t)n, sizeof *c, cand_cmp); /* heap order is not a useful order */
        mass = 0.0;
        for (int i = 0; i < n; i++)
            mass += c[i].p;
    } else {
        mass = 0.0;
        for (int i = 0; i < n; i++)
            mass += c[i].p;
    }

    double u = sampler_rng_uniform(&s->rng) * mass, cum = 0.0;
    for (int i = 0; i < n; i++) {
        cum += c[i].p;
        if (u < cum) return c[i].id;
    }
    return c[n - 1].id; /* rounding: u landed on the total */
}
