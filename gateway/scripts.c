/* The Lua sources of every script llmgate runs on Redis. Time always comes
 * from the server (TIME), so every gateway replica and worker agrees on bucket
 * refills and calendar windows. Calendar windows are UTC days and months,
 * identified by days since the epoch and by year*12 + month-1. */
#include "gateway/scripts.h"

/* Shared helpers: server time in ms, days <-> civil date (H. Hinnant's algorithms). */
#define LUA_TIME                                                                                   \
    "local function now_ms()\n"                                                                    \
    "  local t = redis.call('TIME')\n"                                                             \
    "  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"                         \
    "end\n"                                                                                        \
    "local function civil(z)\n"                                                                    \
    "  z = z + 719468\n"                                                                           \
    "  local era = math.floor(z / 146097)\n"                                                       \
    "  local doe = z - era * 146097\n"                                                             \
    "  local yoe = math.floor((doe - math.floor(doe / 1460) + math.floor(doe / 36524)\n"           \
    "                          - math.floor(doe / 146096)) / 365)\n"                               \
    "  local doy = doe - (365 * yoe + math.floor(yoe / 4) - math.floor(yoe / 100))\n"              \
    "  local mp = math.floor((5 * doy + 2) / 153)\n"                                               \
    "  local d = doy - math.floor((153 * mp + 2) / 5) + 1\n"                                       \
    "  local m = mp < 10 and mp + 3 or mp - 9\n"                                                   \
    "  local y = yoe + era * 400\n"                                                                \
    "  if m <= 2 then y = y + 1 end\n"                                                             \
    "  return y, m, d\n"                                                                           \
    "end\n"                                                                                        \
    "local function days_from_civil(y, m, d)\n"                                                    \
    "  if m <= 2 then y = y - 1 end\n"                                                             \
    "  local era = math.floor(y / 400)\n"                                                          \
    "  local yoe = y - era * 400\n"                                                                \
    "  local mp = m > 2 and m - 3 or m + 9\n"                                                      \
    "  local doy = math.floor((153 * mp + 2) / 5) + d - 1\n"                                       \
    "  local doe = yoe * 365 + math.floor(yoe / 4) - math.floor(yoe / 100) + doy\n"                \
    "  return era * 146097 + doe - 719468\n"                                                       \
    "end\n"                                                                                        \
    "local function month_of(day)\n"                                                               \
    "  local y, m = civil(day)\n"                                                                  \
    "  return y * 12 + m - 1\n"                                                                    \
    "end\n"                                                                                        \
    "local function month_end_ms(mon)\n"                                                           \
    "  local nxt = mon + 1\n"                                                                      \
    "  return days_from_civil(math.floor(nxt / 12), nxt % 12 + 1, 1) * 86400000\n"                 \
    "end\n"

/* Quota hashes live 35 days after the day they were last refreshed (field x =
 * that day, so PEXPIRE runs once a day per bucket, not per request): long
 * enough for a month window, and an idle key's buckets are full again after a
 * minute anyway. The reserve computes the month (and its end) only when some
 * scope has a monthly limit; it returns month -1 otherwise. When some scope has
 * a day or month limit, the reply goes on with two numbers per scope: its day and
 * month counters after this reservation (before it, when refused; -1 for a
 * window the scope does not have) -- what the fail-open limiter starts from
 * should Redis go away. */
