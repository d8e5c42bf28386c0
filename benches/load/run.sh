#!/usr/bin/env bash
# The Jadugar load benchmark: one command. See benches/README.md.
#
#   benches/load/run.sh [--targets nginx,jadugar-plain,...] [--log-pass none|1k|all] [--out FILE]
#
# 1. installs what is missing from Debian (nginx, haproxy, caddy, wrk, h2load);
# 2. builds bench_upstream, bench_gateway and the jadugar binary in release;
# 3. runs benches/load/loadbench.py, which prints one markdown table.
# Environment: BENCH_DURATION (s, default 10), BENCH_WARMUP (2), BENCH_REPS (3),
# BENCH_CONNECTIONS (64), BENCH_THREADS (1), BENCH_H2_CLIENTS (16),
# BENCH_H2_STREAMS (10), BENCH_PORT_BASE (18000), BENCH_SKIP_INSTALL=1,
# BENCH_SKIP_BUILD=1, BENCH_KEEP_TMP=1, CARGO_TARGET_DIR.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

fail() { echo "run.sh: error: $*" >&2; exit 1; }

# ---- 1. tools -------------------------------------------------------------
declare -A package_of=([nginx]=nginx [haproxy]=haproxy [caddy]=caddy [wrk]=wrk [h2load]=nghttp2-client [taskset]=util-linux [python3]=python3)
missing=()
for tool in "${!package_of[@]}"; do
    if ! command -v "$tool" >/dev/null 2>&1 && ! [ -x "/usr/sbin/$tool" ]; then
        missing+=("${package_of[$tool]}")
    fi
done
if ((${#missing[@]})); then
    [ "${BENCH_SKIP_INSTALL:-0}" = 1 ] && fail "missing: ${missing[*]} (and BENCH_SKIP_INSTALL=1)"
    command -v apt-get >/dev/null || fail "missing: ${missing[*]}; no apt-get here to install them"
    sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null || fail "missing: ${missing[*]}; run as root or install sudo"
        sudo="sudo"
    fi
    echo "run.sh: installing ${missing[*]}" >&2
    $sudo apt-get update -qq || fail "apt-get update failed"
    # RUNLEVEL=1: do not start the distribution's nginx/haproxy services.
    $sudo env RUNLEVEL=1 DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2 \
        || fail "apt-get install ${missing[*]} failed"
fi

# ---- 2. binaries ----------------------------------------------------------
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$repo/target}"
bin_dir="$CARGO_TARGET_DIR/release"
if [ "${BENCH_SKIP_BUILD:-0}" != 1 ]; then
    command -v cargo >/dev/null || fail "cargo not found"
    cd "$repo"
    echo "run.sh: building bench_upstream (release)" >&2
    cargo build --release -p jadugar-benches --no-default-features --bin bench_upstream >&2 \
        || fail "cannot build bench_upstream"
    echo "run.sh: building bench_gateway (release)" >&2
    if ! cargo build --release -p jadugar-benches --bin bench_gateway >&2; then
        echo "run.sh: WARNING: bench_gateway does not build; the jadugar rows will say 'not run'" >&2
        rm -f "$bin_dir/bench_gateway"
    fi
    echo "run.sh: building jadugar (release)" >&2
    if ! cargo build --release -p jadugar-host >&2; then
        echo "run.sh: WARNING: jadugar does not build; the host row will say 'not run'" >&2
        rm -f "$bin_dir/jadugar"
    fi
fi
[ -x "$bin_dir/bench_upstream" ] || fail "$bin_dir/bench_upstream missing"

# ---- 3. measure -----------------------------------------------------------
exec python3 "$here/loadbench.py" --bin-dir "$bin_dir" "$@"
