#!/usr/bin/env bash
# Cost of tenant keys + quotas: in one run, on the same mock upstream and the
# same Redis, compare
#   core    llmgate with a static config key (no Redis on the request path)
#   quota   llmgate with a tenant key in Redis: key cache + reserve script before
#           dispatch + settle script and usage record after (rpm/tpm/tpd limits
#           on the key and its tenant, set far above the load)
#   grant   the quota gateway with admission grants (quota.grant_ms): the steady
#           key is mostly admitted from a grant its worker took ahead of demand
# Non-streaming chat completions, each at a fixed rate (open loop: latency from
# the scheduled send time) and at saturation (closed loop). The runs alternate
# core/quota/grant and are repeated BENCH_ROUNDS times; the report uses the median.
# Writes loadtest/results/quota.csv and quota.md.
#
# usage: loadtest/bench_quota.sh [BUILDDIR]     (default $BUILDDIR or ./build)
# env:   BENCH_SECONDS (5) BENCH_WARMUP (1) BENCH_RATE (1000) BENCH_ROUNDS (3)
#        BENCH_CONNECTIONS (32, saturation) BENCH_OPEN_CONNECTIONS (64, fixed rate)
#        BENCH_PIN (1: loadgen on CPU 0, servers on CPU 1) BENCH_OUTDIR (loadtest/results)
#        BENCH_REDIS_CPU (server: Redis on CPU 1 with the gateway and the mock, a
#        co-located Redis, and the loadgen alone on CPU 0, polling for arrivals
#        (--spin-us) so its own timer wake-ups stay out of the latency; client: Redis
#        on CPU 0 beside the loadgen, which then sleeps on timers)
#        BENCH_GRANT_MS (500: quota.grant_ms of the grant gateway)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BUILDDIR=${1:-${BUILDDIR:-./build}}
BUILDDIR=$(cd "$BUILDDIR" && pwd)
SECS=${BENCH_SECONDS:-5}
WARMUP=${BENCH_WARMUP:-1}
RATE=${BENCH_RATE:-1000}
ROUNDS=${BENCH_ROUNDS:-3}
CONNS=${BENCH_CONNECTIONS:-32}
OPEN_CONNS=${BENCH_OPEN_CONNECTIONS:-64}
PIN=${BENCH_PIN:-1}
REDIS_CPU=${BENCH_REDIS_CPU:-server}
GRANT_MS=${BENCH_GRANT_MS:-500}
OUTDIR=${BENCH_OUTDIR:-$here/results}
STATIC_KEY=bench-static-key-not-secret-0123456789

MOCK=$BUILDDIR/llmgate-mock
LOADGEN=$BUILDDIR/llmgate-loadgen
GW=$BUILDDIR/llmgate
for b in "$MOCK" "$LOADGEN" "$GW"; do
    [ -x "$b" ] || { echo "bench_quota: $b not found (build it first)" >&2; exit 2; }
done
command -v redis-server >/dev/null || { echo "bench_quota: redis-server not installed" >&2; exit 2; }

. "$(dirname "$0")/lib.sh"
case $REDIS_CPU in
server) note="loadgen alone on CPU 0 (polling for arrivals, --spin-us $((2000000 / RATE + 1))); Redis, the mock and llmgate share CPU 1 (taskset)" ;;
client) note="loadgen and Redis on CPU 0, the mock and llmgate on CPU 1 (taskset)" ;;
*) echo "bench_quota: BENCH_REDIS_CPU must be server or client" >&2; exit 2 ;;
esac
bench_setup bench_quota "$note"
spin=0
[ "$REDIS_CPU" = server ] && [ "$PIN" = 1 ] && spin=$((2000000 / RATE + 1))
pin_redis=("${pin_server[@]}")
[ "$REDIS_CPU" = client ] && pin_redis=("${pin_client[@]}")

# ---- mock and Redis ---------------------------------------------------------------
start_mock "$MOCK"
start_redis "${pin_redis[@]+"${pin_redis[@]}"}"