struct redis_script script_reserve = {
    .src =
        "local QTTL = 35 * 86400000\n"
        "local t = redis.call('TIME')\n"
        "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
        "local day = math.floor(now / 86400000)\n"
        "local member, n, lease = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3])\n"
        "local nreq, gt, gr = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])\n"
        "local gms = tonumber(ARGV[7])\n"
        "local asked = gt\n"
        "local ns = #KEYS / 2\n"
        "local floor, ceil, min, max = math.floor, math.ceil, math.min, math.max\n"
        "local L = {}\n"
        "for i = 1, ns do\n"
        "  local b = 2 + 5 * i\n"
        "  L[i] = {tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3]),\n"
        "          tonumber(ARGV[b + 4]), tonumber(ARGV[b + 5])}\n"
        "end\n"
        "local mon, mend = -1, 0\n"
        "for i = 1, ns do\n"
        "  if L[i][4] > 0 then\n"
        "    local z = day + 719468\n"
        "    local era = floor(z / 146097)\n"
        "    local doe = z - era * 146097\n"
        "    local yoe = floor((doe - floor(doe / 1460) + floor(doe / 36524)\n"
        "                       - floor(doe / 146096)) / 365)\n"
        "    local doy = doe - (365 * yoe + floor(yoe / 4) - floor(yoe / 100))\n"
        "    local mp = floor((5 * doy + 2) / 153)\n"
        "    local m = mp < 10 and mp + 3 or mp - 9\n"
        "    local y = yoe + era * 400\n"
        "    if m <= 2 then y = y + 1 end\n"
        "    mon = y * 12 + m - 1\n"
        "    local ny, nm = floor((mon + 1) / 12), (mon + 1) % 12 + 1\n"
        "    if nm <= 2 then ny = ny - 1 end\n"
        "    era = floor(ny / 400)\n"
        "    yoe = ny - era * 400\n"
        "    mp = nm > 2 and nm - 3 or nm + 9\n"
        "    doy = floor((153 * mp + 2) / 5)\n"
        "    doe = yoe * 365 + floor(yoe / 4) - floor(yoe / 100) + doy\n"
        "    mend = (era * 146097 + doe - 719468) * 86400000\n"
        "    break\n"
        "  end\n"
        "end\n"
        "local ok, kind, retry, big, what, scope = 1, '', 0, 0, '', 0\n"
        "local G = {}\n"
        /* Tokens granted to workers come back by G[i] at the latest: a refusal
         * while some are out says to retry then, not at the window's end. */
        "local function deny(k, ms, too_large, w, i)\n"
        "  ok = 0\n"
        "  if not too_large and w ~= 'concurrency' and G[i] > now then ms = min(ms, G[i] - now) "
        "end\n"
        "  if too_large then big = 1 end\n"
        "  if ms >= retry then retry = ms; kind = k; what = w; scope = i end\n"
        "end\n"
        "local R, T, D, M, X = {}, {}, {}, {}, {}\n"
        "for i = 1, ns do\n"
        "  local rpm, tpm, tpd, tpmo, conc = L[i][1], L[i][2], L[i][3], L[i][4], L[i][5]\n"
        "  local h = redis.call('HMGET', KEYS[2 * i - 1], 'r', 'rt', 't', 'tt', 'd', 'dw',\n"
        "                       'm', 'mw', 'x', 'ge')\n"
        "  G[i] = tonumber(h[10]) or 0\n"
        "  X[i] = tonumber(h[9]) == day\n"
        "  if rpm > 0 then\n"
        "    local lvl, ts = tonumber(h[1]), tonumber(h[2])\n"
        "    if lvl == nil or ts == nil then lvl = rpm\n"
        "    else lvl = min(rpm, lvl + max(0, now - ts) * rpm / 60000) end\n"
        "    R[i] = lvl\n"
        "    if nreq > 0 and lvl < nreq then\n"
        "      deny('requests', ceil((nreq - lvl) * 60000 / rpm), false, 'rpm', i)\n"
        "    end\n"
        "  end\n"
        "  if tpm > 0 then\n"
        "    local lvl, ts = tonumber(h[3]), tonumber(h[4])\n"
        "    if lvl == nil or ts == nil then lvl = tpm\n"
        "    else lvl = min(tpm, lvl + max(0, now - ts) * tpm / 60000) end\n"
        "    T[i] = lvl\n"
        "    if n > tpm then deny('tokens', ceil((tpm - lvl) * 60000 / tpm), true, 'tpm', i)\n"
        "    elseif lvl < n then deny('tokens', ceil((n - lvl) * 60000 / tpm), false, 'tpm', i)\n"
        "    end\n"
        "  end\n"
        "  if tpd > 0 then\n"
        "    local v = (tonumber(h[6]) == day) and tonumber(h[5]) or 0\n"
        "    D[i] = v\n"
        "    if v + n > tpd then deny('tokens', (day + 1) * 86400000 - now, n > tpd, 'tpd', i) "
        "end\n"
        "  end\n"
        "  if tpmo > 0 then\n"
        "    local v = (tonumber(h[8]) == mon) and tonumber(h[7]) or 0\n"
        "    M[i] = v\n"
        "    if v + n > tpmo then deny('tokens', mend - now, n > tpmo, 'tpmo', i) end\n"
        "  end\n"
        "  if conc > 0 then\n"
        "    redis.call('ZREMRANGEBYSCORE', KEYS[2 * i], '-inf', now)\n"
        "    if redis.call('ZCARD', KEYS[2 * i]) >= conc then\n"
        "      deny('requests', 1000, false, 'concurrency', i)\n"
        "    end\n"
        "  end\n"
        "end\n"
        /* A grant (gateway/grant.h) rides on an admitted reserve when every window
         * keeps at least twice the grant after it; never with a concurrency limit. */
        "if ok == 1 and gt > 0 then\n"
        "  for i = 1, ns do\n"
        "    local rpm, tpm, tpd, tpmo, conc = L[i][1], L[i][2], L[i][3], L[i][4], L[i][5]\n"
        "    if conc > 0 or (rpm > 0 and R[i] - nreq < 2 * gr) or (tpm > 0 and T[i] - n < 2 * gt)\n"
        "       or (tpd > 0 and tpd - D[i] - n < 2 * gt)\n"
        "       or (tpmo > 0 and tpmo - M[i] - n < 2 * gt) then\n"
        "      gt = 0\n"
        "      break\n"
        "    end\n"
        "  end\n"
        "else\n"
        "  gt = 0\n"
        "end\n"
        "if gt == 0 then gr = 0 end\n"
        "local tn, tr = n + gt, nreq + gr\n"
        "local rl, rrem, rres, tl, trem, tres, wl, wrem, wres = -1, -1, 0, -1, -1, 0, -1, -1, 0\n"
        "local U, uw = {}, false\n"
        "for i = 1, ns do\n"
        "  local rpm, tpm, tpd, tpmo, conc = L[i][1], L[i][2], L[i][3], L[i][4], L[i][5]\n"
        "  local r, tk, d, m = R[i], T[i], D[i], M[i]\n"
        "  if ok == 1 then\n"
        "    local hk = KEYS[2 * i - 1]\n"
        "    local a, na = {}, 0\n"
        "    if r then\n"
        "      r = r - tr; a[na + 1] = 'r'; a[na + 2] = r; a[na + 3] = 'rt'; a[na + 4] = now\n"
        "      na = na + 4\n"
        "    end\n"
        "    if tk then\n"
        "      tk = tk - tn; a[na + 1] = 't'; a[na + 2] = tk; a[na + 3] = 'tt'; a[na + 4] = now\n"
        "      na = na + 4\n"
        "    end\n"
        "    if d then\n"
        "      d = d + tn; a[na + 1] = 'd'; a[na + 2] = d; a[na + 3] = 'dw'; a[na + 4] = day\n"
        "      na = na + 4\n"
        "    end\n"
        "    if m then\n"
        "      m = m + tn; a[na + 1] = 'm'; a[na + 2] = m; a[na + 3] = 'mw'; a[na + 4] = mon\n"
        "      na = na + 4\n"
        "    end\n"
        "    if na > 0 then\n"
        "      if not X[i] then a[na + 1] = 'x'; a[na + 2] = day; na = na + 2 end\n"
        "      if gt > 0 then a[na + 1] = 'ge'; a[na + 2] = max(G[i], now + 2 * gms); na = na + 2 "
        "end\n"
        "      redis.call('HSET', hk, unpack(a))\n"
        "      if not X[i] then redis.call('PEXPIRE', hk, QTTL) end\n"
        "    end\n"
        "    if conc > 0 then\n"
        "      redis.call('ZADD', KEYS[2 * i], now + lease, member)\n"
        "      redis.call('PEXPIRE', KEYS[2 * i], lease + 60000)\n"
        "    end\n"
        "  end\n"
        "  if r then\n"
        "    local rem = max(0, floor(r))\n"
        "    if rrem < 0 or rem < rrem then\n"
        "      rl, rrem, rres = rpm, rem, ceil((rpm - r) * 60000 / rpm)\n"
        "    end\n"
        "  end\n"
        "  if tk then\n"
        "    local rem = max(0, floor(tk))\n"
        "    if trem < 0 or rem < trem then\n"
        "      tl, trem, tres = tpm, rem, ceil((tpm - tk) * 60000 / tpm)\n"
        "    end\n"
        "  end\n"
        "  if d then\n"
        "    local rem = max(0, tpd - d)\n"
        "    if wrem < 0 or rem < wrem then wl, wrem, wres = tpd, rem, (day + 1) * 86400000 - now "
        "end\n"
        "  end\n"
        "  if m then\n"
        "    local rem = max(0, tpmo - m)\n"
        "    if wrem < 0 or rem < wrem then wl, wrem, wres = tpmo, rem, mend - now end\n"
        "  end\n"
        "  if d or m then uw = true end\n"
        "  U[2 * i - 1] = d and floor(d) or -1\n"
        "  U[2 * i] = m and floor(m) or -1\n"
        "end\n"
        "if tl < 0 then tl, trem, tres = wl, wrem, wres end\n"
        "local out = {ok, kind, floor(retry), rl, rrem, floor(rres), tl, trem, floor(tres),\n"
        "             day, mon, big, what, scope, gt, gr, asked}\n"
        "if uw then for j = 1, 2 * ns do out[17 + j] = U[j] end end\n"
        "return out\n"};

