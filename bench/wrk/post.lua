-- POST /v1/users: a unique email per request (prefix args[1]), bearer token args[2].
local n = 0
local nonce = ""
function init(args)
  nonce = args[1]
  wrk.method = "POST"
  wrk.headers["Authorization"] = "Bearer " .. args[2]
  wrk.headers["Content-Type"] = "application/json"
end
function request()
  n = n + 1
  local body = string.format(
    '{"email":"http-%s-t%d-%d@example.com","first_name":"Bench","last_name":"User %d"}',
    nonce, tid or 0, n, n)
  return wrk.format(nil, "/v1/users", nil, body)
end
