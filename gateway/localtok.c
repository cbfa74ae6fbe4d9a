/* The engine's tokenizer in the gateway, for exact local-model prompt counts in quota
 * reservations: one loaded tokenizer + chat template per model directory, refcounted by the
 * config snapshots that use it, so a reload that keeps the directory reuses it. */
#include "gateway/localtok.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/log.h"
#include "common/util.h"
#include "engine/prompt.h"

/* A file as it was when loaded: a reload that finds the same identity reuses the tokenizer,
 * one that finds the model directory's files replaced loads them again. */
struct file_id {
    bool exists;
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

/* Concurrency: workers call tokenizer_encode() and chat_template_apply() on tok and ct through
 * const pointers at the same time. Both only read them (no caches, no statics, no const cast
 * away in engine/tokenizer.c or engine/chat_template.c; scratch space is per call), which
 * tokenizer.h promises as well, so no lock is needed. Only refs and the cache list are
 * shared mutable state, under cache_mu. */
struct localtok {
    struct localtok *next; /* the cache list */
    unsigned refs;         /* config snapshots (providers) holding it */
    char *model_dir;
    char *tmpl_name;         /* the provider's chat_template override, or NULL */
    struct file_id files[2]; /* tokenizer.json, tokenizer_config.json as loaded */
    struct tokenizer *tok;
    struct chat_template ct;
};

static const char *const tok_files[2] = {"tokenizer.json", "tokenizer_config.json"};

static pthread_mutex_t cache_mu = PTHREAD_MUTEX_INITIALIZER;
static struct localtok *cache; /* every pair some snapshot holds */

static void file_ids(const char *dir, struct file_id out[2])
{
    for (int i = 0; i < 2; i++) {
        char path[4200];
        struct stat st;
        memset(&out[i], 0, sizeof out[i]);
        snprintf(path, sizeof path, "%s/%s", dir, tok_files[i]);
        if (stat(path, &st) != 0) continue;
        out[i] = (struct file_id){.exists = true,
                                  .dev = st.st_dev,
                                  .ino = st.st_ino,
                                  .size = st.st_size,
                                  .mtime = st.st_mtim};
    }
}

static bool same_file(const struct file_id *a, const struct file_id *b)
{
    return a->exists == b->exists && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

static bool same_str(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

static void localtok_free(struct localtok *lt)
{
    if (lt->tok) chat_template_release(&lt->ct);
    tokenizer_free(lt->tok);
    free(lt->model_dir);
    free(lt->tmpl_name);
    free(lt);
}

/* A new pair for dir and template name, one reference. 0, or -1 with a message in err. */
static int localtok_load(const char *dir, const char *tmpl, const struct file_id files[2],
                         struct localtok **out, char *err, size_t errlen)
{
    uint64_t t0 = util_now_us();
    struct localtok *lt = calloc(1, sizeof *lt);
    char note[320];
    if (!lt || !(lt->model_dir = strdup(dir)) || (tmpl && !(lt->tmpl_name = strdup(tmpl)))) {
        snprintf(err, errlen, "out of memory");
        goto fail;
    }
    memcpy(lt->files, files, sizeof lt->files);
    if (tokenizer_load(dir, &lt->tok, err, errlen) != 0) goto fail;
    if (prompt_template_init(&lt->ct, lt->tok, tmpl, note, sizeof note, err, errlen) != 0) {
        tokenizer_free(lt->tok);
        lt->tok = NULL;
        goto fail;
    }
    if (note[0]) log_info("localtok", "%s: %s (set the provider's chat_template)", dir, note);
    log_info("localtok",
             "%s: tokenizer (%d ids, %s template) loaded for exact prompt counts in %.0f ms", dir,
             (int)tokenizer_vocab_size(lt->tok), chat_template_kind_name(lt->ct.kind),
             (double)(util_now_us() - t0) / 1000.0);
    lt->refs = 1;
    *out = lt;
    return 0;
fail:
    if (lt) localtok_free(lt);
    return -1;
}

/* The pair for dir + tmpl: the cached one when its files are unchanged, else a new load.
 * Only the main thread loads, so two loads of one key never race; workers only release. */
static struct localtok *localtok_get(const char *dir, const char *tmpl, char *err, size_t errlen)
{
    struct file_id files[2];
    file_ids(dir, files);
    pthread_mutex_lock(&cache_mu);
    for (struct localtok *lt = cache; lt; lt = lt->next) {
        if (strcmp(lt->model_dir, dir) == 0 && same_str(lt->tmpl_name, tmpl) &&
            same_file(&lt->files[0], &files[0]) && same_file(&lt->files[1], &files[1])) {
            lt->refs++;
            pthread_mutex_unlock(&cache_mu);
            return lt;
        }
    }
    pthread_mutex_unlock(&cache_mu);
    struct localtok *lt;
    if (localtok_load(dir, tmpl, files, &lt, err, errlen) != 0) return NULL;
    pthread_mutex_lock(&cache_mu);
    lt->next = cache;
    cache = lt;
    pthread_mutex_unlock(&cache_mu);
    return lt;
}

void localtok_attach(struct config *cfg)
{
    for (size_t i = 0; i < cfg->n_providers; i++) {
        struct provider_conf *p = &cfg->providers[i];
        if (p->kind != PROVIDER_LOCAL || !p->model_dir || p->tok) continue;
        char err[512];
        p->tok = localtok_get(p->model_dir, p->chat_template, err, sizeof err);
        if (!p->tok) {
            log_warn("localtok",
                     "local provider '%s': cannot load the engine's tokenizer from %s (%s); its "
                     "prompt tokens are estimated for quotas",
                     p->name, p->model_dir, err);
        }
    }
}

void localtok_release(struct localtok *lt)
{
    if (!lt) return;
    pthread_mutex_lock(&cache_mu);
    bool last = --lt->refs == 0;
    if (last)
        for (struct localtok **pp = &cache; *pp; pp = &(*pp)->next)
            if (*pp == lt) {
                *pp = lt->next;
                break;
            }
    pthread_mutex_unlock(&cache_mu);
    if (last) localtok_free(lt);
}

int localtok_count(const struct localtok *lt, const struct oai_request *o, long *n)
{
    if (!lt || !o->root || o->prompt_chars > LOCALTOK_MAX_CHARS) return -1;
    struct prompt_ids p = {0};
    struct prompt_error e;
    int rc;
    if (o->endpoint == OAI_CHAT)
        rc = prompt_chat(lt->tok, &lt->ct, cJSON_GetObjectItemCaseSensitive(o->root, "messages"),
                         &p, &e);
    else if (o->endpoint == OAI_COMPLETIONS)
        rc =
            prompt_completion(lt->tok, cJSON_GetObjectItemCaseSensitive(o->root, "prompt"), &p, &e);
    else
        return -1; /* embeddings: the engine has none; whoever serves them is estimated */
    if (rc != PROMPT_OK) return -1;
    *n = (long)p.n;
    prompt_ids_free(&p);
    return 0;
}
