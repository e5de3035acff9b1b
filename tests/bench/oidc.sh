#!/usr/bin/env bash
# OIDC benchmark: Portcullis's built-in `oidc` plugin beside Apache httpd with mod_auth_openidc
# (Debian's packages), both as OpenID Connect relying parties in front of the same nginx upstream
# that proxy.sh uses, with nginx as a plain reverse proxy for reference. The provider is the test
# forge tests/peers/oidc_forge.mjs (plain Node, no login form), one instance per relying party,
# pinned to the servers' core. See BENCHMARKS.md.
#
#   tests/bench/oidc.sh            (or `make bench`)
#
# Two measurements, interleaved over the rounds:
#   - callbacks per second: each request is the provider's redirect back to the relying party's
#     redirect URI (`code` and `state`, with the browser's binding cookie) of its own sign-in,
#     started ahead of time (tests/bench/oidc_signins.py); the relying party exchanges the code
#     at the provider's token endpoint, checks the ID token and opens a session;
#   - authenticated proxy throughput: wrk sends the session cookie of one real login on every
#     request.
#
# Environment (all optional):
#   CARGO_TARGET_DIR     where cargo builds (binary at $CARGO_TARGET_DIR/release/portcullis);
#                        Apache and mod_auth_openidc are unpacked under it, in bench-openidc/
#   BENCH_DURATION       seconds per measured throughput run            (default 10)
#   BENCH_WARMUP         seconds of warm-up before each throughput run  (default 2)
#   BENCH_CONNECTIONS    wrk connections, for callbacks and throughput  (default 32)
#   BENCH_ROUNDS         interleaved rounds                             (default 3)
#   BENCH_LOGIN_SECONDS  a callback run is given about this many seconds of sign-ins (default 5)
#   BENCH_LOGIN_WARMUP   callbacks sent by the warm-up before each callback run (default 100)
#   BENCH_MIN_LOGINS     fewest callbacks in a measured run             (default 100)
#   BENCH_MAX_LOGINS     most callbacks in a measured run               (default 6000)
#   BENCH_OPENIDC_USERINFO  1: mod_auth_openidc also sees the provider's userinfo endpoint and
#                        calls it at every sign-in (Portcullis does not); default 0, see below
#   BENCH_SERVER_CPU     core the servers (and the providers) are pinned to (default 0)
#   BENCH_CLIENT_CPU     core wrk is pinned to                          (default 1)
#   BENCH_QUIET_WAIT     seconds to wait for a quiet machine before each run (default 15)
#   BENCH_MAX_OTHER      % of a core other processes may take during a kept run (default 10)
#   BENCH_RETRIES        how many noisy runs may be measured again, in total   (default 6)
#
# Every server is started by this script, bound to 127.0.0.1 only, and stopped by pid on exit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DURATION=${BENCH_DURATION:-10}
WARMUP=${BENCH_WARMUP:-2}
CONNECTIONS=${BENCH_CONNECTIONS:-32}
ROUNDS=${BENCH_ROUNDS:-3}
LOGIN_SECONDS=${BENCH_LOGIN_SECONDS:-5}
LOGIN_WARMUP=${BENCH_LOGIN_WARMUP:-100}
MIN_LOGINS=${BENCH_MIN_LOGINS:-100}
MAX_LOGINS=${BENCH_MAX_LOGINS:-6000}
OPENIDC_USERINFO=${BENCH_OPENIDC_USERINFO:-0}
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NGINX=${NGINX:-/usr/sbin/nginx}
FORGE="$ROOT/tests/peers/oidc_forge.mjs"
SIGNINS="$ROOT/tests/bench/oidc_signins.py"
BODY='hello from upstream'   # the upstream answers this plus "\n"

