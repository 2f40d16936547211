// Test-only OAuth 2.0 authorization server built on the real `oidc-provider`
// package. Started by the Rust integration tests (tests/support/oidc_provider.rs).
//
// Contract:
//   * listens on 127.0.0.1 only;
//   * prints exactly ONE JSON line on stdout once ready, everything else goes to
//     stderr (never token values or client secrets);
//   * exits when stdin closes (parent died) or on SIGTERM / SIGINT.
//
// See README.md for the options, the static clients and the /test/* admin routes.

import { randomBytes, randomUUID, generateKeyPairSync } from 'node:crypto';
import { createServer } from 'node:http';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

// ---------------------------------------------------------------------------
// Options: argv wins over env, env wins over defaults.
// ---------------------------------------------------------------------------

const { values: argv } = parseArgs({
  options: {
    port: { type: 'string' },
    'access-token-ttl': { type: 'string' },
    'client-credentials-ttl': { type: 'string' },
    'refresh-token-ttl': { type: 'string' },
    'device-code-ttl': { type: 'string' },
    'ignore-stdin': { type: 'boolean' },
    'lenient-client-auth': { type: 'boolean' },
  },
  strict: true,
});

function intOption(name, envName, fallback, { min = 1 } = {}) {
  const raw = argv[name] ?? process.env[envName];
  if (raw === undefined || raw === '') return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value < min) {
    log(`invalid value for --${name} / ${envName}: ${JSON.stringify(raw)}`);
    process.exit(2);
  }
  return value;
}

function log(...args) {
  // stderr only; stdout is reserved for the single "ready" JSON line.
  console.error('[oidc-provider]', ...args);
}

const PORT = intOption('port', 'OIDC_PORT', 0, { min: 0 });
const ACCESS_TOKEN_TTL = intOption('access-token-ttl', 'OIDC_ACCESS_TOKEN_TTL', 30);
const CLIENT_CREDENTIALS_TTL = intOption('client-credentials-ttl', 'OIDC_CLIENT_CREDENTIALS_TTL', 30);
const REFRESH_TOKEN_TTL = intOption('refresh-token-ttl', 'OIDC_REFRESH_TOKEN_TTL', 24 * 60 * 60);
const DEVICE_CODE_TTL = intOption('device-code-ttl', 'OIDC_DEVICE_CODE_TTL', 600);
const IGNORE_STDIN = argv['ignore-stdin'] === true || process.env.OIDC_IGNORE_STDIN === '1';
const STRICT_CLIENT_AUTH = !(argv['lenient-client-auth'] === true || process.env.OIDC_LENIENT_CLIENT_AUTH === '1');
const HOST = '127.0.0.1';

// ---------------------------------------------------------------------------
// Lifecycle: exit when the parent goes away.
// ---------------------------------------------------------------------------

function shutdown(reason) {
  log(`exiting: ${reason}`);
  process.exit(0);
}

process.on('SIGTERM', () => shutdown('SIGTERM'));
process.on('SIGINT', () => shutdown('SIGINT'));
if (!IGNORE_STDIN) {
  process.stdin.on('end', () => shutdown('stdin closed'));
  process.stdin.on('close', () => shutdown('stdin closed'));
  process.stdin.on('error', () => shutdown('stdin error'));
  process.stdin.resume(); // discard anything written to us
}

// ---------------------------------------------------------------------------
// Static clients. Keep in sync with README.md and tests/support/oidc_provider.rs.
// ---------------------------------------------------------------------------

const USER_SCOPES = 'openid offline_access api:read api:write';
const REDIRECT_URIS = ['http://127.0.0.1/callback'];
const USER_GRANTS = ['authorization_code', 'refresh_token'];
// The clients a human authorizes in a browser or on a second device (basic-client and
// public-client): `application_type: native` makes oidc-provider accept the loopback
// redirect on any port (RFC 8252 section 7.3); the HTTPS one is for "paste the URL you
// were sent to" (never fetched by the tests).
const DEVICE_CODE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
const INTERACTIVE_REDIRECT_URIS = ['http://127.0.0.1/callback', 'https://app.example.test/callback'];
const INTERACTIVE_GRANTS = ['authorization_code', DEVICE_CODE_GRANT, 'refresh_token'];
// The one account the interaction pages accept.
const TEST_USER = 'test-user';
const TEST_PASSWORD = 'test-password';

