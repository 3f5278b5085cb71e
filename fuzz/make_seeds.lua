-- Writes the seed corpora in fuzz/corpus/<target>/ (run from the repository
-- root: lua5.4 fuzz/make_seeds.lua). The inputs start with the header bytes
-- each fuzz_<target>.c describes; the rest is realistic provider traffic and
-- prompt templates. Seeds change only when this file does.

local function write(target, name, bytes)
  os.execute("mkdir -p fuzz/corpus/" .. target)
  local f = assert(io.open(("fuzz/corpus/%s/%s"):format(target, name), "wb"))
  f:write(bytes)
  f:close()
end

local function hdr(...) return string.char(...) end

-- ------------------------------------------------------ OpenAI streams --
local function chunk(fields)
  return 'data: {"id":"chatcmpl-A1b2","object":"chat.completion.chunk","created":1718000000,'
    .. '"model":"gpt-4o-mini-2024-07-18","service_tier":"default","system_fingerprint":"fp_0ba0d124f1",'
    .. fields .. "}\n\n"
end
local function choice(delta, finish)
  return chunk(('"choices":[{"index":0,"delta":%s,"logprobs":null,"finish_reason":%s}]'):format(
    delta, finish and ('"' .. finish .. '"') or "null"))
end
local usage = chunk('"choices":[],"usage":{"prompt_tokens":1204,"completion_tokens":38,'
  .. '"total_tokens":1242,"prompt_tokens_details":{"cached_tokens":1024,"audio_tokens":0},'
  .. '"completion_tokens_details":{"reasoning_tokens":0}}')
local done = "data: [DONE]\n\n"

local streams = {
  text = choice('{"role":"assistant","content":"","refusal":null}')
    .. choice('{"content":"Hello"}') .. choice('{"content":", world! \\u00e9\\ud83d\\ude00\\n"}')
    .. choice('{"content":"Line \\"two\\"\\t\\\\ end."}') .. choice("{}", "stop") .. usage .. done,
  tool_calls = choice('{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_Qx7a",'
      .. '"type":"function","function":{"name":"lookup","arguments":""}}]}')
    .. choice('{"tool_calls":[{"index":0,"function":{"arguments":"{\\"q\\""}}]}')
    .. choice('{"tool_calls":[{"index":0,"function":{"arguments":":\\"tide runtime\\"}"}}]}')
    .. choice('{"tool_calls":[{"index":1,"id":"call_Zr2b","type":"function","function":'
      .. '{"name":"delegate_github","arguments":"{\\"task\\":"}}]}')
    .. choice('{"tool_calls":[{"index":1,"function":{"arguments":"\\"list my PRs\\"}"}}]}')
    .. choice("{}", "tool_calls") .. usage .. done,
  -- Parallel calls interleaved, no ids (some servers), a content delta too.
  interleaved = choice('{"content":"Let me check."}')
    .. choice('{"tool_calls":[{"index":1,"function":{"name":"b","arguments":"{"}},'
      .. '{"index":0,"function":{"name":"a","arguments":"[1,"}}]}')
    .. choice('{"tool_calls":[{"index":0,"function":{"arguments":"2]"}},{"index":1,"function":{"arguments":"}"}}]}')
    .. choice('{"tool_calls":[{"index":2,"function":{"name":"c","arguments":{"x":1}}}]}')
    .. choice("{}", "function_call") .. done,
  -- CRLF framing, comments, an event name and id, a BOM, no usage.
  framing = "\xEF\xBB\xBF: OPENROUTER PROCESSING\r\n\r\n"
    .. (choice('{"content":"Hi"}'):gsub("\n", "\r\n")) .. "id: 7\r\nevent: message\r\n"
    .. (choice("{}", "length"):gsub("\n", "\r\n")) .. "data: [DONE]\r\n\r\n",
  error = choice('{"content":"partial "}')
    .. 'data: {"error":{"message":"Rate limit reached for gpt-4o-mini","type":"tokens","code":429}}\n\n' .. done,
  truncated = choice('{"content":"cut off mid-'):sub(1, -4),
  -- Mistral's reasoning models: content as thinking and text chunks.
  mistral = choice('{"role":"assistant","content":""}')
    .. choice('{"content":[{"type":"thinking","thinking":[{"type":"text","text":"The user "}]}]}')
    .. choice('{"content":[{"type":"thinking","thinking":[{"type":"text","text":"asks."},'
      .. '{"type":"reference","reference_ids":[1]}],"signature":"mSig=="}]}')
    .. choice('{"content":[{"type":"text","text":"Sunny"},{"text":" today."}]}')
    .. chunk('"choices":[{"index":0,"delta":{"content":""},"finish_reason":"stop"}],'
      .. '"usage":{"prompt_tokens":12,"completion_tokens":30}') .. done,
  -- OpenRouter's reasoning_details, Gemini 3 behind it.
  openrouter = choice('{"role":"assistant","content":"","reasoning":"Check","reasoning_details":'
      .. '[{"type":"reasoning.text","text":"Check","format":"google-gemini-v1","index":0}]}')
    .. choice('{"reasoning":" weather.","reasoning_details":[{"type":"reasoning.text","text":" weather.",'
      .. '"signature":"CiQB","format":"google-gemini-v1","index":0}]}')
    .. choice('{"reasoning_details":[{"type":"reasoning.encrypted","data":"EjQKMg==","id":"tool_1",'
      .. '"format":"google-gemini-v1","index":0}],"tool_calls":[{"index":0,"id":"tool_1","type":"function",'
      .. '"function":{"name":"lookup","arguments":"{}"}}]}')
    .. choice("{}", "tool_calls") .. usage .. done,
}
write("openai_stream", "text", hdr(0, 0, 0, 0) .. streams.text)
-- A custom tool's call streamed in pieces (openai/openai-openapi#576's shape).
write("openai_stream", "custom", hdr(0, 6, 2, 1)
  .. choice('{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_c1","type":"custom",'
    .. '"custom":{"name":"run_sql","input":""}}]}')
  .. choice('{"tool_calls":[{"index":0,"custom":{"input":"SELECT "}}]}')
  .. choice('{"tool_calls":[{"index":0,"custom":{"input":"1;"}}]}')
  .. choice("{}", "tool_calls") .. usage .. done)