die() { echo "oidc.sh: $*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
for tool in "$NGINX" wrk taskset curl python3 node cargo getconf apt-get apt-cache dpkg dpkg-deb dpkg-query ldd; do
    command -v "$tool" >/dev/null || die "missing $tool (make bench installs wrk, nginx-light and the test dependencies, node among them)"
done
[ -f "$FORGE" ] || die "missing $FORGE"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPU cores (servers on one, wrk on another)"

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
            echo "oidc.sh: pid $pid ignored SIGTERM for 10s; sending SIGKILL" >&2
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

RUN_STARTED=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Build.
echo "== building portcullis (release)"
(cd "$ROOT" && cargo build --release --quiet -p portcullis)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
PORTCULLIS="$TARGET_DIR/release/portcullis"
[ -x "$PORTCULLIS" ] || die "no binary at $PORTCULLIS"

# ---------------------------------------------------------------------------------------------
# Apache httpd and mod_auth_openidc: Debian's packages, downloaded with apt-get and unpacked with
# dpkg -x, not installed (installing apache2 would start a system service). Only the libraries
# they need that the machine lacks are fetched beside them. Kept between runs in bench-openidc/.
OPENIDC_DIR="$TARGET_DIR/bench-openidc"
APACHE="$OPENIDC_DIR/root/usr/sbin/apache2"
MODULES="$OPENIDC_DIR/root/usr/lib/apache2/modules"
APACHE_MODULES=(mpm_event authn_core authz_core authz_user alias proxy proxy_http auth_openidc)
apache_libpath() { find "$OPENIDC_DIR/root" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -; }
apache_ready() {
    local files=("$APACHE") m
    for m in "${APACHE_MODULES[@]}"; do files+=("$MODULES/mod_$m.so"); done
    for m in "${files[@]}"; do [ -f "$m" ] || return 1; done
    ! LD_LIBRARY_PATH=$(apache_libpath) ldd "${files[@]}" 2>&1 | grep -q 'not found'
}
if ! apache_ready; then
    echo "== fetching Debian's apache2-bin and libapache2-mod-auth-openidc into $OPENIDC_DIR (unpacked, not installed)"
    rm -rf "$OPENIDC_DIR"
    mkdir -p "$OPENIDC_DIR/debs" "$OPENIDC_DIR/root"
    if ! apt-cache show apache2-bin libapache2-mod-auth-openidc >/dev/null 2>&1; then
        $SUDO apt-get update -qq
    fi
    # The two packages, plus the packages of their Depends (recursively, first alternative of
    # each choice) that are not installed here.
    read -r -a DEBS < <(python3 "$ROOT/tests/bench/debs_to_fetch.py" apache2-bin libapache2-mod-auth-openidc)
    echo "   packages: ${DEBS[*]}"
    (cd "$OPENIDC_DIR/debs" && apt-get download -q "${DEBS[@]}") >"$OPENIDC_DIR/download.log" 2>&1 ||
        die "apt-get download failed: $(tail -n 5 "$OPENIDC_DIR/download.log")"
    for deb in "$OPENIDC_DIR"/debs/*.deb; do dpkg -x "$deb" "$OPENIDC_DIR/root"; done
    apache_ready || die "Apache or a module it loads misses a library: $(LD_LIBRARY_PATH=$(apache_libpath) ldd "$APACHE" "$MODULES"/mod_auth_openidc.so | grep 'not found')"
fi
APACHE_LIBPATH=$(apache_libpath)
deb_version() { # package: the version unpacked here, or the one installed
    local debs=("$OPENIDC_DIR"/debs/"$1"_*.deb)
    dpkg-deb -f "${debs[0]}" Version 2>/dev/null || dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"
}

TMP=$(mktemp -d /tmp/portcullis-oidc-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers and Apache children run as another user when started by root

# Five distinct free ports on 127.0.0.1 (held open together so they differ). The forges pick
# their own.
read -r UP_PORT NGX_PORT EDGE_PORT CONSOLE_PORT APACHE_PORT < <(python3 - <<'EOF'
import socket
socks = []
for _ in range(5):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)

# ---------------------------------------------------------------------------------------------
# The providers: one forge per relying party (a forge has one client), pinned to the servers'
# core: their token endpoint (an RS256 signature per ID token) and JWKS run on the same core as
# the gateway they serve, and their CPU is reported per callback beside the gateway's.
start_forge() { # name -> sets LAST_PID, LAST_ISSUER
    local dir="$TMP/forge-$1" line=""
    mkdir -p "$dir"
    taskset -c "$SERVER_CPU" node "$FORGE" --port 0 >"$dir/ready.json" 2>"$dir/forge.log" &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
    for _ in $(seq 200); do
        line=$(head -n 1 "$dir/ready.json" 2>/dev/null || true)
        [ -n "$line" ] && break
        kill -0 "$LAST_PID" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$line" ] || { tail -n 20 "$dir/forge.log" >&2; die "the $1 forge did not start"; }
    LAST_ISSUER=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["issuer"])' "$line")
}
start_forge portcullis
FORGE_PC_PID=$LAST_PID
ISSUER_PC=$LAST_ISSUER
start_forge openidc
FORGE_AP_PID=$LAST_PID
ISSUER_AP=$LAST_ISSUER
PC_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')
AP_SECRET=$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')

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

# Portcullis: every path of the edge behind the oidc plugin (an http issuer is accepted on
# loopback), with its defaults otherwise (scopes openid profile email, client_secret_basic).
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
[edges.bench]
hostports = ["127.0.0.1:$EDGE_PORT"]
[[edges.bench.routes]]
match_type = "path_prefix"
match = "/"
backend = "up"
[edges.bench.routes.auth]
plugin = "oidc"
inactivity_timeout = 86400
maximum_duration = 86400
issuer = "$ISSUER_PC"
client_id = "portcullis-bench"
client_secret = "$PC_SECRET"
EOF

# Apache: one event-MPM child (64 threads: every connection has one), no access log (as nginx's
# access_log off), keep-alive without limit, mod_proxy_http to the upstream (its pool keeps the
# connections), and mod_auth_openidc on every path with its defaults (server-side sessions in its
# shm cache of 500 entries, client_secret_basic) plus PKCE S256 and the scopes Portcullis asks
# for. mod_auth_openidc takes only https for a provider configured endpoint by endpoint, so it
# reads the forge's discovery document, served here by Apache itself from a file: the forge's own
# document without `userinfo_endpoint` (unless BENCH_OPENIDC_USERINFO=1). With it,
# mod_auth_openidc calls userinfo at every sign-in, which Portcullis does not: without it, both
# do the same provider work per callback (one token request, the ID token checked against the
# cached JWKS).
APACHE_DIR="$TMP/apache"
mkdir -p "$APACHE_DIR/logs" "$APACHE_DIR/run" "$APACHE_DIR/htdocs"
AP_BASE="http://127.0.0.1:$APACHE_PORT"
curl -fsS "$ISSUER_AP/.well-known/openid-configuration" >"$APACHE_DIR/forge-discovery.json" || die "the forge's discovery failed"
python3 - "$APACHE_DIR/forge-discovery.json" "$OPENIDC_USERINFO" >"$APACHE_DIR/htdocs/openid-configuration.json" <<'EOF'
import json, sys
document = json.load(open(sys.argv[1]))
if sys.argv[2] != "1":
    del document["userinfo_endpoint"]
print(json.dumps(document, indent=2))
EOF
chmod -R a+rX "$APACHE_DIR/htdocs"
{
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
OIDCProviderMetadataURL $AP_BASE/bench-provider/openid-configuration.json
OIDCClientID apache-bench
OIDCClientSecret $AP_SECRET
OIDCRedirectURI $AP_BASE/oidc/callback
OIDCCryptoPassphrase $(python3 -c 'import secrets; print(secrets.token_urlsafe(32))')
OIDCScope "openid profile email"
OIDCPKCEMethod S256
OIDCSSLValidateServer Off
Alias /bench-provider/ "$APACHE_DIR/htdocs/"
ProxyPass /oidc/ !
ProxyPass /bench-provider/ !
ProxyPass / http://127.0.0.1:$UP_PORT/
<Location />
    AuthType openid-connect
    Require valid-user
</Location>
<Location /bench-provider/>
    AuthType None
    Require all granted
</Location>
EOF
} >"$APACHE_DIR/httpd.conf"
chmod 777 "$APACHE_DIR/run"

# The response check of the throughput runs, the same for every target (as proxy.sh's): counts
# responses that are not exactly 200 with the upstream's body; done() prints one parseable line.
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

# The callback load: args STATUS COOKIE LOCATION FILE. Sends each line of FILE (the callback's
# path and query, a tab, the binding cookie) once, as a GET with that cookie, in order, over all
# connections, then stops wrk (SIGINT to itself: wrk reports at once). A response is right when
# it is STATUS to LOCATION and sets the session cookie COOKIE (wrk keeps the last of repeated
# headers: both relying parties set the session cookie last). The User-Agent is the one the
# sign-ins were started with (mod_auth_openidc binds its state to it). The rate is timed here (LuaJIT's
# FFI, CLOCK_MONOTONIC): from the first request sent to the last response received, so wrk's
# start-up (reading FILE) and stop are not in it.
cat >"$TMP/callback.lua" <<'EOF'
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
    want_status, cookie, location = tonumber(args[1]), args[2] .. "=", args[3]
    reqs = {}
    for line in io.lines(args[4]) do
        local path, binding = string.match(line, "^([^\t]+)\t(.+)$")
        reqs[#reqs + 1] = wrk.format("GET", path, { ["Cookie"] = binding, ["Accept"] = "text/html", ["User-Agent"] = "oidc-bench" })
    end
    total, reserved, sent, seen, bad = #reqs, 0, 0, 0, 0
    t0, t1, first_bad = 0, 0, ""
end

-- A connection takes the next callback only if one is left; otherwise it waits (an hour: longer
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

# ---------------------------------------------------------------------------------------------
# Start the servers, each pinned to the server core.
wait_http() { # url what log [any status]
    local code
    for _ in $(seq 200); do
        code=$(curl -sS -o /dev/null -w '%{http_code}' --max-time 1 "$1" 2>/dev/null || true)
        if [ "$code" = 200 ] || { [ -n "${4:-}" ] && [ "${code:-000}" != 000 ]; }; then return 0; fi
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
# The API key (made before the server starts, in its data dir) reads the module's redirect URI.
API_KEY=$("$PORTCULLIS" api-key create --description oidc-bench --config "$TMP/portcullis/config.toml" \
    --data-dir "$TMP/portcullis/data" 2>"$TMP/portcullis/api-key.log") || die "api-key create failed: $(cat "$TMP/portcullis/api-key.log")"
taskset -c "$SERVER_CPU" "$PORTCULLIS" serve --config "$TMP/portcullis/config.toml" \
    --data-dir "$TMP/portcullis/data" >"$TMP/portcullis/stdout.log" 2>&1 &
PC_PID=$!
PIDS+=("$PC_PID")
taskset -c "$SERVER_CPU" env LD_LIBRARY_PATH="$APACHE_LIBPATH" "$APACHE" -d "$APACHE_DIR" \
    -f "$APACHE_DIR/httpd.conf" -DFOREGROUND >"$APACHE_DIR/logs/stdout.log" 2>&1 &
AP_PID=$!
PIDS+=("$AP_PID")

wait_http "http://127.0.0.1:$UP_PORT/" "the nginx upstream" "$TMP/upstream/logs/error.log"
wait_http "http://127.0.0.1:$NGX_PORT/" "the nginx proxy" "$TMP/nginx/logs/error.log"
wait_http "http://127.0.0.1:$CONSOLE_PORT/healthz" "portcullis" "$TMP/portcullis/stdout.log"
wait_http "$AP_BASE/bench-provider/openid-configuration.json" "Apache (mod_auth_openidc)" "$APACHE_DIR/logs/error.log"

# The OIDC module's redirect URI, as the API reports it; each client registered at its forge.
curl -fsS -H "Authorization: Bearer $API_KEY" -H "Ngrok-Version: 2" \
    "http://127.0.0.1:$CONSOLE_PORT/api/edges/https" >"$TMP/edges.json" || die "GET /api/edges/https failed"
PC_CALLBACK=$(python3 - "$TMP/edges.json" <<'EOF'
import json, sys
edges = json.load(open(sys.argv[1]))["https_edges"]
modules = [r["oidc"] for e in edges for r in e.get("routes", []) if r.get("oidc")]
if len(modules) != 1:
    sys.exit(f"expected one route with an oidc module, found {len(modules)}")
print(modules[0]["redirect_uri"])
EOF
) || die "no OIDC module in the API's answer: $(head -c 2000 "$TMP/edges.json")"
AP_CALLBACK="$AP_BASE/oidc/callback"
register() { # issuer client_id secret redirect_uri
    local body
    body=$(python3 -c 'import json, sys; print(json.dumps(dict(zip(("client_id", "client_secret", "redirect_uri"), sys.argv[1:]))))' "$2" "$3" "$4")
    curl -fsS -o /dev/null -X POST -H 'Content-Type: application/json' -d "$body" "$1/test/client" ||
        die "registering $2 at $1 failed"
}
register "$ISSUER_PC" portcullis-bench "$PC_SECRET" "$PC_CALLBACK"
register "$ISSUER_AP" apache-bench "$AP_SECRET" "$AP_CALLBACK"

# Per relying party: its base URL, redirect URI, session cookie, the cookie that binds a sign-in
# to its browser, and (from the first login) the status and Location of a completed sign-in.
declare -A BASE CALLBACK COOKIE BINDING LOGIN_STATUS LOCATION PROCS PROVIDER URL ISSUER
BASE[portcullis]="http://127.0.0.1:$EDGE_PORT"; CALLBACK[portcullis]=$PC_CALLBACK
COOKIE[portcullis]="portcullis.session";        BINDING[portcullis]="portcullis-oidc-"
ISSUER[portcullis]=$ISSUER_PC
BASE[openidc]=$AP_BASE;                         CALLBACK[openidc]=$AP_CALLBACK
COOKIE[openidc]="mod_auth_openidc_session";     BINDING[openidc]="mod_auth_openidc_state_"
ISSUER[openidc]=$ISSUER_AP
for t in portcullis openidc; do
    case "${CALLBACK[$t]}" in "${BASE[$t]}"/*) ;; *) die "$t: redirect URI ${CALLBACK[$t]} is not on ${BASE[$t]}" ;; esac
done

# Shows why a login went wrong: the answer, the relying parties' and the provider's last lines.
login_failed() { # target what headers-file [body-file]
    echo "oidc.sh: $1: $2" >&2
    cat "$3" ${4:+"$4"} >&2 2>/dev/null || true
    echo "-- Portcullis log:" >&2
    tail -n 5 "$TMP/portcullis/stdout.log" >&2 || true
    echo "-- Apache error log:" >&2
    tail -n 5 "$APACHE_DIR/logs/error.log" >&2 || true
    echo "-- the $1 forge's log:" >&2
    tail -n 5 "$TMP/forge-$1/forge.log" >&2 || true
    exit 1
}
header() { sed -n "s/^$2: //Ip" "$1" | tr -d '\r' | head -1; }

# One real login, as a browser does it (curl, redirects followed by hand): the protected URL, the
# provider's authorization endpoint, the callback with the binding cookie. Sets SESSION to the
# session cookie pair, and CB_URL, CB_COOKIE, CB_STATUS, CB_LOCATION for the checks below.
login_once() { # target
    local t=$1 authorize binding
    curl -sS -o "$TMP/login1.body" -D "$TMP/login1.h" -H 'Accept: text/html' "${BASE[$t]}/" || die "$t: GET / failed"
    authorize=$(header "$TMP/login1.h" location)
    binding=$(sed -n "s/^[Ss]et-[Cc]ookie: \(${BINDING[$t]}[^;]*\).*/\1/p" "$TMP/login1.h" | tr -d '\r' | head -1)
    case "$authorize" in "${ISSUER[$t]}/authorize?"*) ;; *) login_failed "$t" "an anonymous GET / did not redirect to the provider" "$TMP/login1.h" "$TMP/login1.body" ;; esac
    [ -n "$binding" ] || login_failed "$t" "no ${BINDING[$t]}* cookie with the redirect to the provider" "$TMP/login1.h"
    curl -sS -o /dev/null -D "$TMP/login2.h" "$authorize" || die "$t: GET of the provider's authorization endpoint failed"
    CB_URL=$(header "$TMP/login2.h" location)
    case "$CB_URL" in "${CALLBACK[$t]}?"*code=*) ;; *) login_failed "$t" "the provider did not send the browser back with a code" "$TMP/login2.h" ;; esac
    CB_COOKIE=$binding
    curl -sS -o "$TMP/login3.body" -D "$TMP/login3.h" -H 'Accept: text/html' -H "Cookie: $binding" "$CB_URL" || die "$t: the callback failed"
    CB_STATUS=$(head -1 "$TMP/login3.h" | awk '{ print $2 }')
    CB_LOCATION=$(header "$TMP/login3.h" location)
    SESSION=$(sed -n "s/^[Ss]et-[Cc]ookie: \(${COOKIE[$t]//./\\.}=[^;]*\).*/\1/p" "$TMP/login3.h" | tr -d '\r' | head -1)
    if [ -z "$SESSION" ] || ! [[ "$CB_STATUS" =~ ^30[23]$ ]]; then
        login_failed "$t" "a valid sign-in was refused at the callback" "$TMP/login3.h" "$TMP/login3.body"
    fi
}

