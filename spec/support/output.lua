-- busted output: the usual terminal output, plus one plain closing line
-- ("N passed, N failed, N skipped") that CI reads, also saved to a file so
-- that ./dev test can print a total over both builds at the very end.
return function(options)
  local busted = require "busted"
  local handler = require("busted.outputHandlers.utfTerminal")(options)
  local counts = { passed = 0, failed = 0, skipped = 0 }
  local function add(k) return function() counts[k] = counts[k] + 1; return nil, true end end
  busted.subscribe({ "test", "end" }, function(element, parent, status)
    if status == "success" then counts.passed = counts.passed + 1
    elseif status == "pending" then counts.skipped = counts.skipped + 1
    else counts.failed = counts.failed + 1 end
    return nil, true
  end)
  busted.subscribe({ "error", "file" }, add("failed"))
  busted.subscribe({ "error", "describe" }, add("failed"))
  -- a hook that raises fails the run too (busted reports it as an error, not
  -- as a test's status)
  for _, hook in ipairs { "before_each", "after_each", "setup", "teardown", "lazy_setup", "lazy_teardown",
                          "strict_setup", "strict_teardown" } do
    busted.subscribe({ "error", hook }, add("failed"))
  end
  busted.subscribe({ "suite", "end" }, function()
    local line = ("%d passed, %d failed, %d skipped"):format(counts.passed, counts.failed, counts.skipped)
    io.stdout:write("\n", line, "\n")
    local f = io.open(os.getenv("TIDE_SUMMARY_FILE") or "build/.test-summary", "a")
    if f then f:write(line, "\n"); f:close() end
    return nil, true
  end)
  return handler
end
