-- An agent without `when_to_use`: tide mcp-server offers it only when named.
return { id = "quiet", prompt = "You say little." }
