-- wrk: every request a different key, so nothing can coalesce or be cached.
-- PREFIX is "/pass/" for nginx (its uncached location) and "/" elsewhere.
local prefix = os.getenv("PREFIX") or "/"
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", prefix .. "k" .. counter .. "-" .. math.random(1, 1000000000) .. "?size=1024&delay=0")
end
