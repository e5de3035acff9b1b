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
#   BENCH_LOG_LEVEL      Portcullis's log level                         (default warn)
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

BENCH_NAME=oidc.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/tests/bench/lib.sh"
OPENIDC_USERINFO=${BENCH_OPENIDC_USERINFO:-0}
FORGE="$ROOT/tests/peers/oidc_forge.mjs"
SIGNINS="$ROOT/tests/bench/oidc_signins.py"

require_tools "make bench installs wrk, nginx-light and the test dependencies, node among them" \
    "$NGINX" wrk taskset curl python3 node cargo getconf apt-get apt-cache dpkg dpkg-deb dpkg-query ldd
[ -f "$FORGE" ] || die "missing $FORGE"
require_two_cores

RUN_STARTED=$(date +%s)

# ---------------------------------------------------------------------------------------------
# Build.
build_portcullis portcullis

# Apache httpd and mod_auth_openidc, as lib.sh's fetch_apache fetches them (Debian's packages,
# unpacked, not installed), kept between runs in bench-openidc/.
fetch_apache "$TARGET_DIR/bench-openidc" libapache2-mod-auth-openidc \
    mpm_event authn_core authz_core authz_user alias proxy proxy_http auth_openidc

make_tmp portcullis-oidc-bench
# Five ports (the forges pick their own).
read -r UP_PORT NGX_PORT EDGE_PORT CONSOLE_PORT APACHE_PORT < <(free_ports 5)

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
nginx_confs

# Portcullis: every path of the edge behind the oidc plugin (an http issuer is accepted on
# loopback), with its defaults otherwise (scopes openid profile email, client_secret_basic).
portcullis_conf
cat >>"$TMP/portcullis/config.toml" <<EOF
[edges.bench.routes.auth]
plugin = "oidc"
inactivity_timeout = 86400
maximum_duration = 86400
issuer = "$ISSUER_PC"
client_id = "portcullis-bench"
client_secret = "$PC_SECRET"
EOF

# Apache (lib.sh's apache_conf_head), mod_proxy_http to the upstream (its pool keeps the
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
    apache_conf_head
    cat <<EOF
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

write_check_lua

