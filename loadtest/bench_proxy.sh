#!/usr/bin/env bash
# Gateway-core benchmark: in one run, on the same mock upstream, compare
#   direct   loadgen -> llmgate-mock
#   nginx    loadgen -> nginx proxy_pass (upstream keepalive) -> mock
#   llmgate  loadgen -> llmgate -> mock
# for non-streaming and streaming chat completions, each with a saturation run
# (closed loop) and a fixed-rate run (open loop, latency from the scheduled
# send time). Writes loadtest/results/proxy.csv and proxy.md.
#
# usage: loadtest/bench_proxy.sh [BUILDDIR]      (default $BUILDDIR or ./build)
# env:   BENCH_SECONDS (10) BENCH_WARMUP (2) BENCH_RATE (2000)
#        BENCH_CONNECTIONS (32, saturation) BENCH_OPEN_CONNECTIONS (64, fixed rate)
#        BENCH_TARGETS ("direct nginx llmgate") BENCH_PIN (1: loadgen on CPU 0,
#        servers on CPU 1) BENCH_OUTDIR (loadtest/results) NGINX (nginx)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
BUILDDIR=${1:-${BUILDDIR:-./build}}
BUILDDIR=$(cd "$BUILDDIR" && pwd)
SECS=${BENCH_SECONDS:-10}
WARMUP=${BENCH_WARMUP:-2}
RATE=${BENCH_RATE:-2000}
CONNS=${BENCH_CONNECTIONS:-32}
OPEN_CONNS=${BENCH_OPEN_CONNECTIONS:-64}
TARGETS=${BENCH_TARGETS:-direct nginx llmgate}
PIN=${BENCH_PIN:-1}
OUTDIR=${BENCH_OUTDIR:-$here/results}
NGINX=${NGINX:-nginx}
KEY=bench-key-not-secret-0123456789

MOCK=$BUILDDIR/llmgate-mock
LOADGEN=$BUILDDIR/llmgate-loadgen
for b in "$MOCK" "$LOADGEN"; do
    [ -x "$b" ] || { echo "bench_proxy: $b not found (build it first)" >&2; exit 2; }
done

. "$(dirname "$0")/lib.sh"
bench_setup bench_proxy "loadgen pinned to CPU 0; mock and the proxy under test share CPU 1 (taskset)"

stop() {
    local pid=$1 p keep=()
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    for p in "${pids[@]}"; do [ "$p" = "$pid" ] || keep+=("$p"); done
    pids=("${keep[@]+"${keep[@]}"}")
}

body_plain='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16}'
body_stream='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16,"stream":true}'

# ---- the mock ---------------------------------------------------------------
start_mock "$MOCK"

# ---- targets ------------------------------------------------------------------
target_pid=
start_nginx() {
    command -v "$NGINX" >/dev/null || { log "nginx not installed"; return 1; }
    local port d=$tmp/nginx
    port=$(free_port)
    nginx_start "$d" "    upstream mock {
        server 127.0.0.1:$MOCK_PORT;
        keepalive 64;
        keepalive_requests 100000000;
    }
    server {
        listen 127.0.0.1:$port;
        location / {
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
        }
    }"
    target_pid=$nginx_pid
    target_url="http://127.0.0.1:$port"
    wait_up "$target_pid" "$target_url/" || { cat "$d/logs/error.log" "$d/logs/stderr" >&2; return 1; }
    target_version=$("$NGINX" -v 2>&1 | sed 's/.*: //')
}

start_llmgate() {
    local port
    [ -x "$BUILDDIR/llmgate" ] || { log "$BUILDDIR/llmgate not built"; return 1; }
    port=$(free_port)
    llmgate_conf "$tmp/llmgate.json" "$port"
    "${pin_server[@]}" "$BUILDDIR/llmgate" -c "$tmp/llmgate.json" 2>"$tmp/llmgate.log" &
    target_pid=$!
    pids+=("$target_pid")
    target_url="http://127.0.0.1:$port"
    wait_up "$target_pid" "$target_url/" || { tail -20 "$tmp/llmgate.log" >&2; return 1; }
    target_version=$("$BUILDDIR/llmgate" -V 2>&1 | head -1 || true)
}

# smoke PATH: one real request must succeed before we measure anything.
smoke() {
    local code
    code=$(curl -s -o "$tmp/smoke.out" -w '%{http_code}' --max-time 5 \
        -H "Authorization: Bearer $KEY" -H 'Content-Type: application/json' \
        -d "$body_plain" "$target_url/v1/chat/completions" || true)
    [ "$code" = 200 ] && grep -q '"choices"' "$tmp/smoke.out" && return 0
    log "smoke request to $target_url answered $code: $(head -c 300 "$tmp/smoke.out" 2>/dev/null)"
    return 1
}

csv=$tmp/proxy.csv
echo "target,stream,run,label,mode,target_rate,duration_s,sent,ok,errors,achieved_rps,p50_us,p90_us,p99_us,p999_us,max_us,ttfb_p50_us,ttfb_p99_us,send_lag_p99_us,service_p50_us,service_p99_us,wire_p50_us,wire_p99_us,wire_samples" >"$csv"
skipped=()