# Each relying party must complete a real sign-in (303/302 back to /, session cookie), and the
# session must reach the upstream's exact body; the same callback sent again must not sign in.
declare -A replay
for t in portcullis openidc; do
    login_once "$t"
    LOGIN_STATUS[$t]=$CB_STATUS
    LOCATION[$t]=$CB_LOCATION
    [ "${LOCATION[$t]}" = / ] || [ "${LOCATION[$t]}" = "${BASE[$t]}/" ] || die "$t: a sign-in answered Location ${LOCATION[$t]}, not /"
    got=$(curl -sS --max-time 5 -w '%{http_code}' -H "Cookie: $SESSION" "${BASE[$t]}/") || die "$t: request with the session failed"
    [ "$got" = "$BODY"$'\n'"200" ] || die "$t: unexpected answer to GET / with a session: $(printf %q "$got")"
    curl -sS -o /dev/null -D "$TMP/replay.h" -H "Cookie: $CB_COOKIE" "$CB_URL" || die "$t: the replayed callback failed"
    code=$(head -1 "$TMP/replay.h" | awk '{ print $2 }')
    if grep -qi "^set-cookie: ${COOKIE[$t]//./\\.}=[^;]" "$TMP/replay.h"; then
        login_failed "$t" "the same callback sent twice signed in twice (answered $code)" "$TMP/replay.h"
    fi
    replay[$t]=$code
