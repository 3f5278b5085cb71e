--- Shared by the bench entry scripts (run, worker and the client processes):
--- finds the repository root from the running script's path and puts the
--- repo's Lua modules and `build` (default build-release, or $TIDE_BUILD_DIR)
--- on the search paths. Usage, first line of an entry script:
---   local root = dofile((arg[0]:match("^(.*)/") or ".") .. "/paths.lua")(build)
local function script_root()
  local path = arg and arg[0] or ""
  if path:sub(1, 1) ~= "/" then path = (os.getenv("PWD") or ".") .. "/" .. path end
  local parts = {}
  for part in path:gmatch("[^/]+") do
    if part == ".." then parts[#parts] = nil elseif part ~= "." then parts[#parts + 1] = part end
  end
  parts[#parts] = nil -- the script
  parts[#parts] = nil -- bench/
  return "/" .. table.concat(parts, "/")
end

return function(build)
  local root = script_root()
  package.path = root .. "/?.lua;" .. root .. "/lua/?.lua;" .. root .. "/lua/?/init.lua;" .. package.path
  build = build or os.getenv("TIDE_BUILD_DIR") or (root .. "/build-release")
  package.cpath = build .. "/?.so;" .. package.cpath
  return root, build
end
