#!/usr/bin/env bash
# SAML benchmark: Portcullis's built-in `saml` plugin beside Apache httpd with mod_auth_mellon
# (Debian's packages), both as SAML service providers in front of the same nginx upstream that
# proxy.sh uses, with nginx as a plain reverse proxy for reference. See BENCHMARKS.md.
#
#   tests/bench/saml.sh            (or `make bench`)
#
# Two measurements, interleaved over the rounds:
#   - ACS logins per second: each login posts its own pre-signed, valid, unsolicited Response
#     (tests/bench/saml_responses.py) to the SP's Assertion Consumer Service;
#   - authenticated proxy throughput: wrk sends the session cookie of one login on every request.
# Servers on one core and wrk on the other for both; then the logins once more with both SPs
# restarted on every core (and wrk unpinned): what the whole machine takes.
#
# Environment (all optional):
#   CARGO_TARGET_DIR     where cargo builds (binary at $CARGO_TARGET_DIR/release/portcullis);
#                        Apache and mellon are unpacked under it, in bench-mellon/
#   BENCH_DURATION       seconds per measured throughput run            (default 10)
#   BENCH_WARMUP         seconds of warm-up before each throughput run  (default 2)
#   BENCH_CONNECTIONS    wrk connections, for logins and throughput     (default 32)
#   BENCH_ROUNDS         interleaved rounds                             (default 3)
#   BENCH_LOGIN_SECONDS  a login run is given about this many seconds of Responses (default 5)
#   BENCH_LOGIN_WARMUP   Responses posted by the warm-up before each login run    (default 100)
#   BENCH_MIN_LOGINS     fewest Responses in a measured login run       (default 100)
#   BENCH_MAX_LOGINS     most Responses in a measured login run         (default 6000)
#   BENCH_SERVER_CPU     core the servers are pinned to                 (default 0)
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
SERVER_CPU=${BENCH_SERVER_CPU:-0}
CLIENT_CPU=${BENCH_CLIENT_CPU:-1}
NGINX=${NGINX:-/usr/sbin/nginx}
PY="$ROOT/tests/.venv/bin/python"
BODY='hello from upstream'   # the upstream answers this plus "\n"

die() { echo "saml.sh: $*" >&2; exit 1; }

SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
if ! command -v openssl >/dev/null; then   # makes the test keys; nearly always there already
    echo "== installing Debian's openssl"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl
fi
for tool in "$NGINX" wrk taskset curl python3 cargo getconf openssl xmlsec1 apt-get apt-cache dpkg dpkg-deb dpkg-query ldd; do
    command -v "$tool" >/dev/null || die "missing $tool (make bench installs wrk, nginx-light and the test dependencies)"
done
[ -x "$PY" ] || die "missing $PY (make test-deps creates it)"
"$PY" -c 'import saml2' 2>/dev/null || die "pysaml2 is missing from tests/.venv (make test-deps installs it)"
[ "$(nproc)" -ge 2 ] || die "needs at least 2 CPU cores (servers on one, wrk on another)"

