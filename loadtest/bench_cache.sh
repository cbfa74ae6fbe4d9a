#!/usr/bin/env bash
# Response-cache benchmark: in one run, on one machine, compare
#   nginx-static  loadgen -> nginx serving the cached answer's exact bytes as a static file
#   llmgate-hit   loadgen -> llmgate -> Redis GET (cache hit; the mock is never asked)
#   llmgate-pass  loadgen -> llmgate -> mock (same request, Cache-Control: no-store)
# for non-streaming and streaming chat completions (the streamed hit is SSE
# synthesised from the stored answer; nginx serves those same SSE bytes), each
# with saturation runs (closed loop; BENCH_ROUNDS rounds alternating the
# targets, the median counts, so a noisy machine hurts every target alike) and
# a fixed-rate run at half of that target's median saturation throughput (open
# loop, latency from the scheduled send time). Writes loadtest/results/cache.csv
# and cache.md.
#
# usage: loadtest/bench_cache.sh [BUILDDIR]      (default $BUILDDIR or ./build)
# env:   BENCH_SECONDS (8) BENCH_WARMUP (2) BENCH_ROUNDS (5) BENCH_CONNECTIONS (32)
#        BENCH_OPEN_CONNECTIONS (64) BENCH_PIN (1: loadgen on CPU 0, servers on
#        CPU 1) BENCH_SPIN_US (200: at a fixed rate the loadgen polls for arrivals
#        due that soon instead of sleeping on a timer; it has CPU 0 to itself)
#        BENCH_OUTDIR (loadtest/results) NGINX (nginx) REDIS (redis-server)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BUILDDIR=${1:-${BUILDDIR:-./build}}
BUILDDIR=$(cd "$BUILDDIR" && pwd)
SECS=${BENCH_SECONDS:-8}
WARMUP=${BENCH_WARMUP:-2}
ROUNDS=${BENCH_ROUNDS:-5}
CONNS=${BENCH_CONNECTIONS:-32}
OPEN_CONNS=${BENCH_OPEN_CONNECTIONS:-64}
PIN=${BENCH_PIN:-1}
SPIN=${BENCH_SPIN_US:-200}
OUTDIR=${BENCH_OUTDIR:-$here/results}
NGINX=${NGINX:-nginx}
REDIS=${REDIS:-redis-server}
KEY=bench-key-not-secret-0123456789

MOCK=$BUILDDIR/llmgate-mock
LOADGEN=$BUILDDIR/llmgate-loadgen
GW=$BUILDDIR/llmgate
PROBE=$BUILDDIR/llmgate-stallprobe
for b in "$MOCK" "$LOADGEN" "$GW" "$PROBE"; do
    [ -x "$b" ] || { echo "bench_cache: $b not found (build it first)" >&2; exit 2; }
done
for c in "$NGINX" "$REDIS" curl; do
    command -v "$c" >/dev/null || { echo "bench_cache: $c not installed" >&2; exit 2; }
done

. "$(dirname "$0")/lib.sh"
bench_setup bench_cache "loadgen pinned to CPU 0; the server under test (with Redis and the mock for llmgate) on CPU 1 (taskset)"

body_plain='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16,"temperature":0}'
body_stream='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16,"temperature":0,"stream":true}'

# ---- mock, Redis, llmgate -------------------------------------------------------
start_mock "$MOCK"
start_redis "${pin_server[@]}"

GW_PORT=$(free_port)
llmgate_conf "$tmp/llmgate.json" "$GW_PORT" "$REDIS_PORT"
"${pin_server[@]}" "$GW" -c "$tmp/llmgate.json" 2>"$tmp/llmgate.log" &
gw_pid=$!
pids+=("$gw_pid")
GW_URL="http://127.0.0.1:$GW_PORT"
wait_up "$gw_pid" "$GW_URL/healthz" || { tail -20 "$tmp/llmgate.log" >&2; exit 1; }

