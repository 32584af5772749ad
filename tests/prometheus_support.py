"""A strict parser of the Prometheus text exposition format (0.0.4) for the metrics
tests: every sample line must follow a ``# TYPE`` of its family, label values are
unescaped (``\\\\``, ``\\"``, ``\\n``) and anything malformed fails the test."""

from __future__ import annotations

import math
import re

import msgspec

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(rf"({_NAME})(?:\{{(.*)\}})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\\\|\\"|\\n)*)"(,|$)')

Key = tuple[str, frozenset[tuple[str, str]]]


class Exposition(msgspec.Struct, kw_only=True):
    types: dict[str, str]
    helps: dict[str, str]
    samples: dict[Key, float]

    def value(self, name: str, **labels: str) -> float:
        return self.samples[(name, frozenset(labels.items()))]

    def get(self, name: str, **labels: str) -> float | None:
        return self.samples.get((name, frozenset(labels.items())))

    def series(self, name: str) -> dict[frozenset[tuple[str, str]], float]:
        return {labels: v for (n, labels), v in self.samples.items() if n == name}


def _unescape(value: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "\\":
            nxt = value[i + 1]
            out.append({"\\": "\\", '"': '"', "n": "\n"}[nxt])
            i += 2
            continue
        out.append(ch)
        i += 1
    return "".join(out)


def _labels(text: str) -> frozenset[tuple[str, str]]:
    pairs: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        match = _LABEL.match(text, pos)
        assert match is not None, f"bad labels at {text[pos:]!r}"
        pairs.append((match.group(1), _unescape(match.group(2))))
        pos = match.end()
    names = [n for n, _ in pairs]
    assert len(names) == len(set(names)), f"repeated label in {text!r}"
    return frozenset(pairs)


def _number(text: str) -> float:
    return {"+Inf": math.inf, "-Inf": -math.inf, "NaN": math.nan}.get(text) or float(text)


def parse(text: str) -> Exposition:
    assert text.endswith("\n"), "the exposition ends with a newline"
    exposition = Exposition(types={}, helps={}, samples={})
    family: str | None = None
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, help_text = line[len("# HELP ") :].partition(" ")
            exposition.helps[name] = help_text
            continue
        if line.startswith("# TYPE "):
            name, _, kind = line[len("# TYPE ") :].partition(" ")
            assert kind in ("counter", "gauge", "histogram", "summary", "untyped"), line
            assert name not in exposition.types, f"family {name} declared twice"
            exposition.types[name] = kind
            family = name
            continue
        assert not line.startswith("#") and line.strip(), f"unexpected line {line!r}"
        match = _SAMPLE.fullmatch(line)
        assert match is not None, f"bad sample line {line!r}"
        name, labels, value = match.groups()
        assert family is not None and name in (
            family,
            f"{family}_bucket",
            f"{family}_sum",
            f"{family}_count",
        ), f"sample {name} outside its family ({family})"
        key = (name, _labels(labels or ""))
        assert key not in exposition.samples, f"duplicate sample {line!r}"
        exposition.samples[key] = _number(value)
    return exposition