# ---------------------------------------------------------------------------------------------
# Cleanup: stop only the processes started here, by pid; remove the temp dir.
PIDS=()      # processes started here (nginx masters, portcullis, the Apache parent)
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
            echo "saml.sh: pid $pid ignored SIGTERM for 10s; sending SIGKILL" >&2
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
# Build.
echo "== building portcullis (release)"
(cd "$ROOT" && cargo build --release --quiet -p portcullis)
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
case "$TARGET_DIR" in /*) ;; *) TARGET_DIR="$ROOT/$TARGET_DIR" ;; esac
PORTCULLIS="$TARGET_DIR/release/portcullis"
[ -x "$PORTCULLIS" ] || die "no binary at $PORTCULLIS"

# ---------------------------------------------------------------------------------------------
# Apache httpd and mod_auth_mellon: Debian's packages, downloaded with apt-get and unpacked with
# dpkg -x, not installed (installing apache2 would start a system service). Only the libraries
# they need that the machine lacks are fetched beside them. Kept between runs in bench-mellon/.
MELLON_DIR="$TARGET_DIR/bench-mellon"
APACHE="$MELLON_DIR/root/usr/sbin/apache2"
MODULES="$MELLON_DIR/root/usr/lib/apache2/modules"
APACHE_MODULES=(mpm_event authn_core authz_core authz_user proxy proxy_http auth_mellon)
apache_libpath() { find "$MELLON_DIR/root" -name '*.so*' -printf '%h\n' 2>/dev/null | sort -u | paste -sd: -; }
apache_ready() {
    local files=("$APACHE") m
    for m in "${APACHE_MODULES[@]}"; do files+=("$MODULES/mod_$m.so"); done
    for m in "${files[@]}"; do [ -f "$m" ] || return 1; done
    ! LD_LIBRARY_PATH=$(apache_libpath) ldd "${files[@]}" 2>&1 | grep -q 'not found'
}
if ! apache_ready; then
    echo "== fetching Debian's apache2-bin and libapache2-mod-auth-mellon into $MELLON_DIR (unpacked, not installed)"
    rm -rf "$MELLON_DIR"
    mkdir -p "$MELLON_DIR/debs" "$MELLON_DIR/root"
    if ! apt-cache show apache2-bin libapache2-mod-auth-mellon >/dev/null 2>&1; then
        $SUDO apt-get update -qq
    fi
    # The two packages, plus the packages of their Depends (recursively, first alternative of
    # each choice) that are not installed here.
    read -r -a DEBS < <(python3 "$ROOT/tests/bench/debs_to_fetch.py" apache2-bin libapache2-mod-auth-mellon)
    echo "   packages: ${DEBS[*]}"
    (cd "$MELLON_DIR/debs" && apt-get download -q "${DEBS[@]}") >"$MELLON_DIR/download.log" 2>&1 ||
        die "apt-get download failed: $(tail -n 5 "$MELLON_DIR/download.log")"
    for deb in "$MELLON_DIR"/debs/*.deb; do dpkg -x "$deb" "$MELLON_DIR/root"; done
    apache_ready || die "Apache or a module it loads misses a library: $(LD_LIBRARY_PATH=$(apache_libpath) ldd "$APACHE" "$MODULES"/mod_auth_mellon.so | grep 'not found')"
fi
APACHE_LIBPATH=$(apache_libpath)
deb_version() { # package: the version unpacked here, or the one installed
    local debs=("$MELLON_DIR"/debs/"$1"_*.deb)
    dpkg-deb -f "${debs[0]}" Version 2>/dev/null || dpkg-query -W -f='${Version}' "$1" 2>/dev/null || echo "?"
}

TMP=$(mktemp -d /tmp/portcullis-saml-bench.XXXXXX)
chmod 755 "$TMP"   # nginx workers and Apache children run as another user when started by root

# Five distinct free ports on 127.0.0.1 (held open together so they differ).
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
# Keys and metadata, made here: one test IdP (never contacted: the Responses are signed ahead),
# and mellon's SP key pair and metadata (Portcullis makes its own SP key pair).
IDP_ENTITY="https://idp.bench.invalid/metadata"
mkdir -p "$TMP/keys"
make_cert() { # name CN
    openssl req -x509 -newkey rsa:2048 -sha256 -nodes -days 30 -subj "/CN=$2" \
        -keyout "$TMP/keys/$1.key" -out "$TMP/keys/$1.crt" 2>/dev/null || die "openssl could not make the $1 key pair"
    chmod 644 "$TMP/keys/$1.key"   # throw-away keys; mellon reads them in Apache's child, as nobody
}
cert_b64() { grep -v -e '-----' "$TMP/keys/$1.crt" | tr -d '\n'; }
make_cert idp "Portcullis bench IdP"
make_cert mellon "mellon bench SP"
cat >"$TMP/keys/idp.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="$IDP_ENTITY">
  <md:IDPSSODescriptor WantAuthnRequestsSigned="true" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="signing">
      <ds:KeyInfo><ds:X509Data><ds:X509Certificate>$(cert_b64 idp)</ds:X509Certificate></ds:X509Data></ds:KeyInfo>
    </md:KeyDescriptor>
    <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="https://idp.bench.invalid/sso"/>
  </md:IDPSSODescriptor>
</md:EntityDescriptor>
EOF
MELLON_BASE="http://127.0.0.1:$APACHE_PORT/mellon"
cat >"$TMP/keys/mellon-sp.xml" <<EOF
<?xml version="1.0" encoding="UTF-8"?>
<md:EntityDescriptor xmlns:md="urn:oasis:names:tc:SAML:2.0:metadata" xmlns:ds="http://www.w3.org/2000/09/xmldsig#" entityID="$MELLON_BASE/metadata">
  <md:SPSSODescriptor AuthnRequestsSigned="true" WantAssertionsSigned="true" protocolSupportEnumeration="urn:oasis:names:tc:SAML:2.0:protocol">
    <md:KeyDescriptor use="signing">
      <ds:KeyInfo><ds:X509Data><ds:X509Certificate>$(cert_b64 mellon)</ds:X509Certificate></ds:X509Data></ds:KeyInfo>
    </md:KeyDescriptor>
    <md:SingleLogoutService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="$MELLON_BASE/logout"/>
    <md:NameIDFormat>urn:oasis:names:tc:SAML:2.0:nameid-format:persistent</md:NameIDFormat>
    <md:AssertionConsumerService index="0" isDefault="true" Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST" Location="$MELLON_BASE/postResponse"/>
  </md:SPSSODescriptor>
</md:EntityDescriptor>
EOF

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

# Portcullis: every path of the edge behind the saml plugin, IdP-initiated logins allowed.
mkdir -p "$TMP/portcullis/data"
cp "$TMP/keys/idp.xml" "$TMP/portcullis/idp.xml"
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
plugin = "saml"
inactivity_timeout = 86400
maximum_duration = 86400
idp_metadata = { file = "idp.xml" }
allow_idp_initiated = true
EOF

# Apache: one event-MPM child (64 threads: every connection has one), no access log (as nginx's
# access_log off), keep-alive without limit, mod_proxy_http to the upstream (its pool keeps the
# connections), and mellon on every path with its defaults (MellonCacheSize 100 sessions).
APACHE_DIR="$TMP/apache"
mkdir -p "$APACHE_DIR/logs" "$APACHE_DIR/run"
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
MellonLockFile "$APACHE_DIR/run/mellon.lock"
ProxyPass /mellon/ !
ProxyPass / http://127.0.0.1:$UP_PORT/
<Location />
    AuthType Mellon
    MellonEnable auth
    Require valid-user
    MellonEndpointPath /mellon
    MellonSPPrivateKeyFile "$TMP/keys/mellon.key"
    MellonSPCertFile "$TMP/keys/mellon.crt"
    MellonSPMetadataFile "$TMP/keys/mellon-sp.xml"
    MellonIdPMetadataFile "$TMP/keys/idp.xml"
    MellonSecureCookie Off
    MellonDefaultLoginPath /
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

# The login load: args PATH COOKIE LOCATION FILE. Posts each line of FILE (a form body with one
# SAMLResponse) once, in order, over all connections, then stops wrk (SIGINT to itself: wrk
# reports at once). A response is right when it is 303 to LOCATION and sets the cookie COOKIE.
# The login rate is timed here (LuaJIT's FFI, CLOCK_MONOTONIC): from the first request sent to
# the last response received, so wrk's start-up (reading FILE) and stop are not in it.
cat >"$TMP/login.lua" <<'EOF'
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
    path, cookie, location = args[1], args[2] .. "=", args[3]
    reqs = {}
    local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
    for line in io.lines(args[4]) do
        reqs[#reqs + 1] = wrk.format("POST", path, headers, line)
    end
    total, reserved, sent, seen, bad = #reqs, 0, 0, 0, 0
    t0, t1, first_bad = 0, 0, ""
end

-- A connection takes the next Response only if one is left; otherwise it waits (an hour: longer
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
    if status ~= 303 or loc ~= location or string.sub(set_cookie, 1, #cookie) ~= cookie then
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
# The API key (made before the server starts, in its data dir) reads the module's ACS URL.
API_KEY=$("$PORTCULLIS" api-key create --description saml-bench --config "$TMP/portcullis/config.toml" \
    --data-dir "$TMP/portcullis/data" 2>"$TMP/portcullis/api-key.log") || die "api-key create failed: $(cat "$TMP/portcullis/api-key.log")"
# The two SPs: started pinned to the server core, and again on every core for the last runs.
start_portcullis() { # cpus -> PC_PID
    taskset -c "$1" "$PORTCULLIS" serve --config "$TMP/portcullis/config.toml" \
        --data-dir "$TMP/portcullis/data" >>"$TMP/portcullis/stdout.log" 2>&1 &
    PC_PID=$!
    PIDS+=("$PC_PID")
}
start_apache() { # cpus -> AP_PID
    taskset -c "$1" env LD_LIBRARY_PATH="$APACHE_LIBPATH" "$APACHE" -d "$APACHE_DIR" \
        -f "$APACHE_DIR/httpd.conf" -DFOREGROUND >>"$APACHE_DIR/logs/stdout.log" 2>&1 &
    AP_PID=$!
    PIDS+=("$AP_PID")
}
start_portcullis "$SERVER_CPU"
start_apache "$SERVER_CPU"

wait_http "http://127.0.0.1:$UP_PORT/" "the nginx upstream" "$TMP/upstream/logs/error.log"
wait_http "http://127.0.0.1:$NGX_PORT/" "the nginx proxy" "$TMP/nginx/logs/error.log"
wait_http "http://127.0.0.1:$CONSOLE_PORT/healthz" "portcullis" "$TMP/portcullis/stdout.log"
wait_http "http://127.0.0.1:$APACHE_PORT/mellon/metadata" "Apache (mellon)" "$APACHE_DIR/logs/error.log"

# The SAML module's endpoints, as the API reports them.
curl -fsS -H "Authorization: Bearer $API_KEY" -H "Ngrok-Version: 2" \
    "http://127.0.0.1:$CONSOLE_PORT/api/edges/https" >"$TMP/edges.json" || die "GET /api/edges/https failed"
read -r PC_ACS PC_ENTITY < <(python3 - "$TMP/edges.json" <<'EOF'
import json, sys
edges = json.load(open(sys.argv[1]))["https_edges"]
modules = [r["saml"] for e in edges for r in e.get("routes", []) if r.get("saml")]
if len(modules) != 1:
    sys.exit(f"expected one route with a saml module, found {len(modules)}")
print(modules[0]["assertion_consumer_service_url"], modules[0]["entity_id"])
EOF
) || die "no SAML module in the API's answer: $(head -c 2000 "$TMP/edges.json")"
MELLON_ACS="$MELLON_BASE/postResponse"
MELLON_ENTITY="$MELLON_BASE/metadata"
curl -fsS "$MELLON_ENTITY" | grep -q "entityID=\"$MELLON_ENTITY\"" || die "mellon serves other SP metadata than the one written here"

# Per login target: Portcullis's and mellon's ACS, entity id, session cookie name, and the
# Location a successful login answers (the RelayState "/", as each writes it).
declare -A ACS ENTITY COOKIE LOCATION BASE PROCS URL
ACS[portcullis]=$PC_ACS;       ENTITY[portcullis]=$PC_ENTITY;       COOKIE[portcullis]="portcullis.session"
ACS[mellon]=$MELLON_ACS;       ENTITY[mellon]=$MELLON_ENTITY;       COOKIE[mellon]="mellon-cookie"
BASE[portcullis]="http://127.0.0.1:$EDGE_PORT"
BASE[mellon]="http://127.0.0.1:$APACHE_PORT"
for t in portcullis mellon; do
    case "${ACS[$t]}" in "${BASE[$t]}"/*) ;; *) die "$t: ACS ${ACS[$t]} is not on ${BASE[$t]}" ;; esac
done

# Makes COUNT fresh Responses for login target $1 into FILE (not timed).
GENERATED=0
make_responses() { # target count file [--check]
    GENERATED=$((GENERATED + 1))
    "$PY" "$ROOT/tests/bench/saml_responses.py" --key "$TMP/keys/idp.key" --cert "$TMP/keys/idp.crt" \
        --issuer "$IDP_ENTITY" --acs "${ACS[$1]}" --audience "${ENTITY[$1]}" --count "$2" --out "$3" \
        --tag "$1-$GENERATED" ${4:+"$4"} >"$TMP/gen.log" 2>&1 || die "saml_responses.py failed: $(tail -n 20 "$TMP/gen.log")"
}

# One login with a fresh Response, as a browser posts it: sets SESSION to the cookie pair.
# Each answer is shown whole when it is not the expected 303 with the session cookie.
login_once() { # target
    local t=$1
    make_responses "$t" 1 "$TMP/one.txt" --check
    curl -sS -o "$TMP/login.body" -D "$TMP/login.h" --data @"$TMP/one.txt" -H 'Content-Type: application/x-www-form-urlencoded' \
        "${ACS[$t]}" || die "$t: the ACS post failed"
    SESSION=$(sed -n "s/^[Ss]et-[Cc]ookie: \(${COOKIE[$t]//./\\.}=[^;]*\).*/\1/p" "$TMP/login.h" | tr -d '\r' | head -1)
    LOGIN_LOCATION=$(sed -n 's/^[Ll]ocation: //p' "$TMP/login.h" | tr -d '\r')
    if [ -z "$SESSION" ] || ! head -1 "$TMP/login.h" | grep -q ' 303'; then
        echo "saml.sh: $t refused a valid Response: $(head -1 "$TMP/login.h")" >&2
        cat "$TMP/login.h" "$TMP/login.body" >&2
        grep -h -i saml "$TMP/portcullis/stdout.log" 2>/dev/null | tail -n 5 >&2 || true
        tail -n 5 "$APACHE_DIR/logs/error.log" >&2 || true
        exit 1
    fi
}

