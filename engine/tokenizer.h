/* The engine's tokenizer: loads a Hugging Face tokenizer.json (byte-level BPE with the GPT-2,
 * Llama-3 or Qwen2 pre-tokenizer, or SentencePiece-style BPE with byte fallback) and encodes
 * and decodes exactly as HF `tokenizers` does. A loaded tokenizer is read-only: encode and
 * decode may run on any number of threads at once.
 *
 * Invalid UTF-8 in the input is not an error: each undecodable byte is treated as one
 * character of its own (neither letter, number nor space). Byte-level BPE encodes it as its
 * raw byte token; SentencePiece-style BPE as its <0xNN> byte-fallback token. Decoding turns
 * invalid sequences into U+FFFD, as HF does, so every decoded string is valid UTF-8. */
#ifndef LLMGATE_ENGINE_TOKENIZER_H
#define LLMGATE_ENGINE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

struct tokenizer;

/* Loads model_dir/tokenizer.json and, when present, model_dir/tokenizer_config.json
 * (bos/eos tokens, add_bos_token, chat_template). 0 and *out (free with tokenizer_free), or
 * -1 with a message naming the file and the unsupported or malformed construct in err. */
int tokenizer_load(const char *model_dir, struct tokenizer **out, char *err, size_t errlen);

/* Same from in-memory JSON texts; config_json may be NULL. */
int tokenizer_load_json(const char *tokenizer_json, size_t len, const char *config_json,
                        size_t config_len, struct tokenizer **out, char *err, size_t errlen);

/* Frees the tokenizer; NULL is a no-op. */
void tokenizer_free(struct tokenizer *t);

/* Encodes text[0..len) into a malloc'd id array (*ids, caller frees; NULL when *n is 0).
 * With parse_special, special added tokens written in the text ("<|im_start|>") become their
 * ids; without, they are encoded as plain text (non-special added tokens always match).
 * No BOS is added: see tokenizer_add_bos(). 0 on success, -1 on allocation failure. */
int tokenizer_encode(const struct tokenizer *t, const char *text, size_t len, int parse_special,
                     int32_t **ids, size_t *n);

/* A byte range of a text: off, len. */
struct tok_range {
    size_t off, len;
};

/* tokenizer_encode with parse_special, except that inside the literal ranges (any order,
 * clipped to the text) a special token's string is plain text, as without parse_special.
 * Everything else sees the text whole (normalization, pre-tokenization, merges), so the ids are
 * those of tokenizer_encode(..., 1) whenever no special token's string lies in a literal range.
 * Chat prompts mark what the caller wrote (message contents) literal, so that "<|im_end|>" in a
 * message is text and cannot close its turn. Non-special added tokens match everywhere, as in
 * HF. Same ownership and return as tokenizer_encode. */
int tokenizer_encode_literal(const struct tokenizer *t, const char *text, size_t len,
                             const struct tok_range *literal, size_t n_literal, int32_t **ids,
                             size_t *n);

/* Decodes ids into a malloc'd NUL-terminated UTF-8 string (*out, caller frees), as HF's
 * decode(ids, skip_special_tokens=False). Out-of-range ids are skipped. 0 ok, -1 no memory. */
int tokenizer_decode(const struct tokenizer *t, const int32_t *ids, size_t n, char **out,
                     size_t *out_len);

#define TOK_DECODE_SKIP_SPECIAL 1 /* leave out special added tokens (HF skip_special_tokens) */

/* tokenizer_decode with TOK_DECODE_* flags. */
int tokenizer_decode_ex(const struct tokenizer *t, const int32_t *ids, size_t n, int flags,
                        char **out, size_t *out_len);

/* Streaming detokenizer: turns generated ids into text pieces one id at a time and never
 * emits part of a UTF-8 character (incomplete sequences wait for the next id; invalid ones
 * become U+FFFD). Plain struct, no allocation; one per sequence. */
