"""Regression tests of the review fixes that need no database."""

from __future__ import annotations

import pytest

from tidebase_async import ConfigurationError, Run, Tidebase

#: An annotation msgspec refuses to build a decoder for (two array-like types in a union).
Undecodable = list[int] | tuple[int, ...]


def _tide() -> Tidebase:
    return Tidebase("postgresql://nobody@127.0.0.1:1/never-connected")


def test_a_workflow_whose_input_type_msgspec_cannot_decode_is_refused_at_registration() -> None:
    tide = _tide()

    async def bad_input(run: Run, input: Undecodable) -> None:
        return None

    with pytest.raises(ConfigurationError) as refused:
        tide.workflow("bad-input")(bad_input)
    assert "'bad-input'" in str(refused.value)
    assert "input" in str(refused.value)
    assert "bad-input" not in tide.workflows


def test_a_workflow_whose_return_type_msgspec_cannot_decode_is_refused_at_registration() -> None:
    tide = _tide()

    async def bad_output(run: Run) -> Undecodable:
        return [1]

    with pytest.raises(ConfigurationError) as refused:
        tide.workflow("bad-output")(bad_output)
    assert "'bad-output'" in str(refused.value)
    assert "return" in str(refused.value)
    assert "bad-output" not in tide.workflows