# ---- the two gateways ---------------------------------------------------------------
hash=$(printf %s "$STATIC_KEY" | sha256sum | cut -d' ' -f1)
start_gw() { # NAME REDIS_KEYS [GRANT_MS] -> sets gw_url
    local name=$1 rk=$2 grant=${3:-0} port
    port=$(free_port)
    cat >"$tmp/$name.json" <<EOF
{ "listen": {"address": "127.0.0.1", "port": $port}, "workers": 1,
  "log": {"level": "warn", "access_log": "off"},
  "auth": {"api_keys_sha256": ["$hash"], "redis_keys": $rk},
  "redis": {"port": $REDIS_PORT}, "quota": {"grant_ms": $grant},
  "usage": {"spool_path": "$tmp/$name.spool"},
  "providers": {"mock": {"kind": "openai", "base_url": "http://127.0.0.1:$MOCK_PORT/v1"}},
  "models": {"mock-model": {"provider": "mock", "model": "mock-model"}} }
EOF
    "${pin_server[@]}" "$GW" -c "$tmp/$name.json" 2>"$tmp/$name.log" &
    pids+=($!)
    gw_url="http://127.0.0.1:$port"
    wait_up "$!" "$gw_url/healthz" || { tail -20 "$tmp/$name.log" >&2; exit 1; }
}
start_gw core false
core_url=$gw_url
start_gw quota true
quota_url=$gw_url
start_gw grant true "$GRANT_MS"
grant_url=$gw_url

