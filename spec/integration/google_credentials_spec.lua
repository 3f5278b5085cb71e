-- Google's Application Default Credentials (tide.provider.google.adc),
-- what Claude on Vertex AI is called with when given no access token: each
-- source against a loopback endpoint answering as Google's does (the token
-- endpoint's refresh-token and JWT-bearer grants, the metadata server
-- with its Metadata-Flavor header), the service account's JWT checked
-- with the openssl command line (an RS256 signature by its key), the
-- order, and a Vertex session calling with what the chain found. The
-- environment is given to the chain, never the process's own: nothing
-- leaves loopback.
local helpers = require "helpers"
local tide = require "tide"
local google = require "tide.provider.google"
local provider = require "tide.provider"

local with_mock = helpers.with_mock
local cjson = require("cjson").new()

local function env_of(vars) return function(name) return vars[name] end end

local tmpfile = helpers.tmpfile

local function resolve(vars)
  local ok, token, ttl = pcall(google.adc(env_of(vars)))
  if not ok then return nil, token end
  return token, ttl
end

local fields = helpers.form_fields

local unb64url = helpers.base64url_decode

local function token_endpoint(srv_reqs)
  return function(req)
    srv_reqs[#srv_reqs + 1] = req
    local f = fields(req.body or "")
    if f.grant_type == "refresh_token" and f.refresh_token == "1//refresh-me" then
      return { body = '{"access_token":"ya29.from-refresh","expires_in":3599,"scope":"https://www.googleapis.com/auth/'
        .. 'cloud-platform","token_type":"Bearer"}' }
    end
    if f.grant_type == "urn:ietf:params:oauth:grant-type:jwt-bearer" and f.assertion then
      return { body = '{"access_token":"ya29.from-jwt","expires_in":3599,"token_type":"Bearer"}' }
    end
    return { status = 400, body = '{"error":"invalid_grant","error_description":"Bad Request"}' }
  end
end

describe("tide.provider.google.adc", function()
  it("trades the refresh token of GOOGLE_APPLICATION_CREDENTIALS' authorized_user file", function()
    local reqs = {}
    with_mock({ routes = { ["/token"] = token_endpoint(reqs) } }, function(srv)
      local path = tmpfile(cjson.encode { type = "authorized_user", client_id = "764086051850-x.apps.googleusercontent.com",
        client_secret = "d-FL95Q19q7MQmFpd7hHD0Ty", refresh_token = "1//refresh-me", token_uri = srv.url .. "/token" })
      local token, ttl = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.are.equal("ya29.from-refresh", token)
      assert.are.equal(3599, ttl)
      local f = fields(reqs[1].body)
      assert.are.equal("764086051850-x.apps.googleusercontent.com", f.client_id)
      assert.are.equal("application/x-www-form-urlencoded", reqs[1].headers["content-type"])
      -- a refused refresh token says so
      local bad = tmpfile(cjson.encode { type = "authorized_user", client_id = "c", client_secret = "s",
        refresh_token = "revoked", token_uri = srv.url .. "/token" })
      local _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = bad })
      assert.matches("the refresh token of .*: HTTP 400 %(Bad Request%)", err)
      os.remove(path)
      os.remove(bad)
    end)
  end)

  it("signs a service account's JWT with its key, as openssl checks it", function()
    local key = os.tmpname()
    assert(os.execute("openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out " .. key .. " 2>/dev/null"))
    local reqs = {}
    with_mock({ routes = { ["/token"] = token_endpoint(reqs) } }, function(srv)
      local path = tmpfile(cjson.encode { type = "service_account", project_id = "my-proj", private_key_id = "kid-1",
        private_key = io.open(key):read("a"), client_email = "tide@my-proj.iam.gserviceaccount.com",
        token_uri = srv.url .. "/token" })
      local token, ttl = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.are.equal("ya29.from-jwt", token)
      assert.are.equal(3599, ttl)
      local jwt = fields(reqs[1].body).assertion
      local h, c, sig = jwt:match("^([%w%-_]+)%.([%w%-_]+)%.([%w%-_]+)$")
      assert.are.same({ alg = "RS256", typ = "JWT", kid = "kid-1" }, cjson.decode(unb64url(h)))
      local claims = cjson.decode(unb64url(c))
      assert.are.equal("tide@my-proj.iam.gserviceaccount.com", claims.iss)
      assert.are.equal(srv.url .. "/token", claims.aud)
      assert.are.equal("https://www.googleapis.com/auth/cloud-platform", claims.scope)
      assert.are.equal(3600, claims.exp - claims.iat)
      -- the signature, by the key's public half
      local data, sigfile, pub = os.tmpname(), os.tmpname(), os.tmpname()
      io.open(data, "wb"):write(h .. "." .. c):close()
      io.open(sigfile, "wb"):write(unb64url(sig)):close()
      assert(os.execute("openssl pkey -in " .. key .. " -pubout -out " .. pub .. " 2>/dev/null"))
      assert.is_true(os.execute(("openssl dgst -sha256 -verify %s -signature %s %s >/dev/null 2>&1"):format(pub,
        sigfile, data)) == true)
      for _, f in ipairs { data, sigfile, pub, path } do os.remove(f) end
    end)
    os.remove(key)
  end)

  it("reads gcloud's well-known file, then asks the metadata server", function()
    local reqs = {}
    with_mock({ routes = { ["/token"] = token_endpoint(reqs),
      ["/computeMetadata/v1/instance/service-accounts/default/token"] = function(req)
        if req.headers["metadata-flavor"] ~= "Google" then return { status = 403, body = "" } end
        return { body = '{"access_token":"ya29.from-metadata","expires_in":3000,"token_type":"Bearer"}' }
      end } }, function(srv)
      local dir = helpers.tmpdir()
      local host = srv.url:match("^http://(.+)$")
      -- the metadata server only when no file says otherwise
      assert.are.equal("ya29.from-metadata", resolve({ CLOUDSDK_CONFIG = dir, GCE_METADATA_HOST = host }))
      io.open(dir .. "/application_default_credentials.json", "wb"):write(cjson.encode { type = "authorized_user",
        client_id = "c", client_secret = "s", refresh_token = "1//refresh-me", token_uri = srv.url .. "/token" }):close()
      assert.are.equal("ya29.from-refresh", resolve({ CLOUDSDK_CONFIG = dir, GCE_METADATA_HOST = host }))
      helpers.rmdir(dir)
    end)
  end)

  it("says why there is no token", function()
    tide.run(function()
      local _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = "/nonexistent/key.json" })
      assert.matches("GOOGLE_APPLICATION_CREDENTIALS names /nonexistent/key.json, which cannot be read", err, 1, true)
      local ext = tmpfile('{"type":"gdch_service_account","project":"p"}')
      _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = ext })
      assert.matches('credentials of type "gdch_service_account", which tide does not take', err, 1, true)
      os.remove(ext)
      -- malformed files say what is wrong, and raise nothing
      local sub = tmpfile("subject-token")
      for _, case in ipairs {
        { { type = "authorized_user", client_id = "c", client_secret = "s", refresh_token = "r", token_uri = 5 },
          "'s token_uri must be a string" },
        { { type = "external_account", audience = "a", subject_token_type = "t", token_url = { "x" },
          credential_source = { file = sub } }, "'s token_url must be a string" },
        { { type = "external_account", audience = "a", subject_token_type = "t", client_id = "c", client_secret = {},
          credential_source = { file = sub } }, "'s client_secret must be a string" },
        { { type = "external_account", audience = "a", subject_token_type = "t",
          credential_source = { file = sub, url = "http://127.0.0.1:9/t" } }, "names both a file and a URL" },
        { { type = "external_account", audience = "a", subject_token_type = "t",
          credential_source = { file = sub, format = { type = "JSON" } } }, 'has the format "JSON" (text and json are)' },
        { { type = "external_account", audience = "a", subject_token_type = "t",
          credential_source = { file = sub, format = { type = "json" } } }, "is json but names no subject_token_field_name" },
      } do
        local f = tmpfile(cjson.encode(case[1]))
        local _, why = resolve({ GOOGLE_APPLICATION_CREDENTIALS = f })
        assert.matches(case[2], why, 1, true)
        os.remove(f)
      end
      os.remove(sub)
      -- token endpoint answers read as they come: a fractional or string
      -- expiry, Google's error object
      local base = require "tide.provider.base"
      local t, ttl = base._access_token({ status = 200, body = '{"access_token":"a","expires_on":"'
        .. (os.time() + 100) .. '.5"}' }, "x")
      assert.are.equal("a", t)
      assert.is_true(ttl >= 99 and ttl <= 100)
      local _, why = base._access_token({ status = 403, body = '{"error":{"code":403,"message":"Permission denied"}}' },
        "the endpoint")
      assert.are.equal("the endpoint: HTTP 403 (Permission denied)", why)
      -- nothing anywhere (the metadata server's host a closed loopback port)
      _, err = resolve({ HOME = "/nonexistent", GCE_METADATA_HOST = "127.0.0.1:9" })
      assert.matches("no Google credentials found", err, 1, true)
    end)
  end)