# post BODY OUT [HEADER...]: one request; prints the x-llmgate-cache header.
post() {
    local body=$1 out=$2
    shift 2
    local h=()
    for x in "$@"; do h+=(-H "$x"); done
    curl -s -o "$out" -D "$out.h" --max-time 5 -H "Authorization: Bearer $KEY" \
        -H 'Content-Type: application/json' "${h[@]+"${h[@]}"}" -d "$body" \
        "$GW_URL/v1/chat/completions"
    tr -d '\r' <"$out.h" | sed -n 's/^x-llmgate-cache: //Ip'
}

state=$(post "$body_plain" "$tmp/miss.json")
[ "$state" = miss ] || { log "first request was '$state', not a miss"; exit 1; }
for _ in $(seq 50); do
    state=$(post "$body_plain" "$tmp/plain.json")
    [ "$state" = hit ] && break
    sleep 0.1
done
[ "$state" = hit ] || { log "no cache hit: '$state'"; tail "$tmp/llmgate.log" >&2; exit 1; }
cmp -s "$tmp/miss.json" "$tmp/plain.json" || { log "hit differs from the miss"; exit 1; }
[ "$(post "$body_stream" "$tmp/stream.sse")" = hit ] || { log "streamed request missed"; exit 1; }
[ "$(post "$body_plain" "$tmp/pass.json" 'Cache-Control: no-store')" = bypass ] ||
    { log "no-store did not bypass"; exit 1; }
plain_bytes=$(wc -c <"$tmp/plain.json")
stream_bytes=$(wc -c <"$tmp/stream.sse")

# ---- nginx serving the same bytes -------------------------------------------------
NGINX_PORT=$(free_port)
d=$tmp/nginx
mkdir -p "$d/www"
cp "$tmp/plain.json" "$d/www/plain.json"
cp "$tmp/stream.sse" "$d/www/stream.sse"
# POST to a static file is 405 in nginx; answer it with the file instead.
nginx_start "$d" "    types { application/json json; text/event-stream sse; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $d/www;
        error_page 405 =200 \$uri;
    }"
NGINX_URL="http://127.0.0.1:$NGINX_PORT"
wait_up "$nginx_pid" "$NGINX_URL/" || { cat "$d/logs/error.log" >&2; exit 1; }
curl -s --max-time 5 -d "$body_plain" "$NGINX_URL/plain.json" | cmp -s - "$tmp/plain.json" ||
    { log "nginx does not serve the cached bytes"; exit 1; }

# ---- runs -----------------------------------------------------------------------
csv=$tmp/cache.csv
echo "target,stream,run,label,mode,target_rate,duration_s,sent,ok,errors,achieved_rps,p50_us,p90_us,p99_us,p999_us,max_us,ttfb_p50_us,ttfb_p99_us,send_lag_p99_us,service_p50_us,service_p99_us,wire_p50_us,wire_p99_us,wire_samples,server_cpu_pct" >"$csv"

# The process whose CPU time counts for TARGET: nginx's worker or the gateway
# (Redis and the mock are idle on hits).
server_pid() { # TARGET
    case $1 in
    nginx-static) pgrep -P "$nginx_pid" | head -1 ;;
    *) echo "$gw_pid" ;;
    esac
}

