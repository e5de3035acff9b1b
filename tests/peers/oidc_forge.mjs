// oidc_forge: a small, test-controlled OpenID Provider for Portcullis's integration tests, so the
// gateway's OIDC relying party can be driven against crafted, wrong ID tokens that a certified
// provider never sends. Plain Node 20, node's built-in `crypto` and `http` only (no npm packages).
//
//   node oidc_forge.mjs [--port 0]
//
// It listens on 127.0.0.1 only (port 0 picks a free one); its issuer is http://127.0.0.1:PORT.
// When ready it prints exactly one JSON line on stdout:
//
//   {"issuer": "http://127.0.0.1:PORT", "pid": PID}
//
// Logs go to stderr; SIGTERM (or SIGINT) stops it and it exits 0.
//
// Keys (RSA-2048, made at start): `good` (kid k1, in the JWKS, signs everything by default),
// `evil` (kid k-evil, never published) and `rotated` (kid k2, published only after
// POST /test/rotate). The user is always `alice` (no login form).
//
// Provider endpoints:
//   GET  /.well-known/openid-configuration   discovery (fetches counted)
//   GET  /jwks                                public JWKs: kid, kty, n, e, alg RS256, use sig (fetches counted)
//   GET  /authorize   response_type=code, client_id, redirect_uri, scope, state, nonce,
//                     code_challenge, code_challenge_method=S256. Unknown client_id or a
//                     redirect_uri other than the registered one: 400 text. Otherwise 303 to
//                     redirect_uri?code=CODE&state=STATE; errors that can be redirected
//                     (response_type not `code`, scope without `openid`, a challenge method other
//                     than S256) go back as ?error=..&state=.. Codes live 10 minutes, single use.
//   POST /token       form: grant_type=authorization_code, code, redirect_uri, code_verifier.
//                     Client auth by HTTP Basic (RFC 6749 2.3.1, form-urlencoded id and secret)
//                     or client_id/client_secret in the body (both at once: 400 invalid_request).
//                     Bad client: 401 invalid_client. Unknown or already presented code, other
//                     client's code, redirect_uri differing from the authorize one, PKCE failure
//                     (including a verifier when no challenge was sent, or none when one was):
//                     400 invalid_grant. A code is spent the first time it is presented by its
//                     client, whatever the outcome. Success: {access_token, token_type: Bearer,
//                     expires_in: 3600, id_token, refresh_token}. grant_type=refresh_token: a
//                     refresh token works once (rotation): {access_token, token_type, expires_in:
//                     3600, refresh_token}; unknown or used: 400 invalid_grant.
//   GET|POST /userinfo   Authorization: Bearer ACCESS_TOKEN -> {sub, email, email_verified, name, groups};
//                     unknown or revoked token: 401 (WWW-Authenticate: Bearer error="invalid_token");
//                     mode userinfo_503: 503 (a provider outage).
//   GET  /logout      id_token_hint, post_logout_redirect_uri, state: recorded; 303 to
//                     post_logout_redirect_uri (with state) when given, else 200 "logged out".
//
// ID token (RS256, kid k1): iss, sub alice, aud client_id, exp now+300, iat now, nonce (the
// authorize request's, omitted if it sent none), email alice@example.com, email_verified true,
// name "Alice Liddell", groups ["engineering"], sid (random per authorize).
//
// Test control (JSON in, JSON out):
//   POST /test/client        {client_id, client_secret, redirect_uri}: registers THE client (replaces). 200.
//   POST /test/mode          {mode}: sticky until changed; "normal" resets. Unknown mode: 400. GET: current.
//   POST /test/rotate        publish k2 in the JWKS from now on. 200.
//   POST /test/revoke-all    every access token issued so far fails at /userinfo. 200.
//   GET  /test/counts        {discovery, jwks}: fetches so far.
//   GET  /test/last-authorize  all query params of the latest /authorize (null before any).
//   GET  /test/last-token    {auth_method: "basic"|"post"|null, code_verifier_present, sid, id_token_claims}
//                            for the latest /token request (sid and claims null unless an ID token was issued).
//   GET  /test/last-logout   all query params of the latest /logout (null before any).
//   POST /test/backchannel   {uri, sub: "alice"|null, sid: SID|null, variant}: builds a logout_token
//                            (Back-Channel Logout 1.0 2.4: iss, aud client_id, iat, exp now+120, jti,
//                            events, sub and/or sid as given, no nonce; header typ logout+jwt, kid k1),
//                            POSTs `logout_token=...` form-encoded to uri (10 s timeout, no redirects
//                            followed) and answers {status, body, claims, logout_token}; 502 {error}
//                            if uri cannot be reached. Variants: good, bad_signature (signed by evil
//                            but labelled kid k1), has_nonce, no_event (no events claim), wrong_aud
//                            (aud someone-else), expired (iat now-600, exp now-300).
//
// Modes:
//   ID token:  alg_none, hs256_with_public_key (HMAC key = the SPKI PEM text of the good public
//              key, kid k1), wrong_iss (http://evil.example), wrong_aud (someone-else),
//              multi_aud_no_azp, multi_aud_wrong_azp (azp other), expired (exp now-600,
//              iat now-900), future_iat (iat now+3600, exp now+7200), wrong_nonce (not-the-nonce),
//              no_nonce, tampered (signed, then email changed to mallory@example.com),
//              unknown_kid (signed by evil, kid k-evil), rotated_kid (signed by rotated, kid k2),
//              claims_in_userinfo_only (no email, email_verified, name, groups: userinfo has them),
//              userinfo_other_sub (as claims_in_userinfo_only, and userinfo answers for sub mallory),
//              userinfo_sid (as claims_in_userinfo_only and no sid either; userinfo adds sid
//              sid-from-userinfo), verified_without_email (no email, name, groups; email_verified
//              true stays; userinfo has the address with email_verified false).
//   /token:    garbage_token_response (200, body `not json`), token_500 (500 {"error":"server_error"}),
//              slow_token (waits 30 s, then answers as normal). These answer before any check.
//   /authorize: state_mismatch (state returned is STATE + "-forged"), error_redirect
//              (error=access_denied&error_description=...&state=STATE). Applied after the client
//              and redirect_uri checks.
import crypto from 'node:crypto';
import http from 'node:http';