run_one() { # target stream(0|1) run(saturation|fixed)
    local t=$1 s=$2 r=$3 body=$body_plain line
    [ "$s" = 1 ] && body=$body_stream
    local args=(--url "$target_url/v1/chat/completions" --body "$body"
        --header "Authorization: Bearer $KEY" --duration "$SECS" --warmup "$WARMUP"
        --label "$t-$([ "$s" = 1 ] && echo stream || echo plain)-$r" --quiet)
    if [ "$r" = saturation ]; then args+=(--rate 0 --connections "$CONNS")
    else args+=(--rate "$RATE" --connections "$OPEN_CONNS"); fi
    line=$("${pin_client[@]}" "$LOADGEN" "${args[@]}")
    echo "$t,$s,$r,$line" >>"$csv"
    log "$t,$s,$r,$line"
}

declare -A versions
for t in $TARGETS; do
    target_pid=
    target_version=
    case $t in
    direct) target_url="http://127.0.0.1:$MOCK_PORT"; target_version="llmgate-mock" ;;
    nginx) start_nginx || { log "SKIP nginx: it did not start"; skipped+=(nginx); continue; } ;;
    llmgate) start_llmgate || { log "SKIP llmgate: it did not start"; skipped+=(llmgate); continue; } ;;
    *) log "unknown target $t"; exit 2 ;;
    esac
    if ! smoke; then
        log "SKIP $t: it does not proxy a chat completion"
        skipped+=("$t")
        [ -n "$target_pid" ] && stop "$target_pid"
        continue
    fi
    versions[$t]=$target_version
    for s in 0 1; do
        for r in saturation fixed; do run_one "$t" "$s" "$r"; done
    done
    [ -n "$target_pid" ] && stop "$target_pid"
done

# ---- report -------------------------------------------------------------------
mkdir -p "$OUTDIR"
cp "$csv" "$OUTDIR/proxy.csv"
cpu=$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //' || true)
[ -n "$cpu" ] || cpu=$(lscpu 2>/dev/null | sed -n 's/^Model name: *//p' | head -1)
cmd="BENCH_SECONDS=$SECS BENCH_WARMUP=$WARMUP BENCH_RATE=$RATE BENCH_CONNECTIONS=$CONNS BENCH_OPEN_CONNECTIONS=$OPEN_CONNS BENCH_PIN=$PIN loadtest/bench_proxy.sh $BUILDDIR"
{
    echo "# Gateway core: direct vs nginx vs llmgate"
    echo
    echo "Generated by \`loadtest/bench_proxy.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC')."
    echo
    echo "- Machine: $ncpu CPUs, $cpu, $(uname -sr)"
    echo "- Command: \`$cmd\`"
    echo "- Upstream: llmgate-mock, 1 thread, no latency, 16 tokens per response; every target"
    echo "  runs with one worker (nginx: 1 worker process, upstream keepalive 64,"
    echo "  proxy_buffering off; llmgate: workers 1, access log off)."
    echo "- Load: llmgate-loadgen, 1 thread; saturation = closed loop, $CONNS connections;"
    echo "  fixed = $RATE req/s open loop, $OPEN_CONNS connections, latency from the scheduled"
    echo "  send time. ${SECS}s measured after ${WARMUP}s warmup. $pin_note."
    for t in "${!versions[@]}"; do echo "- $t: ${versions[$t]}"; done
    [ ${#skipped[@]} -eq 0 ] || echo "- Skipped (did not start or did not proxy): ${skipped[*]}"
    echo
    echo "| target | stream | run | req/s | p50 µs | p90 µs | p99 µs | p99.9 µs | max µs | TTFB p50 µs | TTFB p99 µs | errors |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    awk -F, 'NR > 1 { printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n",
        $1, ($2 == 1 ? "yes" : "no"), $3, $11, $12, $13, $14, $15, $16, $17, $18, $10 }' "$csv"
    echo
    echo "Added latency over direct at $RATE req/s (µs), and saturation throughput ratio:"
    echo
    echo "| target | stream | added p50 | added p99 | saturation req/s | vs direct |"
    echo "|---|---|---:|---:|---:|---:|"
    awk -F, 'NR > 1 { k = $1 "," $2
            if ($3 == "fixed") { p50[k] = $12; p99[k] = $14 } else rps[k] = $11; seen[$1] = 1 }
        END {
            n = split("nginx llmgate", ts, " ")
            for (s = 0; s <= 1; s++) for (i = 1; i <= n; i++) {
                t = ts[i]; k = t "," s; d = "direct," s
                if (!(t in seen) || !(d in rps)) continue
                printf "| %s | %s | %d | %d | %.0f | %.2f |\n", t, (s ? "yes" : "no"),
                    p50[k] - p50[d], p99[k] - p99[d], rps[k], (rps[d] > 0 ? rps[k] / rps[d] : 0)
            }
            for (s = 0; s <= 1; s++) {
                a = "llmgate," s; b = "nginx," s
                if ((a in rps) && (b in rps) && rps[b] > 0)
                    printf "\nllmgate/nginx saturation throughput (%s): **%.2f**\n",
                        (s ? "streaming" : "non-streaming"), rps[a] / rps[b]
            }
        }' "$csv"
} >"$OUTDIR/proxy.md"
log "wrote $OUTDIR/proxy.csv and $OUTDIR/proxy.md"
[ ${#skipped[@]} -eq 0 ] || log "skipped: ${skipped[*]}"
