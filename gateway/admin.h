/* The admin HTTP API under /admin/v1/: tenants, keys (create, list, show,
 * revoke, rotate) and usage reports, guarded by the admin token from the
 * environment (compared in constant time). The operations themselves are the
 * admin Lua script the CLI runs too, so both behave the same. */
#ifndef LLMGATE_GATEWAY_ADMIN_H
#define LLMGATE_GATEWAY_ADMIN_H

#include <stdbool.h>

#include "gateway/request.h"

/* Whether path belongs to the admin API this module serves. */
bool admin_path(const char *path);
/* The admin pipeline's only stage: authorize, route, run the operation on
 * Redis (async) and answer. */
enum stage_rc admin_handle(struct request *r);

/* Builds the admin script's argument list for a key or tenant spec given as a
 * JSON object (the HTTP body or what the CLI assembled). Shared by both front
 * ends; returns the number of args written into args (at most 6), with the
 * key's secret written to secret for create/rotate, or -1 when op is unknown
 * or the RNG failed. Strings point into the caller's buffers. */
int admin_build_args(const char *prefix, const char *op, const char *id, const char *body,
                     char *secret, char *sha_hex, char *new_id, const char **args);

#endif