# Each SP must take a valid Response (303, session cookie), and the session must reach the
# upstream's exact body; the same Response posted again must be refused (replay).
declare -A replay
for t in portcullis mellon; do
    login_once "$t"
    LOCATION[$t]=$LOGIN_LOCATION
    [ "${LOCATION[$t]}" = / ] || [ "${LOCATION[$t]}" = "${BASE[$t]}/" ] || die "$t: a login answered Location ${LOCATION[$t]}, not /"
    got=$(curl -sS --max-time 5 -w '%{http_code}' -H "Cookie: $SESSION" "${BASE[$t]}/") || die "$t: request with the session failed"
    [ "$got" = "$BODY"$'\n'"200" ] || die "$t: unexpected answer to GET / with a session: $(printf %q "$got")"
    code=$(curl -sS -o /dev/null -w '%{http_code}' "${BASE[$t]}/") || die "$t: anonymous request failed"
    case "$code" in 30[1-37]) ;; *) die "$t: an anonymous GET / answered $code, not a redirect to the IdP" ;; esac
    code=$(curl -sS -o /dev/null -w '%{http_code}' --data @"$TMP/one.txt" \
        -H 'Content-Type: application/x-www-form-urlencoded' "${ACS[$t]}") || die "$t: the replayed ACS post failed"
    case "$code" in 4??) ;; *) die "$t: the same Response posted twice was taken twice (answered $code)" ;; esac
    replay[$t]=$code
