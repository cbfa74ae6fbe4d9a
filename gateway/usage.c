/* The usage spool and its replay, and the usage report helpers. A spool line
 * is one settle call as JSON ({"k":[keys],"a":[args]}); replaying it runs the
 * same script, which ignores a request it has already settled, so a line
 * replayed twice (a crash mid-replay, a timeout that did reach Redis) counts
 * once. Lines are written with one write(2) on an O_APPEND descriptor. */
#include "gateway/usage.h"

#include <cjson/cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <hiredis/hiredis.h>
#include <libgen.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/redis.h"
#include "common/log.h"
#include "gateway/scripts.h"

#define REPLAY_BATCH  256 /* settle calls in flight per replay step */
#define MAX_LINE_ARGS 64
#define CLAIM_INFIX   ".replay."

/* ---------------------------------------------------------------- spool writer */

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* Opens path for appending, locked, making sure it is still the file at path
 * (a replay may have renamed it away between our open and our lock). */
static int open_locked(const char *path)
{
    for (int tries = 0; tries < 16; tries++) {
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
        if (fd < 0) return -1;
        struct stat a, b;
        if (flock(fd, LOCK_EX) == 0 && fstat(fd, &a) == 0 && stat(path, &b) == 0 &&
            a.st_ino == b.st_ino && a.st_dev == b.st_dev)
            return fd;
        close(fd);
    }
    return -1;
}

static char *spool_line(int nkeys, const char **keys, const size_t *keylens, int nargs,
                        const char **args, const size_t *arglens, size_t *len)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *k = cJSON_AddArrayToObject(doc, "k");
    cJSON *a = cJSON_AddArrayToObject(doc, "a");
    char *out = NULL;
    if (!k || !a) goto done;
    for (int i = 0; i < nkeys + nargs; i++) {
        const char *s = i < nkeys ? keys[i] : args[i - nkeys];
        size_t n = i < nkeys ? keylens[i] : arglens[i - nkeys];
        char *copy = strndup(s, n);
        cJSON *item = copy ? cJSON_CreateString(copy) : NULL;
        free(copy);
        if (!item) goto done;
        cJSON_AddItemToArray(i < nkeys ? k : a, item);
    }
    out = cJSON_PrintUnformatted(doc);
done:
    cJSON_Delete(doc);
    if (!out) return NULL;
    *len = strlen(out);
    char *line = realloc(out, *len + 2);
    if (!line) {
        free(out);
        return NULL;
    }
    line[(*len)++] = '\n';
    line[*len] = '\0';
    return line;
}

static int append_line(const char *path, const char *line, size_t len)
{
    int fd = open_locked(path);
    if (fd < 0) return -1;
    int rc = write_all(fd, line, len);
    close(fd); /* releases the lock */
    return rc;
}

int usage_spool_append(const char *path, int nkeys, const char **keys, const size_t *keylens,
                       int nargs, const char **args, const size_t *arglens)
{
    size_t len;
    char *line = spool_line(nkeys, keys, keylens, nargs, args, arglens, &len);
    if (!line) return -1;
    int rc = append_line(path, line, len);
    free(line);
    return rc;
}

/* ---------------------------------------------------------------- replay */

/* States of a replay:
 *   IDLE      - nothing claimed; a tick looks for a spool or an orphaned claim
 *   REPLAYING - a claimed file is open; lines go out in batches; when the file is
 *               read and every call came back, the file is removed */
struct usage_replay {
    struct redis *redis;
    char *path;
    FILE *f;
    char *claimed;
    unsigned inflight;
    unsigned long sent, requeued;
    unsigned seq;
    bool freeing;
};

/* One replayed line in flight. */
struct replay_call {
    struct usage_replay *u;
    char *line;
};

static void pump(struct usage_replay *u);

static void finish_file(struct usage_replay *u)
{
    fclose(u->f);
    u->f = NULL;
    unlink(u->claimed);
    log_info("usage", "replayed %lu spooled usage record(s) (%lu requeued)", u->sent, u->requeued);
    free(u->claimed);
    u->claimed = NULL;
}

static void requeue(struct usage_replay *u, const char *line, const char *suffix)
{
    char path[4096];
    snprintf(path, sizeof path, "%s%s", u->path, suffix);
    if (append_line(path, line, strlen(line)) != 0)
        log_error("usage", "cannot write %s: a usage record is lost", path);
    u->requeued++;
}

