#!/usr/bin/env bash
# Proxy benchmark: Portcullis beside nginx as a plain reverse proxy, both in front of the
# same nginx upstream answering a small fixed body. See BENCHMARKS.md.
#
#   tests/bench/proxy.sh            (or `make bench`)
#
# Environment (all optional):
#   CARGO_TARGET_DIR   where cargo builds (binary at $CARGO_TARGET_DIR/release/portcullis)
#   BENCH_DURATION     seconds per measured run                 (default 10)
#   BENCH_WARMUP       seconds of warm-up before each run       (default 2)
#   BENCH_CONNECTIONS  wrk connections                          (default 32)
#   BENCH_ROUNDS       interleaved rounds over the four targets (default 3)
#   BENCH_SERVER_CPU   core the servers are pinned to           (default 0)
#   BENCH_CLIENT_CPU   core wrk is pinned to                    (default 1)
#   BENCH_QUIET_WAIT   seconds to wait for a quiet machine before each run (default 15)
#   BENCH_MAX_OTHER    % of a core other processes may take during a kept run (default 10)
#   BENCH_RETRIES      how many noisy runs may be measured again, in total   (default 6)
#
# Every server is started by this script, bound to 127.0.0.1 only, and stopped by pid on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
ROUNDS=${BENCH_ROUNDS:-3}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NGINX=${NGINX:-/usr/sbin/nginx}
BODY='hello from upstream'   # the upstream answers this plus "\n"

die() { echo "proxy.sh: $*" >&2; exit 1; }

for tool in "$NGINX" wrk taskset curl python3 cargo getconf; do
    command -v "$tool" >/dev/null || die "missing $tool (make bench installs wrk and nginx-light)"
done
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPU cores (servers on one, wrk on another)"

