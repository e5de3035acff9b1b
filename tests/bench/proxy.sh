#!/usr/bin/env bash
# Proxy benchmark: Portcullis beside nginx as a plain reverse proxy, both in front of the
# same nginx upstream answering a small fixed body. See BENCHMARKS.md.
#
# Portcullis runs at log level warn (BENCH_LOG_LEVEL), as nginx runs with access_log off; a
# second Portcullis, on the same core, runs at the shipped level (info: a line per request,
# written to a file) and is measured as one more target.
#
#   tests/bench/proxy.sh            (or `make bench`)
#
# Environment (all optional):
#   CARGO_TARGET_DIR   where cargo builds (binary at $CARGO_TARGET_DIR/release/portcullis)
#   BENCH_DURATION     seconds per measured run                 (default 10)
#   BENCH_WARMUP       seconds of warm-up before each run       (default 2)
#   BENCH_CONNECTIONS  wrk connections                          (default 32)
#   BENCH_ROUNDS       interleaved rounds over the five targets (default 3)
#   BENCH_LOG_LEVEL    the first Portcullis's log level         (default warn)
#   BENCH_SERVER_CPU   core the servers are pinned to           (default 0)
#   BENCH_CLIENT_CPU   core wrk is pinned to                    (default 1)
#   BENCH_QUIET_WAIT   seconds to wait for a quiet machine before each run (default 15)
#   BENCH_MAX_OTHER    % of a core other processes may take during a kept run (default 10)
#   BENCH_RETRIES      how many noisy runs may be measured again, in total   (default 6)
#
# Every server is started by this script, bound to 127.0.0.1 only, and stopped by pid on exit.
set -euo pipefail

BENCH_NAME=proxy.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/tests/bench/lib.sh"

require_tools "make bench installs wrk and nginx-light" "$NGINX" wrk taskset curl python3 cargo getconf
require_two_cores

# ---------------------------------------------------------------------------------------------
# Build (with the htpasswd plugin of the signed-in route).
build_portcullis portcullis portcullis-htpasswd

make_tmp portcullis-bench
read -r UP_PORT NGX_PORT EDGE_PORT CONSOLE_PORT INFO_EDGE_PORT INFO_CONSOLE_PORT < <(free_ports 6)

# ---------------------------------------------------------------------------------------------
# Configs.
nginx_confs

portcullis_conf
cat >>"$TMP/portcullis/config.toml" <<EOF
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
[[plugin]]
path = "$TARGET_DIR/release/libportcullis_htpasswd.so"
EOF

# The same gateway and route at the shipped log level.
portcullis_conf portcullis-info info "$INFO_EDGE_PORT" "$INFO_CONSOLE_PORT"

write_check_lua

# ---------------------------------------------------------------------------------------------
# Start the servers, each pinned to the server core.
start_nginxes
start_portcullis "$SERVER_CPU" portcullis-info
INFO_PID=$PC_PID
start_portcullis "$SERVER_CPU"
wait_nginxes
wait_http "http://127.0.0.1:$CONSOLE_PORT/healthz" "portcullis" "$TMP/portcullis/stdout.log"
wait_http "http://127.0.0.1:$INFO_CONSOLE_PORT/healthz" "portcullis (log level info)" "$TMP/portcullis-info/stdout.log"

# Sign in on the protected route the way a browser does; keep the session cookie for wrk.
SECURE_URL="http://127.0.0.1:$EDGE_PORT/secure/"
location=$(curl -sS -o /dev/null -D "$TMP/login.h1" -w '%{redirect_url}' "$SECURE_URL") || die "sign-in: no redirect"
nonce=$(sed -n 's/^[Ss]et-[Cc]ookie: \(portcullis_htpasswd_nonce=[^;]*\).*/\1/p' "$TMP/login.h1" | tr -d '\r')
if [ -z "$nonce" ] || [ "${location#*state=}" = "$location" ]; then die "sign-in: unexpected first answer: $(cat "$TMP/login.h1")"; fi
curl -sS -o /dev/null -D "$TMP/login.h2" -H "Cookie: $nonce" --data "state=${location##*state=}&username=bench&password=alice-password" \
    "${location%%\?*}" || die "sign-in: the form post failed"
SESSION=$(sed -n 's/^[Ss]et-[Cc]ookie: \(portcullis\.session=[^;]*\).*/\1/p' "$TMP/login.h2" | tr -d '\r')
[ -n "$SESSION" ] || die "sign-in: no session cookie: $(cat "$TMP/login.h2")"

