# shellcheck shell=bash
# What the benchmark scripts (proxy.sh, saml.sh, oidc.sh) share: sourced by each, right after it
# sets BENCH_NAME (its name, in messages) and ROOT (the repository). See BENCHMARKS.md.
#
# The settings every script takes (each documents them in its header), the cleanup of what a
# script starts, the nginx upstream and reverse proxy, the Apache httpd of saml.sh and oidc.sh,
# the wrk response checks, CPU accounting and noise control, and the report's common lines.
#
# The functions read the globals the scripts set (the ports, pids, APACHE_DIR, PROCS, URL,
# ALL_PROCS, CLK_TCK, ...) and set the ones their comments name; the scripts read the settings.
# shellcheck disable=SC2034,SC2153,SC2154

# ---------------------------------------------------------------------------------------------
# Settings.
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
ROUNDS=${BENCH_ROUNDS:-3}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
QUIET_WAIT=${BENCH_QUIET_WAIT:-15}
MAX_OTHER_OK=${BENCH_MAX_OTHER:-10}
RETRIES_LEFT=${BENCH_RETRIES:-6}
# The login runs of saml.sh (ACS posts) and oidc.sh (callbacks).
LOGIN_SECONDS=${BENCH_LOGIN_SECONDS:-5}
LOGIN_WARMUP=${BENCH_LOGIN_WARMUP:-100}
MIN_LOGINS=${BENCH_MIN_LOGINS:-100}
MAX_LOGINS=${BENCH_MAX_LOGINS:-6000}
NGINX=${NGINX:-/usr/sbin/nginx}
# Portcullis's log level in the benchmarks: warn (only problems), as nginx runs with
# access_log off; proxy.sh also measures one Portcullis at the shipped level, info.
LOG_LEVEL=${BENCH_LOG_LEVEL:-warn}
BODY='hello from upstream'   # the upstream answers this plus "\n"
WRK_CPUS=$CLIENT_CPU         # saml.sh: every core for the whole-machine login runs

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo

die() { echo "$BENCH_NAME: $*" >&2; exit 1; }

require_tools() { # hint tool...: dies naming the first tool missing, and the hint on getting it
    local hint=$1 tool
    shift
    for tool in "$@"; do
        command -v "$tool" >/dev/null || die "missing $tool ($hint)"
    done
}
require_two_cores() {
    [ "$(nproc)" -ge 2 ] || die "needs at least 2 CPU cores (servers on one, wrk on another)"
}

