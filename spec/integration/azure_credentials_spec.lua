-- Microsoft Entra ID tokens as azure-identity's DefaultAzureCredential
-- finds them (tide.provider.azure.default_credential), what Azure OpenAI
-- and Claude on Microsoft Foundry are called with when given no key: each
-- source against a loopback endpoint answering as Microsoft's do (Entra
-- ID's client credentials grant, App Service's identity endpoint, the
-- instance metadata service and its string expires_in), the Azure CLI as
-- a stand-in `az` on the PATH, the order, and an Azure OpenAI session
-- calling with what the chain found. The environment is given to the
-- chain, never the process's own: nothing leaves loopback.
local helpers = require "helpers"
local tide = require "tide"
local azure = require "tide.provider.azure"
local provider = require "tide.provider"

local with_mock = helpers.with_mock
local SCOPE = azure.COGNITIVE_SERVICES

-- An environment of `vars` alone; the instance metadata service a closed
-- loopback port and no `az` unless a spec says otherwise.
local function env_of(vars)
  return function(name)
    if vars[name] ~= nil then return vars[name] end
    if name == "AZURE_POD_IDENTITY_AUTHORITY_HOST" then return "http://127.0.0.1:9" end
    if name == "PATH" then return "/nonexistent" end
    return nil
  end
end

local function resolve(vars, scope)
  local ok, token, ttl = pcall(azure.default_credential(env_of(vars), scope or SCOPE))
  if not ok then return nil, token end
  return token, ttl
end

local fields = helpers.form_fields

local tmpfile = helpers.tmpfile

local TOKEN = '{"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0.entra.%s"}'

