#!/usr/bin/env bash
# Routing benchmark, in one run:
#   1. llmgate-bench-routing: the cost of one routing decision (match + weighted
#      choice + attempt order) with 1, 100 and 1,000 policy routes, and of
#      compiling them;
#   2. the core path (loadgen -> llmgate -> llmgate-mock) with no policy (the
#      models section) and with a realistic policy loaded (100 routes: exact,
#      aliases, globs, tenant and header rules, canary weights, fallbacks,
#      breakers, retries; the benchmarked model matches the last one), for
#      non-streaming and streaming chat, saturation and fixed rate.
# Writes loadtest/results/routing.csv and routing.md.
#
# usage: loadtest/bench_routing.sh [BUILDDIR]      (default $BUILDDIR or ./build)
# env:   BENCH_SECONDS (10) BENCH_WARMUP (2) BENCH_RATE (2000) BENCH_CONNECTIONS (32)
#        BENCH_OPEN_CONNECTIONS (64) BENCH_PIN (1) BENCH_OUTDIR (loadtest/results)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BUILDDIR=${1:-${BUILDDIR:-./build}}
BUILDDIR=$(cd "$BUILDDIR" && pwd)
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
RATE=${BENCH_RATE:-2000}
CONNS=${BENCH_CONNECTIONS:-32}
OPEN_CONNS=${BENCH_OPEN_CONNECTIONS:-64}
PIN=${BENCH_PIN:-1}
OUTDIR=${BENCH_OUTDIR:-$here/results}
KEY=bench-key-not-secret-0123456789

for b in llmgate llmgate-mock llmgate-loadgen llmgate-bench-routing; do
    [ -x "$BUILDDIR/$b" ] || { echo "bench_routing: $BUILDDIR/$b not found (build it first)" >&2; exit 2; }
done
. "$(dirname "$0")/lib.sh"
bench_setup bench_routing "loadgen pinned to CPU 0; mock and llmgate share CPU 1 (taskset)"

load0=$(cut -d' ' -f1-3 /proc/loadavg)

# ---- 1. decision cost ---------------------------------------------------------
log "routing decision cost"
"$BUILDDIR/llmgate-bench-routing" >"$tmp/decision.csv"
cat "$tmp/decision.csv" >&2

# ---- 2. core path -------------------------------------------------------------
start_mock "$BUILDDIR/llmgate-mock"

mkdir -p "$tmp/policies"
python3 - "$tmp/policies/10-routes.json" <<'PY'
import json, sys
routes = []
for i in range(99):
    kind = i % 5
    m = {0: {"model": f"fam{i}-*"}, 1: {"model": f"m{i}", "tenant": f"t{i}"},
         2: {"model": f"m{i}", "header": {"name": "x-route", "value": "b"}}}.get(
        kind, {"model": [f"m{i}", f"m{i}-alias"]})
    routes.append({"name": f"r{i}", "match": m,
                   "targets": [{"provider": "mock", "model": f"u{i}", "weight": 95},
                               {"provider": "mock", "model": f"u{i}-canary", "weight": 5}],
                   "fallback": [{"provider": "backup", "model": f"fb{i}"}]})
# the benchmarked route: canary split, fallback, breaker, retries, timeouts
routes.append({"name": "bench", "match": {"model": ["mock-model", "bench-alias"]},
               "targets": [{"provider": "mock", "model": "mock-model", "weight": 95},
                           {"provider": "mock", "model": "mock-model-canary", "weight": 5}],
               "fallback": [{"provider": "backup", "model": "mock-model"}],
               "retry": {"attempts": 1, "respect_retry_after_max_ms": 1000},
               "breaker": {"failures": 5, "error_ratio": 0.5},
               "timeouts": {"first_token_ms": 10000, "idle_ms": 10000}})
json.dump({"routes": routes}, open(sys.argv[1], "w"), indent=1)
PY

body_plain='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16}'
body_stream='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16,"stream":true}'
csv=$tmp/routing.csv
echo "policy,stream,run,label,mode,target_rate,duration_s,sent,ok,errors,achieved_rps,p50_us,p90_us,p99_us,p999_us,max_us,ttfb_p50_us,ttfb_p99_us,send_lag_p99_us,service_p50_us,service_p99_us,wire_p50_us,wire_p99_us,wire_samples" >"$csv"

for policy in none routes100; do
    port=$(free_port)
    hash=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
    pol=""
    [ "$policy" = routes100 ] && pol="\"policy\": {\"dir\": \"$tmp/policies\"},"
    cat >"$tmp/llmgate.json" <<JSON
{ "listen": {"address": "127.0.0.1", "port": $port}, "workers": 1, $pol
  "log": {"level": "warn", "access_log": "off"},
  "auth": {"api_keys_sha256": ["$hash"]},
  "providers": {"mock": {"kind": "openai", "base_url": "http://127.0.0.1:$MOCK_PORT/v1"},
                "backup": {"kind": "openai", "base_url": "http://127.0.0.1:$MOCK_PORT/v1"}},
  "models": {"mock-model": {"provider": "mock", "model": "mock-model"}} }