done
echo "   Portcullis redirect URI ${CALLBACK[portcullis]}; mod_auth_openidc redirect URI ${CALLBACK[openidc]}"
echo "   a sign-in answered: Portcullis ${LOGIN_STATUS[portcullis]} to ${LOCATION[portcullis]}," \
    "mod_auth_openidc ${LOGIN_STATUS[openidc]} to ${LOCATION[openidc]}"
echo "   a replayed callback: Portcullis answered ${replay[portcullis]}, mod_auth_openidc ${replay[openidc]} (no session)"

# Worker pids of an nginx master or the Apache parent (its children).
children() { cat "/proc/$1/task/"*/children 2>/dev/null | tr ' ' '\n' | grep -v '^$' || true; }
UP_PROCS="$UP_PID $(children "$UP_PID" | tr '\n' ' ')"
NGX_PROCS="$NGX_PID $(children "$NGX_PID" | tr '\n' ' ')"
AP_PROCS="$AP_PID $(children "$AP_PID" | tr '\n' ' ')"
PC_PROCS="$PC_PID"
[ "$(wc -w <<<"$UP_PROCS")" -ge 2 ] || die "nginx upstream has no worker"
[ "$(wc -w <<<"$NGX_PROCS")" -ge 2 ] || die "nginx proxy has no worker"
[ "$(wc -w <<<"$AP_PROCS")" -ge 2 ] || die "Apache has no child"
# shellcheck disable=SC2206
WORKERS=(${UP_PROCS#* } ${NGX_PROCS#* } ${AP_PROCS#* })

PROCS[portcullis]=$PC_PROCS
PROCS[openidc]=$AP_PROCS
PROCS[nginx]=$NGX_PROCS
PROVIDER[portcullis]=$FORGE_PC_PID
PROVIDER[openidc]=$FORGE_AP_PID
URL[nginx]="http://127.0.0.1:$NGX_PORT/"
URL[portcullis]="${BASE[portcullis]}/"
URL[openidc]="${BASE[openidc]}/"
LOGIN_TARGETS=(portcullis openidc)
PROXY_TARGETS=(nginx portcullis openidc)

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

run_wrk() { # url seconds outfile header
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d"$2s" --latency -s "$TMP/check.lua" -H "$4" "$1" >"$3" 2>&1
}

# Sends every callback of FILE to target $1; wrk is stopped by the script when done (the 600 s
# is only a bound). --timeout: with 32 sign-ins in flight a slow relying party takes seconds each.
run_callbacks() { # target file outfile
    taskset -c "$CLIENT_CPU" wrk -t1 -c"$CONNECTIONS" -d600s --timeout 10s --latency -s "$TMP/callback.lua" \
        "${BASE[$1]}/" -- "${LOGIN_STATUS[$1]}" "${COOKIE[$1]}" "${LOCATION[$1]}" "$2" >"$3" 2>&1
}

field() { sed -n "s/^BENCH .*\b$2=\([0-9]*\).*/\1/p" "$1"; }

# Noise control, as in proxy.sh. Other work on the machine (a build, say) skews the figures, so:
# before each run wait (up to BENCH_QUIET_WAIT s) until the machine is quiet, and after each run
# report "other", the CPU used by processes that are neither these servers nor the forges nor wrk
# nor kernel threads (the kernel's network work for the benchmark runs partly in ksoftirqd:
# "kernel"), in % of one core. "wrk" is the load generator's own CPU: near 100% means the client
# was the limit.
QUIET_WAIT=${BENCH_QUIET_WAIT:-15}
MAX_OTHER_OK=${BENCH_MAX_OTHER:-10}
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PROCS $AP_PROCS $FORGE_PC_PID $FORGE_AP_PID"
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

# Brackets one measured run (the command in "$@"): sets cpu_ticks_used (the target's servers),
# provider_ticks_used (its forge; 0 without one), client, kernel and other (% of one core over the
# run's wall time).
bracketed() { # procs provider-procs -- command...
    local procs=$1 prov=$2 before after p_before p_after all_before all_after wrk_before wrk_after
    local k_before k_after m_before m_after t0 t1 wall
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
    "$@"
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
    wall=$((t1 - t0)); [ "$wall" -gt 0 ] || wall=1
    cpu_ticks_used=$((after - before))
    provider_ticks_used=$((p_after - p_before))
    kernel=$(( (k_after - k_before) * 100000 / (CLK_TCK * wall) ))
    client=$(( (wrk_after - wrk_before) * 100000 / (CLK_TCK * wall) ))
    other=$(( ((m_after - m_before) - (all_after - all_before) - (wrk_after - wrk_before)
        - (k_after - k_before)) * 100000 / (CLK_TCK * wall) ))
    if [ "$other" -lt 0 ]; then other=0; fi
}

# Dies with the run's output (and the relying parties' and providers' last lines) unless every
# response was right.
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
        echo "oidc.sh: $what: $bad wrong responses, $errs socket/status errors," \
            "$checked checked of $reqs requests$([ "$want" -eq 0 ] || echo " (expected $want)"):" >&2
        cat "$out" >&2
        echo "-- Portcullis log:" >&2
        tail -n 5 "$TMP/portcullis/stdout.log" >&2 || true
        echo "-- Apache error log:" >&2
        grep -v 'dropping LRU entry' "$APACHE_DIR/logs/error.log" | tail -n 5 >&2 || true
        echo "-- forge logs:" >&2
        tail -n 3 "$TMP"/forge-*/forge.log >&2 || true
        exit 1
    fi
}

# Starts COUNT sign-ins of target $1 ahead of time into FILE (not timed).
SIGNIN_LOG="$TMP/signins.log"
make_signins() { # target count file
    python3 "$SIGNINS" --start "${BASE[$1]}/" --callback "${CALLBACK[$1]}" --cookie "${BINDING[$1]}" \
        --count "$2" --out "$3" --windows "$TMP/windows-$1.json" >>"$SIGNIN_LOG" 2>&1 ||
        die "oidc_signins.py failed: $(tail -n 20 "$SIGNIN_LOG")"
}

# One measured callback run of target $1 in round $2: sets rate, p99, cpu, pcpu, client, kernel,
# other, reqs. Fresh sign-ins are started first (a warm-up batch, then the measured batch),
# sized from the last rate seen so that the run lasts about BENCH_LOGIN_SECONDS.
declare -A LAST_RATE
measure_login() {
    local t=$1 round=$2 out="$TMP/callback-$1-$2.txt" n elapsed warm_rate
    make_signins "$t" "$LOGIN_WARMUP" "$TMP/warm.txt"
    run_callbacks "$t" "$TMP/warm.txt" "$out.warmup" || die "$t: wrk callback warm-up failed: $(cat "$out.warmup")"
    check_run "$t callbacks, round $round warm-up" "$out.warmup" "$LOGIN_WARMUP"
    warm_rate=$(awk -v n="$LOGIN_WARMUP" -v us="$(field "$out.warmup" elapsed_us)" 'BEGIN { printf "%.0f\n", n / (us / 1e6) }')
    n=$(awk -v r="${LAST_RATE[$t]:-$warm_rate}" -v s="$LOGIN_SECONDS" -v lo="$MIN_LOGINS" -v hi="$MAX_LOGINS" \
        'BEGIN { n = int(r * s); if (n < lo) n = lo; if (n > hi) n = hi; print n }')
    make_signins "$t" "$n" "$TMP/callbacks.txt"
    wait_quiet
    bracketed "${PROCS[$t]}" "${PROVIDER[$t]}" -- run_callbacks "$t" "$TMP/callbacks.txt" "$out" ||
        die "$t: wrk callbacks failed: $(cat "$out")"
    check_run "$t callbacks, round $round" "$out" "$n"
    reqs=$n
    elapsed=$(field "$out" elapsed_us)
    p99=$(field "$out" p99_us)
    read -r rate cpu pcpu < <(awk -v r="$reqs" -v d="$elapsed" -v dt="$cpu_ticks_used" -v pt="$provider_ticks_used" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.1f %.1f\n", r / (d / 1e6), dt / hz * 1e6 / r, pt / hz * 1e6 / r }')
    LAST_RATE[$t]=$rate
}

# One measured throughput run of target $1 in round $2 (as proxy.sh's): sets rate, p99, cpu,
# client, kernel, other, reqs. Portcullis and mod_auth_openidc get a session from one real login
# first (mod_auth_openidc's 500-entry session cache has been cycled by the callback runs).
measure_proxy() {
    local t=$1 round=$2 out="$TMP/wrk-$1-$2.txt" dur hdr="X-Bench: 1"
    if [ "$t" != nginx ]; then
        login_once "$t"
        hdr="Cookie: $SESSION"
    fi
    wait_quiet
    run_wrk "${URL[$t]}" "$WARMUP" "$out.warmup" "$hdr" || die "$t: wrk warm-up failed: $(cat "$out.warmup")"
    bracketed "${PROCS[$t]}" "" -- run_wrk "${URL[$t]}" "$DURATION" "$out" "$hdr" || die "$t: wrk failed: $(cat "$out")"
    check_run "$t proxy, round $round" "$out" 0
    reqs=$(field "$out" requests)
    dur=$(field "$out" duration_us)
    p99=$(field "$out" p99_us)
    pcpu=0
    read -r rate cpu < <(awk -v r="$reqs" -v d="$dur" -v dt="$cpu_ticks_used" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.2f\n", r / (d / 1e6), dt / hz * 1e6 / r }')
}

# A run during which other processes took more than BENCH_MAX_OTHER % of a core is measured
# again, at most BENCH_RETRIES times over the whole benchmark.
RETRIES_LEFT=${BENCH_RETRIES:-6}
declare -A RES   # RES[kind-target,round]="rate p99_us cpu_us provider_cpu_us responses"
MAX_OTHER=0
NOISY=0
RETRIED=0
STARTED=$(date +%s)
measured() { # kind target round
    local kind=$1 t=$2 round=$3 unit
    while :; do
        if [ "$kind" = login ]; then measure_login "$t" "$round"; unit="logins/s"; else measure_proxy "$t" "$round"; unit="req/s"; fi
        printf '   round %d  %-5s %-10s %7s %-8s  p99 %7s us  %8s CPU us/%s%s  wrk %3s%%  kernel %3s%%  other %3s%%  (%d responses, all checked)\n' \
            "$round" "$kind" "$t" "$rate" "$unit" "$p99" "$cpu" "$([ "$kind" = login ] && echo login || echo req)" \
            "$([ "$kind" = login ] && printf ' + provider %6s' "$pcpu")" "$client" "$kernel" "$other" "$reqs"
        if [ "$other" -gt "$MAX_OTHER_OK" ] && [ "$RETRIES_LEFT" -gt 0 ]; then
            RETRIES_LEFT=$((RETRIES_LEFT - 1))
            RETRIED=$((RETRIED + 1))
            echo "   (other processes took ${other}% of a core: run discarded, measuring again)"
            continue
        fi
        break
    done
    RES[$kind-$t,$round]="$rate $p99 $cpu $pcpu $reqs"
    if [ "$other" -gt "$MAX_OTHER" ]; then MAX_OTHER=$other; fi
    if [ "$other" -gt "$MAX_OTHER_OK" ]; then NOISY=$((NOISY + 1)); fi
}

# The replays above were refused (and logged); none may be refused from here on.
PC_REFUSALS='OIDC callback|refused the code|ID token refused|token endpoint|not admitted'
AP_ERRORS='\[auth_openidc:error\]'
refusals() { grep -c -E "$2" "$1" || true; }
PC_REFUSED_BEFORE=$(refusals "$TMP/portcullis/stdout.log" "$PC_REFUSALS")
AP_ERRORS_BEFORE=$(refusals "$APACHE_DIR/logs/error.log" "$AP_ERRORS")

echo "== measuring: $ROUNDS rounds of callbacks (Portcullis, mod_auth_openidc) and proxying (nginx, Portcullis, mod_auth_openidc)"
for round in $(seq "$ROUNDS"); do
    for t in "${LOGIN_TARGETS[@]}"; do measured login "$t" "$round"; done
    for t in "${PROXY_TARGETS[@]}"; do measured proxy "$t" "$round"; done
done
ELAPSED=$(($(date +%s) - STARTED))

# No relying party refused a sign-in during the runs (check_run counted every answer already;
# this also catches a refusal logged whose answer still looked right).
if [ "$(refusals "$TMP/portcullis/stdout.log" "$PC_REFUSALS")" -ne "$PC_REFUSED_BEFORE" ]; then
    echo "oidc.sh: Portcullis logged refusals during the runs:" >&2
    grep -E "$PC_REFUSALS" "$TMP/portcullis/stdout.log" | tail -n +$((PC_REFUSED_BEFORE + 1)) | head -n 5 >&2
    exit 1
fi
if [ "$(refusals "$APACHE_DIR/logs/error.log" "$AP_ERRORS")" -ne "$AP_ERRORS_BEFORE" ]; then
    echo "oidc.sh: mod_auth_openidc logged errors during the runs:" >&2
    grep -E "$AP_ERRORS" "$APACHE_DIR/logs/error.log" | tail -n +$((AP_ERRORS_BEFORE + 1)) | head -n 5 >&2
    exit 1
fi
LRU_DROPS=$(refusals "$APACHE_DIR/logs/error.log" 'dropping LRU entry')
PC_LOG_LINES=$(wc -l <"$TMP/portcullis/stdout.log")

# ---------------------------------------------------------------------------------------------
# Report.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A MED
KEYS=(login-portcullis login-openidc proxy-nginx proxy-portcullis proxy-openidc)
for k in "${KEYS[@]}"; do
    for i in 0 1 2 3; do
        vals=()
        for round in $(seq "$ROUNDS"); do
            read -r -a r <<<"${RES[$k,$round]}"
            vals+=("${r[$i]}")
        done
        MED[$k,$i]=$(median "${vals[@]}")
    done
done
label() {
    case $1 in
        login-portcullis) echo "Portcullis (oidc plugin)" ;;
        login-openidc) echo "Apache + mod_auth_openidc" ;;
        proxy-nginx) echo "nginx reverse proxy (no auth)" ;;
        proxy-portcullis) echo "Portcullis, OIDC session" ;;
        proxy-openidc) echo "Apache + mod_auth_openidc, session" ;;
    esac
}

