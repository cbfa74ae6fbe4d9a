/* Safetensors reader: maps a checkpoint file read-only, parses its JSON header with the engine's
 * strict reader and validates every tensor before any byte of it is used. */
#include "engine/safetensors.h"

#include "engine/json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The safetensors format caps its header at 100 MB; a bigger length is a corrupt file. */
#define ST_MAX_HEADER (100u * 1024u * 1024u)

static void seterr(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void seterr(char *err, size_t errlen, const char *fmt, ...)
{
    if (!err || errlen == 0) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

size_t st_dtype_size(enum st_dtype dtype)
{
    return dtype == ST_F32 ? 4 : 2;
}

const char *st_dtype_name(enum st_dtype dtype)
{
    switch (dtype) {
    case ST_F32: return "F32";
    case ST_F16: return "F16";
    case ST_BF16: return "BF16";
    }
    return "?";
}

static int dtype_parse(const char *s, enum st_dtype *out)
{
    if (strcmp(s, "F32") == 0)
        *out = ST_F32;
    else if (strcmp(s, "F16") == 0)
        *out = ST_F16;
    else if (strcmp(s, "BF16") == 0)
        *out = ST_BF16;
    else
        return -1;
    return 0;
}

/* A JSON number that is a non-negative integer below 2^53 (exact in a double). */
static int json_uint(const struct ejson *v, uint64_t *out)
{
    if (!v || v->type != EJSON_NUMBER || !ejson_is_int(v)) return -1;
    if (v->num < 0 || v->num > 9007199254740992.0) return -1;
    *out = (uint64_t)v->num;
    return 0;
}

static int cmp_by_offset(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    const char *px = x->data, *py = y->data;
    if (px != py) return px < py ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

static int cmp_by_name(const void *a, const void *b)
{
    const struct st_tensor *x = *(const struct st_tensor *const *)a;
    const struct st_tensor *y = *(const struct st_tensor *const *)b;
    return strcmp(x->name, y->name);
}

/* Parses one tensor entry of the header into t. */
static int parse_tensor(const char *label, const char *name, const struct ejson *v,
                        const char *data, uint64_t data_len, struct st_tensor *t, char *err,
                        size_t errlen)
{
    if (v->type != EJSON_OBJECT) {
        seterr(err, errlen, "%s: tensor '%s': entry is not an object", label, name);
        return -1;
    }
    const char *dt = ejson_get_str(v, "dtype");
    if (!dt) {
        seterr(err, errlen, "%s: tensor '%s': missing dtype", label, name);
        return -1;
    }
    if (dtype_parse(dt, &t->dtype) != 0) {
        seterr(err, errlen, "%s: tensor '%s': unsupported dtype '%.16s' (want BF16, F16 or F32)",
               label, name, dt);
        return -1;
    }
    const struct ejson *shape = ejson_get(v, "shape");
    if (!shape || shape->type != EJSON_ARRAY || shape->n > ST_MAX_DIMS) {
        seterr(err, errlen, "%s: tensor '%s': shape must be an array of at most %d integers", label,
               name, ST_MAX_DIMS);
        return -1;
    }
    uint64_t count = 1;
    t->ndim = (int)shape->n;
    for (size_t i = 0; i < shape->n; i++) {
        uint64_t d;
        if (json_uint(&shape->items[i], &d) != 0) {
            seterr(err, errlen, "%s: tensor '%s': shape[%zu] is not a non-negative integer", label,
                   name, i);
            return -1;
        }
        if (d != 0 && count > UINT64_MAX / 4 / d) {
            seterr(err, errlen, "%s: tensor '%s': shape is too large", label, name);
            return -1;
        }
        count *= d;
        t->shape[i] = (int64_t)d;
    }
    const struct ejson *offs = ejson_get(v, "data_offsets");
    uint64_t begin, end;
    if (!offs || offs->type != EJSON_ARRAY || offs->n != 2 ||
        json_uint(&offs->items[0], &begin) != 0 || json_uint(&offs->items[1], &end) != 0) {
        seterr(err, errlen, "%s: tensor '%s': data_offsets must be [begin, end] integers", label,
               name);
        return -1;
    }
    if (begin > end || end > data_len) {
        seterr(err, errlen,
               "%s: tensor '%s': data_offsets [%llu, %llu] outside the data region (%llu bytes)",
               label, name, (unsigned long long)begin, (unsigned long long)end,
               (unsigned long long)data_len);
        return -1;
    }
    uint64_t nbytes = count * st_dtype_size(t->dtype);
    if (nbytes != end - begin) {
        seterr(err, errlen,
               "%s: tensor '%s': shape and dtype %s need %llu bytes but data_offsets span %llu",
               label, name, dt, (unsigned long long)nbytes, (unsigned long long)(end - begin));
        return -1;
    }
    t->data = data + begin;
    t->nbytes = (size_t)nbytes;
    return 0;
}

/* Validates the mapping in f (map/map_len set) and fills f->tensors. */
static int parse_file(struct st_file *f, const char *label, char *err, size_t errlen)
{
    const unsigned char *p = f->map;
    if (f->map_len < 8) {
        seterr(err, errlen, "%s: file is %zu bytes, too short for a safetensors header", label,
               f->map_len);
        return -1;
    }
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--)
        hlen = (hlen << 8) | p[i];
    if (hlen > ST_MAX_HEADER || hlen > f->map_len - 8) {
        seterr(err, errlen, "%s: header length %llu exceeds the file (%zu bytes) or the 100 MB cap",
               label, (unsigned long long)hlen, f->map_len);
        return -1;
    }
    if (hlen < 2) {
        seterr(err, errlen, "%s: header length %llu is too short", label, (unsigned long long)hlen);
        return -1;
    }
    /* Writers pad the header with spaces; the strict parser accepts trailing whitespace. */
    char jerr[160];
    struct ejson_doc *doc = ejson_parse((const char *)p + 8, (size_t)hlen, jerr, sizeof jerr);
    if (!doc) {
        seterr(err, errlen, "%s: header is not valid JSON: %s", label, jerr);
        return -1;
    }
    const struct ejson *root = ejson_root(doc);
    int rc = -1;
    struct st_tensor **order = NULL;
    if (root->type != EJSON_OBJECT) {
        seterr(err, errlen, "%s: header is a JSON %s, not an object", label,
               ejson_type_name(root->type));
        goto out;
    }
    const char *data = (const char *)p + 8 + hlen;
    uint64_t data_len = f->map_len - 8 - hlen;
    f->tensors = calloc(root->n ? root->n : 1, sizeof *f->tensors);
    if (!f->tensors) {
        seterr(err, errlen, "%s: out of memory", label);
        goto out;
    }
    for (size_t i = 0; i < root->n; i++) {
        const char *name = root->keys[i];
        if (strcmp(name, "__metadata__") == 0) {
            if (root->items[i].type != EJSON_OBJECT) {
                seterr(err, errlen, "%s: __metadata__ is not an object", label);
                goto out;
            }
            continue;
        }
        if (strlen(name) != root->key_lens[i] || root->key_lens[i] == 0) {
            seterr(err, errlen, "%s: tensor #%zu has an empty name or one with a NUL byte", label,
                   i);
            goto out;
        }
        struct st_tensor *t = &f->tensors[f->n];
        if (parse_tensor(label, name, &root->items[i], data, data_len, t, err, errlen) != 0)
            goto out;
        t->name = strdup(name);
        if (!t->name) {
            seterr(err, errlen, "%s: out of memory", label);
            goto out;
        }
        f->n++;
    }
    order = malloc((f->n ? f->n : 1) * sizeof *order);
    if (!order) {
        seterr(err, errlen, "%s: out of memory", label);
        goto out;
    }
    for (size_t i = 0; i < f->n; i++)
        order[i] = &f->tensors[i];
    qsort(order, f->n, sizeof *order, cmp_by_name);
    for (size_t i = 1; i < f->n; i++) {
        if (strcmp(order[i - 1]->name, order[i]->name) == 0) {
            seterr(err, errlen, "%s: tensor '%s' appears twice in the header", label,
                   order[i]->name);
            goto out;
        }
    }
    qsort(order, f->n, sizeof *order, cmp_by_offset);
    /* Against the furthest end so far, not the previous tensor's: an empty tensor sorted in
     * between would otherwise hide an overlap with the one before it. */
    const struct st_tensor *reach = NULL;
    for (size_t i = 0; i < f->n; i++) {
        if (order[i]->nbytes == 0) continue;
        const char *start = order[i]->data;
        if (reach && start < (const char *)reach->data + reach->nbytes) {
            seterr(err, errlen, "%s: tensor '%s' overlaps tensor '%s' in the data region", label,
                   order[i]->name, reach->name);
            goto out;
        }
        reach = order[i];
    }
    rc = 0;
out:
    free(order);
    ejson_free(doc);
    return rc;
}

static void file_free_tensors(struct st_file *f)
{
    if (!f->tensors) return;
    for (size_t i = 0; i < f->n; i++)
        free(f->tensors[i].name);
    free(f->tensors);
    f->tensors = NULL;
    f->n = 0;
}

int st_file_open_mem(const void *buf, size_t len, const char *label, struct st_file **out,
                     char *err, size_t errlen)
{
    *out = NULL;
    struct st_file *f = calloc(1, sizeof *f);
    if (!f) {
        seterr(err, errlen, "%s: out of memory", label);
        return -1;
    }
    f->path = strdup(label ? label : "(memory)");
    f->map = (void *)buf;
    f->map_len = len;
    if (!f->path || parse_file(f, f->path, err, errlen) != 0) {
        if (!f->path) seterr(err, errlen, "out of memory");
        file_free_tensors(f);
        free(f->path);
        free(f);
        return -1;
    }
    f->map = NULL; /* not ours to unmap; tensors point into buf */
    *out = f;
    return 0;
}

int st_file_open(const char *path, struct st_file **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        seterr(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        seterr(err, errlen, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    struct st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        seterr(err, errlen, "%s: out of memory", path);
        free(f);
        close(fd);
        return -1;
    }
    f->map_len = (size_t)st.st_size;
    if (f->map_len > 0) {
        f->map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
        if (f->map == MAP_FAILED) {
            seterr(err, errlen, "%s: mmap: %s", path, strerror(errno));
            f->map = NULL;
            close(fd);
            st_file_close(f);
            return -1;
        }
    }
    close(fd);
    if (parse_file(f, path, err, errlen) != 0) {
        st_file_close(f);
        return -1;
    }
    *out = f;
    return 0;
}

void st_file_close(struct st_file *f)
{
    if (!f) return;
    file_free_tensors(f);
    if (f->map) munmap(f->map, f->map_len);
    free(f->path);
    free(f);
}

const struct st_tensor *st_file_find(const struct st_file *f, const char *name)
{
    for (size_t i = 0; i < f->n; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

/* ---- sharded checkpoints ------------------------------------------------------------------ */

static int set_add(struct st_set *s, const char *path, char *err, size_t errlen)
{
    struct st_file **nf = realloc(s->files, (s->n_files + 1) * sizeof *nf);
    if (!nf) {
        seterr(err, errlen, "%s: out of memory", path);
        return -1;
    }
    s->files = nf;
    if (st_file_open(path, &s->files[s->n_files], err, errlen) != 0) return -1;
    s->n_files++;
    return 0;
}

static struct st_file *set_file_by_path(const struct st_set *s, const char *path)
{
    for (size_t i = 0; i < s->n_files; i++)
        if (strcmp(s->files[i]->path, path) == 0) return s->files[i];
    return NULL;
}

/* A shard name from the index must be a plain file name: no directories, no "..". */
static int shard_name_ok(const char *name)
{
    return name[0] && name[0] != '.' && !strchr(name, '/') && strlen(name) < 256;
}

static int open_index(const char *dir, const char *index_path, struct st_set *s, char *err,
                      size_t errlen)
{
    char jerr[200];
    struct ejson_doc *doc = ejson_parse_file(index_path, jerr, sizeof jerr);
    if (!doc) {
        seterr(err, errlen, "%s", jerr);
        return -1;
    }
    int rc = -1;
    const struct ejson *map = ejson_get(ejson_root(doc), "weight_map");
    if (!map || map->type != EJSON_OBJECT) {
        seterr(err, errlen, "%s: missing weight_map object", index_path);
        goto out;
    }
    char path[4096];
    for (size_t i = 0; i < map->n; i++) {
        const struct ejson *v = &map->items[i];
        if (v->type != EJSON_STRING || !shard_name_ok(v->str)) {
            seterr(err, errlen, "%s: tensor '%s': shard must be a plain file name", index_path,
                   map->keys[i]);
            goto out;
        }
        if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, v->str) >= sizeof path) {
            seterr(err, errlen, "%s: path too long", index_path);
            goto out;
        }
        struct st_file *f = set_file_by_path(s, path);
        if (!f) {
            if (set_add(s, path, err, errlen) != 0) goto out;
            f = s->files[s->n_files - 1];
        }
        if (!st_file_find(f, map->keys[i])) {
            seterr(err, errlen, "%s: tensor '%s' is not in shard %s as weight_map says", index_path,
                   map->keys[i], v->str);
            goto out;
        }
    }
    rc = 0;
out:
    ejson_free(doc);
    return rc;
}

int st_set_open_dir(const char *dir, struct st_set **out, char *err, size_t errlen)
{
    *out = NULL;
    struct st_set *s = calloc(1, sizeof *s);
    if (!s) {
        seterr(err, errlen, "out of memory");
        return -1;
    }
    char path[4096];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    int rc;
    if (access(path, F_OK) == 0) {
        rc = open_index(dir, path, s, err, errlen);
    } else {
        snprintf(path, sizeof path, "%s/model.safetensors", dir);
        rc = set_add(s, path, err, errlen);
    }
    if (rc != 0) {
        st_set_close(s);
        return -1;
    }
    *out = s;
    return 0;
}

void st_set_close(struct st_set *s)
{
    if (!s) return;
    for (size_t i = 0; i < s->n_files; i++)
        st_file_close(s->files[i]);
    free(s->files);
    free(s);
}

const struct st_tensor *st_set_find(const struct st_set *s, const char *name)
{
    for (size_t i = 0; i < s->n_files; i++) {
        const struct st_tensor *t = st_file_find(s->files[i], name);
        if (t) return t;
    }
    return NULL;
}
