// A real OpenID Provider for Portcullis's integration tests: npm `oidc-provider` 9.x (panva's
// certified OP) on loopback, at its defaults except where noted below, with in-memory accounts,
// clients registered at run time by the test, and test-control endpoints under /test/. Run by the
// Rust integration tests (and a headless browser drives its login and consent forms):
//
//   node oidc_provider.mjs [--port 0] [--host 127.0.0.1] [--tls-cert FILE --tls-key FILE]
//                          [--endpoints-host NAME]
//
// It listens on 127.0.0.1 only (port 0 picks a free one); the issuer is http://HOST:PORT, or
// https://HOST:PORT with --tls-cert/--tls-key (PEM files; the certificate must name HOST). HOST
// (default 127.0.0.1) must resolve to 127.0.0.1 for its clients. It keeps sessions, grants and
// tokens in memory, logs to stderr, exits 0 on SIGTERM/SIGINT, and when ready prints exactly one
// JSON line on stdout:
//
//   {"issuer":"http://127.0.0.1:PORT","pid":PID}            (+ "endpoints":"http://NAME:PORT2")
//
// OpenID endpoints (from /.well-known/openid-configuration): /auth, /token, /me (userinfo), /jwks,
// /session/end (+ /session/end/confirm), /request (PAR). Access tokens are opaque. Every Host
// header is rewritten to HOST:PORT, so discovery and redirects always name the issuer.
//
// --endpoints-host NAME: the provider's endpoints sit on two hosts, as Google's (token endpoint on
// another host than the issuer) and Entra's (userinfo on Microsoft Graph) do: a second listener on
// 127.0.0.1 (a free port PORT2) serves the token endpoint and userinfo, discovery names them as
// http(s)://NAME:PORT2/token and /me, and the issuer's host answers 404 for those paths.
//
// Accounts (login / password -> claims):
//   alice / alice-password  sub alice, email alice@example.com, email_verified true,
//                           name "Alice Liddell", groups ["engineering","admins"]
//   bob   / bob-password    sub bob, email bob@corp.example, email_verified false,
//                           name "Bob Builder", groups ["sales"]
//
// Differences from oidc-provider's defaults, each because a test cannot run without it:
//   claims               oidc-provider declares only `openid: ['sub']`: every deployment declares
//                        the claims it can supply. This declares OpenID Connect Core 5.4's scopes
//                        (address, email, phone, profile, as oidc-provider's own example
//                        configuration does) and a `groups` scope with a `groups` claim, as
//                        Keycloak (a "groups" client scope with a group-membership mapper) and Okta
//                        (its `groups` scope) are set up to send groups. conformIdTokenClaims stays
//                        true: with the code flow the ID token carries sub (and sid, auth_time,
//                        acr), and the scopes' claims come from userinfo only.
//   findAccount, adapter the accounts above; one in-memory store for every model (oidc-provider's
//                        default is in memory too, but cannot be listed) so /test/logout can find
//                        a user's sessions and /test/clients can add clients at run time.
//   devInteractions      off: its login form accepts any password and its pages pull a web font
//                        from the internet (this machine must not reach it). This file serves the
//                        same markup and field names (see below), with the password checked.
//   logoutSource, postLogoutSuccessSource, renderError: the default pages' markup without that web font.
//   features.backchannelLogout  on (off by default): the back-channel logout tests need it, and a
//                        deployment that uses it turns it on the same way.
//   fetch                oidc-provider refuses to send back-channel logouts to loopback addresses
//                        (its SSRF guard): the gateways of these tests are all on 127.0.0.1. The
//                        requests are recorded for /test/last-backchannel.
//   jwks, cookies.keys   left at their defaults (development keys, unsigned cookies; oidc-provider
//                        warns on stderr).
//
// Login and consent are this file's own interaction pages:
//   login   GET  /interaction/<uid>   form[method=post] with input[name=login] (id username),
//                                     input[name=password] (id password), hidden prompt=login,
//                                     button[type=submit] "Sign-in". Wrong password or removed
//                                     account: 401 and the form again, p.error "Invalid login or
//                                     password". (#username/#password/button[type=submit] are what
//                                     browser_login.mjs fills in.)
//   consent GET  /interaction/<uid>   form with hidden prompt=consent, button[type=submit] "Continue".
//   both    POST /interaction/<uid>   303 to /auth/<uid> (fetch that resume URL once only).
//   cancel  GET  /interaction/<uid>/abort   303 to /auth/<uid>, which ends in error=access_denied.
// RP-initiated logout: GET /session/end?id_token_hint=..&post_logout_redirect_uri=..&state=.. shows
// form#op.logoutForm (hidden xsrf) with button[name=logout][value=yes] "Yes, sign me out" and
// "No, stay signed in"; it POSTs to /session/end/confirm, which sends the back-channel logouts and
// answers 303 to post_logout_redirect_uri?state=.. .
//
// Login without a browser (plain HTTP, redirects not followed, a cookie jar that honours Path;
// Locations may be relative, e.g. /interaction/<uid>):
//   1. GET /auth?client_id&redirect_uri&response_type=code&scope&state&nonce&code_challenge
//      &code_challenge_method=S256 -> 303 /interaction/<uid>; sets _interaction (Path=/interaction/<uid>)
//      and _interaction_resume (Path=/auth/<uid>).
//   2. GET /interaction/<uid> (send _interaction) -> 200 login form. Optional; sets nothing.
//   3. POST /interaction/<uid> (send _interaction) prompt=login&login=alice&password=alice-password
//      -> 303 /auth/<uid>.
//   4. GET /auth/<uid> (send _interaction_resume) -> sets _session (Path=/), clears the resume
//      cookie, 303 /interaction/<uid2> with new _interaction and _interaction_resume.
//   5. GET /interaction/<uid2> -> 200 consent form; POST /interaction/<uid2> prompt=consent
//      -> 303 /auth/<uid2>.
//   6. GET /auth/<uid2> (send _interaction_resume and _session) -> 303
//      redirect_uri?code=..&state=..&iss=<issuer>.
// With a live _session and an existing grant for the client that covers the scopes asked for,
// step 1 answers the final 303 at once; otherwise only the consent steps remain.
//
// Refresh tokens are oidc-provider's default: issued only when the grant includes offline_access,
// which it keeps only for clients allowed the refresh_token grant and only when the authorization
// request says prompt=consent (OpenID Connect Core 11, to the letter), so the consent page shows at
// every such sign-in.
//
// Test control (JSON):
//   POST /test/clients               {"client_id","client_secret","redirect_uris":[..],
//                                     "post_logout_redirect_uris":[..],"backchannel_logout_uri":"..",
//                                     "token_endpoint_auth_method":"client_secret_basic"|"client_secret_post",
//                                     "grant_types":[..] (default authorization_code + refresh_token)}
//                                     -> 204 (400 + error JSON if invalid). The client registration an
//                                     operator makes (oidc-provider validates it as any client
//                                     metadata); re-posting a client_id replaces it. Response type
//                                     code, backchannel_logout_session_required true.
//   POST /test/users/<login>/remove  the account disappears: login fails, findAccount gives
//                                     undefined, userinfo answers 401 invalid_token. 204.
//   POST /test/users/<login>/restore 204.
//   POST /test/logout/<login>        ends every provider session of <login> server-side, as
//                                     /session/end/confirm with logout=yes does: a back-channel
//                                     logout_token to each client of the session that has a
//                                     backchannel_logout_uri, its grants and tokens revoked, the
//                                     session destroyed. 200 {"sessions":N,"sent":[..]}.
//   GET  /test/last-backchannel      the last back-channel logout sent: {"uri","status" (the RP's
//                                     answer, null if unreachable),"error","logout_token",
//                                     "header","claims"}; 404 before any.
//   GET  /test/backchannels          all of them, oldest first.
//   GET  /test/last-token-request    {"client_id","grant_type","auth_method":"client_secret_basic"|
//                                     "client_secret_post"|"none","code_verifier_present","status",
//                                     "error","host","refresh_token_issued"}; 404 before any.
//                                     (oidc-provider itself enforces the registered
//                                     token_endpoint_auth_method.)
//   GET  /test/userinfo-requests     how many userinfo requests were answered 200: {"ok":N}.
import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import * as querystring from 'node:querystring';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

