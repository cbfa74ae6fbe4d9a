/* Pieces of the tokenizer shared between tokenizer.c and tokenizer_synth.c; not a public API. */
#ifndef LLMGATE_ENGINE_TOKENIZER_INTERNAL_H
#define LLMGATE_ENGINE_TOKENIZER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>

/* The pre-tokenizer split patterns recognised in tokenizer.json. */
enum tok_split { TOK_SPLIT_NONE, TOK_SPLIT_GPT2, TOK_SPLIT_LLAMA3, TOK_SPLIT_QWEN2 };

extern const char tok_pattern_gpt2[], tok_pattern_llama3[], tok_pattern_qwen2[];

/* Calls fn(arg, start, end) for each piece (byte offsets) the pattern cuts text[0..len) into.
 * Returns 0, or -1 on allocation failure. */
int tok_pretokenize(enum tok_split kind, const char *text, size_t len,
                    void (*fn)(void *arg, size_t start, size_t end), void *arg);

/* GPT-2's byte -> printable character map (bytes_to_unicode) and its inverse (-1: none). */
uint32_t tok_byte_to_cp(unsigned b);
int tok_cp_to_byte(uint32_t cp);

#endif
