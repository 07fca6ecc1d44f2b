-- The local router's fast path, run inside nginx (see nginx_front.py, which writes the
-- nginx configuration that loads this module).
--
-- It takes over only the requests whose whole handling is a choice of backend: live and
-- version-pinned inference (REST POST .../infer, gRPC ModelInfer) while nothing is
-- mirrored. It decides exactly what the Python router would decide for them, and hands
-- every other request (health, metadata, preview, mirrored traffic, any path it does not
-- recognise byte for byte) to the Python router unchanged. The routing config lives in a
-- shared dict that the Python router writes, so a change of split never reloads nginx
-- and never closes a client's connection. Every request served here is queued in the
-- same dict, with its version, kind, code and latency, for the Python router's
-- statistics and metrics.
local ffi = require("ffi")
local cjson = require("cjson.safe")
local balancer = require("ngx.balancer")

local M = {}
local shared = ngx.shared.rollout
local MAX_QUEUE = 200000  -- records kept when the Python router stops draining

ffi.cdef[[
typedef struct { long tv_sec; long tv_nsec; } rollout_timespec_t;
int clock_gettime(int clk_id, rollout_timespec_t *tp);
int prctl(int option, unsigned long arg2, unsigned long arg3, unsigned long arg4, unsigned long arg5);
]]
local timespec = ffi.new("rollout_timespec_t")

-- init_worker_by_lua: a worker exits when its master dies (PR_SET_PDEATHSIG, SIGTERM);
-- otherwise a killed master leaves its workers holding the ports, serving a config nobody
-- can change, and the router can neither adopt that nginx nor start a new one.
function M.init_worker()
  ffi.C.prctl(1, 15, 0, 0, 0)
end

local function now_ms()  -- CLOCK_MONOTONIC: nginx's own clock has only millisecond steps
  ffi.C.clock_gettime(1, timespec)
  return tonumber(timespec.tv_sec) * 1000 + tonumber(timespec.tv_nsec) / 1e6
end

-- The config, decoded once per change: {stable, candidate, weight, mirror, rest = {v =
-- "host:port"}, grpc = {v = "host:port"}}; by_addr maps an address back to its version.
local cached_gen, cfg = nil, nil

local function config()
  local gen = shared:get("gen")
  if gen ~= cached_gen then
    local decoded = gen and cjson.decode(shared:get("config") or "")
    if decoded then
      decoded.by_addr = {}
      for _, map in ipairs({decoded.rest or {}, decoded.grpc or {}}) do
        for version, addr in pairs(map) do decoded.by_addr[addr] = version end
      end
    end
    cfg, cached_gen = decoded, gen
  end
  return cfg
end

local function choose(c)
  if c.candidate ~= ngx.null and c.candidate and math.random() * 100.0 < c.weight then
    return c.candidate
  end
  if c.stable == ngx.null then return nil end
  return c.stable
end

local function other_of(c, version)
  local other = version == c.stable and c.candidate or c.stable
  if other == ngx.null then return nil end
  return other
end

local function as_list(value)
  if value == nil then return {} end
  if type(value) == "table" then return value end
  return {value}
end

local function dot_segment(s)
  return s == "." or s == ".."
end

-- What the Python router drops besides what nginx drops itself (Connection, Keep-Alive,
-- TE, Upgrade, Expect, Host, Content-Length, Transfer-Encoding): RFC 9110's other
-- hop-by-hop fields, and the two headers the front sets for the Python router.
local HOP_BY_HOP = {"proxy-connection", "proxy-authenticate", "proxy-authorization", "trailer", "trailers",
                    "x-rollout-peer", "x-rollout-connection"}  -- the front's own, never a client's

