"""Topic creation against the embedded broker: partitions, and the replication factor chosen and logged."""

from __future__ import annotations

import asyncio
import logging
import uuid

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from stream.broker import ensure_topics

pytestmark = pytest.mark.kafka


async def _partitions(bootstrap: str, topics: list[str]) -> dict[str, int]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return {t["topic"]: len(t["partitions"]) for t in await admin.describe_topics(topics)}
    finally:
        await admin.close()


@pytest.mark.parametrize(("asked", "logged"), [(None, 1), (2, 2)])
def test_missing_topics_are_created_with_the_replication_factor_logged(
        broker: str, caplog: pytest.LogCaptureFixture, asked: int | None, logged: int) -> None:
    a, b = (f"topics-{uuid.uuid4().hex[:8]}.{n}" for n in ("a", "b"))
    with caplog.at_level(logging.INFO, logger="stream.broker"):
        created = asyncio.run(ensure_topics(broker, {a: 3, b: 1}, replication_factor=asked))
        again = asyncio.run(ensure_topics(broker, {a: 5}, replication_factor=asked))
    assert sorted(created) == sorted([a, b]) and again == []
    assert asyncio.run(_partitions(broker, [a, b])) == {a: 3, b: 1}  # an existing topic is left as it is
    # The embedded broker is one broker: by default one replica; an explicit factor is passed on as given.
    assert f"(replication factor {logged})" in caplog.text
