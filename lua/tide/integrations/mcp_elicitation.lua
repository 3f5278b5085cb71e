--- MCP elicitation: a server's `elicitation/create` put to a person.
---
--- A server that needs something only the user can give (a choice, a
--- confirmation, a login at a URL) asks its client. A source made with
--- `elicit = function(request, errors) ... end` declares the `elicitation`
--- capability (form and URL modes) and hands each request to that function
--- in a task of its own, where it may wait as long as a person takes
--- (a terminal prompt, a message to a chat, a queue). The request is
--- `{ mode = "form" | "url", message, schema, url, id }`: a form's
--- `schema` is the server's requestedSchema (a flat object of strings,
--- numbers, booleans and enums), a URL request's `url` the page to open and
--- `id` its elicitationId. The function returns the person's answer:
--- `"accept", content` (a form's values), `"accept"` (the URL was opened),
--- `"decline"` or `"cancel"`.
---
--- A form's content is checked against its schema before it goes: content
--- that does not fit is given back, `elicit(request, errors)` with what is
--- wrong, up to three times, then the request is cancelled. A function that
--- raises, or answers something else, cancels it too: the server hears
--- "cancel", never an error of tide's making. Counted as the source's:
--- `src.elicitation` (requests, accepted, declined, cancelled).
local core = require "tide.core"

local M = {}

local ACTIONS = { accept = true, decline = true, cancel = true }
local COUNTED = { accept = "accepted", decline = "declined", cancel = "cancelled" }
local TRIES = 3

-- A JSON-RPC error answer.
local function rpc_error(id, code, message)
  return { jsonrpc = "2.0", id = id, error = { code = code, message = message } }
end

-- The request as the function sees it, or nil and what is wrong with the
-- server's params.
local function request_of(params)
  if type(params) ~= "table" then return nil, "no params" end
  if type(params.message) ~= "string" then return nil, "'message' must be a string" end
  local mode = params.mode == nil and "form" or params.mode
  if mode == "url" then
    if type(params.url) ~= "string" or not params.url:match("^https?://") then
      return nil, "'url' must be an http(s) URL"
    end
    if type(params.elicitationId) ~= "string" then return nil, "'elicitationId' must be a string" end
    return { mode = "url", message = params.message, url = params.url, id = params.elicitationId }
  elseif mode == "form" then
    local s = params.requestedSchema
    if type(s) ~= "table" or s.type ~= "object" or type(s.properties) ~= "table" then
      return nil, "'requestedSchema' must be an object schema with properties"
    end
    return { mode = "form", message = params.message, schema = s }
  end
  return nil, ("mode '%s' is neither form nor url"):format(tostring(mode))
end

-- Asks the function until it answers something that can go (or TRIES
-- are spent): the action and a form's content.
local function ask(elicit, request)
  local schema = require "tide.schema"
  local errors
  for _ = 1, TRIES do
    local ok, action, content = pcall(elicit, request, errors)
    if not ok or not ACTIONS[action] then return "cancel" end
    if action ~= "accept" or request.mode ~= "form" then return action end
    if type(content) ~= "table" then
      errors = { "#: the answer must be a table of the form's values" }
    else
      errors = schema.validate_lenient(content, request.schema)
      if not errors then
        schema.mark_arrays(content, request.schema)
        return "accept", content
      end
    end
  end
  return "cancel"
end

-- Serves one request; returns the answer to send.
local function serve(src, msg)
  local request, why = request_of(msg.params)
  if not request then return rpc_error(msg.id, -32602, "Invalid params: " .. why) end
  local counts = src.elicitation
  counts.requests = counts.requests + 1
  local action, content = ask(src.elicit, request)
  local counted = COUNTED[action]
  counts[counted] = counts[counted] + 1
  return { jsonrpc = "2.0", id = msg.id, result = { action = action, content = content } }
end

--- Answers a server's `elicitation/create` request `msg` through
--- `reply(answer)`, from a task of its own, which it returns.
---@param src table the MCP source (its `elicit` function and counters)
---@param msg table the JSON-RPC request
---@param reply fun(answer:table)
---@return table task
function M.handle(src, msg, reply)
  return core.spawn(function()
    local ok, answer = pcall(serve, src, msg)
    if not ok then answer = { jsonrpc = "2.0", id = msg.id, result = { action = "cancel" } } end
    pcall(reply, answer) -- (a server gone meanwhile has nobody to answer)
  end)
end

return M
