/* Synthetic tokenizers for random-weight test models: a tiny deterministic BPE trainer over a
 * built-in corpus, then HF-format tokenizer.json / tokenizer_config.json writers. */
#include "engine/tokenizer.h"
#include "engine/tokenizer_internal.h"
#include "engine/unicode.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char synth_corpus[] =
    "The quick brown fox jumps over the lazy dog. The dog was not amused, and the fox ran "
    "away into the forest where the other animals were waiting for the spring to come.\n"
    "Once upon a time there was a little language model. It read many books and learned to "
    "predict the next word. People asked it questions and it answered them as well as it "
    "could. Sometimes it was right, and sometimes it was wrong, but it always tried.\n"
    "You are a helpful assistant. What is the capital of France? The capital of France is "
    "Paris. How many days are there in a week? There are seven days in a week.\n"
    "I'm sure you'll like it. We've seen that they're happy, and she's said it's fine. Don't "
    "worry, I'd say we'll be there on time.\n"
    "def main(args):\n    for i in range(10):\n        print(i, args[i])\n    return 0\n\n"
    "int main(int argc, char **argv) {\n    if (argc > 1) {\n        printf(\"%s\\n\", argv[1]);"
    "\n    }\n    return 0;\n}\n"
    "{\"name\": \"value\", \"items\": [1, 2, 3], \"enabled\": true, \"count\": 42}\n"
    "In 2024, the numbers 1234567890 and 3.14159 and 2.71828 were written 100 times.\n"
    "Machine learning models are trained on large amounts of text data. The training process "
    "adjusts the weights of the network so that the predictions become better over time. "
    "Tokens are the units of text that the model reads and writes.\n"
    "\xe4\xbd\xa0\xe5\xa5\xbd\xef\xbc\x8c\xe4\xb8\x96\xe7\x95\x8c\xe3\x80\x82"
    "\xe4\xbb\x8a\xe5\xa4\xa9\xe5\xa4\xa9\xe6\xb0\x94\xe5\xbe\x88\xe5\xa5\xbd\xe3\x80\x82\n"
    "Bonjour le monde. Hola mundo. Hallo Welt. Ciao mondo. "
    "\xd0\x9f\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xd0\xbc\xd0\xb8\xd1\x80.\n"
    "the the the of of of and and and to to to in in in is is is that that that it it it\n";

/* Simplified Jinja templates carrying each family's markers (chat_template.c recognises them). */
static const char synth_tmpl_chatml[] =
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content']"
    " + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba "
    "Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages "
    "%}{%- if not (message.role == 'system' and loop.first) %}{{- '<|im_start|>' + message.role + "
    "'\\n' + message.content + '<|im_end|>' + '\\n' }}{%- endif %}{%- endfor %}{%- if "
    "add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
static const char synth_tmpl_llama3[] =
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if "
    "add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif "
    "%}";
static const char synth_tmpl_llama2[] =
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set "
    "system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set "
    "system_message = false %}{% endif %}{% for message in loop_messages %}{% if loop.index0 == 0 "
    "and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + "
    "'\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% "
    "endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' "
    "[/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + "
    "eos_token }}{% endif %}{% endfor %}";

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

/* ---------------------------------------------------------------- string set / token list */

struct tokset {
    char **str; /* token bytes (raw bytes for byte-level, UTF-8 for SPM), NUL-terminated */
    size_t *len;
    size_t n, cap;
    int32_t *slots; /* hash: index + 1 */
    size_t mask;
};

