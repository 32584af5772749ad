"""The report workflow behind Starlette (FastAPI-compatible) routes; see README.md."""