const CLIENTS = [
  {
    client_id: 'basic-client',
    client_secret: 'basic-client-secret-0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_basic',
    application_type: 'native',
    grant_types: INTERACTIVE_GRANTS,
    response_types: ['code'],
    redirect_uris: INTERACTIVE_REDIRECT_URIS,
    scope: USER_SCOPES,
  },
  {
    client_id: 'post-client',
    client_secret: 'post-client-secret-0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: USER_GRANTS,
    response_types: ['code'],
    redirect_uris: REDIRECT_URIS,
    scope: USER_SCOPES,
  },
  {
    client_id: 'public-client',
    token_endpoint_auth_method: 'none',
    application_type: 'native',
    grant_types: INTERACTIVE_GRANTS,
    response_types: ['code'],
    redirect_uris: INTERACTIVE_REDIRECT_URIS,
    scope: USER_SCOPES,
  },
  {
    client_id: 'cc-client',
    client_secret: 'cc-client-secret-0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api:read api:write',
  },
  {
    // The strict client-auth check (default on, see README) allows only the
    // registered method, hence a second client for client_secret_post.
    client_id: 'cc-post-client',
    client_secret: 'cc-post-client-secret-0123456789abcdef',
    token_endpoint_auth_method: 'client_secret_post',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'api:read api:write',
  },
];

// ---------------------------------------------------------------------------
// Unbounded in-memory adapter. The built-in MemoryAdapter is an LRU capped at
// 1000 entries, which long-running tests with short TTLs could exceed (evicting
// live grants / refresh tokens). This one keeps everything until it expires.
// ---------------------------------------------------------------------------

const store = new Map(); // key -> { payload, expiresAt (ms) | Infinity }
const grantMembers = new Map(); // grantId -> Set<key>
const secondary = new Map(); // "uid:..."/"userCode:..." -> id
const EXPIRY_GRACE_MS = 60_000; // keep expired entries a bit so errors say "expired"

function sweep() {
  const now = Date.now();
  for (const [key, entry] of store) {
    if (entry.expiresAt <= now) dropKey(key);
  }
}
setInterval(sweep, 30_000).unref();

function dropKey(key) {
  const entry = store.get(key);
  store.delete(key);
  if (!entry) return;
  const { payload } = entry;
  if (payload.grantId) grantMembers.get(payload.grantId)?.delete(key);
  if (payload.uid) secondary.delete(`uid:${payload.uid}`);
  if (payload.userCode) secondary.delete(`userCode:${payload.userCode}`);
}

class TestAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    dropKey(key);
    const expiresAt = typeof expiresIn === 'number'
      ? Date.now() + expiresIn * 1000 + EXPIRY_GRACE_MS
      : Infinity;
    store.set(key, { payload, expiresAt });
    if (payload.grantId) {
      if (!grantMembers.has(payload.grantId)) grantMembers.set(payload.grantId, new Set());
      grantMembers.get(payload.grantId).add(key);
    }
    if (payload.uid) secondary.set(`uid:${payload.uid}`, id);
    if (payload.userCode) secondary.set(`userCode:${payload.userCode}`, id);
  }

  async find(id) {
    const key = this.key(id);
    const entry = store.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= Date.now()) {
      dropKey(key);
      return undefined;
    }
    return entry.payload;
  }

  async findByUid(uid) {
    const id = secondary.get(`uid:${uid}`);
    return id === undefined ? undefined : this.find(id);
  }

  async findByUserCode(userCode) {
    const id = secondary.get(`userCode:${userCode}`);
    return id === undefined ? undefined : this.find(id);
  }

  async consume(id) {
    const entry = store.get(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    dropKey(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const members = grantMembers.get(grantId);
    if (!members) return;
    for (const key of [...members]) {
      if (key.startsWith(`${this.model}:`)) dropKey(key);
    }
    if (members.size === 0) grantMembers.delete(grantId);
  }
}

// ---------------------------------------------------------------------------
// Accounts: created by POST /test/grants.
// ---------------------------------------------------------------------------

const accounts = new Set();

async function findAccount(_ctx, sub) {
  if (!accounts.has(sub)) return undefined;
  return {
    accountId: sub,
    async claims() {
      return { sub };
    },
  };
}

// ---------------------------------------------------------------------------
// Stats and fault injection (token endpoint only).
// ---------------------------------------------------------------------------

function emptyStats() {
  return {
    token_requests: 0,
    device_authorizations: 0,
    successes: 0,
    errors: {},
    by_grant_type: {},
    by_client: {},
    faults_injected: 0,
  };
}

let stats = emptyStats();
let faults = []; // queue of { status, error, retry_after, delay_ms, grant_type }

// The first pending fault meant for a request of this grant_type (a fault without
// grant_type is meant for any), taken off the queue.
function takeFault(grantType) {
  const index = faults.findIndex((f) => !f.grant_type || f.grant_type === grantType);
  return index === -1 ? undefined : faults.splice(index, 1)[0];
}

function bump(map, key) {
  map[key] = (map[key] ?? 0) + 1;
}

function sleep(ms) {
  return new Promise((resolve) => { setTimeout(resolve, ms); });
}

async function readBody(req, limit = 1 << 20) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw new Error('body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

function basicClientId(authorization) {
  if (typeof authorization !== 'string' || !authorization.toLowerCase().startsWith('basic ')) {
    return undefined;
  }
  try {
    const decoded = Buffer.from(authorization.slice(6).trim(), 'base64').toString('utf8');
    const idx = decoded.indexOf(':');
    return decodeURIComponent((idx === -1 ? decoded : decoded.slice(0, idx)).replace(/\+/g, '%20'));
  } catch {
    return undefined;
  }
}

// ---------------------------------------------------------------------------
// The provider.
// ---------------------------------------------------------------------------

function makeJwks() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'test-rs256', alg: 'RS256', use: 'sig' }] };
}