done
echo "   Portcullis ACS ${ACS[portcullis]}; mellon ACS ${ACS[mellon]}"
echo "   a replayed Response: Portcullis answered ${replay[portcullis]}, mellon ${replay[mellon]}"

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
PROCS[mellon]=$AP_PROCS
PROCS[nginx]=$NGX_PROCS
URL[nginx]="http://127.0.0.1:$NGX_PORT/"
URL[portcullis]="${BASE[portcullis]}/"
URL[mellon]="${BASE[mellon]}/"
LOGIN_TARGETS=(portcullis mellon)
PROXY_TARGETS=(nginx portcullis mellon)

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

WRK_CPUS=$CLIENT_CPU   # every core for the whole-machine login runs
run_wrk() { # url seconds outfile header
    taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNECTIONS" -d"$2s" --latency -s "$TMP/check.lua" -H "$4" "$1" >"$3" 2>&1
}

# Posts every Response of FILE to target $1's ACS; wrk is stopped by the script when done (the
# 600 s is only a bound). --timeout: with 32 logins in flight a slow SP takes seconds per login.
run_logins() { # target file outfile
    local path=${ACS[$1]#"${BASE[$1]}"}
    taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNECTIONS" -d600s --timeout 10s --latency -s "$TMP/login.lua" \
        "${BASE[$1]}/" -- "$path" "${COOKIE[$1]}" "${LOCATION[$1]}" "$2" >"$3" 2>&1
}

field() { sed -n "s/^BENCH .*\b$2=\([0-9]*\).*/\1/p" "$1"; }

# Noise control, as in proxy.sh. Other work on the machine (a build, say) skews the figures, so:
# before each run wait (up to BENCH_QUIET_WAIT s) until the machine is quiet, and after each run
# report "other", the CPU used by processes that are neither these servers nor wrk nor kernel
# threads (the kernel's network work for the benchmark runs partly in ksoftirqd: "kernel"), in %
# of one core. "wrk" is the load generator's own CPU: near 100% means the client was the limit.
QUIET_WAIT=${BENCH_QUIET_WAIT:-15}
MAX_OTHER_OK=${BENCH_MAX_OTHER:-10}
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PROCS $AP_PROCS"
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
# client, kernel and other (% of one core over the run's wall time).
bracketed() { # procs -- command...
    local procs=$1 before after all_before all_after wrk_before wrk_after k_before k_after m_before m_after t0 t1 wall
    shift 2
    # shellcheck disable=SC2086
    before=$(cpu_ticks $procs)
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
    after=$(cpu_ticks $procs)
    wall=$((t1 - t0)); [ "$wall" -gt 0 ] || wall=1
    cpu_ticks_used=$((after - before))
    kernel=$(( (k_after - k_before) * 100000 / (CLK_TCK * wall) ))
    client=$(( (wrk_after - wrk_before) * 100000 / (CLK_TCK * wall) ))
    other=$(( ((m_after - m_before) - (all_after - all_before) - (wrk_after - wrk_before)
        - (k_after - k_before)) * 100000 / (CLK_TCK * wall) ))
    if [ "$other" -lt 0 ]; then other=0; fi
}

# Dies with the run's output (and the servers' SAML log lines) unless every response was right.
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
        echo "saml.sh: $what: $bad wrong responses, $errs socket/status errors," \
            "$checked checked of $reqs requests$([ "$want" -eq 0 ] || echo " (expected $want)"):" >&2
        cat "$out" >&2
        echo "-- Portcullis log (SAML lines):" >&2
        grep -i 'saml' "$TMP/portcullis/stdout.log" | tail -n 5 >&2 || true
        echo "-- Apache error log:" >&2
        tail -n 5 "$APACHE_DIR/logs/error.log" >&2 || true
        exit 1
    fi
}

