/* Built-in chat templates. Each renderer reproduces, for plain-text messages, what HF
 * transformers' apply_chat_template renders with the family's standard Jinja template
 * (Qwen2.5, Llama-3 / 3.1, Llama-2, Zephyr); tool calls inside assistant turns are not modelled. */
#include "engine/chat_template.h"
#include "engine/unicode.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || !errlen) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static char *dup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/* The literal default system prompt of a ChatML template ("<|im_start|>system\nYou are ..."),
 * or NULL when the template has none. */
static char *chatml_default_system(const char *t)
{
    static const char *marks[] = {"<|im_start|>system\\n", "<|im_start|>system\n"};
    for (int m = 0; m < 2; m++) {
        size_t ml = strlen(marks[m]);
        for (const char *p = strstr(t, marks[m]); p; p = strstr(p + 1, marks[m])) {
            const char *s = p + ml, *e = strstr(s, "<|im_end|>");
            if (!e || e == s) continue;
            if (memchr(s, '\'', (size_t)(e - s)) || memchr(s, '"', (size_t)(e - s)) ||
                memchr(s, '{', (size_t)(e - s)) || memchr(s, '+', (size_t)(e - s)))
                continue; /* an expression, not literal text */
            char *o = malloc((size_t)(e - s) + 1);
            if (!o) return NULL;
            size_t w = 0;
            for (const char *q = s; q < e; q++) {
                if (q[0] == '\\' && q + 1 < e && q[1] == 'n') {
                    o[w++] = '\n';
                    q++;
                } else {
                    o[w++] = *q;
                }
            }
            o[w] = '\0';
            return o;
        }
    }
    return NULL;
}

int chat_template_init(struct chat_template *ct, const char *tmpl_text, const char *name,
                       const char *bos, const char *eos, char *err, size_t errlen)
{
    memset(ct, 0, sizeof *ct);
    if (name) {
        if (!strcmp(name, "chatml")) {
            ct->kind = CHAT_TMPL_CHATML;
        } else if (!strcmp(name, "qwen2.5") || !strcmp(name, "qwen")) {
            ct->kind = CHAT_TMPL_CHATML;
            ct->qwen_tools = 1;
            ct->default_system =
                strdup("You are Qwen, created by Alibaba Cloud. You are a helpful assistant.");
            if (!ct->default_system) goto oom;
        } else if (!strcmp(name, "llama3")) {
            ct->kind = CHAT_TMPL_LLAMA3;
        } else if (!strcmp(name, "llama3.1")) {
            ct->kind = CHAT_TMPL_LLAMA3;
            ct->llama31_system = 1;
        } else if (!strcmp(name, "llama2")) {
            ct->kind = CHAT_TMPL_LLAMA2;
        } else if (!strcmp(name, "zephyr")) {
            ct->kind = CHAT_TMPL_ZEPHYR;
        } else {
            set_err(err, errlen,
                    "unknown chat template \"%s\" (known: chatml, qwen2.5, llama3, llama3.1, "
                    "llama2, zephyr)",
                    name);
            return -1;
        }
    } else if (!tmpl_text) {
        set_err(err, errlen, "the model has no chat_template; name one in the configuration");
        return -1;
    } else if (strstr(tmpl_text, "<|im_start|>")) {
        ct->kind = CHAT_TMPL_CHATML;
        ct->qwen_tools = strstr(tmpl_text, "<tool_response>") != NULL;
        ct->default_system = chatml_default_system(tmpl_text);
    } else if (strstr(tmpl_text, "<|start_header_id|>")) {
        ct->kind = CHAT_TMPL_LLAMA3;
        ct->llama31_system = strstr(tmpl_text, "Cutting Knowledge Date") != NULL;
    } else if (strstr(tmpl_text, "[INST]")) {
        ct->kind = CHAT_TMPL_LLAMA2;
    } else if (strstr(tmpl_text, "<|user|>")) {
        ct->kind = CHAT_TMPL_ZEPHYR;
    } else {
        set_err(err, errlen,
                "chat_template is of no known family (ChatML, Llama-3, Llama-2, Zephyr); name one "
                "in the configuration");
        return -1;
    }
    ct->bos = dup_or_null(bos);
    ct->eos = dup_or_null(eos);
    if ((bos && !ct->bos) || (eos && !ct->eos)) goto oom;
    return 0;
oom:
    chat_template_release(ct);
    set_err(err, errlen, "out of memory");
    return -1;
}

