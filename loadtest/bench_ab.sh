#!/usr/bin/env bash
# A/B of two llmgate builds on cache hits: the same Redis, mock and load, the two
# gateways side by side (one worker each, both on the server CPU), rounds
# alternating A and B so a noisy machine hurts both alike. Per build and run it
# records throughput and latency, the gateway's CPU time per answered request and,
# where perf can read the syscall tracepoints, epoll_wait / epoll_ctl / writev
# calls and context switches per request. For changes to the hit path's cost.
#
# usage: loadtest/bench_ab.sh A_GATEWAY B_GATEWAY [BUILDDIR]   (BUILDDIR: the mock
#        and loadgen; default $BUILDDIR or ./build)
# env:   BENCH_NAME (ab: writes results/ab-NAME.{csv,md}) BENCH_ROUNDS (5)
#        BENCH_SECONDS (3) BENCH_RATE (14000: the fixed-rate run; 0 skips it)
#        BENCH_CONNECTIONS (32) BENCH_OPEN_CONNECTIONS (64) BENCH_SPIN_US (200)
#        BENCH_STREAM (0: 1 replays the answer as SSE) BENCH_PIN (1)
#        BENCH_OUTDIR (loadtest/results) REDIS (redis-server)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
A=$(realpath "$1")
B=$(realpath "$2")
BUILDDIR=$(cd "${3:-${BUILDDIR:-./build}}" && pwd)
NAME=${BENCH_NAME:-ab}
ROUNDS=${BENCH_ROUNDS:-5}
SECS=${BENCH_SECONDS:-3}
RATE=${BENCH_RATE:-14000}
CONNS=${BENCH_CONNECTIONS:-32}
OPEN_CONNS=${BENCH_OPEN_CONNECTIONS:-64}
SPIN=${BENCH_SPIN_US:-200}
PIN=${BENCH_PIN:-1}
OUTDIR=${BENCH_OUTDIR:-$here/results}
REDIS=${REDIS:-redis-server}
KEY=bench-key-not-secret-0123456789
MOCK=$BUILDDIR/llmgate-mock
LOADGEN=$BUILDDIR/llmgate-loadgen
for b in "$A" "$B" "$MOCK" "$LOADGEN"; do
    [ -x "$b" ] || { echo "bench_ab: $b not found (build it first)" >&2; exit 2; }
done
command -v "$REDIS" >/dev/null || { echo "bench_ab: $REDIS not installed" >&2; exit 2; }

. "$here/lib.sh"
bench_setup bench_ab "loadgen pinned to CPU 0; both gateways, Redis and the mock on CPU 1 (taskset)"

body='{"model":"mock-model","messages":[{"role":"user","content":"Say hello to the benchmark."}],"max_tokens":16,"temperature":0}'
[ "${BENCH_STREAM:-0}" = 1 ] && body=${body%\}}',"stream":true}'

start_mock "$MOCK"
start_redis "${pin_server[@]}"

# start_gw LABEL BINARY: sets port_LABEL and pid_LABEL once it answers a cache hit.
start_gw() {
    local l=$1 bin=$2 port state=
    port=$(free_port)
    llmgate_conf "$tmp/$l.json" "$port" "$REDIS_PORT"
    "${pin_server[@]}" "$bin" -c "$tmp/$l.json" 2>"$tmp/$l.log" &
    pids+=($!)
    wait_up "$!" "http://127.0.0.1:$port/healthz" || { tail "$tmp/$l.log" >&2; exit 1; }
    for _ in $(seq 50); do
        state=$(curl -s -o /dev/null -D - --max-time 5 -H "Authorization: Bearer $KEY" \
            -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$port/v1/chat/completions" |
            tr -d '\r' | sed -n 's/^x-llmgate-cache: //Ip')
        [ "$state" = hit ] && break
        sleep 0.1
    done
    [ "$state" = hit ] || { log "$l: no cache hit ('$state')"; exit 1; }
    printf -v "port_$l" %s "$port"
    printf -v "pid_$l" %s "$!"
}
start_gw A "$A"
start_gw B "$B"

# perf's syscall tracepoints, where this kernel and user may read them.
events=syscalls:sys_enter_epoll_wait,syscalls:sys_enter_epoll_ctl,syscalls:sys_enter_writev,context-switches
have_perf=0
perf stat -x, -e "$events" -o /dev/null -- true 2>/dev/null && have_perf=1

