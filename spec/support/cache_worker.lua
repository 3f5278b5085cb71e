-- A tide process of a cluster, driven line by line on stdin by
-- spec/integration/cluster_cache_spec.lua:
--
--   lua5.4 spec/support/cache_worker.lua <redis url> <prefix> [settings JSON]
--
-- Its integration source ("spec|shared|<name>") writes "FETCH <name>" on
-- stdout each time it is asked, so that the spec counts fetches across
-- processes without trusting the code under test. Every command answers
-- with one line, "<WORD> <json>":
--   source <name> <delay_ms> <ok|fail|hang> <version>  -> SOURCE
--   get <n>         n lookups at once             -> GOT { ok, errors, hashes }
--   peek            the process cache only       -> PEEK { hash }
--   gone <ms>       waits until peek finds nothing -> GONE { gone }
--   invalidate      and waits until Redis has it  -> INVALIDATED { had }
--   ttl <ms>                                      -> TTL
--   stats                                         -> STATS { ... }
local url, prefix, opts = arg[1], arg[2], arg[3]
local tide = require "tide"
local core = require "tide.core"
local cjson = require "cjson"
local cache = tide.integrations.cache

tide.cluster { redis = url, prefix = prefix, reconnect_ms = 3000 }
if opts and opts ~= "" then
  local settings = {}
  for k, v in pairs(cjson.decode(opts)) do settings[k] = math.tointeger(v) end
  cache.cluster(settings)
end

local function say(word, v)
  io.stdout:write(word, " ", cjson.encode(v or {}), "\n")
  io.stdout:flush()
end

local conf = { name = "one", delay = 0, mode = "ok", version = "1" }
local src = {
  kind = "spec",
  identity = function() return "spec|shared|" .. conf.name end,
  fetch = function()
    io.stdout:write("FETCH ", conf.name, "\n")
    io.stdout:flush()
    if conf.mode == "hang" then tide.sleep(600000) end
    if conf.delay > 0 then tide.sleep(conf.delay) end
    if conf.mode == "fail" then return nil, tide.error("ToolError", "the spec source fails") end
    return { {
      slug = "files", description = "version " .. conf.version,
      tools = { { name = "read_file", description = "Reads.", parameters = {
        type = "object", properties = { path = { type = "string" } },
        required = require("tide.json").array() } } },
    } }
  end,
}

local handlers = {}

function handlers.source(name, delay, mode, version)
  conf.name, conf.delay, conf.mode, conf.version = name, tonumber(delay), mode, version
  say("SOURCE")
end

function handlers.get(n)
  local tasks = {}
  for i = 1, tonumber(n) do tasks[i] = tide.spawn(function() return cache.get(src) end) end
  local ok, errors, hashes, seen = 0, {}, {}, {}
  for i = 1, #tasks do
    local snap, err = tasks[i]:join()
    if snap then
      ok = ok + 1
      if not seen[snap.hash] then
        seen[snap.hash] = true
        hashes[#hashes + 1] = snap.hash
      end
    else
      errors[#errors + 1] = type(err) == "table" and err.code .. ": " .. err.message or tostring(err)
    end
  end
  say("GOT", { ok = ok, errors = errors, hashes = hashes })
end

function handlers.peek()
  local snap = cache.peek(src)
  say("PEEK", { hash = snap and snap.hash or cjson.null })
end

function handlers.gone(ms)
  local deadline = core.hrtime() + tonumber(ms) * 1e6
  while cache.peek(src) and core.hrtime() < deadline do tide.sleep(2) end
  say("GONE", { gone = cache.peek(src) == nil })
end

function handlers.invalidate()
  local had = cache.invalidate(src)
  local tier = require("tide.integrations.cluster_cache").of(require("tide.cluster").current())
  local deadline = core.hrtime() + 5e9
  while next(tier.pending) and core.hrtime() < deadline do tide.sleep(2) end
  say("INVALIDATED", { had = had, sent = next(tier.pending) == nil })
end

function handlers.ttl(ms)
  cache.ttl_ms(tonumber(ms))
  say("TTL")
end

function handlers.stats()
  say("STATS", cache.stats())
end

tide.run(function()
  say("READY")
  while true do
    local line = core.read_line()
    if line == nil or line == "quit" then break end
    local words = {}
    for w in line:gmatch("%S+") do words[#words + 1] = w end
    local h = handlers[words[1]]
    if h then h(table.unpack(words, 2)) else say("UNKNOWN", { line = line }) end
  end
end)
