#!/usr/bin/env bash
# SAML benchmark: Portcullis's built-in `saml` plugin beside Apache httpd with mod_auth_mellon
# (Debian's packages), both as SAML service providers in front of the same nginx upstream that
# proxy.sh uses, with nginx as a plain reverse proxy for reference. See BENCHMARKS.md.
#
#   tests/bench/saml.sh            (or `make bench`)
#
# Three measurements, interleaved over the rounds:
#   - full sign-ins per second, SP-initiated (tests/bench/saml_roundtrips.py): the browser's GET
#     of a protected URL gets a signed AuthnRequest (HTTP-Redirect), the IdP verifies it and
#     answers it with a fresh signed Response to its ID, the browser posts that to the ACS; the
#     IdP's signing runs in the client, on the client's core, and the SP's CPU per sign-in is
#     reported beside the rate;
#   - ACS logins per second: each login posts its own pre-signed, valid, unsolicited Response
#     (tests/bench/saml_responses.py) to the SP's Assertion Consumer Service;
#   - authenticated proxy throughput: wrk sends the session cookie of one login on every request.
# Servers on one core and the client (wrk, or saml_roundtrips.py) on the other; then the ACS
# logins once more with both SPs restarted on every core (and wrk unpinned): what the whole
# machine takes.
#
# Environment (all optional):
#   CARGO_TARGET_DIR     where cargo builds (binary at $CARGO_TARGET_DIR/release/portcullis);
#                        Apache and mellon are unpacked under it, in bench-mellon/
#   BENCH_DURATION       seconds per measured throughput run            (default 10)
#   BENCH_WARMUP         seconds of warm-up before each throughput run  (default 2)
#   BENCH_CONNECTIONS    wrk connections, for logins and throughput     (default 32)
#   BENCH_ROUNDS         interleaved rounds                             (default 3)
#   BENCH_LOGIN_SECONDS  a login run is given about this many seconds of sign-ins (default 5)
#   BENCH_LOGIN_WARMUP   sign-ins of the warm-up before each login run  (default 100)
#   BENCH_MIN_LOGINS     fewest sign-ins in a measured login run        (default 100)
#   BENCH_MAX_LOGINS     most sign-ins in a measured login run          (default 6000)
#   BENCH_LOG_LEVEL      Portcullis's log level                         (default warn)
#   BENCH_SERVER_CPU     core the servers are pinned to                 (default 0)
#   BENCH_CLIENT_CPU     core wrk is pinned to                          (default 1)
#   BENCH_QUIET_WAIT     seconds to wait for a quiet machine before each run (default 15)
#   BENCH_MAX_OTHER      % of a core other processes may take during a kept run (default 10)
#   BENCH_RETRIES        how many noisy runs may be measured again, in total   (default 6)
#
# Every server is started by this script, bound to 127.0.0.1 only, and stopped by pid on exit.
set -euo pipefail

BENCH_NAME=saml.sh
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=SCRIPTDIR/lib.sh
. "$ROOT/tests/bench/lib.sh"
PY="$ROOT/tests/.venv/bin/python"

if ! command -v openssl >/dev/null; then   # makes the test keys; nearly always there already
    echo "== installing Debian's openssl"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq openssl
fi
require_tools "make bench installs wrk, nginx-light and the test dependencies" \
    "$NGINX" wrk taskset curl python3 cargo getconf openssl xmlsec1 apt-get apt-cache dpkg dpkg-deb dpkg-query ldd
[ -x "$PY" ] || die "missing $PY (make test-deps creates it)"
"$PY" -c 'import saml2' 2>/dev/null || die "pysaml2 is missing from tests/.venv (make test-deps installs it)"
require_two_cores

# ---------------------------------------------------------------------------------------------
# Build.
build_portcullis portcullis

# Apache httpd and mod_auth_mellon, as lib.sh's fetch_apache fetches them (Debian's packages,
# unpacked, not installed), kept between runs in bench-mellon/.
fetch_apache "$TARGET_DIR/bench-mellon" libapache2-mod-auth-mellon \
    mpm_event authn_core authz_core authz_user proxy proxy_http auth_mellon

make_tmp portcullis-saml-bench
read -r UP_PORT NGX_PORT EDGE_PORT CONSOLE_PORT APACHE_PORT < <(free_ports 5)