# The callback load (lib.sh's write_login_lua): args STATUS COOKIE LOCATION FILE. Sends each line
# of FILE (the callback's path and query, a tab, the binding cookie) as a GET with that cookie; a
# response is right when it is STATUS to LOCATION and sets the session cookie COOKIE (wrk keeps
# the last of repeated headers: both relying parties set the session cookie last). The
# User-Agent is the one the sign-ins were started with (mod_auth_openidc binds its state to it).
write_login_lua "$TMP/callback.lua" <<'EOF'
    want_status, cookie, location = tonumber(args[1]), args[2] .. "=", args[3]
    reqs = {}
    for line in io.lines(args[4]) do
        local path, binding = string.match(line, "^([^\t]+)\t(.+)$")
        reqs[#reqs + 1] = wrk.format("GET", path, { ["Cookie"] = binding, ["Accept"] = "text/html", ["User-Agent"] = "oidc-bench" })
    end
EOF

# ---------------------------------------------------------------------------------------------
# Start the servers, each pinned to the server core.
start_nginxes
# The API key (made before the server starts, in its data dir) reads the module's redirect URI.
make_api_key oidc-bench
start_portcullis "$SERVER_CPU"
start_apache "$SERVER_CPU"

wait_nginxes
wait_http "http://127.0.0.1:$CONSOLE_PORT/healthz" "portcullis" "$TMP/portcullis/stdout.log"
wait_http "$AP_BASE/bench-provider/openid-configuration.json" "Apache (mod_auth_openidc)" "$APACHE_DIR/logs/error.log"

# The OIDC module's redirect URI, as the API reports it; each client registered at its forge.
get_edges
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

auth_targets openidc
PROVIDER[portcullis]=$FORGE_PC_PID
PROVIDER[openidc]=$FORGE_AP_PID

# ---------------------------------------------------------------------------------------------
# Measure.
CLK_TCK=$(getconf CLK_TCK)

# Sends every callback of FILE to target $1; wrk is stopped by the script when done (the 600 s
# is only a bound). --timeout: with 32 sign-ins in flight a slow relying party takes seconds each.
run_logins() { # target file outfile
    taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNECTIONS" -d600s --timeout 10s --latency -s "$TMP/callback.lua" \
        "${BASE[$1]}/" -- "${LOGIN_STATUS[$1]}" "${COOKIE[$1]}" "${LOCATION[$1]}" "$2" >"$3" 2>&1
}

# Noise control: lib.sh's (as in proxy.sh); the forges count as the benchmark's own processes.
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PROCS $AP_PROCS $FORGE_PC_PID $FORGE_AP_PID"

failure_logs() { # after a wrong run: the relying parties' and providers' last lines
    echo "-- Portcullis log:" >&2
    tail -n 5 "$TMP/portcullis/stdout.log" >&2 || true
    echo "-- Apache error log:" >&2
    grep -v 'dropping LRU entry' "$APACHE_DIR/logs/error.log" | tail -n 5 >&2 || true
    echo "-- forge logs:" >&2
    tail -n 3 "$TMP"/forge-*/forge.log >&2 || true
}

# Starts COUNT sign-ins of target $1 ahead of time into FILE (not timed; lib.sh's measure_login,
# whose login runs are the callbacks). mod_auth_openidc's 500-entry session cache is cycled by
# them, hence a session from a new real login before each throughput run (measure_proxy).
LOGIN_NOUN=callbacks
SIGNIN_LOG="$TMP/signins.log"
make_logins() { # target count file
    python3 "$SIGNINS" --start "${BASE[$1]}/" --callback "${CALLBACK[$1]}" --cookie "${BINDING[$1]}" \
        --count "$2" --out "$3" --windows "$TMP/windows-$1.json" >>"$SIGNIN_LOG" 2>&1 ||
        die "oidc_signins.py failed: $(tail -n 20 "$SIGNIN_LOG")"
}

# Measures (again while noisy: lib.sh's retry_noisy) and keeps
# RES[kind-target,round]="rate p99_us cpu_us provider_cpu_us responses".
STARTED=$(date +%s)
measured() { # kind target round
    local kind=$1 t=$2 round=$3 unit
    while :; do
        if [ "$kind" = login ]; then measure_login "$t" "$round"; unit="logins/s"; else measure_proxy "$t" "$round"; unit="req/s"; fi
        printf '   round %d  %-5s %-10s %7s %-8s  p99 %7s us  %8s CPU us/%s%s  wrk %3s%%  kernel %3s%%  other %3s%%  (%d responses, all checked)\n' \
            "$round" "$kind" "$t" "$rate" "$unit" "$p99" "$cpu" "$([ "$kind" = login ] && echo login || echo req)" \
            "$([ "$kind" = login ] && printf ' + provider %6s' "$pcpu")" "$client" "$kernel" "$other" "$reqs"
        retry_noisy || break
    done
    keep_run "$kind-$t,$round" "$rate $p99 $cpu $pcpu $reqs"
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
KEYS=(login-portcullis login-openidc proxy-nginx proxy-portcullis proxy-openidc)
medians 4 "${KEYS[@]}"
label() {
    case $1 in
        login-portcullis) echo "Portcullis (oidc plugin)" ;;
        login-openidc) echo "Apache + mod_auth_openidc" ;;
        proxy-nginx) echo "nginx reverse proxy (no auth)" ;;
        proxy-portcullis) echo "Portcullis, OIDC session" ;;
        proxy-openidc) echo "Apache + mod_auth_openidc, session" ;;
    esac
}

report_machine
echo "apache:  $(apache_version), mod_auth_openidc $(deb_version libapache2-mod-auth-openidc), libcjose0 $(deb_version libcjose0)"
echo "node:    $(node --version) (the provider: tests/peers/oidc_forge.mjs, one per relying party)"
report_tools
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
echo "Portcullis logged $PC_LOG_LINES line(s) at log level $LOG_LEVEL (the replay check's among them). mod_auth_openidc" \
    "logged $LRU_DROPS 'dropping LRU entry' warning(s) over $(grep -c 'token issued' "$TMP/forge-openidc/forge.log" || true)" \
    "sign-ins (its default shm cache keeps 500 entries: sessions, nonces, metadata, JWKS)."
report_noise_warning
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
