"""The report workflow behind aiohttp routes; see README.md."""