const args = process.argv.slice(2);
let port = 0;
for (let i = 0; i < args.length; i++) {
  if (args[i] === '--port' && i + 1 < args.length) port = Number(args[++i]);
  else if (args[i].startsWith('--port=')) port = Number(args[i].slice('--port='.length));
  else {
    process.stderr.write(`oidc_forge: unknown argument ${args[i]}\nusage: node oidc_forge.mjs [--port N]\n`);
    process.exit(2);
  }
}
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  process.stderr.write('oidc_forge: --port must be 0..65535\n');
  process.exit(2);
}

const log = (...parts) => process.stderr.write(`oidc_forge: ${parts.join(' ')}\n`);

// ---- keys ---------------------------------------------------------------------------------

const genKey = () => new Promise((resolve, reject) =>
  crypto.generateKeyPair('rsa', { modulusLength: 2048 }, (err, publicKey, privateKey) =>
    (err ? reject(err) : resolve({ publicKey, privateKey }))));
const [good, evil, rotated] = await Promise.all([genKey(), genKey(), genKey()]);
good.kid = 'k1';
evil.kid = 'k-evil';
rotated.kid = 'k2';
const goodPublicPem = good.publicKey.export({ type: 'spki', format: 'pem' });

const jwk = (k) => {
  const { kty, n, e } = k.publicKey.export({ format: 'jwk' });
  return { kid: k.kid, kty, n, e, alg: 'RS256', use: 'sig' };
};

// ---- JWT ----------------------------------------------------------------------------------

