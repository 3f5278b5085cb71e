--- tide.provider.reply: the neutral reply every provider gives the session
--- (text, finished tool calls, usage, stop reason), and the small rules that
--- make one from what a server sent.
local M = {}

---@class tide.provider.response
---@field text string the assistant text ("" when none)
---@field tool_calls {id:string, name:string, arguments:string, extra_content?:string|table}[] arguments: raw JSON text
---@field reasoning? {type:string, text?:string, signature?:string, data?:string, provider:string}[]
---@field refusal? string the model's refusal (OpenAI `refusal`), apart from `text`
---@field usage {input:integer, output:integer, cached:integer, cache_write:integer, reasoning:integer}
---@field stop string|nil "stop", "tool_calls", "length", "content_filter", "refusal", or the provider's own reason
---@field stop_raw string|nil the provider's finish/stop reason as sent
---@field ttfb_ms number request start to first body byte, for the attempt that answered
---@field attempts integer HTTP attempts made

--- Finishes the tool calls of a response, in place (the list and its
--- entries are the parser's own): ids the server left out become "call_<n>"
--- (unique within the response), empty arguments become "{}" (a custom
--- tool's input, text, stays as it came: "" a string), a missing name "".
--- Each call is left with id, name and arguments (and `custom`).
---@param calls {id?:string, name?:string, arguments?:string, index?:integer}[]
---@return {id:string, name:string, arguments:string}[]
function M.finish_calls(calls)
  local n = #calls
  local seen
  for i = 1, n do
    local c = calls[i]
    local id = c.id
    if type(id) ~= "string" or id == "" then
      if not seen then
        seen = {}
        for _, o in ipairs(calls) do
          if type(o.id) == "string" and o.id ~= "" then seen[o.id] = true end
        end
      end
      id = "call_" .. i
      local k = 0
      while seen[id] do
        k = k + 1
        id = ("call_%d_%d"):format(i, k)
      end
      seen[id] = true
      c.id = id
    end
    local args = c.arguments
    if c.custom then
      if type(args) ~= "string" then c.arguments = "" end
    elseif type(args) ~= "string" or not args:find("%S") then
      c.arguments = "{}"
    end
    if type(c.name) ~= "string" then c.name = "" end
    c.index = nil
  end
  return calls
end

--- Maps a provider's stop reason onto "stop" / "tool_calls" / "length" /
--- "content_filter" / "refusal", leaving others as they are (core/openai.c's
--- STOPS is the same table). With `refused`, the reply is a refusal whatever
--- the reason said; with `has_calls`, a plain "stop" is "tool_calls"
--- (Gemini's OpenAI endpoint ends tool-call replies with "stop").
local STOPS = {
  stop = "stop", end_turn = "stop", stop_sequence = "stop",
  tool_calls = "tool_calls", function_call = "tool_calls", tool_use = "tool_calls",
  length = "length", max_tokens = "length",
  content_filter = "content_filter", refusal = "refusal",
}
---@param raw string|nil
---@param has_calls? boolean
---@param refused? boolean
---@return string|nil
function M.stop(raw, has_calls, refused)
  if refused then return "refusal" end
  if type(raw) ~= "string" then return nil end
  local stop = STOPS[raw] or raw
  if stop == "stop" and has_calls then return "tool_calls" end
  return stop
end

--- An integer count from a decoded usage field (0 when absent).
function M.count(v)
  if type(v) == "number" and v == v and v >= 0 and v < 2 ^ 53 then return math.floor(v) end
  return 0
end

return M