run_one() { # target stream(0|1) run(saturation|fixed) rate
    local t=$1 s=$2 r=$3 rate=$4 url body=$body_plain line extra=()
    [ "$s" = 1 ] && body=$body_stream
    case $t in
    nginx-static) url="$NGINX_URL/$([ "$s" = 1 ] && echo stream.sse || echo plain.json)" ;;
    llmgate-hit) url="$GW_URL/v1/chat/completions" ;;
    llmgate-pass) url="$GW_URL/v1/chat/completions"; extra=(--header 'Cache-Control: no-store') ;;
    esac
    local args=(--url "$url" --body "$body" --header "Authorization: Bearer $KEY"
        --header 'Content-Type: application/json' "${extra[@]+"${extra[@]}"}"
        --duration "$SECS" --warmup "$WARMUP" --quiet
        --label "$t-$([ "$s" = 1 ] && echo stream || echo plain)-$r")
    if [ "$r" = saturation ]; then args+=(--rate 0 --connections "$CONNS")
    else args+=(--rate "$rate" --connections "$OPEN_CONNS" --spin-us "$SPIN"); fi
    local before=0
    [ "$t" = llmgate-hit ] && before=$(mock_count)
    [ "$t,$r" = llmgate-hit,fixed ] && { hist "$HIT_HIST" >"$tmp/hit.before"; hist "$LAG_HIST" >"$tmp/lag.before"; }
    local spid t0 c0
    spid=$(server_pid "$t")
    t0=$(date +%s%N)
    c0=$(ticks "$spid")
    line=$("${pin_client[@]}" "$LOADGEN" "${args[@]}")
    # The server's CPU use over the whole run (warmup included): its utilisation.
    line="$line,$(awk -v c="$(($(ticks "$spid") - c0))" -v hz="$CLK_TCK" -v ns="$(($(date +%s%N) - t0))" \
        'BEGIN { printf "%.1f", c / hz / (ns / 1e9) * 100 }')"
    [ "$t" = llmgate-hit ] && hit_upstream=$((hit_upstream + $(mock_count) - before))
    if [ "$t,$r" = llmgate-hit,fixed ]; then
        hist "$HIT_HIST" | hist_delta "$s" "$tmp/hit.before" >>"$tmp/gwtime"
        hist "$LAG_HIST" | hist_delta "$s" "$tmp/lag.before" >>"$tmp/lagtime"
    fi
    echo "$t,$s,$r,$line" >>"$csv"
    log "$t,$s,$r,$line"
}

# The gateway's own histograms, as "le count" lines (warmup included; the loadgen's
# warmup is 1 s of the same load): its time for cache answers, and its event-loop lag.
HIT_HIST='llmgate_request_duration_seconds_bucket{source="cache",'
LAG_HIST='llmgate_event_loop_lag_seconds_bucket{'
hist() { # PREFIX
    curl -s --max-time 10 "$GW_URL/metrics" | grep -F "$1" |
        sed -n 's/.*le="\([^"]*\)"} \([0-9]*\)$/\1 \2/p'
}
# stdin: the histogram after a run; $2: before. Prints: stream p99-bucket %<=0.5ms %<=1ms
hist_delta() { # STREAM BEFORE
    paste -d' ' "$2" - |
        awk -v s="$1" '{ le[NR] = $1; d[NR] = $4 - $2 } END { n = d[NR]; p = "n/a"
            for (i = 1; i <= NR; i++) { if (le[i] == "0.0005") a = d[i]; if (le[i] == "0.001") b = d[i]
                if (p == "n/a" && d[i] >= 0.99 * n) p = le[i] }
            if (n > 0) printf "%s %s %.2f %.2f\n", s, p, a / n * 100, b / n * 100
            else printf "%s n/a n/a n/a\n", s }'
}
: >"$tmp/gwtime"
: >"$tmp/lagtime"

mock_count() {
    curl -s "http://127.0.0.1:$MOCK_PORT/mock/stats" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["paths"]["/v1/chat/completions"])'
}
hit_upstream=0
TARGETS="nginx-static llmgate-hit llmgate-pass"
for s in 0 1; do
    for _ in $(seq "$ROUNDS"); do
        for t in $TARGETS; do run_one "$t" "$s" saturation 0; done
    done
    declare -A half
    for t in $TARGETS; do
        half[$t]=$(awk -F, -v t="$t" -v s="$s" '$1 == t && $2 == s && $3 == "saturation" { print $11 }' "$csv" |
            sort -n | awk '{ v[NR] = $1 } END { printf "%d\n", v[int((NR + 1) / 2)] / 2 }')
        [ "${half[$t]}" -ge 100 ] || half[$t]=100
    done
    # Tail latency is the noisiest figure on a shared VM: the fixed-rate runs also
    # alternate the targets for BENCH_ROUNDS rounds, and the summary uses the median.
    for _ in $(seq "$ROUNDS"); do
        for t in $TARGETS; do run_one "$t" "$s" fixed "${half[$t]}"; done
    done
    unset half
done
hits=$(curl -s "$GW_URL/metrics" | sed -n 's/^llmgate_cache_hits_total //p')

