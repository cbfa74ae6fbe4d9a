/* Token sampling for one sequence: presence/frequency penalties, temperature, top-k, top-p, and
 * a per-sequence PRNG (xoshiro256** seeded through splitmix64) so that a request's seed gives the
 * same tokens however it is batched. Greedy (argmax, lowest id on ties) when temperature is 0.
 * Engine core: libc and libm only. */
#ifndef LLMGATE_ENGINE_SAMPLER_H
#define LLMGATE_ENGINE_SAMPLER_H

#include <stddef.h>
#include <stdint.h>

struct sampler_params {
    float temperature;       /* 0 = greedy; OpenAI allows 0..2 */
    float top_p;             /* nucleus mass in (0, 1]; 1 = off */
    int top_k;               /* keep the k most likely tokens; 0 = off */
    float presence_penalty;  /* subtracted once from every token already generated */
    float frequency_penalty; /* subtracted per occurrence in the generated tokens */
    uint64_t seed;           /* PRNG seed; the same seed gives the same draws */
};

/* Defaults: temperature 1, top_p 1, top_k 0, no penalties, seed 0. */
void sampler_params_default(struct sampler_params *p);

/* xoshiro256** state. */
struct sampler_rng {
    uint64_t s[4];
};

/* Seeds r from seed (splitmix64 expansion; every seed gives a valid state). */
void sampler_rng_seed(struct sampler_rng *r, uint64_t seed);
/* Next 64 random bits. */
uint64_t sampler_rng_next(struct sampler_rng *r);
/* Uniform double in [0, 1). */
double sampler_rng_uniform(struct sampler_rng *r);

/* A candidate token during top-k / top-p filtering. */
struct sampler_cand {
    float p;
    int32_t id;
};

struct sampler {
    struct sampler_params params;
    struct sampler_rng rng;
    int vocab;
    uint32_t *counts;          /* (vocab) occurrences of each id among the generated tokens */
    int penalised;             /* any count is non-zero and a penalty is set */
    struct sampler_cand *cand; /* (vocab) scratch */
};

/* Prepares s for a vocabulary of vocab ids. 0, or -1 (bad vocab, out of memory). Release with
 * sampler_release. */
int sampler_init(struct sampler *s, const struct sampler_params *p, int vocab);

/* Frees the scratch; s may be initialised again afterwards. */
void sampler_release(struct sampler *s);

/* Records that id was generated (feeds the penalties). Out-of-range ids are ignored. */
void sampler_accept(struct sampler *s, int32_t id);

/* Picks the next token from logits (vocab floats, modified in place). Always returns an id in
 * 0 .. vocab-1; NaN logits are never chosen unless every logit is NaN. */
int32_t sampler_sample(struct sampler *s, float *logits);

/* Greedy choice over logits: the highest value, lowest id on ties. */
int32_t sampler_argmax(const float *logits, int n);

#endif