/* A grant's unspent part back to its class's buckets: requests and tokens to
 * the rpm/tpm buckets (refilled to now, capped at the limit), tokens off the
 * day and month counters when those are still the windows it was taken in. */
struct redis_script script_grant_return = {
    .src = "local t = redis.call('TIME')\n"
           "local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
           "local tok, req = tonumber(ARGV[1]), tonumber(ARGV[2])\n"
           "local gday, gmon = tonumber(ARGV[3]), tonumber(ARGV[4])\n"
           "local min, max = math.min, math.max\n"
           "for i = 1, #KEYS do\n"
           "  local rpm, tpm = tonumber(ARGV[3 + 2 * i]), tonumber(ARGV[4 + 2 * i])\n"
           "  local h = redis.call('HMGET', KEYS[i], 'r', 'rt', 't', 'tt', 'd', 'dw', 'm', 'mw')\n"
           "  local a, na = {}, 0\n"
           "  if rpm > 0 and req > 0 and h[1] and h[2] then\n"
           "    local lvl = tonumber(h[1]) + max(0, now - tonumber(h[2])) * rpm / 60000\n"
           "    a[na + 1] = 'r'; a[na + 2] = min(rpm, lvl + req); a[na + 3] = 'rt'\n"
           "    a[na + 4] = now; na = na + 4\n"
           "  end\n"
           "  if tpm > 0 and tok > 0 and h[3] and h[4] then\n"
           "    local lvl = tonumber(h[3]) + max(0, now - tonumber(h[4])) * tpm / 60000\n"
           "    a[na + 1] = 't'; a[na + 2] = min(tpm, lvl + tok); a[na + 3] = 'tt'\n"
           "    a[na + 4] = now; na = na + 4\n"
           "  end\n"
           "  if tok > 0 and h[5] and tonumber(h[6]) == gday then\n"
           "    a[na + 1] = 'd'; a[na + 2] = max(0, tonumber(h[5]) - tok); na = na + 2\n"
           "  end\n"
           "  if tok > 0 and h[7] and tonumber(h[8]) == gmon then\n"
           "    a[na + 1] = 'm'; a[na + 2] = max(0, tonumber(h[7]) - tok); na = na + 2\n"
           "  end\n"
           "  if na > 0 then redis.call('HSET', KEYS[i], unpack(a)) end\n"
           "end\n"
           "return 1\n"};

