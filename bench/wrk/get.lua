-- GET /v1/users/{id}: ids at random from the file in args[1], bearer token args[2].
local ids = {}
function init(args)
  for line in io.lines(args[1]) do table.insert(ids, line) end
  math.randomseed(os.time() + (tid or 0) * 7919)
  wrk.headers["Authorization"] = "Bearer " .. args[2]
end
function request()
  return wrk.format("GET", "/v1/users/" .. ids[math.random(#ids)])
end
