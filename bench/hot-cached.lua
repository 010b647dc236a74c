-- wrk: 16 hot keys whose origin answers after 20 ms with Cache-Control: public, max-age=1.
-- The /cached/ route has coalesce-proxy's response cache on.
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/cached/hot/" .. (counter % 16) .. "?size=1024&delay=20&header=cache-control:public,%20max-age=1")
end
