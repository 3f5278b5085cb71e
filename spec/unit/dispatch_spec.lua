local core = require "tide.core"

-- Returns the error message raised by fn (fails if it does not raise).
local raised = require("helpers").raised

-- Cuts s into pieces at pseudo-random places (deterministic for a seed).
local function split(s, seed)
  local pieces, i = {}, 1
  local x = seed
  while i <= #s do
    x = (x * 1103515245 + 12345) % 2147483648
    local n = 1 + x % 5
    pieces[#pieces + 1] = s:sub(i, i + n - 1)
    i = i + n
  end
  return pieces
end

describe("core.tool_call_assembler", function()
  it("assembles one call from an id/name delta and argument fragments", function()
    local a = core.tool_call_assembler()
    assert.is_true(a:add(0, "call_a", "lookup", nil))
    assert.is_true(a:add(0, nil, nil, '{"q":'))
    assert.is_true(a:add(0, nil, nil, '"x"}'))
    assert.are.same({ { index = 0, id = "call_a", name = "lookup", arguments = '{"q":"x"}' } },
      a:result())
  end)

  it("keeps interleaved indices apart and orders the result by index", function()
    local a = core.tool_call_assembler()
    a:add(1, "call_b", "second", '{"b"')
    a:add(0, "call_a", "first", '{"a"')
    a:add(1, nil, nil, ':2}')
    a:add(0, nil, nil, ':1}')
    a:add(2, "call_c", "third", "")
    assert.are.same({
      { index = 0, id = "call_a", name = "first", arguments = '{"a":1}' },
      { index = 1, id = "call_b", name = "second", arguments = '{"b":2}' },
      { index = 2, id = "call_c", name = "third", arguments = "" },
    }, a:result())
    assert.are.equal(3, a:count())
  end)

  it("gives the same result however the fragments are split", function()
    local args = { '{"path":"/tmp/a b","n":[1,2,3],"s":"\\u00e9\\n"}', '{}', '{"deep":{"x":{"y":true}}}' }
    for seed = 1, 25 do
      local a = core.tool_call_assembler()
      local queues = {}
      for i, s in ipairs(args) do queues[i] = split(s, seed * 7 + i) end
      -- Round-robin over the calls, highest index first, so deltas interleave.
      local left = true
      local first = {}
      while left do
        left = false
        for i = #args, 1, -1 do
          local piece = table.remove(queues[i], 1)
          if piece then
            left = true
            if not first[i] then
              first[i] = true
              a:add(i - 1, "id" .. i, "tool" .. i, piece)
            else
              a:add(i - 1, nil, nil, piece)
            end
          end
        end
      end
      local got = a:result()
      assert.are.equal(3, #got)
      for i, s in ipairs(args) do
        assert.are.same({ index = i - 1, id = "id" .. i, name = "tool" .. i, arguments = s }, got[i])
      end
    end
  end)

  it("keeps the first id and name seen and ignores empty or repeated ones", function()
    local a = core.tool_call_assembler()
    a:add(0, "", "", "{")
    a:add(0, "call_1", nil, "")
    a:add(0, "call_other", "late_name", "}")
    a:add(0, "", "other", nil)
    assert.are.same({ { index = 0, id = "call_1", name = "late_name", arguments = "{}" } }, a:result())
  end)

  it("leaves a missing id (or name) nil and skips indices never seen", function()
    local a = core.tool_call_assembler()
    a:add(3, nil, "x", "{}")
    a:add(7, nil, nil, "[1]")
    local r = a:result()
    assert.are.equal(2, #r)
    assert.are.same({ index = 3, name = "x", arguments = "{}" }, r[1])
    assert.are.same({ index = 7, arguments = "[1]" }, r[2])
    assert.is_nil(r[1].id)
  end)

  it("handles many indices added out of order", function()
    local a = core.tool_call_assembler()
    for _, i in ipairs({ 50, 3, 99, 0, 17, 3, 50, 64, 1 }) do a:add(i, "c" .. i, "t", tostring(i)) end
    local got, prev = a:result(), -1
    assert.are.equal(7, #got)
    for _, c in ipairs(got) do
      assert.is_true(c.index > prev)
      prev = c.index
      local rep = (c.index == 3 or c.index == 50) and 2 or 1
      assert.are.equal(tostring(c.index):rep(rep), c.arguments)
      assert.are.equal("c" .. c.index, c.id)
    end
  end)

  it("returns an empty array when nothing was added, and after reset", function()
    local a = core.tool_call_assembler()
    assert.are.same({}, a:result())
    a:add(0, "x", "y", "z")
    a:reset()
    assert.are.same({}, a:result())
    a:add(1, "p", "q", "r")
    assert.are.same({ { index = 1, id = "p", name = "q", arguments = "r" } }, a:result())
  end)

  it("fails with StreamTooLarge past the cap, keeps failing, and recovers on reset", function()
    local a = core.tool_call_assembler(200)
    assert.is_true(a:add(0, "id", "n", ("x"):rep(100)))
    local ok, err = a:add(0, nil, nil, ("y"):rep(100))
    assert.is_nil(ok)
    assert.are.equal("StreamTooLarge", err.code)
    assert.matches("200 bytes", err.message)
    assert.matches("^StreamTooLarge: ", tostring(err))
    local ok2, err2 = a:add(1, nil, nil, "z")
    assert.is_nil(ok2)
    assert.are.equal(err, err2)
    local r, err3 = a:result()
    assert.is_nil(r)
    assert.are.equal("StreamTooLarge", err3.code)
    a:reset()
    assert.is_true(a:add(0, nil, nil, ("y"):rep(100)))
    assert.are.equal(100, #a:result()[1].arguments)
  end)

  it("counts each new index against the cap, so empty deltas are bounded", function()
    local a = core.tool_call_assembler(1000)
    local ok, err
    for i = 0, 100 do
      ok, err = a:add(i)
      if not ok then break end
    end
    assert.is_nil(ok)
    assert.are.equal("StreamTooLarge", err.code)
  end)

  it("defaults to a cap of 8 MiB", function()
    local a = core.tool_call_assembler()
    local mib = ("x"):rep(1024 * 1024)
    for i = 1, 7 do assert.is_true(a:add(0, nil, nil, mib)) end
    local ok, err = a:add(0, nil, nil, mib)
    assert.is_nil(ok)
    assert.are.equal("StreamTooLarge", err.code)
  end)

  it("raises on wrong arguments, naming the argument", function()
    local a = core.tool_call_assembler()
    assert.matches("index must be an integer", raised(a.add, a, "0"))
    assert.matches("index must be an integer", raised(a.add, a, 1.5))
    assert.matches("index must be non%-negative", raised(a.add, a, -1))
    assert.matches("id must be a string or nil, got number", raised(a.add, a, 0, 5))
    assert.matches("name must be a string or nil, got table", raised(a.add, a, 0, nil, {}))
    assert.matches("fragment must be a string or nil, got boolean", raised(a.add, a, 0, nil, nil, true))
    assert.matches("max_bytes must be positive", raised(core.tool_call_assembler, 0))
    assert.matches("max_bytes must be an integer", raised(core.tool_call_assembler, "big"))
    assert.matches("tide.assembler expected", raised(a.add, {}, 0))
  end)

  it("closes idempotently; a closed assembler raises", function()
    local a = core.tool_call_assembler()
    a:add(0, "x", "y", "z")
    a:close()
    a:close()
    assert.matches("attempt to use a closed assembler", raised(a.add, a, 0))
    assert.matches("attempt to use a closed assembler", raised(a.result, a))
    assert.matches("attempt to use a closed assembler", raised(a.reset, a))
    assert.matches("closed", tostring(a))
    do
      local b <close> = core.tool_call_assembler()
      b:add(0, "id", "n", "{}")
    end
    collectgarbage()
  end)
end)

describe("core.hash", function()
  it("computes FNV-1a 64 (known vectors)", function()
    assert.are.equal("cbf29ce484222325", core.hash(""))
    assert.are.equal("af63dc4c8601ec8c", core.hash("a"))
    assert.are.equal("85944171f73967e8", core.hash("foobar"))
  end)

  it("is stable, 16 hex digits, and sensitive to every byte", function()
    local s = ("tide prefix "):rep(1000) .. "\0binary\255"
    local h = core.hash(s)
    assert.matches("^%x+$", h)
    assert.are.equal(16, #h)
    assert.are.equal(h, core.hash(s))
    assert.are_not.equal(h, core.hash(s:sub(1, -2) .. "\254"))
    assert.are_not.equal(core.hash("ab"), core.hash("ba"))
  end)

  it("raises on a non-string argument", function()
    assert.matches("bad argument #1 to '.-hash' %(string expected, got number%)", raised(core.hash, 12))
    assert.matches("bad argument #1 to '.-hash' %(string expected, got no value%)", raised(core.hash))
  end)
end)

describe("core.join_wire", function()
  -- What the session's request body was before it was joined in C.
  local function reference(prefix, wire)
    local joined = table.concat(wire, ",")
    if joined ~= "" and prefix:byte(-1) ~= 91 then return prefix .. "," .. joined .. "]}" end
    return prefix .. joined .. "]}"
  end

  it("joins the prefix and the encodings as the request body", function()
    local big = string.rep("x", 20000) -- past the stack buffer
    for _, case in ipairs {
      { '{"messages":[', {} },
      { '{"messages":[', { '{"a":1}' } },
      { '{"messages":[', { '{"a":1}', '{"b":2}', '{"c":3}' } },
      { '{"messages":[{"role":"system"}', { '{"a":1}' } },
      { '{"messages":[{"role":"system"}', {} },
      { '{"messages":[{"role":"system"}', { "" } },
      { "", { "a", "b" } },
      { '{"messages":[', { big, big } },
    } do
      assert.are.equal(reference(case[1], case[2]), core.join_wire(case[1], case[2]))
    end
  end)

  it("joins a core.wire() as it joins the list of the same encodings", function()
    local big = string.rep("x", 20000)
    for _, case in ipairs {
      { '{"messages":[', {} },
      { '{"messages":[', { '{"a":1}' } },
      { '{"messages":[', { '{"a":1}', "", '{"b":2}', '{"c":3}' } },
      { '{"messages":[{"role":"system"}', { '{"a":1}', '{"b":2}' } },
      { '{"messages":[{"role":"system"}', { "" } },
      { "", { "a", "b" } },
      { '{"messages":[', { big, big, big } },
    } do
      local w = core.wire()
      local kept = {}
      for _, e in ipairs(case[2]) do
        w:add(e)
        if e ~= "" then kept[#kept + 1] = e end -- "" is a message left out
      end
      assert.are.equal(#kept, w:count())
      assert.are.equal(table.concat(kept, ","), w:joined())
      assert.are.equal(reference(case[1], kept), core.join_wire(case[1], w))
    end
    assert.matches("tide.wire %(2 entries, 3 bytes%)", tostring((function()
      local w = core.wire(); w:add("a"); w:add("b"); return w end)()))
    assert.has_error(function() core.wire():add({}) end)
    assert.has_error(function() core.wire():add() end)
  end)

  it("raises on entries that are not strings, naming the argument", function()
    assert.has_error(function() core.join_wire("[", { "a", 5 }) end,
      "bad argument #2 to 'join_wire' (entry 2 is a number, not a string)")
    assert.has_error(function() core.join_wire("[", "a") end)
  end)
end)
