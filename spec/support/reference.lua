-- Lua references of logic tide runs in C: what the C code must agree with
-- (spec/unit/differential_spec.lua). Written for clarity, not speed.
local cjson = require "cjson"
local json = require "tide.json"

local M = {}

--- The OpenAI assistant message with tool calls, as json.canonical encodes
--- its table (core.openai_assistant_wire writes the same bytes), with the
--- reasoning text as reasoning_content and each call's extra_content (JSON
--- text) spliced in verbatim; OpenRouter's reasoning_details (JSON text)
--- after it, and content_json (Mistral's chunks) in place of the content.
function M.assistant_wire(content, calls, reasoning, details, content_json, field)
  local calls_json = {}
  for i, c in ipairs(calls) do
    local call
    if c.custom then -- a custom tool's call: its input, no extra_content
      call = json.canonical { id = c.id, type = "custom", custom = { name = c.name, input = c.arguments } }
    else
      call = json.canonical { id = c.id, type = "function", ["function"] = { name = c.name, arguments = c.arguments } }
      -- canonical order: extra_content sorts first
      if c.extra_content then call = '{"extra_content":' .. c.extra_content .. "," .. call:sub(2) end
    end
    calls_json[i] = call
  end
  content_json = content_json or (content == nil or content == "") and "null" or json.quote(content)
  -- canonical order: content, reasoning_content, reasoning_details, role,
  -- tool_calls; content null without text
  local r = (reasoning and reasoning ~= "") and (',"' .. (field or "reasoning_content") .. '":'
    .. json.quote(reasoning)) or ""
  if details then r = r .. ',"reasoning_details":' .. details end
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
    if d.custom then slot.custom = true end
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
-- A service tier as the C parsers keep it (what prices a call): a string
-- shorter than 24 bytes, not empty.
local function tier_of(v)
  if type(v) == "string" and v ~= "" and #v < 24 then return v end
  return nil
end

function M.openai_stream(body)
  local text, reasoning, refusal, deltas, usage, finish = {}, {}, {}, {}, nil, nil
  local tier
  local chunk_text, details, signature, via, named = {}, {}, nil, nil, false
  for block in (body:gsub("\r\n", "\n") .. "\n\n"):gmatch("(.-)\n\n") do
    local data = {}
    for line in block:gmatch("[^\n]+") do
      local v = line:match("^data: ?(.*)$")
      if v then data[#data + 1] = v end
    end
    local d = table.concat(data, "\n")
    if d ~= "" and d ~= "[DONE]" then
      local obj = cjson.decode(d)
      tier = tier_of(obj.service_tier) or tier
      if type(obj.usage) == "table" then
        local details = type(obj.usage.prompt_tokens_details) == "table" and obj.usage.prompt_tokens_details or {}
        local out = type(obj.usage.completion_tokens_details) == "table" and obj.usage.completion_tokens_details or {}
        local cost = obj.usage.cost
        usage = { input = math.tointeger(obj.usage.prompt_tokens) or 0,
                  output = math.tointeger(obj.usage.completion_tokens) or 0,
                  -- DeepSeek's name too, the larger; OpenRouter's writes and cost
                  cached = math.max(math.tointeger(details.cached_tokens) or 0,
                    math.tointeger(obj.usage.prompt_cache_hit_tokens) or 0),
                  cache_write = math.tointeger(details.cache_write_tokens) or 0,
                  reasoning = math.tointeger(out.reasoning_tokens) or 0,
                  cost_usd = type(cost) == "number" and cost >= 0 and cost < math.huge and cost or nil }
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
        if r and r ~= "" then named = type(delta.reasoning_content) ~= "string" end
        -- Mistral's chunks: thinking pieces, then the text chunks' text
        if type(delta.content) == "table" then
          for _, c in ipairs(delta.content) do
            if type(c) == "table" then
              local ty = type(c.type) == "string" and c.type or nil
              if ty == "thinking" or (ty == nil and type(c.thinking) == "table") then
                for _, piece in ipairs(type(c.thinking) == "table" and c.thinking or {}) do
                  local pt = type(piece) == "table" and piece.type
                  if type(piece) == "table" and (type(pt) ~= "string" or pt == "text")
                      and type(piece.text) == "string" and piece.text ~= "" then
                    reasoning[#reasoning + 1] = piece.text
                    via = "content"
                  end
                end
                if type(c.signature) == "string" and c.signature ~= "" then signature, via = c.signature, "content" end
              elseif (ty == nil or ty == "text") and type(c.text) == "string" then
                chunk_text[#chunk_text + 1] = c.text
              end
            end
          end
          for _, t in ipairs(chunk_text) do text[#text + 1] = t end
          chunk_text = {}
        end
        local rd = delta.reasoning_details
        if type(rd) == "table" and (next(rd) == nil or rd[1] ~= nil) then details[#details + 1] = rd end
        for _, c in ipairs(type(delta.tool_calls) == "table" and delta.tool_calls or {}) do
          -- a custom tool's call: custom.{name, input} (it wins over a function)
          local custom = type(c.custom) == "table" and c.custom or nil
          local f = custom or type(c["function"]) == "table" and c["function"] or {}
          local piece = custom and f.input or f.arguments
          deltas[#deltas + 1] = { index = math.tointeger(c.index), id = c.id, name = f.name,
            fragment = type(piece) == "string" and piece or nil, custom = custom and true or nil,
            extra = type(c.extra_content) == "table" and c.extra_content or nil }
        end
        if type(choice.finish_reason) == "string" then finish = choice.finish_reason end
      end
    end
  end
  local calls = {}
  for i, s in ipairs(M.assemble(deltas)) do
    calls[i] = { id = s.id, name = s.name, arguments = s.arguments, extra_content = s.extra_content,
                 custom = s.custom }
  end
  usage = usage or { input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 }
  usage.service_tier = tier
  return { text = table.concat(text), tool_calls = calls, reasoning = table.concat(reasoning),
           signature = signature, via = via, details = #details > 0 and details or nil,
           field = named and "reasoning" or nil,
           refusal = table.concat(refusal),
           usage = usage,
           stop_raw = finish }
end

-- ------------------------------------------------------------- Anthropic
-- The Messages reply parser tide ran in Lua before core.anthropic_stream
-- and core.anthropic_parse (anthropic.c) took its place, read the plain
-- way: each event decoded with cjson, the reply taken from the decoded
-- tables by the same rules. Returns the reply, or nil and the error
-- ({ code, message, type? }).

local function count(v)
  if type(v) == "number" and v == v and v >= 0 and v < 2 ^ 53 then return math.floor(v) end
  return 0
end

local ANTHROPIC_STOPS = {
  end_turn = "stop", stop_sequence = "stop", tool_use = "tool_calls",
  max_tokens = "length", pause_turn = "pause", model_context_window_exceeded = "length",
  refusal = "refusal",
}

local function anthropic_stop(raw, calls)
  if raw == nil then return nil end
  return ANTHROPIC_STOPS[raw] or (#calls > 0 and "tool_calls" or "stop")
end

local function anthropic_usage(input, read, write, output, thinking, searches, hour, tier)
  return { input = input + read + write, output = output, cached = read, cache_write = write, reasoning = thinking,
           web_searches = (searches or 0) > 0 and searches or nil,
           cache_write_1h = (hour or 0) > 0 and hour or nil, service_tier = tier }
end

-- usage.cache_creation.ephemeral_1h_input_tokens, when there is one (a number)
local function hour_writes(u)
  local d = type(u) == "table" and u.cache_creation or nil
  if type(d) == "table" and type(d.ephemeral_1h_input_tokens) == "number" then return count(d.ephemeral_1h_input_tokens) end
  return nil
end

-- usage.server_tool_use.web_search_requests, when there is one (a number)
local function web_searches(u)
  local d = type(u) == "table" and u.server_tool_use or nil
  if type(d) == "table" and type(d.web_search_requests) == "number" then return count(d.web_search_requests) end
  return nil
end

-- usage.output_tokens_details.thinking_tokens, when there is one (a number)
local function thinking_tokens(u)
  local d = type(u) == "table" and u.output_tokens_details or nil
  if type(d) == "table" and type(d.thinking_tokens) == "number" then return count(d.thinking_tokens) end
  return nil
end

-- container.id of a table, when it is a string (the container a server
-- tool's code ran in)
local function container_id(t)
  local c = type(t) == "table" and t.container or nil
  if type(c) == "table" and type(c.id) == "string" then return c.id end
  return nil
end

local function nonempty(s) if s ~= "" then return s end end

-- stop_details.explanation of a table, when it is a string (why the model refused)
local function explanation(t)
  local d = type(t) == "table" and t.stop_details or nil
  if type(d) == "table" and type(d.explanation) == "string" then return d.explanation end
  return nil
end

-- The block types tide models; a reply with any other goes back whole (a
-- `content` reasoning part: the decoded content here, its JSON in C).
local MODELED = { text = true, tool_use = true, thinking = true, redacted_thinking = true }

-- A thinking block as a reasoning part, or nil and why it cannot be one.
local function reasoning_part(block)
  if block.type == "thinking" then
    if type(block.signature) ~= "string" or block.signature == "" then return nil, "has no signature" end
    if type(block.thinking) ~= "string" then return nil, "has no thinking text" end
    return { type = "text", text = block.thinking, signature = block.signature, provider = "anthropic" }
  end
  if type(block.data) ~= "string" or block.data == "" then return nil, "has no data" end
  return { type = "redacted", data = block.data, provider = "anthropic" }
end

-- The tool-call finisher of tide.provider.reply: ids made where missing.
local function finish_calls(calls)
  return require("tide.provider.reply").finish_calls(calls)
end

local function canonical_input(input)
  return json.canonical(json.integers(input))
end

local function fail(code, message, fields)
  local e = { code = code, message = message }
  for k, v in pairs(fields or {}) do e[k] = v end
  return e
end

--- A whole (non-streamed) Messages reply.
function M.anthropic_reply(body)
  local ok, obj = pcall(cjson.decode, body)
  if not ok then return nil, fail("MalformedResponse", "anthropic response is not valid JSON") end
  if type(obj) ~= "table" then return nil, fail("MalformedResponse", "anthropic response is not a JSON object") end
  if obj.type == "error" or (type(obj.error) == "table" and obj.content == nil) then
    local e = type(obj.error) == "table" and obj.error or {}
    return nil, fail(e.type == "rate_limit_error" and "RateLimited" or "ProviderError",
      "anthropic returned an error: " .. tostring(e.message), { type = e.type })
  end
  if type(obj.content) ~= "table" then
    return nil, fail("MalformedResponse", "anthropic response has no content array")
  end
  local text, calls, reasoning, other = {}, {}, nil, false
  for i, block in ipairs(obj.content) do
    if type(block) ~= "table" then
      return nil, fail("MalformedResponse", ("anthropic content[%d] is not an object"):format(i))
    end
    local ty = block.type
    if ty == "text" and type(block.text) == "string" then
      text[#text + 1] = block.text
    elseif ty == "tool_use" then
      local input = block.input
      calls[#calls + 1] = { id = block.id, name = block.name,
        arguments = type(input) == "table" and canonical_input(input) or nil }
    elseif ty == "thinking" or ty == "redacted_thinking" then
      local part, why = reasoning_part(block)
      if not part then
        return nil, fail("MalformedResponse", ("anthropic content[%d] (%s) %s"):format(i, ty, why))
      end
      reasoning = reasoning or {}
      reasoning[#reasoning + 1] = part
    elseif type(ty) == "string" then
      other = true
    end
  end
  if other then
    reasoning = reasoning or {}
    reasoning[#reasoning + 1] = { type = "content", content = obj.content, provider = "anthropic" }
  end
  local u = type(obj.usage) == "table" and obj.usage or {}
  local raw = type(obj.stop_reason) == "string" and obj.stop_reason or nil
  calls = finish_calls(calls)
  return { text = table.concat(text), tool_calls = calls, reasoning = reasoning,
    usage = anthropic_usage(count(u.input_tokens), count(u.cache_read_input_tokens),
      count(u.cache_creation_input_tokens), count(u.output_tokens), thinking_tokens(u) or 0, web_searches(u),
      hour_writes(u), tier_of(u.service_tier)),
    stop = anthropic_stop(raw, calls), stop_raw = raw, container = nonempty(container_id(obj) or ""),
    refusal = nonempty(explanation(obj) or "") }
end

local STREAM_ERRORS = { overloaded_error = "ProviderError", api_error = "ProviderError",
  rate_limit_error = "RateLimited" }

--- A streamed Messages reply: the SSE body in one piece. Returns the reply
--- (with `deltas`, the text deltas, and `rdeltas`, the thinking deltas, in
--- order), or nil and the error (with `deltas` too).
function M.anthropic_stream(body)
  -- kept: the thinking, text and other blocks in arrival order (a reply
  -- with an other block goes back as its content, rebuilt from them and
  -- the calls); cur: the text block text deltas go to.
  local st = { text = {}, rdeltas = {}, thinking = {}, reasoning = {}, calls = {}, order = {}, kept = {},
    input = 0, output = 0, read = 0, write = 0, thinking_tokens = 0 }
  local function kept_at(index, thinking)
    for i = #st.kept, 1, -1 do
      local k = st.kept[i]
      if k.index == index and (k.kind == "thinking") == thinking then return k end
    end
  end
  local function add_call(index, id, name, frag)
    local c = st.calls[index]
    if not c then
      c = { index = index, arguments = "" }
      st.calls[index] = c
      st.order[#st.order + 1] = index
    end
    if c.id == nil and type(id) == "string" and id ~= "" then c.id = id end
    if c.name == nil and type(name) == "string" and name ~= "" then c.name = name end
    if frag then c.arguments = c.arguments .. frag end
  end
  local function emit(t)
    if type(t) == "string" and t ~= "" then st.text[#st.text + 1] = t end
  end
  local function event(name, data)
    if st.done or data == "[DONE]" then return nil end
    local ok, obj = pcall(cjson.decode, data)
    if not ok then return fail("MalformedResponse", "anthropic stream event is not valid JSON") end
    if type(obj) ~= "table" then return fail("MalformedResponse", "anthropic stream event is not a JSON object") end
    local ty = type(obj.type) == "string" and obj.type or name
    local index = math.tointeger(obj.index)
    if ty == "content_block_delta" then
      local d = obj.delta
      if type(d) ~= "table" then return fail("MalformedResponse", "anthropic content_block_delta has no delta") end
      if d.type == "text_delta" then
        if type(d.text) == "string" and d.text ~= "" then
          if not st.cur then
            st.cur = { kind = "text", index = -1, pieces = {}, citations = {} }
            st.kept[#st.kept + 1] = st.cur
          end
          st.cur.pieces[#st.cur.pieces + 1] = d.text
          emit(d.text)
        end
      elseif d.type == "input_json_delta" then
        if not index or index < 0 then
          return fail("MalformedResponse", "anthropic input_json_delta has no valid index")
        end
        local frag = type(d.partial_json) == "string" and d.partial_json or nil
        local o = kept_at(index, false)
        if o and o.kind == "other" then
          o.frags[#o.frags + 1] = frag
          o.has_input = true
        else
          add_call(index, nil, nil, frag)
        end
      elseif d.type == "citations_delta" then
        local t = index and kept_at(index, false)
        if t and t.kind == "text" and type(d.citation) == "table" then t.citations[#t.citations + 1] = d.citation end
      elseif d.type == "thinking_delta" or d.type == "signature_delta" then
        local part = st.thinking[index or -1]
        if not part or part.type ~= "thinking" then
          return fail("MalformedResponse", ("anthropic %s outside a thinking block"):format(d.type))
        end
        if d.type == "signature_delta" then
          if type(d.signature) == "string" then part.signature = d.signature end
        elseif type(d.thinking) == "string" and d.thinking ~= "" then
          part.thinking = part.thinking .. d.thinking
          st.rdeltas[#st.rdeltas + 1] = d.thinking
        end
      end
    elseif ty == "content_block_start" then
      local b = obj.content_block
      if type(b) ~= "table" then return fail("MalformedResponse", "anthropic content_block_start has no block") end
      st.cur = nil
      local valid = index and index >= 0
      if b.type == "tool_use" then
        if not index or index < 0 then return fail("MalformedResponse", "anthropic tool_use block has no valid index") end
        local whole = type(b.input) == "table" and next(b.input) ~= nil and canonical_input(b.input) or nil
        add_call(index, b.id, b.name, whole)
      elseif b.type == "text" then
        local t = { kind = "text", index = valid and index or -1, pieces = { type(b.text) == "string" and b.text or nil },
          citations = {} }
        if type(b.citations) == "table" then for i, c in ipairs(b.citations) do t.citations[i] = c end end
        st.kept[#st.kept + 1] = t
        st.cur = t
        emit(b.text)
      elseif b.type == "thinking" or b.type == "redacted_thinking" then
        if not index or index < 0 or st.thinking[index] then
          return fail("MalformedResponse", ("anthropic %s block has no valid index"):format(b.type))
        end
        local part
        if b.type == "thinking" then
          local first = type(b.thinking) == "string" and b.thinking or ""
          part = { type = "thinking", thinking = first, signature = type(b.signature) == "string" and b.signature or nil }
          if first ~= "" then st.rdeltas[#st.rdeltas + 1] = first end
        else
          part = { type = "redacted_thinking", data = b.data }
        end
        st.thinking[index] = part
        st.reasoning[#st.reasoning + 1] = part
        st.kept[#st.kept + 1] = { kind = "thinking", index = index, part = part }
      elseif type(b.type) == "string" then
        st.kept[#st.kept + 1] = { kind = "other", index = valid and index or -1, block = b, frags = {} }
      end
    elseif ty == "message_start" then
      local m = type(obj.message) == "table" and obj.message or {}
      local u = type(m.usage) == "table" and m.usage or {}
      st.input, st.read = count(u.input_tokens), count(u.cache_read_input_tokens)
      st.write, st.output = count(u.cache_creation_input_tokens), count(u.output_tokens)
      st.thinking_tokens = thinking_tokens(u) or 0
      st.searches = web_searches(u) or 0
      st.hour = hour_writes(u) or 0
      st.tier = tier_of(u.service_tier) or st.tier
      st.container = container_id(m) or st.container
    elseif ty == "message_delta" then
      local d = type(obj.delta) == "table" and obj.delta or {}
      if type(d.stop_reason) == "string" then st.stop = d.stop_reason end
      st.container = container_id(d) or st.container
      st.refusal = explanation(d) or st.refusal
      local u = obj.usage
      if type(u) == "table" then
        if u.output_tokens ~= nil then st.output = count(u.output_tokens) end
        if type(u.input_tokens) == "number" then st.input = count(u.input_tokens) end
        if type(u.cache_read_input_tokens) == "number" then st.read = count(u.cache_read_input_tokens) end
        if type(u.cache_creation_input_tokens) == "number" then st.write = count(u.cache_creation_input_tokens) end
        st.thinking_tokens = thinking_tokens(u) or st.thinking_tokens
        st.searches = web_searches(u) or st.searches
        st.hour = hour_writes(u) or st.hour
        st.tier = tier_of(u.service_tier) or st.tier
      end
    elseif ty == "message_stop" then
      st.done = true
    elseif ty == "error" then
      local e = type(obj.error) == "table" and obj.error or {}
      return fail(STREAM_ERRORS[e.type] or "ProviderError",
        "anthropic stream error: " .. tostring(e.message or e.type),
        { type = e.type, retryable = STREAM_ERRORS[e.type] ~= nil })
    end
  end
  for block in (body:gsub("\r\n", "\n") .. "\n\n"):gmatch("(.-)\n\n") do
    local data, name = {}, "message"
    for line in block:gmatch("[^\n]+") do
      local v = line:match("^data: ?(.*)$")
      if v then data[#data + 1] = v end
      local ev = line:match("^event: ?(.*)$")
      if ev then name = ev end
    end
    if #data > 0 then
      local err = event(name, table.concat(data, "\n"))
      if err then
        err.deltas = st.text
        return nil, err
      end
    end
  end
  if not st.done then
    return nil, fail("MalformedResponse", "anthropic stream ended before message_stop",
      { partial_text = table.concat(st.text), deltas = st.text })
  end
  local calls = {}
  table.sort(st.order)
  for i, k in ipairs(st.order) do
    local c = st.calls[k]
    calls[i] = { id = c.id, name = c.name, arguments = c.arguments }
  end
  calls = finish_calls(calls)
  local reasoning
  for i, part in ipairs(st.reasoning) do
    local r, why = reasoning_part(part)
    if not r then
      return nil, fail("MalformedResponse", ("anthropic %s block %d %s"):format(part.type, i, why))
    end
    reasoning = reasoning or {}
    reasoning[i] = r
  end
  local other = false
  for _, k in ipairs(st.kept) do
    if k.kind == "other" then
      other = true
      if k.has_input then
        local frags = table.concat(k.frags)
        local ok, v = pcall(cjson.decode, frags)
        if k.block.input == nil or not ok or type(v) ~= "table" or not frags:match("^%s*{") then
          return nil, fail("MalformedResponse",
            ("anthropic content block %d has an input that is not a JSON object"):format(k.index))
        end
        k.input = v
      end
    end
  end
  if other then
    -- the kept blocks and the calls in block order
    local content, ci = {}, 1
    local function call_block(c)
      local args = c.arguments:match("^%s*(.-)%s*$")
      local ok, v = pcall(cjson.decode, args)
      if not (ok and type(v) == "table" and args:sub(1, 1) == "{") then v = {} end
      return { id = c.id, input = v, name = c.name, type = "tool_use" }
    end
    for _, k in ipairs(st.kept) do
      while ci <= #calls and st.order[ci] < k.index do
        content[#content + 1] = call_block(calls[ci])
        ci = ci + 1
      end
      if k.kind == "thinking" then
        local p = k.part
        content[#content + 1] = p.type == "thinking"
          and { signature = p.signature, thinking = p.thinking, type = "thinking" }
          or { data = p.data, type = "redacted_thinking" }
      elseif k.kind == "text" then
        local t = table.concat(k.pieces)
        if t ~= "" then
          content[#content + 1] = { citations = #k.citations > 0 and k.citations or nil, text = t, type = "text" }
        end
      else
        local b = k.block
        if k.has_input then
          b = {}
          for key, v in pairs(k.block) do b[key] = v end
          b.input = k.input
        end
        content[#content + 1] = b
      end
    end
    for i = ci, #calls do content[#content + 1] = call_block(calls[i]) end
    reasoning = reasoning or {}
    reasoning[#reasoning + 1] = { type = "content", content = content, provider = "anthropic" }
  end
  return { text = table.concat(st.text), tool_calls = calls, reasoning = reasoning,
    usage = anthropic_usage(st.input, st.read, st.write, st.output, st.thinking_tokens, st.searches, st.hour,
      st.tier),
    container = nonempty(st.container or ""), refusal = nonempty(st.refusal or ""),
    stop = anthropic_stop(st.stop, calls), stop_raw = st.stop, deltas = st.text, rdeltas = st.rdeltas }
end

--- The input a tool_use block sends for a call's arguments, as the Lua
--- encoder made it: the arguments' text when it is one JSON object (cut of
--- white space), re-encoded canonically when lua-cjson may have read more
--- than JSON into it, `{}` when it is not an object.
function M.anthropic_input(args)
  if type(args) == "table" then return json.canonical(args) end
  if type(args) ~= "string" then return "{}" end
  local trimmed = args:match("^%s*(.-)%s*$")
  if trimmed:byte(1) ~= 123 then return "{}" end
  local ok, v = pcall(cjson.decode, trimmed)
  if not ok or type(v) ~= "table" then return "{}" end
  local lower = trimmed:lower()
  if trimmed:find("%c") or lower:find("nan", 1, true) or lower:find("inf", 1, true) or lower:find("0x", 1, true) then
    return json.canonical(json.integers(v))
  end
  return trimmed
end

--- An assistant message with tool calls (core.anthropic_assistant_wire):
--- thinking blocks (JSON, joined), a text block unless the text is empty
--- or white space alone (the API refuses one), one tool_use block per call.
function M.anthropic_assistant(text, calls, thinking)
  local blocks = {}
  if thinking then blocks[#blocks + 1] = thinking end
  if text and text:find("%S") then blocks[#blocks + 1] = json.canonical { type = "text", text = text } end
  for _, c in ipairs(calls) do
    blocks[#blocks + 1] = '{"id":' .. json.quote(c.id) .. ',"input":' .. M.anthropic_input(c.arguments)
      .. ',"name":' .. json.quote(c.name) .. ',"type":"tool_use"}'
  end
  return '{"content":[' .. table.concat(blocks, ",") .. '],"role":"assistant"}'
end

--- A tool message's results as one user message of tool_result blocks
--- (core.anthropic_results_wire).
function M.anthropic_results(results)
  local blocks = {}
  for i, r in ipairs(results) do
    blocks[i] = json.canonical { type = "tool_result", tool_use_id = r.id, content = r.content,
      is_error = r.is_error == true }
  end
  return '{"content":[' .. table.concat(blocks, ",") .. '],"role":"user"}'
end

-- ------------------------------------------------ OpenAI Responses API

-- What provider/responses.lua read in Lua before core.responses_stream and
-- core.responses_parse (responses.c): the reply of a Responses stream or
-- body from decoded tables. One addition: response.reasoning_text.delta
-- goes to the reasoning listener, as reasoning_summary_text.delta always
-- did. (count, fail and finish_calls are the Anthropic section's.)
local excerpt = require("tide.provider.errors").excerpt
local concat = table.concat

-- json.decode_fast, but text with a NUL byte is not JSON: lua-cjson stops
-- reading at one (it ends its input), where the C scanner, reading every
-- byte it is given, finds what follows. (A fuzzer found the two apart on
-- an event whose data ended in a NUL.)
local function decode_fast(text)
  if text:find("\0", 1, true) then return nil, { message = "a NUL byte in the text" } end
  return json.decode_fast(text)
end

local function responses_usage(u)
  if type(u) ~= "table" then return { input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 } end
  local inp, out = u.input_tokens_details, u.output_tokens_details
  return {
    input = count(u.input_tokens),
    output = count(u.output_tokens),
    cached = type(inp) == "table" and count(inp.cached_tokens) or 0,
    cache_write = 0,
    reasoning = type(out) == "table" and count(out.reasoning_tokens) or 0,
  }
end

local RESPONSES_FAILED = {
  rate_limit_exceeded = { "RateLimited", 429 },
  server_error = { "ProviderError", 500 },
}

local function failure(where, e, body)
  e = type(e) == "table" and e or {}
  local code = type(e.code) == "string" and e.code or type(e.type) == "string" and e.type or nil
  local kind = RESPONSES_FAILED[code]
  return fail(kind and kind[1] or "ProviderError",
    ("openai %s: %s"):format(where, excerpt(tostring(e.message or code), 512)),
    { type = code, status = kind and kind[2] or nil, body = body and excerpt(body), retryable = kind ~= nil })
end

local INCOMPLETE = { max_output_tokens = "length", content_filter = "content_filter" }
local function responses_stop(obj, ncalls, refused)
  if obj.status == "incomplete" then
    local d = obj.incomplete_details
    local reason = type(d) == "table" and type(d.reason) == "string" and d.reason or "incomplete"
    return INCOMPLETE[reason] or "length", reason
  end
  local raw = type(obj.status) == "string" and obj.status or nil
  if refused then return "refusal", raw end
  return ncalls > 0 and "tool_calls" or "stop", raw
end

local function responses_reasoning(item)
  local summary = {}
  if type(item.summary) == "table" then
    for _, s in ipairs(item.summary) do
      if type(s) == "table" and type(s.text) == "string" then summary[#summary + 1] = s.text end
    end
  end
  return { type = "encrypted", id = item.id, provider = "openai_responses", summary = concat(summary, "\n\n"),
           data = type(item.encrypted_content) == "string" and item.encrypted_content or nil }
end

-- The items of tools the service runs, and a remote MCP server's approval
-- request (core/responses.c's HOSTED_ITEMS).
local HOSTED = { web_search_call = true, file_search_call = true, code_interpreter_call = true,
                 image_generation_call = true, mcp_call = true, mcp_list_tools = true,
                 mcp_approval_request = true, compaction = true }

local function add_item(acc, item, i)
  if type(item) ~= "table" then
    return fail("MalformedResponse", ("openai output[%d] is not an object"):format(i))
  end
  local ty = item.type
  if ty == "message" then
    if type(item.content) == "table" then
      for _, part in ipairs(item.content) do
        if type(part) == "table" then
          if part.type == "output_text" and type(part.text) == "string" then
            acc.text[#acc.text + 1] = part.text
          elseif part.type == "refusal" and type(part.refusal) == "string" then
            acc.refusal = (acc.refusal or "") .. part.refusal
          end
        end
      end
    end
  elseif ty == "function_call" or ty == "custom_tool_call" then
    if type(item.call_id) ~= "string" or type(item.name) ~= "string" then
      return fail("MalformedResponse", ("openai output[%d] (%s) has no call_id or name"):format(i, ty))
    end
    local custom = ty == "custom_tool_call"
    local args = custom and item.input or item.arguments
    acc.calls[#acc.calls + 1] = { id = item.call_id, name = item.name, custom = custom or nil,
                                  arguments = type(args) == "string" and args or nil }
  elseif ty == "reasoning" then
    if type(item.id) ~= "string" or item.id == "" then
      return fail("MalformedResponse", ("openai output[%d] (reasoning) has no id"):format(i))
    end
    acc.reasoning = acc.reasoning or {}
    acc.reasoning[#acc.reasoning + 1] = responses_reasoning(item)
  elseif HOSTED[ty] then
    if ty == "web_search_call" then acc.searches = (acc.searches or 0) + 1 end
    if ty == "file_search_call" then acc.file_searches = (acc.file_searches or 0) + 1 end
    -- kept whole, in place among the reasoning parts (the C parser keeps
    -- its raw bytes; this reference, decoded, its canonical JSON: specs
    -- compare the two canonically)
    if type(item.id) == "string" and item.id ~= "" then
      acc.reasoning = acc.reasoning or {}
      acc.reasoning[#acc.reasoning + 1] = { type = "item", id = item.id, item = json.canonical(item),
                                            provider = "openai_responses" }
    end
  end
  return nil
end

local function reply_of(obj, acc)
  local stop, raw = responses_stop(obj, #acc.calls, acc.refusal ~= nil)
  local usage = responses_usage(obj.usage)
  usage.web_searches = acc.searches
  usage.file_searches = acc.file_searches
  usage.service_tier = tier_of(obj.service_tier)
  return {
    text = concat(acc.text),
    tool_calls = finish_calls(acc.calls),
    reasoning = acc.reasoning,
    refusal = acc.refusal,
    usage = usage,
    stop = stop,
    stop_raw = raw,
  }
end

local function failed_response(obj)
  local e = obj.error
  if e ~= nil and e ~= json.null then return failure("response failed", e) end
  if obj.status == "failed" then return failure("response failed", { message = "no error given" }) end
  return nil
end

--- `reply` (core.responses_parse's or _stream's, or nil) with each hosted
--- tool's item as this reference keeps it: canonical JSON, where C keeps
--- the bytes as they came. Returns `reply`.
function M.canonical_items(reply)
  for _, part in ipairs(type(reply) == "table" and reply.reasoning or {}) do
    if part.type == "item" then part.item = json.canonical(decode_fast(part.item)) end
  end
  return reply
end

--- A whole Responses body (core.responses_parse gives the same): the
--- reply, or nil and the error.
function M.responses_parse(body)
  local obj, derr = decode_fast(body)
  if obj == nil then
    return nil, fail("MalformedResponse", ("openai response is not valid JSON (%s)"):format(derr.message))
  end
  if type(obj) ~= "table" then return nil, fail("MalformedResponse", "openai response is not a JSON object") end
  local err = failed_response(obj)
  if err then return nil, err end
  if type(obj.output) ~= "table" then
    return nil, fail("MalformedResponse", "openai response has no output array")
  end
  local acc = { text = {}, calls = {} }
  for i, item in ipairs(obj.output) do
    err = add_item(acc, item, i)
    if err then return nil, err end
  end
  return reply_of(obj, acc)
end

local RESPONSES_SKIP = {
  ["response.created"] = true, ["response.in_progress"] = true, ["response.output_item.added"] = true,
  ["response.content_part.added"] = true, ["response.content_part.done"] = true,
  ["response.output_text.done"] = true, ["response.function_call_arguments.delta"] = true,
  ["response.function_call_arguments.done"] = true, ["response.reasoning_summary_part.added"] = true,
  ["response.reasoning_summary_part.done"] = true, ["response.reasoning_summary_text.done"] = true,
  ["response.output_text.annotation.added"] = true, ["response.refusal.delta"] = true,
  ["response.refusal.done"] = true, ["response.custom_tool_call_input.delta"] = true,
  ["response.custom_tool_call_input.done"] = true,
}

--- A Responses event stream, framed by core.sse_parser and read event by
--- event as the Lua stream read it (core.responses_stream gives the same):
--- { reply = ..., text = { deltas }, reasoning = { deltas } } or
--- { err = ..., text = ..., reasoning = ... }.
function M.responses_stream(body)
  local st = { text = {}, reasoning = {}, items = {}, done = false }
  local sse = require("tide.core").sse_parser()
  local events, serr = sse:feed(body)
  sse:close()
  if not events then -- as the exchange reported a failure of core.sse_parser
    return { err = fail("MalformedResponse", "invalid event stream: " .. tostring(serr.message or serr),
      { cause = serr.code }), text = st.text, reasoning = st.reasoning }
  end
  local function event(ev)
    if st.done or ev.done then return nil end
    local name = ev.event
    if RESPONSES_SKIP[name] then return nil end
    if name == "response.output_item.done" then
      st.items[#st.items + 1] = ev.data
      return nil
    end
    local obj, derr = decode_fast(ev.data)
    if type(obj) ~= "table" then
      return fail("MalformedResponse", "openai stream event is not a JSON object"
        .. (derr and (" (" .. derr.message .. ")") or ""), { body = excerpt(ev.data) })
    end
    local ty = obj.type
    if ty == "response.output_text.delta" then
      if type(obj.delta) == "string" and obj.delta ~= "" then st.text[#st.text + 1] = obj.delta end
    elseif ty == "response.reasoning_summary_text.delta" or ty == "response.reasoning_text.delta" then
      if type(obj.delta) == "string" and obj.delta ~= "" then st.reasoning[#st.reasoning + 1] = obj.delta end
    elseif ty == "response.output_item.done" then
      st.items[#st.items + 1] = ev.data
    elseif ty == "response.completed" or ty == "response.incomplete" then
      local r = obj.response
      if type(r) ~= "table" then return fail("MalformedResponse", "openai " .. ty .. " has no response") end
      st.final = r
      st.done = true
    elseif ty == "response.failed" then
      local r = type(obj.response) == "table" and obj.response or {}
      return failed_response(r) or failure("response failed", { message = "no error given" }, ev.data)
    elseif ty == "error" then
      return failure("stream error", obj, ev.data)
    end
    return nil
  end
  for _, ev in ipairs(events) do
    local err = event(ev)
    if err then return { err = err, text = st.text, reasoning = st.reasoning } end
  end
  if not st.done then
    return { err = fail("MalformedResponse", "openai stream ended before response.completed",
      { partial_text = concat(st.text) }), text = st.text, reasoning = st.reasoning }
  end
  local output = st.final.output
  if type(output) ~= "table" or next(output) == nil then
    output = {}
    for i, data in ipairs(st.items) do
      local obj = decode_fast(data)
      output[i] = type(obj) == "table" and obj.item or nil
    end
  end
  local acc = { text = {}, calls = {} }
  for i, item in ipairs(output) do
    local err = add_item(acc, item, i)
    if err then return { err = err, text = st.text, reasoning = st.reasoning } end
  end
  acc.text = st.text
  return { reply = reply_of(st.final, acc), text = st.text, reasoning = st.reasoning }
end

-- ------------------------------------------------------------ canonical --

local cjson_null = cjson.null
local encode_string = cjson.new().encode

local function is_array(t)
  if getmetatable(t) == json.array_mt then return true, #t end
  local n = #t
  if n > 0 then
    -- (a list with other keys is an object: as a list, they would be lost)
    for k in next, t do
      if math.type(k) ~= "integer" or k < 1 or k > n then return false, 0 end
    end
    return true, n
  end
  return next(t) == nil and false, 0
end

local function canon(v, out, depth)
  local ty = type(v)
  if ty == "string" then
    out[#out + 1] = encode_string(v)
  elseif ty == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      out[#out + 1] = "null"
    elseif math.type(v) == "integer" then
      out[#out + 1] = tostring(v)
    else
      -- Shortest of %.14g / %.17g that reads back exactly.
      local text = ("%.14g"):format(v)
      if tonumber(text) ~= v then text = ("%.17g"):format(v) end
      out[#out + 1] = text
    end
  elseif ty == "boolean" then
    out[#out + 1] = v and "true" or "false"
  elseif v == nil or v == cjson_null then
    out[#out + 1] = "null"
  elseif ty == "table" then
    if depth > 200 then error("tide.json: nesting too deep", 0) end
    local arr, n = is_array(v)
    if arr then
      out[#out + 1] = "["
      for i = 1, n do
        if i > 1 then out[#out + 1] = "," end
        canon(v[i], out, depth + 1)
      end
      out[#out + 1] = "]"
    elseif getmetatable(v) == nil and next(v) == nil then
      out[#out + 1] = "{}"
    else
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then
          if type(k) == "number" then k = tostring(k) else
            error("tide.json: cannot encode a " .. type(k) .. " key", 0)
          end
        end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      out[#out + 1] = "{"
      for i, k in ipairs(keys) do
        if i > 1 then out[#out + 1] = "," end
        out[#out + 1] = encode_string(k)
        out[#out + 1] = ":"
        local val = v[k]
        if val == nil then val = v[tonumber(k)] end
        canon(val, out, depth + 1)
      end
      out[#out + 1] = "}"
    end
  else
    error("tide.json: cannot encode a " .. ty, 0)
  end
end

--- json.canonical as Lua wrote it before core.json_canonical_encoder.
function M.canonical(v)
  local out = {}
  canon(v, out, 0)
  return table.concat(out)
end

return M