# One measured login run of target $1 in round $2: sets rate, p99, cpu, client, kernel, other,
# reqs. Fresh Responses are made first (a warm-up batch, then the measured batch), sized from
# the last rate seen so that the run lasts about BENCH_LOGIN_SECONDS.
declare -A LAST_RATE
measure_login() {
    local t=$1 round=$2 out="$TMP/login-$1-$2.txt" n elapsed warm_rate
    make_responses "$t" "$LOGIN_WARMUP" "$TMP/warm.txt"
    run_logins "$t" "$TMP/warm.txt" "$out.warmup" || die "$t: wrk login warm-up failed: $(cat "$out.warmup")"
    check_run "$t logins, round $round warm-up" "$out.warmup" "$LOGIN_WARMUP"
    warm_rate=$(awk -v n="$LOGIN_WARMUP" -v us="$(field "$out.warmup" elapsed_us)" 'BEGIN { printf "%.0f\n", n / (us / 1e6) }')
    n=$(awk -v r="${LAST_RATE[$t]:-$warm_rate}" -v s="$LOGIN_SECONDS" -v lo="$MIN_LOGINS" -v hi="$MAX_LOGINS" \
        'BEGIN { n = int(r * s); if (n < lo) n = lo; if (n > hi) n = hi; print n }')
    make_responses "$t" "$n" "$TMP/logins.txt"
    wait_quiet
    bracketed "${PROCS[$t]}" -- run_logins "$t" "$TMP/logins.txt" "$out" || die "$t: wrk logins failed: $(cat "$out")"
    check_run "$t logins, round $round" "$out" "$n"
    reqs=$n
    elapsed=$(field "$out" elapsed_us)
    p99=$(field "$out" p99_us)
    read -r rate cpu < <(awk -v r="$reqs" -v d="$elapsed" -v dt="$cpu_ticks_used" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.1f\n", r / (d / 1e6), dt / hz * 1e6 / r }')
    LAST_RATE[$t]=$rate
}

# One measured throughput run of target $1 in round $2 (as proxy.sh's): sets rate, p99, cpu,
# client, kernel, other, reqs. Portcullis and mellon get a session from one login first.
measure_proxy() {
    local t=$1 round=$2 out="$TMP/wrk-$1-$2.txt" dur hdr="X-Bench: 1"
    if [ "$t" != nginx ]; then
        login_once "$t"
        hdr="Cookie: $SESSION"
    fi
    wait_quiet
    run_wrk "${URL[$t]}" "$WARMUP" "$out.warmup" "$hdr" || die "$t: wrk warm-up failed: $(cat "$out.warmup")"
    bracketed "${PROCS[$t]}" -- run_wrk "${URL[$t]}" "$DURATION" "$out" "$hdr" || die "$t: wrk failed: $(cat "$out")"
    check_run "$t proxy, round $round" "$out" 0
    reqs=$(field "$out" requests)
    dur=$(field "$out" duration_us)
    p99=$(field "$out" p99_us)
    read -r rate cpu < <(awk -v r="$reqs" -v d="$dur" -v dt="$cpu_ticks_used" -v hz="$CLK_TCK" \
        'BEGIN { printf "%.0f %.2f\n", r / (d / 1e6), dt / hz * 1e6 / r }')
}

# A run during which other processes took more than BENCH_MAX_OTHER % of a core is measured
# again, at most BENCH_RETRIES times over the whole benchmark.
RETRIES_LEFT=${BENCH_RETRIES:-6}
declare -A RES   # RES[kind-target,round]="rate p99_us cpu_us"
MAX_OTHER=0
NOISY=0
RETRIED=0
STARTED=$(date +%s)
measured() { # kind target round
    local kind=$1 t=$2 round=$3 unit
    while :; do
        if [ "$kind" = proxy ]; then measure_proxy "$t" "$round"; unit="req/s"; else measure_login "$t" "$round"; unit="logins/s"; fi
        printf '   round %d  %-7s %-10s %7s %-8s  p99 %7s us  %8s CPU us/%s  wrk %3s%%  kernel %3s%%  other %3s%%  (%d responses, all checked)\n' \
            "$round" "$kind" "$t" "$rate" "$unit" "$p99" "$cpu" "$([ "$kind" = proxy ] && echo req || echo login)" \
            "$client" "$kernel" "$other" "$reqs"
        if [ "$other" -gt "$MAX_OTHER_OK" ] && [ "$RETRIES_LEFT" -gt 0 ]; then
            RETRIES_LEFT=$((RETRIES_LEFT - 1))
            RETRIED=$((RETRIED + 1))
            echo "   (other processes took ${other}% of a core: run discarded, measuring again)"
            continue
        fi
        break
    done
    RES[$kind-$t,$round]="$rate $p99 $cpu"
    if [ "$other" -gt "$MAX_OTHER" ]; then MAX_OTHER=$other; fi
    if [ "$other" -gt "$MAX_OTHER_OK" ]; then NOISY=$((NOISY + 1)); fi
}

# The replays above were refused (and logged); none may be refused from here on.
REFUSED_BEFORE=$(grep -c 'SAML response refused' "$TMP/portcullis/stdout.log" || true)

echo "== measuring: $ROUNDS rounds of logins (Portcullis, mellon) and proxying (nginx, Portcullis, mellon)"
for round in $(seq "$ROUNDS"); do
    for t in "${LOGIN_TARGETS[@]}"; do measured login "$t" "$round"; done
    for t in "${PROXY_TARGETS[@]}"; do measured proxy "$t" "$round"; done
done

# Logins on the whole machine: both SPs restarted on every core (Portcullis then runs one edge
# worker per core, Apache's one child spreads its threads), wrk on any core too. The same fresh
# Responses, checks and noise control as above.
ALL_CPUS="0-$(($(nproc) - 1))"
echo "== measuring: $ROUNDS rounds of logins with the SPs and wrk on every core ($ALL_CPUS)"
stop_server() { # pid: SIGTERM, then wait for it (both SPs stop at once when idle)
    kill -TERM "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
stop_server "$PC_PID"
stop_server "$AP_PID"
start_portcullis "$ALL_CPUS"
start_apache "$ALL_CPUS"
wait_http "http://127.0.0.1:$CONSOLE_PORT/healthz" "portcullis" "$TMP/portcullis/stdout.log"
wait_http "http://127.0.0.1:$APACHE_PORT/mellon/metadata" "Apache (mellon)" "$APACHE_DIR/logs/error.log"
AP_PROCS="$AP_PID $(children "$AP_PID" | tr '\n' ' ')"
[ "$(wc -w <<<"$AP_PROCS")" -ge 2 ] || die "Apache has no child"
# shellcheck disable=SC2206
WORKERS+=(${AP_PROCS#* })
PROCS[portcullis]=$PC_PID
PROCS[mellon]=$AP_PROCS
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PID $AP_PROCS"
WRK_CPUS=$ALL_CPUS
LAST_RATE=()
for round in $(seq "$ROUNDS"); do
    for t in "${LOGIN_TARGETS[@]}"; do measured machine "$t" "$round"; done
done
ELAPSED=$(($(date +%s) - STARTED))

# Portcullis refused no Response during the runs (check_run counted every answer already; this
# also catches a refusal logged by the plugin whose answer still looked right).
if [ "$(grep -c 'SAML response refused' "$TMP/portcullis/stdout.log" || true)" -ne "$REFUSED_BEFORE" ]; then
    echo "saml.sh: Portcullis logged refusals during the runs:" >&2
    grep 'SAML response refused' "$TMP/portcullis/stdout.log" | tail -n +$((REFUSED_BEFORE + 1)) | head -n 5 >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# Report.
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print v[int((NR + 1) / 2)] }'; }
declare -A MED
KEYS=(login-portcullis login-mellon machine-portcullis machine-mellon proxy-nginx proxy-portcullis proxy-mellon)
for k in "${KEYS[@]}"; do
    for i in 0 1 2; do
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
        login-portcullis) echo "Portcullis (saml plugin)" ;;
        login-mellon) echo "Apache + mod_auth_mellon" ;;
        machine-portcullis) echo "Portcullis, every core" ;;
        machine-mellon) echo "Apache + mellon, every core" ;;
        proxy-nginx) echo "nginx reverse proxy (no auth)" ;;
        proxy-portcullis) echo "Portcullis, SAML session" ;;
        proxy-mellon) echo "Apache + mellon, session" ;;
    esac
}