describe("tide.provider.azure.default_credential", function()
  it("trades the environment's service principal secret at Entra ID", function()
    local seen
    with_mock({ routes = { ["/tenant-1/oauth2/v2.0/token"] = function(req)
      seen = fields(req.body)
      if seen.client_secret ~= "s3cr3t~value" then
        return { status = 401, body = '{"error":"invalid_client","error_description":"AADSTS7000215: Invalid client '
          .. 'secret provided.\\r\\nTrace ID: 1"}' }
      end
      return { body = TOKEN:format("secret") }
    end } }, function(srv)
      local vars = { AZURE_TENANT_ID = "tenant-1", AZURE_CLIENT_ID = "app-1", AZURE_CLIENT_SECRET = "s3cr3t~value",
        AZURE_AUTHORITY_HOST = srv.url }
      local token, ttl = resolve(vars)
      assert.are.equal("eyJ0.entra.secret", token)
      assert.are.equal(3599, ttl)
      assert.are.same({ grant_type = "client_credentials", client_id = "app-1", client_secret = "s3cr3t~value",
        scope = SCOPE }, seen)
      vars.AZURE_CLIENT_SECRET = "wrong"
      local _, err = resolve(vars)
      assert.matches("the service principal of AZURE_CLIENT_ID: HTTP 401 (AADSTS7000215: Invalid client secret "
        .. "provided.)", err, 1, true)
    end)
  end)

  it("trades a workload identity's federated token as the client assertion", function()
    local file = tmpfile("eyJhbGciOiJSUzI1NiJ9.aks-federated\n")
    local seen
    with_mock({ routes = { ["/tenant-1/oauth2/v2.0/token"] = function(req)
      seen = fields(req.body)
      return { body = TOKEN:format("workload") }
    end } }, function(srv)
      assert.are.equal("eyJ0.entra.workload", resolve({ AZURE_TENANT_ID = "tenant-1", AZURE_CLIENT_ID = "app-1",
        AZURE_FEDERATED_TOKEN_FILE = file, AZURE_AUTHORITY_HOST = srv.url }, azure.AI_FOUNDRY))
      assert.are.equal("urn:ietf:params:oauth:client-assertion-type:jwt-bearer", seen.client_assertion_type)
      assert.are.equal("eyJhbGciOiJSUzI1NiJ9.aks-federated", seen.client_assertion)
      assert.are.equal("https://ai.azure.com/.default", seen.scope)
    end)
    os.remove(file)
  end)

  it("asks App Service's identity endpoint, then the instance metadata service", function()
    local expires_on = tostring(os.time() + 3000)
    with_mock({ routes = {
      ["/msi/token"] = function(req)
        if req.headers["x-identity-header"] ~= "id-header-secret" then return { status = 401, body = "" } end
        assert.matches("api%-version=2019%-08%-01", req.path)
        assert.matches("resource=https%%3A%%2F%%2Fcognitiveservices%.azure%.com", req.path)
        return { body = '{"access_token":"eyJ0.appservice","expires_on":"' .. expires_on .. '","resource":'
          .. '"https://cognitiveservices.azure.com","token_type":"Bearer","client_id":"c"}' }
      end,
      ["/metadata/identity/oauth2/token"] = function(req)
        if req.headers["metadata"] ~= "true" then return { status = 400, body = "" } end
        assert.matches("client_id=user%-assigned%-1", req.path)
        return { body = '{"access_token":"eyJ0.imds","client_id":"user-assigned-1","expires_in":"86399",'
          .. '"expires_on":"1506484173","ext_expires_in":"86399","not_before":"1506397473","resource":'
          .. '"https://cognitiveservices.azure.com","token_type":"Bearer"}' }
      end } }, function(srv)
      local token, ttl = resolve({ IDENTITY_ENDPOINT = srv.url .. "/msi/token", IDENTITY_HEADER = "id-header-secret" })
      assert.are.equal("eyJ0.appservice", token)
      assert.is_true(ttl > 2990 and ttl <= 3000)
      token, ttl = resolve({ AZURE_POD_IDENTITY_AUTHORITY_HOST = srv.url, AZURE_CLIENT_ID = "user-assigned-1" })
      assert.are.equal("eyJ0.imds", token)
      assert.are.equal(86399, ttl) -- (the metadata service says it as a string)
    end)
  end)

  it("takes the Azure CLI's login, and goes on when it has none", function()
    local dir = helpers.tmpdir()
    local az = io.open(dir .. "/az", "w")
    local az_script = ([[#!/bin/sh
case "$*" in
  "account get-access-token --output json --scope https://cognitiveservices.azure.com/.default")
    printf '{\n  "accessToken": "eyJ0.cli",\n  "expiresOn": "2026-12-06 21:00:00.000000",\n  "expires_on": %d,\n  "subscription": "s",\n  "tenant": "t",\n  "tokenType": "Bearer"\n}\n' ;;
  *) echo "ERROR: Please run 'az login' to setup account." >&2; exit 1 ;;
esac
]]):format(os.time() + 1800)
    az:write(az_script)
    az:close()
    os.execute("chmod +x " .. dir .. "/az")
    tide.run(function()
      local token, ttl = resolve({ PATH = dir .. ":/usr/bin:/bin" })
      assert.are.equal("eyJ0.cli", token)
      assert.is_true(ttl > 1790 and ttl <= 1800)
      -- an az before 2.54 says expiresOn alone, in local time
      helpers.write(dir .. "/az", ([[#!/bin/sh
printf '{"accessToken": "eyJ0.old", "expiresOn": "%s", "tokenType": "Bearer"}\n'
]]):format(os.date("%Y-%m-%d %H:%M:%S.000000", os.time() + 600)))
      token, ttl = resolve({ PATH = dir .. ":/usr/bin:/bin" })
      assert.are.equal("eyJ0.old", token)
      assert.is_true(ttl > 590 and ttl <= 600)
      -- a proxy and a private CA reach the CLI (what az needs behind them)
      helpers.write(dir .. "/az", [[#!/bin/sh
printf '{"accessToken": "%s|%s", "expires_on": 99999999999}\n' "$HTTPS_PROXY" "$REQUESTS_CA_BUNDLE"
]])
      token = resolve({ PATH = dir .. ":/usr/bin:/bin", HTTPS_PROXY = "http://proxy:3128",
        REQUESTS_CA_BUNDLE = "/etc/corp-ca.pem" })
      assert.are.equal("http://proxy:3128|/etc/corp-ca.pem", token)
      helpers.write(dir .. "/az", az_script)
      -- logged out (another scope, as far as this az knows): nothing anywhere
      local _, err = resolve({ PATH = dir .. ":/usr/bin:/bin" }, azure.AI_FOUNDRY)
      assert.matches("no Microsoft Entra ID credentials found", err, 1, true)
    end)
    helpers.rmdir(dir)
  end)
end)

