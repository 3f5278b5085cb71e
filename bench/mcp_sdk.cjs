// bench/mcp_sdk.cjs: the official MCP TypeScript SDK's client calling a
// server's tool N times, one at a time, to set beside tide's client.
//   node mcp_sdk.cjs stdio N -- command args...
//   node mcp_sdk.cjs http N URL
// Prints {"us_per_call": x}.
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");
const { StreamableHTTPClientTransport } = require("@modelcontextprotocol/sdk/client/streamableHttp.js");

async function main() {
  const [mode, nStr, ...rest] = process.argv.slice(2);
  const n = Number(nStr);
  const transport = mode === "stdio"
    ? new StdioClientTransport({ command: rest[1], args: rest.slice(2) })
    : new StreamableHTTPClientTransport(new URL(rest[0]));
  const client = new Client({ name: "bench", version: "1" });
  await client.connect(transport);
  for (let i = 0; i < 50; i++) await client.callTool({ name: "echo", arguments: { message: "warm" } });
  const t0 = process.hrtime.bigint();
  for (let i = 0; i < n; i++) await client.callTool({ name: "echo", arguments: { message: "hello" } });
  const us = Number(process.hrtime.bigint() - t0) / 1000 / n;
  await client.close();
  process.stdout.write(JSON.stringify({ us_per_call: us }) + "\n");
}
main().catch((e) => { console.error(e); process.exit(1); });
