// The official MCP client SDK against an MCP server behind the filter, with no browser: the
// streamable HTTP transport and the SDK's own OAuth client for machine-to-machine use
// (ClientCredentialsProvider). On the filter's 401 the SDK reads `resource_metadata` from the
// challenge, fetches the protected resource metadata, discovers the authorization server named
// there, obtains a token for the resource (client credentials with `resource`, RFC 8707) and
// retries; then it lists the server's tools and calls one.
//
//   node client.mjs SERVER_URL ISSUER CLIENT_ID CLIENT_SECRET [SCOPE]
//
// SCOPE is what the client asks for. (The SDK's client-credentials token request, in 1.32.2,
// sends the scope configured on the provider, not the one the challenge names.)
//
// Prints one JSON line: the tools, the `whoami` answer, the access token the SDK obtained, and
// every HTTP exchange the SDK made (URL, method, status, WWW-Authenticate, request body of
// token requests with the client's secret left out).
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { ClientCredentialsProvider } from '@modelcontextprotocol/sdk/client/auth-extensions.js';

const [serverUrl, issuer, clientId, clientSecret, scope] = process.argv.slice(2);
const exchanges = [];

async function recordingFetch(url, init = {}) {
  const response = await fetch(url, init);
  const body = typeof init.body === 'string' || init.body instanceof URLSearchParams ? String(init.body) : null;
  exchanges.push({
    url: String(url),
    method: init.method ?? 'GET',
    status: response.status,
    www_authenticate: response.headers.get('www-authenticate'),
    form: body && body.includes('grant_type') ? body : null,
  });
  return response;
}

const provider = new ClientCredentialsProvider({ clientId, clientSecret, scope, expectedIssuer: issuer });
const transport = new StreamableHTTPClientTransport(new URL(serverUrl), {
  authProvider: provider,
  fetch: recordingFetch,
});
const client = new Client({ name: 'oauth-filter-test-client', version: '1.0.0' });
try {
  await client.connect(transport);
  const tools = await client.listTools();
  const whoami = await client.callTool({ name: 'whoami', arguments: {} });
  await client.close();
  console.log(JSON.stringify({
    tools: tools.tools.map((t) => t.name),
    whoami: whoami.content[0]?.text,
    token: provider.tokens()?.access_token ?? null,
    exchanges,
  }));
} catch (e) {
  console.log(JSON.stringify({ error: String(e), exchanges }));
  process.exitCode = 1;
}