write("openai_stream", "tool_calls", hdr(0, 9, 3, 1) .. streams.tool_calls)
write("openai_stream", "interleaved", hdr(0, 40, 7, 4) .. streams.interleaved)
write("openai_stream", "framing", hdr(0, 2, 11, 2) .. streams.framing)
write("openai_stream", "error", hdr(0, 17, 5, 0) .. streams.error)
write("openai_stream", "truncated", hdr(0, 5, 1, 1) .. streams.truncated)
write("openai_stream", "small_cap", hdr(12, 30, 2, 0) .. streams.tool_calls)
write("openai_stream", "mistral", hdr(0, 11, 4, 2) .. streams.mistral)
write("openai_stream", "openrouter", hdr(0, 23, 6, 1) .. streams.openrouter)
-- Events that each fit a cap of 100 bytes while their arguments together do
-- not: the assembler's cap, not the event's, ends the stream.
write("openai_stream", "calls_cap", hdr(10, 0, 0, 0)
  .. string.rep('data: {"choices":[{"delta":{"tool_calls":[{"index":0,"function":{"arguments":"0123456789"}}]}}]}\n\n', 8)
  .. done)

-- ------------------------------------------------------------- SSE --
write("sse", "openai", hdr(0, 0, 0) .. streams.tool_calls)
write("sse", "openai_chunked", hdr(0, 13, 9) .. streams.text)
write("sse", "framing", hdr(0, 1, 0) .. streams.framing)
write("sse", "fields", hdr(0, 4, 2) .. "retry: 3000\nid: 1\nevent: update\ndata: first\ndata:second\n"
  .. "data\n\n: comment\nid\nevent: ping\ndata:  two spaces\r\rdata: cr only\r\r"
  .. "unknown: x\nid: a\0b\ndata: [DONE]\n\n")
write("sse", "anthropic", hdr(0, 20, 4) .. "event: message_start\ndata: {\"type\":\"message_start\"}\n\n"
  .. "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"delta\":{\"text\":\"Hi\"}}\n\n"
  .. "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n")
write("sse", "small_cap", hdr(5, 3, 1) .. "data: 0123456789\n\ndata: abcdefghijklmnopqrstuvwxyz0123456789\n\n")
write("sse", "unterminated", hdr(0, 2, 8) .. "data: one\n\ndata: two")

-- ---------------------------------------------- non-streamed replies --
local function completion(message, finish, extra)
  return '{"id":"chatcmpl-B3c4","object":"chat.completion","created":1718000001,"model":"gpt-4o-mini",'
    .. '"choices":[{"index":0,"message":' .. message .. ',"logprobs":null,"finish_reason":'
    .. (finish and ('"' .. finish .. '"') or "null") .. '}],'
    .. '"usage":{"prompt_tokens":19,"completion_tokens":10,"total_tokens":29,'
    .. '"prompt_tokens_details":{"cached_tokens":0}}' .. (extra or "") .. '}'
end
write("openai_parse", "text", hdr(0, 40, 0) .. completion(
  '{"role":"assistant","content":"Hello! How can I help you today? \\u00e9\\n","refusal":null}', "stop"))
write("openai_parse", "tool_calls", hdr(0, 100, 1) .. completion(
  '{"role":"assistant","content":null,"tool_calls":[{"id":"call_abc123","type":"function",'
  .. '"function":{"name":"get_weather","arguments":"{\\"city\\": \\"Paris\\"}"}},'
  .. '{"id":"call_def456","type":"function","function":{"name":"lookup","arguments":"  "}}]}',
  "tool_calls", ',"service_tier":"default"'))
-- A custom (freeform) tool's call beside a function's: its input is text.
write("openai_parse", "custom", hdr(0, 30, 1) .. completion(
  '{"role":"assistant","content":null,"tool_calls":[{"id":"call_c1","type":"custom",'
  .. '"custom":{"name":"apply_patch","input":"*** Begin Patch\\n*** End Patch\\n"}},'
  .. '{"id":"call_f1","type":"function","function":{"name":"lookup","arguments":"{}"}}]}', "tool_calls"))
write("openai_parse", "no_ids", hdr(0, 7, 0) .. completion(
  '{"role":"assistant","content":"","tool_calls":[{"function":{"name":"a"}},{"id":"call_1",'
  .. '"function":{"name":"b","arguments":"{}"}}]}', "tool_calls"))
