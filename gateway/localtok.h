/* Exact prompt token counts for local providers: the engine's tokenizer and chat template,
 * loaded for every `local` provider that has `model_dir` when a config snapshot is built,
 * shared read-only by the workers, and counted with engine/prompt.c, the code llmgate-engine
 * itself prompts with. Providers without one (or whose tokenizer failed to load) keep the
 * chars/4 estimate of quota_estimate(). */
#ifndef LLMGATE_GATEWAY_LOCALTOK_H
#define LLMGATE_GATEWAY_LOCALTOK_H

#include "gateway/config.h"
#include "gateway/openai.h"

/* Larger prompts (UTF-8 code points, oai_request.prompt_chars) are estimated, not tokenized:
 * the count runs on the worker's event loop. Measured on the 2-core dev box with a
 * 151k-vocabulary byte-level BPE: ~16 MB/s on prose (100 KB in 6 ms), ~3.6 MB/s at worst (one
 * 100 KB word, random CJK), so this bound keeps one count under ~60 ms. */
#define LOCALTOK_MAX_CHARS 65536

struct localtok;

/* Points provider->tok of every `local` provider of cfg with model_dir at its tokenizer and
 * chat template (chat_template override honoured, ChatML fallback as the engine does), one
 * reference each; a pair already loaded for the same directory, unchanged files and template
 * is shared instead of loaded again. A tokenizer that cannot be loaded is one warning and a
 * NULL tok (the estimate is used): it never fails the snapshot. Main thread, before the
 * snapshot is published. */
void localtok_attach(struct config *cfg);

/* Drops one reference (config_free does, for each provider); the last one frees the pair.
 * Any thread. NULL is a no-op. */
void localtok_release(struct localtok *lt);

/* The prompt tokens of a parsed chat or completions request as the engine will count them
 * (chat: the templated messages; completions: the prompt string with BOS, or its token ids).
 * 0 with the count in *n; -1 when lt is NULL, the request is embeddings, larger than
 * LOCALTOK_MAX_CHARS, one the engine's prompt builder refuses, or memory ran out: use the
 * estimate. Safe on any number of workers at once. */
int localtok_count(const struct localtok *lt, const struct oai_request *o, long *n);

#endif
