-- HTTP/2 and TLS against a real h2 server on loopback (nghttpd, from
-- Debian's nghttp2-server, with a certificate made for the run): concurrent
-- requests share one multiplexed connection, and certificates are verified
-- unless told otherwise.
local tide = require "tide"
local core = require "tide.core"
local helpers = require "helpers"

local sh = helpers.sh
local function quote(v) return "'" .. v:gsub("'", "'\\''") .. "'" end

describe("tide.http over HTTP/2 with TLS", function()
  local dir, port, url

  setup(function()
    local nghttpd = sh("command -v nghttpd || ls /usr/sbin/nghttpd"):match("(%S+)")
    assert.is_truthy(nghttpd, "nghttpd is needed (./dev test installs nghttp2-server)")
    dir = helpers.tmpdir()
    helpers.write(dir .. "/index.html", "hello h2\n")
    -- children are not tide: they run without the sanitizer runtime
    assert(os.execute(("env -u LD_PRELOAD openssl req -x509 -newkey rsa:2048 -nodes -keyout %s/key.pem -out %s/cert.pem "
      .. "-days 1 -subj /CN=127.0.0.1 -addext subjectAltName=IP:127.0.0.1 >/dev/null 2>&1"):format(dir, dir)))
    -- a free port: bind one, release it, hand it to nghttpd
    local probe = assert(require("tide.testing.server").listen { handler = function() return { status = 200 } end })
    port = probe:port()
    probe:close()
    os.execute(("env -u LD_PRELOAD %s -d %s %d %s/key.pem %s/cert.pem >/dev/null 2>&1 & echo $! > %s/pid")
      :format(nghttpd, dir, port, dir, dir, dir))
    url = ("https://127.0.0.1:%d/index.html"):format(port)
    for _ = 1, 200 do
      local res = tide.http.request { url = url, verify = false, timeout_ms = 500 }
      if res then return end
      tide.sleep(10)
    end
    error("nghttpd did not come up")
  end)

  teardown(function()
    if dir then
      os.execute(("kill $(cat %s/pid) 2>/dev/null"):format(dir))
      helpers.rmdir(dir)
    end
  end)

  it("multiplexes concurrent requests over one connection", function()
    local before = core.http_stats()
    local bodies = tide.run(function()
      local ts = {}
      for i = 1, 100 do
        ts[i] = tide.spawn(function()
          local res, err = tide.http.request { url = url, verify = false }
          return res and res.body or tostring(err)
        end)
      end
      local out = {}
      for i = 1, 100 do out[i] = ts[i]:join() end
      return out
    end)
    for i = 1, 100 do assert.are.equal("hello h2\n", bodies[i]) end
    local after = core.http_stats()
    assert.are.equal(100, after.requests - before.requests)
    assert.are.equal(0, after.connections - before.connections) -- the one from setup, reused
    helpers.assert_quiet()
  end)

  it("verifies certificates by default", function()
    local res, err = tide.http.request { url = url }
    assert.is_nil(res)
    assert.are.equal("TLSFailed", err.code)
  end)

  it("trusts the authorities SSL_CERT_FILE or SSL_CERT_DIR names (a company proxy's own CA)", function()
    -- (read when a process first makes a request: a child of its own each)
    local function child(vars)
      local env = {}
      for k, v in pairs(helpers.child_env(vars)) do env[#env + 1] = k .. "=" .. quote(v) end
      local script = ("local tide = require 'tide' local res, err = tide.http.request { url = %q } "
        .. "io.write(res and res.body or err.code)"):format(url)
      return (sh(("env -i %s LUA_PATH='lua/?.lua;lua/?/init.lua;;' LUA_CPATH='%s/?.so;;' lua5.4 -e %s 2>&1")
        :format(table.concat(env, " "), os.getenv("TIDE_BUILD_DIR") or "build", quote(script))))
    end
    assert.are.equal("TLSFailed", child({}))
    assert.are.equal("hello h2\n", child({ SSL_CERT_FILE = dir .. "/cert.pem" }))
    assert.are.equal("hello h2\n", child({ CURL_CA_BUNDLE = dir .. "/cert.pem" }))
    -- a directory of hashed names, as c_rehash makes it
    local cadir = dir .. "/ca"
    local hash = sh(("env -u LD_PRELOAD openssl x509 -hash -noout -in %s/cert.pem"):format(dir)):match("%x+")
    os.execute(("mkdir -p %s && cp %s/cert.pem %s/%s.0"):format(cadir, dir, cadir, hash))
    assert.are.equal("hello h2\n", child({ SSL_CERT_DIR = cadir }))
    assert.are.equal("TLSFailed", child({ SSL_CERT_FILE = dir .. "/index.html" }))
  end)
end)