echo
echo "== machine"
echo "cpus:    $(nproc)"
echo "cpu:     $(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)"
echo "kernel:  $(uname -srm)"
echo "nginx:   $("$NGINX" -v 2>&1)"
echo "apache:  $(LD_LIBRARY_PATH="$APACHE_LIBPATH" "$APACHE" -v | head -1 | sed 's/^Server version: //')" \
    "(apache2-bin $(deb_version apache2-bin)), mod_auth_mellon $(deb_version libapache2-mod-auth-mellon)," \
    "liblasso3 $(deb_version liblasso3)"
echo "wrk:     $(wrk -v 2>&1 | head -1 || true)"
echo "rustc:   $(rustc --version)"
echo "setup:   servers on core $SERVER_CPU, wrk on core $CLIENT_CPU; wrk -t1 -c$CONNECTIONS; $ROUNDS interleaved rounds; medians"
echo "         then logins again with both SPs restarted on cores $ALL_CPUS and wrk unpinned"
echo "         logins: each run posts its own fresh signed Responses (about ${LOGIN_SECONDS}s of them, at most $MAX_LOGINS)" \
    "after a warm-up of $LOGIN_WARMUP; proxy: -d${DURATION}s after a ${WARMUP}s warm-up, session of one login"
echo
echo "== per round (rate / p99 us / server CPU us per login or request)"
printf '| %-30s |' target
for round in $(seq "$ROUNDS"); do printf ' %-26s |' "round $round"; done
echo
printf '|%s|' "--------------------------------"
for round in $(seq "$ROUNDS"); do printf '%s|' "----------------------------"; done
echo
for k in "${KEYS[@]}"; do
    printf '| %-30s |' "$(label "$k")"
    for round in $(seq "$ROUNDS"); do
        read -r -a r <<<"${RES[$k,$round]}"
        printf ' %-26s |' "${r[0]} / ${r[1]} / ${r[2]}"
    done
    echo