# ---------------------------------------------------------------------------------------------
# Cleanup: stop only the processes started here, by pid; remove the temp dir.
PIDS=()      # processes started here (nginx masters, portcullis)
WORKERS=()   # nginx workers, only SIGKILLed if they outlive their master
TMP=""
cleanup() {
    local rc=$?
    local pid
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "proxy.sh: pid $pid ignored SIGTERM for 10s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${WORKERS[@]}"; do
        if [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nginx ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    [ -n "$TMP" ] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Build.
echo "== building portcullis (release)"
(cd "$ROOT" && cargo build --release --quiet -p portcullis -p portcullis-htpasswd)
PORTCULLIS="${CARGO_TARGET_DIR:-$ROOT/target}/release/portcullis"
case "$PORTCULLIS" in /*) ;; *) PORTCULLIS="$ROOT/$PORTCULLIS" ;; esac
[ -x "$PORTCULLIS" ] || die "no binary at $PORTCULLIS"

TMP=$(mktemp -d /tmp/portcullis-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers may run as another user when started by root

# Four distinct free ports on 127.0.0.1 (held open together so they differ).
read -r UP_PORT NGX_PORT EDGE_PORT CONSOLE_PORT < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(4):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

# ---------------------------------------------------------------------------------------------
# Configs.
nginx_conf() { # name port server-block-body [extra http lines]
    local dir="$TMP/$1"
    mkdir -p "$dir/logs" "$dir/tmp"
    cat >"$dir/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $dir/nginx.pid;
error_log $dir/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $dir/tmp/body;
    proxy_temp_path $dir/tmp/proxy;
    fastcgi_temp_path $dir/tmp/fastcgi;
    uwsgi_temp_path $dir/tmp/uwsgi;
    scgi_temp_path $dir/tmp/scgi;
    keepalive_requests 1000000;
${4:-}
    server {
        listen 127.0.0.1:$2;
$3
    }
}
EOF
}

nginx_conf upstream "$UP_PORT" "        location / {
            default_type text/plain;
            return 200 \"$BODY\\n\";
        }"

nginx_conf nginx "$NGX_PORT" "        location / {
            proxy_pass http://bench_upstream;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
        }" "    upstream bench_upstream {
        server 127.0.0.1:$UP_PORT;
        keepalive 64;
    }"

mkdir -p "$TMP/portcullis/data"
cat >"$TMP/portcullis/config.toml" <<EOF
version = 1
[listeners.edge]
address = "127.0.0.1:$EDGE_PORT"
[listeners.console]
address = "127.0.0.1:$CONSOLE_PORT"
[log]
level = "warn"
[backends.up]
address = "127.0.0.1:$UP_PORT"
[[plugin]]
path = "${CARGO_TARGET_DIR:-$ROOT/target}/release/libportcullis_htpasswd.so"
[edges.bench]
hostports = ["127.0.0.1:$EDGE_PORT"]
[[edges.bench.routes]]
match_type = "path_prefix"
match = "/"
backend = "up"
# The same upstream behind a sign-in: wrk sends a valid session cookie.
[[edges.bench.routes]]
match_type = "path_prefix"
match = "/secure/"
backend = "up"
[edges.bench.routes.auth]
plugin = "htpasswd"
inactivity_timeout = 86400
maximum_duration = 86400
# bcrypt of "alice-password" (cost 10)
users = [{ username = "bench", password_hash = "\$2b\$10\$mvR5HkbkCN6i900Mt0JWmO9iYnl4oovjkUZyIAPav4JBpZ0ykXvUK" }]
EOF

# The response check, the same for every target: counts responses that are not exactly
# 200 with the upstream's body; done() prints one parseable line.
cat >"$TMP/check.lua" <<EOF
local expected = "$BODY\n"
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    bad = 0
    seen = 0
end

function response(status, headers, body)
    seen = seen + 1
    if status ~= 200 or body ~= expected then
        bad = bad + 1
    end
end

function done(summary, latency, requests)
    local b, s = 0, 0
    for _, t in ipairs(threads) do
        b = b + t:get("bad")
        s = s + t:get("seen")
    end
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d p99_us=%d checked=%d bad=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
        summary.requests, summary.duration, latency:percentile(99), s, b,
        e.connect, e.read, e.write, e.status, e.timeout))
end
EOF

# ---------------------------------------------------------------------------------------------
# Start the servers, each pinned to the server core.
wait_http() { # url what log
    for _ in $(seq 200); do
        curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    tail -n 20 "$3" >&2 || true
    die "$2 did not answer $1 within 20s"
}

start_nginx() { # name -> sets LAST_PID
    local dir="$TMP/$1"
    taskset -c "$SERVER_CPU" "$NGINX" -p "$dir" -c "$dir/nginx.conf" -e "$dir/logs/error.log" \
        >"$dir/logs/stdout.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}

start_nginx upstream
UP_PID=$LAST_PID
start_nginx nginx
NGX_PID=$LAST_PID
taskset -c "$SERVER_CPU" "$PORTCULLIS" serve --config "$TMP/portcullis/config.toml" \
    --data-dir "$TMP/portcullis/data" >"$TMP/portcullis/stdout.log" 2>&1 &
PC_PID=$!
PIDS+=("$PC_PID")

wait_http "http://127.0.0.1:$UP_PORT/" "the nginx upstream" "$TMP/upstream/logs/error.log"
wait_http "http://127.0.0.1:$NGX_PORT/" "the nginx proxy" "$TMP/nginx/logs/error.log"
wait_http "http://127.0.0.1:$CONSOLE_PORT/healthz" "portcullis" "$TMP/portcullis/stdout.log"

# Sign in on the protected route the way a browser does; keep the session cookie for wrk.
SECURE_URL="http://127.0.0.1:$EDGE_PORT/secure/"
location=$(curl -sS -o /dev/null -D "$TMP/login.h1" -w '%{redirect_url}' "$SECURE_URL") || die "sign-in: no redirect"
nonce=$(sed -n 's/^[Ss]et-[Cc]ookie: \(portcullis_htpasswd_nonce=[^;]*\).*/\1/p' "$TMP/login.h1" | tr -d '\r')
[ -n "$nonce" ] && [ "${location#*state=}" != "$location" ] || die "sign-in: unexpected first answer: $(cat "$TMP/login.h1")"
curl -sS -o /dev/null -D "$TMP/login.h2" -H "Cookie: $nonce" --data "state=${location##*state=}&username=bench&password=alice-password" \
    "${location%%\?*}" || die "sign-in: the form post failed"
SESSION=$(sed -n 's/^[Ss]et-[Cc]ookie: \(portcullis\.session=[^;]*\).*/\1/p' "$TMP/login.h2" | tr -d '\r')
[ -n "$SESSION" ] || die "sign-in: no session cookie: $(cat "$TMP/login.h2")"

# Worker pids of an nginx master (its children).
children() { cat "/proc/$1/task/"*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true; }
UP_PROCS="$UP_PID $(children "$UP_PID" | tr '\n' ' ')"
NGX_PROCS="$NGX_PID $(children "$NGX_PID" | tr '\n' ' ')"
PC_PROCS="$PC_PID"
[ "$(wc -w <<<"$UP_PROCS")" -ge 2 ] || die "nginx upstream has no worker"
[ "$(wc -w <<<"$NGX_PROCS")" -ge 2 ] || die "nginx proxy has no worker"
# shellcheck disable=SC2206
WORKERS=(${UP_PROCS#* } ${NGX_PROCS#* })

declare -A URL PROCS HDR
URL[upstream]="http://127.0.0.1:$UP_PORT/"
URL[nginx]="http://127.0.0.1:$NGX_PORT/"
URL[portcullis]="http://127.0.0.1:$EDGE_PORT/"
PROCS[upstream]=$UP_PROCS
PROCS[nginx]=$NGX_PROCS
PROCS[portcullis]=$PC_PROCS
URL[session]=$SECURE_URL
PROCS[session]=$PC_PROCS
HDR[session]="Cookie: $SESSION"
TARGETS=(upstream nginx portcullis session)

# Each target must answer the exact body before any load.
for t in "${TARGETS[@]}"; do
    got=$(curl -sS --max-time 5 -w '%{http_code}' -H "${HDR[$t]:-X-Bench: 1}" "${URL[$t]}") || die "$t: request failed"
    [ "$got" = "$BODY"$'\n'"200" ] || die "$t: unexpected answer to GET / : $(printf %q "$got")"
done

# ---------------------------------------------------------------------------------------------
# Measure.
CLK_TCK=$(getconf CLK_TCK)
cpu_ticks() { # pids... -> utime+stime (fields 14, 15) summed
    local sum=0 pid f
    for pid in "$@"; do
        # Drop "pid (comm) " first: comm may hold spaces. Then utime, stime are fields 12, 13.
        read -r -a f <<<"$(sed 's/^.*) //' "/proc/$pid/stat")"
        sum=$((sum + f[11] + f[12]))
    done
    echo "$sum"
}

run_wrk() { # url seconds outfile [header]
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$2s" --latency -s "$TMP/check.lua" -H "${4:-X-Bench: 1}" "$1" >"$3" 2>&1
}

field() { sed -n "s/^BENCH .*\b$2=\([0-9]*\).*/\1/p" "$1"; }

# Noise control. Other work on the machine (a build, say) skews the figures, so: before each run
# wait (up to BENCH_QUIET_WAIT s) until the machine is quiet, and after each run report "other",
# the CPU used by processes that are neither these servers nor wrk nor kernel threads (the
# kernel's network work for the benchmark runs partly in ksoftirqd: "kernel"), in % of one core.
# "wrk" is the load generator's own CPU: near 100% means the client, not the server, was the limit.
QUIET_WAIT=${BENCH_QUIET_WAIT:-15}
MAX_OTHER_OK=${BENCH_MAX_OTHER:-10}
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PROCS"
# Machine-wide busy time: user+nice+system+irq+softirq (a process's stime includes the softirq
# work done in its context, so /proc/stat's softirq must count too for the sums to agree).
machine_ticks() { awk '/^cpu / { print $2 + $3 + $4 + $7 + $8 }' /proc/stat; }
wrk_ticks() { # sets WRK_TICKS: CPU of this shell's reaped children (wrk, mostly), from `times`
    times >"$TMP/times"   # must run in this shell, not in a $(...) subshell
    WRK_TICKS=$(awk -v hz="$CLK_TCK" 'NR == 2 { t = 0; for (i = 1; i <= 2; i++) { split($i, a, /[ms]/); t += a[1] * 60 + a[2] }
        printf "%d\n", t * hz }' "$TMP/times")
}
kernel_ticks() { # CPU of kernel threads (children of kthreadd, pid 2): ksoftirqd, kworkers
    { cat /proc/[0-9]*/stat 2>/dev/null || true; } | awk '{ sub(/^.*\) /, "") } $2 == 2 { t += $12 + $13 } END { print t + 0 }'
}
wait_quiet() {
    local waited=0 m0 m1 busy
    while :; do
        m0=$(machine_ticks); sleep 1; m1=$(machine_ticks)
        busy=$(((m1 - m0) * 100 / CLK_TCK))   # % of one core, over 1 s
        [ "$busy" -le "$MAX_OTHER_OK" ] && break
        if [ "$waited" -ge "$QUIET_WAIT" ]; then
            echo "   (machine still busy: ${busy}% of a core used by others; measuring anyway)"
            break
        fi
        [ "$waited" -eq 0 ] && echo "   (machine busy: ${busy}% of a core used by others; waiting up to ${QUIET_WAIT}s)"
        waited=$((waited + 1))
    done
}

# One measured run of target $1 in round $2: sets rps, p99, cpu, client, kernel, other, reqs.
measure() {
    local t=$1 round=$2 out="$TMP/wrk-$1-$2.txt"
    local before after all_before all_after wrk_before wrk_after k_before k_after m_before m_after
    local dur checked bad errs e
    wait_quiet
    run_wrk "${URL[$t]}" "$WARMUP" "$out.warmup" "${HDR[$t]:-}" || die "$t: wrk warm-up failed: $(cat "$out.warmup")"
    # shellcheck disable=SC2086
    before=$(cpu_ticks ${PROCS[$t]})
    # shellcheck disable=SC2086
    all_before=$(cpu_ticks $ALL_PROCS)
    wrk_ticks; wrk_before=$WRK_TICKS
    k_before=$(kernel_ticks)
    m_before=$(machine_ticks)
    run_wrk "${URL[$t]}" "$DURATION" "$out" "${HDR[$t]:-}" || die "$t: wrk failed: $(cat "$out")"
    m_after=$(machine_ticks)
    k_after=$(kernel_ticks)
    wrk_ticks; wrk_after=$WRK_TICKS
    # shellcheck disable=SC2086
    all_after=$(cpu_ticks $ALL_PROCS)
    # shellcheck disable=SC2086
    after=$(cpu_ticks ${PROCS[$t]})
    kernel=$(( (k_after - k_before) * 100 / (CLK_TCK * DURATION) ))
    client=$(( (wrk_after - wrk_before) * 100 / (CLK_TCK * DURATION) ))
    other=$(( ((m_after - m_before) - (all_after - all_before) - (wrk_after - wrk_before)
        - (k_after - k_before)) * 100 / (CLK_TCK * DURATION) ))
    if [ "$other" -lt 0 ]; then other=0; fi

    # Every response must have been checked and right.
    grep -q '^BENCH ' "$out" || die "$t: no result line from wrk: $(cat "$out")"
    reqs=$(field "$out" requests)
    dur=$(field "$out" duration_us)
    p99=$(field "$out" p99_us)
    checked=$(field "$out" checked)
    bad=$(field "$out" bad)
    errs=0
    for e in connect read write status timeout; do errs=$((errs + $(field "$out" "$e"))); done
    if [ "$bad" -ne 0 ] || [ "$errs" -ne 0 ] || [ "$reqs" -eq 0 ] || [ "$checked" -lt "$reqs" ]; then
        echo "proxy.sh: $t round $round: $bad wrong responses, $errs socket/status errors," \
            "$checked checked of $reqs requests:" >&2
        cat "$out" >&2
        exit 1
    fi
    read -r rps cpu < <(awk -v r="$reqs" -v d="$dur" -v dt="$((after - before))" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.2f\n", r / (d / 1e6), dt / hz * 1e6 / r }')
}

# A run during which other processes took more than BENCH_MAX_OTHER % of a core is measured
# again, at most BENCH_RETRIES times over the whole benchmark.
RETRIES_LEFT=${BENCH_RETRIES:-6}
declare -A RES   # RES[target,round]="rps p99_us cpu_us"
MAX_OTHER=0
NOISY=0
RETRIED=0
for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        while :; do
            measure "$t" "$round"
            printf '   round %d  %-10s %9s req/s  p99 %6s us  %6s CPU us/req  wrk %3s%%  kernel %3s%%  other %3s%%  (%d requests, all checked)\n' \
                "$round" "$t" "$rps" "$p99" "$cpu" "$client" "$kernel" "$other" "$reqs"
            if [ "$other" -gt "$MAX_OTHER_OK" ] && [ "$RETRIES_LEFT" -gt 0 ]; then
                RETRIES_LEFT=$((RETRIES_LEFT - 1))
                RETRIED=$((RETRIED + 1))
                echo "   (other processes took ${other}% of a core: run discarded, measuring again)"
                continue
            fi
            break
        done
        RES[$t,$round]="$rps $p99 $cpu"
        if [ "$other" -gt "$MAX_OTHER" ]; then MAX_OTHER=$other; fi
        if [ "$other" -gt "$MAX_OTHER_OK" ]; then NOISY=$((NOISY + 1)); fi
    done
done

# ---------------------------------------------------------------------------------------------
# Report.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A MED
for t in "${TARGETS[@]}"; do
    for i in 0 1 2; do
        vals=()
        for round in $(seq "$ROUNDS"); do
            read -r -a r <<<"${RES[$t,$round]}"
            vals+=("${r[$i]}")
        done
        MED[$t,$i]=$(median "${vals[@]}")
    done
done

echo
echo "== machine"
echo "cpus:    $(nproc)"
echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "kernel:  $(uname -srm)"
echo "nginx:   $("$NGINX" -v 2>&1)"
echo "wrk:     $(wrk -v 2>&1 | head -1 || true)"
echo "rustc:   $(rustc --version)"
echo "setup:   servers on core $SERVER_CPU, wrk on core $CLIENT_CPU; wrk -t1 -c$CONNECTIONS" \
    "-d${DURATION}s after a ${WARMUP}s warm-up; $ROUNDS interleaved rounds; medians"
echo
echo "== results (median of $ROUNDS runs; CPU = server process utime+stime per request)"
printf '| %-30s | %9s | %8s | %11s |\n' target "req/s" "p99 (us)" "CPU us/req"
printf '|%s|%s|%s|%s|\n' "--------------------------------" "----------:" "---------:" "------------:"
label() {
    case $1 in
        upstream) echo "nginx upstream (direct)" ;;
        nginx) echo "nginx reverse proxy" ;;
        portcullis) echo "Portcullis" ;;
        session) echo "Portcullis, signed-in route" ;;
    esac
}
for t in "${TARGETS[@]}"; do
    printf '| %-30s | %9s | %8s | %11s |\n' "$(label "$t")" "${MED[$t,0]}" "${MED[$t,1]}" "${MED[$t,2]}"
done
echo
echo "Other processes used at most ${MAX_OTHER}% of a core during a kept run;" \
    "$RETRIED noisy run(s) were discarded and measured again."
if [ "$NOISY" -gt 0 ]; then
    echo "WARNING: $NOISY kept run(s) had other processes above ${MAX_OTHER_OK}% of a core: the figures are noisy."
fi
echo
awk -v sr="${MED[session,0]}" -v pr="${MED[portcullis,0]}" -v nr="${MED[nginx,0]}" -v pc="${MED[portcullis,2]}" -v nc="${MED[nginx,2]}" \
    'BEGIN {
        printf "Portcullis / nginx throughput: %.2fx  (target >= 0.90x: %s)\n", pr / nr, (pr / nr >= 0.9 ? "met" : "NOT met")
        printf "Portcullis / nginx CPU per request: %.2fx\n", pc / nc
        printf "Portcullis signed-in route / nginx throughput: %.2fx  (target >= 0.85x: %s)\n", sr / nr, (sr / nr >= 0.85 ? "met" : "NOT met")
        printf "Portcullis signed-in route / unprotected route throughput: %.2fx  (target >= 0.90x: %s)\n", sr / pr, (sr / pr >= 0.9 ? "met" : "NOT met")
    }'
