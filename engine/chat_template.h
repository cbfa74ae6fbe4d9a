/* Built-in chat templates (ChatML/Qwen, Llama-3, Llama-2, Zephyr): turn a list of messages into
 * the prompt text HF's Jinja chat_template renders for the standard templates, to be encoded
 * with special tokens parsed in the template's own text and not in the messages' contents
 * (chat_template_render reports where those lie). The family is recognised from the model's
 * chat_template text. */
#ifndef LLMGATE_ENGINE_CHAT_TEMPLATE_H
#define LLMGATE_ENGINE_CHAT_TEMPLATE_H

#include <stddef.h>

#include "engine/tokenizer.h"

enum chat_tmpl_kind { CHAT_TMPL_CHATML, CHAT_TMPL_LLAMA3, CHAT_TMPL_LLAMA2, CHAT_TMPL_ZEPHYR };

struct chat_template {
    enum chat_tmpl_kind kind;
    char *default_system; /* ChatML: system prompt used when none is given (Qwen), or NULL */
    int qwen_tools;       /* ChatML: tool results go in a user turn as <tool_response> (Qwen2.5) */
    int llama31_system;   /* Llama-3.1+: always a system header with the knowledge/today dates */
    char *bos, *eos;      /* token strings the template uses (bos_token, eos_token), may be NULL */
};

struct chat_msg {
    const char *role; /* "system", "user", "assistant" or "tool" */
    const char *content;
};

/* Sets up ct from the model's chat_template text (may be NULL) or, when name is non-NULL, from
 * a built-in name: "chatml", "qwen2.5", "llama3", "llama3.1", "llama2", "zephyr". bos/eos are
 * the tokenizer's BOS/EOS strings (may be NULL). 0 ok; -1 with a message in err when the text
 * is of no known family or the name is unknown. Release with chat_template_release. */
int chat_template_init(struct chat_template *ct, const char *tmpl_text, const char *name,
                       const char *bos, const char *eos, char *err, size_t errlen);

/* Frees what chat_template_init allocated. */
void chat_template_release(struct chat_template *ct);

/* "chatml", "llama3", "llama2" or "zephyr". */
const char *chat_template_kind_name(enum chat_tmpl_kind k);

/* Renders msgs into a malloc'd NUL-terminated prompt (*out, caller frees; length in *out_len
 * if non-NULL). add_generation_prompt appends the assistant header. 0 ok; -1 with a message in
 * err for an unknown role, roles that the template cannot express (Llama-2 needs alternating
 * user/assistant turns) or no memory. */
int chat_template_apply(const struct chat_template *ct, const struct chat_msg *msgs, size_t n,
                        int add_generation_prompt, char **out, size_t *out_len, char *err,
                        size_t errlen);

/* chat_template_apply that also says where the caller's text (message contents) lies in *out:
 * *literal (malloc'd, caller frees; NULL when *n_literal is 0), in order, for
 * tokenizer_encode_literal. The template's markup (role headers, <|im_end|>, BOS/EOS, the
 * default system prompt) is outside every range. Same return as chat_template_apply. */
int chat_template_render(const struct chat_template *ct, const struct chat_msg *msgs, size_t n,
                         int add_generation_prompt, char **out, size_t *out_len,
                         struct tok_range **literal, size_t *n_literal, char *err, size_t errlen);

#endif