write("openai_parse", "error", hdr(0, 3, 1) .. '{"error":{"message":"Invalid API key","type":'
  .. '"invalid_request_error","param":null,"code":"invalid_api_key"}}')
write("openai_parse", "object_args", hdr(0, 60, 0) .. completion(
  '{"role":"assistant","tool_calls":[{"id":"x","function":{"name":"f","arguments":{"n":1}}}]}', "stop"))
write("openai_parse", "small_cap", hdr(4, 20, 1) .. completion('{"content":"x"}', "length"))
write("openai_parse", "mistral", hdr(0, 50, 0) .. completion('{"role":"assistant","content":[{"type":"thinking",'
  .. '"thinking":[{"type":"text","text":"Two and two."}],"signature":"s"},{"type":"text","text":"4"}]}', "stop"))
write("openai_parse", "openrouter", hdr(0, 70, 1) .. completion('{"role":"assistant","content":null,"reasoning":"r",'
  .. '"reasoning_details":[{"type":"reasoning.text","text":"r","signature":"sig","index":0},'
  .. '{"type":"reasoning.encrypted","data":"E=","index":1}],"tool_calls":[{"id":"c1","type":"function",'
  .. '"function":{"name":"f","arguments":"{}"}}]}', "tool_calls"))
write("openai_parse", "whitespace", hdr(0, 0, 0) .. ' \r\n\t{ "choices" : [ { "message" : { "content" : '
  .. '"a\\/b" } , "finish_reason" : "end_turn" } ] , "usage" : { "prompt_tokens" : 1e1 , '
  .. '"completion_tokens" : 2.5 } }\n')

-- ------------------------------------------------------ tool-call deltas --
-- One add: op byte, index byte, then id, name, fragment (each a length
-- byte and bytes when its mode is 2).
local function add(index, id, name, frag, show)
  local op, tail = 0, ""
  for k, v in ipairs({ id, name, frag }) do
    local mode = v == nil and 0 or v == "" and 1 or 2
    op = op | (mode << (2 * (k - 1)))
    if mode == 2 then tail = tail .. string.char(#v) .. v end
  end
  if show then op = op | 128 end
  return string.char(op, index) .. tail
end
write("tool_calls", "two_calls", hdr(0) .. add(0, "call_Qx7a", "lookup", "") .. add(0, nil, nil, '{"q"')
  .. add(0, nil, nil, ':"tide"}', true) .. add(1, "call_Zr2b", "delegate_github", '{"task":')
  .. add(1, nil, nil, '"list PRs"}', true))
write("tool_calls", "out_of_order", hdr(0) .. add(3, nil, "c", "{") .. add(1, "", "a", "[")
  .. add(2, "id2", nil, nil) .. add(1, "id1", "ignored", "]") .. add(3, nil, nil, "}", true)
  .. "\255" .. add(0, "after_reset", "r", "{}", true))
write("tool_calls", "small_cap", hdr(9) .. add(0, "call_1", "name", "0123456789")
  .. add(1, nil, nil, "0123456789012345678901234567890123456789012345678901234567890123456789", true)
  .. add(2, "x", "y", "z", true) .. "\255" .. add(0, "id", "n", "{}", true))
write("tool_calls", "big_index", hdr(0) .. string.char(64 | 2 | 128) .. string.pack("<i8", math.maxinteger)
  .. "\3abc" .. add(7, "", "", "", true))

-- ------------------------------------------------------------ templates --
for _, name in ipairs({ "orchestrator", "integrations_agent", "subagent_contract", "welcome" }) do
  local f = assert(io.open("prompts/" .. name .. ".md", "rb"))
  write("template", name, f:read("a"))
  f:close()
end
write("template", "sections", "{{#list}}{{name}}: {{#tags}}[{{.}}]{{/tags}}{{^tags}}none{{/tags}}\n{{/list}}"
  .. "{{#obj}}{{a.b.c}} {{name}}{{/obj}} {{{s}}}{{& i}} {{n}} {{f}} {{big}} {{yes}}{{no}}{{null}}\n"
  .. "{{#nums}}{{.}},{{/nums}} {{^empty}}empty{{/empty}} {{#t}}t{{/t}}{{! a note }}\n")
write("template", "partials", "Team:\n  {{> a}}\n{{#list}}\n  {{>b}}\n{{/list}}\r\n> {{>a}} x\n"
  .. "\0item {{name}}\nsecond line\n\0- {{#name}}{{name}}{{/name}}{{^name}}{{.}}{{/name}}\n")
write("template", "standalone", "Begin.\n{{!\nsomething\n}}\nEnd.\n  {{#yes}}\r\nx\r\n  {{/yes}}\r\n"
  .. " {{#a}}x{{/a}} \n#{{#yes}}\n/\n  {{/yes}}")
write("template", "errors", "{{#list}}{{/nums}}\0{{name\0{{=<% %>=}} {{}} {{> }} {{a..b}} {{/x}}")
write("template", "render_errors", "{{t}} {{fn}} {{#fn}}x{{/fn}} {{missing}} {{> missing}} {{> bad}}"
  .. " {{meta.x}} {{meta.boom}} {{#self}}{{/self}}")
write("template", "normalise", "  \r\n\ttext   \n\n\n\nmore\t \r\n\r\n\r\nend  \v\f\r\r\n")

-- ---------------------------------------------------- schema validation --
local person = '{"type":"object","additionalProperties":false,"required":["name","tags"],'
  .. '"properties":{"name":{"type":"string","minLength":1},"age":{"type":"integer","minimum":0},'
  .. '"tags":{"type":"array","items":{"type":"string"}},"role":{"enum":["admin","user"]}}}'
write("schema", "valid", hdr(0) .. person .. "\0" .. '{"name":"Ada","age":36,"tags":[]}')
write("schema", "invalid", hdr(0) .. person .. "\0" .. '{"name":"","age":1.5,"tags":[1],"x":true}')
write("schema", "fenced", hdr(0) .. person .. "\0" .. '```json\n{"name":"Bo","tags":["a"]}\n```')
write("schema", "refs", hdr(0) .. '{"$defs":{"id":{"type":"integer"}},"anyOf":[{"$ref":"#/$defs/id"},'
  .. '{"type":"null"}],"oneOf":[{"type":"integer"},{"type":"number"}]}' .. "\0" .. "3")
write("schema", "prose", hdr(0) .. person .. "\0" .. "I think it is Ada.")

-- ---------------------------------------------------- Anthropic streams --
local function aev(name, data) return ("event: %s\ndata: %s\n\n"):format(name, data) end
local astart = aev("message_start", '{"type":"message_start","message":{"id":"msg_01","type":"message",'
  .. '"role":"assistant","model":"claude-sonnet-4-5","content":[],"stop_reason":null,"usage":'
  .. '{"input_tokens":13,"cache_read_input_tokens":0,"cache_creation_input_tokens":14015,"output_tokens":1,'
  .. '"cache_creation":{"ephemeral_5m_input_tokens":15,"ephemeral_1h_input_tokens":14000},'
  .. '"service_tier":"standard"}}}')
local astop = aev("message_delta", '{"type":"message_delta","delta":{"stop_reason":"tool_use",'
  .. '"stop_sequence":null},"usage":{"output_tokens":42}}') .. aev("message_stop", '{"type":"message_stop"}')
write("anthropic_stream", "thinking_tool", hdr(0, 7, 3, 0) .. astart
  .. aev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me look."}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQBCgIYAhIM"}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":0}')
  .. aev("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Checking."}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":1}')
  .. aev("content_block_start", '{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_01","name":"lookup","input":{}}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\": \\"ti"}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"de\\"}"}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":2}') .. astop)