# ---------------------------------------------------------------------------------------------
# Keys and metadata, made here: one test IdP (never contacted over HTTP: saml_responses.py signs
# its Responses ahead, saml_roundtrips.py answers the AuthnRequests of the redirects to its SSO
# URL itself), and mellon's SP key pair and metadata (Portcullis makes its own SP key pair).
IDP_ENTITY="https://idp.bench.invalid/metadata"
IDP_SSO="https://idp.bench.invalid/sso"
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
    <md:SingleSignOnService Binding="urn:oasis:names:tc:SAML:2.0:bindings:HTTP-Redirect" Location="$IDP_SSO"/>
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
nginx_confs

# Portcullis: every path of the edge behind the saml plugin, IdP-initiated logins allowed.
portcullis_conf
cp "$TMP/keys/idp.xml" "$TMP/portcullis/idp.xml"
cat >>"$TMP/portcullis/config.toml" <<EOF
[edges.bench.routes.auth]
plugin = "saml"
inactivity_timeout = 86400
maximum_duration = 86400
idp_metadata = { file = "idp.xml" }
allow_idp_initiated = true
EOF

# Apache (lib.sh's apache_conf_head), mod_proxy_http to the upstream (its pool keeps the
# connections), and mellon on every path with its defaults (MellonCacheSize 100 sessions).
APACHE_DIR="$TMP/apache"
mkdir -p "$APACHE_DIR/logs" "$APACHE_DIR/run"
{
    apache_conf_head
    cat <<EOF
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

write_check_lua

# The login load (lib.sh's write_login_lua): args PATH COOKIE LOCATION FILE. Posts each line of
# FILE (a form body with one SAMLResponse); a response is right when it is 303 to LOCATION and
# sets the cookie COOKIE.
write_login_lua "$TMP/login.lua" <<'EOF'
    path, cookie, location = args[1], args[2] .. "=", args[3]
    want_status = 303
    reqs = {}
    local headers = { ["Content-Type"] = "application/x-www-form-urlencoded" }
    for line in io.lines(args[4]) do
        reqs[#reqs + 1] = wrk.format("POST", path, headers, line)
    end
EOF

# ---------------------------------------------------------------------------------------------
# Start the servers, each pinned to the server core.
start_nginxes
# The API key (made before the server starts, in its data dir) reads the module's ACS URL.
make_api_key saml-bench
# The two SPs: started pinned to the server core, and again on every core for the last runs.
start_portcullis "$SERVER_CPU"
start_apache "$SERVER_CPU"

wait_nginxes
wait_http "http://127.0.0.1:$CONSOLE_PORT/healthz" "portcullis" "$TMP/portcullis/stdout.log"
wait_http "http://127.0.0.1:$APACHE_PORT/mellon/metadata" "Apache (mellon)" "$APACHE_DIR/logs/error.log"

# The SAML module's endpoints, as the API reports them.
get_edges
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

# Full sign-ins (tests/bench/saml_roundtrips.py): the browser's GET of a protected URL on the SP,
# the signed AuthnRequest it is redirected to the IdP with, verified and answered by the IdP with a
# fresh Response to its ID, posted to the ACS. The sign-in count is read from FILE.
ROUNDTRIPS=0
roundtrips() { # target count-file outfile [option...]
    local t=$1 count out=$3
    count=$(cat "$2")
    shift 3
    ROUNDTRIPS=$((ROUNDTRIPS + 1))
    taskset -c "$WRK_CPUS" "$PY" "$ROOT/tests/bench/saml_roundtrips.py" --start "${BASE[$t]}/" --sso "$IDP_SSO" \
        --sp-metadata "${ENTITY[$t]}" --key "$TMP/keys/idp.key" --cert "$TMP/keys/idp.crt" --issuer "$IDP_ENTITY" \
        --cookie "${COOKIE[$t]}" --count "$count" --connections "$CONNECTIONS" --windows "$TMP/windows-$t.json" \
        --tag "$t-rt$ROUNDTRIPS" "$@" >"$out" 2>&1
}
# Each SP must complete one full sign-in (pysaml2 also accepting the Response to its request),
# and that session must reach the upstream's exact body.
declare -A SIGALG
for t in portcullis mellon; do
    echo 1 >"$TMP/one-roundtrip.txt"
    roundtrips "$t" "$TMP/one-roundtrip.txt" "$TMP/roundtrip-check.txt" --check --session-out "$TMP/roundtrip-session.txt" ||
        die "$t: saml_roundtrips.py failed: $(tail -n 20 "$TMP/roundtrip-check.txt")"
    check_run "$t: one full sign-in" "$TMP/roundtrip-check.txt" 1
    grep -q '^pysaml2 accepted' "$TMP/roundtrip-check.txt" || die "$t: pysaml2 did not check the Response: $(cat "$TMP/roundtrip-check.txt")"
    SIGALG[$t]=$(sed -n 's/^BENCH .*sigalg=\([^ ]*\).*/\1/p' "$TMP/roundtrip-check.txt")
    got=$(curl -sS --max-time 5 -w '%{http_code}' -H "Cookie: $(cat "$TMP/roundtrip-session.txt")" "${BASE[$t]}/") ||
        die "$t: request with the full sign-in's session failed"
    [ "$got" = "$BODY"$'\n'"200" ] || die "$t: unexpected answer to GET / with the full sign-in's session: $(printf %q "$got")"
done
echo "   full sign-ins: AuthnRequests signed with ${SIGALG[portcullis]} (Portcullis), ${SIGALG[mellon]} (mellon); each taken, each session reaches the upstream"

auth_targets mellon

# ---------------------------------------------------------------------------------------------
# Measure.
CLK_TCK=$(getconf CLK_TCK)

# lib.sh's measure_login makes its sign-ins with make_logins and times run_logins: for ACS logins
# (LOGIN_NOUN logins, machine-logins) fresh Responses, posted by wrk; for full sign-ins
# (roundtrips) only their count, then saml_roundtrips.py.
LOGIN_NOUN=logins
make_logins() { # target count file
    if [ "$LOGIN_NOUN" = roundtrips ]; then echo "$2" >"$3"; else make_responses "$@"; fi
}
# Posts every Response of FILE to target $1's ACS; wrk is stopped by the script when done (the
# 600 s is only a bound). --timeout: with 32 logins in flight a slow SP takes seconds per login.
run_logins() { # target file outfile
    local path=${ACS[$1]#"${BASE[$1]}"}
    if [ "$LOGIN_NOUN" = roundtrips ]; then
        roundtrips "$@"
        return
    fi
    taskset -c "$WRK_CPUS" wrk -t1 -c"$CONNECTIONS" -d600s --timeout 10s --latency -s "$TMP/login.lua" \
        "${BASE[$1]}/" -- "$path" "${COOKIE[$1]}" "${LOCATION[$1]}" "$2" >"$3" 2>&1
}

# Noise control: lib.sh's (as in proxy.sh).
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PROCS $AP_PROCS"

failure_logs() { # after a wrong run: the servers' SAML log lines
    echo "-- Portcullis log (SAML lines):" >&2
    grep -i -E 'saml|idp' "$TMP/portcullis/stdout.log" | tail -n 5 >&2 || true
    echo "-- Apache error log:" >&2
    tail -n 5 "$APACHE_DIR/logs/error.log" >&2 || true
}

# Measures (again while noisy: lib.sh's retry_noisy) and keeps
# RES[kind-target,round]="rate p99_us cpu_us client_%" (client: the load generator's share of a
# core: wrk, or for full sign-ins the browsers and the IdP's signing).
STARTED=$(date +%s)
measured() { # kind (roundtrip, login, machine, proxy) target round
    local kind=$1 t=$2 round=$3 unit
    while :; do
        case $kind in
            proxy) LOGIN_NOUN=logins; measure_proxy "$t" "$round"; unit="req/s" ;;
            roundtrip) LOGIN_NOUN=roundtrips; measure_login "$t" "$round"; unit="logins/s" ;;
            *) LOGIN_NOUN=$([ "$kind" = machine ] && echo machine-logins || echo logins); measure_login "$t" "$round"; unit="logins/s" ;;
        esac
        printf '   round %d  %-9s %-10s %7s %-8s  p99 %7s us  %8s CPU us/%s  client %3s%%  kernel %3s%%  other %3s%%  (%d checked)\n' \
            "$round" "$kind" "$t" "$rate" "$unit" "$p99" "$cpu" "$([ "$kind" = proxy ] && echo req || echo login)" \
            "$client" "$kernel" "$other" "$reqs"
        retry_noisy || break
    done
    keep_run "$kind-$t,$round" "$rate $p99 $cpu $client"
}