static void on_replayed(const struct redisReply *reply, void *ud)
{
    struct replay_call *c = ud;
    struct usage_replay *u = c->u;
    if (!reply) {
        requeue(u, c->line, ""); /* Redis went away again: back to the spool */
    } else if (reply->type == REDIS_REPLY_ERROR) {
        log_warn("usage", "a spooled usage record was refused (%s); kept in %s.rejected",
                 reply->str, u->path);
        requeue(u, c->line, ".rejected");
    }
    free(c->line);
    free(c);
    u->inflight--;
    if (u->inflight == 0 && u->f && !u->freeing) pump(u);
}

/* Sends one line; 0 when sent, -1 when it was not (back to the spool, or
 * malformed and dropped). */
static int replay_line(struct usage_replay *u, const char *line)
{
    cJSON *doc = cJSON_Parse(line);
    const cJSON *k = cJSON_GetObjectItemCaseSensitive(doc, "k");
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(doc, "a");
    int nk = cJSON_GetArraySize(k), na = cJSON_GetArraySize(a);
    if (!cJSON_IsArray(k) || !cJSON_IsArray(a) || nk + na > MAX_LINE_ARGS) {
        cJSON_Delete(doc);
        log_warn("usage", "skipping a malformed spool line (a crash mid-write?)");
        return -1;
    }
    const char *v[MAX_LINE_ARGS];
    size_t l[MAX_LINE_ARGS];
    int n = 0;
    for (const cJSON *e = k->child; e; e = e->next)
        v[n] = cJSON_GetStringValue(e), l[n] = v[n] ? strlen(v[n]) : 0, n++;
    for (const cJSON *e = a->child; e; e = e->next)
        v[n] = cJSON_GetStringValue(e), l[n] = v[n] ? strlen(v[n]) : 0, n++;
    for (int i = 0; i < n; i++)
        if (!v[i]) v[i] = "";
    struct replay_call *c = malloc(sizeof *c);
    int rc = -1;
    if (c && (c->line = strdup(line))) {
        c->u = u;
        if (redis_eval(u->redis, &script_settle, on_replayed, c, nk, v, l, na, v + nk, l + nk) ==
            0) {
            u->inflight++;
            u->sent++;
            rc = 0;
        } else {
            free(c->line);
        }
    }
    if (rc != 0) {
        free(c);
        requeue(u, line, "");
    }
    cJSON_Delete(doc);
    return rc;
}

static void pump(struct usage_replay *u)
{
    char *line = NULL;
    size_t cap = 0;
    unsigned batch = 0;
    while (batch < REPLAY_BATCH) {
        ssize_t n = getline(&line, &cap, u->f);
        if (n <= 0) break;
        if (line[n - 1] == '\n') line[n - 1] = '\0';
        if (!line[0]) continue;
        if (replay_line(u, line) == 0) batch++;
    }
    free(line);
    /* Nothing in flight: the file is done (every line sent, requeued or dropped),
     * as a batch cut short leaves replies to come, whose last one pumps again. */
    if (u->inflight == 0) finish_file(u);
}

/* A claimed file some process left behind (crash or stop mid-replay). */
static char *find_orphan(const char *path)
{
    char dirbuf[4096], basebuf[4096];
    snprintf(dirbuf, sizeof dirbuf, "%s", path);
    snprintf(basebuf, sizeof basebuf, "%s", path);
    const char *dir = dirname(dirbuf), *base = basename(basebuf);
    char prefix[4200];
    int plen = snprintf(prefix, sizeof prefix, "%s" CLAIM_INFIX, base);
    DIR *d = opendir(dir);
    if (!d) return NULL;
    char *found = NULL;
    struct dirent *e;
    while (!found && (e = readdir(d))) {
        if (strncmp(e->d_name, prefix, (size_t)plen) != 0) continue;
        size_t need = strlen(dir) + strlen(e->d_name) + 2;
        if ((found = malloc(need))) snprintf(found, need, "%s/%s", dir, e->d_name);
    }
    closedir(d);
    return found;
}