/* The settle of one usage record, on KEYS[ko + 1 ..] and ARGV[ao + 1 .. ao + na]
 * (the single-record layout documented in scripts.h). The dedup key lives an
 * hour: a record whose reply was lost is replayed from the spool within
 * seconds of Redis returning (or at the next start), and an hour of marks is
 * ~100 bytes per request. Aggregate fields are incremented only when non-zero,
 * and the aggregate's TTL set when its first field appears. */
#define LUA_SETTLE                                                                                 \
    LUA_TIME                                                                                       \
    "local QTTL, DEDUP_S = 35 * 86400000, 3600\n"                                                  \
    "local now = now_ms()\n"                                                                       \
    "local day = math.floor(now / 86400000)\n"                                                     \
    "\n"                                                                                           \
    "local function settle(ko, ao, na)\n"                                                          \
    "  local ns = tonumber(ARGV[ao + 6])\n"                                                        \
    "  if not redis.call('SET', KEYS[ko + 2 * ns + 2], '1', 'NX', 'EX', DEDUP_S) then return 0 "   \
    "end\n"                                                                                        \
    "  local member, reserved, actual = ARGV[ao + 1], tonumber(ARGV[ao + 2]), tonumber(ARGV[ao + " \
    "3])\n"                                                                                        \
    "  local rday, rmon = tonumber(ARGV[ao + 4]), tonumber(ARGV[ao + 5])\n"                        \
    "  for i = 1, ns do\n"                                                                         \
    "    local hk, tpm = KEYS[ko + 2 * i - 1], tonumber(ARGV[ao + 6 + i])\n"                       \
    "    redis.call('ZREM', KEYS[ko + 2 * i], member)\n"                                           \
    "    local h = redis.call('HMGET', hk, 't', 'tt', 'd', 'dw', 'm', 'mw', 'x')\n"                \
    "    local a, n = {}, 0\n"                                                                     \
    "    local lvl, ts = tonumber(h[1]), tonumber(h[2])\n"                                         \
    "    if tpm > 0 then\n"                                                                        \
    "      if lvl == nil or ts == nil then lvl = tpm\n"                                            \
    "      else lvl = math.min(tpm, lvl + math.max(0, now - ts) * tpm / 60000) end\n"              \
    "    end\n"                                                                                    \
    "    if reserved > 0 then\n"                                                                   \
    "      local delta = reserved - actual\n"                                                      \
    "      if delta ~= 0 then\n"                                                                   \
    "        if tpm > 0 and h[1] then\n"                                                           \
    "          a[n + 1] = 't'; a[n + 2] = math.min(tpm, lvl + delta); a[n + 3] = 'tt'; a[n + 4] "  \
    "= now\n"                                                                                      \
    "          n = n + 4\n"                                                                        \
    "        end\n"                                                                                \
    "        if h[3] and tonumber(h[4]) == rday then\n"                                            \
    "          a[n + 1] = 'd'; a[n + 2] = math.max(0, tonumber(h[3]) - delta); n = n + 2\n"        \
    "        end\n"                                                                                \
    "        if h[5] and tonumber(h[6]) == rmon then\n"                                            \
    "          a[n + 1] = 'm'; a[n + 2] = math.max(0, tonumber(h[5]) - delta); n = n + 2\n"        \
    "        end\n"                                                                                \
    "      end\n"                                                                                  \
    "    elseif actual > 0 then\n"                                                                 \
    "      if tpm > 0 then a[n + 1] = 't'; a[n + 2] = lvl - actual; a[n + 3] = 'tt'; a[n + 4] = "  \
    "now; n = n + 4 end\n"                                                                         \
    "      local d = (tonumber(h[4]) == day) and (tonumber(h[3]) or 0) or 0\n"                     \
    "      local mon = month_of(day)\n"                                                            \
    "      local m = (tonumber(h[6]) == mon) and (tonumber(h[5]) or 0) or 0\n"                     \
    "      a[n + 1] = 'd'; a[n + 2] = d + actual; a[n + 3] = 'dw'; a[n + 4] = day\n"               \
    "      a[n + 5] = 'm'; a[n + 6] = m + actual; a[n + 7] = 'mw'; a[n + 8] = mon\n"               \
    "      n = n + 8\n"                                                                            \
    "    end\n"                                                                                    \
    "    if n > 0 then\n"                                                                          \
    "      local fresh = tonumber(h[7]) ~= day\n"                                                  \
    "      if fresh then a[n + 1] = 'x'; a[n + 2] = day end\n"                                     \
    "      redis.call('HSET', hk, unpack(a))\n"                                                    \
    "      if fresh then redis.call('PEXPIRE', hk, QTTL) end\n"                                    \
    "    end\n"                                                                                    \
    "  end\n"                                                                                      \
    "  local b = ao + 6 + ns\n"                                                                    \
    "  local rec, n = {}, 0\n"                                                                     \
    "  for i = b + 9, ao + na do n = n + 1; rec[n] = ARGV[i] end\n"                                \
    "  redis.call('XADD', KEYS[ko + 2 * ns + 1], 'MAXLEN', '~', ARGV[b + 1], '*', unpack(rec))\n"  \
    "  local agg, f = KEYS[ko + 2 * ns + 3], ARGV[b + 3]\n"                                        \
    "  if redis.call('HINCRBY', agg, f .. 'requests', 1) == 1 then\n"                              \
    "    redis.call('EXPIRE', agg, tonumber(ARGV[b + 2]))\n"                                       \
    "  end\n"                                                                                      \
    "  local M = {'prompt_tokens', 'completion_tokens', 'cached_tokens', 'cost_microusd', "        \
    "'errors'}\n"                                                                                  \
    "  for j = 1, 5 do\n"                                                                          \
    "    local v = tonumber(ARGV[b + 3 + j])\n"                                                    \
    "    if v ~= 0 then redis.call('HINCRBY', agg, f .. M[j], v) end\n"                            \
    "  end\n"                                                                                      \
    "  return 1\n"                                                                                 \
    "end\n"

