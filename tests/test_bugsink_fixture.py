"""Bugsink as a real Sentry-compatible receiver: the official SDK's error event becomes an issue."""

from __future__ import annotations

import uuid

import pytest
import sentry_sdk

from examples.bugsink import Bugsink

pytestmark = pytest.mark.slow


class CheckoutError(Exception):
    pass


def _charge(order_id: int) -> None:
    raise CheckoutError(f"card declined for order {order_id}")


def _checkout(order_id: int) -> None:
    _charge(order_id)


def test_sdk_error_event_becomes_an_issue_with_its_frames(bugsink_server: Bugsink) -> None:
    project = bugsink_server.create_project("sdk-error-event")  # an issue list of its own
    schema_warnings = len(bugsink_server.validation_warnings())
    assert project["dsn"].startswith("http://")
    assert f"@127.0.0.1:{bugsink_server.port}/{project['id']}" in project["dsn"]

    client = sentry_sdk.Client(
        dsn=project["dsn"],
        default_integrations=False,
        auto_enabling_integrations=False,
        http_proxy="",  # straight to 127.0.0.1
    )
    try:
        with sentry_sdk.new_scope() as scope:
            scope.set_client(client)
            scope.set_transaction_name("POST /checkout")
            try:
                _checkout(42)
            except CheckoutError as error:
                event_id = scope.capture_exception(error)
    finally:
        client.flush(timeout=10)
        client.close()
    assert event_id is not None

    [issue] = bugsink_server.wait_for_issues(1, timeout=30, project_id=project["id"])
    assert issue["type"] == "CheckoutError"
    assert issue["value"] == "card declined for order 42"
    assert issue["title"] == "CheckoutError: card declined for order 42"
    assert issue["event_count"] == 1
    assert issue["transaction"] == "POST /checkout"

    [event] = bugsink_server.events(issue["id"])
    assert uuid.UUID(event["event_id"]) == uuid.UUID(event_id)
    data = event["data"]
    assert data["transaction"] == "POST /checkout"
    [exception] = data["exception"]["values"]
    assert exception["type"] == "CheckoutError"
    assert exception["value"] == "card declined for order 42"
    frames = exception["stacktrace"]["frames"]  # outermost first, as Sentry orders them
    assert [frame["function"] for frame in frames] == [
        "test_sdk_error_event_becomes_an_issue_with_its_frames",
        "_checkout",
        "_charge",
    ]
    assert {frame["abs_path"] for frame in frames} == {__file__}
    assert frames[-1]["context_line"].strip().startswith("raise CheckoutError(")
    assert bugsink_server.event(event_id, project["id"])["id"] == event["id"]
    assert len(bugsink_server.validation_warnings()) == schema_warnings  # valid per the schema
