--- tide.provider.exchange: one request to a provider and its reply, with the
--- retries around it. Knows the provider only through its hooks (see
--- docs/internals.md): `_url`, `_headers`, and a reply parser, either a C
--- sink (`_c_stream`, fed in place by the request: every wire format has
--- one), plus `_c_parse` and/or `_parse` for a whole JSON reply, and
--- optionally `_finish_reply(res, prefix)`.
local core = require "tide.core"
local json = require "tide.json"
local errors = require "tide.provider.errors"
local redact = require "tide.redact"
local reply = require "tide.provider.reply"
local retry = require "tide.provider.retry"
local function limits() return require "tide.provider.limits" end -- (a provider with rate limits)

local M = {}

local fail, excerpt = errors.fail, errors.excerpt

local byte = string.byte
local OPEN_BRACE = byte("{")

-- The first byte of s that is not white space, nil if there is none. (A
-- reply's first byte is the usual answer: no pattern match then.)
local function first_significant(s)
  local b = byte(s, 1)
  if b == nil or b > 32 then return b end
  local c = s:match("^%s*(.)")
  return c and byte(c)
end

-- The URL and headers of a provider's requests, built once and rebuilt only
-- when a field they come from changes.
local function endpoint(self)
  local w = self._wire
  if w and w.api_key == self.api_key and w.bearer == self.bearer and w.stream == self.stream
    and w.base_url == self.base_url and w.extra == self.headers then
    return w
  end
  w = { url = self:_url(), headers = core.http_headers(self:_headers()), api_key = self.api_key, bearer = self.bearer,
        stream = self.stream, base_url = self.base_url, extra = self.headers }
  rawset(self, "_wire", w)
  return w
end

-- For a provider that signs each request (Bedrock with IAM credentials):
-- the headers signed for this very body at this second, the body joined
-- first (its bytes are hashed before it is sent), and no wire.
local function signed(self, url, body, wire)
  if wire then body = core.join_wire(body, wire) end
  return core.http_headers(self:_sign(url, body)), body, nil
end

-- What one attempt hands its listeners, or nil when nobody listens: the
-- callbacks, the tables a parser fills (one string per event, and none at
-- all for what nobody listens to), and the calls whose input streams, by
-- index (an event names a call's id and name once; the later ones only
-- its index).
local function listeners(opts)
  local on_delta, on_reasoning, on_tool_input = opts.on_delta, opts.on_reasoning, opts.on_tool_input
  if not (on_delta or on_reasoning or on_tool_input) then return nil end
  return { on_delta = on_delta, deltas = on_delta and {} or nil, on_reasoning = on_reasoning,
    rdeltas = on_reasoning and {} or nil, on_tool_input = on_tool_input, tdeltas = on_tool_input and {} or nil,
    calls = on_tool_input and {} or nil }
end

-- A piece of a call's input for its listener, the call named.
local function tool_input(l, index, id, name, piece)
  local call = l.calls[index]
  if not call then
    call = {}
    l.calls[index] = call
  end
  if id then call.id = id end
  if name then call.name = name end
  l.on_tool_input(index, call.id, call.name, piece)
end

-- A streamed chunk for a parser in C (or Converse's in Lua), its deltas
-- handed to the listeners `l` (see listeners). Returns whether text or a
-- call's input reached a listener, and the error that abandons the
-- stream, if any. Reasoning reaching its listener does not stop a retry:
-- what the answer says does.
local function feed_c(parser, chunk, l)
  local n, err, before
  if not l.on_delta then
    local _
    _, err = parser:feed(chunk, false, l.rdeltas, l.tdeltas)
    n = 0
  else
    n, err, before = parser:feed(chunk, l.deltas, l.rdeltas, l.tdeltas)
    if n == nil then n = before end
  end
  local rdeltas = l.rdeltas
  if rdeltas then
    for i = 1, #rdeltas do
      local d = rdeltas[i]
      rdeltas[i] = nil
      l.on_reasoning(d)
    end
  end
  local got = n > 0
  local deltas = l.deltas
  for i = 1, n do
    local d = deltas[i]
    deltas[i] = nil
    if d ~= "" then l.on_delta(d) end
  end
  local t = l.tdeltas
  if t and t[1] ~= nil then
    got = true
    for i = 1, #t, 4 do tool_input(l, t[i], t[i + 1], t[i + 2], t[i + 3]) end
    for i = #t, 1, -1 do t[i] = nil end
  end
  return got, err
end

-- A reply parsed in Lua as the session gets it: calls finished, every
-- field there. (The C parsers hand theirs over finished.)
local function finished(out)
  out.tool_calls = reply.finish_calls(out.tool_calls or {})
  out.text = out.text or ""
  out.usage = out.usage or { input = 0, output = 0, cached = 0, cache_write = 0, reasoning = 0 }
  return out
end

-- Hands a whole reply's reasoning text to on_reasoning, its text to
-- on_delta and each call's input, whole, to on_tool_input (the call's
-- place in the reply, from 0, as its index); whether any reached a
-- listener.
local function deliver(out, opts)
  local on_delta, on_reasoning, on_tool_input = opts.on_delta, opts.on_reasoning, opts.on_tool_input
  local got = false
  if on_reasoning and out.reasoning then
    for _, r in ipairs(out.reasoning) do
      if r.type == "text" and type(r.text) == "string" and r.text ~= "" then
        got = true
        on_reasoning(r.text)
      end
    end
  end
  local text = out.text
  if text ~= nil and text ~= "" then
    got = true
    if on_delta then on_delta(text) end
  end
  if on_tool_input then
    for i, c in ipairs(out.tool_calls or {}) do
      got = true
      on_tool_input(i - 1, c.id, c.name, c.arguments or "")
    end
  end
  return got
end

-- A whole JSON reply (a non-streamed one, or a streamed request answered
-- without SSE), a string or still in its finished request: the response, or
-- nil and the error; and whether its text reached on_delta. The reply is
-- scanned in C where the provider can (no table tree, and no string of the
-- body). A C scanner either says what is wrong itself (nil, err: the body's
-- excerpt is added) or leaves anything but a plain reply to the full
-- decoder and `_parse` (nil alone).
local function whole_reply(self, src, opts)
  local out, err
  if self._c_parse then out, err = self:_c_parse(src) end
  if err then
    if err.body == nil then err.body = excerpt(type(src) == "string" and src or src:body()) end
    return nil, err
  end
  if not out then
    local text = type(src) == "string" and src or src:body()
    local obj, derr = json.decode_fast(text)
    if obj == nil then
      return nil, fail("MalformedResponse", ("%s response is not valid JSON (%s)"):format(self.kind,
        derr.message), { body = excerpt(text) })
    end
    if type(obj) ~= "table" then
      return nil, fail("MalformedResponse", self.kind .. " response is not a JSON object",
        { body = excerpt(text) })
    end
    out, err = self:_parse(obj, text)
    if not out then
      if err.body == nil then err.body = excerpt(text) end
      return nil, err
    end
    finished(out)
  end
  return out, nil, (opts.on_delta or opts.on_reasoning or opts.on_tool_input) ~= nil and deliver(out, opts)
end

-- One non-streamed HTTP attempt. Returns the response, or nil, an error and
-- two flags: whether any byte of a reply arrived (`received`) and whether
-- text reached on_delta (`delivered`), which decide if a retry is safe. With
-- `wire`, the body sent is join_wire(body, wire), joined in C into the
-- request itself.
local function attempt_whole(self, body, opts, timeout_ms, wire)
  local w = endpoint(self)
  local headers = w.headers
  if self._sign then headers, body, wire = signed(self, w.url, body, wire) end
  local req <close> = core.http_post(w.url, headers, body, timeout_ms, self.max_body_bytes, false, wire)
  local kind, v, ttfb_ms = req:next() -- "done", status, ttfb_ms | nil, err
  if kind ~= "done" then return nil, v, v.status ~= nil, false end
  local status = v
  if status < 200 or status > 299 then
    return nil, errors.failed_request(self.kind, req, status), true, false
  end
  local out, err, delivered = whole_reply(self, req, opts)
  if not out then return nil, err, true, false end
  out.ttfb_ms = ttfb_ms
  return out, nil, true, delivered
end

-- An error of a C parser carries the whole event (or body) as its body:
-- cut it as every error body is cut.
local function c_error(err)
  if type(err.body) == "string" then err.body = excerpt(err.body) end
  return err
end

-- One streamed HTTP attempt: as attempt_whole, the reply parsed as it comes.
local function attempt_stream(self, body, opts, timeout_ms, wire)
  local received, delivered = false, false
  local t0 = core.hrtime()
  local ttfb_ms

  -- The reply's parser: the wire format's sink (feed, finish and close;
  -- a C userdata, or for Bedrock's Converse a Lua table).
  local parser <close> = self:_c_stream()
  local listen = listeners(opts)
  local mode -- "sse" or "json" once the first significant byte is seen
  local held -- chunks before the mode is known, or of a streamed request answered with plain JSON
  local stream_err

  local w = endpoint(self)
  local headers = w.headers
  if self._sign then headers, body, wire = signed(self, w.url, body, wire) end
  local req <close> = core.http_post(w.url, headers, body, timeout_ms, self.max_body_bytes, true, wire)
  -- With a C sink and nobody to hand text to, the request feeds the parser
  -- itself (req:pump): no string per chunk, no trip through this loop. It
  -- hands a reply that is not an event stream back as next() would.
  -- (a sink written in Lua, Converse's, is fed here)
  local pump = listen == nil and type(parser) == "userdata"
  local status, done_ttfb_ms, herr
  while true do
    local kind, v, ttfb
    if pump and mode ~= "json" then
      kind, v, ttfb = req:pump(parser)
      if kind == "fail" then
        received = true
        stream_err = c_error(v)
        break
      end
      -- (after a failed transfer the third value says whether bytes came)
      if kind == nil and ttfb then received = true end
    else
      kind, v, ttfb = req:next()
    end
    if kind ~= "data" then
      if kind == "done" then status, done_ttfb_ms = v, ttfb else herr = v end
      break
    end
    -- a streamed 2xx body, chunk by chunk
    if not received then
      received = true
      ttfb_ms = (core.hrtime() - t0) / 1e6
    end
    local chunk = v
    if mode == nil then
      if held then chunk = table.concat(held) .. chunk end
      local c = first_significant(chunk)
      if c == nil then
        held = { chunk }
        goto continue
      end
      held = nil
      mode = c == OPEN_BRACE and "json" or "sse"
    end
    if mode == "json" then
      held = held or {}
      held[#held + 1] = chunk
    else
      local got, err
      if listen then
        got, err = feed_c(parser, chunk, listen)
      else
        local _
        _, err = parser:feed(chunk, false)
      end
      if got then delivered = true end
      if err then
        stream_err = c_error(err)
        break
      end
    end
    ::continue::
  end
  if stream_err then return nil, stream_err, received, delivered end
  if not status then
    if herr.status then received = true end
    return nil, herr, received, delivered
  end
  if status < 200 or status > 299 then
    return nil, errors.failed_request(self.kind, req, status), true, delivered
  end

  if mode ~= "json" then
    local out, err = parser:finish()
    if not out then return nil, c_error(err), received, delivered end
    -- A pumped stream's first byte is libcurl's to time.
    out.ttfb_ms = ttfb_ms or done_ttfb_ms or (core.hrtime() - t0) / 1e6
    return out
  end
  -- a streamed request answered with one JSON body
  local out, err, got = whole_reply(self, held and table.concat(held) or "", opts)
  if not out then return nil, err, received, delivered end
  out.ttfb_ms = ttfb_ms or done_ttfb_ms
  return out, nil, received, delivered or got
end

--- What must never leave in a provider's errors (or a cassette): its key,
--- token and credential headers, AWS secrets, and the values of its URL's
--- query and user information (an Azure api-key, a Gemini ?key=).
---@param self table a provider
---@return string[]
function M.secrets(self)
  local extra = redact.url_secrets(self.base_url)
  for k, v in pairs(type(self.query) == "table" and self.query or {}) do
    if type(k) == "string" and type(v) == "string" and redact.secret_header(k:lower()) then extra[#extra + 1] = v end
  end
  extra[#extra + 1] = self.auth_token
  local aws = self.aws
  if aws then
    extra[#extra + 1] = aws.secret_access_key
    extra[#extra + 1] = aws.session_token
  end
  return redact.secrets(self.api_key, self.headers, self.bearer, extra)
end

--- Sends `body` (joined with `wire` in C when given: see core.http_post) and
--- returns the neutral response, or nil and the error. Retries what
--- tide.provider.retry allows, up to `retry.attempts`, sleeping the backoff
--- in between. Runs inside a task.
---@return tide.provider.response|nil
---@return table|nil err
function M.complete(self, body, opts, wire)
  -- a provider whose credentials expire renews them first (the token option)
  if self._before_request then
    local ok, err = self:_before_request()
    if not ok then return nil, err end
  end
  local n = 0
  local policy = self.retry
  local timeout_ms = opts.timeout_ms or self.timeout_ms
  local attempt = self.stream and attempt_stream or attempt_whole
  local limited = self.limits
  while true do
    n = n + 1
    -- Within the provider's rate limits, process-wide: wait for room
    -- (tokens estimated a quarter a byte, plus the most it may answer).
    local estimate
    if limited then
      local bytes = #body + (type(wire) == "userdata" and wire:bytes() or 0)
      estimate = limits().acquire(self, bytes // 4 + (self.max_tokens or 0))
    end
    local res, err, received, delivered = attempt(self, body, opts, timeout_ms, wire)
    if limited then
      local u = res and res.usage
      limits().settle(self, estimate, u and (u.input or 0) + (u.output or 0))
      -- (the server's wait holds the key, as far as the retry would wait it:
      -- a Retry-After past max_retry_after_ms is not obeyed there either)
      if err and err.code == "RateLimited" and err.retry_after_ms then
        limits().pause(self, math.min(err.retry_after_ms, policy.max_retry_after_ms))
      end
    end
    if res then
      res.attempts = n
      -- (a provider that answers through a tool of its own hands the answer
      -- over as the reply's text: see provider.anthropic's structured_output)
      if self._finish_reply then
        local fres, ferr = self:_finish_reply(res, body)
        if not fres then return nil, ferr end -- (a reply it cannot use: MalformedResponse)
        res = fres
      end
      return res
    end
    -- Every error of an attempt leaves here, and it may quote a server
    -- that echoed the request's credentials: they are cut out once, before
    -- on_retry or the caller sees it.
    redact.error(err, M.secrets(self))
    err.attempts = n
    if n >= policy.attempts or not retry.retryable(err, received, delivered) then
      err.retryable = nil
      return nil, err
    end
    local delay = retry.backoff_ms(policy, n, err.retry_after_ms)
    if opts.on_retry then
      opts.on_retry({ attempt = n, delay_ms = delay, error = err })
    end
    core.sleep(math.tointeger(delay) or math.floor(delay))
  end
end

return M