static uint64_t hsh(const char *s, size_t n)
{
    uint64_t h = 1469598103934665603ULL;
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

static long tokset_find(const struct tokset *t, const char *s, size_t n)
{
    if (!t->slots) return -1;
    for (size_t i = hsh(s, n) & t->mask;; i = (i + 1) & t->mask) {
        int32_t v = t->slots[i];
        if (!v) return -1;
        if (t->len[v - 1] == n && memcmp(t->str[v - 1], s, n) == 0) return v - 1;
    }
}

static int tokset_rehash(struct tokset *t, size_t cap)
{
    int32_t *ns = calloc(cap, sizeof *ns);
    if (!ns) return -1;
    free(t->slots);
    t->slots = ns;
    t->mask = cap - 1;
    for (size_t k = 0; k < t->n; k++) {
        size_t i = hsh(t->str[k], t->len[k]) & t->mask;
        while (t->slots[i])
            i = (i + 1) & t->mask;
        t->slots[i] = (int32_t)k + 1;
    }
    return 0;
}

/* Appends a token; returns its index or -1 on allocation failure. */
static long tokset_add(struct tokset *t, const char *s, size_t n)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 1024;
        char **ns = realloc(t->str, cap * sizeof *ns);
        if (!ns) return -1;
        t->str = ns;
        size_t *nl = realloc(t->len, cap * sizeof *nl);
        if (!nl) return -1;
        t->len = nl;
        t->cap = cap;
    }
    char *c = malloc(n + 1);
    if (!c) return -1;
    memcpy(c, s, n);
    c[n] = '\0';
    t->str[t->n] = c;
    t->len[t->n] = n;
    t->n++;
    if (!t->slots || t->n * 2 > t->mask) {
        if (tokset_rehash(t, t->slots ? (t->mask + 1) * 2 : 4096) < 0) return -1;
    } else {
        size_t i = hsh(s, n) & t->mask;
        while (t->slots[i])
            i = (i + 1) & t->mask;
        t->slots[i] = (int32_t)t->n;
    }
    return (long)t->n - 1;
}

static void tokset_free(struct tokset *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->str[i]);
    free(t->str);
    free(t->len);
    free(t->slots);
}

/* ---------------------------------------------------------------- trainer */

struct word {
    int32_t *sym; /* token indices */
    size_t n;
    long count;
};

struct trainer {
    struct tokset tok;   /* index = position in the model vocabulary after the base offset */
    struct tokset words; /* distinct pre-tokens */
    struct word *w;
    size_t nw;
    int32_t (*merges)[2];
    size_t nmerges, mcap;
    int spm;
    int failed;
};

static void add_word_cb(void *arg, size_t start, size_t end);

struct word_ctx {
    struct trainer *tr;
    const char *base;
};

static void add_word(struct trainer *tr, const char *s, size_t n)
{
    if (n == 0 || tr->failed) return;
    long k = tokset_find(&tr->words, s, n);
    if (k >= 0) {
        tr->w[k].count++;
        return;
    }
    k = tokset_add(&tr->words, s, n);
    struct word *nw = realloc(tr->w, tr->words.cap * sizeof *nw);
    int32_t *sym = malloc(n * sizeof *sym);
    if (k < 0 || !nw || !sym) {
        if (nw) tr->w = nw;
        free(sym);
        tr->failed = 1;
        return;
    }
    tr->w = nw;
    struct word *w = &tr->w[k];
    w->sym = sym;
    w->n = 0;
    w->count = 1;
    tr->nw = (size_t)k + 1;
    for (size_t i = 0; i < n;) {
        size_t l = 1;
        if (tr->spm) {
            uint32_t cp;
            l = uni_decode((const unsigned char *)s + i, n - i, &cp);
        }
        long id = tokset_find(&tr->tok, s + i, l);
        if (id < 0) id = tokset_add(&tr->tok, s + i, l); /* SPM: new base character */
        if (id < 0) {
            tr->failed = 1;
            return;
        }
        w->sym[w->n++] = (int32_t)id;
        i += l;
    }
}

static void add_word_cb(void *arg, size_t start, size_t end)
{
    struct word_ctx *c = arg;
    add_word(c->tr, c->base + start, end - start);
}

static int add_merge(struct trainer *tr, int32_t a, int32_t b)
{
    if (tr->nmerges == tr->mcap) {
        size_t cap = tr->mcap ? tr->mcap * 2 : 1024;
        int32_t(*nm)[2] = realloc(tr->merges, cap * sizeof *nm);
        if (!nm) return -1;
        tr->merges = nm;
        tr->mcap = cap;
    }
    tr->merges[tr->nmerges][0] = a;
    tr->merges[tr->nmerges][1] = b;
    tr->nmerges++;
    return 0;
}

