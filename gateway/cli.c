/* The management CLI. Output is the admin API's JSON (one document on stdout)
 * or, for usage, CSV on request; errors go to stderr with a non-zero status.
 * A new key's secret is printed once, in the "key" field. */
#include "gateway/cli.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <getopt.h>
#include <hiredis/hiredis.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "gateway/admin.h"
#include "gateway/config.h"
#include "gateway/keys.h"
#include "gateway/scripts.h"
#include "gateway/usage.h"

static void usage_text(FILE *f)
{
    fputs("Usage:\n"
          "  llmgate tenants create ID [--name N] [LIMITS]\n"
          "  llmgate tenants list | show ID\n"
          "  llmgate keys create --tenant T [--name N] [--models GLOB,...] [--expires UNIX]\n"
          "                      [--max-tokens N] [--model-limits JSON] [LIMITS]\n"
          "  llmgate keys list [--tenant T] | show ID | revoke ID | rotate ID\n"
          "  llmgate usage --tenant T [--from YYYY-MM-DD] [--to YYYY-MM-DD]\n"
          "                [--group-by key|model|day] [--key ID] [--format json|csv]\n"
          "LIMITS: --rpm N --tpm N --tpd N --tpmo N --concurrency N (0 = unlimited)\n"
          "Common: -c FILE (config: Redis address, port, prefix; default $LLMGATE_CONFIG or\n"
          "        conf/llmgate.conf), --redis HOST:PORT, --prefix P\n",
          f);
}

bool cli_is_command(const char *name)
{
    return name && (strcmp(name, "keys") == 0 || strcmp(name, "tenants") == 0 ||
                    strcmp(name, "usage") == 0);
}

struct cli_opts {
    const char *config, *redis, *prefix;
    const char *tenant, *name, *models, *from, *to, *group_by, *key, *format, *model_limits;
    long limits[6]; /* rpm tpm tpd tpmo concurrency max_tokens; -1 = not given */
    long expires;
};

static const char *const limit_names[6] = {"rpm",  "tpm",         "tpd",
                                           "tpmo", "concurrency", "max_tokens"};