function buildProvider(issuer) {
  const provider = new Provider(issuer, {
    adapter: TestAdapter,
    clients: CLIENTS,
    findAccount,
    jwks: makeJwks(),
    cookies: { keys: [randomBytes(32).toString('base64url')] },
    scopes: ['openid', 'offline_access', 'api:read', 'api:write'],
    claims: { openid: ['sub'] },
    routes: {
      token: '/token',
      revocation: '/token/revocation',
      introspection: '/token/introspection',
    },
    // Every refresh rotates the refresh token. Presenting a consumed refresh
    // token revokes the whole grant (oidc-provider's reuse detection).
    rotateRefreshToken: true,
    // oidc-provider drops `offline_access` from an authorization request without
    // prompt=consent (and from every device authorization request), and by default
    // issues refresh tokens only with that scope. Here every client allowed the
    // refresh_token grant gets one, as with most real providers' confidential and
    // native apps.
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    // Without offline_access those tokens would also end with the browser session
    // that approved them (a device flow's is gone at once): they are offline here.
    expiresWithSession: async () => false,
    // The interaction pages are served by handleInteraction below.
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    features: {
      devInteractions: { enabled: false },
      // RFC 8628. Answers have no `interval` (clients use the default 5 s) and
      // oidc-provider never answers slow_down by itself: see POST /test/faults.
      deviceFlow: {
        enabled: true,
        // Own pages: the defaults print a NOTICE on stdout (which carries only
        // the ready line) and the tests look for the data-page markers.
        userCodeInputSource: async (ctx, form, _out, err) => {
          const message = err ? `<p class="error" data-error="${escapeHtml(err.name ?? 'Error')}">${escapeHtml(err.name ?? 'Error')}</p>` : '';
          ctx.body = `<!DOCTYPE html><html><body data-page="device-input">${message}${form}<button type="submit" form="op.deviceInputForm">Continue</button></body></html>`;
        },
        userCodeConfirmSource: async (ctx, form, client, _deviceInfo, userCode) => {
          ctx.body = `<!DOCTYPE html><html><body data-page="device-confirm"><p>${escapeHtml(client.clientId)}: <code>${escapeHtml(userCode)}</code></p>${form}<button type="submit" form="op.deviceConfirmForm">Continue</button></body></html>`;
        },
        successSource: async (ctx) => {
          ctx.body = '<!DOCTYPE html><html><body data-page="device-success"><h1>Sign-in Success</h1></body></html>';
        },
      },
      clientCredentials: { enabled: true },
      introspection: { enabled: true },
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        // No default resource: plain client_credentials (with or without
        // scope=api:read) yields an opaque token; an explicit `resource`
        // parameter is accepted for any absolute URI.
        defaultResource: async () => undefined,
        getResourceServerInfo: async () => ({
          scope: 'api:read api:write',
          accessTokenFormat: 'opaque',
        }),
      },
    },
    ttl: {
      AccessToken: () => ACCESS_TOKEN_TTL,
      ClientCredentials: () => CLIENT_CREDENTIALS_TTL,
      RefreshToken: () => REFRESH_TOKEN_TTL,
      Grant: () => Math.max(REFRESH_TOKEN_TTL, 14 * 24 * 60 * 60),
      AuthorizationCode: 60,
      DeviceCode: DEVICE_CODE_TTL,
      IdToken: 3600,
      Interaction: 3600,
      Session: 14 * 24 * 60 * 60,
    },
  });

  const tokenPath = new URL(provider.urlFor('token')).pathname;
  const deviceAuthorizationPath = new URL(provider.urlFor('device_authorization')).pathname;

  provider.on('server_error', (_ctx, err) => {
    log('server_error:', err?.name, err?.message);
  });

  // Counts every token-endpoint request (including rejected ones), applies
  // injected faults and the strict client-auth check. Runs before
  // oidc-provider's own middleware. The form body is read here and handed to
  // oidc-provider as an already-parsed body (it logs a one-time warning).
  provider.use(async (ctx, next) => {
    if (ctx.method === 'POST' && ctx.path === deviceAuthorizationPath) {
      stats.device_authorizations += 1;
    }
    if (ctx.method !== 'POST' || ctx.path !== tokenPath) {
      await next();
      return;
    }

    stats.token_requests += 1;

    let raw = '';
    try {
      raw = await readBody(ctx.req, 56 * 1024);
    } catch { /* oidc-provider will reject the empty body */ }
    ctx.request.body = raw;
    const params = new URLSearchParams(raw);
    const basicId = basicClientId(ctx.get('authorization'));
    bump(stats.by_grant_type, params.get('grant_type') ?? 'unknown');
    bump(stats.by_client, basicId ?? params.get('client_id') ?? 'unknown');

    const reject = (status, error, description) => {
      bump(stats.errors, error);
      ctx.status = status;
      ctx.set('Cache-Control', 'no-store');
      ctx.body = { error, error_description: description };
    };

    const fault = takeFault(params.get('grant_type') ?? 'unknown');
    if (fault && fault.pass) {
      // A slow but successful answer: the token is rotated only after the delay.
      stats.faults_injected += 1;
      await sleep(fault.delay_ms);
    } else if (fault) {
      stats.faults_injected += 1;
      if (fault.delay_ms) await sleep(fault.delay_ms);
      if (fault.retry_after !== undefined) ctx.set('Retry-After', String(fault.retry_after));
      const error = fault.error ?? (fault.status >= 500 ? 'temporarily_unavailable' : 'invalid_request');
      reject(fault.status, error, 'fault injected by test server');
      return;
    }

    if (STRICT_CLIENT_AUTH) {
      // oidc-provider accepts client_secret_basic and client_secret_post
      // interchangeably; real-world servers may not, so by default we insist
      // on the registered method.
      let used;
      if (ctx.get('authorization')) used = 'client_secret_basic';
      else if (params.has('client_secret')) used = 'client_secret_post';
      const registered = CLIENTS.find((c) => c.client_id === (basicId ?? params.get('client_id')));
      const method = registered?.token_endpoint_auth_method;
      if (used && (method === 'client_secret_basic' || method === 'client_secret_post') && used !== method) {
        if (used === 'client_secret_basic') {
          ctx.set('WWW-Authenticate', `Basic realm="${issuer}", error="invalid_client", error_description="client authentication failed"`);
        }
        reject(401, 'invalid_client', 'client authentication failed');
        return;
      }
    }

    try {
      await next();
      // The provider has answered (and rotated): the answer reaches the client late, or, if
      // the client gave up meanwhile, never.
      if (fault && fault.answer_delay_ms) await sleep(fault.answer_delay_ms);
    } finally {
      const body = ctx.body;
      if (ctx.status >= 200 && ctx.status < 300 && body && typeof body === 'object' && body.access_token) {
        stats.successes += 1;
      } else {
        const code = body && typeof body === 'object' && typeof body.error === 'string'
          ? body.error
          : `http_${ctx.status}`;
        bump(stats.errors, code);
      }
    }
  });

  return provider;
}

