--- tide.compaction: keeping a long conversation inside the model's context
--- window.
---
--- `context = { window, reserve, strategy }` on a session or agent (the
--- window defaults from the model's name, for the models in `WINDOWS`).
--- Before each request the turn estimates the prompt's tokens from what the
--- provider last reported (its whole-prompt `usage.input`) plus the bytes
--- added since, a quarter token a byte: the history is never tokenized
--- again. Past `window - reserve`, the older part of the conversation is
--- compacted:
---   - "summarize": one model call (the `compact` prompt) turns it into a
---     summary, which opens the first message kept;
---   - "drop": old tool results are emptied first, then the oldest turns go.
--- The frozen prefix (system prompt, tools) is never touched, and the cut
--- only falls before a user message, so a tool call is never separated from
--- its result or its reasoning. A turn in progress that outgrows the window
--- by itself (a long agentic run) has its older tool results emptied
--- (native ones, or the <tool_result> tags of calls a model wrote as text),
--- oldest first, the latest three kept whole, whatever the strategy. A
--- provider's context-length error triggers one compaction and one retry.
--- Each compaction is counted
--- (`stats().compactions`), told to the event sink, and written to the
--- transcript, so that a resumed session restores the compacted state.
---@class tide.compaction
local M = {}

local core = require "tide.core"
local json = require "tide.json"

--- Context windows of known models (tokens), by name prefix.
M.WINDOWS = {
  { "gpt-4.1", 1047576 }, { "gpt-4o", 128000 }, { "gpt-5", 400000 }, { "o1", 200000 }, { "o3", 200000 },
  { "o4", 200000 }, { "claude", 200000 }, { "deepseek", 128000 }, { "gemini-2", 1048576 },
  { "gemini-3", 1048576 }, { "mistral-large", 128000 }, { "qwen", 131072 }, { "grok", 256000 },
}
M.DEFAULT_RESERVE = 8000
local STRATEGIES = { summarize = true, drop = true }
local DROPPED = "[tool result dropped to save context]"

--- Checks a `context` option (misuse raises at `level`); returns it with
--- its defaults, or nil when there is none.
function M.options(ctx, where, level)
  if ctx == nil then return nil end
  if type(ctx) ~= "table" then error(where .. "'context' must be a table", level + 1) end
  for k in pairs(ctx) do
    if k ~= "window" and k ~= "reserve" and k ~= "strategy" then
      error(("%sunknown option 'context.%s'"):format(where, tostring(k)), level + 1)
    end
  end
  for _, k in ipairs { "window", "reserve" } do
    local v = ctx[k]
    if v ~= nil and (math.type(v) ~= "integer" or v <= 0) then
      error(("%s'context.%s' must be a positive integer"):format(where, k), level + 1)
    end
  end
  if ctx.strategy ~= nil and not STRATEGIES[ctx.strategy] then
    error(where .. "'context.strategy' must be \"summarize\" or \"drop\"", level + 1)
  end
  return ctx
end

--- The window of `model`, from WINDOWS, or nil.
function M.window_of(model)
  if type(model) ~= "string" then return nil end
  local best, best_len
  for _, e in ipairs(M.WINDOWS) do
    if model:sub(1, #e[1]) == e[1] and (not best_len or #e[1] > best_len) then best, best_len = e[2], #e[1] end
  end
  return best
end

--- The settings in force for `session` (window resolved), or nil.
function M.settings(session)
  local ctx = session.context
  if not ctx then return nil end
  local window = ctx.window or M.window_of(session.provider.model)
  if not window then return nil end
  return { window = window, reserve = ctx.reserve or math.min(M.DEFAULT_RESERVE, window // 4),
    strategy = ctx.strategy or "summarize" }
end

--- The estimated prompt tokens of the next request: the provider's last
--- count plus a quarter token for each byte added since.
function M.estimate(session)
  local h = session.conversation
  -- (a resumed history is encoded on first use: its bytes count from now)
  h:encoded()
  local prefix = session.prefix and #session.prefix or 0
  if h.usage_input then
    return h.usage_input + math.max(0, h.wire_bytes - h.usage_wire_bytes) // 4
  end
  return (prefix + h.wire_bytes) // 4
end

-- Whether a user message carries tool results written as text (a
-- <tool_result> tag first: in its text, or in its first part when the
-- results held images).
local function textual_results(m)
  local c = m.content
  if type(c) == "table" then c = type(c[1]) == "table" and c[1].text end
  return type(c) == "string" and c:find("^<tool_result") ~= nil
end

-- The indices where a cut may fall: before a user message that is the
-- user's own (not tool results written as text).
local function boundaries(messages)
  local out = {}
  for i, m in ipairs(messages) do
    if m.role == "user" and not textual_results(m) then out[#out + 1] = i end
  end
  return out
end
M._boundaries = boundaries -- (for the specs)

local function text_of(content)
  if type(content) == "string" then return content end
  local out = {}
  for _, p in ipairs(type(content) == "table" and content or {}) do
    if p.text then out[#out + 1] = p.text elseif p.type then out[#out + 1] = "[" .. p.type .. "]" end
  end
  return table.concat(out, "\n")
end

-- About how many bytes a message takes encoded: its strings, without
-- encoding it (a compaction weighs every message of a long history).
-- (content: text, or text and image parts, of a message or a tool result)
local function content_bytes(c)
  if type(c) == "string" then return #c end
  local n = 0
  if type(c) == "table" then
    for _, part in ipairs(c) do n = n + #(part.text or part.data or part.url or "") end
  end
  return n
end

local function approx_bytes(m)
  local n = 32 + content_bytes(m.content)
  for _, call in ipairs(m.tool_calls or {}) do
    n = n + 48 + #(call.name or "") + (type(call.arguments) == "string" and #call.arguments or 64)
  end
  for _, r in ipairs(m.results or {}) do n = n + 48 + content_bytes(r.content) end
  return n
end

-- A message that carries tool results (a `tool` message, or results the
-- model's calls got as text: <tool_result> tags) with each result emptied,
-- or nil when it carries none or they are empty already. A result emptied
-- keeps its place, its call's name and whether it failed.
local function emptied_results(m)
  if m.role == "tool" then
    if not m.results[1] or m.results[1].content == DROPPED then return nil end
    local results = {}
    for j, r in ipairs(m.results) do
      results[j] = { id = r.id, name = r.name, is_error = r.is_error, content = DROPPED }
    end
    return { role = "tool", results = results }
  end
  if m.role ~= "user" or not textual_results(m) then return nil end
  -- (each tag opens the text or follows the one before: see turn's
  -- results_message; images after the text go with their results)
  local text = type(m.content) == "table" and m.content[1].text or m.content
  local first = text:match("^<tool_result[^>\n]*>")
  if not first then return nil end
  local parts = {}
  local function add(tag) parts[#parts + 1] = tag .. "\n" .. DROPPED .. "\n</tool_result>" end
  add(first)
  for tag in text:gmatch("\n</tool_result>\n(<tool_result name=\"[^>\n]*>)") do add(tag) end
  local content = table.concat(parts, "\n")
  if content == m.content then return nil end
  return { role = "user", content = content }
end

-- The older part of a conversation as plain text, for the summary call.
local function as_text(messages, upto)
  local lines = {}
  for i = 1, upto do
    local m = messages[i]
    if m.role == "tool" then
      for _, r in ipairs(m.results or {}) do
        lines[#lines + 1] = ("[tool %s result] %s"):format(r.name or "?", text_of(r.content))
      end
    else
      local t = text_of(m.content)
      for _, c in ipairs(m.tool_calls or {}) do
        t = t .. ("\n[calls %s %s]"):format(c.name, type(c.arguments) == "string" and c.arguments or json.canonical(c.arguments))
      end
      lines[#lines + 1] = ("%s: %s"):format(m.role, t)
    end
  end
  return table.concat(lines, "\n\n")
end

-- The message at `i` with `summary` in front of its content.
local function with_summary(m, summary)
  local lead = "[Summary of the earlier conversation]\n" .. summary .. "\n[End of summary]"
  local copy = {}
  for k, v in pairs(m) do copy[k] = v end
  if type(m.content) == "table" then
    copy.content = { { type = "text", text = lead } }
    for _, p in ipairs(m.content) do copy.content[#copy.content + 1] = p end
  else
    copy.content = lead .. "\n\n" .. (m.content or "")
  end
  return copy
end

--- Applies a compaction record to `messages` (what compact did, done again
--- on resume): returns the new list.
function M.apply(messages, rec)
  local out = messages
  if rec.emptied then
    for _, i in ipairs(rec.emptied) do
      out[i] = out[i] and emptied_results(out[i]) or out[i]
    end
  end
  if rec.cut and rec.cut > 0 then
    local kept = {}
    for i = rec.cut + 1, #out do kept[#kept + 1] = out[i] end
    if rec.summary and kept[1] then kept[1] = with_summary(kept[1], rec.summary) end
    out = kept
  end
  return out
end

-- The summary of messages[1..cut]: one model call, with its own prefix,
-- counted as every call of the turn (`run`) is: stats, tokens, cost,
-- budget, its chat span under the turn's and its metrics.
local function summarize(session, messages, cut, run)
  local prompts = require "tide.prompts"
  local system, rerr = prompts.render("compact", {})
  if not system then return nil, rerr end
  local p = session.provider
  local prefix = p:encode_prefix(system, {})
  local body_msg = p:encode_message { role = "user", content = as_text(messages, cut) }
  if run and run.budget then run.budget:spend("provider_calls", 1, run.agent) end
  session.counters.provider_calls = session.counters.provider_calls + 1
  local turn = require "tide.turn"
  local chat = run and run.span and turn._start_chat(run, p)
  local resp, err = turn._complete(turn._meter_of(), p, prefix, {}, { body_msg })
  if chat then turn._end_chat(chat, resp, err) end
  if not resp then return nil, err end
  if run then turn._add_usage(run, session.counters, resp.usage, resp.model or p.model) end
  if resp.text == nil or resp.text == "" then
    return nil, core.error("CompactionFailed", "the summary call gave no text")
  end
  return resp.text
end

-- The turn in progress keeps this many of its latest rounds' results whole
-- (one when the provider has said the prompt does not fit): the model
-- works from them. (Anthropic's context editing keeps three tool uses.)
M.KEEP_RESULTS = 3

-- Writes compaction record `rec` (what was emptied and cut) and applies it:
-- the history replaced, the transcript told, the counters, the span and
-- the event sink.
local function commit(session, run, rec, t0)
  local h = session.conversation
  h:replace(M.apply(h.messages, rec))
  h:note(rec)
  h.usage_input = nil -- the next count is an estimate again
  local stats = session.counters
  stats.compactions = stats.compactions + 1
  if run and run.span then
    run.span:event("compaction", { strategy = rec.strategy, removed = rec.cut or 0 })
  end
  if run and run.sink then
    run.sink { type = "compaction", strategy = rec.strategy, removed = rec.cut or 0,
      emptied = rec.emptied and #rec.emptied or 0, ms = (core.hrtime() - t0) / 1e6,
      agent = run.agent, depth = run.depth }
  end
end

-- The conversation before the turn in progress (messages[1 .. last - 1]),
-- compacted by the strategy: a record, nil when it can take nothing away,
-- or nil and an error (the summary call failed).
local function older(session, run, settings, last, force)
  local messages = session.conversation.messages
  local limit = settings.window - settings.reserve
  local rec = { type = "compaction", strategy = settings.strategy }
  if settings.strategy ~= "drop" then
    local cut = last - 1
    local summary, err = summarize(session, messages, cut, run)
    if not summary then
      return nil, core.error("CompactionFailed", "the summary could not be made: " .. tostring(err), { cause = err })
    end
    rec.cut, rec.summary = cut, summary
    return rec
  end
  -- 1. empty old tool results, oldest first
  local emptied, est = {}, M.estimate(session)
  for i = 1, last - 1 do
    local m = messages[i]
    local e = emptied_results(m)
    if e then
      est = est - (approx_bytes(m) - approx_bytes(e)) // 4
      emptied[#emptied + 1] = i
      if not force and est <= limit then break end
    end
  end
  rec.emptied = emptied
  -- 2. then the oldest turns, whole, until it fits
  if force or est > limit then
    local cut, removed, upto = 0, 0, 0
    for _, b in ipairs(boundaries(messages)) do
      if b >= last then break end
      cut = b - 1
      for i = upto + 1, cut do removed = removed + approx_bytes(messages[i]) // 4 end
      upto = cut
      if not force and est - removed <= limit then break end
    end
    if cut == 0 then cut = last - 1 end
    rec.cut = cut
  end
  if #emptied == 0 and not rec.cut then return nil end
  return rec
end

-- The turn in progress (from the user message at `last`): its tool results
-- emptied, oldest first, until the request fits, the latest KEEP_RESULTS
-- (with `force`, the latest one) kept whole. Whatever the strategy: a
-- summary would have to cut between a call and the user's request, and a
-- call keeps its place with an emptied result (the model still sees what
-- it did). A record, or nil when there is nothing to empty.
local function current(session, settings, last, force)
  local messages = session.conversation.messages
  local limit = settings.window - settings.reserve
  local rounds = {}
  for i = last + 1, #messages do
    local m = messages[i]
    if m.role == "tool" or (m.role == "user" and textual_results(m)) then rounds[#rounds + 1] = i end
  end
  local keep = force and 1 or M.KEEP_RESULTS
  local emptied, est = {}, M.estimate(session)
  for n = 1, #rounds - keep do
    local m = messages[rounds[n]]
    local e = emptied_results(m)
    if e then
      est = est - (approx_bytes(m) - approx_bytes(e)) // 4
      emptied[#emptied + 1] = rounds[n]
      if not force and est <= limit then break end
    end
  end
  if #emptied == 0 then return nil end
  return { type = "compaction", strategy = settings.strategy, emptied = emptied }
end

--- Compacts `session`'s history so that the next request fits (or, with
--- `force`, by as much as the strategy can): the conversation before the
--- turn in progress first, by the strategy; then, if it still does not
--- fit, the turn's own older tool results. Returns true when it changed
--- anything, false when there was nothing it could take away, or nil and
--- an error (CompactionFailed) when the summary call failed; the history is
--- then as it was.
function M.compact(session, run, force)
  local settings = M.settings(session) or { window = math.huge, reserve = 0, strategy = "summarize" }
  local limit = settings.window - settings.reserve
  local bounds = boundaries(session.conversation.messages)
  -- The last user message and what follows it are the turn in progress.
  local last = bounds[#bounds]
  if not last then return false end
  local t0 = core.hrtime()
  local changed = false
  if last > 1 then
    local rec, err = older(session, run, settings, last, force)
    if err then return nil, err end
    if rec then
      commit(session, run, rec, t0)
      changed = true
      last = last - (rec.cut or 0)
    end
  end
  if force or M.estimate(session) > limit then
    local rec = current(session, settings, last, force)
    if rec then
      commit(session, run, rec, core.hrtime())
      changed = true
    end
  end
  return changed
end

--- Whether a provider error says the prompt is past the context window.
-- How the servers say it: OpenAI, Azure, Groq, DeepSeek, vLLM and
-- OpenRouter ("maximum context length", context_length_exceeded),
-- Anthropic ("prompt is too long"), Mistral ("too large for model with N
-- maximum context length"), llama.cpp ("exceeds the available context
-- size", exceed_context_size_error), Gemini ("exceeds the maximum number of
-- tokens allowed").
local OVERFLOW = { "context length", "context_length_exceeded", "maximum context", "prompt is too long",
  "too many tokens", "context window", "context size", "maximum number of tokens allowed" }

function M.is_overflow(err)
  if type(err) ~= "table" or err.code ~= "ProviderError" then return false end
  local msg = ((err.message or "") .. " " .. (err.body or "")):lower()
  for _, words in ipairs(OVERFLOW) do
    if msg:find(words, 1, true) then return true end
  end
  return false
end

return M