# The replays above were refused (and logged); none may be refused from here on.
PC_REFUSALS='SAML response|the IdP answered with status|none of the authorized groups'
REFUSED_BEFORE=$(grep -c -E "$PC_REFUSALS" "$TMP/portcullis/stdout.log" || true)

echo "== measuring: $ROUNDS rounds of full sign-ins and ACS logins (Portcullis, mellon) and proxying (nginx, Portcullis, mellon)"
for round in $(seq "$ROUNDS"); do
    for t in "${LOGIN_TARGETS[@]}"; do measured roundtrip "$t" "$round"; done
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
apache_procs
PROCS[portcullis]=$PC_PID
PROCS[mellon]=$AP_PROCS
ALL_PROCS="$UP_PROCS $NGX_PROCS $PC_PID $AP_PROCS"
WRK_CPUS=$ALL_CPUS
for round in $(seq "$ROUNDS"); do
    for t in "${LOGIN_TARGETS[@]}"; do measured machine "$t" "$round"; done
done
ELAPSED=$(($(date +%s) - STARTED))

# Portcullis refused no Response during the runs (check_run counted every answer already; this
# also catches a refusal logged by the plugin whose answer still looked right).
if [ "$(grep -c -E "$PC_REFUSALS" "$TMP/portcullis/stdout.log" || true)" -ne "$REFUSED_BEFORE" ]; then
    echo "saml.sh: Portcullis logged refusals during the runs:" >&2
    grep -E "$PC_REFUSALS" "$TMP/portcullis/stdout.log" | tail -n +$((REFUSED_BEFORE + 1)) | head -n 5 >&2
    exit 1