const b64u = (x) => Buffer.from(x).toString('base64url');
const b64json = (o) => b64u(JSON.stringify(o));
const rs256 = (key, input) => b64u(crypto.sign('sha256', Buffer.from(input), key.privateKey));
const signJwt = (key, payload, typ = 'JWT', kid = key.kid) => {
  const input = `${b64json({ alg: 'RS256', typ, kid })}.${b64json(payload)}`;
  return `${input}.${rs256(key, input)}`;
};
const now = () => Math.floor(Date.now() / 1000);
const random = (bytes = 32) => crypto.randomBytes(bytes).toString('base64url');

// ---- state --------------------------------------------------------------------------------

const MODES = new Set([
  'normal', 'alg_none', 'hs256_with_public_key', 'wrong_iss', 'wrong_aud', 'multi_aud_no_azp',
  'multi_aud_wrong_azp', 'expired', 'future_iat', 'wrong_nonce', 'no_nonce', 'tampered',
  'unknown_kid', 'rotated_kid', 'garbage_token_response', 'token_500', 'slow_token',
  'state_mismatch', 'error_redirect', 'userinfo_503', 'claims_in_userinfo_only', 'userinfo_other_sub',
  'userinfo_sid', 'verified_without_email',
]);
const VARIANTS = new Set(['good', 'bad_signature', 'has_nonce', 'no_event', 'wrong_aud', 'expired']);
const USERS = {
  alice: { sub: 'alice', email: 'alice@example.com', email_verified: true, name: 'Alice Liddell', groups: ['engineering'] },
};
const CODE_LIFETIME_MS = 600_000;
const SLOW_TOKEN_MS = 30_000;

let issuer = '';
let client = null; // {client_id, client_secret, redirect_uri}
let mode = 'normal';
let rotatedPublished = false;
const counts = { discovery: 0, jwks: 0 };
const codes = new Map(); // code -> {nonce, code_challenge, client_id, redirect_uri, user, sid, expires}
const accessTokens = new Map(); // token -> {user, client_id, sid}
const refreshTokens = new Map(); // token -> {user, client_id, sid}; rotated: each works once
let lastAuthorize = null;
let lastToken = null;
let lastLogout = null;
const slowTimers = new Set();

function idToken({ clientId, nonce, user, sid }) {
  const t = now();
  const u = USERS[user];
  const claims = {
    iss: issuer, sub: u.sub, aud: clientId, exp: t + 300, iat: t,
    ...(nonce !== undefined ? { nonce } : {}),
    email: u.email, email_verified: u.email_verified, name: u.name, groups: u.groups, sid,
  };
  switch (mode) {
    case 'wrong_iss': claims.iss = 'http://evil.example'; break;
    case 'wrong_aud': claims.aud = 'someone-else'; break;
    case 'multi_aud_no_azp': claims.aud = [clientId, 'other']; break;
    case 'multi_aud_wrong_azp': claims.aud = [clientId, 'other']; claims.azp = 'other'; break;
    case 'expired': claims.exp = t - 600; claims.iat = t - 900; break;
    case 'future_iat': claims.iat = t + 3600; claims.exp = t + 7200; break;
    case 'wrong_nonce': claims.nonce = 'not-the-nonce'; break;
    case 'no_nonce': delete claims.nonce; break;
    case 'claims_in_userinfo_only':
    case 'userinfo_other_sub':
      for (const claim of ['email', 'email_verified', 'name', 'groups']) delete claims[claim];
      break;
    case 'userinfo_sid':
      for (const claim of ['email', 'email_verified', 'name', 'groups', 'sid']) delete claims[claim];
      break;
    case 'verified_without_email':
      for (const claim of ['email', 'name', 'groups']) delete claims[claim];
      break;
    default: break;
  }
  let token;
  switch (mode) {
    case 'alg_none':
      token = `${b64json({ alg: 'none', typ: 'JWT' })}.${b64json(claims)}.`;
      break;
    case 'hs256_with_public_key': {
      const input = `${b64json({ alg: 'HS256', typ: 'JWT', kid: good.kid })}.${b64json(claims)}`;
      token = `${input}.${b64u(crypto.createHmac('sha256', goodPublicPem).update(input).digest())}`;
      break;
    }
    case 'tampered': {
      const [h, , s] = signJwt(good, claims).split('.');
      token = `${h}.${b64json({ ...claims, email: 'mallory@example.com' })}.${s}`;
      break;
    }
    case 'unknown_kid': token = signJwt(evil, claims); break;
    case 'rotated_kid': token = signJwt(rotated, claims); break;
    default: token = signJwt(good, claims); break;
  }
  return { token, claims };
}

