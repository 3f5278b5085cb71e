-- The agent of rows 9 and 14: one lookup, then the answer (two round trips).
return { id = "scaler", prompt = "You look one thing up, then answer.", tools = { require("bench.fixtures").lookup() } }
