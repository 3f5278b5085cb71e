-- The profiles of the AWS shared config and credentials files, as the
-- default chain reads them (tide.provider.aws_credentials): keys in
-- either file, a credential_process, IAM Identity Center (SSO) through the
-- token `aws sso login` caches, and roles assumed at STS from a source
-- profile or a credential source, each against loopback endpoints
-- answering as AWS's do (the SSO portal's and token service's JSON, STS's
-- XML, its check of the Signature Version 4 by the source's keys). The
-- environment is given to the chain, and HOME is a temporary directory:
-- nothing leaves loopback, the developer's own ~/.aws is never read.
local helpers = require "helpers"
local tide = require "tide"
local aws = require "tide.provider.aws"
local creds_mod = require "tide.provider.aws_credentials"
local provider = require "tide.provider"
local testing = require "tide.testing"
local cjson = require "cjson"

local with_mock = helpers.with_mock

local function iso(seconds_from_now) return os.date("!%Y-%m-%dT%H:%M:%SZ", os.time() + seconds_from_now) end

-- A HOME of its own with `files` ({ [relative path] = text }).
local function home(files)
  local dir = helpers.tmpdir()
  os.execute(("mkdir -p %q"):format(dir .. "/.aws/sso/cache"))
  for path, text in pairs(files) do
    os.execute(("mkdir -p %q"):format((dir .. "/" .. path):match("^(.*)/")))
    helpers.write(dir .. "/" .. path, text)
  end
  return dir
end

-- The environment `vars` alone, the instance metadata service off.
local function env_of(vars)
  return function(name)
    if name == "AWS_EC2_METADATA_DISABLED" then return "true" end
    return vars[name]
  end
end

local function resolve(vars, region, profile)
  local ok, creds, ttl = pcall(aws.chain(env_of(vars), region, profile))
  if not ok then return nil, creds end
  return creds, ttl
end

local function hex(s) return (s:gsub(".", function(c) return ("%02x"):format(c:byte()) end)) end

-- STS's AssumeRole answer.
local function assumed(id, secret, token)
  return { status = 200, headers = { ["content-type"] = "text/xml" }, body = ([[
<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
  <AssumeRoleResult>
    <AssumedRoleUser>
      <AssumedRoleId>AROA3XFRBF23:s</AssumedRoleId>
      <Arn>arn:aws:sts::123456789012:assumed-role/r/s</Arn>
    </AssumedRoleUser>
    <Credentials>
      <AccessKeyId>%s</AccessKeyId>
      <SecretAccessKey>%s</SecretAccessKey>
      <SessionToken>%s</SessionToken>
      <Expiration>%s</Expiration>
    </Credentials>
  </AssumeRoleResult>
  <ResponseMetadata><RequestId>c6104cbe-af31-11e0-8154-cbc7ccf896c7</RequestId></ResponseMetadata>
</AssumeRoleResponse>]]):format(id, secret, token, iso(3600)) }
end

local form = helpers.form_fields