"$GW" tenants create bench --tpm 2000000000 --tpd 2000000000 -c "$tmp/quota.json" >/dev/null
TENANT_KEY=$("$GW" keys create --tenant bench --name bench --rpm 100000000 --tpm 2000000000 \
    --tpd 2000000000 -c "$tmp/quota.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])')

body='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16}'
for t in core quota grant; do
    url=${t}_url key=$STATIC_KEY
    [ $t != core ] && key=$TENANT_KEY
    code=$(curl -s -o "$tmp/smoke" -w '%{http_code}' -H "Authorization: Bearer $key" \
        -H 'Content-Type: application/json' -d "$body" "${!url}/v1/chat/completions")
    [ "$code" = 200 ] || { log "$t smoke request answered $code: $(head -c 300 "$tmp/smoke")"; exit 1; }
done
before=$(redis-cli -p "$REDIS_PORT" xlen llmgate:usage)

csv=$tmp/quota.csv
echo "target,round,run,label,mode,target_rate,duration_s,sent,ok,errors,achieved_rps,p50_us,p90_us,p99_us,p999_us,max_us,ttfb_p50_us,ttfb_p99_us,send_lag_p99_us,service_p50_us,service_p99_us,wire_p50_us,wire_p99_us,wire_samples" >"$csv"
# sum, count, <=100 µs, <=200 µs, <=500 µs of the quota gateway's reserve histogram
reserve_metrics() {
    curl -s "$quota_url/metrics" | awk '/^llmgate_quota_reserve_seconds_sum/ { s = $2 }
        /^llmgate_quota_reserve_seconds_count/ { c = $2 }
        /^llmgate_quota_reserve_seconds_bucket\{le="0.0001"\}/ { a = $2 }
        /^llmgate_quota_reserve_seconds_bucket\{le="0.0002"\}/ { b = $2 }
        /^llmgate_quota_reserve_seconds_bucket\{le="0.0005"\}/ { d = $2 }
        END { print s, c, a, b, d }'
}
run_one() { # target round run
    local t=$1 n=$2 r=$3 url=${1}_url key=$STATIC_KEY line
    [ "$t" != core ] && key=$TENANT_KEY
    local args=(--url "${!url}/v1/chat/completions" --body "$body"
        --header "Authorization: Bearer $key" --duration "$SECS" --warmup "$WARMUP"
        --label "$t-$r-$n" --quiet)
    if [ "$r" = saturation ]; then args+=(--rate 0 --connections "$CONNS")
    else args+=(--rate "$RATE" --connections "$OPEN_CONNS" --spin-us "$spin"); fi
    [ "$t,$r" = quota,fixed ] && reserve_metrics >"$tmp/m.before"
    line=$("${pin_client[@]}" "$LOADGEN" "${args[@]}")
    [ "$t,$r" = quota,fixed ] && reserve_metrics | paste -d' ' "$tmp/m.before" - >>"$tmp/m.fixed"
    echo "$t,$n,$r,$line" >>"$csv"
    log "$t,$n,$r,$line"
}
for n in $(seq "$ROUNDS"); do
    for r in fixed saturation; do
        run_one core "$n" "$r"
        run_one quota "$n" "$r"
        run_one grant "$n" "$r"
    done
done
after=$(redis-cli -p "$REDIS_PORT" xlen llmgate:usage)
# The reserve round trip as the quota gateway's worker saw it during the fixed-rate
# runs, and the settle batching achieved over the whole run, from its /metrics.
reserve_rtt=$(awk '{ s += $6 - $1; c += $7 - $2; a += $8 - $3; b += $9 - $4; d += $10 - $5 }
    END { if (c > 0) printf "mean %.0f µs; %.0f %% within 100 µs, %.0f %% within 200 µs, %.0f %% within 500 µs (%d reserves)",
        s / c * 1e6, a / c * 100, b / c * 100, d / c * 100, c }' "$tmp/m.fixed")
batching=$(curl -s "$quota_url/metrics" | awk '/^llmgate_usage_records_total/ { r = $2 }
    /^llmgate_usage_settle_calls_total/ { c = $2 }
    END { if (c > 0) printf "%.1f records per settle call", r / c }')
# Loopback PING round trips to this Redis from its own CPU and from the other one:
# the price of a cross-vCPU wake-up on this machine.
ping_rtt() { # CPU -> p50 ms
    taskset -c "$1" redis-benchmark -p "$REDIS_PORT" -n 20000 -c 1 --csv -t ping_mbulk 2>/dev/null |
        tail -1 | cut -d, -f3 | tr -d '"'
}
ping_same= ping_cross=
if [ "$PIN" = 1 ] && command -v redis-benchmark >/dev/null; then
    if [ "$REDIS_CPU" = client ]; then ping_same=$(ping_rtt 0) ping_cross=$(ping_rtt 1)
    else ping_same=$(ping_rtt 1) ping_cross=$(ping_rtt 0); fi
fi
# Redis's own time per call (server side), to tell script cost from scheduling delay.
cmdstats=$(redis-cli -p "$REDIS_PORT" info commandstats | tr -d '\r' |
    awk -F'[:,=]' '/^cmdstat_(evalsha|eval|hgetall|xadd)/ { printf "%s calls=%s usec_per_call=%s; ", $1, $3, $7 }')
quota_ok=$(awk -F, '$1 == "quota" { s += $9 } END { print s }' "$csv")
# How the grant gateway admitted its requests: from a grant, or with a reserve call.
grants=$(curl -s "$grant_url/metrics" | awk '/^llmgate_quota_grant_admits_total/ { a = $2 }
    /^llmgate_quota_reserve_seconds_count/ { c = $2 } /^llmgate_quota_grant_requests_total/ { g = $2 }
    /^llmgate_quota_grant_returned_tokens_total/ { rt = $2 } /^llmgate_quota_grant_tokens_total/ { gt = $2 }
    END { if (a + c > 0) printf "%d admitted from grants, %d with a reserve round trip (%.2f %%); %d grant requests; %d of %d granted tokens given back unspent",
        a, c, c / (a + c) * 100, g, rt, gt }')

# ---- report -------------------------------------------------------------------------
mkdir -p "$OUTDIR"
cp "$csv" "$OUTDIR/quota.csv"
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || true)
cmd="BENCH_SECONDS=$SECS BENCH_WARMUP=$WARMUP BENCH_RATE=$RATE BENCH_ROUNDS=$ROUNDS BENCH_CONNECTIONS=$CONNS BENCH_OPEN_CONNECTIONS=$OPEN_CONNS BENCH_PIN=$PIN BENCH_REDIS_CPU=$REDIS_CPU BENCH_GRANT_MS=$GRANT_MS loadtest/bench_quota.sh $BUILDDIR"
{
    echo "# Tenant keys + quotas: added latency and throughput"
    echo
    echo "Generated by \`loadtest/bench_quota.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "- Machine: $ncpu CPUs, $cpu, $(uname -sr); $(redis-server --version | cut -d' ' -f3)"
    echo "- Command: \`$cmd\`"
    echo "- Same llmgate-mock (1 thread, no latency, 16 tokens) and the same Redis for all;"
    echo "  each gateway runs 1 worker, access log off. core = static config key (the"
    echo "  gateway core path); quota = tenant key from Redis (1 s key cache), the reserve"
    echo "  script before dispatch and the settle script (+ usage record) after, with"
    echo "  rpm/tpm/tpd limits on key and tenant (2 scopes). Runs alternate core/quota/grant,"
    echo "  $ROUNDS rounds; the tables show medians over rounds."
    echo "- Load: llmgate-loadgen; fixed = $RATE req/s open loop, $OPEN_CONNS connections, latency from"
    echo "  the scheduled send time; saturation = closed loop, $CONNS connections. ${SECS}s measured"
    echo "  after ${WARMUP}s warmup. $pin_note."
    echo "- Usage records written during the quota runs (warmups included): $((after - before));"
    echo "  measured successful quota requests: $quota_ok."
    echo "- Redis server-side cost (INFO commandstats): ${cmdstats:-n/a}"
    echo "- grant = the quota gateway with \`quota.grant_ms: $GRANT_MS\` (admission grants, docs/DESIGN.md): ${grants:-n/a}."
    echo "- Reserve round trip seen by the quota gateway at $RATE req/s (llmgate_quota_reserve_seconds):"
    echo "  ${reserve_rtt:-n/a}; settles over the whole run: ${batching:-n/a}."
    [ -n "$ping_same" ] && echo "- Loopback PING p50 to this Redis (redis-benchmark, 1 client): ${ping_same} ms from its own CPU, ${ping_cross} ms from the other CPU."
    echo
    echo "| target | run | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | errors |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F, 'NR > 1 { k = $1 "," $3; n[k]++; rps[k, n[k]] = $11; p50[k, n[k]] = $12; p90[k, n[k]] = $13
                      p99[k, n[k]] = $14; p999[k, n[k]] = $15; err[k] += $10 }
        function med(a, k, c,   i, j, t, v) { for (i = 1; i <= c; i++) v[i] = a[k, i]
            for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (v[j] < v[i]) { t = v[i]; v[i] = v[j]; v[j] = t }
            return v[int((c + 1) / 2)] }
        END { split("core,fixed quota,fixed grant,fixed core,saturation quota,saturation grant,saturation", ks, " ")
            for (i = 1; i <= 6; i++) { k = ks[i]; if (!(k in n)) continue; split(k, f, ",")
                printf "| %s | %s | %.0f | %d | %d | %d | %d | %d |\n", f[1], f[2], med(rps, k, n[k]),
                    med(p50, k, n[k]), med(p90, k, n[k]), med(p99, k, n[k]), med(p999, k, n[k]), err[k] }
            c = "core,fixed"; q = "quota,fixed"; cs = "core,saturation"; qs = "quota,saturation"
            # paired: each round against the core run beside it, then the median
            for (j = 1; j <= n[c]; j++) { dq[j] = p50[q, j] - p50[c, j]; dg[j] = p50["grant,fixed", j] - p50[c, j] }
            for (j = 1; j <= n[c]; j++) { pq[c, j] = dq[j]; pg[c, j] = dg[j] }
            printf "\nAdded by auth + reserve + settle at %s req/s: **p50 %+d µs** (medians; per round, against the core run beside it: %+d µs median), p99 %+d µs.\n",
                "'"$RATE"'", med(p50, q, n[q]) - med(p50, c, n[c]), med(pq, c, n[c]), med(p99, q, n[q]) - med(p99, c, n[c])
            printf "Saturation throughput with quotas: **%.0f req/s** (%.2f of the core path).\n",
                med(rps, qs, n[qs]), med(rps, qs, n[qs]) / med(rps, cs, n[cs])
            g = "grant,fixed"; gs = "grant,saturation"
            if (g in n) {
                printf "\nWith admission grants: **p50 %+d µs** (per round: %+d µs median), p99 %+d µs at %s req/s; saturation **%.0f req/s** (%.2f of the core path).\n",
                    med(p50, g, n[g]) - med(p50, c, n[c]), med(pg, c, n[c]), med(p99, g, n[g]) - med(p99, c, n[c]), "'"$RATE"'",
                    med(rps, gs, n[gs]), med(rps, gs, n[gs]) / med(rps, cs, n[cs]) } }' "$csv"
} >"$OUTDIR/quota.md"
log "wrote $OUTDIR/quota.csv and $OUTDIR/quota.md"