/* One BPE step: merges the most frequent adjacent pair (ties: smallest ids). 0 merged,
 * 1 nothing left worth merging, -1 allocation failure. */
static int train_step(struct trainer *tr)
{
    /* pair counts in a hash keyed by (a, b) */
    size_t cap = 1 << 16;
    uint64_t *keys = calloc(cap, sizeof *keys);
    long *cnt = calloc(cap, sizeof *cnt);
    if (!keys || !cnt) {
        free(keys);
        free(cnt);
        return -1;
    }
    uint64_t best = 0;
    long best_cnt = 0;
    size_t used = 0;
    for (size_t k = 0; k < tr->nw; k++) {
        const struct word *w = &tr->w[k];
        for (size_t i = 0; i + 1 < w->n; i++) {
            uint64_t key = ((uint64_t)(uint32_t)w->sym[i] << 32 | (uint32_t)w->sym[i + 1]) + 1;
            size_t h = (size_t)((key * 0x9E3779B97F4A7C15ULL) >> 40) & (cap - 1);
            while (keys[h] && keys[h] != key)
                h = (h + 1) & (cap - 1);
            if (!keys[h]) {
                if (++used * 2 > cap) { /* corpus is small: never expected */
                    free(keys);
                    free(cnt);
                    return 1;
                }
                keys[h] = key;
            }
            cnt[h] += w->count;
            if (cnt[h] > best_cnt || (cnt[h] == best_cnt && key < best)) {
                best_cnt = cnt[h];
                best = key;
            }
        }
    }
    free(keys);
    free(cnt);
    if (best_cnt < 2) return 1;
    int32_t a = (int32_t)((best - 1) >> 32), b = (int32_t)((best - 1) & 0xffffffffu);
    size_t la = tr->tok.len[a], lb = tr->tok.len[b];
    char *cat = malloc(la + lb);
    if (!cat) return -1;
    memcpy(cat, tr->tok.str[a], la);
    memcpy(cat + la, tr->tok.str[b], lb);
    long c = tokset_find(&tr->tok, cat, la + lb);
    if (c < 0) c = tokset_add(&tr->tok, cat, la + lb);
    free(cat);
    if (c < 0 || add_merge(tr, a, b) < 0) return -1;
    for (size_t k = 0; k < tr->nw; k++) {
        struct word *w = &tr->w[k];
        size_t o = 0;
        for (size_t i = 0; i < w->n; i++) {
            if (i + 1 < w->n && w->sym[i] == a && w->sym[i + 1] == b) {
                w->sym[o++] = (int32_t)c;
                i++;
            } else {
                w->sym[o++] = w->sym[i];
            }
        }
        w->n = o;
    }
    return 0;
}

/* ---------------------------------------------------------------- JSON output */

static void put_json_str(FILE *f, const char *s, size_t n)
{
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c == '\n') {
            fputs("\\n", f);
        } else if (c < 0x20) {
            fprintf(f, "\\u%04x", c);
        } else {
            fputc(c, f);
        }
    }
    fputc('"', f);
}

/* Token text as stored in tokenizer.json: byte-level mapping for byte-level styles. */
static void put_token(FILE *f, const char *s, size_t n, int byte_level)
{
    if (!byte_level) {
        put_json_str(f, s, n);
        return;
    }
    char buf[4 * 256];
    size_t w = 0;
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        uint32_t cp = tok_byte_to_cp((unsigned char)s[i]);
        if (cp == '"' || cp == '\\') {
            buf[w++] = '\\';
            buf[w++] = (char)cp;
        } else {
            w += uni_encode(cp, buf + w);
        }
        if (w > sizeof buf - 8) {
            fwrite(buf, 1, w, f);
            w = 0;
        }
    }
    fwrite(buf, 1, w, f);
    fputc('"', f);
}

static void put_added(FILE *f, int first, int32_t id, const char *content)
{
    fprintf(f, "%s\n    {\"id\": %d, \"content\": ", first ? "" : ",", id);
    put_json_str(f, content, strlen(content));
    fputs(", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": false, "
          "\"special\": true}",
          f);
}