-- Append this hop to Forwarded (RFC 7239) and X-Forwarded-For, as proxying.add_forwarded.
local function add_forwarded(headers, host)
  local peer = ngx.var.remote_addr
  local node = peer:find(":", 1, true) and ('"[' .. peer .. ']"') or peer
  local quoted = host:gsub("\\", "\\\\"):gsub('"', '\\"')
  local forwarded = as_list(headers["forwarded"])
  local element = "for=" .. node .. ";proto=" .. ngx.var.scheme .. ';host="' .. quoted .. '"'
  local all = {}
  for i, v in ipairs(forwarded) do all[i] = v end
  all[#all + 1] = element
  ngx.req.set_header("Forwarded", table.concat(all, ", "))
  local xff = {}
  for i, v in ipairs(as_list(headers["x-forwarded-for"])) do xff[i] = v end
  xff[#xff + 1] = peer
  ngx.req.set_header("X-Forwarded-For", table.concat(xff, ", "))
end

-- Connection may name only keep-alive or close here; a request naming other headers as
-- hop-by-hop goes to the Python router, which drops them.
local function plain_connection(headers)
  for _, value in ipairs(as_list(headers["connection"])) do
    for token in value:gmatch("[^,%s]+") do
      local t = token:lower()
      if t ~= "keep-alive" and t ~= "close" then return false end
    end
  end
  return true
end

local function take(version, kind, addr, other_addr)
  ngx.var.rollout_version = version
  ngx.var.rollout_kind = kind
  ngx.var.rollout_t0 = now_ms()
  ngx.var.rollout_other = other_addr or ""
  ngx.ctx.addr = addr
  shared:incr("inflight:" .. version, 1, 0)
end

local REST_PATH = [[^/v2/models/([A-Za-z0-9_.~-]+)/(?:versions/([A-Za-z0-9_.~-]+)/)?infer(?:\?|$)]]

function M.rest_access()
  local c = config()
  if not c or ngx.req.get_method() ~= "POST" then return ngx.exec("@python") end
  local m = ngx.re.match(ngx.var.request_uri, REST_PATH, "jo")
  if not m or dot_segment(m[1]) or (m[2] and dot_segment(m[2])) then return ngx.exec("@python") end
  local headers, err = ngx.req.get_headers(100)
  local host = ngx.var.http_host
  if err == "truncated" or not host or host == "" or not plain_connection(headers) then
    return ngx.exec("@python")
  end
  local version, kind
  if m[2] then
    version, kind = m[2], "pinned"
  elseif (c.mirror or 0) > 0 then
    ngx.var.rollout_mirrored = "1"  -- see unmirrored()
    return ngx.exec("@python")  -- mirrored traffic: the answers are compared in Python
  else
    version, kind = choose(c), "live"
  end
  local addr = version and c.rest[version]
  if not addr then return ngx.exec("@python") end
  local other = kind == "live" and other_of(c, version)
  for _, name in ipairs(HOP_BY_HOP) do
    if headers[name] then ngx.req.clear_header(name) end
  end
  add_forwarded(headers, host)
  ngx.var.rollout_host = addr
  take(version, kind, addr, other and c.rest[other])
end

-- The model_version field (2) of a ModelInferRequest in a gRPC frame; nil when the
-- frame cannot be read without decoding more than this (compressed, cut short).
local function varint(s, i)
  local value, scale = 0, 1
  while true do
    local b = s:byte(i)
    if not b then return nil end
    i = i + 1
    if b < 128 then return value + b * scale, i end
    value = value + (b - 128) * scale
    scale = scale * 128
    if scale > 2 ^ 56 then return nil end
  end
end

local function model_version(body)
  if #body < 5 or body:byte(1) ~= 0 then return nil end
  local n = ((body:byte(2) * 256 + body:byte(3)) * 256 + body:byte(4)) * 256 + body:byte(5)
  local i, stop = 6, math.min(6 + n, #body + 1)
  local version = ""
  while i < stop do
    local tag
    tag, i = varint(body, i)
    if not tag then return nil end
    local field, wire = math.floor(tag / 8), tag % 8
    if wire == 0 then
      local _
      _, i = varint(body, i)
      if not i then return nil end
    elseif wire == 2 then
      local len
      len, i = varint(body, i)
      if not len then return nil end
      if field == 2 then version = body:sub(i, i + len - 1) end
      i = i + len
    elseif wire == 1 then
      i = i + 8
    elseif wire == 5 then
      i = i + 4
    else
      return nil
    end
  end
  if i > stop and 6 + n <= #body + 1 then return nil end  -- a field ran past a whole message
  return version
end

local function body_head()
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  if body then return body end
  local path = ngx.req.get_body_file()
  if not path then return nil end
  local f = io.open(path, "rb")
  if not f then return nil end
  local head = f:read(65536)
  f:close()
  return head
end

function M.grpc_access()
  local c = config()
  if not c then return ngx.exec("@python_grpc") end
  local body = body_head()
  local pinned = body and model_version(body)
  if pinned == nil then return ngx.exec("@python_grpc") end
  local version, kind
  if pinned ~= "" then
    version, kind = pinned, "pinned"
  elseif (c.mirror or 0) > 0 then
    ngx.var.rollout_mirrored = "1"  -- see unmirrored()
    return ngx.exec("@python_grpc")
  else
    version, kind = choose(c), "live"
  end
  local addr = version and c.grpc[version]
  if not addr then return ngx.exec("@python_grpc") end
  local other = kind == "live" and other_of(c, version)
  take(version, kind, addr, other and c.grpc[other])
end

-- balancer_by_lua: the chosen version's server, or after a failover (own_error) the other
-- version's. One try: nginx itself grants a request that failed on a pooled connection
-- before any answer (the keep-alive race) one more, on another connection (with
-- proxy_next_upstream non_idempotent); a fresh connection's failure is final.
function M.balance()
  local addr = ngx.var.rollout_failover
  if addr == nil or addr == "" then addr = ngx.ctx.addr end
  if not addr then return ngx.exit(502) end
  local host, port = addr:match("^(.+):(%d+)$")
  local ok, err = balancer.set_current_peer(host, tonumber(port))
  if not ok then
    ngx.log(ngx.ERR, "rollout: cannot use backend ", addr, ": ", err)
    return ngx.exit(502)
  end
end

local function last_item(list)
  return list:match("([^,%s]+)%s*$")
end

local function answered_version(c)
  local addrs = ngx.var.upstream_addr
  local addr = addrs and last_item(addrs)
  local v = addr and c and c.by_addr[addr]
  return v or ngx.var.rollout_version
end

function M.header_filter()
  local v = ngx.var.rollout_version
  if v == nil or v == "" then return end
  -- REST: a header; gRPC: initial metadata, or with the status in a trailers-only error.
  -- (Not a trailer: nginx's add_trailer would split a trailers-only answer in two.)
  ngx.header["x-rollout-version"] = answered_version(config())
end

local function push(rec)
  if (shared:llen("q") or 0) >= MAX_QUEUE then
    shared:incr("dropped", 1, 0)
    return
  end
  local ok = shared:rpush("q", rec)
  if not ok then shared:incr("dropped", 1, 0) end
end

-- An $upstream_* list: one item per server tried, ", " within one proxying and " : "
-- between two (a failover is a second proxying).
local function split(list)
  local out = {}
  for item in (list or ""):gmatch("[^,%s]+") do
    if item ~= ":" then out[#out + 1] = item end
  end
  return out
end

-- Records: version, kind, code, latency ms, flag; code "" is a server that could not be
-- reached, "g<n>" a gRPC status; flag "t" a timeout.
function M.log()
  local version = ngx.var.rollout_version
  if version == nil or version == "" then return end
  shared:incr("inflight:" .. version, -1, 0)
  local kind = ngx.var.rollout_kind
  local ms = now_ms() - tonumber(ngx.var.rollout_t0)
  local c = config()
  local addrs, statuses = split(ngx.var.upstream_addr), split(ngx.var.upstream_status)
  if #addrs == 0 then
    -- nginx answered before any server was tried (413, a client gone): no request of
    -- the version's, as in the Python router.
    if ngx.status == 502 then push(table.concat({version, kind, "", ms, ""}, "\t")) end
    return
  end
  local connects = split(ngx.var.upstream_connect_time)
  -- Served unmirrored: the attempts before the last were the Python router's, no version's.
  local first_tries = ngx.var.rollout_mirrored == "1" and 0 or #addrs - 1
  for i = 1, first_tries do
    -- A server that refused the connection ("-": never connected) counts against its
    -- version; a pooled connection found closed (the keep-alive race) counts nowhere.
    if connects[i] == "-" then
      local v = c and c.by_addr[addrs[i]] or version
      push(table.concat({v, kind, "", 0, ""}, "\t"))
    end
  end
  local answered = c and c.by_addr[addrs[#addrs]] or version
  local status = statuses[#statuses]
  local code, flag = status, ""
  if ngx.var.rollout_grpc == "1" and status == "200" then
    local g = ngx.var.upstream_trailer_grpc_status
    if g == nil or g == "" then g = ngx.var.upstream_http_grpc_status end
    code = (g and g ~= "") and ("g" .. g) or "g2"
  elseif status == "504" then
    flag = "t"
  elseif status == "502" then
    code = ""
  else
    -- An answer cut short after its headers went out (the client saw it break) is the
    -- server's failure, as the Python router counts it, not the code it began with.
    local expected = tonumber(ngx.var.upstream_http_content_length or "")
    local got = tonumber(split(ngx.var.upstream_response_length)[#addrs] or "")
    if expected and got and got < expected then code = "" end
  end
  push(table.concat({answered, kind, code, ms, flag}, "\t"))
end

-- The router's own errors, in the protocol's shape: JSON {"error": ...} on REST, a
-- trailers-only answer with a grpc-status on gRPC.
local OWN = {
  [400] = {3, "the router could not read the request"},
  [413] = {8, "request body over the router's limit (body_limit_bytes)"},
  [414] = {3, "request line over the router's limit"},
  [494] = {3, "request headers over the router's limit"},
  [500] = {13, "the router failed on this request (its nginx error.log says why)"},
  [502] = {14, "unreachable"},
  [504] = {4, "did not answer in time (backend_timeout_s)"},
}

-- A live request whose server refused the connection (its process is gone: the request
-- never reached it) goes once to the other version of the split, as in the Python router:
-- REST and gRPC ModelInfer alike.
local function failover(status)
  if status ~= 502 or ngx.var.rollout_kind ~= "live" then return false end
  local other = ngx.var.rollout_other
  if other == nil or other == "" or (ngx.var.rollout_failover or "") ~= "" then return false end
  local connects = split(ngx.var.upstream_connect_time)
  if connects[#connects] ~= "-" then return false end
  ngx.var.rollout_failover = other
  if ngx.var.rollout_grpc == "1" then
    ngx.exec("@grpc_resend")
  else
    ngx.var.rollout_host = other
    ngx.exec("@failover")
  end
  return true
end

-- A live request the Python router would have mirrored, when the Python router refused
-- the connection (it crashed or was killed; nginx outlives it until the next router
-- adopts it): served by the split without its shadow copy, as the fast path serves it,
-- rather than refused. The shadow comparison is a sample; live traffic is not.
--
-- The last attempt may also be a pooled connection the dead process reset before any
-- answer (nginx tries each pooled connection once before it connects afresh, and can
-- run out of tries first): then one connect to the same address tells whether the
-- process is gone (refused) or merely failed on this request (it answers; no resend).
local function router_gone()
  local addrs = split(ngx.var.upstream_addr)
  local host, port = (addrs[#addrs] or ""):match("^(.+):(%d+)$")
  if not host then return false end
  local sock = ngx.socket.tcp()
  sock:settimeout(1000)
  local ok, err = sock:connect(host, tonumber(port))
  if ok then
    sock:close()
    return false
  end
  return err == "connection refused"
end

local function unmirrored(status)
  if status ~= 502 or ngx.var.rollout_mirrored ~= "1" or (ngx.var.rollout_version or "") ~= "" then
    return false
  end
  local connects = split(ngx.var.upstream_connect_time)
  local header_times = split(ngx.var.upstream_header_time)
  local refused = connects[#connects] == "-"
  if not refused and not (header_times[#header_times] == "-" and router_gone()) then return false end
  local c = config()
  local grpc = ngx.var.rollout_grpc == "1"
  local version = c and choose(c)
  local addr = version and (grpc and c.grpc or c.rest)[version]
  if not addr then return false end
  if not grpc then
    local headers = ngx.req.get_headers(100)
    for _, name in ipairs(HOP_BY_HOP) do
      if headers[name] then ngx.req.clear_header(name) end
    end
    add_forwarded(headers, ngx.var.http_host)
    ngx.var.rollout_host = addr
  end
  take(version, "live", addr, nil)
  ngx.var.rollout_failover = addr  -- what balance() reads: ngx.ctx does not survive ngx.exec
  ngx.exec(grpc and "@grpc_resend" or "@failover")
  return true
end

function M.own_error(given)
  local status = given or ngx.status
  if failover(status) or unmirrored(status) then return end
  local known = OWN[status] or {13, "router error"}
  local version = ngx.var.rollout_version
  -- After a failover, the version whose server failed last (answered_version), not the
  -- one first chosen.
  if version and version ~= "" then version = answered_version(config()) end
  local message = known[2]
  if (status == 502 or status == 504) and version and version ~= "" then
    message = "backend " .. version .. " " .. message
  elseif status == 502 then
    message = "the router process is not answering"
  end
  if ngx.var.rollout_grpc == "1" then
    -- Headers only, ending the stream: nginx sends that for a 204, which gRPC clients
    -- read by its grpc-status (nginx's documented way to answer gRPC errors).
    ngx.status = 204
    ngx.header["content-type"] = "application/grpc"
    ngx.header["grpc-status"] = known[1]
    ngx.header["grpc-message"] = message
    if version and version ~= "" then ngx.header["x-rollout-version"] = version end
    return ngx.exit(204)
  end
  ngx.status = status
  ngx.header["content-type"] = "application/json"
  ngx.print(cjson.encode({error = message}))
end

-- The internal admin server (loopback). Its /config and /drain answer only the router
-- that started (or adopted) this nginx: it sends the token nginx.conf sets (that file is
-- the owner's alone). Anyone else on the machine could otherwise blank the split or take
-- the records the analysis counts.
local function admin_refused()
  local token = ngx.var.rollout_admin_token
  if token ~= nil and token ~= "" and ngx.var.http_x_rollout_front_token == token then
    return false
  end
  ngx.status = 403
  ngx.print('{"error": "only the router of this nginx may call its admin server"}')
  return true
end

local function is_address_map(map)
  if type(map) ~= "table" then return false end
  for version, addr in pairs(map) do
    if type(version) ~= "string" or type(addr) ~= "string" then return false end
  end
  return true
end

local function is_percent(x)
  return type(x) == "number" and x >= 0 and x <= 100
end

-- Why a config cannot be served, or nil: a split nginx cannot route by is refused here,
-- not found out by every request after it.
local function config_problem(c)
  if type(c) ~= "table" then return "config is not a JSON object" end
  for _, field in ipairs({"stable", "candidate"}) do  -- null: a router given no split yet
    local v = c[field]
    if v ~= nil and v ~= ngx.null and (type(v) ~= "string" or v == "") then
      return field .. " must be a version name or null"
    end
  end
  if not is_percent(c.weight) then return "weight must be a number from 0 to 100" end
  if not is_percent(c.mirror) then return "mirror must be a number from 0 to 100" end
  if not is_address_map(c.rest) then return "rest must map versions to host:port" end
  if not is_address_map(c.grpc) then return "grpc must map versions to host:port" end
  return nil
end

function M.put_config()
  if admin_refused() then return end
  ngx.req.read_body()
  local body = ngx.req.get_body_data()
  local decoded = body and cjson.decode(body)
  local problem = "config is not JSON"
  if decoded then problem = config_problem(decoded) end
  if problem then
    ngx.status = 400
    return ngx.print(cjson.encode({error = problem}))
  end
  shared:set("config", body)
  shared:incr("gen", 1, 0)
  ngx.print('{"ok": true}')
end

function M.drain()
  if admin_refused() then return end
  local lines = {}
  for i = 1, MAX_QUEUE do
    local rec = shared:lpop("q")
    if not rec then break end
    lines[i + 1] = rec
  end
  local inflight = {}
  for _, key in ipairs(shared:get_keys(0)) do
    if key:sub(1, 9) == "inflight:" then inflight[key:sub(10)] = shared:get(key) end
  end
  lines[1] = cjson.encode({inflight = inflight, dropped = shared:get("dropped") or 0, gen = shared:get("gen")})
  ngx.print(table.concat(lines, "\n"))
end

return M