// ---- HTTP helpers -------------------------------------------------------------------------

function send(res, status, body, headers = {}) {
  const isText = typeof body === 'string';
  const data = isText ? body : JSON.stringify(body);
  res.writeHead(status, {
    'Content-Type': isText ? 'text/plain; charset=utf-8' : 'application/json',
    'Content-Length': Buffer.byteLength(data),
    ...headers,
  });
  res.end(data);
}
const redirect = (res, location) => {
  res.writeHead(303, { Location: location, 'Content-Length': 0, 'Cache-Control': 'no-store' });
  res.end();
};
const withParams = (uri, params) => {
  const u = new URL(uri);
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null) u.searchParams.append(k, v);
  return u.toString();
};

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (c) => {
      size += c.length;
      if (size > 1 << 20) { reject(Object.assign(new Error('body too large'), { status: 413 })); req.destroy(); return; }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}
async function readJson(req) {
  const text = await readBody(req);
  try {
    const v = JSON.parse(text);
    if (v === null || typeof v !== 'object' || Array.isArray(v)) throw new Error('not an object');
    return v;
  } catch {
    throw Object.assign(new Error('body must be a JSON object'), { status: 400 });
  }
}
const safeEqual = (a, b) => {
  const x = Buffer.from(String(a)); const y = Buffer.from(String(b));
  return x.length === y.length && crypto.timingSafeEqual(x, y);
};
const formDecode = (s) => decodeURIComponent(s.replace(/\+/g, ' '));

// ---- provider endpoints -------------------------------------------------------------------

function discovery(res) {
  counts.discovery += 1;
  send(res, 200, {
    issuer,
    authorization_endpoint: `${issuer}/authorize`,
    token_endpoint: `${issuer}/token`,
    userinfo_endpoint: `${issuer}/userinfo`,
    jwks_uri: `${issuer}/jwks`,
    end_session_endpoint: `${issuer}/logout`,
    response_types_supported: ['code'],
    subject_types_supported: ['public'],
    id_token_signing_alg_values_supported: ['RS256'],
    token_endpoint_auth_methods_supported: ['client_secret_basic', 'client_secret_post'],
    code_challenge_methods_supported: ['S256'],
    backchannel_logout_supported: true,
    backchannel_logout_session_supported: true,
  });
}

function jwks(res) {
  counts.jwks += 1;
  const keys = [jwk(good)];
  if (rotatedPublished) keys.push(jwk(rotated));
  send(res, 200, { keys }, { 'Cache-Control': 'no-store' });
}

function authorize(res, url) {
  const q = Object.fromEntries(url.searchParams);
  lastAuthorize = q;
  if (!client || q.client_id !== client.client_id) return send(res, 400, 'unknown client_id\n');
  if (q.redirect_uri !== client.redirect_uri) return send(res, 400, 'redirect_uri is not registered for this client\n');
  const back = (params) => redirect(res, withParams(q.redirect_uri, { ...params, state: q.state }));
  if (q.response_type !== 'code') return back({ error: 'unsupported_response_type' });
  if (!(q.scope || '').split(' ').includes('openid')) return back({ error: 'invalid_scope', error_description: 'scope must include openid' });
  if (q.code_challenge !== undefined && q.code_challenge_method !== 'S256') {
    return back({ error: 'invalid_request', error_description: 'code_challenge_method must be S256' });
  }
  if (mode === 'error_redirect') {
    return back({ error: 'access_denied', error_description: 'The user denied the request' });
  }
  const code = random();
  const sid = random(16);
  codes.set(code, {
    nonce: q.nonce, code_challenge: q.code_challenge, client_id: q.client_id,
    redirect_uri: q.redirect_uri, user: 'alice', sid, expires: Date.now() + CODE_LIFETIME_MS,
  });
  const state = mode === 'state_mismatch' ? `${q.state ?? ''}-forged` : q.state;
  return redirect(res, withParams(q.redirect_uri, { code, state }));
}