// ---------------------------------------------------------------------------
// Admin routes (/test/*), handled before the provider sees the request.
// ---------------------------------------------------------------------------

function sendJson(res, status, body) {
  const data = JSON.stringify(body);
  res.writeHead(status, {
    'content-type': 'application/json; charset=utf-8',
    'content-length': Buffer.byteLength(data),
    'cache-control': 'no-store',
  });
  res.end(data);
}

function isLoopback(address) {
  return address === '127.0.0.1' || address === '::1' || address === '::ffff:127.0.0.1'
    || (typeof address === 'string' && (address.startsWith('127.') || address.startsWith('::ffff:127.')));
}

async function jsonBody(req) {
  const text = await readBody(req);
  if (!text.trim()) return {};
  return JSON.parse(text);
}

async function handleAdmin(provider, req, res) {
  if (!isLoopback(req.socket.remoteAddress)) {
    sendJson(res, 403, { error: 'forbidden' });
    return;
  }

  const { pathname } = new URL(req.url, 'http://localhost');
  const method = req.method;

  try {
    if (method === 'POST' && pathname === '/test/grants') {
      const body = await jsonBody(req);
      const clientId = body.client_id;
      const scope = typeof body.scope === 'string' && body.scope.trim()
        ? body.scope.trim().split(/\s+/).join(' ')
        : 'openid offline_access api:read';
      const client = typeof clientId === 'string' ? await provider.Client.find(clientId) : undefined;
      if (!client) {
        sendJson(res, 400, { error: 'unknown client_id' });
        return;
      }
      if (!client.grantTypeAllowed('refresh_token')) {
        sendJson(res, 400, { error: 'client is not allowed the refresh_token grant' });
        return;
      }
      const allowed = new Set((client.scope ?? '').split(' '));
      const notAllowed = scope.split(' ').filter((s) => !allowed.has(s));
      if (notAllowed.length) {
        sendJson(res, 400, { error: `scope not allowed for client: ${notAllowed.join(' ')}` });
        return;
      }

      const accountId = typeof body.account_id === 'string' && body.account_id
        ? body.account_id
        : `account-${randomUUID()}`;
      accounts.add(accountId);

      const grant = new provider.Grant({ accountId, clientId: client.clientId });
      grant.addOIDCScope(scope);
      const grantId = await grant.save();

      const refreshToken = new provider.RefreshToken({
        accountId,
        client,
        grantId,
        scope,
        gty: 'authorization_code',
        rotations: 0,
        expiresWithSession: false,
        authTime: Math.floor(Date.now() / 1000),
      });
      const value = await refreshToken.save();

      sendJson(res, 200, { refresh_token: value, grant_id: grantId, account_id: accountId });
      return;
    }

    const revokeMatch = /^\/test\/grants\/([^/]+)\/revoke$/.exec(pathname);
    if (method === 'POST' && revokeMatch) {
      const grantId = decodeURIComponent(revokeMatch[1]);
      const existed = !!(await provider.Grant.adapter.find(grantId));
      await Promise.all([
        provider.AccessToken.revokeByGrantId(grantId),
        provider.RefreshToken.revokeByGrantId(grantId),
        provider.AuthorizationCode.revokeByGrantId(grantId),
        provider.Grant.adapter.destroy(grantId),
      ]);
      sendJson(res, 200, { grant_id: grantId, existed });
      return;
    }

    if (method === 'GET' && pathname === '/test/stats') {
      sendJson(res, 200, stats);
      return;
    }

    if (method === 'POST' && pathname === '/test/stats/reset') {
      stats = emptyStats();
      sendJson(res, 200, stats);
      return;
    }

    if (method === 'POST' && pathname === '/test/faults') {
      const body = await jsonBody(req);
      const count = Number.isInteger(body.count) && body.count >= 0 ? body.count : 1;
      const status = Number.isInteger(body.status) && body.status >= 200 && body.status <= 599 ? body.status : 503;
      const fault = {
        status,
        error: typeof body.error === 'string' ? body.error : undefined,
        retry_after: body.retry_after,
        delay_ms: Number.isInteger(body.delay_ms) && body.delay_ms > 0 ? body.delay_ms : 0,
        pass: body.pass === true,
        answer_delay_ms: Number.isInteger(body.answer_delay_ms) && body.answer_delay_ms > 0 ? body.answer_delay_ms : 0,
        grant_type: typeof body.grant_type === 'string' && body.grant_type ? body.grant_type : undefined,
      };
      for (let i = 0; i < count; i += 1) faults.push({ ...fault });
      sendJson(res, 200, { pending: faults.length });
      return;
    }

    if (method === 'DELETE' && pathname === '/test/faults') {
      faults = [];
      sendJson(res, 200, { pending: 0 });
      return;
    }

    sendJson(res, 404, { error: 'not found' });
  } catch (err) {
    log('admin route error:', err?.name, err?.message);
    sendJson(res, 500, { error: 'internal error', message: String(err?.message ?? err) });
  }
}

