/* API key check: SHA-256 the presented key, compare to every configured digest
 * in constant time, never log the key. */
#include "gateway/auth.h"

#include <string.h>
#include <strings.h>

#include "common/hash.h"

#define MAX_KEY_LEN 512

const char *auth_bearer_key(const char *value, size_t *len)
{
    if (!value || strncasecmp(value, "Bearer ", 7) != 0) return NULL;
    const char *k = value + 7;
    while (*k == ' ')
        k++;
    size_t n = strlen(k);
    while (n && (k[n - 1] == ' ' || k[n - 1] == '\t'))
        n--;
    if (n == 0 || n > MAX_KEY_LEN) return NULL;
    *len = n;
    return k;
}

int auth_key_valid(const struct config *cfg, const char *key, size_t len)
{
    if (cfg->n_api_keys == 0) return 1;
    uint8_t digest[SHA256_LEN];
    hash_sha256(key, len, digest);
    int found = 0;
    /* No early exit: the time taken does not depend on which digest matched. */
    for (size_t i = 0; i < cfg->n_api_keys; i++)
        found |= hash_equal_ct(digest, cfg->api_keys[i], SHA256_LEN);
    return found;
}