# ---------------------------------------------------------------------------------------------
# Cleanup: stop only the processes started here, by pid; remove the temp dir.
PIDS=()      # processes started here (nginx masters, portcullis, the Apache parent, the forges)
WORKERS=()   # nginx workers and Apache children, only SIGKILLed if they outlive their parent
TMP=""
cleanup() {
    local rc=$?
    local pid comm
    for pid in "${PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "$BENCH_NAME: pid $pid ignored SIGTERM for 10s; sending SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
        wait "$pid" 2>/dev/null || true
    done
    for pid in "${WORKERS[@]}"; do
        comm=$(cat "/proc/$pid/comm" 2>/dev/null || true)
        if [ "$comm" = nginx ] || [ "$comm" = apache2 ]; then kill -KILL "$pid" 2>/dev/null || true; fi
    done
    [ -n "$TMP" ] && rm -rf "$TMP"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---------------------------------------------------------------------------------------------
# Build, temp dir, ports.
build_portcullis() { # package... (portcullis first) -> sets TARGET_DIR, PORTCULLIS
    local packages=() p
    for p in "$@"; do packages+=(-p "$p"); done
    echo "== building portcullis (release)"
    (cd "$ROOT" && cargo build --release --quiet "${packages[@]}")
    TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
    case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
    PORTCULLIS="$TARGET_DIR/release/portcullis"
    [ -x "$PORTCULLIS" ] || die "no binary at $PORTCULLIS"
}

make_tmp() { # name -> sets TMP
    TMP=$(mktemp -d "/tmp/$1.XXXXXX")
    chmod 755 "$TMP"   # nginx workers and Apache children run as another user when started by root
}

free_ports() { # count: that many distinct free ports on 127.0.0.1 (held open together so they differ)
    python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# ---------------------------------------------------------------------------------------------
# Apache httpd and an auth module (saml.sh: mod_auth_mellon, oidc.sh: mod_auth_openidc): Debian's
# packages, downloaded with apt-get and unpacked with dpkg -x, not installed (installing apache2
# would start a system service). Only the libraries they need that the machine lacks are fetched
# beside them. Kept between runs in the directory given (under the cargo target dir).
APACHE_FETCH_DIR=""
apache_libpath() { find "$APACHE_FETCH_DIR/root" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -; }
apache_ready() {
    local files=("$APACHE") m
    for m in "${APACHE_MODULES[@]}"; do files+=("$MODULES/mod_$m.so"); done
    for m in "${files[@]}"; do [ -f "$m" ] || return 1; done
    ! LD_LIBRARY_PATH=$(apache_libpath) ldd "${files[@]}" 2>&1 | grep -q 'not found'
}
# The modules are the ones httpd.conf loads, the auth module (PACKAGE's) last.
fetch_apache() { # dir package module... -> sets APACHE, MODULES, APACHE_MODULES, APACHE_LIBPATH
    local package=$2 deb debs
    APACHE_FETCH_DIR=$1
    shift 2
    APACHE_MODULES=("$@")
    APACHE="$APACHE_FETCH_DIR/root/usr/sbin/apache2"
    MODULES="$APACHE_FETCH_DIR/root/usr/lib/apache2/modules"
    if ! apache_ready; then
        echo "== fetching Debian's apache2-bin and $package into $APACHE_FETCH_DIR (unpacked, not installed)"
        rm -rf "$APACHE_FETCH_DIR"
        mkdir -p "$APACHE_FETCH_DIR/debs" "$APACHE_FETCH_DIR/root"
        if ! apt-cache show apache2-bin "$package" >/dev/null 2>&1; then
            $SUDO apt-get update -qq
        fi
        # The two packages, plus the packages of their Depends (recursively, first alternative of
        # each choice) that are not installed here.
        read -r -a debs < <(python3 "$ROOT/tests/bench/debs_to_fetch.py" apache2-bin "$package")
        echo "   packages: ${debs[*]}"
        (cd "$APACHE_FETCH_DIR/debs" && apt-get download -q "${debs[@]}") >"$APACHE_FETCH_DIR/download.log" 2>&1 ||
            die "apt-get download failed: $(tail -n 5 "$APACHE_FETCH_DIR/download.log")"
        for deb in "$APACHE_FETCH_DIR"/debs/*.deb; do dpkg -x "$deb" "$APACHE_FETCH_DIR/root"; done
        apache_ready || die "Apache or a module it loads misses a library: $(LD_LIBRARY_PATH=$(apache_libpath) ldd "$APACHE" \
            "$MODULES/mod_${APACHE_MODULES[-1]}.so" | grep 'not found')"
    fi
    APACHE_LIBPATH=$(apache_libpath)
}
deb_version() { # package: the version unpacked here, or the one installed
    local debs=("$APACHE_FETCH_DIR"/debs/"$1"_*.deb)
    dpkg-deb -f "${debs[0]}" Version 2>/dev/null || dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"
}
apache_version() { # Apache's version line, and its package's version
    echo "$(LD_LIBRARY_PATH="$APACHE_LIBPATH" "$APACHE" -v | head -1 | sed 's/^Server version: //')" \
        "(apache2-bin $(deb_version apache2-bin))"
}

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

# The upstream every target is in front of (it answers BODY), and nginx as a plain reverse proxy
# to it. The upstream answers only a request line in origin-form (`GET /path HTTP/1.1`, RFC 9112
# section 3.2.1: what a proxy sends an origin server); any other (absolute-form, `GET
# http://host/path HTTP/1.1`) gets a 400 naming the line, which every response check counts as
# wrong: the run fails (wait_nginxes proves the check refuses absolute-form before any load).
ORIGIN_FORM_REFUSED="upstream: the request line is not in origin-form:"
nginx_confs() {
    nginx_conf upstream "$UP_PORT" "        location / {
            default_type text/plain;
            if (\$request !~ \"^[A-Z]+ /[^ ]* HTTP/1\\.[01]\$\") {
                return 400 \"$ORIGIN_FORM_REFUSED \$request\\n\";
            }
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
}

# Portcullis's config.toml (in $TMP/NAME, default portcullis, at log level LEVEL, default
# LOG_LEVEL) up to its edge's route "/" to the upstream; the script appends the rest (the
# route's auth, more routes).
portcullis_conf() { # [name level edge-port console-port]
    set -- "${1:-portcullis}" "${2:-$LOG_LEVEL}" "${3:-$EDGE_PORT}" "${4:-$CONSOLE_PORT}"
    mkdir -p "$TMP/$1/data"
    cat >"$TMP/$1/config.toml" <<EOF
version = 1
[listeners.edge]
address = "127.0.0.1:$3"
[listeners.console]
address = "127.0.0.1:$4"
[log]
level = "$2"
[backends.up]
address = "127.0.0.1:$UP_PORT"
[edges.bench]
hostports = ["127.0.0.1:$3"]
[[edges.bench.routes]]
match_type = "path_prefix"
match = "/"
backend = "up"
EOF
}

# Apache: one event-MPM child (64 threads: every connection has one), no access log (as nginx's
# access_log off), keep-alive without limit; the script adds its auth module's settings and
# mod_proxy_http to the upstream (its pool keeps the connections). Prints the modules' LoadModule
# lines and these settings.
apache_conf_head() {
    local m
    for m in "${APACHE_MODULES[@]}"; do echo "LoadModule ${m}_module $MODULES/mod_$m.so"; done
    cat <<EOF
ServerRoot "$APACHE_DIR"
ServerName 127.0.0.1
Listen 127.0.0.1:$APACHE_PORT
PidFile "$APACHE_DIR/run/httpd.pid"
DefaultRuntimeDir "$APACHE_DIR/run"
ErrorLog "$APACHE_DIR/logs/error.log"
LogLevel warn
User nobody
Group nogroup
StartServers 1
ServerLimit 1
ThreadLimit 64
ThreadsPerChild 64
MaxRequestWorkers 64
MinSpareThreads 1
MaxSpareThreads 64
MaxConnectionsPerChild 0
KeepAlive On
MaxKeepAliveRequests 0
KeepAliveTimeout 60
TraceEnable Off
EOF
}

# The response check of the throughput runs, the same for every target: counts responses that
# are not exactly 200 with the upstream's body; done() prints one parseable line.
write_check_lua() {
    cat >"$TMP/check.lua" <<EOF
local expected = "$BODY\n"
local threads = {}

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
    bad = 0
    seen = 0
    first_bad = ""
end

function response(status, headers, body)
    seen = seen + 1
    if status ~= 200 or body ~= expected then
        bad = bad + 1
        if first_bad == "" then
            first_bad = string.format("%d body=%s", status, string.gsub(string.sub(body, 1, 300), "%s+", " "))
        end
    end
end

function done(summary, latency, requests)
    local b, s, first = 0, 0, ""
    for _, t in ipairs(threads) do
        b = b + t:get("bad")
        s = s + t:get("seen")
        if first == "" then first = t:get("first_bad") end
    end
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d p99_us=%d checked=%d bad=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
        summary.requests, summary.duration, latency:percentile(99), s, b,
        e.connect, e.read, e.write, e.status, e.timeout))
    if first ~= "" then io.write("FIRST_BAD " .. first .. "\n") end
end
EOF
}

# The login load (saml.sh's ACS posts, oidc.sh's callbacks): sends each request of a file once,
# in order, over all connections, then stops wrk (SIGINT to itself: wrk reports at once). The
# script's Lua, read from stdin, is the body of init(args): it sets want_status, cookie (the
# session cookie's name and "=") and location from wrk's arguments, and fills reqs with the
# requests. A response is right when it is want_status to location and sets the cookie. The login
# rate is timed here (LuaJIT's FFI, CLOCK_MONOTONIC): from the first request sent to the last
# response received, so wrk's start-up (reading the file) and stop are not in it.
write_login_lua() { # file < init body
    {
        cat <<'EOF'
local ffi = require("ffi")
ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } bench_timespec_t;
int clock_gettime(int clock_id, bench_timespec_t *tp);
int kill(int pid, int sig);
int getpid(void);
]]
local CLOCK_MONOTONIC, SIGINT = 1, 2
local threads = {}

local function now_us()
    local ts = ffi.new("bench_timespec_t")
    ffi.C.clock_gettime(CLOCK_MONOTONIC, ts)
    return tonumber(ts.tv_sec) * 1000000 + math.floor(tonumber(ts.tv_nsec) / 1000)
end

function setup(thread)
    table.insert(threads, thread)
end

function init(args)
EOF
        cat
        cat <<'EOF'
    total, reserved, sent, seen, bad = #reqs, 0, 0, 0, 0
    t0, t1, first_bad = 0, 0, ""
end

-- A connection takes the next request only if one is left; otherwise it waits (an hour: longer
-- than any run) until wrk stops. delay() reserves, request() takes: both run once per request.
function delay()
    if reserved < total then
        reserved = reserved + 1
        return 0
    end
    return 3600000
end

function request()
    -- wrk calls request() once before the run to check the request: nothing is reserved yet.
    if reserved == 0 then return reqs[1] end
    sent = sent + 1
    if sent == 1 then t0 = now_us() end
    -- Past the end only after a reconnection that skipped delay(): a replay, counted as wrong.
    return reqs[math.min(sent, total)]
end

function response(status, headers, body)
    seen = seen + 1
    local set_cookie, loc = "", nil
    for name, value in pairs(headers) do
        local n = string.lower(name)
        if n == "set-cookie" then set_cookie = value end
        if n == "location" then loc = value end
    end
    if status ~= want_status or loc ~= location or string.sub(set_cookie, 1, #cookie) ~= cookie then
        bad = bad + 1
        if first_bad == "" then
            first_bad = string.format("%d location=%s set-cookie=%s body=%s", status, tostring(loc),
                set_cookie, string.gsub(string.sub(body, 1, 300), "%s+", " "))
        end
    end
    if seen == total then
        t1 = now_us()
        ffi.C.kill(ffi.C.getpid(), SIGINT)
    end
end

function done(summary, latency, requests)
    local b, s, n, first, start, stop = 0, 0, 0, "", 0, 0
    for _, t in ipairs(threads) do
        b = b + t:get("bad")
        s = s + t:get("seen")
        n = n + t:get("total")
        start, stop = t:get("t0"), t:get("t1")
        if first == "" then first = t:get("first_bad") end
    end
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d elapsed_us=%d p99_us=%d checked=%d total=%d bad=%d connect=%d read=%d write=%d status=%d timeout=%d\n",
        summary.requests, stop - start, latency:percentile(99), s, n, b,
        e.connect, e.read, e.write, e.status, e.timeout))
    if first ~= "" then io.write("FIRST_BAD " .. first .. "\n") end
end
EOF
    } >"$1"
}

# ---------------------------------------------------------------------------------------------
# Start the servers, each pinned to the cores given (the server core but for saml.sh's last runs).
wait_http() { # url what log: until the url answers 200
    local code
    for _ in $(seq 200); do
        code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null || true)
        if [ "$code" = 200 ]; then return 0; fi
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
start_nginxes() { # -> sets UP_PID, NGX_PID
    start_nginx upstream
    UP_PID=$LAST_PID
    start_nginx nginx
    NGX_PID=$LAST_PID
}
wait_nginxes() {
    local got
    wait_http "http://127.0.0.1:$UP_PORT/" "the nginx upstream" "$TMP/upstream/logs/error.log"
    wait_http "http://127.0.0.1:$NGX_PORT/" "the nginx proxy" "$TMP/nginx/logs/error.log"
    # The upstream's request-line check works: curl sends absolute-form to a proxy.
    got=$(curl -sS --max-time 5 -w '%{http_code}' --proxy "http://127.0.0.1:$UP_PORT" "http://127.0.0.1:$UP_PORT/x?y") ||
        die "the upstream's request-line check: request failed"
    [ "$got" = "$ORIGIN_FORM_REFUSED GET http://127.0.0.1:$UP_PORT/x?y HTTP/1.1"$'\n'"400" ] ||
        die "the upstream took a request line in absolute-form: $(printf %q "$got")"
}
start_portcullis() { # cpus [name: of portcullis_conf] -> sets PC_PID
    local dir="$TMP/${2:-portcullis}"
    taskset -c "$1" "$PORTCULLIS" serve --config "$dir/config.toml" \
        --data-dir "$dir/data" >>"$dir/stdout.log" 2>&1 &
    PC_PID=$!
    PIDS+=("$PC_PID")
}
start_apache() { # cpus -> sets AP_PID
    taskset -c "$1" env LD_LIBRARY_PATH="$APACHE_LIBPATH" "$APACHE" -d "$APACHE_DIR" \
        -f "$APACHE_DIR/httpd.conf" -DFOREGROUND >>"$APACHE_DIR/logs/stdout.log" 2>&1 &
    AP_PID=$!
    PIDS+=("$AP_PID")
}

# The API key (made before the server starts, in its data dir) reads the module's endpoints.
make_api_key() { # description -> sets API_KEY
    API_KEY=$("$PORTCULLIS" api-key create --description "$1" --config "$TMP/portcullis/config.toml" \
        --data-dir "$TMP/portcullis/data" 2>"$TMP/portcullis/api-key.log") || die "api-key create failed: $(cat "$TMP/portcullis/api-key.log")"
}
get_edges() { # -> $TMP/edges.json
    curl -fsS -H "Authorization: Bearer $API_KEY" -H "Ngrok-Version: 2" \
        "http://127.0.0.1:$CONSOLE_PORT/api/edges/https" >"$TMP/edges.json" || die "GET /api/edges/https failed"
}

# Worker pids of an nginx master or the Apache parent (its children).
children() { cat "/proc/$1/task/"*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true; }
nginx_procs() { # -> sets UP_PROCS, NGX_PROCS (master and worker); the workers join WORKERS
    UP_PROCS="$UP_PID $(children "$UP_PID" | tr '\n' ' ')"
    NGX_PROCS="$NGX_PID $(children "$NGX_PID" | tr '\n' ' ')"
    [ "$(wc -w <<<"$UP_PROCS")" -ge 2 ] || die "nginx upstream has no worker"
    [ "$(wc -w <<<"$NGX_PROCS")" -ge 2 ] || die "nginx proxy has no worker"
    # shellcheck disable=SC2206
    WORKERS+=(${UP_PROCS#* } ${NGX_PROCS#* })
}
apache_procs() { # -> sets AP_PROCS (parent and child); the child joins WORKERS
    AP_PROCS="$AP_PID $(children "$AP_PID" | tr '\n' ' ')"
    [ "$(wc -w <<<"$AP_PROCS")" -ge 2 ] || die "Apache has no child"
    # shellcheck disable=SC2206
    WORKERS+=(${AP_PROCS#* })
}

# The targets of saml.sh and oidc.sh, once their servers answer: the two login targets, Portcullis
# and the Apache module (named $1), then nginx as a plain reverse proxy for the throughput runs.
# Sets PROCS, URL (from BASE), LOGIN_TARGETS, PROXY_TARGETS and the *_PROCS of the servers.
auth_targets() { # apache-target
    nginx_procs
    apache_procs
    PC_PROCS="$PC_PID"
    PROCS[portcullis]=$PC_PROCS
    PROCS[$1]=$AP_PROCS
    PROCS[nginx]=$NGX_PROCS
    URL[nginx]="http://127.0.0.1:$NGX_PORT/"
    URL[portcullis]="${BASE[portcullis]}/"
    URL[$1]="${BASE[$1]}/"
    LOGIN_TARGETS=(portcullis "$1")
    PROXY_TARGETS=(nginx portcullis "$1")
}

# ---------------------------------------------------------------------------------------------
# Measure. CLK_TCK is set by the script (after its check that getconf is there).
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
    taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNECTIONS" -d"$2s" --latency -s "$TMP/check.lua" -H "${4:-X-Bench: 1}" "$1" >"$3" 2>&1
}

field() { sed -n "s/^BENCH .*\b$2=\([0-9]*\).*/\1/p" "$1"; }

# Noise control. Other work on the machine (a build, say) skews the figures, so: before each run
# wait (up to BENCH_QUIET_WAIT s) until the machine is quiet, and after each run report "other",
# the CPU used by processes that are neither the benchmark's own (ALL_PROCS: these servers, and
# oidc.sh's providers) nor wrk nor kernel threads (the kernel's network work for the benchmark
# runs partly in ksoftirqd: "kernel"), in % of one core. "wrk" is the load generator's own CPU:
# near 100% means the client, not the server, was the limit.
#
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
now_ms() { date +%s%3N; }

# Brackets one measured run (the command in "$@", whose status it returns): sets cpu_ticks_used
# (the target's servers), provider_ticks_used (its provider, oidc.sh's forge; 0 without one),
# client, kernel and other (% of one core over the run's wall time, or over SPAN_MS when the
# script sets it: proxy.sh's are over wrk's -d).
SPAN_MS=""
bracketed() { # procs provider-procs -- command...
    local procs=$1 prov=$2 before after p_before p_after all_before all_after wrk_before wrk_after
    local k_before k_after m_before m_after t0 t1 wall rc=0
    shift 3
    # shellcheck disable=SC2086
    before=$(cpu_ticks $procs)
    # shellcheck disable=SC2086
    p_before=$(cpu_ticks $prov)
    # shellcheck disable=SC2086
    all_before=$(cpu_ticks $ALL_PROCS)
    wrk_ticks; wrk_before=$WRK_TICKS
    k_before=$(kernel_ticks)
    m_before=$(machine_ticks)
    t0=$(now_ms)
    "$@" || rc=$?
    t1=$(now_ms)
    m_after=$(machine_ticks)
    k_after=$(kernel_ticks)
    wrk_ticks; wrk_after=$WRK_TICKS
    # shellcheck disable=SC2086
    all_after=$(cpu_ticks $ALL_PROCS)
    # shellcheck disable=SC2086
    p_after=$(cpu_ticks $prov)
    # shellcheck disable=SC2086
    after=$(cpu_ticks $procs)
    wall=${SPAN_MS:-$((t1 - t0))}; [ "$wall" -gt 0 ] || wall=1
    cpu_ticks_used=$((after - before))
    provider_ticks_used=$((p_after - p_before))
    kernel=$(( (k_after - k_before) * 100000 / (CLK_TCK * wall) ))
    client=$(( (wrk_after - wrk_before) * 100000 / (CLK_TCK * wall) ))
    other=$(( ((m_after - m_before) - (all_after - all_before) - (wrk_after - wrk_before)
        - (k_after - k_before)) * 100000 / (CLK_TCK * wall) ))
    if [ "$other" -lt 0 ]; then other=0; fi
    return "$rc"
}

# Dies with the run's output (and what the script's failure_logs shows: the servers' last log
# lines) unless every response was right.
failure_logs() { :; }
check_run() { # what outfile requests-expected(0: any)
    local what=$1 out=$2 want=$3 reqs checked bad errs e
    grep -q '^BENCH ' "$out" || die "$what: no result line from wrk: $(cat "$out")"
    reqs=$(field "$out" requests)
    checked=$(field "$out" checked)
    bad=$(field "$out" bad)
    errs=0
    for e in connect read write status timeout; do errs=$((errs + $(field "$out" "$e"))); done
    if [ "$bad" -ne 0 ] || [ "$errs" -ne 0 ] || [ "$reqs" -eq 0 ] || [ "$checked" -lt "$reqs" ] ||
        { [ "$want" -ne 0 ] && [ "$checked" -ne "$want" ]; }; then
        echo "$BENCH_NAME: $what: $bad wrong responses, $errs socket/status errors," \
            "$checked checked of $reqs requests$([ "$want" -eq 0 ] || echo " (expected $want)"):" >&2
        cat "$out" >&2
        failure_logs
        exit 1
    fi
}

# One measured throughput run of target $1 (at URL[$1], its servers PROCS[$1]) in round $2, named
# $3 in errors, with header $4 (default X-Bench: 1) on every request: a warm-up run, then the
# measured run. Sets rate, p99, cpu, pcpu (0), client, kernel, other, reqs.
measure_wrk() { # target round what [header]
    local t=$1 out="$TMP/wrk-$1-$2.txt" what=$3 hdr=${4:-} dur
    wait_quiet
    run_wrk "${URL[$t]}" "$WARMUP" "$out.warmup" "$hdr" || die "$t: wrk warm-up failed: $(cat "$out.warmup")"
    bracketed "${PROCS[$t]}" "" -- run_wrk "${URL[$t]}" "$DURATION" "$out" "$hdr" || die "$t: wrk failed: $(cat "$out")"
    check_run "$what" "$out" 0
    reqs=$(field "$out" requests)
    dur=$(field "$out" duration_us)
    p99=$(field "$out" p99_us)
    pcpu=0
    read -r rate cpu < <(awk -v r="$reqs" -v d="$dur" -v dt="$cpu_ticks_used" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.2f\n", r / (d / 1e6), dt / hz * 1e6 / r }')
}

# One measured throughput run of target $1 in round $2 (saml.sh, oidc.sh): Portcullis and the
# Apache module get a session from one login first (the script's login_once sets SESSION).
measure_proxy() { # target round
    local t=$1 round=$2 hdr=""
    if [ "$t" != nginx ]; then
        login_once "$t"
        hdr="Cookie: $SESSION"
    fi
    measure_wrk "$t" "$round" "$t proxy, round $round" "$hdr"
}

# The login runs of saml.sh (ACS posts of fresh Responses) and oidc.sh (callbacks of fresh
# sign-ins). The script sets LOGIN_NOUN (the plural, in messages) and PROVIDER (a target's
# provider pids, if any), and defines make_logins (target count file: makes that many fresh
# logins, not timed) and run_logins (target file outfile: wrk sends each once).
declare -A LAST_RATE PROVIDER
# One measured login run of target $1 in round $2: sets rate, p99, cpu, pcpu (its provider's),
# client, kernel, other, reqs. Fresh logins are made first (a warm-up batch, then the measured
# batch), sized from the last rate seen so that the run lasts about BENCH_LOGIN_SECONDS.
measure_login() { # target round
    local t=$1 round=$2 out="$TMP/$LOGIN_NOUN-$1-$2.txt" n elapsed warm_rate
    make_logins "$t" "$LOGIN_WARMUP" "$TMP/warm.txt"
    run_logins "$t" "$TMP/warm.txt" "$out.warmup" || die "$t: wrk ${LOGIN_NOUN%s} warm-up failed: $(cat "$out.warmup")"
    check_run "$t $LOGIN_NOUN, round $round warm-up" "$out.warmup" "$LOGIN_WARMUP"
    warm_rate=$(awk -v n="$LOGIN_WARMUP" -v us="$(field "$out.warmup" elapsed_us)" 'BEGIN { printf "%.0f\n", n / (us / 1e6) }')
    n=$(awk -v r="${LAST_RATE[$LOGIN_NOUN-$t]:-$warm_rate}" -v s="$LOGIN_SECONDS" -v lo="$MIN_LOGINS" -v hi="$MAX_LOGINS" \
        'BEGIN { n = int(r * s); if (n < lo) n = lo; if (n > hi) n = hi; print n }')
    make_logins "$t" "$n" "$TMP/$LOGIN_NOUN.txt"
    wait_quiet
    bracketed "${PROCS[$t]}" "${PROVIDER[$t]:-}" -- run_logins "$t" "$TMP/$LOGIN_NOUN.txt" "$out" ||
        die "$t: wrk $LOGIN_NOUN failed: $(cat "$out")"
    check_run "$t $LOGIN_NOUN, round $round" "$out" "$n"
    reqs=$n
    elapsed=$(field "$out" elapsed_us)
    p99=$(field "$out" p99_us)
    read -r rate cpu pcpu < <(awk -v r="$reqs" -v d="$elapsed" -v dt="$cpu_ticks_used" -v pt="$provider_ticks_used" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.1f %.1f\n", r / (d / 1e6), dt / hz * 1e6 / r, pt / hz * 1e6 / r }')
    LAST_RATE[$LOGIN_NOUN-$t]=$rate
}

# A run during which other processes took more than BENCH_MAX_OTHER % of a core is measured
# again, at most BENCH_RETRIES times over the whole benchmark: after each run's line, the script
# measures again while retry_noisy is true, then records the run it keeps with keep_run.
declare -A RES   # RES[key,round]: the kept run's figures, "rate p99_us cpu_us ..."
MAX_OTHER=0
NOISY=0
RETRIED=0
retry_noisy() { # true (and says so) when the run just measured is to be measured again
    if [ "$other" -gt "$MAX_OTHER_OK" ] && [ "$RETRIES_LEFT" -gt 0 ]; then
        RETRIES_LEFT=$((RETRIES_LEFT - 1))
        RETRIED=$((RETRIED + 1))
        echo "   (other processes took ${other}% of a core: run discarded, measuring again)"
        return 0
    fi
    return 1
}
keep_run() { # key,round figures
    RES[$1]=$2
    if [ "$other" -gt "$MAX_OTHER" ]; then MAX_OTHER=$other; fi
    if [ "$other" -gt "$MAX_OTHER_OK" ]; then NOISY=$((NOISY + 1)); fi
}

# ---------------------------------------------------------------------------------------------
# Report.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A MED   # MED[key,i]: the median over the rounds of figure i of RES[key,round]
medians() { # figures key...
    local n=$1 k i round vals r
    shift
    for k in "$@"; do
        for ((i = 0; i < n; i++)); do
            vals=()
            for round in $(seq "$ROUNDS"); do
                read -r -a r <<<"${RES[$k,$round]}"
                vals+=("${r[$i]}")
            done
            MED[$k,$i]=$(median "${vals[@]}")
        done
    done
}

report_machine() { # "== machine" and its lines up to nginx's; the script adds its servers'
    echo
    echo "== machine"
    echo "cpus:    $(nproc)"
    echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
    echo "kernel:  $(uname -srm)"
    echo "nginx:   $("$NGINX" -v 2>&1)"
}
report_tools() { # the machine's last lines: the load generator and the compiler
    echo "wrk:     $(wrk -v 2>&1 | head -1 || true)"
    echo "rustc:   $(rustc --version)"
}

report_noise_warning() {
    if [ "$NOISY" -gt 0 ]; then
        echo "WARNING: $NOISY kept run(s) had other processes above ${MAX_OTHER_OK}% of a core: the figures are noisy."
    fi
}