void chat_template_release(struct chat_template *ct)
{
    free(ct->default_system);
    free(ct->bos);
    free(ct->eos);
    memset(ct, 0, sizeof *ct);
}

const char *chat_template_kind_name(enum chat_tmpl_kind k)
{
    switch (k) {
    case CHAT_TMPL_CHATML: return "chatml";
    case CHAT_TMPL_LLAMA3: return "llama3";
    case CHAT_TMPL_LLAMA2: return "llama2";
    case CHAT_TMPL_ZEPHYR: return "zephyr";
    }
    return "?";
}

/* ---------------------------------------------------------------- rendering */

struct sbuf {
    char *p;
    size_t n, cap;
    struct tok_range *lit; /* where caller-provided text lies in p, in order */
    size_t n_lit, cap_lit;
    int failed;
};

static void put(struct sbuf *b, const char *s, size_t n)
{
    if (b->failed) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 1024;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np) {
            b->failed = 1;
            return;
        }
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = '\0';
}

static void puts_(struct sbuf *b, const char *s)
{
    if (s) put(b, s, strlen(s));
}

/* Records b->p[off..off+n) as caller-provided text (joined to a range it continues). */
static void mark_lit(struct sbuf *b, size_t off, size_t n)
{
    if (b->failed || n == 0) return;
    if (b->n_lit > 0 && b->lit[b->n_lit - 1].off + b->lit[b->n_lit - 1].len == off) {
        b->lit[b->n_lit - 1].len += n;
        return;
    }
    if (b->n_lit == b->cap_lit) {
        size_t cap = b->cap_lit ? 2 * b->cap_lit : 16;
        struct tok_range *nl = realloc(b->lit, cap * sizeof *nl);
        if (!nl) {
            b->failed = 1;
            return;
        }
        b->lit = nl;
        b->cap_lit = cap;
    }
    b->lit[b->n_lit++] = (struct tok_range){off, n};
}

/* Appends caller-provided text (a message's content): it is encoded without special tokens. */
static void put_lit(struct sbuf *b, const char *s)
{
    size_t at = b->n;
    puts_(b, s);
    mark_lit(b, at, b->n - at);
}

/* Python's str.isspace(), which Jinja's trim and str.strip() use. */
static int py_space(uint32_t cp)
{
    return uni_is_space(cp) || (cp >= 0x1C && cp <= 0x1F);
}

/* The bounds of s[0..n) with leading and trailing whitespace removed (Python str.strip()). */
static void strip_bounds(const char *s, size_t n, size_t *start, size_t *end)
{
    const unsigned char *u = (const unsigned char *)s;
    size_t st = 0, en = n;
    while (st < n) {
        uint32_t cp;
        size_t l = uni_decode(u + st, n - st, &cp);
        if (!py_space(cp)) break;
        st += l;
    }
    while (en > st) {
        size_t k = en - 1;
        while (k > st && (u[k] & 0xC0) == 0x80)
            k--;
        uint32_t cp;
        uni_decode(u + k, en - k, &cp);
        if (!py_space(cp)) break;
        en = k;
    }
    *start = st;
    *end = en;
}

/* Appends caller-provided s stripped (Jinja's `| trim`). */
static void put_lit_stripped(struct sbuf *b, const char *s)
{
    size_t st, en, at = b->n;
    strip_bounds(s, strlen(s), &st, &en);
    put(b, s + st, en - st);
    mark_lit(b, at, b->n - at);
}