nginx_procs
PC_PROCS="$PC_PID"

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
URL[info]="http://127.0.0.1:$INFO_EDGE_PORT/"
PROCS[info]=$INFO_PID
TARGETS=(upstream nginx portcullis session info)

# Each target must answer the exact body before any load.
for t in "${TARGETS[@]}"; do
    got=$(curl -sS --max-time 5 -w '%{http_code}' -H "${HDR[$t]:-X-Bench: 1}" "${URL[$t]}") || die "$t: request failed"
    [ "$got" = "$BODY"$'\n'"200" ] || die "$t: unexpected answer to GET / : $(printf %q "$got")"
done

# ---------------------------------------------------------------------------------------------
# Measure, with lib.sh's noise control; "other" etc. are shares of wrk's -d (not the wall time).
CLK_TCK=$(getconf CLK_TCK)
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PROCS $INFO_PID"
SPAN_MS=$((DURATION * 1000))
for round in $(seq "$ROUNDS"); do
    for t in "${TARGETS[@]}"; do
        while :; do
            measure_wrk "$t" "$round" "$t round $round" "${HDR[$t]:-}"
            printf '   round %d  %-10s %9s req/s  p99 %6s us  %6s CPU us/req  wrk %3s%%  kernel %3s%%  other %3s%%  (%d requests, all checked)\n' \
                "$round" "$t" "$rate" "$p99" "$cpu" "$client" "$kernel" "$other" "$reqs"
            retry_noisy || break
        done
        keep_run "$t,$round" "$rate $p99 $cpu"
    done
done

# ---------------------------------------------------------------------------------------------
# Report.
medians 3 "${TARGETS[@]}"

report_machine
report_tools
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
        info) echo "Portcullis, log level info" ;;
    esac
}
for t in "${TARGETS[@]}"; do
    printf '| %-30s | %9s | %8s | %11s |\n' "$(label "$t")" "${MED[$t,0]}" "${MED[$t,1]}" "${MED[$t,2]}"
done
echo
# The info-level log: one "edge request" line per request answered (its metrics count them), unless
# the logger's queue overflowed (tracing-appender's non-blocking writer drops lines then). Counted
# once the line count stops growing (the writer thread may lag), at most 10 s.
info_lines=-1
for _ in $(seq 20); do
    n=$(grep -c 'edge request' "$TMP/portcullis-info/stdout.log" || true)
    [ "$n" = "$info_lines" ] && break
    info_lines=$n
    sleep 0.5
done
info_answered=$(curl -fsS "http://127.0.0.1:$INFO_CONSOLE_PORT/metrics" |
    awk '/^portcullis_http_requests_total\{/ { n += $NF } END { print n + 0 }') || die "the info-level Portcullis's /metrics failed"
echo "Portcullis at log level info wrote $info_lines 'edge request' lines for the $info_answered requests its metrics counted" \
    "($(du -h "$TMP/portcullis-info/stdout.log" | cut -f1) of log); the one at $LOG_LEVEL wrote $(wc -l <"$TMP/portcullis/stdout.log") lines."
echo "Other processes used at most ${MAX_OTHER}% of a core during a kept run;" \
    "$RETRIED noisy run(s) were discarded and measured again."
report_noise_warning
echo
awk -v sr="${MED[session,0]}" -v pr="${MED[portcullis,0]}" -v nr="${MED[nginx,0]}" -v pc="${MED[portcullis,2]}" -v nc="${MED[nginx,2]}" \
    -v ir="${MED[info,0]}" -v ic="${MED[info,2]}" -v level="$LOG_LEVEL" \
    'BEGIN {
        printf "Portcullis / nginx throughput: %.2fx  (target >= 0.90x: %s)\n", pr / nr, (pr / nr >= 0.9 ? "met" : "NOT met")
        printf "Portcullis / nginx CPU per request: %.2fx\n", pc / nc
        printf "Portcullis signed-in route / nginx throughput: %.2fx  (target >= 0.85x: %s)\n", sr / nr, (sr / nr >= 0.85 ? "met" : "NOT met")
        printf "Portcullis signed-in route / unprotected route throughput: %.2fx  (target >= 0.90x: %s)\n", sr / pr, (sr / pr >= 0.9 ? "met" : "NOT met")
        printf "Portcullis at log level info / nginx throughput: %.2fx; / Portcullis at %s: %.2fx (CPU per request %.2fx)\n", ir / nr, level, ir / pr, ic / pc
    }'
