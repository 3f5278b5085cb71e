-- A scripted MCP server over stdio, for the specs: plain lua5.4 + cjson,
-- blocking reads, one JSON-RPC message per line. Its behaviour is the mode
-- given as the first argument:
--   normal      two pages of tools (echo, add, fail, slow, tags, seen, delete)
--   old         answers initialize with protocol 2025-03-26
--   ancient     answers initialize with protocol 2024-01-01 (unsupported)
--   garbage     writes non-JSON lines instead of answering tools/call
--   wrong_id    answers tools/call with another id
--   silent      never answers tools/call
--   huge        answers tools/call with one 10 MB line
--   exit_init   exits on initialize
--   die_on_call exits while a tools/call is in flight
--   tasks       declares task-augmented tools/call, and the tool `job`
--               that must be called so ({ plan = "ok" | "fail" | "error" |
--               "malformed" | "forever", poll_ms }: two polls then done, a failed
--               task, a JSON-RPC error as its result, an answer that is
--               no task, a task that runs until tasks/cancel)
-- Tools of every mode: echo {text} -> text; add {a, b} -> structuredContent
-- only, as its output schema says (with broken = "shape" or "text", not);
-- fail -> isError; slow -> never answers (cancel it); tags {tags: []}
-- -> the raw JSON of the arguments it got; seen -> every notification
-- method received so far; changed -> sends tools/list_changed first; ping ->
-- the server pings the client and reports the answer; sample {params} ->
-- the server sends sampling/createMessage with those params and reports
-- the client's answer line; elicit {params} -> the same for
-- elicitation/create; roots -> the same for roots/list;
-- client_caps -> the capabilities the client declared at initialize;
-- meta -> the raw `_meta` of its call's params (the trace context).
local cjson = require "cjson"
local mode = arg[1] or "normal"

local function send(msg)
  io.stdout:write(cjson.encode(msg), "\n")
  io.stdout:flush()
end

local TOOLS = {
  { name = "echo", description = "Echoes text", inputSchema = { type = "object",
    properties = { text = { type = "string" } }, required = { "text" } } },
  { name = "add", description = "Adds", inputSchema = { type = "object",
    properties = { a = { type = "number" }, b = { type = "number" } } },
    outputSchema = { type = "object", properties = { sum = { type = "number" } }, required = { "sum" } } },
  { name = "fail", description = "Always fails", inputSchema = { type = "object" } },
  { name = "slow", description = "Never answers", inputSchema = { type = "object" } },
  { name = "tags", description = "Shows its arguments", inputSchema = { type = "object",
    properties = { tags = { type = "array", items = { type = "string" } } } } },
  { name = "seen", description = "Notifications seen", inputSchema = { type = "object" } },
  { name = "changed", description = "Announces a new tool list", inputSchema = { type = "object" } },
  { name = "ping", description = "Pings the client", inputSchema = { type = "object" } },
  { name = "delete", description = "Deletes", inputSchema = { type = "object" },
    annotations = { destructiveHint = true } },
  { name = "sample", description = "Asks the client's model", inputSchema = { type = "object" } },
  { name = "client_caps", description = "The client's capabilities", inputSchema = { type = "object" } },
  { name = "roots", description = "Asks the client's roots", inputSchema = { type = "object" } },
  { name = "elicit", description = "Asks the client's user", inputSchema = { type = "object" } },
  { name = "meta", description = "Its call's _meta", inputSchema = { type = "object" } },
}

local seen = {}
local raw_line
local client_caps

if mode == "tasks" then
  TOOLS[#TOOLS + 1] = { name = "job", description = "A long job", inputSchema = { type = "object",
    properties = { plan = { type = "string" } } }, execution = { taskSupport = "required" } }
end
local jobs, next_job = {}, 1

local function task_view(j)
  return { taskId = j.id, status = j.status, statusMessage = j.message, createdAt = "2026-12-07T12:00:00Z",
    lastUpdatedAt = "2026-12-07T12:00:00Z", ttl = 60000, pollInterval = j.poll_ms or 100 }
end