/* Appends c's text stripped, with its caller-provided ranges. */
static void put_sbuf_stripped(struct sbuf *b, const struct sbuf *c)
{
    size_t st, en, at = b->n;
    strip_bounds(c->p ? c->p : "", c->n, &st, &en);
    put(b, c->p ? c->p + st : "", en - st);
    for (size_t k = 0; k < c->n_lit && !b->failed; k++) {
        size_t a = c->lit[k].off, z = a + c->lit[k].len;
        if (a < st) a = st;
        if (z > en) z = en;
        if (a < z) mark_lit(b, at + (a - st), z - a);
    }
}

static int role_is(const struct chat_msg *m, const char *r)
{
    return m->role && !strcmp(m->role, r);
}

static int check_roles(const struct chat_msg *msgs, size_t n, char *err, size_t errlen)
{
    for (size_t i = 0; i < n; i++) {
        if (!msgs[i].role || !msgs[i].content) {
            set_err(err, errlen, "messages[%zu]: role and content are required", i);
            return -1;
        }
        if (!role_is(&msgs[i], "system") && !role_is(&msgs[i], "user") &&
            !role_is(&msgs[i], "assistant") && !role_is(&msgs[i], "tool")) {
            set_err(err, errlen, "messages[%zu]: unknown role \"%.40s\"", i, msgs[i].role);
            return -1;
        }
    }
    return 0;
}

static void render_chatml(const struct chat_template *ct, const struct chat_msg *m, size_t n,
                          int gen, struct sbuf *b)
{
    size_t i = 0;
    if (ct->default_system && (n == 0 || !role_is(&m[0], "system"))) {
        puts_(b, "<|im_start|>system\n");
        puts_(b, ct->default_system);
        puts_(b, "<|im_end|>\n");
    }
    for (; i < n; i++) {
        if (ct->qwen_tools && role_is(&m[i], "tool")) {
            /* consecutive tool results share one user turn */
            if (i == 0 || !role_is(&m[i - 1], "tool")) puts_(b, "<|im_start|>user");
            puts_(b, "\n<tool_response>\n");
            put_lit(b, m[i].content);
            puts_(b, "\n</tool_response>");
            if (i + 1 == n || !role_is(&m[i + 1], "tool")) puts_(b, "<|im_end|>\n");
            continue;
        }
        puts_(b, "<|im_start|>");
        puts_(b, m[i].role);
        puts_(b, "\n");
        put_lit(b, m[i].content);
        puts_(b, "<|im_end|>\n");
    }
    if (gen) puts_(b, "<|im_start|>assistant\n");
}

static void render_llama3(const struct chat_template *ct, const struct chat_msg *m, size_t n,
                          int gen, struct sbuf *b)
{
    size_t i = 0;
    puts_(b, ct->bos);
    if (ct->llama31_system) {
        /* Llama-3.1 templates always open with a system turn; 3.2 puts today's date where
         * 3.1's default "26 Jul 2024" stands: we keep the fixed default for reproducibility */
        puts_(b, "<|start_header_id|>system<|end_header_id|>\n\n");
        puts_(b, "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n");
        if (n > 0 && role_is(&m[0], "system")) {
            put_lit_stripped(b, m[0].content);
            i = 1;
        }
        puts_(b, "<|eot_id|>");
    }
    for (; i < n; i++) {
        if (ct->llama31_system && role_is(&m[i], "tool")) {
            puts_(b, "<|start_header_id|>ipython<|end_header_id|>\n\n");
            put_lit(b, m[i].content);
            puts_(b, "<|eot_id|>");
            continue;
        }
        puts_(b, "<|start_header_id|>");
        puts_(b, m[i].role);
        puts_(b, "<|end_header_id|>\n\n");
        put_lit_stripped(b, m[i].content);
        puts_(b, "<|eot_id|>");
    }
    if (gen) puts_(b, "<|start_header_id|>assistant<|end_header_id|>\n\n");
}