async function token(req, res) {
  const form = new URLSearchParams(await readBody(req));
  const f = (k) => form.get(k) ?? undefined;
  const noStore = { 'Cache-Control': 'no-store', Pragma: 'no-cache' };
  const auth = req.headers.authorization || '';
  let authMethod = null; let id; let secret;
  const basic = /^Basic\s+(.+)$/i.exec(auth);
  if (basic) {
    authMethod = 'basic';
    const decoded = Buffer.from(basic[1], 'base64').toString('utf8');
    const colon = decoded.indexOf(':');
    try {
      id = formDecode(colon < 0 ? decoded : decoded.slice(0, colon));
      secret = colon < 0 ? undefined : formDecode(decoded.slice(colon + 1));
    } catch { id = undefined; }
  } else if (f('client_secret') !== undefined) {
    authMethod = 'post';
    id = f('client_id');
    secret = f('client_secret');
  }
  lastToken = { auth_method: authMethod, code_verifier_present: form.has('code_verifier'), sid: null, id_token_claims: null };

  if (mode === 'garbage_token_response') return send(res, 200, 'not json', noStore);
  if (mode === 'token_500') return send(res, 500, { error: 'server_error' }, noStore);
  if (mode === 'slow_token') {
    await new Promise((resolve) => {
      const timer = setTimeout(() => { slowTimers.delete(timer); resolve(); }, SLOW_TOKEN_MS);
      slowTimers.add(timer);
      res.on('close', () => { clearTimeout(timer); slowTimers.delete(timer); resolve(); });
    });
    if (res.destroyed || res.writableEnded) return undefined;
  }

  const oauthError = (status, error, description, extra = {}) =>
    send(res, status, { error, error_description: description }, { ...noStore, ...extra });
  if (basic && f('client_secret') !== undefined) return oauthError(400, 'invalid_request', 'more than one client authentication method');
  if (basic && f('client_id') !== undefined && f('client_id') !== id) return oauthError(400, 'invalid_request', 'client_id differs from HTTP Basic');
  const challenge = basic ? { 'WWW-Authenticate': 'Basic realm="oidc_forge"' } : {};
  if (!authMethod || !client || id !== client.client_id || secret === undefined || !safeEqual(secret, client.client_secret)) {
    return oauthError(401, 'invalid_client', 'client authentication failed', challenge);
  }
  if (f('grant_type') === 'refresh_token') {
    const grant = refreshTokens.get(f('refresh_token') ?? '');
    if (!grant || grant.client_id !== id) return oauthError(400, 'invalid_grant', 'unknown, used or foreign refresh token');
    refreshTokens.delete(f('refresh_token'));
    const accessToken = random();
    const refreshToken = random();
    accessTokens.set(accessToken, grant);
    refreshTokens.set(refreshToken, grant);
    log(`tokens refreshed (mode ${mode})`);
    return send(res, 200, { access_token: accessToken, token_type: 'Bearer', expires_in: 3600, refresh_token: refreshToken }, noStore);
  }
  if (f('grant_type') !== 'authorization_code') return oauthError(400, 'unsupported_grant_type', 'only authorization_code and refresh_token');
  const code = f('code');
  if (code === undefined) return oauthError(400, 'invalid_request', 'code is missing');
  const entry = codes.get(code);
  if (!entry || entry.client_id !== id) return oauthError(400, 'invalid_grant', 'unknown, used or foreign code');
  codes.delete(code); // single use: spent on first presentation, whatever the outcome
  if (Date.now() > entry.expires) return oauthError(400, 'invalid_grant', 'code expired');
  if (f('redirect_uri') !== entry.redirect_uri) return oauthError(400, 'invalid_grant', 'redirect_uri differs from the authorization request');
  const verifier = f('code_verifier');
  if (entry.code_challenge !== undefined) {
    if (verifier === undefined) return oauthError(400, 'invalid_grant', 'code_verifier is missing');
    const computed = b64u(crypto.createHash('sha256').update(verifier, 'ascii').digest());
    if (!safeEqual(computed, entry.code_challenge)) return oauthError(400, 'invalid_grant', 'PKCE verification failed');
  } else if (verifier !== undefined) {
    return oauthError(400, 'invalid_grant', 'code_verifier sent but the authorization request had no code_challenge');
  }

  const { token: idt, claims } = idToken({ clientId: id, nonce: entry.nonce, user: entry.user, sid: entry.sid });
  const accessToken = random();
  const refreshToken = random();
  accessTokens.set(accessToken, { user: entry.user, client_id: id, sid: entry.sid });
  refreshTokens.set(refreshToken, { user: entry.user, client_id: id, sid: entry.sid });
  lastToken.sid = entry.sid;
  lastToken.id_token_claims = claims;
  log(`token issued (mode ${mode}, auth ${authMethod}, sid ${entry.sid})`);
  return send(res, 200, {
    access_token: accessToken, token_type: 'Bearer', expires_in: 3600, id_token: idt, refresh_token: refreshToken,
  }, noStore);
}