done
echo
echo "== logins (median of $ROUNDS runs; CPU = server processes' utime+stime per login)"
printf '| %-30s | %9s | %9s | %12s |\n' target "logins/s" "p99 (ms)" "CPU us/login"
printf '|%s|%s|%s|%s|\n' "--------------------------------" "----------:" "----------:" "-------------:"
for k in login-portcullis login-mellon machine-portcullis machine-mellon; do
    printf '| %-30s | %9s | %9s | %12s |\n' "$(label "$k")" "${MED[$k,0]}" \
        "$(awk -v v="${MED[$k,1]}" 'BEGIN { printf "%.1f", v / 1000 }')" "${MED[$k,2]}"
done
echo
echo "== authenticated proxy throughput (median of $ROUNDS runs; CPU = server processes' utime+stime per request)"
printf '| %-30s | %9s | %9s | %12s |\n' target "req/s" "p99 (us)" "CPU us/req"
printf '|%s|%s|%s|%s|\n' "--------------------------------" "----------:" "----------:" "-------------:"
for k in proxy-nginx proxy-portcullis proxy-mellon; do
    printf '| %-30s | %9s | %9s | %12s |\n' "$(label "$k")" "${MED[$k,0]}" "${MED[$k,1]}" "${MED[$k,2]}"