write("anthropic_stream", "error", hdr(0, 0, 0, 1) .. astart
  .. aev("error", '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}'))
write("anthropic_stream", "ping_text", hdr(0, 3, 9, 2) .. astart .. aev("ping", '{"type":"ping"}')
  .. aev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi \\u00e9"}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":0}')
  .. aev("message_delta", '{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}')
  .. aev("message_stop", '{"type":"message_stop"}'))

write("anthropic_stream", "redacted_parallel", hdr(0, 11, 5, 0) .. astart
  .. aev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"redacted_thinking","data":"EmwKAhgBEgy3"}}')
  .. aev("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_a","name":"lookup","input":{}}}')
  .. aev("content_block_start", '{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_b","name":"clock","input":{"tz":"UTC","n":[1,2.5e3,{}]}}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\":"}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\\"x\\"}"}}')
  .. aev("message_delta", '{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"input_tokens":20,'
    .. '"cache_read_input_tokens":9,"cache_creation_input_tokens":0,"output_tokens":30}}')
  .. aev("message_stop", '{"type":"message_stop"}'))
-- a web search (server tools): the use's input in fragments, the result
-- whole, a citation before the text, a paused turn's stop
write("anthropic_stream", "server_tools", hdr(0, 9, 7, 0) .. astart
  .. aev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"text","text":"Let me search."}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":0}')
  .. aev("content_block_start", '{"type":"content_block_start","index":1,"content_block":{"type":"server_tool_use","id":"srvtoolu_01","name":"web_search","input":{},"caller":{"type":"direct"}}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\\"query\\": \\"ti"}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"des\\"}"}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":1}')
  .. aev("content_block_start", '{"type":"content_block_start","index":2,"content_block":{"type":"web_search_tool_result","tool_use_id":"srvtoolu_01","content":[{"type":"web_search_result","url":"https://a.example/","title":"A","encrypted_content":"EqENC","page_age":null}]}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":2}')
  .. aev("content_block_start", '{"type":"content_block_start","index":3,"content_block":{"type":"text","text":""}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":3,"delta":{"type":"citations_delta","citation":{"type":"web_search_result_location","url":"https://a.example/","title":"A","encrypted_index":"EqIDX","cited_text":"high at 6"}}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":3,"delta":{"type":"text_delta","text":"High tide is at 6."}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":3}')
  .. aev("content_block_start", '{"type":"content_block_start","index":4,"content_block":{"type":"server_tool_use","id":"srvtoolu_02","name":"web_search","input":{}}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":4,"delta":{"type":"input_json_delta","partial_json":"{\\"query\\":\\"moon\\"}"}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":4}')
  .. aev("message_delta", '{"type":"message_delta","delta":{"stop_reason":"pause_turn"},"usage":{"output_tokens":50,'
    .. '"output_tokens_details":{"thinking_tokens":7},"server_tool_use":{"web_search_requests":1}}}')
  .. aev("message_stop", '{"type":"message_stop"}'))
