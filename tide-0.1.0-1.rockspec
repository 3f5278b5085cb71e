-- LuaRocks package. `luarocks make` builds the C module with CMake and
-- installs the Lua layer listed below; lua-cjson comes from the system
-- (Debian: lua-cjson) or from LuaRocks.
rockspec_format = "3.0"
package = "tide"
version = "0.1.0-1"
source = {
  url = "git+file://.",
}
description = {
  summary = "A Lua-scriptable LLM agent runtime with a C core",
  detailed = [[
tide runs LLM agents from Lua scripts: tasks on a libuv loop, HTTP to model
providers through libcurl, a shared integration cache with prewarmed
sessions, spawn-depth-gated sub-agents, hot-reloaded prompts.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.4, < 5.5",
  "lua-cjson >= 2.1",
}
-- libuv, libcurl, libcrypto and zlib are found by CMake through pkg-config (Debian keeps
-- curl.h in a multiarch directory that LuaRocks' own header probe misses).
build = {
  type = "cmake",
  variables = {
    CMAKE_BUILD_TYPE = "Release",
    CMAKE_INSTALL_PREFIX = "$(PREFIX)",
    LUA_INCDIR = "$(LUA_INCDIR)",
    LUA_LIBDIR = "$(LIBDIR)",
    LUA_LUADIR = "$(LUADIR)",
    TIDE_BENCH = "OFF",
  },
  install = {
    lua = {
      ["tide"] = "lua/tide/init.lua",
      ["tide.agents"] = "lua/tide/agents.lua",
      ["tide.agents_loader"] = "lua/tide/agents_loader.lua",
      ["tide.approval"] = "lua/tide/approval.lua",
      ["tide.budget"] = "lua/tide/budget.lua",
      ["tide.bytecode"] = "lua/tide/bytecode.lua",
      ["tide.chat"] = "lua/tide/chat.lua",
      ["tide.chat_mcp"] = "lua/tide/chat_mcp.lua",
      ["tide.cluster"] = "lua/tide/cluster.lua",
      ["tide.compaction"] = "lua/tide/compaction.lua",
      ["tide.config"] = "lua/tide/config.lua",
      ["tide.content"] = "lua/tide/content.lua",
      ["tide.history"] = "lua/tide/history.lua",
      ["tide.http"] = "lua/tide/http.lua",
      ["tide.integrations"] = "lua/tide/integrations/init.lua",
      ["tide.integrations.cache"] = "lua/tide/integrations/cache.lua",
      ["tide.integrations.cluster_cache"] = "lua/tide/integrations/cluster_cache.lua",
      ["tide.integrations.composio"] = "lua/tide/integrations/composio.lua",
      ["tide.integrations.mcp"] = "lua/tide/integrations/mcp.lua",
      ["tide.integrations.mcp_client_tasks"] = "lua/tide/integrations/mcp_client_tasks.lua",
      ["tide.integrations.mcp_elicitation"] = "lua/tide/integrations/mcp_elicitation.lua",
      ["tide.integrations.mcp_oauth"] = "lua/tide/integrations/mcp_oauth.lua",
      ["tide.integrations.mcp_resources"] = "lua/tide/integrations/mcp_resources.lua",
      ["tide.integrations.mcp_sampling"] = "lua/tide/integrations/mcp_sampling.lua",
      ["tide.integrations.mcp_sse"] = "lua/tide/integrations/mcp_sse.lua",
      ["tide.integrations.mcp_tasks"] = "lua/tide/integrations/mcp_tasks.lua",
      ["tide.integrations.mcp_telemetry"] = "lua/tide/integrations/mcp_telemetry.lua",
      ["tide.integrations.several"] = "lua/tide/integrations/several.lua",
      ["tide.integrations.static"] = "lua/tide/integrations/static.lua",
      ["tide.json"] = "lua/tide/json.lua",
      ["tide.prices"] = "lua/tide/prices.lua",
      ["tide.prompts"] = "lua/tide/prompts.lua",
      ["tide.queue"] = "lua/tide/queue.lua",
      ["tide.provider"] = "lua/tide/provider/init.lua",
      ["tide.provider.anthropic"] = "lua/tide/provider/anthropic.lua",
      ["tide.provider.aws"] = "lua/tide/provider/aws.lua",
      ["tide.provider.aws_credentials"] = "lua/tide/provider/aws_credentials.lua",
      ["tide.provider.azure"] = "lua/tide/provider/azure.lua",
      ["tide.provider.base"] = "lua/tide/provider/base.lua",
      ["tide.provider.bedrock"] = "lua/tide/provider/bedrock.lua",
      ["tide.provider.errors"] = "lua/tide/provider/errors.lua",
      ["tide.provider.exchange"] = "lua/tide/provider/exchange.lua",
      ["tide.provider.fallback"] = "lua/tide/provider/fallback.lua",
      ["tide.provider.google"] = "lua/tide/provider/google.lua",
      ["tide.provider.limits"] = "lua/tide/provider/limits.lua",
      ["tide.provider.openai"] = "lua/tide/provider/openai.lua",
      ["tide.provider.reply"] = "lua/tide/provider/reply.lua",
      ["tide.provider.responses"] = "lua/tide/provider/responses.lua",
      ["tide.provider.retry"] = "lua/tide/provider/retry.lua",
      ["tide.redact"] = "lua/tide/redact.lua",
      ["tide.schema"] = "lua/tide/schema.lua",
      ["tide.session"] = "lua/tide/session.lua",
      ["tide.subagent"] = "lua/tide/subagent.lua",
      ["tide.surface"] = "lua/tide/surface.lua",
      ["tide.testing"] = "lua/tide/testing.lua",
      ["tide.testing.cassette"] = "lua/tide/testing/cassette.lua",
      ["tide.testing.composio"] = "lua/tide/testing/composio.lua",
      ["tide.testing.demo"] = "lua/tide/testing/demo.lua",
      ["tide.tool"] = "lua/tide/tool.lua",
      ["tide.tool_protocol"] = "lua/tide/tool_protocol.lua",
      ["tide.tracing"] = "lua/tide/tracing.lua",
      ["tide.mcp_server"] = "lua/tide/mcp_server.lua",
      ["tide.metrics"] = "lua/tide/metrics.lua",
      ["tide.transcript"] = "lua/tide/transcript.lua",
      ["tide.transcript_redis"] = "lua/tide/transcript_redis.lua",
      ["tide.turn"] = "lua/tide/turn.lua",
      ["tide.worker_cmd"] = "lua/tide/worker_cmd.lua",
    },
    bin = {
      ["tide"] = "bin/tide",
      ["tide-mock"] = "bin/tide-mock",
    },
  },
}
