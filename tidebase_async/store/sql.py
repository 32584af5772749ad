"""Loads the named statements of queries.sql once."""

from __future__ import annotations

import re
from importlib import resources

_NAME = re.compile(r"^-- name: (\w+)\s*$", re.MULTILINE)
_INCLUDE = re.compile(r"/\* include (\w+)(?: \$(\d+))? \*/")


def _load() -> dict[str, str]:
    text = resources.files("tidebase_async.store").joinpath("queries.sql").read_text("utf-8")
    parts = _NAME.split(text)
    queries: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        lines = [ln for ln in body.strip().splitlines() if not ln.lstrip().startswith("--")]
        queries[name] = "\n".join(lines).strip()
    # Fragments (names starting with "_") are spliced in where a statement says
    # /* include _name */, or /* include _name $N */ for a fragment that reads a
    # parameter it calls $ARG; they are not statements themselves.
    fragments = {k: v for k, v in queries.items() if k.startswith("_")}

    def splice(m: re.Match[str]) -> str:
        text = fragments[m.group(1)]
        return text if m.group(2) is None else text.replace("$ARG", "$" + m.group(2))

    return {k: _INCLUDE.sub(splice, v) for k, v in queries.items() if not k.startswith("_")}


Q: dict[str, str] = _load()


def migrations() -> list[tuple[int, str, str]]:
    """(version, name, sql) of every migration, in order."""
    folder = resources.files("tidebase_async.store").joinpath("migrations")
    found: list[tuple[int, str, str]] = []
    for entry in folder.iterdir():
        match = re.fullmatch(r"(\d{4})_(\w+)\.sql", entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort()
    for expected, (version, name, _) in enumerate(found, start=1):
        if version != expected:
            raise RuntimeError(f"migration numbering has a gap at {version:04d}_{name}")
    return found
