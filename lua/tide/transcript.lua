--- tide.transcript: transcripts, the records of a session, and the file
--- store that keeps them as JSONL, one record per line.
---
--- The first record is metadata; every later one is a neutral message or a
--- typed record (`type` = "pause", "decision", "running", "compaction",
--- "turn"). Records are appended after every provider response and after
--- tool results, each flushed whole, so a crash can tear at most the last
--- line: loading ignores a torn last line and keeps everything before it.
---
--- Where the records live is a *store*: this file's (`M.file`), or Redis's
--- (tide.transcript_redis). A store has `load(name)` -> meta, records,
--- info | nil, err; `open(name, meta, info)` -> writer | nil, err; and
--- `child_name(name, what, task_id)` -> the name of a sub-agent's
--- transcript. A writer has `path` (its name in the store), `append(...)`
--- -> true | nil, err and `close()`; a `strict` writer's failures stop the
--- turn (a Redis session must not run on past a record it could not keep),
--- a file writer's are reported and the conversation goes on in memory.
--- Sessions read and repair what a store gives them with one code path
--- (tide.session's resume), whichever store it is.
---@class tide.transcript
local M = {}

local json = require "tide.json"
local core = require "tide.core"

local writer_mt = { __name = "tide.transcript" }
writer_mt.__index = writer_mt

--- Reads a transcript. Returns `meta, messages, info` or `nil, err`
--- (code TranscriptError). `info.torn` is true when a torn last line was
--- ignored, `info.good_bytes` the length of the intact part, `info.mend`
--- whether the file needs mending before an append (a torn tail cut off,
--- or a newline after a last line that has none).
---@param path string
function M.load(path)
  local f, oerr = io.open(path, "rb")
  if not f then return nil, core.error("TranscriptError", "cannot open transcript: " .. tostring(oerr), { file = path }) end
  local text = f:read("a")
  f:close()
  local meta, messages = nil, {}
  local pos, lineno, good = 1, 0, 0
  local torn = false
  while pos <= #text do
    local nl = text:find("\n", pos, true)
    local line = text:sub(pos, (nl or #text + 1) - 1)
    lineno = lineno + 1
    if line ~= "" then
      local v = json.decode(line)
      if type(v) ~= "table" then
        if nl == nil then
          torn = true -- the last write never finished: ignore it
          break
        end
        return nil, core.error("TranscriptError",
          ("%s:%d: corrupt transcript line"):format(path, lineno), { file = path, line = lineno })
      end
      if nl == nil then
        -- complete JSON but no newline: keep it, the next append adds one
        good = #text
      end
      if lineno == 1 and v.type == "meta" then meta = v else messages[#messages + 1] = v end
    end
    if nl == nil then break end
    pos = nl + 1
    good = nl
  end
  local mend = torn or good < #text or (good > 0 and text:sub(good, good) ~= "\n")
  return meta or {}, messages, { torn = torn, good_bytes = good, lines = lineno, mend = mend }
end

--- Opens `path` for appending, writing `meta` first when the file is new.
--- When `info` (what M.load said of it) says it needs mending, its torn
--- tail is cut off, or a newline added, first.
---@return table|nil writer
---@return table|nil err
function M.open(path, meta, info)
  if info and info.mend then
    local f = io.open(path, "rb")
    local text = f and f:read("a") or ""
    if f then f:close() end
    local keep = text:sub(1, info.good_bytes)
    if keep ~= "" and keep:sub(-1) ~= "\n" then keep = keep .. "\n" end
    if keep ~= text then
      -- (whole or not at all, synced, and for its owner's eyes only: it
      -- holds the conversation)
      local ok, werr = core.write_private(path, keep)
      if not ok then
        return nil, core.error("TranscriptError", "cannot repair the transcript's torn tail: " .. werr.message,
          { file = path })
      end
    end
  end
  local f, err = io.open(path, "ab")
  if not f then return nil, core.error("TranscriptError", "cannot open transcript: " .. tostring(err), { file = path }) end
  local size = f:seek("end")
  local w = setmetatable({ path = path, fh = f, good = size }, writer_mt)
  if size == 0 and meta then w:append(meta) end
  return w
end

--- Appends messages, one line each, and flushes. A write that fails half
--- way (a full disk) is cut off again, so that the next records do not
--- join a half line: the transcript keeps only whole lines.
function writer_mt:append(...)
  local n = select("#", ...)
  local lines = {}
  for i = 1, n do lines[i] = json.canonical((select(i, ...))) end
  lines[n + 1] = ""
  local text = table.concat(lines, "\n")
  if not self.fh then return nil, core.error("TranscriptError", "the transcript is closed", { file = self.path }) end
  local ok, err = self.fh:write(text)
  if ok then ok, err = self.fh:flush() end
  if not ok then
    self.fh:close()
    core.truncate(self.path, self.good) -- (when even that fails, the load finds a torn tail at worst)
    self.fh = io.open(self.path, "ab")
    return nil, core.error("TranscriptError", tostring(err), { file = self.path })
  end
  self.good = self.good + #text
  return true
end

function writer_mt:close()
  if self.fh then self.fh:close() end
  self.fh = nil
end
writer_mt.__close = writer_mt.close
writer_mt.__gc = writer_mt.close

--- Appends records through writer `w` (nil: none). A failure of a strict
--- writer raises its error (the turn stops with it); any other writer's is
--- reported on stderr, and the conversation goes on in memory.
---@param w table|nil
function M.record(w, ...)
  if not w then return end
  local ok, err = w:append(...)
  if ok then return end
  if w.strict then error(err, 0) end
  io.stderr:write("tide: transcript write failed: ", tostring(err), "\n")
end

--- Writes what a deferring writer holds (a writer without `flush` writes
--- at once); its failure raises, as for a strict writer's append.
--- `behind`: see tide.transcript_redis's flush.
---@param w table|nil
---@param behind? boolean
function M.flush(w, behind)
  if not (w and w.flush) then return end
  local ok, err = w:flush(behind)
  if not ok then error(err, 0) end
end

--- The file store: what `transcript = path` and `resume = path` use.
M.file = {
  kind = "file",
  load = M.load,
  open = M.open,
  --- A sub-agent's transcript beside its parent's: the parent's name, the
  --- sub-agent and the task that ran it.
  child_name = function(name, what, task_id)
    return name:gsub("%.jsonl$", "") .. "." .. what:gsub("[^%w_%-]", "_") .. "." .. tostring(task_id) .. ".jsonl"
  end,
}

return M
