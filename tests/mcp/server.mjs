// An MCP server (the official SDK, streamable HTTP, stateless) to put behind the filter: the
// upstream of tests/resource.rs and of `make run DEMO=mcp`.
//
//   node server.mjs PORT
//
// Prints "ready PORT" when it listens on 127.0.0.1:PORT, then one JSON line per request it
// receives: method, path, whether it carried an Authorization header, and the caller's identity
// as the filter forwarded it (x-client-id). Its one tool, `whoami`, answers with that identity.
import { createServer } from 'node:http';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';

const port = Number(process.argv[2] || 9100);

function mcpServer(client) {
  const server = new McpServer({ name: 'oauth-filter-demo-tools', version: '1.0.0' });
  server.registerTool(
    'whoami',
    { description: 'Names the OAuth client the gateway authenticated' },
    async () => ({ content: [{ type: 'text', text: client ?? 'anonymous' }] }),
  );
  return server;
}

const http = createServer(async (req, res) => {
  const client = req.headers['x-client-id'];
  console.log(JSON.stringify({
    method: req.method,
    path: req.url,
    authorization: req.headers.authorization !== undefined,
    client: client ?? null,
  }));
  if (!req.url.startsWith('/mcp')) {
    res.writeHead(404).end();
    return;
  }
  const server = mcpServer(client);
  const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
  res.on('close', () => {
    transport.close();
    server.close();
  });
  try {
    await server.connect(transport);
    await transport.handleRequest(req, res);
  } catch (e) {
    if (!res.headersSent) res.writeHead(500).end(String(e));
  }
});

http.listen(port, process.env.MCP_LISTEN || '127.0.0.1', () => console.log(`ready ${port}`));
process.on('SIGTERM', () => http.close(() => process.exit(0)));