function userinfo(req, res) {
  if (mode === 'userinfo_503') return send(res, 503, { error: 'temporarily_unavailable' });
  const m = /^Bearer\s+(\S+)$/i.exec(req.headers.authorization || '');
  const entry = m && accessTokens.get(m[1]);
  if (!entry) {
    return send(res, 401, { error: 'invalid_token' }, { 'WWW-Authenticate': 'Bearer error="invalid_token"' });
  }
  const { sub, email, email_verified, name, groups } = USERS[entry.user];
  const answer = { sub, email, email_verified, name, groups };
  if (mode === 'userinfo_other_sub') answer.sub = 'mallory';
  if (mode === 'userinfo_sid') answer.sid = 'sid-from-userinfo';
  if (mode === 'verified_without_email') answer.email_verified = false;
  return send(res, 200, answer, { 'Cache-Control': 'no-store' });
}

function logout(res, url) {
  const q = Object.fromEntries(url.searchParams);
  lastLogout = q;
  if (q.post_logout_redirect_uri) {
    let target;
    try { target = withParams(q.post_logout_redirect_uri, { state: q.state }); } catch {
      return send(res, 400, 'post_logout_redirect_uri is not a URL\n');
    }
    return redirect(res, target);
  }
  return send(res, 200, 'logged out\n');
}

// ---- test control -------------------------------------------------------------------------