JSON
    "${pin_server[@]}" "$BUILDDIR/llmgate" -c "$tmp/llmgate.json" 2>"$tmp/llmgate.log" &
    gw=$!
    pids+=("$gw")
    wait_up "$gw" "http://127.0.0.1:$port/healthz" || { tail "$tmp/llmgate.log" >&2; exit 1; }
    hdrs=$(curl -s -D - -o /dev/null -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "$body_plain" "http://127.0.0.1:$port/v1/chat/completions")
    echo "$hdrs" | grep -q "^HTTP/1.1 200" || { log "smoke failed: $hdrs"; exit 1; }
    log "$policy: $(echo "$hdrs" | grep -i '^x-llmgate-' | tr -d '\r' | tr '\n' ' ')"
    for s in 0 1; do
        body=$body_plain
        [ "$s" = 1 ] && body=$body_stream
        for r in saturation fixed; do
            args=(--url "http://127.0.0.1:$port/v1/chat/completions" --body "$body"
                --header "Authorization: Bearer $KEY" --duration "$SECS" --warmup "$WARMUP"
                --label "$policy-$s-$r" --quiet)
            if [ "$r" = saturation ]; then args+=(--rate 0 --connections "$CONNS")
            else args+=(--rate "$RATE" --connections "$OPEN_CONNS"); fi
            line=$("${pin_client[@]}" "$BUILDDIR/llmgate-loadgen" "${args[@]}")
            echo "$policy,$s,$r,$line" >>"$csv"
            log "$policy,$s,$r,$line"
        done
    done
    kill "$gw"
    wait "$gw" 2>/dev/null || true
done

# ---- report -------------------------------------------------------------------
mkdir -p "$OUTDIR"
cp "$csv" "$OUTDIR/routing.csv"
cp "$tmp/decision.csv" "$OUTDIR/routing-decision.csv"
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || true)
cmd="BENCH_SECONDS=$SECS BENCH_WARMUP=$WARMUP BENCH_RATE=$RATE BENCH_CONNECTIONS=$CONNS BENCH_OPEN_CONNECTIONS=$OPEN_CONNS BENCH_PIN=$PIN loadtest/bench_routing.sh"
{
    echo "# Routing: decision cost and the core path with a policy"
    echo
    echo "Generated by \`loadtest/bench_routing.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "- Machine: $(nproc) CPUs, $cpu, $(uname -sr)"
    echo "- Command: \`$cmd\`"
    echo "- Load average when the run started: $load0 (anything but this benchmark running"
    echo "  on the machine shows up as noise in the core-path figures)"
    echo
    echo "## One routing decision (\`llmgate-bench-routing\`, one thread)"
    echo
    echo "Routes: 60 % exact names with two aliases, 20 % glob families, 10 % tenant and"
    echo "10 % header rules, each with a 95/5 weighted pair and a fallback. Queries hit"
    echo "routes uniformly, 10 % name no route. A decision = match + weighted (or sticky)"
    echo "choice + attempt order (\`router_plan\`). Build = compiling the policy text."
    echo
    echo "| routes | µs per decision | build ms |"
    echo "|---:|---:|---:|"
    awk -F, 'NR > 1 { printf "| %s | %.3f | %.2f |\n", $1, $3 / 1000, $2 }' "$tmp/decision.csv"
    echo
    echo "## Core path: no policy vs a 100-route policy"
    echo
    echo "llmgate-mock (1 thread, no latency, 16 tokens) behind llmgate (1 worker, access log"
    echo "off). \`none\`: the models section only. \`routes100\`: 99 routes before the one that"
    echo "matches (exact, aliases, globs, tenant and header rules), which has a 95/5 canary,"
    echo "a fallback provider, a breaker, retries and timeouts. Saturation = closed loop,"
    echo "$CONNS connections; fixed = $RATE req/s open loop, $OPEN_CONNS connections. ${SECS}s"
    echo "after ${WARMUP}s warmup. $pin_note."
    echo
    echo "| policy | stream | run | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | errors |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|"
    awk -F, 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
        $1, ($2 == 1 ? "yes" : "no"), $3, $11, $12, $13, $14, $15, $10 }' "$csv"
    echo
    awk -F, 'NR > 1 && $3 == "saturation" { rps[$1 "," $2] = $11 }
        END { for (s = 0; s <= 1; s++) if (rps["none," s] > 0)
            printf "Saturation throughput with the policy / without (%s): **%.3f**\n\n",
                (s ? "streaming" : "non-streaming"), rps["routes100," s] / rps["none," s] }' "$csv"
} >"$OUTDIR/routing.md"
log "wrote $OUTDIR/routing.md"
