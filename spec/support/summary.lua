-- Prints the total of every busted run of this `./dev test` as one plain line.
local f = io.open("build/.test-summary")
local p, fl, s = 0, 0, 0
if f then
  for line in f:lines() do
    local a, b, c = line:match("^(%d+) passed, (%d+) failed, (%d+) skipped")
    if a then p, fl, s = p + a, fl + b, s + c end
  end
  f:close()
  os.remove("build/.test-summary")
end
print(("total: %d passed, %d failed, %d skipped"):format(p, fl, s))