write("anthropic_stream", "cut", hdr(0, 5, 2, 0) .. astart
  .. aev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hm"}}'))

-- The same streams as Bedrock frames them (an AWS event stream: header byte
-- 3 // 3 % 2 == 1), made as the mock makes them (tide.testing.aws_frame,
-- with the normal build's tide.core: run from the repository root after
-- building).
package.cpath = "build/?.so;" .. package.cpath
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local core = require "tide.core"
local es_frame = require("tide.testing").aws_frame
local function bedrock(sse)
  local out = {}
  for data in sse:gmatch("data: ([^\n]*)\n") do
    out[#out + 1] = es_frame({ { ":event-type", "chunk" }, { ":content-type", "application/json" },
      { ":message-type", "event" } }, '{"bytes":"' .. core.base64(data) .. '","p":"abcdefghijklmnopq"}')
  end
  return table.concat(out)
end
local bedrock_text = bedrock(astart .. aev("content_block_start", '{"type":"content_block_start","index":0,'
  .. '"content_block":{"type":"text","text":""}}') .. aev("content_block_delta", '{"type":"content_block_delta",'
  .. '"index":0,"delta":{"type":"text_delta","text":"Hi \\u00e9"}}') .. aev("content_block_stop",
  '{"type":"content_block_stop","index":0}') .. aev("message_delta", '{"type":"message_delta","delta":'
  .. '{"stop_reason":"end_turn"},"usage":{"output_tokens":3}}') .. aev("message_stop", '{"type":"message_stop",'
  .. '"amazon-bedrock-invocationMetrics":{"inputTokenCount":13,"outputTokenCount":3,"invocationLatency":412,'
  .. '"firstByteLatency":180}}'))
write("anthropic_stream", "bedrock_text", hdr(0, 5, 3, 3) .. bedrock_text)
write("anthropic_stream", "bedrock_tool", hdr(0, 13, 4, 4) .. bedrock(astart
  .. aev("content_block_start", '{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_01","name":"lookup","input":{}}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\\"q\\": \\"ti"}}')
  .. aev("content_block_delta", '{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"de\\"}"}}')
  .. aev("content_block_stop", '{"type":"content_block_stop","index":0}') .. astop))
write("anthropic_stream", "bedrock_exception", hdr(0, 0, 0, 5) .. bedrock(astart)
  .. es_frame({ { ":exception-type", "throttlingException" }, { ":content-type", "application/json" },
    { ":message-type", "exception" } }, '{"message":"Too many requests, please wait before trying again."}'))