# ---- the platform alone -----------------------------------------------------------
# A spinning probe on the servers' CPU (no load on the servers), first with the
# loadgen's CPU idle, then with that CPU busy too, as it is in the fixed-rate runs:
# the stalls the machine adds by itself, which every target's tail includes.
probe=$tmp/probe.csv
: >"$probe"
if [ "$PIN" = 1 ]; then
    "${pin_server[@]}" "$PROBE" 5 "server CPU; client CPU idle" >>"$probe"
    "${pin_client[@]}" "$PROBE" 5 "client CPU; server CPU spinning" >"$tmp/probe0.csv" &
    probe0=$!
    "${pin_server[@]}" "$PROBE" 5 "server CPU; client CPU spinning" >>"$probe"
    wait "$probe0"
    cat "$tmp/probe0.csv" >>"$probe"
fi

# ---- report -----------------------------------------------------------------------
mkdir -p "$OUTDIR"
cp "$csv" "$OUTDIR/cache.csv"
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || true)
cmd="BENCH_SECONDS=$SECS BENCH_WARMUP=$WARMUP BENCH_ROUNDS=$ROUNDS BENCH_CONNECTIONS=$CONNS BENCH_OPEN_CONNECTIONS=$OPEN_CONNS BENCH_PIN=$PIN BENCH_SPIN_US=$SPIN loadtest/bench_cache.sh $BUILDDIR"
{
    echo "# Response cache: hits vs nginx static vs pass-through"
    echo
    echo "Generated by \`loadtest/bench_cache.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "- Machine: $ncpu CPUs, $cpu, $(uname -sr)"
    echo "- Command: \`$cmd\`"
    echo "- nginx-static: $("$NGINX" -v 2>&1 | sed 's/.*: //'), 1 worker process, serving the"
    echo "  cached answer's exact bytes ($plain_bytes B JSON, $stream_bytes B SSE) as static files to the same POST."
    echo "- llmgate-hit: llmgate (workers 1, access log off) answering from $("$REDIS" --version | cut -d' ' -f3)"
    echo "  (per-worker async connection); llmgate-pass: the same request with"
    echo "  \`Cache-Control: no-store\` proxied to llmgate-mock (1 thread, no latency, 16 tokens)."
    echo "- Load: llmgate-loadgen, 1 thread; saturation = closed loop, $CONNS connections, $ROUNDS rounds"
    echo "  alternating the targets (the summary uses each target's median); fixed = open loop at half"
    echo "  of that median, $OPEN_CONNS connections, latency from the scheduled send time, also"
    echo "  $ROUNDS rounds alternating the targets (the summary uses the median p99); the loadgen"
    echo "  polls for arrivals due within $SPIN µs instead of arming a timer for each (--spin-us):"
    echo "  on this VM a timer and a wake-up from idle per arrival cost it more than the gap."
    echo "  ${SECS}s measured after ${WARMUP}s warmup. $pin_note."
    echo "- Upstream (mock) requests made during the llmgate-hit runs: $hit_upstream; cache hits counted by llmgate: $hits."
    echo "- Gateway time of the hits in each fixed-rate run (its own histogram,"
    echo "  \`llmgate_request_duration_seconds{source=\"cache\"}\`: arrival to answer handed to the"
    echo "  socket, warmup included), as the bucket holding the p99 and the share within 0.5 / 1 ms:"
    awk '{ printf "  %s: p99 <= %s s, %s %% within 0.5 ms, %s %% within 1 ms\n",
        ($1 == 1 ? "streaming" : "non-streaming"), $2, $3, $4 }' "$tmp/gwtime"
    echo "- The worker's event-loop lag in the same runs (\`llmgate_event_loop_lag_seconds\`, a"
    echo "  20 ms timer's delay: time a request may wait unread while the worker is busy or off the CPU):"
    awk '{ printf "  %s: p99 <= %s s, %s %% within 0.5 ms, %s %% within 1 ms\n",
        ($1 == 1 ? "streaming" : "non-streaming"), $2, $3, $4 }' "$tmp/lagtime"
    if [ -s "$probe" ]; then
        echo "- The platform alone (\`llmgate-stallprobe\`: a thread spinning 5 s on a clock, nothing"
        echo "  else loaded; a gap between two readings is time the CPU was taken from it):"
        awk -F, '{ printf "  %s: gaps over 0.5/1/2/5 ms: %s/%s/%s/%s, longest %s µs, %s ms lost\n",
            $1, $3, $4, $5, $6, $7, $8 }' "$probe"
    fi
    echo
    echo "Latency columns count from the scheduled send time; \"send lag\" is scheduled to written"
    echo "(the load generator's own lateness), \"service\" is written to response as the load"
    echo "generator reads it, \"wire\" is the request handed to send() to the kernel's receive"
    echo "timestamp of the response's last bytes (the load generator's own time off the CPU left out)."
    echo
    echo "| target | stream | run | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | errors | send lag p99 µs | service p99 µs | wire p99 µs | server CPU % |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
        $1, ($2 == 1 ? "yes" : "no"), $3 ($3 == "fixed" ? " @" $6 "/s" : ""), $11, $12, $13, $14,
        $15, $16, $10, $19, $21, $23, $25 }' "$csv"
    echo
    python3 - "$csv" <<'PY'