csv=$tmp/ab.csv
echo "build,round,run,target_rate,ok,errors,achieved_rps,p50_us,p99_us,wire_p99_us,cpu_us_per_req,epoll_wait_per_req,epoll_ctl_per_req,writev_per_req,ctxsw_per_req" >"$csv"
run_one() { # LABEL ROUND RUN(saturation|fixed)
    local l=$1 port pid args line c0 ok per="n/a,n/a,n/a,n/a" ppid=
    port=port_$l pid=pid_$l
    args=(--url "http://127.0.0.1:${!port}/v1/chat/completions" --body "$body" --duration "$SECS"
        --quiet --header "Authorization: Bearer $KEY" --header 'Content-Type: application/json')
    if [ "$3" = saturation ]; then args+=(--rate 0 --connections "$CONNS")
    else args+=(--rate "$RATE" --connections "$OPEN_CONNS" --spin-us "$SPIN"); fi
    if [ "$have_perf" = 1 ]; then
        # A second longer than the run: idle, the gateway makes none of these calls.
        perf stat -x, -e "$events" -p "${!pid}" -o "$tmp/perf.$l" -- sleep "$((SECS + 1))" 2>/dev/null &
        ppid=$!
    fi
    c0=$(ticks "${!pid}")
    line=$("${pin_client[@]}" "$LOADGEN" "${args[@]}")
    local used=$(($(ticks "${!pid}") - c0))
    [ -n "$ppid" ] && wait "$ppid" || true
    ok=$(cut -d, -f6 <<<"$line")
    [ -s "$tmp/perf.$l" ] && [ "$ok" -gt 0 ] &&
        per=$(awk -F, -v ok="$ok" '/^[0-9]/ { v[++n] = $1 / ok } END { printf "%.3f,%.3f,%.3f,%.3f", v[1], v[2], v[3], v[4] }' "$tmp/perf.$l")
    # loadgen CSV: label,mode,rate,duration,sent,ok,errors,rps,p50,p90,p99,...,wire_p50,wire_p99,...
    line=$(awk -F, -v l="$l" -v r="$2" -v run="$3" -v c="$used" -v hz="$CLK_TCK" -v per="$per" \
        '{ printf "%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%.1f,%s", l, r, run, $3, $6, $7, $8, $9, $11, $20,
           ($6 > 0 ? c / hz * 1e6 / $6 : 0), per }' <<<"$line")
    echo "$line" >>"$csv"
    log "$line"
}

for r in $(seq "$ROUNDS"); do
    for l in A B; do run_one "$l" "$r" saturation; done
    if [ "$RATE" != 0 ]; then for l in A B; do run_one "$l" "$r" fixed; done; fi
done

mkdir -p "$OUTDIR"
cp "$csv" "$OUTDIR/ab-$NAME.csv"
python3 - "$csv" "$OUTDIR/ab-$NAME.md" "$A" "$B" "$ROUNDS" "$SECS" "$RATE" "$pin_note" "$have_perf" <<'PY'
import csv, statistics, sys
src, out, a, b, rounds, secs, rate, pin, have_perf = sys.argv[1:]
rows = list(csv.DictReader(open(src)))
cols = [("achieved_rps", "hits/s"), ("p50_us", "p50 µs"), ("p99_us", "p99 µs"),
        ("wire_p99_us", "wire p99 µs"), ("cpu_us_per_req", "CPU µs/hit")]
if have_perf == "1":
    cols += [("epoll_wait_per_req", "epoll_wait/hit"), ("epoll_ctl_per_req", "epoll_ctl/hit"),
             ("writev_per_req", "writev/hit"), ("ctxsw_per_req", "ctx switches/hit")]
def med(build, run, col):
    v = [float(x[col]) for x in rows if x["build"] == build and x["run"] == run and x[col] != "n/a"]
    return statistics.median(v) if v else float("nan")
with open(out, "w") as f:
    f.write(f"# A/B: two llmgate builds on cache hits\n\nA: `{a}`  \nB: `{b}`  \n"
            f"{rounds} rounds alternating A and B, {secs} s per run; {pin}. "
            f"Medians over the rounds; B/A below 1 is better for latency and CPU, above 1 for hits/s. "
            f"Every run is in the CSV beside this file.\n")
    for run in ("saturation", "fixed"):
        if not any(x["run"] == run for x in rows):
            continue
        f.write(f"\n## {'closed loop, ' + 'saturation' if run == 'saturation' else f'open loop, {rate} hits/s'}\n\n"
                "| | A | B | B/A |\n|---|---|---|---|\n")
        for col, name in cols:
            va, vb = med("A", run, col), med("B", run, col)
            ratio = f"{vb / va:.2f}" if va else "n/a"
            fmt = (lambda v: f"{v:,.0f}") if col.endswith("_us") or col == "achieved_rps" else (lambda v: f"{v:.3g}")
            f.write(f"| {name} | {fmt(va)} | {fmt(vb)} | {ratio} |\n")
print(open(out).read())
PY
