--- tide.provider.errors: the errors a provider returns, shaped once: a
--- non-2xx response (its status, the server's own message, Retry-After), and
--- the excerpt of a body an error carries.
local core = require "tide.core"
local json = require "tide.json"
local retry = require "tide.provider.retry"

local M = {}

--- Bytes of an error body an error carries at most.
M.BODY_MAX = 2048

-- What the official SDKs retry (openai-python's and anthropic-sdk-python's
-- _should_retry): 408 (request timeout), 409 (lock timeout), 429 and every
-- 5xx (Anthropic's 529 overloaded, a proxy's 520s); the server's
-- x-should-retry header, when it says true or false, decides instead.
local function retryable_status(status, headers)
  local say = type(headers) == "table" and headers["x-should-retry"]
  if say == "true" then return true end
  if say == "false" then return false end
  return status == 408 or status == 409 or status == 429 or status >= 500
end

--- A tide error table (`core.error`).
function M.fail(code, message, fields)
  return core.error(code, message, fields)
end
local fail = M.fail

--- The first `max` bytes of `s` (default BODY_MAX), cut at a UTF-8 boundary.
---@param s any
---@param max? integer
---@return string
function M.excerpt(s, max)
  max = max or M.BODY_MAX
  if type(s) ~= "string" then return "" end
  if #s <= max then return s end
  local j = max
  while j > 0 do
    local b = s:byte(j + 1)
    if not b or b < 0x80 or b >= 0xC0 then break end
    j = j - 1
  end
  return s:sub(1, j)
end
local excerpt = M.excerpt

-- What a validation error list says (pydantic's, as Mistral's 422 and
-- FastAPI servers give it: { { loc = {...}, msg } }), or nil.
local function validation_detail(list)
  if type(list) ~= "table" then return nil end
  local out = {}
  for _, item in ipairs(list) do
    if type(item) == "table" and type(item.msg) == "string" then
      local loc = {}
      for _, l in ipairs(type(item.loc) == "table" and item.loc or {}) do
        loc[#loc + 1] = tostring(math.tointeger(l) or l)
      end
      out[#out + 1] = item.msg .. (#loc > 0 and (" (" .. table.concat(loc, ".") .. ")") or "")
    end
  end
  return #out > 0 and table.concat(out, "; ") or nil
end

--- The error for a non-2xx response `res` ({ status, body, headers }):
--- RateLimited for 429, else ProviderError; `retryable` says whether the
--- status is worth another attempt, `retry_after_ms` what the server asked,
--- `request_id` the provider's id of the request.
function M.status(kind, res)
  local status = res.status
  local body = res.body or ""
  local detail
  local obj = body ~= "" and json.decode_fast(body)
  if type(obj) == "table" then
    local e, m = obj.error, obj.message
    if type(e) == "table" and type(e.message) == "string" then
      detail = e.message
      -- OpenRouter's "Provider returned error" says what went wrong in
      -- metadata.raw (the upstream provider's own words)
      local raw = type(e.metadata) == "table" and e.metadata.raw
      if type(raw) == "string" then detail = detail .. ": " .. raw end
    elseif type(e) == "string" then
      detail = e
    elseif type(m) == "string" then
      detail = m
    elseif type(obj.Message) == "string" then -- (some of AWS's errors)
      detail = obj.Message
    elseif type(m) == "table" then -- Mistral: { detail = { ... } }
      detail = validation_detail(m.detail)
    elseif type(obj.detail) == "string" then
      detail = obj.detail
    else
      detail = validation_detail(obj.detail)
    end
  end
  -- AWS names its error in a header (x-amzn-ErrorType:
  -- "ThrottlingException:http://internal.amazon.com/...")
  local aws_type = type(res.headers) == "table" and res.headers["x-amzn-errortype"]
  aws_type = type(aws_type) == "string" and aws_type:match("^([%w_]+)") or nil
  if aws_type and detail then detail = aws_type .. ": " .. detail end
  local fields = {
    status = status,
    body = excerpt(body),
    retry_after_ms = retry.after_ms(res.headers),
    retryable = retryable_status(status, res.headers),
    -- what the provider's support asks for (OpenAI's x-request-id,
    -- Anthropic's request-id, AWS's x-amzn-RequestId)
    request_id = type(res.headers) == "table" and (res.headers["x-request-id"] or res.headers["request-id"]
      or res.headers["x-amzn-requestid"]) or nil,
    type = aws_type,
  }
  local msg = ("%s returned HTTP %d"):format(kind, status)
  if detail then msg = msg .. ": " .. excerpt(detail, 512) end
  return fail(status == 429 and "RateLimited" or "ProviderError", msg, fields)
end

local http_response = require("tide.http")._response
--- The error of a finished request (core.http_post) that did not answer 2xx.
function M.failed_request(kind, req, status)
  return M.status(kind, http_response {
    status = status, body = req:body(), headers_raw = req:headers_raw() })
end

return M