static int parse_opts(int argc, char **argv, struct cli_opts *o)
{
    static const struct option opts[] = {
        {"config", required_argument, NULL, 'c'},
        {"redis", required_argument, NULL, 'R'},
        {"prefix", required_argument, NULL, 'P'},
        {"tenant", required_argument, NULL, 'T'},
        {"name", required_argument, NULL, 'n'},
        {"models", required_argument, NULL, 'm'},
        {"model-limits", required_argument, NULL, 'L'},
        {"expires", required_argument, NULL, 'e'},
        {"from", required_argument, NULL, 'f'},
        {"to", required_argument, NULL, 't'},
        {"group-by", required_argument, NULL, 'g'},
        {"key", required_argument, NULL, 'k'},
        {"format", required_argument, NULL, 'F'},
        {"rpm", required_argument, NULL, 1000},
        {"tpm", required_argument, NULL, 1001},
        {"tpd", required_argument, NULL, 1002},
        {"tpmo", required_argument, NULL, 1003},
        {"concurrency", required_argument, NULL, 1004},
        {"max-tokens", required_argument, NULL, 1005},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    for (int i = 0; i < 6; i++)
        o->limits[i] = -1;
    o->expires = -1;
    int ch;
    optind = 1;
    while ((ch = getopt_long(argc, argv, "c:h", opts, NULL)) != -1) {
        char *end;
        switch (ch) {
        case 'c': o->config = optarg; break;
        case 'R': o->redis = optarg; break;
        case 'P': o->prefix = optarg; break;
        case 'T': o->tenant = optarg; break;
        case 'n': o->name = optarg; break;
        case 'm': o->models = optarg; break;
        case 'L': o->model_limits = optarg; break;
        case 'f': o->from = optarg; break;
        case 't': o->to = optarg; break;
        case 'g': o->group_by = optarg; break;
        case 'k': o->key = optarg; break;
        case 'F': o->format = optarg; break;
        case 'e':
            o->expires = strtol(optarg, &end, 10);
            if (*end || o->expires < 0) return -1;
            break;
        case 'h': usage_text(stdout); exit(0);
        default:
            if (ch >= 1000 && ch <= 1005) {
                /* rpm tpm tpd tpmo concurrency max_tokens: the day and month windows
                 * take up to KEYS_WINDOW_LIMIT_MAX, the others KEYS_LIMIT_MAX. */
                long max =
                    ch == 1002 || ch == 1003 ? (long)KEYS_WINDOW_LIMIT_MAX : (long)KEYS_LIMIT_MAX;
                errno = 0;
                o->limits[ch - 1000] = strtol(optarg, &end, 10);
                if (*end || end == optarg || errno || o->limits[ch - 1000] < 0 ||
                    o->limits[ch - 1000] > max)
                    return -1;
                break;
            }
            return -1;
        }
    }
    return optind;
}

/* A tenant or key spec as the admin script reads it. */
static char *spec_json(const struct cli_opts *o, bool key)
{
    cJSON *doc = cJSON_CreateObject();
    cJSON *lim = cJSON_AddObjectToObject(doc, "limits");
    for (int i = 0; i < 6; i++)
        if (o->limits[i] >= 0 && (key || i < 5))
            cJSON_AddNumberToObject(lim, limit_names[i], (double)o->limits[i]);
    if (o->name) cJSON_AddStringToObject(doc, "name", o->name);
    if (key) {
        if (o->tenant) cJSON_AddStringToObject(doc, "tenant", o->tenant);
        if (o->expires >= 0) cJSON_AddNumberToObject(doc, "expires", (double)o->expires);
        if (o->models) {
            cJSON *arr = cJSON_AddArrayToObject(doc, "models");
            for (const char *p = o->models; *p;) {
                size_t n = strcspn(p, ",");
                char *g = strndup(p, n);
                if (g && n) cJSON_AddItemToArray(arr, cJSON_CreateString(g));
                free(g);
                p += n + (p[n] == ',');
            }
        }
        if (o->model_limits) {
            cJSON *ml = cJSON_Parse(o->model_limits);
            if (!cJSON_IsObject(ml)) {
                cJSON_Delete(ml);
                cJSON_Delete(doc);
                return NULL;
            }
            cJSON_AddItemToObject(doc, "model_limits", ml);
        }
    }
    char *s = cJSON_PrintUnformatted(doc);
    cJSON_Delete(doc);
    return s;
}

static redisContext *connect_redis(const struct cli_opts *o, char *prefix, size_t cap)
{
    char host[256] = "127.0.0.1";
    unsigned port = 6379;
    snprintf(prefix, cap, "llmgate:");
    const char *path = o->config                  ? o->config
                       : getenv("LLMGATE_CONFIG") ? getenv("LLMGATE_CONFIG")
                                                  : "conf/llmgate.conf";
    struct config *cfg = NULL;
    char err[1024];
    if (config_load(path, &cfg, err, sizeof err) == 0) {
        snprintf(host, sizeof host, "%s", cfg->redis_address);
        port = cfg->redis_port;
        snprintf(prefix, cap, "%s", cfg->redis_prefix);
        config_unref(cfg);
    } else if (o->config || !o->redis) {
        fprintf(stderr, "llmgate: %s\n", err);
        return NULL;
    }
    if (o->redis) {
        const char *colon = strrchr(o->redis, ':');
        if (colon) {
            snprintf(host, sizeof host, "%.*s", (int)(colon - o->redis), o->redis);
            port = (unsigned)strtoul(colon + 1, NULL, 10);
        } else {
            snprintf(host, sizeof host, "%s", o->redis);
        }
    }
    if (o->prefix) snprintf(prefix, cap, "%s", o->prefix);
    struct timeval tv = {.tv_sec = 5};
    redisContext *c = redisConnectWithTimeout(host, (int)port, tv);
    if (!c || c->err) {
        fprintf(stderr, "llmgate: cannot connect to Redis at %s:%u: %s\n", host, port,
                c ? c->errstr : "out of memory");
        if (c) redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, tv);
    return c;
}

/* Runs a script with no keys; prints its JSON (with the new secret added) or CSV. */
static int eval_print(redisContext *c, const struct redis_script *s, int nargs, const char **args,
                      const char *secret, bool csv)
{
    const char *argv[16];
    size_t lens[16];
    int n = 0;
    argv[n++] = "EVAL";
    argv[n++] = s->src;
    argv[n++] = "0";
    for (int i = 0; i < nargs && n < 16; i++)
        argv[n++] = args[i];
    for (int i = 0; i < n; i++)
        lens[i] = strlen(argv[i]);
    redisReply *rep = redisCommandArgv(c, n, argv, lens);
    if (!rep) {
        fprintf(stderr, "llmgate: Redis: %s\n", c->errstr);
        return 1;
    }
    int rc = 0;
    if (rep->type == REDIS_REPLY_ERROR) {
        fprintf(stderr, "llmgate: %s\n",
                strncmp(rep->str, "ERR ", 4) == 0 ? rep->str + 4 : rep->str);
        rc = 1;
    } else if (rep->type != REDIS_REPLY_STRING) {
        fprintf(stderr, "llmgate: unexpected reply from Redis\n");
        rc = 1;
    } else if (csv) {
        char *out = usage_report_csv(rep->str, rep->len);
        if (out)
            fputs(out, stdout);
        else
            rc = 1;
        free(out);
    } else if (secret && secret[0]) {
        cJSON *doc = cJSON_ParseWithLength(rep->str, rep->len);
        char *out = NULL;
        if (doc && cJSON_AddStringToObject(doc, "key", secret)) out = cJSON_Print(doc);
        cJSON_Delete(doc);
        if (out)
            printf("%s\n", out);
        else
            rc = 1;
        free(out);
    } else {
        cJSON *doc = cJSON_ParseWithLength(rep->str, rep->len);
        char *out = doc ? cJSON_Print(doc) : NULL;
        printf("%s\n", out ? out : rep->str);
        free(out);
        cJSON_Delete(doc);
    }
    freeReplyObject(rep);
    return rc;
}

static int cmd_usage(redisContext *c, const char *prefix, const struct cli_opts *o)
{
    if (!o->tenant || !keys_tenant_id_valid(o->tenant)) {
        fprintf(stderr, "llmgate usage: --tenant is required\n");
        return 2;
    }
    long today = usage_day_of_ms(util_wall_ms()), d0 = today, d1 = today;
    if ((o->to && usage_parse_day(o->to, &d1) != 0) ||
        (o->from && usage_parse_day(o->from, &d0) != 0)) {
        fprintf(stderr, "llmgate usage: dates are YYYY-MM-DD (UTC)\n");
        return 2;
    }
    if (!o->from) d0 = d1;
    const char *group = o->group_by ? o->group_by : "day";
    if ((strcmp(group, "key") != 0 && strcmp(group, "model") != 0 && strcmp(group, "day") != 0) ||
        d1 < d0 || d1 - d0 >= 400) {
        fprintf(stderr, "llmgate usage: --group-by key|model|day, from <= to, at most 400 days\n");
        return 2;
    }
    char a0[24], a1[24];
    snprintf(a0, sizeof a0, "%ld", d0);
    snprintf(a1, sizeof a1, "%ld", d1);
    const char *args[] = {prefix, o->tenant, group, a0, a1, o->key ? o->key : ""};
    return eval_print(c, &script_usage_report, 6, args, NULL,
                      o->format && strcmp(o->format, "csv") == 0);
}

int cli_main(int argc, char **argv)
{
    const char *cmd = argv[0];
    struct cli_opts o = {0};
    int first = parse_opts(argc, argv, &o);
    if (first < 0) {
        usage_text(stderr);
        return 2;
    }
    const char *verb = first < argc ? argv[first] : NULL;
    const char *id = first + 1 < argc ? argv[first + 1] : NULL;
    if (strcmp(cmd, "usage") != 0 && !verb) {
        usage_text(stderr);
        return 2;
    }
    char prefix[128];
    redisContext *c = connect_redis(&o, prefix, sizeof prefix);
    if (!c) return 1;
    int rc = 2;
    char secret[KEYS_SECRET_LEN + 1] = "", sha_hex[SHA256_HEX_LEN + 1], new_id[KEYS_ID_LEN + 1];
    const char *args[8];
    const char *op = NULL, *arg = NULL;
    char *spec = NULL;
    if (strcmp(cmd, "usage") == 0) {
        rc = cmd_usage(c, prefix, &o);
        goto out;
    } else if (strcmp(cmd, "tenants") == 0) {
        if (strcmp(verb, "create") == 0 && id)
            op = "tenant_put", arg = id, spec = spec_json(&o, false);
        else if (strcmp(verb, "list") == 0)
            op = "tenant_list";
        else if (strcmp(verb, "show") == 0 && id)
            op = "tenant_get", arg = id;
        if (arg && !keys_tenant_id_valid(arg)) op = NULL;
    } else {
        if (strcmp(verb, "create") == 0 && o.tenant)
            op = "key_create", spec = spec_json(&o, true);
        else if (strcmp(verb, "list") == 0)
            op = "key_list", arg = o.tenant ? o.tenant : "";
        else if (strcmp(verb, "show") == 0 && id)
            op = "key_get", arg = id;
        else if (strcmp(verb, "revoke") == 0 && id)
            op = "key_revoke", arg = id;
        else if (strcmp(verb, "rotate") == 0 && id)
            op = "key_rotate", arg = id;
    }
    if (!op) {
        usage_text(stderr);
        goto out;
    }
    int na = admin_build_args(prefix, op, arg, spec ? spec : "{}", secret, sha_hex, new_id, args);
    if (na < 0) {
        fprintf(stderr, "llmgate: cannot generate a key (RNG failure)\n");
        rc = 1;
        goto out;
    }
    rc = eval_print(c, &script_admin, na, args, secret, false);
out:
    explicit_bzero(secret, sizeof secret);
    free(spec);
    redisFree(c);
    return rc;
}