async function backchannel(req, res) {
  const b = await readJson(req);
  if (typeof b.uri !== 'string') return send(res, 400, { error: 'uri (string) is required' });
  const variant = b.variant ?? 'good';
  if (!VARIANTS.has(variant)) return send(res, 400, { error: `variant must be one of ${[...VARIANTS].join(', ')}` });
  if (!client) return send(res, 409, { error: 'no client registered' });
  const t = now();
  const claims = {
    iss: issuer,
    aud: variant === 'wrong_aud' ? 'someone-else' : client.client_id,
    iat: variant === 'expired' ? t - 600 : t,
    exp: variant === 'expired' ? t - 300 : t + 120,
    jti: random(16),
    ...(variant === 'no_event' ? {} : { events: { 'http://schemas.openid.net/event/backchannel-logout': {} } }),
    ...(b.sub !== undefined && b.sub !== null ? { sub: b.sub } : {}),
    ...(b.sid !== undefined && b.sid !== null ? { sid: b.sid } : {}),
    ...(variant === 'has_nonce' ? { nonce: random(16) } : {}),
  };
  const logoutToken = variant === 'bad_signature'
    ? signJwt(evil, claims, 'logout+jwt', good.kid) // claims to be k1, signed by a key the RP never saw
    : signJwt(good, claims, 'logout+jwt');
  let answer;
  try {
    answer = await fetch(b.uri, {
      method: 'POST',
      headers: { 'Content-Type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ logout_token: logoutToken }).toString(),
      redirect: 'manual',
      signal: AbortSignal.timeout(10_000),
    });
  } catch (err) {
    return send(res, 502, { error: `could not reach ${b.uri}: ${err.cause?.message || err.message}`, claims, logout_token: logoutToken });
  }
  const body = await answer.text();
  log(`backchannel ${variant} -> ${b.uri}: ${answer.status}`);
  return send(res, 200, { status: answer.status, body, claims, logout_token: logoutToken });
}

async function route(req, res) {
  const url = new URL(req.url, issuer);
  const p = url.pathname;
  const m = req.method;
  if (m === 'GET' && p === '/.well-known/openid-configuration') return discovery(res);
  if (m === 'GET' && p === '/jwks') return jwks(res);
  if (m === 'GET' && p === '/authorize') return authorize(res, url);
  if (m === 'POST' && p === '/token') return token(req, res);
  if ((m === 'GET' || m === 'POST') && p === '/userinfo') return userinfo(req, res);
  if (m === 'GET' && p === '/logout') return logout(res, url);

  if (m === 'POST' && p === '/test/client') {
    const b = await readJson(req);
    for (const k of ['client_id', 'client_secret', 'redirect_uri']) {
      if (typeof b[k] !== 'string' || !b[k]) return send(res, 400, { error: `${k} (non-empty string) is required` });
    }
    try { new URL(b.redirect_uri); } catch { return send(res, 400, { error: 'redirect_uri is not an absolute URL' }); }
    client = { client_id: b.client_id, client_secret: b.client_secret, redirect_uri: b.redirect_uri };
    return send(res, 200, { client_id: client.client_id, redirect_uri: client.redirect_uri });
  }
  if (m === 'POST' && p === '/test/mode') {
    const b = await readJson(req);
    if (!MODES.has(b.mode)) return send(res, 400, { error: `mode must be one of ${[...MODES].join(', ')}` });
    mode = b.mode;
    log(`mode ${mode}`);
    return send(res, 200, { mode });
  }
  if (m === 'GET' && p === '/test/mode') return send(res, 200, { mode });
  if (m === 'POST' && p === '/test/rotate') { rotatedPublished = true; return send(res, 200, { published: ['k1', 'k2'] }); }
  if (m === 'POST' && p === '/test/revoke-all') {
    const revoked = accessTokens.size;
    accessTokens.clear();
    return send(res, 200, { revoked });
  }
  if (m === 'GET' && p === '/test/counts') return send(res, 200, counts);
  if (m === 'GET' && p === '/test/last-authorize') return send(res, 200, lastAuthorize);
  if (m === 'GET' && p === '/test/last-token') return send(res, 200, lastToken);
  if (m === 'GET' && p === '/test/last-logout') return send(res, 200, lastLogout);
  if (m === 'POST' && p === '/test/backchannel') return backchannel(req, res);
  return send(res, 404, 'not found\n');
}

const server = http.createServer((req, res) => {
  log(req.method, req.url.split('?')[0]);
  route(req, res).catch((err) => {
    if (!err.status) log('error:', err.stack || err);
    if (!res.headersSent) send(res, err.status || 500, { error: err.status ? err.message : 'internal error' });
    else res.destroy();
  });
});

let stopping = false;
function stop(signal) {
  if (stopping) return;
  stopping = true;
  log(`${signal}: stopping`);
  for (const t of slowTimers) clearTimeout(t);
  server.close(() => process.exit(0));
  server.closeAllConnections();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

server.listen(port, '127.0.0.1', () => {
  issuer = `http://127.0.0.1:${server.address().port}`;
  log(`listening, issuer ${issuer}`);
  process.stdout.write(`${JSON.stringify({ issuer, pid: process.pid })}\n`);
});
