/* The Lua scripts llmgate runs on Redis: quota reserve and settle (with the
 * usage record), key lookup, the admin operations shared by the admin HTTP API
 * and the CLI, and the usage report. Each is one atomic step on the server. */
#ifndef LLMGATE_GATEWAY_SCRIPTS_H
#define LLMGATE_GATEWAY_SCRIPTS_H

#include "cache/redis.h"

/* Reserve: KEYS = per scope (bucket hash, concurrency zset); ARGV = member,
 * tokens, lease_ms, requests (1, or 0 to ask only for a grant), grant tokens,
 * grant requests (0 0: no grant), grant_ms, then per scope rpm, tpm, tpd,
 * tpmo, conc (0 = no limit). A refusal while grants may be out caps retry_ms
 * at the time by which they are given back (2 x grant_ms after the last). Returns {ok, kind,
 * retry_ms, req_limit, req_remaining, req_reset_ms, tok_limit, tok_remaining, tok_reset_ms, day,
 * month, too_large, window, scope, granted_tokens, granted_requests, asked_tokens} (month is -1
 * when no scope has a monthly limit; window: rpm|tpm|tpd|tpmo|concurrency; scope: 1-based index).
 * The grant is all or nothing, taken only with an admitted request and only while every window
 * keeps twice the grant (gateway/grant.h). */
extern struct redis_script script_reserve;
/* A grant's unspent part back: KEYS = the class's bucket hashes; ARGV = tokens,
 * requests, day, month (the grant's windows), then per scope rpm, tpm. */
extern struct redis_script script_grant_return;
/* Settle: charges real usage, refunds the rest, frees the concurrency slot and
 * appends the usage record, once per member (idempotent for spool replays).
 * KEYS = per scope (bucket, conc) then stream, dedup key, aggregate prefix
 * (one hash per tenant and UTC day); ARGV: see quota.c. Returns 1, or 0 when
 * the member was settled before. */
extern struct redis_script script_settle;
/* Several settles in one call (quota.c sends the records a worker finished in
 * one event-loop turn together): ARGV[1] = m, then m pairs (keys, args) of counts, then the
 * records' KEYS and ARGV one after the other, each in the single layout.
 * Returns the number settled. */
extern struct redis_script script_settle_batch;
/* Key lookup: KEYS[1] = key:{sha}; ARGV[1] = prefix. Returns a flat field/value
 * list of the key, then "tenant.*" fields of its tenant; empty when unknown. */
extern struct redis_script script_key_lookup;
/* Admin operations: ARGV[1] = prefix, ARGV[2] = op, then op arguments; returns a
 * JSON string, or an error reply "ERR <code>: <message>". */
extern struct redis_script script_admin;
/* Usage report: ARGV = prefix, tenant, group_by, from_day, to_day (days since
 * the epoch, UTC), key filter (or ""). Returns a JSON string. */
extern struct redis_script script_usage_report;

/* Computes the SHA-1 of every script (once, before any worker starts). */
void scripts_init(void);

#endif
