-- The agent of row 13's one-at-a-time turns: no tools, one round trip.
return { id = "echoer", prompt = "You answer." }
