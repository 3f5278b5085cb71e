// An MCP server over Streamable HTTP built on the official TypeScript SDK
// (McpServer, StreamableHTTPServerTransport with its InMemoryEventStore),
// for spec/integration/mcp_streams_spec.lua: what the server sends outside
// a request goes to the client's GET stream, and a call's stream may be
// closed before its answer (SSE polling), as the SDK does them.
//   PORT=n [RETRY_MS=n] [NO_GET=1] node mcp_http_peer.cjs
// Tools:
//   echo {text}     the text back
//   add_tool {name} returns at once; 100 ms later registers tool `name`
//                   (the SDK sends notifications/tools/list_changed then,
//                   with no request to go with: on the GET stream)
//   log_later {text} returns at once; 100 ms later logs `text` (the same)
//   poll            logs "before" on its own stream, closes that stream
//                   (closeSSEStream), logs "while away" on it 300 ms later,
//                   then answers "polled" (both kept for a resuming GET)
// GET /stats: {gets, resumed, open}: GETs for a stream, those with
// Last-Event-ID, and the streams they opened still open (answered 200).
const { randomUUID } = require("node:crypto");
const { McpServer } = require("@modelcontextprotocol/sdk/server/mcp.js");
const { StreamableHTTPServerTransport } = require("@modelcontextprotocol/sdk/server/streamableHttp.js");
const { createMcpExpressApp } = require("@modelcontextprotocol/sdk/server/express.js");
const { InMemoryEventStore } = require("@modelcontextprotocol/sdk/examples/shared/inMemoryEventStore.js");
const { isInitializeRequest } = require("@modelcontextprotocol/sdk/types.js");
const z = require("zod");

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const text = (t) => ({ content: [{ type: "text", text: t }] });

function newServer() {
  const server = new McpServer({ name: "peer", version: "1.0.0" }, { capabilities: { logging: {} } });
  server.registerTool("echo", { description: "Echoes.", inputSchema: { text: z.string() } },
    async ({ text: t }) => text(t));
  server.registerTool("add_tool", { description: "Adds a tool soon.", inputSchema: { name: z.string() } },
    async ({ name }) => {
      setTimeout(() => server.registerTool(name, { description: "Added." }, async () => text("added")), 100);
      return text("adding " + name);
    });
  server.registerTool("log_later", { description: "Logs soon.", inputSchema: { text: z.string() } },
    async ({ text: t }) => {
      setTimeout(() => server.sendLoggingMessage({ level: "info", data: t }).catch(() => {}), 100);
      return text("will log");
    });
  server.registerTool("poll", { description: "Closes its stream before it answers." }, async (extra) => {
    const log = (data) => extra.sendNotification({ method: "notifications/message", params: { level: "info", data } });
    await log("before");
    await sleep(50);
    extra.closeSSEStream();
    await sleep(300);
    await log("while away");
    return text("polled");
  });
  return server;
}

const stats = { gets: 0, resumed: 0, open: 0 };
const sessions = new Map();
const app = createMcpExpressApp();
app.get("/stats", (_req, res) => res.json(stats));
app.post("/mcp", async (req, res) => {
  const sid = req.headers["mcp-session-id"];
  let transport = sid && sessions.get(sid);
  if (!transport) {
    if (sid || !isInitializeRequest(req.body)) {
      res.status(404).json({ jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null });
      return;
    }
    transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: () => randomUUID(),
      eventStore: new InMemoryEventStore(),
      retryInterval: Number(process.env.RETRY_MS || 200),
      onsessioninitialized: (id) => sessions.set(id, transport),
    });
    transport.onclose = () => sessions.delete(transport.sessionId);
    await newServer().connect(transport);
  }
  await transport.handleRequest(req, res, req.body);
});
app.get("/mcp", async (req, res) => {
  if (process.env.NO_GET) {
    res.status(405).set("Allow", "POST, DELETE").send("Method Not Allowed");
    return;
  }
  const transport = sessions.get(req.headers["mcp-session-id"]);
  if (!transport) {
    res.status(404).json({ jsonrpc: "2.0", error: { code: -32001, message: "Session not found" }, id: null });
    return;
  }
  stats.gets++;
  if (req.headers["last-event-id"]) stats.resumed++;
  const writeHead = res.writeHead.bind(res);
  res.writeHead = (status, ...rest) => {
    if (status === 200) {
      stats.open++;
      res.on("close", () => stats.open--);
    }
    return writeHead(status, ...rest);
  };
  await transport.handleRequest(req, res);
});
app.delete("/mcp", async (req, res) => {
  const transport = sessions.get(req.headers["mcp-session-id"]);
  if (!transport) return res.status(404).end();
  await transport.handleRequest(req, res);
});
app.listen(Number(process.env.PORT), "127.0.0.1", () => console.log("listening"));
