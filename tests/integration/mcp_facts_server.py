"""A stdio MCP server on the official ``mcp`` SDK for the agent tests: one tool,
``fact``, that appends each call to the file in ``TIDEBASE_MCP_LOG``, so a test sees
how often the server was really called."""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("facts")


@server.tool()
def fact(topic: str) -> str:
    """A fact about ``topic``."""
    with open(os.environ["TIDEBASE_MCP_LOG"], "a") as f:
        f.write(topic + "\n")
    return f"{topic} are pulled by the moon"


if __name__ == "__main__":
    server.run("stdio")