struct tokenizer_stream {
    const struct tokenizer *t;
    int flags;             /* TOK_DECODE_* */
    int at_start;          /* nothing emitted yet (SentencePiece strips one leading space) */
    int stripped;          /* leading spaces stripped so far */
    unsigned char pend[4]; /* incomplete UTF-8 sequence held back */
    size_t npend;
};

/* Starts a stream for the text of a generated sequence (decoded as HF decodes those ids). */
void tokenizer_decode_stream_init(struct tokenizer_stream *s, const struct tokenizer *t, int flags);

/* Bytes a push or flush may write at most; size the out buffer with this. */
size_t tokenizer_decode_stream_max(const struct tokenizer *t);

/* Feeds one id; writes the text it completes to out (cap bytes, see tokenizer_decode_stream_max)
 * and its length to *out_len (0 when the id only starts a character). 0 ok, -1 if cap is too
 * small (nothing consumed). Out-of-range ids produce nothing. */
int tokenizer_decode_stream_push(struct tokenizer_stream *s, int32_t id, char *out, size_t cap,
                                 size_t *out_len);

/* Ends the stream: a held-back incomplete sequence becomes U+FFFD. Same return as push. */
int tokenizer_decode_stream_flush(struct tokenizer_stream *s, char *out, size_t cap,
                                  size_t *out_len);

/* Number of ids (model vocabulary plus added tokens: highest id + 1). */
int32_t tokenizer_vocab_size(const struct tokenizer *t);

/* BOS / EOS ids from tokenizer_config.json (or the post-processor), -1 when there is none. */
int32_t tokenizer_bos(const struct tokenizer *t);
int32_t tokenizer_eos(const struct tokenizer *t);

/* 1 when a raw prompt should start with BOS (add_bos_token, else the post-processor). */
int tokenizer_add_bos(const struct tokenizer *t);

/* The vocabulary string of id as stored in tokenizer.json ("Ġhello", "▁the", "<0x0A>"), owned
 * by the tokenizer, NUL-terminated, length in *len if len is non-NULL; NULL if out of range. */
const char *tokenizer_token_text(const struct tokenizer *t, int32_t id, size_t *len);

/* The raw bytes id decodes to on its own (" hello", "\n"), owned by the tokenizer; may be
 * part of a UTF-8 character. NULL if out of range. */
const char *tokenizer_token_to_piece(const struct tokenizer *t, int32_t id, size_t *len);

/* Id of the token whose vocabulary string is exactly s (added tokens first), or -1. */
int32_t tokenizer_token_id(const struct tokenizer *t, const char *s);

/* 1 if id is an added token marked special (<|im_end|>, <s>), else 0. */
int tokenizer_is_special(const struct tokenizer *t, int32_t id);

/* The chat_template text from tokenizer_config.json (the default one when several are
 * named), owned by the tokenizer, or NULL. */
const char *tokenizer_chat_template(const struct tokenizer *t);

/* BOS / EOS token strings from tokenizer_config.json, owned by the tokenizer, or NULL. */
const char *tokenizer_bos_text(const struct tokenizer *t);
const char *tokenizer_eos_text(const struct tokenizer *t);

/* ---------------------------------------------------------------- synthetic tokenizers */

enum tok_style {
    TOK_QWEN2,  /* byte-level BPE, Qwen2 pattern, NFC, ChatML specials and template */
    TOK_LLAMA3, /* byte-level BPE, Llama-3 pattern, ignore_merges, Llama-3 specials/template */
    TOK_SPM     /* SentencePiece-style BPE with byte fallback, Llama-2 specials/template */
};

/* Writes dir/tokenizer.json and dir/tokenizer_config.json for a tokenizer of exactly
 * vocab_size ids in the given style: byte tokens, merges learned by a small deterministic BPE
 * trainer over a built-in corpus (then filler merges), and the style's special tokens last
 * (first for TOK_SPM). Same arguments give byte-identical files. dir must exist.
 * 0 ok, -1 with a message in err (vocab_size too small, I/O error). */
int tokenizer_write_synthetic(const char *dir, int vocab_size, enum tok_style style, char *err,
                              size_t errlen);

#endif