struct redis_script script_settle = {.src = LUA_SETTLE "return settle(0, 0, #ARGV)\n"};

/* ARGV[1] = m records, ARGV[2j], ARGV[2j+1] = keys and args of record j, then
 * every record's keys (KEYS) and args (ARGV), in order. Returns how many were
 * settled (not seen before). */
struct redis_script script_settle_batch = {
    .src = LUA_SETTLE "local m, ko, ao, done = tonumber(ARGV[1]), 0, 0, 0\n"
                      "ao = 1 + 2 * m\n"
                      "for j = 1, m do\n"
                      "  local nk, na = tonumber(ARGV[2 * j]), tonumber(ARGV[2 * j + 1])\n"
                      "  done = done + settle(ko, ao, na)\n"
                      "  ko, ao = ko + nk, ao + na\n"
                      "end\n"
                      "return done\n"};

struct redis_script script_key_lookup = {
    .src = "local k = redis.call('HGETALL', KEYS[1])\n"
           "if #k == 0 then return k end\n"
           "local tid\n"
           "for i = 1, #k, 2 do if k[i] == 'tenant' then tid = k[i + 1] end end\n"
           "if tid then\n"
           "  local t = redis.call('HGETALL', ARGV[1] .. 'tenant:' .. tid)\n"
           "  for i = 1, #t, 2 do k[#k + 1] = 'tenant.' .. t[i]; k[#k + 1] = t[i + 1] end\n"
           "end\n"
           "return k\n"};