fi

# ---------------------------------------------------------------------------------------------
# Report.
KEYS=(roundtrip-portcullis roundtrip-mellon login-portcullis login-mellon machine-portcullis machine-mellon
    proxy-nginx proxy-portcullis proxy-mellon)
medians 4 "${KEYS[@]}"
label() {
    case $1 in
        roundtrip-portcullis) echo "Portcullis, full sign-in" ;;
        roundtrip-mellon) echo "Apache + mellon, full sign-in" ;;
        login-portcullis) echo "Portcullis, ACS only" ;;
        login-mellon) echo "Apache + mellon, ACS only" ;;
        machine-portcullis) echo "Portcullis, ACS only, every core" ;;
        machine-mellon) echo "Apache + mellon, ACS, every core" ;;
        proxy-nginx) echo "nginx reverse proxy (no auth)" ;;
        proxy-portcullis) echo "Portcullis, SAML session" ;;
        proxy-mellon) echo "Apache + mellon, session" ;;
    esac
}

report_machine
echo "apache:  $(apache_version), mod_auth_mellon $(deb_version libapache2-mod-auth-mellon), liblasso3 $(deb_version liblasso3)"
report_tools
echo "setup:   servers on core $SERVER_CPU, the client (wrk -t1 -c$CONNECTIONS, or saml_roundtrips.py with $CONNECTIONS browsers) on core $CLIENT_CPU;" \
    "$ROUNDS interleaved rounds; medians; Portcullis at log level $LOG_LEVEL"
echo "         then ACS logins again with both SPs restarted on cores $ALL_CPUS and wrk unpinned"
echo "         full sign-ins: GET / -> signed AuthnRequest (Portcullis ${SIGALG[portcullis]}, mellon ${SIGALG[mellon]}), verified and" \
    "answered by the IdP in the client (a fresh signed Response to its ID) -> POST to the ACS; about ${LOGIN_SECONDS}s of them" \
    "after a warm-up of $LOGIN_WARMUP"
echo "         ACS logins: each run posts its own fresh signed unsolicited Responses (about ${LOGIN_SECONDS}s of them, at most $MAX_LOGINS)" \
    "after a warm-up of $LOGIN_WARMUP; proxy: -d${DURATION}s after a ${WARMUP}s warm-up, session of one login"
echo
echo "== per round (rate / p99 us / server CPU us per login or request / client % of a core)"
printf '| %-32s |' target
for round in $(seq "$ROUNDS"); do printf ' %-32s |' "round $round"; done
echo
printf '|%s|' "----------------------------------"
for round in $(seq "$ROUNDS"); do printf '%s|' "----------------------------------"; done
echo
for k in "${KEYS[@]}"; do
    printf '| %-32s |' "$(label "$k")"
    for round in $(seq "$ROUNDS"); do
        read -r -a r <<<"${RES[$k,$round]}"
        printf ' %-32s |' "${r[0]} / ${r[1]} / ${r[2]} / ${r[3]}%"
    done
    echo