echo
echo "== machine"
echo "cpus:    $(nproc)"
echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "kernel:  $(uname -srm)"
echo "nginx:   $("$NGINX" -v 2>&1)"
echo "apache:  $(LD_LIBRARY_PATH="$APACHE_LIBPATH" "$APACHE" -v | head -1 | sed 's/^Server version: //')" \
    "(apache2-bin $(deb_version apache2-bin)), mod_auth_openidc $(deb_version libapache2-mod-auth-openidc)," \
    "libcjose0 $(deb_version libcjose0)"
echo "node:    $(node --version) (the provider: tests/peers/oidc_forge.mjs, one per relying party)"
echo "wrk:     $(wrk -v 2>&1 | head -1 || true)"
echo "rustc:   $(rustc --version)"
echo "setup:   servers and providers on core $SERVER_CPU, wrk on core $CLIENT_CPU; wrk -t1 -c$CONNECTIONS; $ROUNDS interleaved rounds; medians"
echo "         callbacks: each run sends its own sign-ins' callbacks, started just before (about ${LOGIN_SECONDS}s of them," \
    "at most $MAX_LOGINS) after a warm-up of $LOGIN_WARMUP; mod_auth_openidc $([ "$OPENIDC_USERINFO" = 1 ] && echo "calls" || echo "does not see") the userinfo endpoint"