/* Admin operations. Keys: tenants (set of ids), tenant:{id} (hash),
 * tenant:{id}:keys (set of key ids), keyid:{id} -> sha, key:{sha} (hash). */
struct redis_script script_admin = {
    .src =
        "local P, op = ARGV[1], ARGV[2]\n"
        "local LIMITS = {'rpm', 'tpm', 'tpd', 'tpmo', 'concurrency', 'max_tokens'}\n"
        "local function fail(code, msg) return redis.error_reply('ERR ' .. code .. ': ' .. msg) "
        "end\n"
        "local function hash(key)\n"
        "  local f = redis.call('HGETALL', key)\n"
        "  local t = {}\n"
        "  for i = 1, #f, 2 do t[f[i]] = f[i + 1] end\n"
        "  return t\n"
        "end\n"
        "local function num(v) return tonumber(v) or 0 end\n"
        "local function limits_of(h)\n"
        "  local l = {}\n"
        "  for _, n in ipairs(LIMITS) do l[n] = num(h[n]) end\n"
        "  return l\n"
        "end\n"
        "local function tenant_json(id)\n"
        "  local h = hash(P .. 'tenant:' .. id)\n"
        "  if h.id == nil then return nil end\n"
        "  return { id = h.id, name = h.name or '', created = num(h.created), limits = "
        "limits_of(h),\n"
        "           keys = redis.call('SCARD', P .. 'tenant:' .. id .. ':keys') }\n"
        "end\n"
        "local function key_json(sha)\n"
        "  local h = hash(P .. 'key:' .. sha)\n"
        "  if h.id == nil then return nil end\n"
        "  local models = {}\n"
        "  for g in string.gmatch(h.models or '*', '[^,]+') do models[#models + 1] = g end\n"
        "  local ml = cjson.decode((h.model_limits and h.model_limits ~= '') and h.model_limits "
        "or '{}')\n"
        "  return { id = h.id, tenant = h.tenant, name = h.name or '', status = h.status,\n"
        "           models = models, limits = limits_of(h), model_limits = ml,\n"
        "           created = num(h.created), expires = num(h.expires), revoked = num(h.revoked) "
        "}\n"
        "end\n"
        "local function now_s() return tonumber(redis.call('TIME')[1]) end\n"
        "local function put_limits(key, spec)\n"
        "  for _, n in ipairs(LIMITS) do\n"
        "    local v = spec[n]\n"
        "    if v ~= nil then\n"
        "      if type(v) ~= 'number' or v < 0 or v ~= math.floor(v) then\n"
        "        return 'limit ' .. n .. ' must be a non-negative integer'\n"
        "      end\n"
        /* KEYS_LIMIT_MAX and KEYS_WINDOW_LIMIT_MAX (gateway/keys.h) */
        "      local cap = (n == 'tpd' or n == 'tpmo') and 1000000000000 or 4000000000\n"
        "      if v > cap then\n"
        "        return 'limit ' .. n .. ' must be at most ' .. string.format('%.0f', cap)\n"
        "      end\n"
        "      redis.call('HSET', key, n, v)\n"
        "    end\n"
        "  end\n"
        "end\n"
        "local function decode(s)\n"
        "  local ok, v = pcall(cjson.decode, s)\n"
        "  if not ok or type(v) ~= 'table' then return nil end\n"
        "  return v\n"
        "end\n"
        "if op == 'tenant_put' then\n"
        "  local id, spec = ARGV[3], decode(ARGV[4])\n"
        "  if not spec then return fail('invalid', 'body must be a JSON object') end\n"
        "  local key = P .. 'tenant:' .. id\n"
        "  local e = put_limits(key, spec.limits or {})\n"
        "  if e then return fail('invalid', e) end\n"
        "  if redis.call('HSETNX', key, 'created', now_s()) == 1 then\n"
        "    redis.call('HSET', key, 'id', id)\n"
        "  end\n"
        "  if spec.name ~= nil then redis.call('HSET', key, 'name', tostring(spec.name)) end\n"
        "  redis.call('SADD', P .. 'tenants', id)\n"
        "  return cjson.encode(tenant_json(id))\n"
        "elseif op == 'tenant_get' then\n"
        "  local t = tenant_json(ARGV[3])\n"
        "  if not t then return fail('not_found', 'no tenant ' .. ARGV[3]) end\n"
        "  return cjson.encode(t)\n"
        "elseif op == 'tenant_list' then\n"
        "  local ids = redis.call('SMEMBERS', P .. 'tenants')\n"
        "  table.sort(ids)\n"
        "  local out = {}\n"
        "  for _, id in ipairs(ids) do out[#out + 1] = tenant_json(id) end\n"
        "  if #out == 0 then return '{\"data\":[]}' end\n"
        "  return cjson.encode({ data = out })\n"
        "elseif op == 'key_create' or op == 'key_rotate' then\n"
        "  local sha, id, spec\n"
        "  if op == 'key_create' then\n"
        "    sha, id, spec = ARGV[3], ARGV[4], decode(ARGV[5])\n"
        "    if not spec then return fail('invalid', 'body must be a JSON object') end\n"
        "    if type(spec.tenant) ~= 'string' or not tenant_json(spec.tenant) then\n"
        "      return fail('not_found', 'no tenant ' .. tostring(spec.tenant))\n"
        "    end\n"
        "  else\n"
        "    local old_id\n"
        "    old_id, sha, id = ARGV[3], ARGV[4], ARGV[5]\n"
        "    local old_sha = redis.call('GET', P .. 'keyid:' .. old_id)\n"
        "    if not old_sha then return fail('not_found', 'no key ' .. old_id) end\n"
        "    spec = key_json(old_sha)\n"
        "    spec.expires = nil\n"
        "    redis.call('HSET', P .. 'key:' .. old_sha, 'status', 'revoked', 'revoked', now_s())\n"
        "    redis.call('PUBLISH', P .. 'keys:invalidate', old_sha)\n"
        "  end\n"
        "  local key = P .. 'key:' .. sha\n"
        "  if redis.call('EXISTS', key) == 1 then return fail('conflict', 'key exists') end\n"
        "  local models = spec.models or {'*'}\n"
        "  if type(models) == 'string' then models = {models} end\n"
        "  if type(models) ~= 'table' or #models == 0 then\n"
        "    return fail('invalid', 'models must be a list of globs')\n"
        "  end\n"
        "  for _, g in ipairs(models) do\n"
        "    if type(g) ~= 'string' or g == '' or string.find(g, ',') then\n"
        "      return fail('invalid', 'models must be non-empty globs without commas')\n"
        "    end\n"
        "  end\n"
        "  local ml = ''\n"
        "  if spec.model_limits ~= nil then\n"
        "    if type(spec.model_limits) ~= 'table' then\n"
        "      return fail('invalid', 'model_limits must be an object')\n"
        "    end\n"
        "    if next(spec.model_limits) ~= nil then ml = cjson.encode(spec.model_limits) end\n"
        "  end\n"
        "  local exp = spec.expires or 0\n"
        "  if type(exp) ~= 'number' or exp < 0 then return fail('invalid', 'expires must be unix "
        "seconds') end\n"
        "  redis.call('HSET', key, 'id', id, 'tenant', spec.tenant, 'name', tostring(spec.name or "
        "''),\n"
        "             'status', 'active', 'models', table.concat(models, ','), 'model_limits', "
        "ml,\n"
        "             'created', now_s(), 'expires', exp)\n"
        "  local e = put_limits(key, spec.limits or {})\n"
        "  if e then redis.call('DEL', key); return fail('invalid', e) end\n"
        "  redis.call('SET', P .. 'keyid:' .. id, sha)\n"
        "  redis.call('SADD', P .. 'tenant:' .. spec.tenant .. ':keys', id)\n"
        "  return cjson.encode(key_json(sha))\n"
        "elseif op == 'key_get' or op == 'key_revoke' then\n"
        "  local sha = redis.call('GET', P .. 'keyid:' .. ARGV[3])\n"
        "  if not sha then return fail('not_found', 'no key ' .. ARGV[3]) end\n"
        "  if op == 'key_revoke' then\n"
        "    local key = P .. 'key:' .. sha\n"
        "    if redis.call('HGET', key, 'status') ~= 'revoked' then\n"
        "      redis.call('HSET', key, 'status', 'revoked', 'revoked', now_s())\n"
        "    end\n"
        "    redis.call('PUBLISH', P .. 'keys:invalidate', sha)\n"
        "  end\n"
        "  return cjson.encode(key_json(sha))\n"
        "elseif op == 'key_list' then\n"
        "  local tenants = {ARGV[3]}\n"
        "  if ARGV[3] == '' then tenants = redis.call('SMEMBERS', P .. 'tenants') end\n"
        "  local out = {}\n"
        "  for _, t in ipairs(tenants) do\n"
        "    for _, id in ipairs(redis.call('SMEMBERS', P .. 'tenant:' .. t .. ':keys')) do\n"
        "      local sha = redis.call('GET', P .. 'keyid:' .. id)\n"
        "      if sha then out[#out + 1] = key_json(sha) end\n"
        "    end\n"
        "  end\n"
        "  table.sort(out, function(a, b) return a.created < b.created or\n"
        "    (a.created == b.created and a.id < b.id) end)\n"
        "  if #out == 0 then return '{\"data\":[]}' end\n"
        "  return cjson.encode({ data = out })\n"
        "end\n"
        "return fail('invalid', 'unknown operation')\n"};