done
echo
echo "== logins (median of $ROUNDS runs; CPU = the SP processes' utime+stime per login; client = the load generator's share of a core:"
echo "   near 100% for full sign-ins means the IdP's signing in the client, not the SP, set the rate)"
printf '| %-32s | %9s | %9s | %12s | %8s |\n' target "logins/s" "p99 (ms)" "CPU us/login" "client"
printf '|%s|%s|%s|%s|%s|\n' "----------------------------------" "----------:" "----------:" "-------------:" "---------:"
for k in roundtrip-portcullis roundtrip-mellon login-portcullis login-mellon machine-portcullis machine-mellon; do
    printf '| %-32s | %9s | %9s | %12s | %7s%% |\n' "$(label "$k")" "${MED[$k,0]}" \
        "$(awk -v v="${MED[$k,1]}" 'BEGIN { printf "%.1f", v / 1000 }')" "${MED[$k,2]}" "${MED[$k,3]}"
done
echo
echo "== authenticated proxy throughput (median of $ROUNDS runs; CPU = server processes' utime+stime per request)"
printf '| %-32s | %9s | %9s | %12s |\n' target "req/s" "p99 (us)" "CPU us/req"
printf '|%s|%s|%s|%s|\n' "----------------------------------" "----------:" "----------:" "-------------:"
for k in proxy-nginx proxy-portcullis proxy-mellon; do
    printf '| %-32s | %9s | %9s | %12s |\n' "$(label "$k")" "${MED[$k,0]}" "${MED[$k,1]}" "${MED[$k,2]}"
done
echo
echo "Other processes used at most ${MAX_OTHER}% of a core during a kept run;" \
    "$RETRIED noisy run(s) were discarded and measured again. Measuring took ${ELAPSED}s."
report_noise_warning
echo
awk -v pl="${MED[login-portcullis,0]}" -v ml="${MED[login-mellon,0]}" \
    -v al="${MED[machine-portcullis,0]}" -v aml="${MED[machine-mellon,0]}" -v cores="$(nproc)" \
    -v pp="${MED[proxy-portcullis,0]}" -v mp="${MED[proxy-mellon,0]}" -v np="${MED[proxy-nginx,0]}" \
    -v rp="${MED[roundtrip-portcullis,0]}" -v rm="${MED[roundtrip-mellon,0]}" \
    -v rpc="${MED[roundtrip-portcullis,2]}" -v rmc="${MED[roundtrip-mellon,2]}" -v rpk="${MED[roundtrip-portcullis,3]}" \
    -v lpc="${MED[login-portcullis,2]}" -v lmc="${MED[login-mellon,2]}" \
    'BEGIN {
        printf "Full sign-ins (AuthnRequest made and signed, Response consumed), SP on one core: Portcullis %d/s, mellon %d/s: %.1fx\n", rp, rm, rp / rm
        printf "   SP CPU per full sign-in: Portcullis %d us, mellon %d us: mellon spends %.1fx as much;" \
            " on a core of its own (1e6 / CPU us) Portcullis would take %d/s, mellon %d/s\n", rpc, rmc, rmc / rpc, 1e6 / rpc, 1e6 / rmc
        if (rpk >= 90) printf "   (the client took %d%% of its core for Portcullis: the IdP side, not Portcullis, set that rate)\n", rpk
        printf "ACS only (unsolicited Responses): Portcullis %d/s on one core (%d us), %d/s on all %d cores  (target >= 1000/s on this machine: %s)\n", pl, lpc, al, cores, (al >= 1000 ? "met" : "NOT met")
        printf "   Portcullis / mellon ACS logins: %.1fx on one core, %.1fx on all cores; mellon spends %.1fx the CPU per login\n", pl / ml, al / aml, lmc / lpc
        printf "Portcullis / mellon authenticated throughput: %.2fx  (target >= 2x: %s)\n", pp / mp, (pp / mp >= 2 ? "met" : "NOT met")
        printf "Portcullis session / nginx plain proxy throughput: %.2fx\n", pp / np
        printf "mellon session / nginx plain proxy throughput: %.2fx\n", mp / np
    }'