echo "         proxy: -d${DURATION}s after a ${WARMUP}s warm-up, session of one real login"
echo
echo "== per round (rate / p99 us / relying party CPU us per callback or request [+ provider CPU us per callback] [(callbacks)])"
printf '| %-34s |' target
for round in $(seq "$ROUNDS"); do printf ' %-36s |' "round $round"; done
echo
printf '|%s|' "------------------------------------"
for round in $(seq "$ROUNDS"); do printf '%s|' "--------------------------------------"; done
echo
for k in "${KEYS[@]}"; do
    printf '| %-34s |' "$(label "$k")"
    for round in $(seq "$ROUNDS"); do
        read -r -a r <<<"${RES[$k,$round]}"
        case $k in
            login-*) printf ' %-36s |' "${r[0]} / ${r[1]} / ${r[2]} + ${r[3]} (${r[4]})" ;;
            *) printf ' %-36s |' "${r[0]} / ${r[1]} / ${r[2]}" ;;
        esac
    done
    echo
done
printf 'Portcullis / mod_auth_openidc authenticated throughput per round:'
for round in $(seq "$ROUNDS"); do
    read -r -a a <<<"${RES[proxy-portcullis,$round]}"
    read -r -a b <<<"${RES[proxy-openidc,$round]}"
    awk -v a="${a[0]}" -v b="${b[0]}" 'BEGIN { printf " %.2fx", a / b }'
