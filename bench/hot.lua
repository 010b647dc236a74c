-- wrk: 16 hot keys whose origin answers after 20 ms.
local counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", "/hot/" .. (counter % 16) .. "?size=1024&delay=20")
end
