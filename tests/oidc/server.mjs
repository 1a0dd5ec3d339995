// The authorization server of the integration tests and of `make run`: node-oidc-provider with
// the client credentials grant. Resource indicators (RFC 8707) choose the access token format:
// https://orders.example gets JWT access tokens, https://opaque.example opaque ones.
//
//   node server.mjs PORT [ISSUER]
//
// Prints one line "ready ISSUER" when it listens on 127.0.0.1:PORT.
import { generateKeyPairSync } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const port = Number(process.argv[2] || 9000);
const issuer = process.argv[3] || `http://127.0.0.1:${port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signing = { ...privateKey.export({ format: 'jwk' }), kid: `rs-${Date.now()}`, alg: 'RS256', use: 'sig' };

const resources = {
  'https://orders.example': { scope: 'orders:read orders:admin', audience: 'orders-api', accessTokenFormat: 'jwt' },
  'https://opaque.example': { scope: 'orders:read orders:admin', audience: 'orders-api', accessTokenFormat: 'opaque' },
};

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
  ],
  jwks: { keys: [signing] },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => 'https://orders.example',
      useGrantedResource: () => true,
      getResourceServerInfo: (ctx, resource) => {
        const info = resources[resource];
        if (!info) throw new errors.InvalidTarget();
        return { ...info, accessTokenTTL: 600, jwt: { sign: { alg: 'RS256' } } };
      },
    },
  },
  clientBasedCORS: () => false,
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