done
echo
echo
echo "== callbacks (median of $ROUNDS runs; CPU = utime+stime per callback of the relying party's processes, and of its provider)"
printf '| %-34s | %11s | %9s | %11s | %15s | %14s |\n' target "callbacks/s" "p99 (ms)" "CPU us/cb" "provider us/cb" "provider share"
printf '|%s|%s|%s|%s|%s|%s|\n' "------------------------------------" "------------:" "----------:" "------------:" "----------------:" "---------------:"
for k in login-portcullis login-openidc; do
    printf '| %-34s | %11s | %9s | %11s | %15s | %14s |\n' "$(label "$k")" "${MED[$k,0]}" \
        "$(awk -v v="${MED[$k,1]}" 'BEGIN { printf "%.1f", v / 1000 }')" "${MED[$k,2]}" "${MED[$k,3]}" \
        "$(awk -v a="${MED[$k,2]}" -v p="${MED[$k,3]}" 'BEGIN { printf "%.0f%%", 100 * p / (a + p) }')"
done
echo
echo "== authenticated proxy throughput (median of $ROUNDS runs; CPU = server processes' utime+stime per request)"
printf '| %-34s | %9s | %9s | %12s |\n' target "req/s" "p99 (us)" "CPU us/req"
printf '|%s|%s|%s|%s|\n' "------------------------------------" "----------:" "----------:" "-------------:"
for k in proxy-nginx proxy-portcullis proxy-openidc; do
    printf '| %-34s | %9s | %9s | %12s |\n' "$(label "$k")" "${MED[$k,0]}" "${MED[$k,1]}" "${MED[$k,2]}"
