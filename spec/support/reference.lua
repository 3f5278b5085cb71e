-- Lua references of logic tide runs in C: what the C code must agree with
-- (spec/unit/differential_spec.lua). Written for clarity, not speed.
local cjson = require "cjson"
local json = require "tide.json"

local M = {}

--- The OpenAI assistant message with tool calls, as json.canonical encodes
--- its table (core.openai_assistant_wire writes the same bytes).
function M.assistant_wire(content, calls)
  local list = {}
  for i, c in ipairs(calls) do
    list[i] = { id = c.id, type = "function", ["function"] = { name = c.name, arguments = c.arguments } }
  end
  local content_json = (content == nil or content == "") and "null" or json.quote(content)
  -- canonical order: content, role, tool_calls; content null without text
  local calls_json = {}
  for i, c in ipairs(list) do calls_json[i] = json.canonical(c) end
  return '{"content":' .. content_json .. ',"role":"assistant","tool_calls":[' .. table.concat(calls_json, ",") .. "]}"
end

--- A tool message's results as OpenAI role "tool" messages, comma-joined
--- (core.openai_results_wire).
function M.results_wire(results)
  local out = {}
  for i, r in ipairs(results) do
    out[i] = json.canonical { role = "tool", tool_call_id = r.id, content = r.content }
  end
  return table.concat(out, ",")
end

--- Streamed tool-call deltas assembled by index (core.tool_call_assembler):
--- the first non-empty id and name win, argument fragments concatenate, the
--- result is ordered by index.
function M.assemble(deltas)
  local by_index, order = {}, {}
  for _, d in ipairs(deltas) do
    local slot = by_index[d.index]
    if not slot then
      slot = { index = d.index, arguments = "" }
      by_index[d.index] = slot
      order[#order + 1] = d.index
    end
    if slot.id == nil and d.id and d.id ~= "" then slot.id = d.id end
    if slot.name == nil and d.name and d.name ~= "" then slot.name = d.name end
    if d.fragment then slot.arguments = slot.arguments .. d.fragment end
  end
  table.sort(order)
  local out = {}
  for i, k in ipairs(order) do out[i] = by_index[k] end
  return out
end

--- An OpenAI chat-completions event stream, read the plain way: SSE events
--- (split on blank lines), each data line decoded with cjson, the reply's
--- text, calls, usage and finish reason taken from the decoded tables
--- (core.openai_stream gives the same reply).
function M.openai_stream(body)
  local text, deltas, usage, finish = {}, {}, nil, nil
  for block in (body:gsub("\r\n", "\n") .. "\n\n"):gmatch("(.-)\n\n") do
    local data = {}
    for line in block:gmatch("[^\n]+") do
      local v = line:match("^data: ?(.*)$")
      if v then data[#data + 1] = v end
    end
    local d = table.concat(data, "\n")
    if d ~= "" and d ~= "[DONE]" then
      local obj = cjson.decode(d)
      if type(obj.usage) == "table" then
        local details = type(obj.usage.prompt_tokens_details) == "table" and obj.usage.prompt_tokens_details or {}
        usage = { input = math.tointeger(obj.usage.prompt_tokens) or 0,
                  output = math.tointeger(obj.usage.completion_tokens) or 0,
                  cached = math.tointeger(details.cached_tokens) or 0 }
      end
      local choice = type(obj.choices) == "table" and obj.choices[1]
      if type(choice) == "table" then
        local delta = choice.delta or {}
        if type(delta.content) == "string" then text[#text + 1] = delta.content end
        for _, c in ipairs(type(delta.tool_calls) == "table" and delta.tool_calls or {}) do
          local f = type(c["function"]) == "table" and c["function"] or {}
          deltas[#deltas + 1] = { index = math.tointeger(c.index), id = c.id, name = f.name,
            fragment = type(f.arguments) == "string" and f.arguments or nil }
        end
        if type(choice.finish_reason) == "string" then finish = choice.finish_reason end
      end
    end
  end
  local calls = {}
  for i, s in ipairs(M.assemble(deltas)) do calls[i] = { id = s.id, name = s.name, arguments = s.arguments } end
  return { text = table.concat(text), tool_calls = calls, usage = usage or { input = 0, output = 0, cached = 0 },
           stop_raw = finish }
end

return M
