-- Lua references of logic tide runs in C: what the C code must agree with
-- (spec/unit/differential_spec.lua). Written for clarity, not speed.
local cjson = require "cjson"
local json = require "tide.json"

local M = {}

--- The OpenAI assistant message with tool calls, as json.canonical encodes
--- its table (core.openai_assistant_wire writes the same bytes), with the
--- reasoning text as reasoning_content and each call's extra_content (JSON
--- text) spliced in verbatim.
function M.assistant_wire(content, calls, reasoning)
  local calls_json = {}
  for i, c in ipairs(calls) do
    local call = json.canonical { id = c.id, type = "function", ["function"] = { name = c.name, arguments = c.arguments } }
    -- canonical order: extra_content sorts first
    if c.extra_content then call = '{"extra_content":' .. c.extra_content .. "," .. call:sub(2) end
    calls_json[i] = call
  end
  local content_json = (content == nil or content == "") and "null" or json.quote(content)
  -- canonical order: content, reasoning_content, role, tool_calls; content null without text
  local r = (reasoning and reasoning ~= "") and (',"reasoning_content":' .. json.quote(reasoning)) or ""
  return '{"content":' .. content_json .. r .. ',"role":"assistant","tool_calls":[' .. table.concat(calls_json, ",") .. "]}"
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

-- Whether s is exactly one JSON value (strict JSON: no NaN, no hex).
local strict = cjson.new()
strict.decode_invalid_numbers(false)
local function complete_json(s)
  if not s:find("%S") then return false end
  return (pcall(strict.decode, s))
end

--- Streamed tool-call deltas assembled by index (core.tool_call_assembler):
--- the first non-empty id and name win, argument fragments concatenate, the
--- last extra_content wins, the result is ordered by index. A delta without
--- an index continues the last call (the highest index), unless it starts a
--- new one: an id other than the last call's, or a name once the last
--- call's arguments are complete JSON.
function M.assemble(deltas)
  local by_index, order = {}, {}
  local last
  for _, d in ipairs(deltas) do
    if d.index == nil then
      if not last then
        d = setmetatable({ index = 0 }, { __index = d })
      else
        local fresh
        if d.id and d.id ~= "" and last.id then
          fresh = d.id ~= last.id
        elseif d.name and d.name ~= "" and last.name then
          fresh = complete_json(last.arguments)
        end
        d = setmetatable({ index = fresh and last.index + 1 or last.index }, { __index = d })
      end
    end
    local slot = by_index[d.index]
    if not slot then
      slot = { index = d.index, arguments = "" }
      by_index[d.index] = slot
      order[#order + 1] = d.index
    end
    if slot.id == nil and d.id and d.id ~= "" then slot.id = d.id end
    if slot.name == nil and d.name and d.name ~= "" then slot.name = d.name end
    if d.fragment then slot.arguments = slot.arguments .. d.fragment end
    if d.extra then slot.extra_content = d.extra end
    if not last or slot.index > last.index then last = slot end
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
  local text, reasoning, refusal, deltas, usage, finish = {}, {}, {}, {}, nil, nil
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
        local out = type(obj.usage.completion_tokens_details) == "table" and obj.usage.completion_tokens_details or {}
        usage = { input = math.tointeger(obj.usage.prompt_tokens) or 0,
                  output = math.tointeger(obj.usage.completion_tokens) or 0,
                  cached = math.tointeger(details.cached_tokens) or 0, cache_write = 0,
                  reasoning = math.tointeger(out.reasoning_tokens) or 0 }
      end
      local choice = type(obj.choices) == "table" and obj.choices[1]
      if type(choice) == "table" then
        local delta = choice.delta or {}
        if type(delta.content) == "string" then text[#text + 1] = delta.content end
        if type(delta.refusal) == "string" then refusal[#refusal + 1] = delta.refusal end
        -- reasoning_content wins over reasoning within one event
        local r = type(delta.reasoning_content) == "string" and delta.reasoning_content
          or type(delta.reasoning) == "string" and delta.reasoning or nil
        if r then reasoning[#reasoning + 1] = r end
        for _, c in ipairs(type(delta.tool_calls) == "table" and delta.tool_calls or {}) do
          local f = type(c["function"]) == "table" and c["function"] or {}
          deltas[#deltas + 1] = { index = math.tointeger(c.index), id = c.id, name = f.name,
            fragment = type(f.arguments) == "string" and f.arguments or nil,
            extra = type(c.extra_content) == "table" and c.extra_content or nil }
        end
        if type(choice.finish_reason) == "string" then finish = choice.finish_reason end
      end
    end
  end
  local calls = {}
  for i, s in ipairs(M.assemble(deltas)) do
    calls[i] = { id = s.id, name = s.name, arguments = s.arguments, extra_content = s.extra_content }
  end
  return { text = table.concat(text), tool_calls = calls, reasoning = table.concat(reasoning),
           refusal = table.concat(refusal),
           usage = usage or { input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 },
           stop_raw = finish }
end

return M