// ---------------------------------------------------------------------------
// Interaction pages (login + consent), as plain HTML forms a test "browser"
// (tests/support/oidc_provider.rs) submits. Every page carries
// data-prompt="login" | "consent" on its form.
//
//   GET  /interaction/:uid          the page of the current prompt
//   POST /interaction/:uid/login    login=test-user&password=test-password
//   POST /interaction/:uid/confirm  grants every requested scope
//   POST /interaction/:uid/abort    ends the interaction with access_denied
// ---------------------------------------------------------------------------

function sendHtml(res, status, html) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'content-length': Buffer.byteLength(html),
    'cache-control': 'no-store',
  });
  res.end(html);
}

function escapeHtml(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function interactionPage(uid, prompt, clientId, scope, message = '') {
  const base = `/interaction/${encodeURIComponent(uid)}`;
  const deny = `<form data-prompt="${prompt}" id="deny" method="post" action="${base}/abort"><button type="submit">Deny</button></form>`;
  const main = prompt === 'login'
    ? `<form data-prompt="login" id="login" method="post" action="${base}/login">
  <input type="text" name="login"/><input type="password" name="password"/>
  <button type="submit">Sign in</button></form>`
    : `<form data-prompt="consent" id="consent" method="post" action="${base}/confirm">
  <p>Allow ${escapeHtml(clientId)} the scopes ${escapeHtml(scope ?? '')}?</p>
  <button type="submit">Allow</button></form>`;
  return `<!DOCTYPE html><html><head><title>${prompt}</title></head><body>
<h1>${prompt === 'login' ? 'Sign-in' : 'Consent'}</h1>${message}
${main}
${deny}
</body></html>`;
}

async function handleInteraction(provider, req, res) {
  const { pathname } = new URL(req.url, 'http://localhost');
  const match = /^\/interaction\/([^/]+)(?:\/(login|confirm|abort))?$/.exec(pathname);
  if (!match) {
    sendHtml(res, 404, '<p>not found</p>');
    return;
  }
  const action = match[2];
  try {
    const details = await provider.interactionDetails(req, res);
    const { uid, prompt, params } = details;
    if (!action && req.method === 'GET') {
      sendHtml(res, 200, interactionPage(uid, prompt.name, params.client_id, params.scope));
      return;
    }
    if (req.method !== 'POST' || !action) {
      sendHtml(res, 405, '<p>method not allowed</p>');
      return;
    }
    const form = new URLSearchParams(await readBody(req, 64 * 1024));
    if (action === 'abort') {
      await provider.interactionFinished(req, res, {
        error: 'access_denied',
        error_description: 'End-User denied the request',
      }, { mergeWithLastSubmission: false });
      return;
    }
    if (action === 'login') {
      if (prompt.name !== 'login') {
        sendHtml(res, 400, '<p>not a login prompt</p>');
        return;
      }
      if (form.get('login') !== TEST_USER || form.get('password') !== TEST_PASSWORD) {
        sendHtml(res, 401, interactionPage(uid, 'login', params.client_id, params.scope,
          '<p class="error">Invalid login or password</p>'));
        return;
      }
      accounts.add(TEST_USER);
      await provider.interactionFinished(req, res, { login: { accountId: TEST_USER } },
        { mergeWithLastSubmission: false });
      return;
    }
    // confirm
    if (prompt.name !== 'consent') {
      sendHtml(res, 400, '<p>not a consent prompt</p>');
      return;
    }
    const { grantId: existing, missingOIDCScope, missingOIDCClaims, missingResourceScopes } = prompt.details;
    const grant = existing
      ? await provider.Grant.find(existing)
      : new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    if (missingOIDCScope) grant.addOIDCScope(missingOIDCScope.join(' '));
    if (missingOIDCClaims) grant.addOIDCClaims(missingOIDCClaims);
    if (missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } },
      { mergeWithLastSubmission: true });
  } catch (err) {
    // An unknown or expired interaction (no cookie, wrong uid): a page, not a crash.
    log('interaction error:', err?.name, err?.message);
    sendHtml(res, 400, `<p>interaction error: ${escapeHtml(err?.name ?? 'Error')}</p>`);
  }
}