done
echo
echo "Other processes used at most ${MAX_OTHER}% of a core during a kept run;" \
    "$RETRIED noisy run(s) were discarded and measured again. Measuring took ${ELAPSED}s," \
    "the whole script $(($(date +%s) - RUN_STARTED))s."
echo "Portcullis logged $PC_LOG_LINES line(s) at warn level (the replay check's among them). mod_auth_openidc" \
    "logged $LRU_DROPS 'dropping LRU entry' warning(s) over $(grep -c 'token issued' "$TMP/forge-openidc/forge.log" || true)" \
    "sign-ins (its default shm cache keeps 500 entries: sessions, nonces, metadata, JWKS)."
if [ "$NOISY" -gt 0 ]; then
    echo "WARNING: $NOISY kept run(s) had other processes above ${MAX_OTHER_OK}% of a core: the figures are noisy."
fi
echo
awk -v pl="${MED[login-portcullis,0]}" -v ml="${MED[login-openidc,0]}" -v pc="${MED[login-portcullis,2]}" -v mc="${MED[login-openidc,2]}" \
    -v pp="${MED[proxy-portcullis,0]}" -v mp="${MED[proxy-openidc,0]}" -v np="${MED[proxy-nginx,0]}" \
    'BEGIN {
        printf "Portcullis / mod_auth_openidc authenticated throughput: %.2fx  (target >= 3x: %s)\n", pp / mp, (pp / mp >= 3 ? "met" : "NOT met")
        printf "Portcullis session / nginx plain proxy throughput: %.2fx\n", pp / np
        printf "mod_auth_openidc session / nginx plain proxy throughput: %.2fx\n", mp / np
        printf "Portcullis callbacks: %d/s; mod_auth_openidc: %d/s; Portcullis / mod_auth_openidc: %.2fx\n", pl, ml, pl / ml
        printf "Without the provider on their core (1e6 / relying party CPU us per callback, an upper bound): Portcullis %d/s, mod_auth_openidc %d/s\n", 1e6 / pc, 1e6 / mc
    }'
