// The authorization server of the integration tests and of `make run`: node-oidc-provider with
// the client credentials grant. Resource indicators (RFC 8707) choose the access token format
// and lifetime: https://orders.example gets JWT access tokens, https://opaque.example opaque
// ones (both for 600 s), https://short.example JWTs that expire in 6 s (to watch refreshes).
// Client bound-client gets tokens bound to the certificate in x-client-cert (RFC 8705); any
// client that sends a DPoP proof gets DPoP-bound ones (RFC 9449).
// An MCP server on this machine, http://127.0.0.1:PORT/mcp or http://localhost:PORT/mcp, gets
// JWTs whose audience is that resource itself (RFC 8707, as MCP asks; tests/resource.rs).
//
//   node server.mjs PORT [ISSUER]
//
// Prints one line "ready ISSUER" when it listens on 127.0.0.1:PORT.
//
// With OIDC_STATE_DIR set (`make soak`), the signing key and the issued tokens are kept in that
// directory, so a server restarted with the same directory signs with the same key and still
// knows the opaque tokens it issued before (its introspection answers do not change).
import { generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] || 9000);
const issuer = process.argv[3] || `http://127.0.0.1:${port}`;
const stateDir = process.env.OIDC_STATE_DIR;

function newSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: `rs-${Date.now()}`, alg: 'RS256', use: 'sig' };
}

function writeJson(file, value) {
  writeFileSync(`${file}.tmp`, JSON.stringify(value));
  renameSync(`${file}.tmp`, file);
}

// The signing key: new at every start, or the one kept in OIDC_STATE_DIR.
function signingKey() {
  if (!stateDir) return newSigningKey();
  const file = join(stateDir, 'signing-key.json');
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8'));
  const key = newSigningKey();
  writeJson(file, key);
  return key;
}

// An oidc-provider adapter keeping every model in one JSON file (rewritten on each change; only
// tokens issued by the client credentials grant are stored, so it stays small).
function fileAdapter(file) {
  const store = new Map(existsSync(file) ? Object.entries(JSON.parse(readFileSync(file, 'utf8'))) : []);
  const live = (e) => e && (!e.expiresAt || e.expiresAt > Date.now());
  const save = () => {
    for (const [k, e] of store) if (!live(e)) store.delete(k);
    writeJson(file, Object.fromEntries(store));
  };
  return class FileAdapter {
    constructor(model) { this.model = model; }
    key(id) { return `${this.model}:${id}`; }
    async upsert(id, payload, expiresIn) {
      store.set(this.key(id), { payload, expiresAt: expiresIn ? Date.now() + expiresIn * 1000 : 0 });
      save();
    }
    async find(id) {
      const e = store.get(this.key(id));
      return live(e) ? e.payload : undefined;
    }
    async findBy(member, value) {
      for (const [k, e] of store) {
        if (k.startsWith(`${this.model}:`) && e.payload[member] === value && live(e)) return e.payload;
      }
      return undefined;
    }
    async findByUid(uid) { return this.findBy('uid', uid); }
    async findByUserCode(userCode) { return this.findBy('userCode', userCode); }
    async consume(id) {
      const e = store.get(this.key(id));
      if (e) { e.payload.consumed = Math.floor(Date.now() / 1000); save(); }
    }
    async destroy(id) { store.delete(this.key(id)); save(); }
    async revokeByGrantId(grantId) {
      for (const [k, e] of store) if (e.payload.grantId === grantId) store.delete(k);
      save();
    }
  };
}

const signing = signingKey();

const resources = {
  'https://orders.example': { scope: 'orders:read orders:admin', audience: 'orders-api', accessTokenFormat: 'jwt', accessTokenTTL: 600 },
  'https://opaque.example': { scope: 'orders:read orders:admin', audience: 'orders-api', accessTokenFormat: 'opaque', accessTokenTTL: 600 },
  'https://short.example': { scope: 'orders:read', audience: 'orders-api', accessTokenFormat: 'jwt', accessTokenTTL: 6 },
};

// The MCP servers of the tests and the demo: on loopback, any port, path /mcp.
const mcpResource = /^http:\/\/(127\.0\.0\.1|localhost):\d+\/mcp$/;

function resourceServer(resource) {
  if (resources[resource]) return resources[resource];
  if (mcpResource.test(resource)) {
    return { scope: 'mcp:tools mcp:admin', audience: resource, accessTokenFormat: 'jwt', accessTokenTTL: 600 };
  }
  throw new errors.InvalidTarget();
}

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'gateway',
      client_secret: 'gateway-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'orders-service',
      client_secret: 'orders-service-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      client_id: 'mcp-agent',
      client_secret: 'mcp-agent-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
    },
    {
      // Its tokens are bound to the client certificate it presents (RFC 8705), which this
      // server reads from the x-client-cert header (PEM, URL-encoded), as behind a TLS proxy.
      client_id: 'bound-client',
      client_secret: 'bound-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_basic',
      tls_client_certificate_bound_access_tokens: true,
    },
    {
      client_id: 'reporting',
      client_secret: 'reporting-secret',
      grant_types: ['client_credentials'],
      redirect_uris: [],
      response_types: [],
      token_endpoint_auth_method: 'client_secret_post',
    },
  ],
  jwks: { keys: [signing] },
  ...(stateDir ? { adapter: fileAdapter(join(stateDir, 'tokens.json')) } : {}),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    // DPoP (RFC 9449, on by default in oidc-provider 9): a token request with a DPoP proof
    // gets a token bound to the proof's key (cnf.jkt).
    dPoP: { enabled: true },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      getCertificate: (ctx) => {
        const pem = ctx.get('x-client-cert');
        return pem ? decodeURIComponent(pem) : undefined;
      },
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://orders.example',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => ({ ...resourceServer(resource), jwt: { sign: { alg: 'RS256' } } }),
    },
  },
  clientBasedCORS: () => false,
});

// OIDC_LISTEN=0.0.0.0 in a container (envoy/docker-compose.yaml); loopback otherwise.
const server = provider.listen(port, process.env.OIDC_LISTEN || '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
