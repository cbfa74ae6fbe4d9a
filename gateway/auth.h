/* Caller authentication against the configured key hashes. Interim until
 * tenant keys in Redis land: keys live in the config only as SHA-256 digests. */
#ifndef LLMGATE_GATEWAY_AUTH_H
#define LLMGATE_GATEWAY_AUTH_H

#include <stddef.h>

#include "gateway/config.h"

/* Extracts the API key from an "Authorization: Bearer <key>" value; returns a
 * pointer into value and its length, or NULL when the header is missing or malformed. */
const char *auth_bearer_key(const char *value, size_t *len);
/* 1 when key hashes to one of cfg's digests (constant time over every digest),
 * 0 otherwise. With no digests configured, authentication is off and this returns 1. */
int auth_key_valid(const struct config *cfg, const char *key, size_t len);

#endif
