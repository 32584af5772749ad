"""The report examples' workflows, tested with the testing kit as their authors would.

``examples.report.workflow`` (plan, fetch sources, write) has a module-level Tidebase,
which the kit opens on each test's database. ``examples.report.approval`` (the web
examples' workflow, with an approval gate) is registered by ``register(tide)`` on a
Tidebase the app makes; the tests register it on their own, with no fake step delay.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any
from uuid import UUID

import msgspec
import pytest

from examples.report import approval, workflow
from tidebase_async import Run, Tidebase
from tidebase_async.testing import ReplayIncompatible, TideEnv

TOPIC = "durable workflows"
APPROVAL_STEPS = ["plan", "fetch-sources", "write-draft", approval.GATE, "send"]


def executed(out: str) -> list[str]:
    """The steps the report workflow says it executed (replayed steps print nothing)."""
    return [line.split("executing step '")[1].split("'")[0] for line in out.splitlines()]


@pytest.fixture
async def reports(tide_env: TideEnv) -> Tidebase:
    """The approval workflow on a Tidebase opened on the test's database, as the web
    examples' worker modules register it (without the fake one-second step delays)."""
    tide = Tidebase()
    approval.register(tide, step_delay=0)
    return await tide_env.client(tide)


# -- examples/report/workflow.py --------------------------------------------------------


