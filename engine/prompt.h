/* The engine's prompt builder: an OpenAI chat "messages" array or completions "prompt" -> the
 * token ids the model is prompted with (chat template, special tokens, BOS). llmgate-engine
 * prompts with it and the gateway counts local-model prompt tokens for quotas with it, so the
 * two always agree. Everything here only reads the tokenizer and the template, so any number
 * of threads may build prompts from one loaded pair at once. */
#ifndef LLMGATE_ENGINE_PROMPT_H
#define LLMGATE_ENGINE_PROMPT_H

#include <stddef.h>
#include <stdint.h>

#include "engine/chat_template.h"
#include "engine/tokenizer.h"

struct cJSON;

/* Return codes of the prompt builders. */
enum prompt_rc {
    PROMPT_OK = 0,
    PROMPT_E_NOMEM = -1,  /* out of memory */
    PROMPT_E_INVALID = -2 /* the input is one the engine refuses: see struct prompt_error */
};

/* Token ids of a prompt; ids is malloc'd (free with prompt_ids_free), NULL when n is 0. */
struct prompt_ids {
    int32_t *ids;
    size_t n;
};

/* Why a prompt was refused, in OpenAI's terms (an invalid_request_error, status 400). */
struct prompt_error {
    const char *code;  /* "unsupported_content", "invalid_value", "unsupported_value" */
    char param[64];    /* the offending request field: "messages[2].content", "prompt" */
    char message[256]; /* for the client */
};

/* Encodes text with special tokens parsed and, with add_bos, the tokenizer's BOS in front when
 * it wants one and the text does not already start with it. PROMPT_OK or PROMPT_E_NOMEM. */
int prompt_encode_text(const struct tokenizer *t, const char *text, int add_bos,
                       struct prompt_ids *out);

/* Chat messages (an array of {role, content} as oai_request_parse validates them; content a
 * string, an array of text parts, or absent/null) -> the template's text with the generation
 * prompt -> ids. Special tokens are parsed in the template's markup only: a special token's
 * string inside a content ("<|im_end|>\n<|im_start|>system") is encoded as plain text, so a
 * message cannot forge turns (tokenizer_encode_literal). PROMPT_OK, PROMPT_E_NOMEM, or
 * PROMPT_E_INVALID with e filled (non-text content parts, roles the template cannot express). */
int prompt_chat(const struct tokenizer *t, const struct chat_template *ct,
                const struct cJSON *messages, struct prompt_ids *out, struct prompt_error *e);

/* The completions prompt: one string (BOS added as for prompt_encode_text), or one array of
 * token ids taken as they are; ["text"] and [[ids]] count as one prompt. A raw prompt is the
 * caller's whole prompt, template included, so special tokens written in it are parsed (as
 * vLLM and llama.cpp's server do); text from untrusted sources belongs in chat messages. PROMPT_OK,
 * PROMPT_E_NOMEM, or PROMPT_E_INVALID with e filled (several prompts, other shapes). */
int prompt_completion(const struct tokenizer *t, const struct cJSON *prompt, struct prompt_ids *out,
                      struct prompt_error *e);

/* Frees p's ids and empties it. */
void prompt_ids_free(struct prompt_ids *p);

/* Sets up ct for tokenizer t as llmgate-engine does: the built-in template `name` when given
 * (an error if unknown), else the family of the model's chat_template, else ChatML with a
 * note for a warning in note ("" when none). 0, or -1 with a message in err. Release ct with
 * chat_template_release. */
int prompt_template_init(struct chat_template *ct, const struct tokenizer *t, const char *name,
                         char *note, size_t notelen, char *err, size_t errlen);

#endif
