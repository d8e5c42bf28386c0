#!/usr/bin/env bash
# Repeatable instruction counts per request (valgrind callgrind) of one proxy.
#
#   benches/load/profile.sh plain|full|many-routes|host|nginx|upstream [REQUESTS]
#
# Starts bench_upstream, the proxy under callgrind, sends 2,000 warm-up
# requests (HTTP/1.1, 16 connections, h2load --h1), zeroes the counters,
# sends REQUESTS (default 20,000) more, dumps, and prints user-space
# instructions per request with the functions that cost most
# (benches/load/cgsummary.py). Kernel work (the TCP stack) is not counted.
# Needs valgrind and h2load; binaries from `benches/load/run.sh` (or
# BENCH_SKIP_BUILD=1 with CARGO_TARGET_DIR pointing at a release build).
# PROFILE_KEEP=1 keeps the callgrind file (for cgsummary.py or kcachegrind).
# BENCH_GATEWAY_ARGS adds arguments to bench_gateway (e.g. --access-log).
# `host` profiles the `jadugar` binary (`cargo build --release -p
# jadugar-host`) proxying one `[[gateway.routes]]` prefix route, one worker
# thread, its data directory made natively first (argon2 is slow under
# valgrind).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
what="${1:?usage: profile.sh plain|full|many-routes|host|nginx|upstream [REQUESTS]}"
requests="${2:-20000}"
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
for tool in valgrind callgrind_control h2load curl; do
    command -v "$tool" >/dev/null || { echo "profile.sh: $tool is missing (apt-get install valgrind nghttp2-client curl)" >&2; exit 1; }
done
[ -x "$bin/bench_upstream" ] || { echo "profile.sh: $bin/bench_upstream missing; run benches/load/run.sh first" >&2; exit 1; }

work="$(mktemp -d /tmp/jadugar-profile-XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ "${PROFILE_KEEP:-0}" = 1 ]; then echo "profile.sh: kept $work" >&2; else rm -rf "$work"; fi
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port="$(free_port)"; px_port="$(free_port)"
"$bin/bench_upstream" --listen "127.0.0.1:$up_port" >"$work/upstream.log" 2>&1 &
pids+=($!)

header=()
case "$what" in
    plain|full|many-routes)
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
            "$bin/bench_gateway" --mode "$what" --listen "127.0.0.1:$px_port" \
            --upstream "127.0.0.1:$up_port" --key-file "$work/key" ${BENCH_GATEWAY_ARGS:-} >"$work/proxy.log" 2>&1 &
        ;;
    host)
        [ -x "$bin/jadugar" ] || { echo "profile.sh: $bin/jadugar missing (cargo build --release -p jadugar-host)" >&2; exit 1; }
        cat >"$work/jadugar.toml" <<CONF
listen = "127.0.0.1:$px_port"
data_dir = "$work/data"
log_level = "warn"
[[gateway.routes]]
id = "api"
path = "/api"
path_match = "prefix"
upstream = { targets = ["http://127.0.0.1:$up_port"] }
CONF
        export JADUGAR_ADMIN_PASSWORD=profile-password-not-secret TOKIO_WORKER_THREADS=1
        "$bin/jadugar" --config "$work/jadugar.toml" serve >"$work/init.log" 2>&1 &
        init=$!
        for _ in $(seq 100); do curl -sf -o /dev/null "http://127.0.0.1:$px_port/healthz" && break; sleep 0.2; done
        kill "$init"; wait "$init" 2>/dev/null || true
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
            "$bin/jadugar" --config "$work/jadugar.toml" serve >"$work/proxy.log" 2>&1 &
        ;;
    nginx)
        mkdir -p "$work/tmp"
        cat >"$work/nginx.conf" <<CONF
$( [ "$(id -u)" = 0 ] && echo "user root;" )
worker_processes 1; daemon off; master_process off;
pid $work/nginx.pid; error_log $work/error.log warn;
events { worker_connections 8192; }
http {
    access_log off; client_body_temp_path $work/tmp; proxy_temp_path $work/tmp;
    keepalive_requests 10000000;
    upstream up { server 127.0.0.1:$up_port; keepalive 512; keepalive_requests 10000000; }
    server { listen 127.0.0.1:$px_port;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; } }
}
CONF
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
            nginx -p "$work" -e "$work/error.log" -c "$work/nginx.conf" >"$work/proxy.log" 2>&1 &
        ;;
    upstream)
        valgrind --tool=callgrind --callgrind-out-file="$work/cg.out" \
            "$bin/bench_upstream" --listen "127.0.0.1:$px_port" >"$work/proxy.log" 2>&1 &
        ;;
    *) echo "profile.sh: unknown target $what" >&2; exit 1 ;;
esac
proxy=$!
pids+=("$proxy")

for _ in $(seq 120); do
    [ "$what" = full ] && [ ! -s "$work/key" ] && { sleep 0.5; continue; }
    curl -s -o /dev/null "http://127.0.0.1:$px_port/" && break
    kill -0 "$proxy" 2>/dev/null || { echo "profile.sh: the proxy exited:" >&2; cat "$work/proxy.log" >&2; exit 1; }
    sleep 0.5
done
[ "$what" = full ] && header=(-H "authorization: Bearer $(cat "$work/key")")
url="http://127.0.0.1:$px_port/api/1k"
h2load --h1 -n 2000 -c 16 "${header[@]}" "$url" >/dev/null
callgrind_control -z "$proxy" >/dev/null
out="$(h2load --h1 -n "$requests" -c 16 "${header[@]}" "$url")"
grep -q "$requests succeeded" <<<"$out" || { echo "profile.sh: not every request succeeded:" >&2; echo "$out" >&2; exit 1; }
callgrind_control -d "$proxy" >/dev/null
sleep 1
dump="$(ls "$work"/cg.out.* 2>/dev/null | sort | tail -1)"
[ -n "$dump" ] || dump="$work/cg.out"
python3 "$here/cgsummary.py" "$dump" --requests "$requests" --label "$what"