end)

describe("tide.provider.google.adc for impersonation and workload identity federation", function()
  local SA = "vertex-caller@my-proj.iam.gserviceaccount.com"
  local IAM_PATH = "/v1/projects/-/serviceAccounts/" .. SA .. ":generateAccessToken"

  -- IAM's generateAccessToken: the account's token for a caller holding
  -- `want` (Google's 403 otherwise), the requests kept in `seen`.
  local function iam(want, seen)
    return function(req)
      seen[#seen + 1] = req
      if req.headers["authorization"] ~= "Bearer " .. want then
        return { status = 403, headers = { ["content-type"] = "application/json" }, body = cjson.encode { error = {
          code = 403, message = "Permission 'iam.serviceAccounts.getAccessToken' denied on resource (or it may not "
            .. "exist).", status = "PERMISSION_DENIED" } } }
      end
      return { headers = { ["content-type"] = "application/json" }, body = cjson.encode { accessToken =
        "ya29.impersonated", expireTime = os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + 3600) } }
    end
  end

  it("impersonates a service account with the source credentials' token", function()
    local reqs, seen = {}, {}
    with_mock({ routes = { ["/token"] = token_endpoint(reqs), [IAM_PATH] = iam("ya29.from-refresh", seen) } },
      function(srv)
        local function file(source)
          return tmpfile(cjson.encode { type = "impersonated_service_account", delegates = { "projects/-/"
            .. "serviceAccounts/hop@my-proj.iam.gserviceaccount.com" }, service_account_impersonation_url = srv.url
            .. IAM_PATH, source_credentials = source })
        end
        local path = file { type = "authorized_user", client_id = "c", client_secret = "s",
          refresh_token = "1//refresh-me", token_uri = srv.url .. "/token" }
        local token, ttl = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
        assert.are.equal("ya29.impersonated", token)
        assert.is_true(ttl > 3590 and ttl <= 3600)
        assert.are.same({ delegates = { "projects/-/serviceAccounts/hop@my-proj.iam.gserviceaccount.com" },
          lifetime = "3600s", scope = { "https://www.googleapis.com/auth/cloud-platform" } },
          cjson.decode(seen[1].body))
        os.remove(path)
        -- a source whose own token is refused fails there
        path = file { type = "authorized_user", client_id = "c", client_secret = "s", refresh_token = "other",
          token_uri = srv.url .. "/token" }
        local _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
        assert.matches("the refresh token of " .. path .. "'s source credentials: HTTP 400 (Bad Request)", err, 1, true)
        os.remove(path)
        path = file { type = "external_account_authorized_user" }
        _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
        assert.matches('source credentials of type "external_account_authorized_user", which tide does not take', err,
          1, true)
        os.remove(path)
      end)
    with_mock({ routes = { ["/token"] = token_endpoint({}), [IAM_PATH] = iam("someone-else", {}) } }, function(srv)
      local path = tmpfile(cjson.encode { type = "impersonated_service_account", service_account_impersonation_url =
        srv.url .. IAM_PATH, source_credentials = { type = "authorized_user", client_id = "c", client_secret = "s",
          refresh_token = "1//refresh-me", token_uri = srv.url .. "/token" } })
      local _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.matches("the impersonation of " .. SA .. ": HTTP 403 (Permission 'iam.serviceAccounts.getAccessToken' "
        .. "denied", err, 1, true)
      os.remove(path)
    end)
  end)

  -- Google's STS: the federated token for a subject token it accepts.
  local function sts(seen, accept)
    return function(req)
      seen[#seen + 1] = req
      if fields(req.body).subject_token ~= accept then
        return { status = 400, headers = { ["content-type"] = "application/json" }, body = cjson.encode { error =
          "invalid_grant", error_description = "The incoming JSON Web Token (JWT) was rejected." } }
      end
      return { headers = { ["content-type"] = "application/json" }, body = cjson.encode { access_token =
        "ya29.federated", issued_token_type = "urn:ietf:params:oauth:token-type:access_token", token_type = "Bearer",
        expires_in = 3599 } }
    end
  end

  it("trades a workload identity's subject token from a file at Google's STS", function()
    local seen = {}
    with_mock({ routes = { ["/v1/token"] = sts(seen, "eyJhbGciOiJSUzI1NiJ9.github-oidc") } }, function(srv)
      local subject = tmpfile(cjson.encode { value = "eyJhbGciOiJSUzI1NiJ9.github-oidc", count = 1 })
      local audience = "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/gh/providers/repo"
      local path = tmpfile(cjson.encode { type = "external_account", audience = audience,
        subject_token_type = "urn:ietf:params:oauth:token-type:jwt", token_url = srv.url .. "/v1/token",
        credential_source = { file = subject, format = { type = "json", subject_token_field_name = "value" } } })
      local token, ttl = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.are.equal("ya29.federated", token)
      assert.are.equal(3599, ttl)
      assert.are.same({ grant_type = "urn:ietf:params:oauth:grant-type:token-exchange", audience = audience,
        scope = "https://www.googleapis.com/auth/cloud-platform",
        requested_token_type = "urn:ietf:params:oauth:token-type:access_token",
        subject_token = "eyJhbGciOiJSUzI1NiJ9.github-oidc", subject_token_type = "urn:ietf:params:oauth:token-type:jwt" },
        fields(seen[1].body))
      assert.is_nil(seen[1].headers["authorization"])
      -- a workforce pool's user project goes as STS's options, quoted twice as google-auth sends it
      local wf = tmpfile(cjson.encode { type = "external_account", audience = "//iam.googleapis.com/locations/global/"
        .. "workforcePools/corp/providers/okta", subject_token_type = "urn:ietf:params:oauth:token-type:id_token",
        token_url = srv.url .. "/v1/token", workforce_pool_user_project = "billing-proj",
        credential_source = { file = subject, format = { type = "json", subject_token_field_name = "value" } } })
      assert.are.equal("ya29.federated", resolve({ GOOGLE_APPLICATION_CREDENTIALS = wf }))
      local quoted = fields(seen[2].body).options
      assert.are.equal("%7B%22userProject%22%3A%22billing-proj%22%7D", quoted)
      assert.are.equal('{"userProject":"billing-proj"}', (quoted:gsub("%%(%x%x)", function(h)
        return string.char(tonumber(h, 16)) end)))
      -- ... unless a client authenticates (basic), which names the project itself
      local client = tmpfile(cjson.encode { type = "external_account", audience = "a", subject_token_type = "t",
        token_url = srv.url .. "/v1/token", workforce_pool_user_project = "billing-proj", client_id = "cid",
        client_secret = "csecret", credential_source = { file = subject, format = { type = "json",
          subject_token_field_name = "value" } } })
      assert.are.equal("ya29.federated", resolve({ GOOGLE_APPLICATION_CREDENTIALS = client }))
      assert.is_nil(fields(seen[3].body).options)
      assert.are.equal("Basic " .. tide.core.base64("cid:csecret"), seen[3].headers["authorization"])
      -- a subject token STS refuses
      helpers.write(subject, cjson.encode { value = "expired" })
      local _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.matches("HTTP 400 (The incoming JSON Web Token (JWT) was rejected.)", err, 1, true)
      for _, f in ipairs { subject, path, wf, client } do os.remove(f) end
    end)
  end)

  it("reads a subject token from a URL, then impersonates the service account the file names", function()
    local seen, iam_seen = {}, {}
    with_mock({ routes = {
      ["/v1/token"] = sts(seen, "azure-msi-token"),
      ["/metadata/identity/oauth2/token"] = function(req)
        if req.headers["metadata"] ~= "True" then return { status = 400, body = "" } end
        return { body = "azure-msi-token\n" }
      end,
      [IAM_PATH] = iam("ya29.federated", iam_seen) } }, function(srv)
      local path = tmpfile(cjson.encode { type = "external_account", audience = "//iam.googleapis.com/x",
        subject_token_type = "urn:ietf:params:oauth:token-type:jwt", token_url = srv.url .. "/v1/token",
        service_account_impersonation_url = srv.url .. IAM_PATH,
        service_account_impersonation = { token_lifetime_seconds = 1200 },
        credential_source = { url = srv.url .. "/metadata/identity/oauth2/token", headers = { Metadata = "True" } } })
      assert.are.equal("ya29.impersonated", resolve({ GOOGLE_APPLICATION_CREDENTIALS = path }))
      assert.are.equal("1200s", cjson.decode(iam_seen[1].body).lifetime)
      os.remove(path)
      -- a source tide does not read says so
      path = tmpfile(cjson.encode { type = "external_account", audience = "a", subject_token_type = "t",
        credential_source = { certificate = { certificate_config_location = "/x.json" } } })
      local _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.matches("takes its subject token from a certificate, which tide does not take", err, 1, true)
      os.remove(path)
    end)
  end)

  -- The signature of an AWS request, worked out here step by step as AWS's
  -- Signature Version 4 documentation lays it out (not with tide's signer).
  local function sigv4(secret, amz_date, region, service, canonical_request)
    local core = tide.core
    local function hex(x) return (x:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end
    local scope = amz_date:sub(1, 8) .. "/" .. region .. "/" .. service .. "/aws4_request"
    local to_sign = "AWS4-HMAC-SHA256\n" .. amz_date .. "\n" .. scope .. "\n" .. hex(core.sha256(canonical_request))
    local k = core.hmac_sha256("AWS4" .. secret, amz_date:sub(1, 8))
    k = core.hmac_sha256(core.hmac_sha256(core.hmac_sha256(k, region), service), "aws4_request")
    return hex(core.hmac_sha256(k, to_sign)), scope
  end

  local AWS_AUDIENCE = "//iam.googleapis.com/projects/123456/locations/global/workloadIdentityPools/aws-pool/"
    .. "providers/aws-provider"
  local AWS_TYPE = "urn:ietf:params:aws:token-type:aws4_request"

  -- The subject token decoded: the signed request as Google's STS reads it.
  local function signed_request(subject)
    return cjson.decode((subject:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end)))
  end

  it("signs an AWS workload's GetCallerIdentity request with the instance role's keys as its subject token", function()
    local calls, seen = {}, {}
    local function imds_only(req, ok)
      calls[#calls + 1] = req.method .. " " .. req.path
      if req.headers["x-aws-ec2-metadata-token"] ~= "imds-session" then return { status = 401, body = "" } end
      return ok
    end
    with_mock({ routes = {
      ["/latest/api/token"] = function(req)
        calls[#calls + 1] = req.method .. " " .. req.path .. " " .. tostring(req.headers["x-aws-ec2-metadata-token-ttl-seconds"])
        return req.method == "PUT" and { body = "imds-session" } or { status = 405, body = "" }
      end,
      ["/latest/meta-data/placement/availability-zone"] = function(req) return imds_only(req, { body = "us-east-2b" }) end,
      ["/latest/meta-data/iam/security-credentials"] = function(req) return imds_only(req, { body = "gcp-role" }) end,
      ["/latest/meta-data/iam/security-credentials/gcp-role"] = function(req)
        return imds_only(req, { body = cjson.encode { Code = "Success", Type = "AWS-HMAC", AccessKeyId = "ASIARD4OQDT6A77FR3CL",
          SecretAccessKey = "Y8AfSaucF37G4PGSUwHqx1k7WOn3yI9Fh/S8W6Sv", Token = "IQoJb3JpZ2luX2VjEIz//////////wEaCXVz",
          Expiration = "2099-01-01T00:00:00Z" } })
      end,
      ["/v1/token"] = function(req) seen[#seen + 1] = req; return { headers = { ["content-type"] = "application/json" },
        body = cjson.encode { access_token = "ya29.from-aws", token_type = "Bearer", expires_in = 3599,
          issued_token_type = "urn:ietf:params:oauth:token-type:access_token" } } end,
    } }, function(srv)
      local path = tmpfile(cjson.encode { type = "external_account", audience = AWS_AUDIENCE,
        subject_token_type = AWS_TYPE, token_url = srv.url .. "/v1/token", credential_source = {
          environment_id = "aws1", region_url = srv.url .. "/latest/meta-data/placement/availability-zone",
          url = srv.url .. "/latest/meta-data/iam/security-credentials",
          regional_cred_verification_url = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
          imdsv2_session_token_url = srv.url .. "/latest/api/token" } })
      local token, ttl = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.are.equal("ya29.from-aws", token)
      assert.are.equal(3599, ttl)
      -- the session token first (300 s, as google-auth asks), then the
      -- zone, the role and its keys, each with the session token
      assert.are.same({ "PUT /latest/api/token 300", "GET /latest/meta-data/placement/availability-zone",
        "GET /latest/meta-data/iam/security-credentials", "GET /latest/meta-data/iam/security-credentials/gcp-role" },
        calls)
      local f = fields(seen[1].body)
      assert.are.equal(AWS_TYPE, f.subject_token_type)
      assert.are.equal(AWS_AUDIENCE, f.audience)
      -- the subject token: JSON with sorted keys, "/" as it is, percent-encoded
      local subject = f.subject_token
      assert.matches("^%%7B%%22headers%%22%%3A%%5B%%7B%%22key%%22%%3A%%22Authorization%%22", subject)
      assert.is_nil(subject:find("%5C", 1, true)) -- (no escaped slash)
      local r = signed_request(subject)
      assert.are.equal("POST", r.method)
      assert.are.equal("https://sts.us-east-2.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15", r.url)
      local keys, h = {}, {}
      for i, kv in ipairs(r.headers) do keys[i] = kv.key; h[kv.key] = kv.value end
      assert.are.same({ "Authorization", "host", "x-amz-date", "x-amz-security-token", "x-goog-cloud-target-resource" }, keys)
      assert.are.equal("sts.us-east-2.amazonaws.com", h.host)
      assert.are.equal("IQoJb3JpZ2luX2VjEIz//////////wEaCXVz", h["x-amz-security-token"])
      assert.are.equal(AWS_AUDIENCE, h["x-goog-cloud-target-resource"])
      assert.matches("^%d%d%d%d%d%d%d%dT%d%d%d%d%d%dZ$", h["x-amz-date"])
      -- the signature, over the request AWS's STS will see
      local names = "host;x-amz-date;x-amz-security-token;x-goog-cloud-target-resource"
      local canonical = table.concat({ "POST", "/", "Action=GetCallerIdentity&Version=2011-06-15",
        "host:sts.us-east-2.amazonaws.com\nx-amz-date:" .. h["x-amz-date"]
          .. "\nx-amz-security-token:IQoJb3JpZ2luX2VjEIz//////////wEaCXVz\nx-goog-cloud-target-resource:"
          .. AWS_AUDIENCE .. "\n", names,
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855" }, "\n")
      local sig, scope = sigv4("Y8AfSaucF37G4PGSUwHqx1k7WOn3yI9Fh/S8W6Sv", h["x-amz-date"], "us-east-2", "sts", canonical)
      assert.are.equal(("AWS4-HMAC-SHA256 Credential=ASIARD4OQDT6A77FR3CL/%s, SignedHeaders=%s, Signature=%s"):format(
        scope, names, sig), h.Authorization)
      os.remove(path)
    end)
  end)

  it("signs with the environment's keys and region, the metadata service untouched", function()
    local seen, touched = {}, false
    with_mock({ routes = {
      ["/latest/api/token"] = function() touched = true; return { body = "s" } end,
      ["/v1/token"] = function(req) seen[#seen + 1] = req; return { body = cjson.encode { access_token = "ya29.env",
        expires_in = 3599 } } end,
    } }, function(srv)
      local cs = { environment_id = "aws1", region_url = srv.url .. "/zone", url = srv.url .. "/creds",
        regional_cred_verification_url = "https://sts.{region}.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        imdsv2_session_token_url = srv.url .. "/latest/api/token" }
      local path = tmpfile(cjson.encode { type = "external_account", audience = AWS_AUDIENCE,
        subject_token_type = AWS_TYPE, token_url = srv.url .. "/v1/token", credential_source = cs })
      local env = { GOOGLE_APPLICATION_CREDENTIALS = path, AWS_REGION = "eu-west-1",
        AWS_ACCESS_KEY_ID = "AKIAENV", AWS_SECRET_ACCESS_KEY = "env/secret" }
      assert.are.equal("ya29.env", resolve(env))
      assert.is_false(touched)
      local r = signed_request(fields(seen[1].body).subject_token)
      local h = {}
      for _, kv in ipairs(r.headers) do h[kv.key] = kv.value end
      assert.is_nil(h["x-amz-security-token"]) -- (long-term keys: no session token)
      assert.are.equal("https://sts.eu-west-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15", r.url)
      assert.matches("^AWS4%-HMAC%-SHA256 Credential=AKIAENV/%d+/eu%-west%-1/sts/aws4_request, SignedHeaders=host;"
        .. "x%-amz%-date;x%-goog%-cloud%-target%-resource, Signature=%x+$", h.Authorization)
      -- AWS_DEFAULT_REGION when AWS_REGION is not set
      env.AWS_REGION, env.AWS_DEFAULT_REGION = nil, "ap-south-1"
      assert.are.equal("ya29.env", resolve(env))
      assert.are.equal("https://sts.ap-south-1.amazonaws.com?Action=GetCallerIdentity&Version=2011-06-15",
        signed_request(fields(seen[2].body).subject_token).url)
      -- what is wrong with a file or the metadata service is said, and raises nothing
      for _, case in ipairs {
        { { environment_id = "aws2", regional_cred_verification_url = "https://x" }, "is AWS version 2; tide reads version 1" },
        { { environment_id = "aws1" }, "is no AWS source tide knows" },
        { { environment_id = "azure1", regional_cred_verification_url = "https://x" }, "is no AWS source tide knows" },
        { { environment_id = "aws1", regional_cred_verification_url = "http://sts.{region}.amazonaws.com" },
          "must be an https URL", { AWS_REGION = "us-east-1", AWS_ACCESS_KEY_ID = "a", AWS_SECRET_ACCESS_KEY = "b" } },
        { { environment_id = "aws1", regional_cred_verification_url = "https://x" }, "no AWS region" },
        { { environment_id = "aws1", regional_cred_verification_url = "https://x", url = 5 }, "credential_source.url must be a string" },
        { { environment_id = "aws1", regional_cred_verification_url = "https://x", region_url = srv.url .. "/missing" },
          "the AWS region from " .. srv.url .. "/missing: HTTP 404" },
        { { environment_id = "aws1", regional_cred_verification_url = "https://x" },
          "names no url for the AWS security credentials", { AWS_REGION = "us-east-1" } },
      } do
        local f = tmpfile(cjson.encode { type = "external_account", audience = "a", subject_token_type = AWS_TYPE,
          token_url = srv.url .. "/v1/token", credential_source = case[1] })
        local vars = { GOOGLE_APPLICATION_CREDENTIALS = f }
        for k, v in pairs(case[3] or {}) do vars[k] = v end
        local _, why = resolve(vars)
        assert.matches(case[2], why, 1, true)
        os.remove(f)
      end
      os.remove(path)
    end)
  end)

  it("runs an allowed executable for its subject token, and reads its cached answer while it holds", function()
    local seen = {}
    with_mock({ routes = { ["/v1/token"] = sts(seen, "eyJ.oidc-from-exe") } }, function(srv)
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. dir))
      local out_file, env_file = dir .. "/answer.json", dir .. "/env.txt"
      -- the program: its environment written down, its answer printed
      local script = dir .. "/get-token.sh"
      helpers.write(script, "#!/bin/sh\nenv | grep '^GOOGLE_EXTERNAL_ACCOUNT_' | sort > " .. env_file .. "\n"
        .. "echo \"HOME=$HOME\" >> " .. env_file .. "\n"
        .. "echo '" .. cjson.encode { version = 1, success = true, token_type = "urn:ietf:params:oauth:token-type:id_token",
          id_token = "eyJ.oidc-from-exe", expiration_time = os.time() + 3600 } .. "'\n")
      assert(os.execute("chmod +x " .. script))
      local path = tmpfile(cjson.encode { type = "external_account", audience = "//iam.googleapis.com/x",
        subject_token_type = "urn:ietf:params:oauth:token-type:id_token", token_url = srv.url .. "/v1/token",
        credential_source = { executable = { command = script .. " --flag=1", timeout_millis = 5000,
          output_file = out_file } } })
      -- not allowed: nothing runs
      local _, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = path })
      assert.matches("runs only where GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES is 1", err, 1, true)
      assert.is_nil(io.open(env_file))
      local env = { GOOGLE_APPLICATION_CREDENTIALS = path, GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" }
      assert.are.equal("ya29.federated", resolve(env))
      assert.are.equal("eyJ.oidc-from-exe", fields(seen[1].body).subject_token)
      -- it ran with this process's environment and google-auth's variables
      local vars = helpers.read(env_file)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_AUDIENCE=//iam.googleapis.com/x\n", vars, 1, true)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_TOKEN_TYPE=urn:ietf:params:oauth:token-type:id_token\n", vars, 1, true)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_INTERACTIVE=0\n", vars, 1, true)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_OUTPUT_FILE=" .. out_file .. "\n", vars, 1, true)
      assert.matches("GOOGLE_EXTERNAL_ACCOUNT_REVOKE=0\n", vars, 1, true)
      assert.matches("HOME=" .. tostring(os.getenv("HOME")) .. "\n", vars, 1, true)
      -- an unexpired answer in the output file is used without running it
      os.remove(env_file)
      helpers.write(out_file, cjson.encode { version = 1, success = true, token_type = "urn:ietf:params:oauth:token-type:jwt",
        id_token = "eyJ.cached", expiration_time = os.time() + 600 })
      seen[2] = nil
      resolve(env)
      assert.are.equal("eyJ.cached", fields(seen[2].body).subject_token)
      assert.is_nil(io.open(env_file))
      -- an expired one, or one without an expiry, is not
      helpers.write(out_file, cjson.encode { version = 1, success = true, token_type = "urn:ietf:params:oauth:token-type:jwt",
        id_token = "eyJ.stale", expiration_time = os.time() - 1 })
      assert.are.equal("ya29.federated", resolve(env))
      assert.are.equal("eyJ.oidc-from-exe", fields(seen[3].body).subject_token)
      -- what the program answers or does wrong is said, never what it printed
      for _, case in ipairs {
        { "exit 3", "failed (exit 3)" },
        { "echo oops-token-text", "'s answer is not a JSON object" },
        { "echo '{\"version\":2,\"success\":true}'", "has version 2; tide reads version 1" },
        { "echo '{\"version\":1,\"success\":false,\"code\":\"401\",\"message\":\"denied\"}'",
          "is unsuccessful: code 401, message denied" },
        { "echo '{\"version\":1,\"success\":true,\"token_type\":\"x\",\"id_token\":\"t\"}'",
          "has the token type x, which tide does not take" },
        { "echo '{\"version\":1,\"success\":true,\"token_type\":\"urn:ietf:params:oauth:token-type:saml2\"}'",
          "has no saml_response" },
      } do
        helpers.write(script, "#!/bin/sh\n" .. case[1] .. "\n")
        local f = tmpfile(cjson.encode { type = "external_account", audience = "a", subject_token_type = "t",
          token_url = srv.url .. "/v1/token", credential_source = { executable = { command = script } } })
        local _, why = resolve({ GOOGLE_APPLICATION_CREDENTIALS = f, GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" })
        assert.matches(case[2], why, 1, true)
        assert.is_nil(why:find("oops-token-text", 1, true))
        os.remove(f)
      end
      -- a saml answer's response is the token
      helpers.write(script, "#!/bin/sh\necho '" .. cjson.encode { version = 1, success = true,
        token_type = "urn:ietf:params:oauth:token-type:saml2", saml_response = "eyJ.oidc-from-exe" } .. "'\n")
      local f = tmpfile(cjson.encode { type = "external_account", audience = "a", subject_token_type = "t",
        token_url = srv.url .. "/v1/token", credential_source = { executable = { command = script } } })
      assert.are.equal("ya29.federated", resolve({ GOOGLE_APPLICATION_CREDENTIALS = f,
        GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" }))
      for _, bad in ipairs { { timeout_millis = 1000, command = script }, { command = " " } } do
        local g = tmpfile(cjson.encode { type = "external_account", audience = "a", subject_token_type = "t",
          credential_source = { executable = bad } })
        local _, why = resolve({ GOOGLE_APPLICATION_CREDENTIALS = g, GOOGLE_EXTERNAL_ACCOUNT_ALLOW_EXECUTABLES = "1" })
        assert.matches(bad.timeout_millis and "must be between 5000 and 120000" or "has no command", why, 1, true)
        os.remove(g)
      end
      os.remove(f)
      os.remove(path)
      os.execute("rm -rf " .. dir)
    end)
  end)
end)

describe("tide.provider.google.adc after a transient failure", function()
  local answers, quick = helpers.answers, helpers.quick_retries
  local TOKEN = { body = '{"access_token":"ya29.retried","expires_in":3599,"token_type":"Bearer"}' }

  -- The token the refresh-token file gets from an endpoint answering `list`
  -- in turn: token, ttl or nil, err.
  local function refresh_against(list)
    local token, err
    with_mock({ routes = { ["/token"] = answers(list) } }, function(srv)
      local file = tmpfile(cjson.encode { type = "authorized_user", client_id = "c", client_secret = "s",
        refresh_token = "1//r", token_uri = srv.url .. "/token" })
      token, err = resolve({ GOOGLE_APPLICATION_CREDENTIALS = file })
      os.remove(file)
    end)
    return token, err
  end

  it("asks the token endpoint again after a 5xx, 408, 429 or a temporary OAuth error, as google-auth does", function()
    quick(google.retry, function()
      local flaky = { { status = 503, body = "" },
        { status = 400, body = '{"error":"temporarily_unavailable","error_description":"try later"}' }, TOKEN }
      assert.are.equal("ya29.retried", refresh_against(flaky))
      assert.are.equal(3, flaky.seen)
      -- three tries at most
      local down = { { status = 429, body = "" } }
      local _, err = refresh_against(down)
      assert.matches("HTTP 429", err, 1, true)
      assert.are.equal(3, down.seen)
      -- a refused grant is final
      local refused = { { status = 400, body = '{"error":"invalid_grant","error_description":"Token has been expired or '
        .. 'revoked."}' }, TOKEN }
      _, err = refresh_against(refused)
      assert.matches("HTTP 400 (Token has been expired or revoked.)", err, 1, true)
      assert.are.equal(1, refused.seen)
    end)
  end)

  it("asks the metadata server again once it has answered, up to five times", function()
    quick(google.retry, function()
      local path = "/computeMetadata/v1/instance/service-accounts/default/token"
      local flaky = { { status = 503, body = "" }, { status = 500, body = "" }, TOKEN }
      with_mock({ routes = { [path] = answers(flaky) } }, function(srv)
        local host = srv.url:match("^http://(.+)$")
        assert.are.equal("ya29.retried", resolve({ HOME = "/nonexistent", GCE_METADATA_HOST = host }))
        assert.are.equal(3, flaky.seen)
      end)
      local down = { { status = 503, body = "" } }
      with_mock({ routes = { [path] = answers(down) } }, function(srv)
        local _, err = resolve({ HOME = "/nonexistent", GCE_METADATA_HOST = srv.url:match("^http://(.+)$") })
        assert.matches("the metadata server: HTTP 503", err, 1, true)
        assert.are.equal(5, down.seen)
      end)
    end)
  end)
end)

describe("tide.provider.anthropic on Vertex AI, with the application default credentials", function()
  tide.agent { id = "adc_vertex", prompt = "You answer." }

  it("calls with the token they give, asked once", function()
    local reqs = {}
    with_mock({ default = "ok", routes = { ["/token"] = token_endpoint(reqs) } }, function(srv)
      local path = tmpfile(cjson.encode { type = "authorized_user", client_id = "c", client_secret = "s",
        refresh_token = "1//refresh-me", token_uri = srv.url .. "/token" })
      local p = helpers.provider_in_env({ GOOGLE_APPLICATION_CREDENTIALS = path }, provider.anthropic,
        { base_url = srv.url .. "/v1", model = "claude-sonnet-4-5@20250929", vertex = { project = "my-proj",
          region = "us-east5" } })
      local s = tide.session { agent = "adc_vertex", provider = p }
      assert.are.equal("ok", assert(s:turn("a")))
      assert.are.equal("ok", assert(s:turn("b")))
      assert.are.equal(1, #reqs)
      local calls = {}
      for _, r in ipairs(srv:requests()) do
        if r.path:match("[rR]awPredict$") then calls[#calls + 1] = r end
      end
      assert.are.equal(2, #calls)
      assert.are.equal("Bearer ya29.from-refresh", calls[2].headers["authorization"])
      os.remove(path)
    end)
  end)

  it("fails the request, sending nothing, when they have none", function()
    with_mock({ default = "never" }, function(srv)
      local p = helpers.provider_in_env({ HOME = "/nonexistent", GCE_METADATA_HOST = "127.0.0.1:9" },
        provider.anthropic, { base_url = srv.url .. "/v1", model = "m", vertex = { project = "my-proj",
          region = "us-east5" } })
      local _, err = tide.session { agent = "adc_vertex", provider = p }:turn("a")
      assert.are.equal("ProviderError", err.code)
      assert.matches("Google's application default credentials gave no access token: no Google credentials found",
        err.message, 1, true)
      assert.are.equal(0, #srv:requests())
    end)
  end)
end)