async def test_report_is_planned_fetched_and_written(
    tide_env: TideEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    tide = await tide_env.client(workflow.tide)
    handle = await tide.enqueue(workflow.WORKFLOW, input=workflow.ReportInput(topic=TOPIC))
    await tide_env.run_until_idle()

    info = await tide.runs.get(handle.id)
    assert info.status == "completed", info.error
    assert info.attempt == 1
    report = msgspec.convert(info.output, workflow.Report)
    assert report.topic == TOPIC
    assert report.title == f"A short report on {TOPIC}"
    assert report.text.startswith(report.title + "\n")
    assert (report.sections, report.sources) == (4, 8)
    assert report.words == len(report.text.split())
    # The progress the UI polls ends at "done".
    assert info.state == {"stage": "done", "progress": 1.0}
    assert await tide_env.step_names(handle.id) == list(workflow.STEPS)
    assert executed(capsys.readouterr().out) == list(workflow.STEPS)
    await tide_env.assert_replay_compatible(handle.id)


async def test_same_dedupe_key_makes_one_active_report(tide_env: TideEnv) -> None:
    tide = await tide_env.client(workflow.tide)
    payload = workflow.ReportInput(topic=TOPIC)
    first = await tide.enqueue(workflow.WORKFLOW, input=payload, dedupe_key=TOPIC)
    again = await tide.enqueue(workflow.WORKFLOW, input=payload, dedupe_key=TOPIC)
    assert (again.id, again.deduplicated) == (first.id, True)
    await tide_env.run_until_idle()
    assert (await tide.runs.get(first.id)).status == "completed"

    # Finished, the key is free again: the next enqueue is a new report.
    later = await tide.enqueue(workflow.WORKFLOW, input=payload, dedupe_key=TOPIC)
    assert later.id != first.id and not later.deduplicated
    await tide_env.run_until_idle()
    assert (await tide.runs.get(later.id)).status == "completed"


async def test_failed_attempt_is_retried_from_its_checkpoints(
    tide_env: TideEnv, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # write-report fails once (the demo SIGKILLs a worker there instead); the second
    # attempt, after the workflow's retry backoff, replays plan and fetch-sources.
    calls: list[int] = []
    real = workflow.write_report

    def flaky(outline: workflow.Outline, sources: list[workflow.Source]) -> workflow.Report:
        calls.append(len(calls) + 1)
        if len(calls) == 1:
            raise ConnectionError("the mail relay hung up")
        return real(outline, sources)

    monkeypatch.setattr(workflow, "write_report", flaky)
    tide = await tide_env.client(workflow.tide)
    handle = await tide.enqueue(workflow.WORKFLOW, input=workflow.ReportInput(topic=TOPIC))
    await tide_env.run_until_idle()
    await tide_env.advance(timedelta(minutes=5))  # past any backoff of the retry

    info = await tide.runs.get(handle.id)
    assert info.status == "completed", info.error
    assert info.attempt == 2
    assert calls == [1, 2]
    assert msgspec.convert(info.output, workflow.Report).topic == TOPIC
    # plan and fetch-sources ran on the first attempt only; write-report printed once,
    # on the attempt that got past the failure.
    assert executed(capsys.readouterr().out) == list(workflow.STEPS)
    assert [s.status for s in await tide_env.steps(handle.id)] == ["completed"] * 3


# -- examples/report/approval.py ---------------------------------------------------------


async def enqueue_report(tide: Tidebase, topic: str = TOPIC) -> UUID:
    handle = await tide.enqueue(
        approval.WORKFLOW, input=approval.ReportInput(topic=topic), queue=approval.QUEUE
    )
    return handle.id


async def test_report_waits_for_approval_then_is_sent(tide_env: TideEnv, reports: Tidebase) -> None:
    run_id = await enqueue_report(reports)
    await tide_env.run_until_idle()

    info = await reports.runs.get(run_id)
    assert info.status == "waiting"
    assert info.state == {"progress": {"stage": "awaiting approval", "percent": 75}}
    [gate] = info.gates
    assert (gate.name, gate.status) == (approval.GATE, "pending")
    assert gate.prompt == f"Send 'A short report on {TOPIC}'?"
    assert gate.data["title"] == f"A short report on {TOPIC}"
    assert "send" not in await tide_env.step_names(run_id)

    gate = await tide_env.resolve_gate(run_id, approval.GATE, payload={"comment": "ship it"})
    assert gate.decision == "approved"
    await tide_env.run_until_idle()

    info = await reports.runs.get(run_id)
    assert info.status == "completed", info.error
    output = msgspec.convert(info.output, approval.ReportOutput)
    assert output.sent and output.decided_by == "test"
    assert output.receipt is not None
    assert output.receipt.to == "readers@example.org"
    assert output.receipt.message_id.startswith("msg-")
    assert info.state == {"progress": {"stage": "sent", "percent": 100}}
    assert await tide_env.step_names(run_id) == APPROVAL_STEPS
    [decision] = [s for s in await tide_env.steps(run_id) if s.kind == "gate"]
    assert decision.output["payload"] == {"comment": "ship it"}
    await tide_env.assert_replay_compatible(run_id)


async def test_rejected_report_is_not_sent(tide_env: TideEnv, reports: Tidebase) -> None:
    run_id = await enqueue_report(reports)
    await tide_env.run_until_idle()
    await tide_env.resolve_gate(run_id, approval.GATE, approved=False, actor="bob")
    await tide_env.run_until_idle()

    info = await reports.runs.get(run_id)
    assert info.status == "completed", info.error
    output = msgspec.convert(info.output, approval.ReportOutput)
    assert (output.sent, output.decided_by, output.receipt) == (False, "bob", None)
    assert info.state == {"progress": {"stage": "rejected", "percent": 100}}
    assert await tide_env.step_names(run_id) == APPROVAL_STEPS[:-1]
    await tide_env.assert_replay_compatible(run_id)


async def test_approval_gate_has_no_deadline(tide_env: TideEnv, reports: Tidebase) -> None:
    # The gate has no timeout: a reviewer may take weeks, and the run keeps waiting
    # without a worker; the late approval still sends the report.
    run_id = await enqueue_report(reports)
    await tide_env.run_until_idle()
    await tide_env.advance(timedelta(days=30))

    info = await reports.runs.get(run_id)
    assert info.status == "waiting"
    assert [(g.status, g.expires_at) for g in info.gates] == [("pending", None)]

    await tide_env.resolve_gate(run_id, approval.GATE, actor="alice")
    await tide_env.run_until_idle()
    output = msgspec.convert((await reports.runs.get(run_id)).output, approval.ReportOutput)
    assert output.sent and output.decided_by == "alice"


def approval_with(check_links_at: int) -> Tidebase:
    """A changed ``generate-report``: a new step ``check-links`` at position
    ``check_links_at`` of its history (0: first)."""
    tide = Tidebase()

    async def check_links(topic: str) -> bool:
        return bool(topic)

    @tide.workflow(approval.WORKFLOW, queue=approval.QUEUE, max_attempts=3)
    async def generate_report(run: Run, input: approval.ReportInput) -> dict[str, Any]:
        entries = ["plan", "fetch-sources", "write-draft"]
        entries.insert(check_links_at, "check-links")
        outline = sources = draft = None
        for entry in entries:
            if entry == "check-links":
                await run.step("check-links", check_links, input.topic)
            elif entry == "plan":
                outline = await run.step("plan", approval.plan, input.topic, 0)
            elif entry == "fetch-sources":
                sources = await run.step("fetch-sources", approval.fetch_sources, outline, 0)
            else:
                draft = await run.step("write-draft", approval.write_draft, outline, sources, 0)
        assert draft is not None
        decision = await run.gate(approval.GATE, data={"title": draft.title})
        return {"approved": decision.approved}

    return tide


async def test_change_to_a_waiting_report_is_replay_checked(
    tide_env: TideEnv, reports: Tidebase
) -> None:
    # A report waits at its gate across a deploy. The history it recorded (plan,
    # fetch-sources, write-draft) must replay on the new code: a step inserted within
    # it breaks the run, one added after it (before the gate, which is not history
    # until it is decided) does not.
    run_id = await enqueue_report(reports)
    await tide_env.run_until_idle()
    assert (await reports.runs.get(run_id)).status == "waiting"
    await tide_env.assert_replay_compatible(run_id)

    # Opened last: a client opened before run_until_idle would work runs too.
    inserted = await tide_env.client(approval_with(check_links_at=2))
    with pytest.raises(ReplayIncompatible) as caught:
        await tide_env.assert_replay_compatible(run_id, tide=inserted)
    [bad] = caught.value.runs
    assert str(bad.run_id) == str(run_id)
    assert bad.mismatch is not None
    assert (bad.mismatch.position, bad.mismatch.recorded_name, bad.mismatch.name) == (
        3,  # 1-based
        "write-draft",
        "check-links",
    )
    appended = await tide_env.client(approval_with(check_links_at=3))
    await tide_env.assert_replay_compatible(run_id, tide=appended)