-- tasks/get, tasks/result, tasks/cancel of the `job` tool's tasks.
local function task_request(msg)
  local j = jobs[msg.params.taskId]
  if not j then
    return send { jsonrpc = "2.0", id = msg.id, error = { code = -32602, message = "no task " .. tostring(msg.params.taskId) } }
  end
  if msg.method == "tasks/get" then
    j.polls = j.polls + 1
    if j.status == "working" and j.plan ~= "forever" then
      if j.polls >= 2 then
        j.status = (j.plan == "fail" or j.plan == "error") and "failed" or "completed"
        j.message = nil
      else
        j.message = "step " .. (j.polls + 1)
      end
    end
    send { jsonrpc = "2.0", id = msg.id, result = task_view(j) }
  elseif msg.method == "tasks/cancel" then
    seen[#seen + 1] = "tasks/cancel(" .. j.id .. ")"
    j.status = "cancelled"
    send { jsonrpc = "2.0", id = msg.id, result = task_view(j) }
  elseif j.plan == "error" then
    send { jsonrpc = "2.0", id = msg.id, error = { code = -32603, message = "the job exploded" } }
  elseif j.plan == "fail" then
    send { jsonrpc = "2.0", id = msg.id, result = { isError = true, content = { { type = "text", text = "the job broke" } } } }
  else
    send { jsonrpc = "2.0", id = msg.id, result = { content = { { type = "text", text = "job done after "
      .. j.polls .. " polls" } }, _meta = { ["io.modelcontextprotocol/related-task"] = { taskId = j.id } } } }
  end
end

local function text(id, s) send { jsonrpc = "2.0", id = id, result = { content = { { type = "text", text = s } } } } end

local function call(msg)
  local id, p = msg.id, msg.params
  local name = p.name
  if mode == "garbage" then
    io.stdout:write("this is not json\n", "{broken\n")
    io.stdout:flush()
    return
  elseif mode == "wrong_id" then
    return text(id + 1000, "answer to the wrong request")
  elseif mode == "silent" then
    return
  elseif mode == "huge" then
    return text(id, string.rep("x", 10 * 1024 * 1024))
  elseif mode == "die_on_call" then
    io.stderr:write("fatal: the server crashed on purpose\n")
    os.exit(3)
  end
  if name == "job" then
    if p.task == nil then
      return send { jsonrpc = "2.0", id = id, error = { code = -32601, message = "job requires task augmentation" } }
    end
    local plan = p.arguments.plan or "ok"
    if plan == "malformed" then return text(id, "no task here") end
    local j = { id = "task-" .. next_job, status = "working", message = "step 1", plan = plan, polls = 0,
      poll_ms = p.arguments.poll_ms }
    next_job = next_job + 1
    jobs[j.id] = j
    send { jsonrpc = "2.0", id = id, result = { task = task_view(j) } }
  elseif name == "echo" then
    text(id, tostring(p.arguments.text))
  elseif name == "add" and p.arguments.broken == "shape" then -- (against its own output schema)
    send { jsonrpc = "2.0", id = id, result = { content = {}, structuredContent = { sum = "many" } } }
  elseif name == "add" and p.arguments.broken == "text" then
    text(id, "the sum is 3")
  elseif name == "add" then
    send { jsonrpc = "2.0", id = id, result = { content = {}, structuredContent = { sum = p.arguments.a + p.arguments.b } } }
  elseif name == "fail" then
    send { jsonrpc = "2.0", id = id, result = { isError = true, content = { { type = "text", text = "it broke" } } } }
  elseif name == "slow" then
    return
  elseif name == "tags" then
    text(id, raw_line:match('"arguments":(%b{})'))
  elseif name == "seen" then
    text(id, table.concat(seen, ","))
  elseif name == "changed" then
    send { jsonrpc = "2.0", method = "notifications/tools/list_changed" }
    text(id, "changed")
  elseif name == "ping" then
    send { jsonrpc = "2.0", id = "srv-1", method = "ping" }
    local answer = io.read("l")
    text(id, answer)
  elseif name == "sample" or name == "elicit" then
    -- the client asked with the tool's params as they came (raw: [] kept,
    -- where cjson would make an empty list an object); its answer line back
    local params = raw_line:match('"params":(%b{})', raw_line:find('"arguments"', 1, true))
    local method = name == "sample" and "sampling/createMessage" or "elicitation/create"
    io.stdout:write('{"id":"srv-', name, '","jsonrpc":"2.0","method":"', method, '","params":', params, "}\n")
    io.stdout:flush()
    text(id, io.read("l"))
  elseif name == "meta" then
    text(id, raw_line:match('"_meta":(%b{})') or "none")
  elseif name == "client_caps" then
    text(id, client_caps)
  elseif name == "roots" then
    send { jsonrpc = "2.0", id = "srv-r", method = "roots/list" }
    text(id, io.read("l"))
  else
    send { jsonrpc = "2.0", id = id, error = { code = -32602, message = "Unknown tool: " .. tostring(name) } }
  end
end

for line in io.lines() do
  raw_line = line
  local msg = cjson.decode(line)
  local m = msg.method
  if m == "initialize" then
    if mode == "exit_init" then os.exit(1) end
    client_caps = line:match('"capabilities":(%b{})')
    local v = mode == "old" and "2025-03-26" or mode == "ancient" and "2024-01-01" or "2025-11-25"
    send { jsonrpc = "2.0", id = msg.id, result = { protocolVersion = v,
      capabilities = { tools = { listChanged = true },
        tasks = mode == "tasks" and { cancel = {}, requests = { tools = { call = {} } } } or nil },
      serverInfo = { name = "scripted", version = "1.0.0" },
      -- what the client asked for, so a spec can check it
      instructions = "client asked " .. msg.params.protocolVersion } }
  elseif m == "tools/list" then
    local cursor = msg.params and msg.params.cursor
    if cursor == nil or cursor == cjson.null then
      send { jsonrpc = "2.0", id = msg.id, result = { tools = { TOOLS[1], TOOLS[2], TOOLS[3] }, nextCursor = "page2" } }
    else
      send { jsonrpc = "2.0", id = msg.id, result = { tools = { table.unpack(TOOLS, 4) } } }
    end
  elseif m == "tools/call" then
    call(msg)
  elseif mode == "tasks" and (m == "tasks/get" or m == "tasks/result" or m == "tasks/cancel") then
    task_request(msg)
  elseif msg.id == nil and m then
    seen[#seen + 1] = m .. (m == "notifications/cancelled" and ("(" .. tostring(msg.params.requestId) .. ")") or "")
  elseif msg.id ~= nil and m then
    send { jsonrpc = "2.0", id = msg.id, error = { code = -32601, message = "no " .. m } }
  end
end
