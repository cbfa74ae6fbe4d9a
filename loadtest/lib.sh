# Shared set-up for the loadtest/bench_*.sh scripts; source it, then call
# bench_setup. Everything stays on loopback, and every process a script starts
# (recorded in pids) is killed when it exits.

# bench_setup NAME PIN_NOTE: CPU pinning (pin_client / pin_server arrays, honouring
# PIN=0|1; loadgen on CPU 0, servers on CPU 1), a temp dir in $tmp, cleanup traps,
# and log(). PIN_NOTE describes the pinning for the report.
bench_setup() {
    bench_name=$1
    ncpu=$(nproc)
    pin_client=() pin_server=()
    if [ "${PIN:-1}" = 1 ] && [ "$ncpu" -ge 2 ] && command -v taskset >/dev/null; then
        pin_client=(taskset -c 0)
        pin_server=(taskset -c 1)
        pin_note=$2
    else
        PIN=0
        pin_note="no CPU pinning"
    fi
    tmp=$(mktemp -d "/tmp/$bench_name.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

bench_cleanup() {
    local p
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}

log() { echo "$bench_name: $*" >&2; }

# A free TCP port on 127.0.0.1.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# wait_up PID URL: until URL answers any HTTP status (10 s), or PID dies.
wait_up() {
    local pid=$1 url=$2
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 1
        curl -s -o /dev/null --max-time 1 "$url" && return 0
        sleep 0.1
    done
    return 1
}

# nginx_start DIR INNER: a one-worker nginx ($NGINX) rooted in DIR on the server CPU,
# logs and temp files under DIR; INNER is the rest of its http {} block (upstreams,
# servers). Sets nginx_pid (also added to pids).
nginx_start() {
    local d=$1 inner=$2 user=
    mkdir -p "$d/logs"
    [ "$(id -u)" = 0 ] && user="user root;"
    cat >"$d/nginx.conf" <<EOF
$user
worker_processes 1;
daemon off;
master_process on;
pid $d/nginx.pid;
error_log $d/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $d/body;
    proxy_temp_path $d/proxy;
    fastcgi_temp_path $d/fastcgi;
    uwsgi_temp_path $d/uwsgi;
    scgi_temp_path $d/scgi;
    keepalive_requests 100000000;
$inner
}
EOF
    "${pin_server[@]}" "$NGINX" -p "$d" -c "$d/nginx.conf" -e "$d/logs/error.log" \
        2>"$d/logs/stderr" &
    nginx_pid=$!
    pids+=("$nginx_pid")
}

# ticks PID: the CPU time (clock ticks, CLK_TCK a second) PID has used, all its threads.
CLK_TCK=$(getconf CLK_TCK)
ticks() { awk '{ print $14 + $15 }' "/proc/$1/stat"; }

# start_mock MOCK_BINARY [ARGS...]: one-thread llmgate-mock on the server CPU, extra
# ARGS passed on; sets mock_pid and MOCK_PORT once it answers (exits the script if not).
start_mock() {
    local bin=$1
    shift
    "${pin_server[@]}" "$bin" --port 0 --port-file "$tmp/mock.port" --threads 1 --quiet "$@" \
        2>"$tmp/mock.log" &
    mock_pid=$!
    pids+=("$mock_pid")
    for _ in $(seq 50); do [ -s "$tmp/mock.port" ] && break; sleep 0.1; done
    [ -s "$tmp/mock.port" ] || { log "mock did not start"; cat "$tmp/mock.log" >&2; exit 1; }
    MOCK_PORT=$(cat "$tmp/mock.port")
    wait_up "$mock_pid" "http://127.0.0.1:$MOCK_PORT/mock/stats" || { log "mock not answering"; exit 1; }
}

# start_redis [PIN...]: a private, non-persistent redis-server ($REDIS, default
# redis-server) under the PIN command words (taskset -c N, or none); sets
# REDIS_PORT once it answers PING (exits the script if not).
start_redis() {
    REDIS_PORT=$(free_port)
    "$@" "${REDIS:-redis-server}" --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no \
        --loglevel warning >"$tmp/redis.log" 2>&1 &
    pids+=($!)
    for _ in $(seq 50); do
        [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.1
    done
    log "redis-server did not start"
    cat "$tmp/redis.log" >&2
    exit 1
}

# llmgate_conf FILE PORT [REDIS_PORT]: the benchmarks' one-worker gateway config:
# $KEY as its static key, the mock (MOCK_PORT) as provider "mock" serving mock-model,
# access log off, Redis at REDIS_PORT when given (none: no cache, no Redis).
llmgate_conf() {
    local hash redis=
    hash=$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)
    [ -n "${3:-}" ] && redis="\"redis\": {\"port\": $3},"
    cat >"$1" <<EOF
{ "listen": {"address": "127.0.0.1", "port": $2}, "workers": 1,
  "log": {"level": "warn", "access_log": "off"},
  "auth": {"api_keys_sha256": ["$hash"]}, $redis
  "providers": {"mock": {"kind": "openai", "base_url": "http://127.0.0.1:$MOCK_PORT/v1"}},
  "models": {"mock-model": {"provider": "mock", "model": "mock-model"}} }
EOF
}