describe("the AWS shared config and credentials files", function()
  it("take the profile's keys from the credentials file first, then the config file", function()
    local dir = home {
      [".aws/config"] = "[default]\nregion = us-west-2\n\n[profile dev]\nregion = eu-west-1\n"
        .. "aws_access_key_id = AKIACONFIG\naws_secret_access_key = config/secret\ns3 =\n  max_concurrency = 10\n",
      [".aws/credentials"] = "# a comment\n[dev]\naws_access_key_id = AKIACREDS\naws_secret_access_key = creds/secret\n"
        .. "aws_security_token = legacy-token\n",
    }
    tide.run(function()
      local creds = assert(resolve({ HOME = dir, AWS_PROFILE = "dev" }))
      assert.are.same({ access_key_id = "AKIACREDS", secret_access_key = "creds/secret", session_token = "legacy-token" },
        creds)
      os.remove(dir .. "/.aws/credentials")
      creds = assert(resolve({ HOME = dir, AWS_PROFILE = "dev" }))
      assert.are.equal("AKIACONFIG", creds.access_key_id)
      -- the environment's keys come before any profile, but not before a
      -- profile named in code (boto3.Session(profile_name=...))
      local env = { HOME = dir, AWS_PROFILE = "dev", AWS_ACCESS_KEY_ID = "AKIAENV", AWS_SECRET_ACCESS_KEY = "e" }
      assert.are.equal("AKIAENV", resolve(env).access_key_id)
      assert.are.equal("AKIACONFIG", resolve(env, nil, "dev").access_key_id)
      -- a profile asked for by name must be there
      local _, err = resolve({ HOME = dir, AWS_PROFILE = "nope" })
      assert.matches("the config profile (nope) could not be found", err, 1, true)
      -- the region programs without AWS_REGION run in
      assert.are.equal("eu-west-1", creds_mod.profile_region(env_of({ HOME = dir }), "dev"))
      assert.are.equal("us-west-2", creds_mod.profile_region(env_of({ HOME = dir })))
      assert.are.equal("us-west-2", creds_mod.profile_region(env_of({ HOME = dir, AWS_CONFIG_FILE = dir
        .. "/.aws/config" })))
      assert.are.equal("us-west-2", creds_mod.profile_region(env_of({ HOME = dir, AWS_CONFIG_FILE = "~/.aws/config" })))
      assert.is_nil(creds_mod.profile_region(env_of({ HOME = "/nonexistent" })))
    end)
    helpers.rmdir(dir)
  end)

  it("read the files as configparser does: indented options, ':' separators, quoted names", function()
    local dir = home { [".aws/config"] = "[default]\n  region = us-west-2\n  aws_access_key_id = AKIAINDENTED\n"
      .. "  aws_secret_access_key = indented/secret\n"
      .. "[profile \"with space\"]\naws_access_key_id: AKIACOLON\naws_secret_access_key: colon/secret\n"
      .. "s3 =\n  max_concurrent_requests = 20\nregion = eu-west-3\n" }
    tide.run(function()
      assert.are.equal("AKIAINDENTED", assert(resolve({ HOME = dir })).access_key_id)
      assert.are.equal("us-west-2", creds_mod.profile_region(env_of({ HOME = dir })))
      local creds = assert(resolve({ HOME = dir }, nil, "with space"))
      assert.are.same({ access_key_id = "AKIACOLON", secret_access_key = "colon/secret" }, creds)
      -- (the nested s3 settings stay out of the profile; the option after them is its own)
      assert.are.equal("eu-west-3", creds_mod.profile_region(env_of({ HOME = dir }), "with space"))
    end)
    helpers.rmdir(dir)
  end)

  it("run a profile's credential_process, its words split as a shell splits them", function()
    local dir = helpers.tmpdir()
    local script = dir .. "/creds helper"
    helpers.write(script, ([[#!/bin/sh
if [ "$1" = "fail" ]; then echo "the vault is locked" >&2; exit 3; fi
if [ "$1" = "v2" ]; then echo '{"Version": 2}'; exit 0; fi
printf '{"Version": 1, "AccessKeyId": "ASIAPROCESS", "SecretAccessKey": "p/secret", "SessionToken": "%%s|%%s", "Expiration": "%s"}\n' "$1" "$2"
]]):format(iso(900)))
    os.execute(("chmod +x %q"):format(script))
    local function with_process(command)
      helpers.write(dir .. "/config", "[profile tool]\ncredential_process = " .. command .. "\n")
      return resolve({ HOME = dir, AWS_CONFIG_FILE = dir .. "/config", AWS_PROFILE = "tool" })
    end
    tide.run(function()
      local creds, ttl = with_process(("'%s' \"arg one\" two\\ words"):format(script))
      assert.are.same({ access_key_id = "ASIAPROCESS", secret_access_key = "p/secret",
        session_token = "arg one|two words" }, creds)
      assert.is_true(ttl > 890 and ttl <= 900)
      local _, err = with_process(("'%s' fail"):format(script))
      assert.matches('the credential_process of the profile "tool" failed (exit 3): the vault is locked', err, 1, true)
      _, err = with_process(("'%s' v2"):format(script))
      assert.matches("printed Version 2; the credential process format is Version 1", err, 1, true)
      _, err = with_process("'unclosed")
      assert.matches("is not a command: an unclosed ' quote", err, 1, true)
      -- a process a signal ends has failed, whatever it printed first
      _, err = with_process([[sh -c 'echo {\"Version\":1,\"AccessKeyId\":\"ASIAKILLED\",\"SecretAccessKey\":\"s\"}; kill -9 $$']])
      assert.matches('the credential_process of the profile "tool" failed (exit 137)', err, 1, true)
      -- a null session token is none
      creds = assert(with_process([[sh -c 'echo {\"Version\":1,\"AccessKeyId\":\"ASIANULL\",\"SecretAccessKey\":\"s\",\"SessionToken\":null}']]))
      assert.are.same({ access_key_id = "ASIANULL", secret_access_key = "s" }, creds)
    end)
    helpers.rmdir(dir)
    local split = creds_mod._split
    assert.are.same({ "a", "b c", "d\"e", "f$g", "h\\i" }, split([[a "b c" "d\"e" 'f$g' h\\i]]))
    assert.are.same({ "aws-vault", "exec", "dev", "--json" }, split("  aws-vault exec dev --json  "))
    assert.are.same({ "", "x" }, split([['' x]]))
  end)
end)

