--- tide.history: the conversation of one session, and the only code that
--- appends to it.
---
--- It owns the frozen system prompt, the neutral messages after it, their
--- encodings for the session's provider (one `core.wire()`: the non-empty
--- encodings comma-joined in one C buffer, what a request body carries), the
--- bytes encoded, and the transcript lines. Each message is encoded once,
--- when it is appended; a request copies the wire in one piece however long
--- the history.
---
--- The neutral message model (docs/internals.md has it whole):
---
---     { role = "user", content = "text" | { part, ... } }      -- parts: text, image, file
---     { role = "assistant", content = "text" | nil,
---       tool_calls = { { id, name, arguments = "<json>", server?, custom? } } | nil, -- server: a remote MCP
---         -- server's; custom: a custom tool's call, arguments its input text
---       reasoning = { { type = "text" | "redacted", text?, signature?, data?, provider? } } | nil,
---       stop = "stop" | "tool_calls" | "length" | "pause" | ..., usage = { input, output, ... } | nil,
---       container = "<id>" | nil }  -- the container a server tool's code ran in
---     { role = "tool", results = { { id, name, content, is_error, approve?, reason?, custom? } } }
---       -- content: text, or text and image parts; approve, reason: the
---       -- decision on a remote MCP server's call (tide.provider.responses)
---
--- Reasoning parts carry whatever a provider needs back verbatim (a
--- signature, opaque data); a provider that does not know a part's kind
--- leaves it out of its encoding, and the transcript keeps it.
---@class tide.history
local M = {}

local core = require "tide.core"

local history_mt = { __name = "tide.history" }
history_mt.__index = history_mt

--- A new, empty history for `provider`, writing transcript lines to
--- `writer` (nil: none).
---@param provider table a provider object (its `_encode` and `encode_message`)
---@param writer? table a transcript writer (tide.transcript)
---@return tide.history
function M.new(provider, writer)
  return setmetatable({
    provider = provider,
    writer = writer,
    messages = {},      -- neutral messages after the system prompt
    wire = core.wire(), -- encodings of messages[1 .. nencoded]
    nencoded = 0,
    bytes = 0,          -- bytes encoded so far (prompt_bytes_encoded's share)
    wire_bytes = 0,     -- bytes in the wire now (what a request carries after the prefix)
    system = nil,       -- the frozen system prompt, once there is one
    prompt_version = nil,
    container = nil,    -- the last container a server tool's code ran in (its next request reuses it)
  }, history_mt)
end

-- Writes transcript records (tide.transcript.record: a file writer's
-- failure is reported and the conversation goes on in memory; a strict
-- writer's, a Redis session's, raises and stops the turn).
local transcript -- loaded with the first writer: a session without one never compiles it
local function record(self, ...)
  local w = self.writer
  if w then
    transcript = transcript or require "tide.transcript"
    transcript.record(w, ...)
  end
end

local function add(self, enc)
  self.bytes = self.bytes + #enc
  self.wire_bytes = self.wire_bytes + #enc
  if enc ~= "" then self.wire:add(enc) end
end

--- Appends a message the session built (no shape checks: it is the
--- session's own), encodes it and writes its transcript line.
---@param msg table a neutral message
function history_mt:append(msg)
  local msgs = self.messages
  local n = #msgs + 1
  msgs[n] = msg
  if msg.container then self.container = msg.container end
  if self.nencoded == n - 1 then
    -- (the message before it too: Converse must see two turns of one role
    -- kept apart)
    add(self, self.provider:_encode(msg, nil, msgs[n - 1]))
    self.nencoded = n
  end
  if self.writer then record(self, msg) end
end

--- Freezes the system prompt (once) and writes its transcript line.
---@param text string
---@param version any the prompt's version, kept in the transcript
function history_mt:freeze(text, version)
  self.system, self.prompt_version = text, version
  if self.writer then record(self, { role = "system", content = text, prompt_version = version }) end
end

--- Restores messages read from a transcript (system prompt and messages).
--- They are encoded, with the provider's shape checks, when a request first
--- needs them: a restored history that is never sent costs no encoding.
---@param system string|nil
---@param version any
---@param messages table[]
function history_mt:restore(system, version, messages)
  self.system, self.prompt_version = system, version
  local msgs = self.messages
  for _, m in ipairs(messages) do
    msgs[#msgs + 1] = m
    if type(m.container) == "string" then self.container = m.container end
  end
end

--- The encoded history, every message in it: what a request body carries
--- after the prefix.
---@return userdata wire
function history_mt:encoded()
  local msgs, n = self.messages, self.nencoded
  if n < #msgs then
    for i = n + 1, #msgs do add(self, self.provider:encode_message(msgs[i], msgs[i - 1])) end
    self.nencoded = #msgs
  end
  return self.wire
end

--- Replaces the messages (a compaction): the wire is encoded again, on
--- first use, from the new list; nothing is written to the transcript (the
--- compaction's own record says what happened).
---@param messages table[]
function history_mt:replace(messages)
  self.messages = messages
  self.wire = core.wire()
  self.nencoded = 0
  self.wire_bytes = 0
end

--- While held, a writer that can defer (a Redis session's) keeps records
--- until the next flush; the last release of a hold flushes. Holds nest:
--- a turn holds inside the hold of a queued request, whose last records
--- go out with its answer (tide.queue). File writers write at once
--- regardless.
---@param on boolean
function history_mt:hold(on)
  local w = self.writer
  if not (w and w.flush) then return end
  local n = math.max((w.holds or 0) + (on and 1 or -1), 0)
  w.holds, w.deferring = n, n > 0 or nil
  if n == 0 then
    transcript = transcript or require "tide.transcript"
    transcript.flush(w)
  end
end

--- Drops every hold and writes what was held (a session closing).
function history_mt:unhold()
  local w = self.writer
  if w and (w.holds or 0) > 0 then
    w.holds = 1
    self:hold(false)
  end
end

--- Writes what is held (see hold): before a request or a tool call, so
--- that the transcript never lags behind what left the process. `behind`
--- (before a provider request): sent, and waited for by the next flush
--- (see tide.transcript_redis).
---@param behind? boolean
function history_mt:flush(behind)
  local w = self.writer
  if w and w.flush then
    transcript = transcript or require "tide.transcript"
    transcript.flush(w, behind)
  end
end

--- Writes a transcript line that is not a message (a compaction record).
function history_mt:note(line) record(self, line) end

--- How many messages follow the system prompt.
function history_mt:length() return #self.messages end

--- Closes the transcript.
function history_mt:close()
  if self.writer then self.writer:close() end
  self.writer = nil
end

return M