done
echo
echo "Other processes used at most ${MAX_OTHER}% of a core during a kept run;" \
    "$RETRIED noisy run(s) were discarded and measured again. Measuring took ${ELAPSED}s."
if [ "$NOISY" -gt 0 ]; then
    echo "WARNING: $NOISY kept run(s) had other processes above ${MAX_OTHER_OK}% of a core: the figures are noisy."
fi
echo
awk -v pl="${MED[login-portcullis,0]}" -v ml="${MED[login-mellon,0]}" \
    -v al="${MED[machine-portcullis,0]}" -v aml="${MED[machine-mellon,0]}" -v cores="$(nproc)" \
    -v pp="${MED[proxy-portcullis,0]}" -v mp="${MED[proxy-mellon,0]}" -v np="${MED[proxy-nginx,0]}" \
    'BEGIN {
        printf "Portcullis logins: %d/s on one core, %d/s on all %d cores  (target >= 1000/s on this machine: %s)\n", pl, al, cores, (al >= 1000 ? "met" : "NOT met")
        printf "Portcullis / mellon logins: %.1fx on one core, %.1fx on all cores\n", pl / ml, al / aml
        printf "Portcullis / mellon authenticated throughput: %.2fx  (target >= 2x: %s)\n", pp / mp, (pp / mp >= 2 ? "met" : "NOT met")
        printf "Portcullis session / nginx plain proxy throughput: %.2fx\n", pp / np
        printf "mellon session / nginx plain proxy throughput: %.2fx\n", mp / np
    }'
