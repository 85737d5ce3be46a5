"""A consumer whose broker went away stops without a traceback (aiokafka issue #647)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from stream.broker import EmbeddedBroker, ensure_topics
from stream.kafka import stop_consumer

pytestmark = pytest.mark.kafka


async def _consumer_of_a_dead_broker(log: Path) -> AIOKafkaConsumer:
    """A started consumer, assigned and fetching, whose broker was then stopped a second ago."""
    broker = EmbeddedBroker(port=0, log_file=log)
    bootstrap = broker.start()
    try:
        await ensure_topics(bootstrap, {"t": 2})
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None, fetch_max_wait_ms=50)
        await consumer.start()
        consumer.assign([TopicPartition("t", 0), TopicPartition("t", 1)])
        await consumer.getmany(timeout_ms=200)
    finally:
        broker.stop()
    await asyncio.sleep(1.0)  # the fetcher fails and waits out its retry back-off, again and again
    return consumer


def test_stop_consumer_absorbs_the_fetchers_cancellation_after_the_broker_died(tmp_path: Path) -> None:
    async def plain() -> str:
        consumer = await _consumer_of_a_dead_broker(tmp_path / "plain.log")
        try:
            await consumer.stop()
        except asyncio.CancelledError:
            return "cancelled"
        return "stopped"

    async def quiet() -> str:
        consumer = await _consumer_of_a_dead_broker(tmp_path / "quiet.log")
        await stop_consumer(consumer)
        return "stopped"

    # aiokafka's own stop() re-raises its fetcher's cancellation here (what the helper is for) ...
    assert asyncio.run(plain()) == "cancelled"
    # ... and stop_consumer() stops the consumer all the same.
    assert asyncio.run(quiet()) == "stopped"


def test_stop_consumer_lets_a_cancellation_of_its_caller_through(tmp_path: Path) -> None:
    async def main() -> bool:
        consumer = await _consumer_of_a_dead_broker(tmp_path / "caller.log")
        task = asyncio.create_task(stop_consumer(consumer))
        await asyncio.sleep(0)  # the stop has begun
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            pass
        return task.cancelled()

    assert asyncio.run(main())
