#!/usr/bin/env bash
# Syscalls and CPU time per request of one proxy, natively (no valgrind).
#
#   benches/load/syscalls.sh plain|full|many-routes|nginx [REQUESTS]
#
# Starts bench_upstream on core 0 and the proxy on core 1 (taskset), sends
# 5,000 warm-up requests, then REQUESTS (default 100,000) HTTP/1.1 requests
# (h2load --h1, 64 connections, on core 0) while `perf stat` counts the
# proxy's system calls through the kernel's syscall tracepoints; prints the
# calls per request and the proxy's user and system CPU microseconds per
# request (utime/stime from /proc, so the CPU figures are only as steady as
# the machine is idle; the syscall counts do not depend on it much).
# Needs perf (linux-perf) with tracepoint access, h2load, curl; binaries as
# for profile.sh (CARGO_TARGET_DIR/release).
# BENCH_GATEWAY_ARGS adds arguments to bench_gateway (e.g. --access-log).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
what="${1:?usage: syscalls.sh plain|full|many-routes|nginx [REQUESTS]}"
requests="${2:-100000}"
bin="${CARGO_TARGET_DIR:-$repo/target}/release"
export PATH="$PATH:/usr/sbin"
for tool in perf h2load curl taskset; do
    command -v "$tool" >/dev/null || { echo "syscalls.sh: $tool is missing" >&2; exit 1; }
done

work="$(mktemp -d /tmp/jadugar-syscalls-XXXXXX)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
up_port="$(free_port)"; px_port="$(free_port)"
taskset -c 0 "$bin/bench_upstream" --listen "127.0.0.1:$up_port" >"$work/upstream.log" 2>&1 &
pids+=($!)

case "$what" in
    plain|full|many-routes)
        taskset -c 1 "$bin/bench_gateway" --mode "$what" --listen "127.0.0.1:$px_port" \
            --upstream "127.0.0.1:$up_port" --key-file "$work/key" ${BENCH_GATEWAY_ARGS:-} >"$work/proxy.log" 2>&1 &
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
        taskset -c 1 nginx -p "$work" -e "$work/error.log" -c "$work/nginx.conf" >"$work/proxy.log" 2>&1 &
        ;;
    *) echo "syscalls.sh: unknown target $what" >&2; exit 1 ;;
esac
proxy=$!
pids+=("$proxy")

header=()
for _ in $(seq 60); do
    [ "$what" = full ] && [ ! -s "$work/key" ] && { sleep 0.25; continue; }
    curl -s -o /dev/null "http://127.0.0.1:$px_port/" && break
    kill -0 "$proxy" 2>/dev/null || { echo "syscalls.sh: the proxy exited:" >&2; cat "$work/proxy.log" >&2; exit 1; }
    sleep 0.25
done
[ "$what" = full ] && header=(-H "authorization: Bearer $(cat "$work/key")")
url="http://127.0.0.1:$px_port/api/1k"
taskset -c 0 h2load --h1 -n 5000 -c 64 "${header[@]}" "$url" >/dev/null

events=read,write,readv,writev,recvfrom,sendto,recvmsg,sendmsg,epoll_wait,epoll_pwait,epoll_pwait2,epoll_ctl,futex,accept4,getrandom,sched_yield,mmap,munmap,madvise,brk,close
tp=""
for e in ${events//,/ }; do
    [ -e "/sys/kernel/tracing/events/syscalls/sys_enter_$e" ] && tp="$tp,syscalls:sys_enter_$e"
done
cpu() { awk '{print $14, $15, $10}' "/proc/$proxy/stat"; }
# TCP segments sent on the machine (client, proxy and upstream together:
# all of it is loopback traffic of this benchmark).
segments() { awk '/^Tcp: [0-9]/ {print $12}' /proc/net/snmp; }
seg0="$(segments)"
read -r u0 s0 f0 < <(cpu)
perf stat -x, -e "raw_syscalls:sys_enter${tp}" -p "$proxy" -o "$work/perf.txt" &
perf_pid=$!
sleep 0.5
out="$(taskset -c 0 h2load --h1 -n "$requests" -c 64 "${header[@]}" "$url")"
sleep 0.2
kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
read -r u1 s1 f1 < <(cpu)
seg1="$(segments)"
grep -q "$requests succeeded" <<<"$out" || { echo "syscalls.sh: not every request succeeded:" >&2; echo "$out" >&2; exit 1; }
tck="$(getconf CLK_TCK)"
echo "## $what: per request over $requests requests (h2load --h1 -c 64)"
awk -F, -v n="$requests" '$3 ~ /sys_enter/ && $1+0 > 0 {
    name=$3; sub(/.*sys_enter_?/, "", name); if (name == "") name = "all syscalls";
    printf "  %8.3f  %s\n", $1 / n, name }' "$work/perf.txt" | sort -k1,1nr
awk -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v n="$requests" -v t="$tck" 'BEGIN {
    printf "  CPU us per request: user %.2f, system %.2f, total %.2f\n", u/t/n*1e6, s/t/n*1e6, (u+s)/t/n*1e6 }'
awk -v f="$((f1 - f0))" -v n="$requests" 'BEGIN { printf "  minor page faults per request: %.3f\n", f/n }'
awk -v g="$((seg1 - seg0))" -v n="$requests" 'BEGIN { printf "  TCP segments per request (all loopback traffic; 4 = one each way on both legs): %.2f\n", g/n }'
grep -E '^finished in' <<<"$out" | sed 's/^/  h2load: /'