void usage_replay_tick(struct usage_replay *u)
{
    if (!u || u->f || !redis_connected(u->redis)) return;
    char *claimed = find_orphan(u->path);
    if (!claimed) {
        struct stat st;
        if (stat(u->path, &st) != 0 || st.st_size == 0) return;
        size_t need = strlen(u->path) + 64;
        if (!(claimed = malloc(need))) return;
        snprintf(claimed, need, "%s" CLAIM_INFIX "%ld.%u", u->path, (long)getpid(), u->seq++);
        if (rename(u->path, claimed) != 0) {
            free(claimed);
            return;
        }
    }
    FILE *f = fopen(claimed, "re");
    if (!f) {
        free(claimed);
        return;
    }
    /* A writer that opened the old name before the rename finishes its line
     * under the lock; any later one sees the name moved and starts a new file. */
    if (flock(fileno(f), LOCK_EX) == 0) flock(fileno(f), LOCK_UN);
    u->f = f;
    u->claimed = claimed;
    u->sent = u->requeued = 0;
    pump(u);
}

int usage_replay_busy(const struct usage_replay *u)
{
    return u && u->f != NULL;
}

struct usage_replay *usage_replay_new(struct redis *redis, const char *spool_path)
{
    struct usage_replay *u = calloc(1, sizeof *u);
    if (!u || !(u->path = strdup(spool_path))) {
        free(u);
        return NULL;
    }
    u->redis = redis;
    return u;
}

void usage_replay_free(struct usage_replay *u)
{
    if (!u) return;
    u->freeing = true;
    /* Calls still in flight were failed by redis_free before this (worker_join
     * frees Redis first); the claimed file stays for the next start. */
    if (u->f) fclose(u->f);
    free(u->claimed);
    free(u->path);
    free(u);
}

/* ---------------------------------------------------------------- report helpers */

static long days_from_civil(long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long)doe - 719468;
}

int usage_parse_day(const char *s, long *day)
{
    int y, m, d, n = 0;
    if (sscanf(s, "%4d-%2d-%2d%n", &y, &m, &d, &n) != 3 || s[n] || m < 1 || m > 12 || d < 1 ||
        d > 31 || y < 1970 || y > 9999)
        return -1;
    *day = days_from_civil(y, (unsigned)m, (unsigned)d);
    return 0;
}

long usage_day_of_ms(unsigned long long ms)
{
    return (long)(ms / 86400000ull);
}

/* Days since the epoch to the civil (proleptic Gregorian) date. */
static void civil_from_days(long z, long *y, unsigned *m, unsigned *d)
{
    z += 719468;
    long era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (long)yoe + era * 400 + (*m <= 2);
}

void usage_day_string(long z, char out[9])
{
    long y;
    unsigned m, d;
    civil_from_days(z, &y, &m, &d);
    char buf[32];
    snprintf(buf, sizeof buf, "%04ld%02u%02u", y % 10000, m % 100, d % 100);
    memcpy(out, buf, 8);
    out[8] = '\0';
}

long usage_month_of_day(long day)
{
    long y;
    unsigned m, d;
    civil_from_days(day, &y, &m, &d);
    return y * 12 + (long)m - 1;
}

long usage_month_first_day(long month)
{
    long y = month >= 0 ? month / 12 : -((-month + 11) / 12);
    return days_from_civil(y, (unsigned)(month - y * 12) + 1, 1);
}

static void csv_field(FILE *f, const char *s)
{
    if (!strpbrk(s, ",\"\r\n")) {
        fputs(s, f);
        return;
    }
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static double num(const cJSON *o, const char *name)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);
    return cJSON_IsNumber(v) ? v->valuedouble : 0;
}

char *usage_report_csv(const char *json, size_t len)
{
    cJSON *doc = cJSON_ParseWithLength(json, len);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(doc, "rows");
    const char *group = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(doc, "group_by"));
    if (!cJSON_IsArray(rows) || !group) {
        cJSON_Delete(doc);
        return NULL;
    }
    char *out = NULL;
    size_t size = 0;
    FILE *f = open_memstream(&out, &size);
    if (!f) {
        cJSON_Delete(doc);
        return NULL;
    }
    fprintf(f,
            "%s,requests,prompt_tokens,completion_tokens,cached_tokens,total_tokens,errors,"
            "cost_usd\n",
            group);
    for (const cJSON *r = rows->child; r; r = r->next) {
        const char *g = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(r, "group"));
        csv_field(f, g ? g : "");
        fprintf(f, ",%.0f,%.0f,%.0f,%.0f,%.0f,%.0f,%.6f\n", num(r, "requests"),
                num(r, "prompt_tokens"), num(r, "completion_tokens"), num(r, "cached_tokens"),
                num(r, "total_tokens"), num(r, "errors"), num(r, "cost_microusd") / 1e6);
    }
    cJSON_Delete(doc);
    if (fclose(f) != 0) {
        free(out);
        return NULL;
    }
    return out;
}