int tokenizer_write_synthetic(const char *dir, int vocab_size, enum tok_style style, char *err,
                              size_t errlen)
{
    static const char *qwen_sp[] = {"<|endoftext|>", "<|im_start|>", "<|im_end|>"};
    static const char *llama3_sp[] = {"<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                                      "<|end_header_id|>", "<|eot_id|>"};
    static const char *spm_sp[] = {"<unk>", "<s>", "</s>"};
    const char **sp = style == TOK_QWEN2 ? qwen_sp : style == TOK_LLAMA3 ? llama3_sp : spm_sp;
    size_t nsp = style == TOK_QWEN2 ? 3 : style == TOK_LLAMA3 ? 5 : 3;
    int byte_level = style != TOK_SPM;
    struct trainer tr = {0};
    char path[4096];
    FILE *f = NULL;
    int rc = -1;
    tr.spm = !byte_level;

    /* base alphabet */
    if (byte_level) {
        /* in bytes_to_unicode order, as GPT-2 style vocabularies list them */
        for (uint32_t cp = 0; cp < 324; cp++) {
            int b = tok_cp_to_byte(cp);
            char c = (char)b;
            if (b >= 0 && tokset_add(&tr.tok, &c, 1) < 0) goto oom;
        }
    } else if (tokset_add(&tr.tok, "\xe2\x96\x81", 3) < 0) {
        goto oom;
    }
    /* pre-tokenize the corpus line by line */
    for (const char *line = synth_corpus; *line;) {
        const char *nl = strchr(line, '\n');
        size_t len = nl ? (size_t)(nl - line + 1) : strlen(line);
        if (byte_level) {
            struct word_ctx c = {&tr, line};
            if (tok_pretokenize(style == TOK_QWEN2 ? TOK_SPLIT_QWEN2 : TOK_SPLIT_LLAMA3, line, len,
                                add_word_cb, &c) < 0)
                goto oom;
        } else { /* "▁word" pieces, as SentencePiece sees " word" */
            size_t st = 0;
            char wbuf[512];
            for (size_t i = 0; i <= len; i++) {
                if (i == len || line[i] == ' ' || line[i] == '\n') {
                    size_t wl = i - st;
                    if (wl && wl + 3 < sizeof wbuf) {
                        memcpy(wbuf, "\xe2\x96\x81", 3);
                        memcpy(wbuf + 3, line + st, wl);
                        add_word(&tr, wbuf, wl + 3);
                    }
                    st = i + 1;
                }
            }
        }
        if (tr.failed) goto oom;
        line += len;
    }
    size_t base = byte_level ? 0 : 3 + 256; /* SPM: <unk> <s> </s> <0x00>..<0xFF> first */
    size_t fixed = base + tr.tok.n + (byte_level ? nsp : 0);
    if (vocab_size < 0 || (size_t)vocab_size < fixed) {
        set_err(err, errlen, "vocab_size %d is too small for this style (at least %zu)", vocab_size,
                fixed);
        goto fail;
    }
    size_t want = (size_t)vocab_size - (byte_level ? nsp : 0) - base; /* model tokens */
    while (tr.tok.n < want) {
        int s = train_step(&tr);
        if (s < 0) goto oom;
        if (s > 0) break;
    }
    /* filler merges: concatenations of short tokens, in a fixed diagonal order */
    size_t n0 = tr.tok.n;
    for (size_t d = 0; tr.tok.n < want; d++) {
        if (d == 2 * n0) { /* every pair used: go on with the longer tokens made so far */
            if (tr.tok.n == n0) break;
            n0 = tr.tok.n;
            d = 0;
        }
        for (size_t a = 0; a <= d && tr.tok.n < want; a++) {
            size_t b = d - a;
            if (a >= n0 || b >= n0) continue;
            size_t la = tr.tok.len[a], lb = tr.tok.len[b];
            char cat[512];
            if (la + lb > sizeof cat) continue;
            memcpy(cat, tr.tok.str[a], la);
            memcpy(cat + la, tr.tok.str[b], lb);
            if (tokset_find(&tr.tok, cat, la + lb) >= 0) continue;
            if (tokset_add(&tr.tok, cat, la + lb) < 0 || add_merge(&tr, (int32_t)a, (int32_t)b) < 0)
                goto oom;
        }
    }
    if (tr.tok.n < want) {
        set_err(err, errlen, "vocab_size %d is too large for the synthetic trainer", vocab_size);
        goto fail;
    }

    /* tokenizer.json */
    snprintf(path, sizeof path, "%s/tokenizer.json", dir);
    f = fopen(path, "wb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    fputs("{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n"
          "  \"added_tokens\": [",
          f);
    int32_t sp0 = byte_level ? (int32_t)want : 0;
    for (size_t i = 0; i < nsp; i++)
        put_added(f, i == 0, sp0 + (int32_t)i, sp[i]);
    fputs("\n  ],\n", f);
    if (style == TOK_QWEN2) {
        fprintf(f, "  \"normalizer\": {\"type\": \"NFC\"},\n");
    } else if (style == TOK_LLAMA3) {
        fprintf(f, "  \"normalizer\": null,\n");
    } else {
        fputs(
            "  \"normalizer\": {\"type\": \"Sequence\", \"normalizers\": [{\"type\": \"Prepend\", "
            "\"prepend\": \"\xe2\x96\x81\"}, {\"type\": \"Replace\", \"pattern\": {\"String\": \" "
            "\"}, \"content\": \"\xe2\x96\x81\"}]},\n",
            f);
    }
    if (byte_level) {
        const char *pat = style == TOK_QWEN2 ? tok_pattern_qwen2 : tok_pattern_llama3;
        fputs("  \"pre_tokenizer\": {\"type\": \"Sequence\", \"pretokenizers\": [{\"type\": "
              "\"Split\", \"pattern\": {\"Regex\": ",
              f);
        put_json_str(f, pat, strlen(pat));
        fputs("}, \"behavior\": \"Isolated\", \"invert\": false}, {\"type\": \"ByteLevel\", "
              "\"add_prefix_space\": false, \"trim_offsets\": false, \"use_regex\": false}]},\n",
              f);
    } else {
        fputs("  \"pre_tokenizer\": null,\n", f);
    }
    if (style == TOK_QWEN2) {
        fputs("  \"post_processor\": {\"type\": \"ByteLevel\", \"add_prefix_space\": false, "
              "\"trim_offsets\": false, \"use_regex\": false},\n",
              f);
    } else {
        const char *b = style == TOK_LLAMA3 ? "<|begin_of_text|>" : "<s>";
        int32_t bid = style == TOK_LLAMA3 ? sp0 : 1;
        fprintf(f,
                "  \"post_processor\": {\"type\": \"TemplateProcessing\", \"single\": "
                "[{\"SpecialToken\": {\"id\": \"%s\", \"type_id\": 0}}, {\"Sequence\": {\"id\": "
                "\"A\", \"type_id\": 0}}], \"pair\": [{\"SpecialToken\": {\"id\": \"%s\", "
                "\"type_id\": 0}}, {\"Sequence\": {\"id\": \"A\", \"type_id\": 0}}, "
                "{\"SpecialToken\": {\"id\": \"%s\", \"type_id\": 1}}, {\"Sequence\": {\"id\": "
                "\"B\", \"type_id\": 1}}], \"special_tokens\": {\"%s\": {\"id\": \"%s\", \"ids\": "
                "[%d], \"tokens\": [\"%s\"]}}},\n",
                b, b, b, b, b, bid, b);
    }
    if (byte_level) {
        fputs("  \"decoder\": {\"type\": \"ByteLevel\", \"add_prefix_space\": true, "
              "\"trim_offsets\": true, \"use_regex\": true},\n",
              f);
    } else {
        fputs("  \"decoder\": {\"type\": \"Sequence\", \"decoders\": [{\"type\": \"Replace\", "
              "\"pattern\": {\"String\": \"\xe2\x96\x81\"}, \"content\": \" \"}, {\"type\": "
              "\"ByteFallback\"}, {\"type\": \"Fuse\"}, {\"type\": \"Strip\", \"content\": \" \", "
              "\"start\": 1, \"stop\": 0}]},\n",
              f);
    }
    fprintf(f,
            "  \"model\": {\"type\": \"BPE\", \"dropout\": null, \"unk_token\": %s, "
            "\"continuing_subword_prefix\": null, \"end_of_word_suffix\": null, \"fuse_unk\": %s, "
            "\"byte_fallback\": %s, \"ignore_merges\": %s,\n    \"vocab\": {",
            byte_level ? "null" : "\"<unk>\"", byte_level ? "false" : "true",
            byte_level ? "false" : "true", style == TOK_LLAMA3 ? "true" : "false");
    size_t id = 0;
    if (!byte_level) {
        fputs("\n      \"<unk>\": 0,\n      \"<s>\": 1,\n      \"</s>\": 2", f);
        for (unsigned b = 0; b < 256; b++)
            fprintf(f, ",\n      \"<0x%02X>\": %u", b, 3 + b);
        id = base;
    }
    for (size_t i = 0; i < want; i++, id++) {
        fputs(id ? ",\n      " : "\n      ", f);
        put_token(f, tr.tok.str[i], tr.tok.len[i], byte_level);
        fprintf(f, ": %zu", id);
    }
    fputs("\n    },\n    \"merges\": [", f);
    for (size_t m = 0; m < tr.nmerges; m++) {
        int32_t a = tr.merges[m][0], b = tr.merges[m][1];
        fputs(m ? ",\n      [" : "\n      [", f);
        put_token(f, tr.tok.str[a], tr.tok.len[a], byte_level);
        fputs(", ", f);
        put_token(f, tr.tok.str[b], tr.tok.len[b], byte_level);
        fputc(']', f);
    }
    fputs("\n    ]\n  }\n}\n", f);
    if (fclose(f) != 0) {
        f = NULL;
        set_err(err, errlen, "%s: write failed", path);
        goto fail;
    }
    f = NULL;

    /* tokenizer_config.json */
    snprintf(path, sizeof path, "%s/tokenizer_config.json", dir);
    f = fopen(path, "wb");
    if (!f) {
        set_err(err, errlen, "%s: %s", path, strerror(errno));
        goto fail;
    }
    const char *bos = style == TOK_QWEN2 ? NULL : style == TOK_LLAMA3 ? "<|begin_of_text|>" : "<s>";
    const char *eos = style == TOK_QWEN2    ? "<|im_end|>"
                      : style == TOK_LLAMA3 ? "<|eot_id|>"
                                            : "</s>";
    const char *tmpl = style == TOK_QWEN2    ? synth_tmpl_chatml
                       : style == TOK_LLAMA3 ? synth_tmpl_llama3
                                             : synth_tmpl_llama2;
    fputs("{\n  \"add_bos_token\": ", f);
    fputs(style == TOK_QWEN2 ? "false" : "true", f);
    fputs(",\n  \"bos_token\": ", f);
    if (bos)
        put_json_str(f, bos, strlen(bos));
    else
        fputs("null", f);
    fputs(",\n  \"eos_token\": ", f);
    put_json_str(f, eos, strlen(eos));
    if (style == TOK_QWEN2) fputs(",\n  \"pad_token\": \"<|endoftext|>\"", f);
    if (style == TOK_SPM) fputs(",\n  \"unk_token\": \"<unk>\"", f);
    fputs(",\n  \"model_max_length\": 32768,\n  \"chat_template\": ", f);
    put_json_str(f, tmpl, strlen(tmpl));
    fputs("\n}\n", f);
    if (fclose(f) != 0) {
        f = NULL;
        set_err(err, errlen, "%s: write failed", path);
        goto fail;
    }
    f = NULL;
    rc = 0;
    goto done;
oom:
    set_err(err, errlen, "out of memory");
fail:
done:
    if (f) fclose(f);
    for (size_t k = 0; k < tr.nw; k++)
        free(tr.w[k].sym);
    free(tr.w);
    free(tr.merges);
    tokset_free(&tr.tok);
    tokset_free(&tr.words);
    return rc;
}