static int render_llama2(const struct chat_template *ct, const struct chat_msg *m, size_t n,
                         struct sbuf *b, char *err, size_t errlen)
{
    const char *sys = NULL;
    size_t first = 0;
    if (n > 0 && role_is(&m[0], "system")) {
        sys = m[0].content;
        first = 1;
    }
    for (size_t i = first; i < n; i++) {
        size_t k = i - first;
        if (role_is(&m[i], "user") != (k % 2 == 0) ||
            !(role_is(&m[i], "user") || role_is(&m[i], "assistant"))) {
            set_err(err, errlen,
                    "messages[%zu]: this model's template needs alternating user/assistant "
                    "turns after an optional system message",
                    i);
            return -1;
        }
        struct sbuf c = {0};
        if (k == 0 && sys) {
            puts_(&c, "<<SYS>>\n");
            put_lit(&c, sys);
            puts_(&c, "\n<</SYS>>\n\n");
        }
        put_lit(&c, m[i].content);
        if (c.failed) {
            free(c.p);
            free(c.lit);
            b->failed = 1;
            return 0;
        }
        if (role_is(&m[i], "user")) {
            puts_(b, ct->bos);
            puts_(b, "[INST] ");
            put_sbuf_stripped(b, &c);
            puts_(b, " [/INST]");
        } else {
            puts_(b, " ");
            put_sbuf_stripped(b, &c);
            puts_(b, " ");
            puts_(b, ct->eos);
        }
        free(c.p);
        free(c.lit);
    }
    return 0;
}

static void render_zephyr(const struct chat_template *ct, const struct chat_msg *m, size_t n,
                          int gen, struct sbuf *b)
{
    for (size_t i = 0; i < n; i++) {
        const char *head = role_is(&m[i], "user")        ? "<|user|>\n"
                           : role_is(&m[i], "system")    ? "<|system|>\n"
                           : role_is(&m[i], "assistant") ? "<|assistant|>\n"
                                                         : NULL; /* others: not rendered */
        if (head) {
            puts_(b, head);
            put_lit(b, m[i].content);
            puts_(b, ct->eos);
            puts_(b, "\n");
        }
        if (i + 1 == n && gen) puts_(b, "<|assistant|>\n");
    }
}

int chat_template_render(const struct chat_template *ct, const struct chat_msg *msgs, size_t n,
                         int add_generation_prompt, char **out, size_t *out_len,
                         struct tok_range **literal, size_t *n_literal, char *err, size_t errlen)
{
    struct sbuf b = {0};
    *out = NULL;
    if (literal) *literal = NULL;
    if (n_literal) *n_literal = 0;
    if (check_roles(msgs, n, err, errlen) < 0) return -1;
    puts_(&b, "");
    switch (ct->kind) {
    case CHAT_TMPL_CHATML: render_chatml(ct, msgs, n, add_generation_prompt, &b); break;
    case CHAT_TMPL_LLAMA3: render_llama3(ct, msgs, n, add_generation_prompt, &b); break;
    case CHAT_TMPL_LLAMA2:
        if (render_llama2(ct, msgs, n, &b, err, errlen) < 0) {
            free(b.p);
            free(b.lit);
            return -1;
        }
        break;
    case CHAT_TMPL_ZEPHYR: render_zephyr(ct, msgs, n, add_generation_prompt, &b); break;
    }
    if (b.failed) {
        free(b.p);
        free(b.lit);
        set_err(err, errlen, "out of memory");
        return -1;
    }
    *out = b.p;
    if (out_len) *out_len = b.n;
    if (literal) {
        *literal = b.lit;
        *n_literal = b.n_lit;
    } else {
        free(b.lit);
    }
    return 0;
}

int chat_template_apply(const struct chat_template *ct, const struct chat_msg *msgs, size_t n,
                        int add_generation_prompt, char **out, size_t *out_len, char *err,
                        size_t errlen)
{
    return chat_template_render(ct, msgs, n, add_generation_prompt, out, out_len, NULL, NULL, err,
                                errlen);
}