describe("tide.provider.azure.default_credential with a certificate or the Azure Developer CLI", function()
  local cjson = require "cjson"
  local unb64url = helpers.base64url_decode

  -- A key and a self-signed certificate in one PEM (as azure-identity
  -- takes them), the key encrypted with `pass` when given.
  local function certificate(pass)
    local dir = helpers.tmpdir()
    assert(os.execute(("openssl req -x509 -newkey rsa:2048 -keyout %s/k.pem -out %s/c.pem -days 1 -subj /CN=tide %s "
      .. "2>/dev/null"):format(dir, dir, pass and ("-passout pass:" .. pass) or "-nodes")))
    helpers.write(dir .. "/both.pem", helpers.read(dir .. "/k.pem") .. helpers.read(dir .. "/c.pem"))
    -- the thumbprint, as openssl says it
    local fp = helpers.sh(("openssl x509 -in %s/c.pem -noout -fingerprint -sha1"):format(dir))
    local hex = fp:match("=([%x:]+)"):gsub(":", "")
    return dir, dir .. "/both.pem", (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
  end

  it("proves the service principal with a certificate's signed assertion, as MSAL does", function()
    local dir, pem, thumb = certificate()
    local seen = {}
    with_mock({ routes = { ["/tenant-1/oauth2/v2.0/token"] = function(req)
      local f = fields(req.body)
      seen[#seen + 1] = f
      if f.client_assertion_type ~= "urn:ietf:params:oauth:client-assertion-type:jwt-bearer" then
        return { status = 400, body = '{"error":"invalid_request"}' }
      end
      return { body = TOKEN:format("certificate") }
    end } }, function(srv)
      local vars = { AZURE_TENANT_ID = "tenant-1", AZURE_CLIENT_ID = "app-1", AZURE_CLIENT_CERTIFICATE_PATH = pem,
        AZURE_AUTHORITY_HOST = srv.url }
      assert.are.equal("eyJ0.entra.certificate", resolve(vars))
      local jwt = seen[1].client_assertion
      local h, c, sig = jwt:match("^([%w%-_]+)%.([%w%-_]+)%.([%w%-_]+)$")
      local header, claims = cjson.decode(unb64url(h)), cjson.decode(unb64url(c))
      assert.are.equal("RS256", header.alg)
      assert.are.equal(thumb, unb64url(header.x5t))
      assert.is_nil(header.x5c)
      assert.are.equal(srv.url .. "/tenant-1/oauth2/v2.0/token", claims.aud)
      assert.are.equal("app-1", claims.iss)
      assert.are.equal("app-1", claims.sub)
      assert.are.equal(600, claims.exp - claims.iat)
      assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", claims.jti)
      assert.are.equal("app-1", seen[1].client_id)
      assert.are.equal(SCOPE, seen[1].scope)
      assert.is_nil(seen[1].client_secret)
      -- the signature, by the certificate's public key
      local data, sigfile, pub = dir .. "/data", dir .. "/sig", dir .. "/pub.pem"
      helpers.write(data, h .. "." .. c)
      helpers.write(sigfile, unb64url(sig))
      assert(os.execute(("openssl x509 -in %s -pubkey -noout > %s"):format(pem, pub)))
      assert.is_true(os.execute(("openssl dgst -sha256 -verify %s -signature %s %s >/dev/null 2>&1"):format(pub,
        sigfile, data)) == true)
      -- the chain sent along when asked: every certificate of the file
      vars.AZURE_CLIENT_SEND_CERTIFICATE_CHAIN = "true"
      assert(resolve(vars))
      local header2 = cjson.decode(unb64url(seen[2].client_assertion:match("^([%w%-_]+)")))
      assert.are.equal(1, #header2.x5c)
      helpers.write(pem, helpers.read(pem) .. helpers.read(dir .. "/c.pem"))
      assert(resolve(vars))
      local header3 = cjson.decode(unb64url(seen[3].client_assertion:match("^([%w%-_]+)")))
      assert.are.equal(2, #header3.x5c)
      -- an authority host that is not https never gets the proof; one
      -- without a scheme is https (azure-identity's constants have none)
      local n = #seen
      vars.AZURE_AUTHORITY_HOST = "http://login.example.com"
      local _, err = resolve(vars)
      assert.matches("AZURE_AUTHORITY_HOST must be an https URL, got http://login.example.com", err, 1, true)
      assert.are.equal(n, #seen)
    end)
    helpers.rmdir(dir)
  end)

  it("opens an encrypted key with AZURE_CLIENT_CERTIFICATE_PASSWORD, and says what a certificate lacks", function()
    local dir, pem = certificate("s3cret")
    with_mock({ routes = { ["/t/oauth2/v2.0/token"] = function() return { body = TOKEN:format("enc") } end } },
      function(srv)
        local vars = { AZURE_TENANT_ID = "t", AZURE_CLIENT_ID = "a", AZURE_CLIENT_CERTIFICATE_PATH = pem,
          AZURE_AUTHORITY_HOST = srv.url }
        local _, err = resolve(vars) -- (never a prompt on the terminal)
        assert.matches("has a private key tide cannot sign with (not a PEM RSA private key, or an encrypted one "
          .. "without its passphrase)", err, 1, true)
        vars.AZURE_CLIENT_CERTIFICATE_PASSWORD = "s3cret"
        assert.are.equal("eyJ0.entra.enc", resolve(vars))
        helpers.write(dir .. "/cert.pfx", "\48\130\10\1binary")
        vars.AZURE_CLIENT_CERTIFICATE_PATH = dir .. "/cert.pfx"
        _, err = resolve(vars)
        assert.matches("is not PEM (a PKCS#12 file?", err, 1, true)
        vars.AZURE_CLIENT_CERTIFICATE_PATH = dir .. "/k.pem"
        _, err = resolve(vars)
        assert.matches("holds no certificate", err, 1, true)
      end)
    helpers.rmdir(dir)
  end)

  it("takes the Azure Developer CLI's token, after an Azure CLI that failed", function()
    local dir = helpers.tmpdir()
    local function script(name, body)
      helpers.write(dir .. "/" .. name, "#!/bin/sh\n" .. body)
      os.execute(("chmod +x %s/%s"):format(dir, name))
    end
    script("az", 'echo "ERROR: AADSTS50076: the CLI session needs MFA" >&2; exit 1\n')
    script("azd", ([[
if [ "$NO_COLOR" != "true" ]; then exit 9; fi
case "$*" in
  "auth token --output json --scope https://cognitiveservices.azure.com/.default")
    printf '{"token":"eyJ0.azd","expiresOn":"%s"}
' ;;
  *) echo "ERROR: not logged in, run \`azd auth login\` to login" >&2; exit 1 ;;
esac
]]):format(os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 1200)))
    tide.run(function()
      local token, ttl = resolve({ PATH = dir .. ":/usr/bin:/bin" })
      assert.are.equal("eyJ0.azd", token)
      assert.is_true(ttl > 1190 and ttl <= 1200)
      -- azd logged out too (another scope, as far as this azd knows): the Azure CLI's failure is the error
      local _, err = resolve({ PATH = dir .. ":/usr/bin:/bin" }, azure.AI_FOUNDRY)
      assert.matches("the Azure CLI failed: AADSTS50076: the CLI session needs MFA", err, 1, true)
    end)
    helpers.rmdir(dir)
  end)
end)

describe("tide.provider.azure.default_credential after a transient failure", function()
  local answers, quick = helpers.answers, helpers.quick_retries

  it("asks Entra ID again after a 408, 429 or 5xx, as azure-core's retry policy does", function()
    quick(azure.retry, function()
      local flaky = { { status = 503, body = "" }, { status = 429, body = "" }, { status = 504, body = "" },
        { body = TOKEN:format("retried") } }
      local vars = { AZURE_TENANT_ID = "tenant-1", AZURE_CLIENT_ID = "app-1", AZURE_CLIENT_SECRET = "s" }
      with_mock({ routes = { ["/tenant-1/oauth2/v2.0/token"] = answers(flaky) } }, function(srv)
        vars.AZURE_AUTHORITY_HOST = srv.url
        assert.are.equal("eyJ0.entra.retried", resolve(vars))
        assert.are.equal(4, flaky.seen)
      end)
      -- four tries at most; a refusal is final
      local down = { { status = 500, body = "" } }
      with_mock({ routes = { ["/tenant-1/oauth2/v2.0/token"] = answers(down) } }, function(srv)
        vars.AZURE_AUTHORITY_HOST = srv.url
        local _, err = resolve(vars)
        assert.matches("the service principal of AZURE_CLIENT_ID: HTTP 500", err, 1, true)
        assert.are.equal(4, down.seen)
      end)
      local refused = { { status = 400, body = '{"error":"invalid_request","error_description":"AADSTS900144"}' } }
      with_mock({ routes = { ["/tenant-1/oauth2/v2.0/token"] = answers(refused) } }, function(srv)
        vars.AZURE_AUTHORITY_HOST = srv.url
        assert.is_nil((resolve(vars)))
        assert.are.equal(1, refused.seen)
      end)
    end)
  end)

  it("waits as Retry-After says", function()
    -- the policy's own wait is ten minutes here: only Retry-After: 0 lets
    -- the second try come before the watchdog ends the spec
    local policy = azure.retry.token_endpoint
    local saved = policy.delay_ms
    policy.delay_ms = 600000
    local throttled = { { status = 429, headers = { ["retry-after"] = "0" }, body = "" }, { body = TOKEN:format("later") } }
    local ok, err = pcall(with_mock, { routes = { ["/t/oauth2/v2.0/token"] = answers(throttled) } }, function(srv)
      local task = tide.spawn(resolve, { AZURE_TENANT_ID = "t", AZURE_CLIENT_ID = "a", AZURE_CLIENT_SECRET = "s",
        AZURE_AUTHORITY_HOST = srv.url })
      local token = task:join(10000)
      if task:status() ~= "done" then task:cancel() end
      assert.are.equal("eyJ0.entra.later", token)
    end)
    policy.delay_ms = saved
    assert(ok, err)
    assert.are.equal(2, throttled.seen)
  end)

  it("asks the instance metadata service again once it has answered, after a 404, 410, 429 or 5xx", function()
    quick(azure.retry, function()
      local imds = '{"access_token":"eyJ0.imds.retried","expires_in":"86399","token_type":"Bearer"}'
      local flaky = { { status = 410, body = "" }, { status = 404, body = "" }, { status = 503, body = "" },
        { body = imds } }
      with_mock({ routes = { ["/metadata/identity/oauth2/token"] = answers(flaky) } }, function(srv)
        assert.are.equal("eyJ0.imds.retried", resolve({ AZURE_POD_IDENTITY_AUTHORITY_HOST = srv.url }))
        assert.are.equal(4, flaky.seen)
      end)
      local down = { { status = 500, body = "" } }
      with_mock({ routes = { ["/metadata/identity/oauth2/token"] = answers(down) } }, function(srv)
        local _, err = resolve({ AZURE_POD_IDENTITY_AUTHORITY_HOST = srv.url })
        assert.matches("the managed identity: HTTP 500", err, 1, true)
        assert.are.equal(6, down.seen)
      end)
      -- no identity assigned (400): the chain goes on, at once
      local none = { { status = 400, body = '{"error":"invalid_request","error_description":"Identity not found"}' } }
      with_mock({ routes = { ["/metadata/identity/oauth2/token"] = answers(none) } }, function(srv)
        local _, err = resolve({ AZURE_POD_IDENTITY_AUTHORITY_HOST = srv.url })
        assert.matches("no Microsoft Entra ID credentials found", err, 1, true)
        assert.are.equal(1, none.seen)
      end)
    end)
  end)
end)

describe("Azure OpenAI without a key", function()
  tide.agent { id = "entra_azure", prompt = "You answer." }

  it("calls with the Entra ID token the chain found, asked once, never an api-key", function()
    local asked = 0
    with_mock({ default = "ok", routes = { ["/tenant-1/oauth2/v2.0/token"] = function()
      asked = asked + 1
      return { body = TOKEN:format("session") }
    end } }, function(srv)
      local p = helpers.provider_in_env({ AZURE_TENANT_ID = "tenant-1", AZURE_CLIENT_ID = "app-1",
        AZURE_CLIENT_SECRET = "s3cr3t", AZURE_AUTHORITY_HOST = srv.url }, provider.openai,
        { base_url = "https://my-res.openai.azure.com/openai/v1", model = "gpt-4.1" })
      p.base_url = srv.url .. "/openai/v1" -- (the resource's requests come to the mock)
      local s = tide.session { agent = "entra_azure", provider = p }
      assert.are.equal("ok", assert(s:turn("a")))
      assert.are.equal("ok", assert(s:turn("b")))
      assert.are.equal(1, asked)
      local calls = {}
      for _, r in ipairs(srv:requests()) do
        if r.path:match("/chat/completions$") then calls[#calls + 1] = r end
      end
      assert.are.equal(2, #calls)
      assert.are.equal("Bearer eyJ0.entra.session", calls[2].headers["authorization"])
      assert.is_nil(calls[2].headers["api-key"])
    end)
  end)

  it("fails the request, sending nothing, when there is no token anywhere", function()
    with_mock({ default = "never" }, function(srv)
      local p = helpers.provider_in_env({ AZURE_POD_IDENTITY_AUTHORITY_HOST = "http://127.0.0.1:9",
        PATH = "/nonexistent" }, provider.anthropic, { base_url = "https://my-res.services.ai.azure.com/anthropic/v1" })
      p.base_url = srv.url .. "/anthropic/v1"
      local _, err = tide.session { agent = "entra_azure", provider = p }:turn("a")
      assert.are.equal("ProviderError", err.code)
      assert.matches("Microsoft Entra ID's default credentials gave no access token: no Microsoft Entra ID "
        .. "credentials found", err.message, 1, true)
      assert.are.equal(0, #srv:requests())
    end)
  end)
end)
