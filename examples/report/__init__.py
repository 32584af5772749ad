"""The ``generate-report`` workflow and a demo of a run surviving a killed worker."""

from __future__ import annotations