import csv, statistics, sys
rows = list(csv.DictReader(open(sys.argv[1])))
for s in ("0", "1"):
    sat = {t: statistics.median(float(r["achieved_rps"]) for r in rows
                                if r["target"] == t and r["stream"] == s and r["run"] == "saturation")
           for t in ("nginx-static", "llmgate-hit", "llmgate-pass")}
    fixed = {t: [int(r["p99_us"]) for r in rows if r["target"] == t and r["stream"] == s
                 and r["run"] == "fixed"] for t in ("nginx-static", "llmgate-hit")}
    p99 = {t: statistics.median(v) for t, v in fixed.items()}
    svc = {t: [int(r["service_p99_us"]) for r in rows if r["target"] == t and r["stream"] == s
               and r["run"] == "fixed"] for t in ("nginx-static", "llmgate-hit")}
    wire = {t: [int(r["wire_p99_us"]) for r in rows if r["target"] == t and r["stream"] == s
                and r["run"] == "fixed"] for t in ("nginx-static", "llmgate-hit")}
    busy = {t: statistics.median(float(r["server_cpu_pct"]) for r in rows if r["target"] == t
                                 and r["stream"] == s and r["run"] == "fixed")
            for t in ("nginx-static", "llmgate-hit")}
    print("%s (median saturation req/s: nginx-static %.0f, llmgate-hit %.0f, llmgate-pass %.0f): "
          "cache hits at **%.2f x** nginx static throughput (goal >= 0.7), %.2f x the pass-through "
          "path; hit p99 at half saturation **%d µs** (median of %s; goal < 1000; nginx static: "
          "%d µs, median of %s). From the written request (the load generator's lateness left "
          "out): hit p99 %d µs (median of %s), nginx %d µs (median of %s). On the wire (the "
          "kernel's timestamps): hit p99 **%d µs** (median of %s), nginx %d µs (median of %s). "
          "Server CPU busy at that rate: llmgate %.0f %%, nginx %.0f %%.\n" % (
              "Streaming" if s == "1" else "Non-streaming", sat["nginx-static"], sat["llmgate-hit"],
              sat["llmgate-pass"], sat["llmgate-hit"] / sat["nginx-static"],
              sat["llmgate-hit"] / sat["llmgate-pass"], p99["llmgate-hit"],
              "/".join(map(str, fixed["llmgate-hit"])), p99["nginx-static"],
              "/".join(map(str, fixed["nginx-static"])), statistics.median(svc["llmgate-hit"]),
              "/".join(map(str, svc["llmgate-hit"])), statistics.median(svc["nginx-static"]),
              "/".join(map(str, svc["nginx-static"])), statistics.median(wire["llmgate-hit"]),
              "/".join(map(str, wire["llmgate-hit"])), statistics.median(wire["nginx-static"]),
              "/".join(map(str, wire["nginx-static"])), busy["llmgate-hit"], busy["nginx-static"]))
PY
} >"$OUTDIR/cache.md"
log "wrote $OUTDIR/cache.csv and $OUTDIR/cache.md"
