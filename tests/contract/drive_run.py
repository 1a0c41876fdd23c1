"""Drive one run through phasefleet's API with a client that openapi-python-client
generated from the served OpenAPI document, used as generated (tests/api_contract.rs).

Usage: drive_run.py BASE_URL TOKEN QUEUE

Submits the bundled example on QUEUE, streams its events while it runs, approves its
gate, waits for the stream to end, reads the report and prints a JSON summary. Exits
non-zero (an assertion) when anything differs from the document.
"""

import json
import sys
import threading
import time

import httpx
from phasefleet_client import AuthenticatedClient
from phasefleet_client.api.approvals import decide_approval
from phasefleet_client.api.runs import get_run, get_run_report, submit_run
from phasefleet_client.api.system import get_example
from phasefleet_client.models import (
    Action,
    DecisionBody,
    DecisionOutcome,
    ReportFormat,
    RunState,
    SubmitBody,
    SubmitOutcome,
)


def sse_messages(text):
    """The messages of a text/event-stream body: dicts of field -> value."""
    messages = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            name, _, value = line.partition(":")
            fields[name] = value[1:] if value.startswith(" ") else value
        if fields:
            messages.append(fields)
    return messages


# The run driven, for the diagnosis of a failure.
DRIVEN = []


def main():
    base, token, queue = sys.argv[1:4]
    client = AuthenticatedClient(
        base_url=base, token=token, raise_on_unexpected_status=True, timeout=httpx.Timeout(120.0)
    )
    try:
        drive(client, queue)
    except AssertionError:
        # Say where the run stood, so a failure shows more than the assertion.
        http = client.get_httpx_client()
        for run_id in DRIVEN:
            print(f"run {run_id}: {http.get(f'/v1/runs/{run_id}').text}", file=sys.stderr)
            print(f"events: {http.get(f'/v1/runs/{run_id}/events').text}", file=sys.stderr)
        raise


def drive(client, queue):

    # 1. Submit the bundled example on our queue.
    example = get_example.sync(client=client)
    body = SubmitBody.from_dict(
        {
            "template": example.template,
            "personas": example.personas,
            "inputs": {"requirements": example.requirements},
            "queue": queue,
        }
    )
    submitted = submit_run.sync_detailed(client=client, body=body, idempotency_key=f"contract-{queue}")
    assert submitted.status_code == 201, submitted
    assert submitted.parsed.outcome == SubmitOutcome.CREATED
    run_id = submitted.parsed.run_id
    DRIVEN.append(run_id)
    again = submit_run.sync_detailed(client=client, body=body, idempotency_key=f"contract-{queue}")
    assert again.status_code == 200 and again.parsed.run_id == run_id, again

    # 2. Stream its events from the start, in the background, until the stream ends.
    # No generator reads a text/event-stream body as it arrives, so this uses the
    # generated client's own httpx client (its base URL and token) to read it live.
    streamed = {"messages": [], "arrivals": []}

    def stream():
        http = client.get_httpx_client()
        with http.stream("GET", f"/v1/runs/{run_id}/events/stream") as response:
            streamed["status"] = response.status_code
            block = []
            for line in response.iter_lines():
                if line:
                    block.append(line)
                    continue
                if block:
                    streamed["messages"].extend(sse_messages("\n".join(block)))
                    streamed["arrivals"].append(time.monotonic())
                    block = []

    # A daemon thread: a failed assertion below ends the script even while it streams.
    streamer = threading.Thread(target=stream, daemon=True)
    streamer.start()

    # 3. Approve the gate once the run waits on it.
    deadline = time.monotonic() + 60
    while True:
        detail = get_run.sync(client=client, id=run_id)
        pending = [a for a in detail.approvals if not a.action]
        if pending:
            break
        assert detail.run.state in (RunState.QUEUED, RunState.RUNNING), detail.run.state
        assert time.monotonic() < deadline, "no approval request within 60 s"
        time.sleep(0.2)
    assert detail.run.state == RunState.AWAITING_APPROVAL, detail.run.state
    approved_at = time.monotonic()
    decided = decide_approval.sync(
        client=client,
        id=pending[0].id,
        body=DecisionBody(action=Action.APPROVE, comment="approved by the generated client"),
    )
    assert decided.outcome == DecisionOutcome.RECORDED, decided

    # 4. The stream ends with the run.
    streamer.join(timeout=90)
    assert not streamer.is_alive(), "the event stream did not end with the run"
    assert streamed["status"] == 200, streamed
    messages = streamed["messages"]
    kinds = [m.get("event") for m in messages]
    assert kinds[-1] == "end", kinds
    events = [json.loads(m["data"]) for m in messages if "id" in m]
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(1, len(seqs) + 1)), seqs
    assert "approval.decided" in kinds and "run.completed" in kinds, kinds
    before = [t for t in streamed["arrivals"] if t < approved_at]
    assert before, "no event arrived while the run was waiting: the stream was not live"

    # 5. The report.
    report = get_run_report.sync(client=client, id=run_id, format_=ReportFormat.JSON)
    assert report.to_dict().get("state") == "completed", report.to_dict()
    final = get_run.sync(client=client, id=run_id)
    assert final.run.state == RunState.COMPLETED, final.run.state
    print(
        json.dumps(
            {
                "run_id": str(run_id),
                "state": final.run.state.value,
                "streamed_events": len(events),
                "kinds": kinds,
                "report_keys": sorted(report.to_dict().keys()),
            }
        )
    )


if __name__ == "__main__":
    main()