// stdout carries the ready line only; oidc-provider prints its notices with console.info.
console.log = console.error;
console.info = console.error;
const log = (...args) => console.error('[oidc_provider]', ...args);

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    host: { type: 'string', default: '127.0.0.1' },
    'tls-cert': { type: 'string' },
    'tls-key': { type: 'string' },
    'endpoints-host': { type: 'string' },
  },
});
const LISTEN = '127.0.0.1';
const HOST = args.host;
const tls = args['tls-cert'] && args['tls-key']
  ? { cert: fs.readFileSync(args['tls-cert']), key: fs.readFileSync(args['tls-key']) }
  : undefined;
const SCHEME = tls ? 'https' : 'http';

// ---------------------------------------------------------------------------------------------
// Accounts

const ACCOUNTS = {
  alice: {
    password: 'alice-password',
    claims: {
      sub: 'alice', email: 'alice@example.com', email_verified: true, name: 'Alice Liddell', groups: ['engineering', 'admins'],
    },
  },
  bob: {
    password: 'bob-password',
    claims: {
      sub: 'bob', email: 'bob@corp.example', email_verified: false, name: 'Bob Builder', groups: ['sales'],
    },
  },
};
const removed = new Set();

function liveAccount(login) {
  return Object.hasOwn(ACCOUNTS, login) && !removed.has(login) ? ACCOUNTS[login] : undefined;
}

