// The official MCP TypeScript SDK's client against `tide mcp-server`, for
// spec/integration/mcp_server_spec.lua: it lists the tools, calls one with
// progress, an unknown one, one without its task, cancels a slow call and
// calls again, goes on with the first call's conversation and with one
// that is not there, then prints what it saw as one JSON line.
//   node mcp_client.cjs command args...
const { Client } = require("@modelcontextprotocol/sdk/client/index.js");
const { StdioClientTransport } = require("@modelcontextprotocol/sdk/client/stdio.js");

async function main() {
  const [command, ...args] = process.argv.slice(2);
  const transport = new StdioClientTransport({ command, args, env: process.env });
  const client = new Client({ name: "spec", version: "1" });
  await client.connect(transport);
  const out = { server: client.getServerVersion(), instructions: client.getInstructions() };
  out.tools = (await client.listTools()).tools;
  const progress = [];
  out.call = await client.callTool({ name: "helper", arguments: { task: "look up tides" } }, undefined,
    { onprogress: (p) => progress.push(p) });
  out.progress = progress;
  try {
    await client.callTool({ name: "nope", arguments: {} });
    out.unknown = "answered";
  } catch (e) {
    out.unknown = { code: e.code, message: e.message };
  }
  out.bad = await client.callTool({ name: "helper", arguments: {} });
  const ac = new AbortController();
  const slow = client.callTool({ name: "helper", arguments: { task: "slow one" } }, undefined, { signal: ac.signal });
  setTimeout(() => ac.abort(new Error("given up")), 500);
  try {
    await slow;
    out.cancel = "answered";
  } catch (e) {
    out.cancel = String(e && e.message || e);
  }
  out.after = await client.callTool({ name: "helper", arguments: { task: "after" } });
  // the conversation of the first call, gone on with; one that is not there
  out.again = await client.callTool({ name: "helper",
    arguments: { task: "what did I ask first?", conversation: out.call.structuredContent.conversation } });
  out.stranger = await client.callTool({ name: "helper", arguments: { task: "hi", conversation: "c404-000000" } });
  await client.close();
  process.stdout.write(JSON.stringify(out) + "\n");
}
main().catch((e) => { console.error(e); process.exit(1); });