// ---------------------------------------------------------------------------
// Start: listen first (port may be 0), then build the provider with the real
// issuer, then announce readiness on stdout.
// ---------------------------------------------------------------------------

let providerCallback;
let provider;

const server = createServer((req, res) => {
  if (req.url === '/test' || req.url.startsWith('/test/')) {
    handleAdmin(provider, req, res);
    return;
  }
  if (req.url.startsWith('/interaction/')) {
    handleInteraction(provider, req, res);
    return;
  }
  providerCallback(req, res);
});

server.on('error', (err) => {
  log('server error:', err.message);
  process.exit(1);
});

server.listen(PORT, HOST, () => {
  const { port } = server.address();
  const issuer = `http://${HOST}:${port}`;
  provider = buildProvider(issuer);
  providerCallback = provider.callback();

  const ready = {
    issuer,
    token_endpoint: provider.urlFor('token'),
    authorization_endpoint: provider.urlFor('authorization'),
    device_authorization_endpoint: provider.urlFor('device_authorization'),
    verification_uri: provider.urlFor('code_verification'),
    revocation_endpoint: provider.urlFor('revocation'),
    introspection_endpoint: provider.urlFor('introspection'),
    discovery_endpoint: `${issuer}/.well-known/openid-configuration`,
    admin_base: `${issuer}/test`,
    port,
    pid: process.pid,
    access_token_ttl: ACCESS_TOKEN_TTL,
    client_credentials_ttl: CLIENT_CREDENTIALS_TTL,
    refresh_token_ttl: REFRESH_TOKEN_TTL,
    device_code_ttl: DEVICE_CODE_TTL,
    strict_client_auth: STRICT_CLIENT_AUTH,
  };
  process.stdout.write(`${JSON.stringify(ready)}\n`);
  log(`listening on ${issuer} (access token ttl ${ACCESS_TOKEN_TTL}s, client credentials ttl ${CLIENT_CREDENTIALS_TTL}s, refresh token ttl ${REFRESH_TOKEN_TTL}s, device code ttl ${DEVICE_CODE_TTL}s, strict client auth ${STRICT_CLIENT_AUTH})`);
});
