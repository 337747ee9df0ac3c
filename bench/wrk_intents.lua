-- wrk load for POST /process_trade (or /process_trades with a batch size): a mix of opening, adding
-- and closing intents on eight symbols, each with its own intent_id, every decision written.
-- usage: wrk -s bench/wrk_intents.lua URL -- KEY TAG [BATCH]
local symbols = {"EURUSD", "GBPUSD", "AUDUSD", "NZDUSD", "USDJPY", "USDCHF", "USDCAD", "EURGBP"}
local prices = {1.10, 1.25, 0.65, 0.60, 150.0, 0.90, 1.35, 0.88}
local threads = {}
local counter = 0

function setup(thread)
  thread:set("tid", #threads + 1)
  table.insert(threads, thread)
end

function init(args)
  key, tag, batch = args[1], args[2], tonumber(args[3] or "0")
  math.randomseed(os.time() * 1000 + tid)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = "Bearer " .. key
  approved, rejected, errors = 0, 0, 0
end

local function intent()
  counter = counter + 1
  local i = math.random(#symbols)
  local direction = (math.random() < 0.65) and 1 or -1
  return string.format(
    '{"symbol":"%s","direction":%d,"confidence_score":%.3f,"regime":"%s","atr":%.6f,' ..
    '"vol_percentile":%.2f,"current_price":%.5f,"intent_id":"%s-%d-%d"}',
    symbols[i], direction, 0.6 + math.random() * 0.35,
    ({"TRENDING", "RANGING", "VOLATILE"})[math.random(3)],
    prices[i] * (0.004 + math.random() * 0.01), math.random() * 0.9, prices[i], tag, tid, counter)
end

function request()
  if batch > 0 then
    local items = {}
    for n = 1, batch do items[n] = intent() end
    return wrk.format(nil, nil, nil, '{"intents":[' .. table.concat(items, ",") .. ']}')
  end
  return wrk.format(nil, nil, nil, intent())
end

function response(status, headers, body)
  if status ~= 200 then
    errors = errors + 1
    return
  end
  local _, a = body:gsub('"status":"APPROVED"', "")
  local _, r = body:gsub('"status":"REJECTED"', "")
  approved = approved + a
  rejected = rejected + r
end

function done(summary, latency, requests)
  local a, r, e = 0, 0, 0
  for _, t in ipairs(threads) do
    a = a + t:get("approved")
    r = r + t:get("rejected")
    e = e + t:get("errors")
  end
  io.write(string.format('RESULT {"requests":%d,"seconds":%.3f,"p50_ms":%.2f,"p99_ms":%.2f,"max_ms":%.2f,' ..
    '"approved":%d,"rejected":%d,"errors":%d,"socket_errors":%d}\n',
    summary.requests, summary.duration / 1e6, latency:percentile(50) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, a, r, e,
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