async function findAccount(_ctx, id) {
  const account = liveAccount(id);
  if (!account) return undefined;
  return {
    accountId: id,
    // oidc-provider filters these by the granted scopes/claims.
    async claims() { return structuredClone(account.claims); },
  };
}

// ---------------------------------------------------------------------------------------------
// Storage: one in-memory map for every model (sessions, grants, tokens, interactions, clients),
// so /test/logout can find a user's sessions and /test/clients can add clients at run time.

const store = new Map(); // "Model:id" -> { payload, expiresAt (ms) | undefined }
const grantMembers = new Map(); // grantId -> Set of "Model:id" keys of tokens of that grant

function live(key) {
  const entry = store.get(key);
  if (entry && entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
    store.delete(key);
    return undefined;
  }
  return entry;
}

class MemoryAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    store.set(key, { payload, expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
  }

  async find(id) { return live(this.key(id))?.payload; }

  async findByUid(uid) {
    for (const key of store.keys()) {
      if (key.startsWith(`${this.model}:`) && live(key)?.payload.uid === uid) return store.get(key).payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const key of store.keys()) {
      if (key.startsWith(`${this.model}:`) && live(key)?.payload.userCode === userCode) return store.get(key).payload;
    }
    return undefined;
  }

  async consume(id) {
    const entry = live(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) { store.delete(this.key(id)); }

  async revokeByGrantId(grantId) {
    for (const key of grantMembers.get(grantId) ?? []) store.delete(key);
    grantMembers.delete(grantId);
  }
}


// ---------------------------------------------------------------------------------------------
// What the tests read back

const backchannels = [];
let lastTokenRequest;
let userinfoOk = 0;

// oidc-provider sends back-channel logouts through `fetch`. Its own dispatcher refuses loopback
// addresses (SSRF protection), so drop it: the RPs of these tests are all on 127.0.0.1.
async function recordingFetch(url, { dispatcher, ...options }) {
  const record = {
    uri: String(url), status: null, error: null, logout_token: null, header: null, claims: null,
  };
  try {
    const token = new URLSearchParams(String(options.body ?? '')).get('logout_token');
    if (token) {
      const [header, payload] = token.split('.');
      record.logout_token = token;
      record.header = JSON.parse(Buffer.from(header, 'base64url'));
      record.claims = JSON.parse(Buffer.from(payload, 'base64url'));
    }
  } catch (err) {
    record.error = `could not decode the request body: ${err.message}`;
  }
  const isLogout = record.logout_token !== null;
  try {
    const response = await globalThis.fetch(url, options);
    record.status = response.status;
    return response;
  } catch (err) {
    record.error = String(err.cause ?? err);
    throw err;
  } finally {
    if (isLogout) {
      backchannels.push(record);
      log('back-channel logout', record.uri, 'status', record.status, record.error ?? '');
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Pages (self-contained: no fonts or scripts from elsewhere)

const esc = (value) => String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

function page(title, body) {
  return `<!DOCTYPE html>
<html>
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>${esc(title)}</title>
    <style>
      body { font-family: sans-serif; margin: 25px 0; }
      .login-card { padding: 0 40px 10px; width: 274px; background: #f7f7f7; margin: 0 auto 10px;
        border-radius: 2px; box-shadow: 0 2px 2px rgba(0,0,0,.3); overflow: hidden; }
      .login-card h1 { font-weight: 100; text-align: center; font-size: 2.3em; }
      .login-card input[type=text], .login-card input[type=password] { height: 44px; font-size: 16px;
        width: 100%; margin-bottom: 10px; box-sizing: border-box; padding: 0 8px; }
      button { width: 100%; display: block; margin-bottom: 10px; height: 36px; font-weight: 700;
        border: 0; color: #fff; background: #4d90fe; cursor: pointer; }
      .error { color: #d50000; text-align: center; }
      .login-help { text-align: center; font-size: 12px; }
    </style>
  </head>
  <body>
    <div class="login-card">
      <h1>${esc(title)}</h1>
${body}
    </div>
  </body>
</html>`;
}

function loginPage(uid, params, error) {
  const hint = params.login_hint ? ` value="${esc(params.login_hint)}"` : '';
  return page('Sign-in', `      ${error ? `<p class="error">${esc(error)}</p>` : ''}
      <form autocomplete="off" action="/interaction/${esc(uid)}" method="post">
        <input type="hidden" name="prompt" value="login"/>
        <input required type="text" id="username" name="login" placeholder="Enter your login" autofocus${hint}>
        <input required type="password" id="password" name="password" placeholder="and password">
        <button type="submit" class="login login-submit">Sign-in</button>
      </form>
      <div class="login-help"><a href="/interaction/${esc(uid)}/abort">[ Cancel ]</a></div>`);
}

function consentPage(uid, client, details) {
  const scopes = (details.missingOIDCScope ?? []).filter((s) => s !== 'openid' && s !== 'offline_access');
  const claims = (details.missingOIDCClaims ?? []).filter((c) => !['sub', 'sid', 'auth_time', 'acr', 'amr', 'iss'].includes(c));
  const list = (label, items) => (items.length ? `<li>${label}:<ul>${items.map((i) => `<li>${esc(i)}</li>`).join('')}</ul></li>` : '');
  return page('Authorize', `      <p><strong>${esc(client?.clientName ?? client?.clientId ?? '')}</strong> asks for access.</p>
      <ul>${list('scopes', scopes)}${list('claims', claims)}</ul>
      <form autocomplete="off" action="/interaction/${esc(uid)}" method="post">
        <input type="hidden" name="prompt" value="consent"/>
        <button autofocus type="submit" class="login login-submit">Continue</button>
      </form>
      <div class="login-help"><a href="/interaction/${esc(uid)}/abort">[ Cancel ]</a></div>`);
}

async function logoutSource(ctx, form) {
  ctx.body = page('Sign-out', `      <p>Do you want to sign-out from ${esc(ctx.host)}?</p>
      ${form}
      <button autofocus type="submit" form="op.logoutForm" value="yes" name="logout">Yes, sign me out</button>
      <button type="submit" form="op.logoutForm">No, stay signed in</button>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Sign-out Success', '      <p>Your sign-out was successful.</p>');
}

async function renderError(ctx, out) {
  ctx.type = 'html';
  ctx.body = page('Error', Object.entries(out)
    .map(([key, value]) => `      <pre><strong>${esc(key)}</strong>: ${esc(value)}</pre>`).join('\n'));
}

// ---------------------------------------------------------------------------------------------
// The provider

const configuration = {
  adapter: MemoryAdapter,
  findAccount,
  claims: {
    address: ['address'],
    email: ['email', 'email_verified'],
    phone: ['phone_number', 'phone_number_verified'],
    profile: ['birthdate', 'family_name', 'gender', 'given_name', 'locale', 'middle_name', 'name',
      'nickname', 'picture', 'preferred_username', 'profile', 'updated_at', 'website', 'zoneinfo'],
    groups: ['groups'],
  },
  features: {
    devInteractions: { enabled: false },
    rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
    backchannelLogout: { enabled: true },
  },
  renderError,
  fetch: recordingFetch,
};

// ---------------------------------------------------------------------------------------------
// HTTP helpers for the routes below (Koa context)

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let size = 0;
    req.on('data', (chunk) => {
      size += chunk.length;
      if (size > 64 * 1024) reject(new Error('request body too large'));
      else chunks.push(chunk);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function json(ctx, status, body) {
  ctx.status = status;
  ctx.set('cache-control', 'no-store');
  if (body !== undefined) ctx.body = body;
}

function html(ctx, status, body) {
  ctx.status = status;
  ctx.set('cache-control', 'no-store');
  ctx.type = 'html';
  ctx.body = body;
}

// ---------------------------------------------------------------------------------------------
// Login and consent

async function interactionRoutes(provider, ctx) {
  const match = /^\/interaction\/([^/]+)(\/abort)?$/.exec(ctx.path);
  if (!match) return false;
  const [, uid, abort] = match;

  let details;
  try {
    details = await provider.interactionDetails(ctx.req, ctx.res);
  } catch (err) {
    html(ctx, 400, page('Error', `      <p>${esc(err.message)}</p>`));
    return true;
  }
  if (details.uid !== uid) {
    html(ctx, 400, page('Error', '      <p>interaction cookie does not match this URL</p>'));
    return true;
  }
  const { prompt, params } = details;

  const finish = async (result, mergeWithLastSubmission) => {
    const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, { mergeWithLastSubmission });
    ctx.set('cache-control', 'no-store');
    ctx.status = 303;
    ctx.redirect(returnTo);
  };

  if (abort && ctx.method === 'GET') {
    await finish({ error: 'access_denied', error_description: 'End-User aborted interaction' }, false);
    return true;
  }

  if (ctx.method === 'GET') {
    if (prompt.name === 'login') html(ctx, 200, loginPage(uid, params));
    else if (prompt.name === 'consent') html(ctx, 200, consentPage(uid, await provider.Client.find(params.client_id), prompt.details));
    else html(ctx, 501, page('Error', `      <p>prompt ${esc(prompt.name)} not implemented</p>`));
    return true;
  }

  if (ctx.method !== 'POST') return false;
  const form = querystring.parse(await readBody(ctx.req));

  if (form.prompt === 'login' && prompt.name === 'login') {
    const login = String(form.login ?? '');
    const account = liveAccount(login);
    if (!account || account.password !== String(form.password ?? '')) {
      log('login failed for', JSON.stringify(login));
      html(ctx, 401, loginPage(uid, { ...params, login_hint: login }, 'Invalid login or password'));
      return true;
    }
    log('login ok for', login);
    await finish({ login: { accountId: login } }, false);
    return true;
  }

  if (form.prompt === 'consent' && prompt.name === 'consent') {
    const { grantId, session } = details;
    const grant = grantId
      ? await provider.Grant.find(grantId)
      : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
    const { missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    for (const [indicator, scope] of Object.entries(missingResourceScopes ?? {})) {
      grant.addResourceScope(indicator, scope.join(' '));
    }
    await finish({ consent: { grantId: await grant.save() } }, true);
    return true;
  }

  html(ctx, 400, page('Error', `      <p>this interaction expects the ${esc(prompt.name)} form</p>`));
  return true;
}

// ---------------------------------------------------------------------------------------------
// Token requests: record the client authentication method (oidc-provider enforces it)

function tokenAuth(ctx, body) {
  const header = ctx.get('authorization');
  if (/^basic /i.test(header)) {
    const decoded = Buffer.from(header.slice(6).trim(), 'base64').toString('utf8');
    const clientId = decodeURIComponent(decoded.slice(0, decoded.indexOf(':')).replace(/\+/g, '%20'));
    return { method: 'client_secret_basic', clientId };
  }
  if (body.client_secret !== undefined) return { method: 'client_secret_post', clientId: body.client_id };
  if (body.client_assertion !== undefined) return { method: 'jwt', clientId: body.client_id };
  return { method: 'none', clientId: body.client_id };
}

async function tokenRoute(ctx, next) {
  const text = await readBody(ctx.req);
  ctx.req.body = text; // oidc-provider then reads req.body (and warns once on stderr that it does)
  const body = querystring.parse(text);
  let auth;
  try {
    auth = tokenAuth(ctx, body);
  } catch {
    auth = { method: 'client_secret_basic', clientId: undefined };
  }
  const record = {
    client_id: auth.clientId ?? null,
    grant_type: body.grant_type ?? null,
    auth_method: auth.method,
    code_verifier_present: typeof body.code_verifier === 'string' && body.code_verifier.length > 0,
    status: null,
    error: null,
    host: ctx.get('x-original-host') || null,
    refresh_token_issued: false,
  };
  lastTokenRequest = record;
  await next();
  record.status = ctx.status;
  if (ctx.status >= 400) record.error = ctx.body?.error ?? null;
  record.refresh_token_issued = ctx.status === 200 && typeof ctx.body?.refresh_token === 'string';
  log('token request', JSON.stringify(record));
}

// ---------------------------------------------------------------------------------------------
// Server-side logout of one user (what /session/end/confirm does with logout=yes, for every
// session of the account)

async function logoutUser(provider, login) {
  const sessionIds = [...store.keys()]
    .filter((key) => key.startsWith('Session:') && live(key)?.payload.accountId === login)
    .map((key) => key.slice('Session:'.length));
  const sent = [];
  for (const id of sessionIds) {
    const session = await provider.Session.find(id);
    if (!session) continue;
    for (const [clientId, { sid, grantId }] of Object.entries(session.authorizations ?? {})) {
      const client = await provider.Client.find(clientId);
      if (client?.backchannelLogoutUri) {
        const before = backchannels.length;
        try {
          await client.backchannelLogout(login, sid);
          sent.push({ client_id: clientId, sid, ok: true, status: backchannels[before]?.status ?? null });
        } catch (err) {
          const error = err.cause ? `${err.message}: ${err.cause.message ?? err.cause}` : err.message;
          log('back-channel logout to', client.backchannelLogoutUri, 'failed:', error);
          sent.push({
            client_id: clientId, sid, ok: false, status: backchannels[before]?.status ?? null, error,
          });
        }
      }
      if (grantId) {
        await Promise.all([provider.AccessToken, provider.RefreshToken, provider.AuthorizationCode]
          .map((model) => model.revokeByGrantId(grantId)));
        await provider.Grant.adapter.destroy(grantId);
      }
    }
    await session.destroy();
  }
  return { sessions: sessionIds.length, sent };
}

// ---------------------------------------------------------------------------------------------
// Test control

async function registerClient(provider, body) {
  const metadata = {
    client_id: body.client_id,
    client_secret: body.client_secret,
    redirect_uris: body.redirect_uris ?? [],
    post_logout_redirect_uris: body.post_logout_redirect_uris ?? [],
    grant_types: body.grant_types ?? ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    token_endpoint_auth_method: body.token_endpoint_auth_method ?? 'client_secret_basic',
  };
  if (body.backchannel_logout_uri) {
    metadata.backchannel_logout_uri = body.backchannel_logout_uri;
    metadata.backchannel_logout_session_required = true;
  }
  if (body.client_name) metadata.client_name = body.client_name;
  await provider.Client.validate(metadata); // throws InvalidClientMetadata
  await provider.Client.adapter.upsert(metadata.client_id, metadata);
  log('client registered', JSON.stringify(metadata));
}

async function testRoutes(provider, ctx) {
  const { path, method } = ctx;
  let m;
  if (method === 'POST' && path === '/test/clients') {
    let body;
    try {
      body = JSON.parse(await readBody(ctx.req));
    } catch (err) {
      json(ctx, 400, { error: 'invalid_request', error_description: `body is not JSON: ${err.message}` });
      return;
    }
    if (typeof body?.client_id !== 'string' || typeof body.client_secret !== 'string') {
      json(ctx, 400, { error: 'invalid_request', error_description: 'client_id and client_secret are required strings' });
      return;
    }
    try {
      await registerClient(provider, body);
    } catch (err) {
      json(ctx, 400, { error: err.error ?? 'invalid_client_metadata', error_description: err.error_description ?? err.message });
      return;
    }
    json(ctx, 204);
  } else if (method === 'POST' && (m = /^\/test\/users\/([^/]+)\/(remove|restore)$/.exec(path))) {
    const login = decodeURIComponent(m[1]);
    if (!Object.hasOwn(ACCOUNTS, login)) {
      json(ctx, 404, { error: 'no such account' });
      return;
    }
    if (m[2] === 'remove') removed.add(login);
    else removed.delete(login);
    log('account', login, m[2] === 'remove' ? 'removed' : 'restored');
    json(ctx, 204);
  } else if (method === 'POST' && (m = /^\/test\/logout\/([^/]+)$/.exec(path))) {
    const result = await logoutUser(provider, decodeURIComponent(m[1]));
    log('server-side logout', m[1], JSON.stringify(result));
    json(ctx, 200, result);
  } else if (method === 'GET' && path === '/test/last-backchannel') {
    if (backchannels.length) json(ctx, 200, backchannels.at(-1));
    else json(ctx, 404, { error: 'no back-channel logout sent yet' });
  } else if (method === 'GET' && path === '/test/backchannels') {
    json(ctx, 200, backchannels);
  } else if (method === 'GET' && path === '/test/userinfo-requests') {
    json(ctx, 200, { ok: userinfoOk });
  } else if (method === 'GET' && path === '/test/last-token-request') {
    if (lastTokenRequest) json(ctx, 200, lastTokenRequest);
    else json(ctx, 404, { error: 'no token request yet' });
  } else {
    json(ctx, 404, { error: `no test route ${method} ${path}` });
  }
}

// ---------------------------------------------------------------------------------------------
// Start

async function listen() {
  const server = tls ? https.createServer(tls) : http.createServer();
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(Number(args.port), LISTEN, resolve);
  });
  return server;
}

const server = await listen();
const { port } = server.address();
const issuerHost = `${HOST}:${port}`;
const issuer = `${SCHEME}://${issuerHost}`;
const provider = new Provider(issuer, configuration);
// The token endpoint and userinfo on a second host (--endpoints-host), as some providers have them.
const split = args['endpoints-host'] ? await listen() : undefined;
const endpoints = split && `${SCHEME}://${args['endpoints-host']}:${split.address().port}`;
const SPLIT_PATHS = new Set(['/token', '/me']);

provider.on('server_error', (_ctx, err) => log('server_error', err));
provider.on('backchannel.error', (_ctx, err, client) => log('backchannel.error', client.clientId, err.message));
// Why a request was refused (the HTTP answers keep their error_description generic).
for (const event of ['authorization.error', 'grant.error', 'userinfo.error', 'end_session.error', 'revocation.error']) {
  provider.on(event, (_ctx, err) => log(event, err.error ?? err.message, err.error_description ?? '', err.error_detail ?? ''));
}
provider.on('end_session.success', () => log('end_session.success'));

provider.use(async (ctx, next) => {
  // Discovery and every URL the provider builds come from the Host header: pin it to the issuer.
  const original = ctx.req.headers.host;
  ctx.req.headers['x-original-host'] = original;
  ctx.req.headers.host = issuerHost;
  const started = Date.now();
  const onEndpointsHost = split !== undefined && ctx.req.socket.localPort === split.address().port;
  try {
    if (split && onEndpointsHost !== SPLIT_PATHS.has(ctx.path)) {
      json(ctx, 404, { error: 'not_found', error_description: `${ctx.path} is not served on ${original}` });
    } else if (ctx.path.startsWith('/test/')) {
      await testRoutes(provider, ctx);
    } else if (ctx.path.startsWith('/interaction/')) {
      if (!(await interactionRoutes(provider, ctx))) await next();
    } else if (ctx.method === 'POST' && ctx.path === '/token') {
      await tokenRoute(ctx, next);
    } else {
      await next();
      if (ctx.path === '/me' && ctx.status === 200) userinfoOk += 1;
      if (endpoints && ctx.path === '/.well-known/openid-configuration' && ctx.status === 200) {
        ctx.body = { ...ctx.body, token_endpoint: `${endpoints}/token`, userinfo_endpoint: `${endpoints}/me` };
      }
    }
  } catch (err) {
    log('error in', ctx.method, ctx.path, err);
    json(ctx, 500, { error: 'server_error', error_description: err.message });
  }
  log(ctx.method, ctx.url, '->', ctx.status, `${Date.now() - started}ms`);
});

server.on('request', provider.callback());
split?.on('request', provider.callback());

function stop(signal) {
  log(`${signal}: stopping`);
  for (const s of [server, split]) {
    s?.close();
    s?.closeAllConnections();
  }
  process.exit(0);
}
process.on('SIGTERM', () => stop('SIGTERM'));
process.on('SIGINT', () => stop('SIGINT'));

process.stdout.write(`${JSON.stringify({ issuer, pid: process.pid, ...(endpoints ? { endpoints } : {}) })}\n`);
log('ready at', issuer, endpoints ? `(token and userinfo at ${endpoints})` : '');
