"""The web layer: signed webhooks and the HTTP API, framework-neutral, with aiohttp and
ASGI adapters (``tide.webhook()``, ``tide.http_app()``, ``tide.asgi_app()``), and the MCP
server (``tide.mcp_app()``, ``tidebase mcp``; the ``mcp`` extra, imported only there)."""

from __future__ import annotations

from tidebase_async._util.signing import DELIVERY_HEADER, SIGNATURE_HEADER, sign, verify

__all__ = ["DELIVERY_HEADER", "SIGNATURE_HEADER", "sign", "verify"]