describe("IAM Identity Center (SSO) profiles", function()
  local CONFIG = "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\nsso_role_name = BedrockUser\n"
    .. "region = eu-central-1\n\n[sso-session corp]\nsso_start_url = https://corp.awsapps.com/start\n"
    .. "sso_region = us-east-1\nsso_registration_scopes = sso:account:access\n"

  -- The SSO portal: role credentials for the bearer token `want`.
  local function portal(want, seen)
    return function(req)
      seen[#seen + 1] = req
      if req.headers["x-amz-sso_bearer_token"] ~= want then
        return { status = 401, headers = { ["content-type"] = "application/json" },
          body = '{"message":"Session token not found or invalid"}' }
      end
      assert.matches("account_id=111122223333", req.path, 1, true)
      assert.matches("role_name=BedrockUser", req.path, 1, true)
      return { headers = { ["content-type"] = "application/json" }, body = cjson.encode { roleCredentials = {
        accessKeyId = "ASIASSO", secretAccessKey = "sso/secret", sessionToken = "sso-session-token",
        expiration = (os.time() + 3600) * 1000 } } }
    end
  end

  local function cache_file(dir, key) return ("%s/.aws/sso/cache/%s.json"):format(dir, hex(tide.core.sha1(key))) end

  it("trade the token `aws sso login` cached for the role's credentials", function()
    local seen = {}
    with_mock({ routes = { ["/federation/credentials"] = portal("sso-access-token", seen) } }, function(srv)
      local dir = home { [".aws/config"] = CONFIG }
      helpers.write(cache_file(dir, "corp"), cjson.encode { startUrl = "https://corp.awsapps.com/start",
        region = "us-east-1", accessToken = "sso-access-token", expiresAt = iso(7200) })
      local vars = { HOME = dir, AWS_PROFILE = "dev", AWS_ENDPOINT_URL_SSO = srv.url }
      local creds, ttl = resolve(vars)
      assert.are.same({ access_key_id = "ASIASSO", secret_access_key = "sso/secret",
        session_token = "sso-session-token" }, creds)
      assert.is_true(ttl > 3590 and ttl <= 3600)
      assert.are.equal("GET", seen[1].method)
      -- the legacy form: the start URL in the profile, its hash the file's name
      helpers.write(dir .. "/.aws/config", "[profile old]\nsso_start_url = https://old.awsapps.com/start\n"
        .. "sso_region = us-east-1\nsso_account_id = 111122223333\nsso_role_name = BedrockUser\n")
      helpers.write(cache_file(dir, "https://old.awsapps.com/start"), cjson.encode { accessToken = "sso-access-token",
        expiresAt = os.date("!%Y-%m-%dT%H:%M:%SUTC", os.time() + 600) })
      vars.AWS_PROFILE = "old"
      assert.are.equal("ASIASSO", assert(resolve(vars)).access_key_id)
      -- a token the portal no longer takes
      helpers.write(cache_file(dir, "https://old.awsapps.com/start"), cjson.encode { accessToken = "revoked",
        expiresAt = iso(600) })
      local _, err = resolve(vars)
      assert.matches('the SSO session of the profile "old" is no longer valid: run `aws sso login --profile old`',
        err, 1, true)
      helpers.rmdir(dir)
    end)
  end)

  it("renew a token about to run out with its refresh token, and write it back for the CLI", function()
    local seen, refreshed = {}, {}
    with_mock({ routes = {
      ["/federation/credentials"] = portal("renewed-access-token", seen),
      ["/token"] = function(req)
        refreshed[#refreshed + 1] = cjson.decode(req.body)
        return { headers = { ["content-type"] = "application/json" }, body = cjson.encode { accessToken =
          "renewed-access-token", expiresIn = 28800, refreshToken = "refresh-2", tokenType = "Bearer" } }
      end } }, function(srv)
      local dir = home { [".aws/config"] = CONFIG }
      local file = cache_file(dir, "corp")
      helpers.write(file, cjson.encode { startUrl = "https://corp.awsapps.com/start", region = "us-east-1",
        accessToken = "old-access-token", expiresAt = iso(300), refreshToken = "refresh-1", clientId = "client-1",
        clientSecret = "client-secret-1", registrationExpiresAt = iso(86400 * 30) })
      local creds = assert(resolve({ HOME = dir, AWS_PROFILE = "dev", AWS_ENDPOINT_URL_SSO = srv.url,
        AWS_ENDPOINT_URL_SSO_OIDC = srv.url }))
      assert.are.equal("ASIASSO", creds.access_key_id)
      assert.are.same({ { grantType = "refresh_token", clientId = "client-1", clientSecret = "client-secret-1",
        refreshToken = "refresh-1" } }, refreshed)
      local cached = cjson.decode(helpers.read(file))
      assert.are.equal("renewed-access-token", cached.accessToken)
      assert.are.equal("refresh-2", cached.refreshToken)
      assert.are.equal("client-1", cached.clientId)
      assert.is_true(aws.epoch(cached.expiresAt) > os.time() + 28000)
      -- (it holds a refresh token and a client secret: its owner's eyes only, as botocore writes it)
      local mode = io.popen(("stat -c %%a %q"):format(file)):read("l")
      assert.are.equal("600", mode)
      -- past its time with nothing to renew it by: log in again
      helpers.write(file, cjson.encode { accessToken = "old", expiresAt = iso(-60) })
      local _, err = resolve({ HOME = dir, AWS_PROFILE = "dev", AWS_ENDPOINT_URL_SSO = srv.url })
      assert.matches("the SSO session corp has expired: run `aws sso login --profile dev`", err, 1, true)
      helpers.rmdir(dir)
    end)
  end)

  it("say what a profile lacks", function()
    local dir = home { [".aws/config"] = "[profile half]\nsso_account_id = 1\nsso_role_name = R\n"
      .. "sso_start_url = https://x.awsapps.com/start\n[profile lost]\nsso_session = nowhere\nsso_account_id = 1\n"
      .. "sso_role_name = R\n" }
    tide.run(function()
      local _, err = resolve({ HOME = dir, AWS_PROFILE = "half" })
      assert.matches('the profile "half" is configured to use SSO but is missing required configuration: sso_region',
        err, 1, true)
      _, err = resolve({ HOME = dir, AWS_PROFILE = "lost" })
      assert.matches('the sso-session "nowhere" of the profile "lost" does not exist', err, 1, true)
    end)
    helpers.rmdir(dir)
  end)
end)

describe("profiles that assume a role", function()
  local BASE = { access_key_id = "AKIABASE", secret_access_key = "base/secret+key" }

  -- STS: AssumeRole for whoever signs with the keys `signers` knows,
  -- checked as STS checks a signature; each caller gets the next keys.
  local function sts(signers, calls, region)
    return function(req)
      local f = form(req.body)
      local id = (req.headers["authorization"] or ""):match("Credential=([^/]+)/")
      local refused = testing.sigv4_refusal(req, signers[id], region, "sts")
      calls[#calls + 1] = { id = id, form = f, refused = refused }
      if refused then
        return { status = 403, headers = { ["content-type"] = "text/xml" }, body = ("<ErrorResponse><Error><Type>Sender"
          .. "</Type><Code>SignatureDoesNotMatch</Code><Message>%s</Message></Error></ErrorResponse>"):format(refused) }
      end
      local n = #calls
      local next_keys = { access_key_id = "ASIAROLE" .. n, secret_access_key = "role/secret" .. n,
        session_token = "role-token-" .. n }
      signers[next_keys.access_key_id] = next_keys
      return assumed(next_keys.access_key_id, next_keys.secret_access_key, next_keys.session_token)
    end
  end

  it("sign AssumeRole with the source profile's keys, roles chaining", function()
    local calls = {}
    with_mock({ routes = { ["/"] = sts({ AKIABASE = BASE }, calls, "eu-west-1") } }, function(srv)
      local dir = home {
        [".aws/credentials"] = "[base]\naws_access_key_id = AKIABASE\naws_secret_access_key = base/secret+key\n",
        [".aws/config"] = "[profile dev]\nrole_arn = arn:aws:iam::123456789012:role/dev\nsource_profile = base\n"
          .. "external_id = ext-123\nrole_session_name = tide-dev\nduration_seconds = 1800\nregion = eu-west-1\n\n"
          .. "[profile admin]\nrole_arn = arn:aws:iam::123456789012:role/admin\nsource_profile = dev\n"
          .. "region = eu-west-1\n",
      }
      local vars = { HOME = dir, AWS_ENDPOINT_URL_STS = srv.url }
      local creds, ttl = resolve(vars, nil, "dev")
      assert.are.same({ access_key_id = "ASIAROLE1", secret_access_key = "role/secret1", session_token = "role-token-1" },
        creds)
      assert.is_true(ttl > 3590)
      assert.are.same({ Action = "AssumeRole", Version = "2011-06-15", RoleArn = "arn:aws:iam::123456789012:role/dev",
        RoleSessionName = "tide-dev", ExternalId = "ext-123", DurationSeconds = "1800" }, calls[1].form)
      assert.are.equal("AKIABASE", calls[1].id)
      -- admin's source is dev's role: two calls, the second signed by the first's keys
      creds = assert(resolve(vars, nil, "admin"))
      assert.are.equal("ASIAROLE3", creds.access_key_id)
      assert.are.same({ "AKIABASE", "ASIAROLE2" }, { calls[2].id, calls[3].id })
      assert.is_nil(calls[3].refused)
      assert.matches("^botocore%-session%-%d+$", calls[3].form.RoleSessionName)
      helpers.rmdir(dir)
      -- a source profile with keys of its own gives them, its own role
      -- unassumed: one call, signed by its keys
      dir = home {
        [".aws/config"] = "[profile keyed]\naws_access_key_id = AKIABASE\naws_secret_access_key = base/secret+key\n"
          .. "role_arn = arn:aws:iam::123456789012:role/keyed\nsource_profile = nowhere\n"
          .. "[profile top]\nrole_arn = arn:aws:iam::123456789012:role/top\nsource_profile = keyed\nregion = eu-west-1\n",
      }
      local before = #calls
      creds = assert(resolve({ HOME = dir, AWS_ENDPOINT_URL_STS = srv.url }, nil, "top"))
      assert.are.equal(before + 1, #calls)
      assert.are.equal("AKIABASE", calls[#calls].id)
      assert.are.equal("arn:aws:iam::123456789012:role/top", calls[#calls].form.RoleArn)
      helpers.rmdir(dir)
    end)
  end)

  it("assume a role behind MFA with the code mfa_code gives, asked as the role is assumed", function()
    local calls = {}
    local answer = sts({ AKIABASE = BASE }, calls, "us-east-1")
    -- STS refuses a wrong code as it does (403, AccessDenied)
    local function with_mfa(req)
      local f = form(req.body)
      if f.SerialNumber and f.TokenCode ~= "123456" then
        calls[#calls + 1] = { form = f }
        return { status = 403, headers = { ["content-type"] = "text/xml" }, body = "<ErrorResponse><Error><Type>Sender"
          .. "</Type><Code>AccessDenied</Code><Message>MultiFactorAuthentication failed with invalid MFA one time "
          .. "pass code. </Message></Error><RequestId>c6104cbe</RequestId></ErrorResponse>" }
      end
      return answer(req)
    end
    with_mock({ routes = { ["/"] = with_mfa } }, function(srv)
      local dir = home {
        [".aws/credentials"] = "[base]\naws_access_key_id = AKIABASE\naws_secret_access_key = base/secret+key\n",
        [".aws/config"] = "[profile mfa]\nrole_arn = arn:aws:iam::1:role/m\nsource_profile = base\n"
          .. "mfa_serial = arn:aws:iam::1:mfa/me\n",
      }
      local function chain(code)
        local asked = {}
        local ok, creds = pcall(aws.chain(env_of { HOME = dir, AWS_ENDPOINT_URL_STS = srv.url }, nil, "mfa",
          function(serial)
            asked[#asked + 1] = serial
            if code == "raise" then error("no device at hand") end
            return code
          end))
        return ok and creds or nil, not ok and creds or nil, asked
      end
      local creds, err, asked = chain("123456")
      assert.is_nil(err)
      assert.are.equal("ASIAROLE1", creds.access_key_id)
      assert.are.same({ "arn:aws:iam::1:mfa/me" }, asked)
      assert.are.equal("AKIABASE", calls[1].id)
      assert.is_nil(calls[1].refused)
      assert.are.equal("arn:aws:iam::1:mfa/me", calls[1].form.SerialNumber)
      assert.are.equal("123456", calls[1].form.TokenCode)
      -- a code STS refuses: its error, without the code
      _, err = chain("654321")
      assert.matches("MultiFactorAuthentication failed", err, 1, true)
      assert.is_nil(err:find("654321", 1, true))
      -- what the function gives is checked before anything is sent
      local sent = #calls
      _, err = chain("12345")
      assert.matches('the mfa_code function gave no six-digit code for "arn:aws:iam::1:mfa/me"', err, 1, true)
      _, err = chain("raise")
      assert.matches('the mfa_code function failed for "arn:aws:iam::1:mfa/me": .*no device at hand', err)
      assert.are.equal(sent, #calls)
      helpers.rmdir(dir)
    end)
    -- misuse names the option
    local ok, err = pcall(provider.bedrock, { region = "us-east-1", model = "m", mfa_code = "123456" })
    assert.is_false(ok)
    assert.matches("mfa_code", tostring(err), 1, true)
    ok, err = pcall(provider.anthropic, { model = "m", bedrock = { region = "us-east-1", mfa_code = 123456 } })
    assert.is_false(ok)
    assert.matches("'bedrock.mfa_code' must be a function", tostring(err), 1, true)
  end)

  it("take the keys a credential_source names", function()
    local calls = {}
    with_mock({ routes = { ["/"] = sts({ AKIAENVSRC = { access_key_id = "AKIAENVSRC", secret_access_key = "env/s" } },
      calls, "us-east-1") } }, function(srv)
      local dir = home { [".aws/config"] = "[profile ci]\nrole_arn = arn:aws:iam::1:role/ci\n"
        .. "credential_source = Environment\n[profile odd]\nrole_arn = arn:aws:iam::1:role/x\ncredential_source = Vault\n" }
      -- (the environment's own keys would win before the profile: named in code, they are the role's source)
      local creds = assert(resolve({ HOME = dir, AWS_ENDPOINT_URL_STS = srv.url, AWS_ACCESS_KEY_ID = "AKIAENVSRC",
        AWS_SECRET_ACCESS_KEY = "env/s" }, nil, "ci"))
      assert.are.equal("ASIAROLE1", creds.access_key_id)
      local _, err = resolve({ HOME = dir }, nil, "odd")
      assert.matches('the credential_source "Vault" (Environment, EcsContainer and Ec2InstanceMetadata are)', err, 1,
        true)
      helpers.rmdir(dir)
    end)
  end)

  it("say what is wrong with a role's profile", function()
    local dir = home { [".aws/config"] = "[profile a]\nrole_arn = arn:aws:iam::1:role/a\nsource_profile = b\n"
      .. "[profile b]\nrole_arn = arn:aws:iam::1:role/b\nsource_profile = a\n"
      .. "[profile mfa]\nrole_arn = arn:aws:iam::1:role/m\nsource_profile = a\nmfa_serial = arn:aws:iam::1:mfa/me\n"
      .. "[profile orphan]\nrole_arn = arn:aws:iam::1:role/o\nsource_profile = missing\n"
      .. "[profile sourceless]\nrole_arn = arn:aws:iam::1:role/s\naws_access_key_id = AKIAX\naws_secret_access_key = x\n" }
    tide.run(function()
      -- a role with nothing to assume it with is an error, not a profile to pass over
      local _, serr = resolve({ HOME = dir }, nil, "sourceless")
      assert.matches('the profile "sourceless" has a role_arn but neither source_profile nor credential_source', serr,
        1, true)
      -- a web identity token file without a role to assume
      local tok = dir .. "/token"
      helpers.write(tok, "eyJ.token")
      _, serr = resolve({ HOME = dir, AWS_WEB_IDENTITY_TOKEN_FILE = tok })
      assert.matches("no role to assume with it (AWS_ROLE_ARN or role_arn)", serr, 1, true)
      local _, err = resolve({ HOME = dir }, nil, "a")
      assert.matches('the source_profile of "b" leads back to "a": a loop', err, 1, true)
      _, err = resolve({ HOME = dir }, nil, "mfa")
      assert.matches('the profile "mfa" needs an MFA code (mfa_serial)', err, 1, true)
      _, err = resolve({ HOME = dir }, nil, "orphan")
      assert.matches('the profile "missing" could not be found', err, 1, true)
    end)
    helpers.rmdir(dir)
  end)
end)

describe("Claude on Bedrock with a profile", function()
  tide.agent { id = "profile_bedrock", prompt = "You answer." }

  it("signs with the profile's SSO credentials, in the profile's region", function()
    local seen = {}
    local SSO = { access_key_id = "ASIASSO", secret_access_key = "sso/secret", session_token = "sso-session-token" }
    with_mock({ replies = { "hello from the profile" }, bedrock = { credentials = SSO, region = "eu-central-1" } },
      function(srv)
      local dir = home { [".aws/config"] = "[profile dev]\nsso_session = corp\nsso_account_id = 111122223333\n"
        .. "sso_role_name = BedrockUser\nregion = eu-central-1\n[sso-session corp]\n"
        .. "sso_start_url = https://corp.awsapps.com/start\nsso_region = us-east-1\n" }
      helpers.write(("%s/.aws/sso/cache/%s.json"):format(dir, hex(tide.core.sha1("corp"))),
        cjson.encode { accessToken = "sso-access-token", expiresAt = iso(3600) })
      -- the portal on a server of its own (the mock's routes answer Bedrock)
      local portal <close> = assert(testing.mock_server { routes = { ["/federation/credentials"] = function(req)
        seen[#seen + 1] = req.headers["x-amz-sso_bearer_token"]
        return { headers = { ["content-type"] = "application/json" }, body = cjson.encode { roleCredentials = {
          accessKeyId = SSO.access_key_id, secretAccessKey = SSO.secret_access_key, sessionToken = SSO.session_token,
          expiration = (os.time() + 3600) * 1000 } } }
      end } })
      local p = helpers.provider_in_env({ HOME = dir, AWS_ENDPOINT_URL_SSO = portal.url,
        AWS_ACCESS_KEY_ID = "AKIAIGNORED", AWS_SECRET_ACCESS_KEY = "ignored" }, provider.anthropic,
        { base_url = srv.url, bedrock = { profile = "dev" } })
      assert.are.equal("eu-central-1", p.bedrock.region)
      local s = tide.session { agent = "profile_bedrock", provider = p }
      assert.are.equal("hello from the profile", assert(s:turn("hi")))
      assert.matches("Credential=ASIASSO/%d+/eu%-central%-1/bedrock/", srv:requests()[1].headers["authorization"])
      assert.are.same({ "sso-access-token" }, seen)
      helpers.rmdir(dir)
    end)
  end)
end)

describe("an aws login session (login_session)", function()
  local SESSION = "arn:aws:sts::012345678910:assumed-role/Admin/admin"
  -- a P-256 key as `aws login` caches it (SEC1 PEM), and its public point
  local KEY = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIBMB/RwQERsVoqWRQG4zK8CnaAa5dfrpbm+9tFdBh3z4oAoGCCqGSM49\n"
    .. "AwEHoUQDQgAEWb1VLi1EA2hJaTz4yYuxSELvY+1GAfL+8rUTCAdiFid87Bf6GY+s\n2+1RpqDv0RpZiDIMCrZrsAh+RK9S3QCaGA==\n"
    .. "-----END EC PRIVATE KEY-----\n"
  local X, Y = "Wb1VLi1EA2hJaTz4yYuxSELvY-1GAfL-8rUTCAdiFic", "fOwX-hmPrNvtUaag79EaWYgyDAq2a7AIfkSvUt0Amhg"
  local CONFIG = "[profile signin]\nlogin_session = " .. SESSION .. "\nregion = us-east-2\n"
  -- (4b0ba8f9...json: the name botocore's test suite gives this ARN's file)
  local FILE = ".aws/login/cache/" .. hex(tide.core.sha256(SESSION)) .. ".json"

  local function token(expires_in, over)
    local t = { accessToken = { accessKeyId = "ASIALOGIN", secretAccessKey = "login/secret", sessionToken = "login-token",
      accountId = "012345678901", expiresAt = iso(expires_in) }, tokenType = "aws_sigv4", refreshToken = "valid_refresh",
      idToken = "eyJ.id", clientId = "arn:aws:signin:::devtools/same-device", dpopKey = KEY }
    for k, v in pairs(over or {}) do t[k] = v end
    return cjson.encode(t)
  end

  local unb64url = helpers.base64url_decode

  -- Whether `jwt`'s ES256 signature is the key's, as the openssl command
  -- line checks it (r and s made a DER ECDSA-Sig-Value first).
  local function openssl_verifies(jwt)
    local signing, sig = jwt:match("^(.*)%.([^.]+)$")
    local raw = unb64url(sig)
    local function der_int(b)
      b = b:gsub("^%z+", "")
      if b:byte(1) >= 0x80 then b = "\0" .. b end
      return "\2" .. string.char(#b) .. b
    end
    local body = der_int(raw:sub(1, 32)) .. der_int(raw:sub(33, 64))
    local dir = helpers.tmpdir()
    helpers.write(dir .. "/key.pem", KEY)
    helpers.write(dir .. "/msg", signing)
    helpers.write(dir .. "/sig", "\48" .. string.char(#body) .. body)
    local out = helpers.sh(("cd %q && openssl ec -in key.pem -pubout -out pub.pem 2>/dev/null && "
      .. "openssl dgst -sha256 -verify pub.pem -signature sig msg 2>&1"):format(dir))
    helpers.rmdir(dir)
    return out:match("Verified OK") ~= nil
  end

  it("gives the cached credentials while they last, asking nothing", function()
    local dir = home { [".aws/config"] = CONFIG, [FILE] = token(3600) }
    local creds, ttl = resolve({ HOME = dir, AWS_PROFILE = "signin", AWS_ENDPOINT_URL_SIGNIN = "http://127.0.0.1:9" })
    assert.are.same({ access_key_id = "ASIALOGIN", secret_access_key = "login/secret", session_token = "login-token" },
      creds)
    assert.is_true(ttl > 3590 and ttl <= 3600)
    helpers.rmdir(dir)
  end)

  it("says what is missing, and that `aws login` makes it", function()
    local dir = home { [".aws/config"] = CONFIG }
    local _, err = resolve({ HOME = dir, AWS_PROFILE = "signin" })
    assert.matches("no cached login session " .. SESSION, err, 1, true)
    assert.matches("run `aws login`", err, 1, true)
    os.execute(("mkdir -p %q"):format(dir .. "/.aws/login/cache"))
    for field, over in pairs { refreshToken = { refreshToken = cjson.null }, clientId = { clientId = cjson.null },
      dpopKey = { dpopKey = cjson.null }, accessToken = { accessToken = cjson.null } } do
      helpers.write(dir .. "/" .. FILE, (token(3600, over):gsub('"' .. field .. '":null,?', ""):gsub(",}", "}")))
      _, err = resolve({ HOME = dir, AWS_PROFILE = "signin" })
      assert.matches("lacks " .. field, err, 1, true)
    end
    helpers.write(dir .. "/" .. FILE, "{not json")
    _, err = resolve({ HOME = dir, AWS_PROFILE = "signin" })
    assert.matches("is not JSON", err, 1, true)
    helpers.rmdir(dir)
  end)

  it("renews expired credentials at AWS Sign-In with a DPoP proof, and writes them back", function()
    local seen = {}
    with_mock({ routes = { ["/v1/token"] = function(req)
      seen[#seen + 1] = req
      return { headers = { ["content-type"] = "application/json" }, body = cjson.encode { accessToken = {
        accessKeyId = "NEWREFRESHEDKEY", secretAccessKey = "newRefreshedSecretKey", sessionToken = "newRefreshedSessionToken" },
        tokenType = "aws_sigv4", expiresIn = 900, refreshToken = "new_refresh_token" } }
    end } }, function(srv)
      local dir = home { [".aws/config"] = CONFIG, [FILE] = token(-60) }
      local env = { HOME = dir, AWS_PROFILE = "signin", AWS_ENDPOINT_URL_SIGNIN = srv.url }
      local creds, ttl = resolve(env)
      assert.are.same({ access_key_id = "NEWREFRESHEDKEY", secret_access_key = "newRefreshedSecretKey",
        session_token = "newRefreshedSessionToken" }, creds)
      assert.is_true(ttl > 890 and ttl <= 900)
      -- the request: the refresh token, as JSON, with a DPoP proof for this very URL
      local req = seen[1]
      assert.are.equal("POST", req.method)
      assert.are.equal("application/json", req.headers["content-type"])
      assert.are.same({ clientId = "arn:aws:signin:::devtools/same-device", grantType = "refresh_token",
        refreshToken = "valid_refresh" }, cjson.decode(req.body))
      local proof = req.headers["dpop"]
      local h, p = proof:match("^([^.]+)%.([^.]+)%.[^.]+$")
      assert.are.same({ typ = "dpop+jwt", alg = "ES256", jwk = { kty = "EC", crv = "P-256", x = X, y = Y } },
        cjson.decode(unb64url(h)))
      local claims = cjson.decode(unb64url(p))
      assert.are.equal("POST", claims.htm)
      assert.are.equal(srv.url .. "/v1/token", claims.htu)
      assert.is_true(math.abs(claims.iat - os.time()) <= 5)
      assert.matches("^%x%x%x%x%x%x%x%x%-%x%x%x%x%-4%x%x%x%-[89ab]%x%x%x%-%x+$", claims.jti)
      assert.is_true(openssl_verifies(proof))
      -- the cache: the new credentials and refresh token, the account and key kept, for its owner only
      local cached = cjson.decode(helpers.read(dir .. "/" .. FILE))
      assert.are.equal("NEWREFRESHEDKEY", cached.accessToken.accessKeyId)
      assert.are.equal("012345678901", cached.accessToken.accountId)
      assert.are.equal("new_refresh_token", cached.refreshToken)
      assert.are.equal(KEY, cached.dpopKey)
      assert.are.equal("arn:aws:signin:::devtools/same-device", cached.clientId)
      assert.is_true(creds_mod.epoch(cached.accessToken.expiresAt) - os.time() > 890)
      assert.matches("^%-rw%-%-%-%-%-%-%-", helpers.sh(("ls -l %q"):format(dir .. "/" .. FILE)))
      -- the next process reads what was written back: no second request
      assert(resolve(env))
      assert.are.equal(1, #seen)
      helpers.rmdir(dir)
    end)
  end)

  it("says the session ended when AWS Sign-In refuses, and keeps credentials that have not run out", function()
    local answer = { status = 400, headers = { ["content-type"] = "application/json" },
      body = '{"error":"TOKEN_EXPIRED","message":"The refresh token has expired."}' }
    with_mock({ routes = { ["/v1/token"] = function() return answer end } }, function(srv)
      local dir = home { [".aws/config"] = CONFIG, [FILE] = token(-60) }
      local env = { HOME = dir, AWS_PROFILE = "signin", AWS_ENDPOINT_URL_SIGNIN = srv.url }
      local _, err = resolve(env)
      assert.matches("the login session " .. SESSION .. " cannot be renewed: the login session has expired: run "
        .. "`aws login` again", err, 1, true)
      assert.is_nil(err:find("valid_refresh", 1, true))
      -- two minutes left: the renewal fails, the credentials still serve
      helpers.write(dir .. "/" .. FILE, token(120))
      local creds, ttl = resolve(env)
      assert.are.equal("ASIALOGIN", creds.access_key_id)
      assert.is_true(ttl <= 120)
      -- an unusable key, or no region to renew in, is said
      helpers.write(dir .. "/" .. FILE, token(-60, { dpopKey = "-----BEGIN EC PRIVATE KEY-----\nxx\n" }))
      _, err = resolve(env)
      assert.matches("its dpopKey is not a P-256 EC private key", err, 1, true)
      helpers.write(dir .. "/.aws/config", "[profile signin]\nlogin_session = " .. SESSION .. "\n")
      helpers.write(dir .. "/" .. FILE, token(-60))
      _, err = resolve(env)
      assert.matches("no region to renew it in", err, 1, true)
      helpers.rmdir(dir)
    end)
  end)
end)
