/* Prompt building shared by llmgate-engine (what it prompts the model with) and the gateway
 * (how many prompt tokens a local-model request reserves): messages or a completions prompt
 * -> chat template -> token ids, with the tokenizer's BOS rules. */
#include "engine/prompt.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int refuse(struct prompt_error *e, const char *code, const char *param, const char *fmt, ...)
{
    e->code = code;
    snprintf(e->param, sizeof e->param, "%s", param);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return PROMPT_E_INVALID;
}

int prompt_encode_text(const struct tokenizer *t, const char *text, int add_bos,
                       struct prompt_ids *out)
{
    int32_t *ids = NULL;
    size_t n = 0;
    if (tokenizer_encode(t, text, strlen(text), 1, &ids, &n) != 0) return PROMPT_E_NOMEM;
    int32_t bos = tokenizer_bos(t);
    if (add_bos && bos >= 0 && tokenizer_add_bos(t) && !(n > 0 && ids[0] == bos)) {
        int32_t *nid = realloc(ids, (n + 1) * sizeof *nid);
        if (!nid) {
            free(ids);
            return PROMPT_E_NOMEM;
        }
        memmove(nid + 1, nid, n * sizeof *nid);
        nid[0] = bos;
        ids = nid;
        n++;
    }
    out->ids = ids;
    out->n = n;
    return PROMPT_OK;
}

/* The text of one message's content: a string as it is, text parts concatenated into a
 * malloc'd copy (*owned), absent or null as "". */
static int message_text(const cJSON *content, int i, const char **text, char **owned,
                        struct prompt_error *e)
{
    if (cJSON_IsString(content)) {
        *text = content->valuestring;
        return PROMPT_OK;
    }
    if (!cJSON_IsArray(content)) {
        *text = "";
        return PROMPT_OK;
    }
    size_t len = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(t)) {
            char param[64];
            snprintf(param, sizeof param, "messages[%d].content", i);
            return refuse(e, "unsupported_content", param,
                          "The local engine only accepts text content parts.");
        }
        len += strlen(t->valuestring);
    }
    char *s = malloc(len + 1);
    if (!s) return PROMPT_E_NOMEM;
    len = 0;
    cJSON_ArrayForEach(part, content)
    {
        const char *t = cJSON_GetObjectItemCaseSensitive(part, "text")->valuestring;
        size_t tl = strlen(t);
        memcpy(s + len, t, tl);
        len += tl;
    }
    s[len] = '\0';
    *owned = s;
    *text = s;
    return PROMPT_OK;
}

int prompt_chat(const struct tokenizer *t, const struct chat_template *ct, const cJSON *messages,
                struct prompt_ids *out, struct prompt_error *e)
{
    if (!cJSON_IsArray(messages))
        return refuse(e, "invalid_value", "messages", "messages must be an array.");
    int n = cJSON_GetArraySize(messages), rc = PROMPT_E_NOMEM;
    struct chat_msg *msgs = calloc((size_t)n + 1, sizeof *msgs);
    char **owned = calloc((size_t)n + 1, sizeof *owned);
    char *text = NULL, err[256];
    struct tok_range *lit = NULL;
    size_t len = 0, n_lit = 0;
    if (!msgs || !owned) goto out;
    int i = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        if (!cJSON_IsString(role)) { /* oai_request_parse refuses these before we get here */
            char param[64];
            snprintf(param, sizeof param, "messages[%d].role", i);
            rc = refuse(e, "invalid_value", param, "role must be a string.");
            goto out;
        }
        const char *rs = role->valuestring;
        msgs[i].role = strcmp(rs, "developer") == 0  ? "system"
                       : strcmp(rs, "function") == 0 ? "tool"
                                                     : rs;
        rc = message_text(cJSON_GetObjectItemCaseSensitive(m, "content"), i, &msgs[i].content,
                          &owned[i], e);
        if (rc != PROMPT_OK) goto out;
        i++;
    }
    if (chat_template_render(ct, msgs, (size_t)n, 1, &text, &len, &lit, &n_lit, err, sizeof err) !=
        0) {
        rc = refuse(e, "invalid_value", "messages", "%s", err);
        goto out;
    }
    /* Special tokens come from the template only: "<|im_end|>" in a content is text, so a
     * message cannot end its turn and open one with another role. */
    if (tokenizer_encode_literal(t, text, len, lit, n_lit, &out->ids, &out->n) != 0) {
        rc = PROMPT_E_NOMEM;
        goto out;
    }
    rc = PROMPT_OK;
out:
    if (owned)
        for (int k = 0; k < n; k++)
            free(owned[k]);
    free(owned);
    free(msgs);
    free(text);
    free(lit);
    return rc;
}

int prompt_completion(const struct tokenizer *t, const cJSON *p, struct prompt_ids *out,
                      struct prompt_error *e)
{
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) == 1 && !cJSON_IsNumber(p->child))
        p = p->child; /* ["text"] or [[ids]] */
    if (cJSON_IsString(p)) return prompt_encode_text(t, p->valuestring, 1, out);
    if (cJSON_IsArray(p) && cJSON_GetArraySize(p) > 0 && cJSON_IsNumber(p->child)) {
        int n = cJSON_GetArraySize(p);
        out->ids = malloc((size_t)n * sizeof *out->ids);
        if (!out->ids) return PROMPT_E_NOMEM;
        out->n = 0;
        const cJSON *id;
        cJSON_ArrayForEach(id, p) out->ids[out->n++] = (int32_t)id->valuedouble;
        return PROMPT_OK;
    }
    return refuse(e, "unsupported_value", "prompt",
                  "The local engine takes one prompt per request (a string or one array of token "
                  "ids).");
}

void prompt_ids_free(struct prompt_ids *p)
{
    free(p->ids);
    p->ids = NULL;
    p->n = 0;
}

int prompt_template_init(struct chat_template *ct, const struct tokenizer *t, const char *name,
                         char *note, size_t notelen, char *err, size_t errlen)
{
    const char *bos = tokenizer_bos_text(t), *eos = tokenizer_eos_text(t);
    note[0] = '\0';
    if (chat_template_init(ct, tokenizer_chat_template(t), name, bos, eos, err, errlen) == 0)
        return 0;
    if (name) return -1;
    snprintf(note, notelen, "%s; using ChatML", err);
    return chat_template_init(ct, NULL, "chatml", bos, eos, err, errlen);
}