write("anthropic_stream", "bedrock_bad_crc", hdr(0, 7, 1, 3) .. bedrock_text:sub(1, -2) .. "\0")
-- (the driver mends the CRCs of this one: 9 // 6 % 2 == 1)
write("anthropic_stream", "bedrock_mended", hdr(0, 7, 1, 9) .. bedrock_text:sub(1, -2) .. "\0")

-- ---------------------------------------------- Anthropic whole replies --
local function amsg(content, stop)
  return '{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":' .. content
    .. ',"stop_reason":' .. (stop and ('"' .. stop .. '"') or "null") .. ',"stop_sequence":null,'
    .. '"usage":{"input_tokens":13,"cache_creation_input_tokens":14015,"cache_read_input_tokens":0,"output_tokens":42,'
    .. '"cache_creation":{"ephemeral_5m_input_tokens":15,"ephemeral_1h_input_tokens":14000}}}'
end
write("anthropic_parse", "text", hdr(0, 40) .. amsg('[{"type":"text","text":"Hello! \\u00e9\\n"}]', "end_turn"))
write("anthropic_parse", "thinking_tools", hdr(0, 90) .. amsg('[{"type":"thinking","thinking":"Let me look.",'
  .. '"signature":"EqQBCgIYAhIM"},{"type":"redacted_thinking","data":"EmwKAhgB"},{"type":"text","text":"Checking."},'
  .. '{"type":"tool_use","id":"toolu_01","name":"lookup","input":{"q":"tide","n":3,"f":0.5,"l":[],"o":{"b":1,"a":2}}},'
  .. '{"type":"tool_use","id":"toolu_02","name":"clock","input":{}}]', "tool_use"))
write("anthropic_parse", "server_tools", hdr(0, 70) .. amsg('[{"type":"text","text":"Let me search."},'
  .. '{"type":"server_tool_use","id":"srvtoolu_01","name":"web_search","input":{"query":"tides"},"caller":{"type":"direct"}},'
  .. '{"type":"web_search_tool_result","tool_use_id":"srvtoolu_01","content":[{"type":"web_search_result",'
  .. '"url":"https://a.example/","title":"A","encrypted_content":"EqENC","page_age":null}]},'
  .. '{"type":"text","text":"High tide is at 6.","citations":[{"type":"web_search_result_location",'
  .. '"url":"https://a.example/","title":"A","encrypted_index":"EqIDX","cited_text":"high at 6"}]},'
  .. '{"type":"tool_use","id":"toolu_01","name":"lookup","input":{"q":"harbour"}}]', "tool_use"))
write("anthropic_parse", "error", hdr(0, 3) .. '{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}')
write("anthropic_parse", "no_signature", hdr(0, 20) .. amsg('[{"type":"thinking","thinking":"x"}]', "end_turn"))
write("anthropic_parse", "small_cap", hdr(3, 30) .. amsg('[{"type":"tool_use","id":"t","name":"f","input":{"long":"'
  .. string.rep("a", 40) .. '"}}]', "tool_use"))

-- ---------------------------------------------------- Responses streams --
-- As the API sends them (openai-python's ResponseStreamEvent types): the
-- final response echoes the request's instructions and tools.
local function rev(name, data) return ("event: %s\ndata: %s\n\n"):format(name, data) end
local rbase = '"id":"resp_01","object":"response","model":"gpt-5","service_tier":"flex","instructions":"You are terse.",'
  .. '"tools":[{"type":"function","name":"lookup","parameters":{"type":"object"},"strict":false}],'
  .. '"status":"%s","output":%s,"usage":%s'
local rusage = '{"input_tokens":120,"input_tokens_details":{"cached_tokens":64},"output_tokens":17,'
  .. '"output_tokens_details":{"reasoning_tokens":9},"total_tokens":137}'
local rmsg = '{"type":"message","id":"msg_1","role":"assistant","status":"completed",'
  .. '"content":[{"type":"output_text","text":"Hello \\u00e9","annotations":[]},{"type":"refusal","refusal":"no"}]}'
local rcall = function(n) return ('{"type":"function_call","id":"fc_%d","call_id":"call_%d","name":"lookup",'
  .. '"arguments":"{\\"q\\":\\"tide %d\\"}","status":"completed"}'):format(n, n, n) end
local rreason = '{"type":"reasoning","id":"rs_1","summary":[{"type":"summary_text","text":"First."},'
  .. '{"type":"summary_text","text":"Second."}],"encrypted_content":"gAAAAB0a1b2c3d4=="}'
local rstreams = {
  text_and_call = rev("response.created", '{"type":"response.created","sequence_number":0,"response":{' .. rbase:format("in_progress", "[]", "null") .. '}}')
    .. rev("response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":1,"item_id":"msg_1","output_index":0,"content_index":0,"delta":"Hello"}')
    .. rev("response.output_item.done", '{"type":"response.output_item.done","sequence_number":2,"output_index":1,"item":' .. rcall(1) .. '}')
    .. rev("response.completed", '{"type":"response.completed","sequence_number":3,"response":{'
      .. rbase:format("completed", "[" .. rmsg .. "," .. rcall(1) .. "]", rusage) .. '}}'),
  -- Reasoning (summary deltas, encrypted content) and two parallel calls;
  -- the final output left out, so the held items count.
  reasoning_calls = rev("response.output_item.added", '{"type":"response.output_item.added","sequence_number":0,"output_index":0,"item":{"type":"reasoning","id":"rs_1","summary":[]}}')
    .. rev("response.reasoning_summary_text.delta", '{"type":"response.reasoning_summary_text.delta","sequence_number":1,"item_id":"rs_1","output_index":0,"summary_index":0,"delta":"First."}')
    .. rev("response.output_item.done", '{"type":"response.output_item.done","sequence_number":2,"output_index":0,"item":' .. rreason .. '}')
    .. rev("response.function_call_arguments.delta", '{"type":"response.function_call_arguments.delta","sequence_number":3,"item_id":"fc_1","output_index":1,"delta":"{\\"q\\""}')
    .. rev("response.output_item.done", '{"type":"response.output_item.done","sequence_number":4,"output_index":1,"item":' .. rcall(1) .. '}')
    .. rev("response.output_item.done", '{"type":"response.output_item.done","sequence_number":5,"output_index":2,"item":' .. rcall(2) .. '}')
    .. rev("response.completed", '{"type":"response.completed","sequence_number":6,"response":{' .. rbase:format("completed", "[]", rusage) .. '}}'),
  -- A server that names no events: everything told apart by "type".
  unnamed = 'data: {"type":"response.output_text.delta","delta":"Hi"}\n\n'
    .. 'data: {"type":"response.reasoning_text.delta","delta":"hmm"}\n\n'
    .. 'data: {"type":"response.output_item.done","item":' .. rcall(3) .. '}\n\n'
    .. 'data: {"response":{"status":"completed","output":[]},"type":"response.completed"}\n\n',
  incomplete = rev("response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":1,"delta":"cut"}')
    .. rev("response.incomplete", '{"type":"response.incomplete","sequence_number":2,"response":{' .. rbase:format("incomplete", "[]", "null")
      .. ',"incomplete_details":{"reason":"max_output_tokens"}}}'),
  failed = rev("response.failed", '{"type":"response.failed","sequence_number":1,"response":{' .. rbase:format("failed", "[]", "null")
      .. ',"error":{"code":"server_error","message":"boom"}}}')
    .. rev("error", '{"type":"error","code":"rate_limit_exceeded","message":"slow down"}'),
  error_mid = rev("response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":1,"delta":"par"}')
    .. rev("error", '{"type":"error","sequence_number":2,"code":"server_error","message":"The server had an error.","param":null}'),
  cut = rev("response.output_text.delta", '{"type":"response.output_text.delta","sequence_number":1,"delta":"never finished"}')
    .. 'event: response.completed\ndata: {"type":"response.completed","response":{"status":"comp',
}
write("responses_stream", "text_and_call", hdr(0, 9, 4, 0) .. rstreams.text_and_call)
local rcustom = '{"type":"custom_tool_call","id":"ctc_1","call_id":"call_c1","name":"run_sql","input":"SELECT 1;",'
  .. '"status":"completed"}'
write("responses_stream", "custom", hdr(0, 11, 3, 1)
  .. rev("response.output_item.added", '{"type":"response.output_item.added","sequence_number":0,"output_index":0,'
    .. '"item":{"type":"custom_tool_call","id":"ctc_1","call_id":"call_c1","name":"run_sql","input":"","status":"in_progress"}}')
  .. rev("response.custom_tool_call_input.delta", '{"type":"response.custom_tool_call_input.delta","sequence_number":1,'
    .. '"item_id":"ctc_1","output_index":0,"delta":"SELECT "}')
  .. rev("response.custom_tool_call_input.done", '{"type":"response.custom_tool_call_input.done","sequence_number":2,'
    .. '"item_id":"ctc_1","output_index":0,"input":"SELECT 1;"}')
  .. rev("response.output_item.done", '{"type":"response.output_item.done","sequence_number":3,"output_index":0,"item":' .. rcustom .. '}')
  .. rev("response.completed", '{"type":"response.completed","sequence_number":4,"response":{'
    .. rbase:format("completed", "[" .. rcustom .. "]", rusage) .. '}}'))
write("responses_stream", "reasoning_calls", hdr(0, 13, 6, 1) .. rstreams.reasoning_calls)
write("responses_stream", "unnamed", hdr(0, 3, 8, 0) .. rstreams.unnamed)
write("responses_stream", "incomplete", hdr(0, 5, 2, 1) .. rstreams.incomplete)
write("responses_stream", "failed", hdr(0, 0, 0, 0) .. rstreams.failed)
write("responses_stream", "error_mid", hdr(0, 7, 1, 0) .. rstreams.error_mid)
write("responses_stream", "cut", hdr(0, 4, 3, 2) .. rstreams.cut)
write("responses_stream", "small_cap", hdr(9, 30, 2, 0) .. rstreams.reasoning_calls)

-- ---------------------------------------------------- Responses bodies --
write("responses_parse", "completed", hdr(0, 40, 0) .. "{" .. rbase:format("completed",
  "[" .. rreason .. "," .. rmsg .. "," .. rcall(1) .. "," .. rcall(2) .. ',{"type":"web_search_call","id":"ws_1"}]', rusage) .. "}")
write("responses_parse", "hosted", hdr(0, 40, 0) .. "{" .. rbase:format("completed", "["
  .. '{"type":"file_search_call","id":"fs_1","status":"completed","queries":["tides"],"results":null},'
  .. '{"type":"code_interpreter_call","id":"ci_1","status":"completed","container_id":"cntr_1","code":"print(1)",'
  .. '"outputs":[{"type":"logs","logs":"1"}]},'
  .. '{"type":"image_generation_call","id":"ig_1","status":"completed","result":"iVBORw0KGgo="},'
  .. '{"type":"mcp_list_tools","id":"mcpl_1","server_label":"wiki","tools":[{"name":"ask","input_schema":{}}]},'
  .. '{"type":"mcp_call","id":"mcp_1","server_label":"wiki","name":"ask","arguments":"{}","output":"6","error":null},'
  .. '{"type":"mcp_approval_request","id":"mcpr_1","server_label":"wiki","name":"ask","arguments":"{}"},'
  .. '{"type":"compaction","id":"cmp_1","encrypted_content":"gAAAAABcmp0a1b2=="},'
  .. rmsg .. "]", rusage) .. "}")
write("responses_parse", "incomplete", hdr(0, 10, 0) .. "{" .. rbase:format("incomplete", "[" .. rmsg .. "]", rusage)
  .. ',"incomplete_details":{"reason":"content_filter"}}')
write("responses_parse", "failed", hdr(0, 3, 0) .. "{" .. rbase:format("failed", "[]", "null")
  .. ',"error":{"code":"rate_limit_exceeded","message":"Slow down."}}')
write("responses_parse", "custom", hdr(0, 25, 0) .. "{" .. rbase:format("completed", "["
  .. '{"type":"custom_tool_call","id":"ctc_1","call_id":"call_c1","name":"apply_patch",'
  .. '"input":"*** Begin Patch\\n*** End Patch\\n","status":"completed"},' .. rcall(2) .. "]", rusage) .. "}")
write("responses_parse", "bad_item", hdr(0, 0, 0) .. '{"status":"completed","output":[{"type":"function_call","name":"x"}]}')
write("responses_parse", "small_cap", hdr(7, 20, 0) .. "{" .. rbase:format("completed", "[" .. rcall(1) .. "]", rusage) .. "}")

-- ---------------------------------------------------------------- MCP --
write("mcp", "json_tools", hdr(0, 7) .. '{"jsonrpc":"2.0","id":2,"result":{"tools":[{"name":"echo","description":"Echoes.",'
  .. '"inputSchema":{"type":"object","properties":{"message":{"type":"string"}},"required":["message"]},'
  .. '"annotations":{"destructiveHint":false}}],"nextCursor":"2"}}')
write("mcp", "sse_call", hdr(1, 5) .. 'event: message\ndata: {"jsonrpc":"2.0","id":3,"result":{"content":[{"type":"text",'
  .. '"text":"Echo: hi"},{"type":"image","mimeType":"image/png","data":"iVBO"}],"structuredContent":{"a":[]}}}\n\n')
write("mcp", "error_batch", hdr(0, 0) .. '[{"jsonrpc":"2.0","id":4,"error":{"code":-32602,"message":"bad"}},'
  .. '{"jsonrpc":"2.0","method":"notifications/tools/list_changed"}]')
-- A tool call's stream with the server's own request in it (sampling), as
-- server-everything sends it over Streamable HTTP.
write("mcp", "sse_request", hdr(1, 11) .. 'event: message\nid: 1\ndata: {"method":"sampling/createMessage",'
  .. '"params":{"messages":[{"role":"user","content":{"type":"text","text":"hi"}}],"maxTokens":100},'
  .. '"jsonrpc":"2.0","id":0}\n\nevent: message\nid: 2\ndata: {"result":{"content":[{"type":"text",'
  .. '"text":"LLM sampling result"}]},"jsonrpc":"2.0","id":3}\n\n')

-- A 401's WWW-Authenticate value (the challenge parser takes any body).
write("mcp", "www_authenticate", hdr(0, 3) .. 'Basic realm="x", Bearer error="insufficient_scope", '
  .. 'scope="files:read files:write", resource_metadata="https://mcp.example.com/.well-known/oauth-protected-resource", '
  .. 'error_description="say \\"hi\\""')

-- ------------------------------------------- AWS event streams (Converse) --
-- Bedrock's Converse stream as the raw decoder reads it (header byte 3 odd:
-- the driver mends the CRCs first).
local function cframe(name, payload)
  return es_frame({ { ":event-type", name }, { ":content-type", "application/json" },
    { ":message-type", "event" } }, payload)
end
local converse = cframe("messageStart", '{"p":"abcdef","role":"assistant"}')
  .. cframe("contentBlockDelta", '{"contentBlockIndex":0,"delta":{"reasoningContent":{"text":"Let me"}},"p":"ab"}')
  .. cframe("contentBlockDelta", '{"contentBlockIndex":0,"delta":{"reasoningContent":{"signature":"EqQB"}},"p":"a"}')
  .. cframe("contentBlockStop", '{"contentBlockIndex":0,"p":"abcdefgh"}')
  .. cframe("contentBlockStart", '{"contentBlockIndex":1,"start":{"toolUse":{"toolUseId":"tooluse_1","name":"lookup"}},"p":"abc"}')
  .. cframe("contentBlockDelta", '{"contentBlockIndex":1,"delta":{"toolUse":{"input":"{\\"q\\":\\"ti"}},"p":"abcd"}')
  .. cframe("contentBlockDelta", '{"contentBlockIndex":1,"delta":{"toolUse":{"input":"de\\"}"}},"p":"ab"}')
  .. cframe("contentBlockStop", '{"contentBlockIndex":1,"p":"abcdefghij"}')
  .. cframe("messageStop", '{"p":"abcdefghijklmnop","stopReason":"tool_use"}')
  .. cframe("metadata", '{"metrics":{"latencyMs":412},"p":"abc","usage":{"inputTokens":13,"outputTokens":9,"totalTokens":22}}')
write("aws_eventstream", "converse", hdr(0, 0, 0, 0) .. converse)
write("aws_eventstream", "converse_cut", hdr(0, 9, 5, 0) .. converse)
write("aws_eventstream", "exception", hdr(0, 13, 2, 0) .. cframe("messageStart", '{"p":"ab","role":"assistant"}')
  .. es_frame({ { ":exception-type", "modelStreamErrorException" }, { ":content-type", "application/json" },
    { ":message-type", "exception" } }, '{"message":"The model stream failed.","originalStatusCode":500}'))
write("aws_eventstream", "bad_crc", hdr(0, 7, 1, 0) .. converse:sub(1, -2) .. "\0")
write("aws_eventstream", "mended", hdr(0, 7, 1, 1) .. converse:sub(1, -2) .. "\0")
write("aws_eventstream", "small_cap", hdr(3, 11, 4, 0) .. converse)
write("aws_eventstream", "unfinished", hdr(0, 5, 3, 0) .. converse:sub(1, -20))

-- ---------------------------------------------------------------- OTLP --
-- A span's name, its error, then attribute and event pairs (fuzz_otlp.c).
local function pieces(...) return table.concat({ ... }, "\0") end
write("otlp", "chat", pieces("chat gpt-4o-mini", "", "gen_ai.operation.name", "chat", "gen_ai.usage.input_tokens",
  "i1204", "gen_ai.response.finish_reasons", "ltool_calls", "retry", "i2", "half", "f7", "flag", "b1"))
write("otlp", "tool_bytes", pieces("execute_tool lookup", "broke \255 here", "gen_ai.tool.call.result",
  "caf\195\255 bytes \240\159\152", "gen_ai.tool.call.id", "call_\237\160\128", "k\192\175", "overlong"))
write("otlp", "long", pieces("n", "e", "long", ("\195\169"):rep(33000) .. "x"))
