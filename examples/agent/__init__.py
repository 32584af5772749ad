"""A durable research agent (Pydantic AI) behind a Starlette app; see README.md."""