struct redis_script script_usage_report = {
    .src = LUA_TIME "local P, tenant, group_by = ARGV[1], ARGV[2], ARGV[3]\n"
                    "local from, to, only_key = tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[6]\n"
                    "local METRICS = {'requests', 'prompt_tokens', 'completion_tokens',\n"
                    "                 'cached_tokens', 'cost_microusd', 'errors'}\n"
                    "local rows, order = {}, {}\n"
                    "local total = {}\n"
                    "for _, m in ipairs(METRICS) do total[m] = 0 end\n"
                    "for d = from, to do\n"
                    "  local y, m, dd = civil(d)\n"
                    "  local date = string.format('%04d-%02d-%02d', y, m, dd)\n"
                    "  local key = string.format('%susage:{%s}:%04d%02d%02d', P, tenant, y, m, "
                    "dd)\n"
                    "  local f = redis.call('HGETALL', key)\n"
                    "  for i = 1, #f, 2 do\n"
                    "    local k, rest = string.match(f[i], '^([^|]*)|(.*)$')\n"
                    "    local model, metric = string.match(rest or '', '^(.*)|([^|]*)$')\n"
                    "    if k and model and (only_key == '' or only_key == k) then\n"
                    "      local g = (group_by == 'key' and k) or (group_by == 'model' and model) "
                    "or date\n"
                    "      local row = rows[g]\n"
                    "      if not row then\n"
                    "        row = { group = g }\n"
                    "        for _, mm in ipairs(METRICS) do row[mm] = 0 end\n"
                    "        rows[g] = row\n"
                    "        order[#order + 1] = g\n"
                    "      end\n"
                    "      local v = tonumber(f[i + 1]) or 0\n"
                    "      if row[metric] then row[metric] = row[metric] + v; total[metric] = "
                    "total[metric] + v end\n"
                    "    end\n"
                    "  end\n"
                    "end\n"
                    "table.sort(order)\n"
                    "local out = {}\n"
                    "for _, g in ipairs(order) do\n"
                    "  local r = rows[g]\n"
                    "  r.total_tokens = r.prompt_tokens + r.completion_tokens\n"
                    "  out[#out + 1] = r\n"
                    "end\n"
                    "total.total_tokens = total.prompt_tokens + total.completion_tokens\n"
                    "local fy, fm, fd = civil(from)\n"
                    "local ty, tm, td = civil(to)\n"
                    "local doc = { tenant = tenant, group_by = group_by, total = total,\n"
                    "  from = string.format('%04d-%02d-%02d', fy, fm, fd),\n"
                    "  to = string.format('%04d-%02d-%02d', ty, tm, td) }\n"
                    /* Redis's cjson writes an empty table as {}: add the empty list by hand. */
                    "if #out > 0 then doc.rows = out; return cjson.encode(doc) end\n"
                    "local s = cjson.encode(doc)\n"
                    "return string.sub(s, 1, -2) .. ',\"rows\":[]}'\n"};

void scripts_init(void)
{
    redis_script_init(&script_reserve);
    redis_script_init(&script_grant_return);
    redis_script_init(&script_settle);
    redis_script_init(&script_settle_batch);
    redis_script_init(&script_key_lookup);
    redis_script_init(&script_admin);
    redis_script_init(&script_usage_report);
}
