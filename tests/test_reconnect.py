"""Clients that reconnect: aio-pika's robust connection across a broker restart; aiormq's
update-secret; the connection name a client gives is what operators see in the log."""

from __future__ import annotations

import asyncio

import aio_pika
import aiormq

from tests.broker_process import BrokerProcess


def test_an_aio_pika_robust_connection_comes_back_after_the_broker_restarts(broker: BrokerProcess) -> None:
    async def scenario() -> list[bytes]:
        connection = await aio_pika.connect_robust(broker.url, reconnect_interval=0.2)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue("robust", durable=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"before", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "robust")
            reconnected = asyncio.Event()
            connection.reconnect_callbacks.add(lambda *args: reconnected.set())
            await asyncio.get_running_loop().run_in_executor(None, broker.restart)
            await asyncio.wait_for(reconnected.wait(), 15)
            await channel.default_exchange.publish(
                aio_pika.Message(b"after", delivery_mode=aio_pika.DeliveryMode.PERSISTENT), "robust")
            got = []
            async with queue.iterator(timeout=5) as messages:
                async for message in messages:
                    async with message.process():
                        got.append(message.body)
                    if len(got) == 2:
                        break
            return got
        finally:
            await connection.close()

    assert asyncio.run(scenario()) == [b"before", b"after"]


def test_update_secret_is_answered_and_the_connection_goes_on(broker: BrokerProcess) -> None:
    async def scenario() -> None:
        connection = await aiormq.connect(broker.url)
        try:
            ok = await connection.update_secret("guest", reason="rotation")
            assert type(ok).__name__ == "UpdateSecretOk"
            channel = await connection.channel()
            declared = await channel.queue_declare("after-update", auto_delete=True)
            assert declared.queue == "after-update"
        finally:
            await connection.close()

    asyncio.run(scenario())


def test_the_connection_name_a_client_gives_is_logged(tmp_path) -> None:
    process = BrokerProcess(str(tmp_path / "data"))
    process.start(log_level="info", capture=True)
    try:
        async def scenario() -> None:
            connection = await aiormq.connect(process.url + "?name=billing-worker-3")
            await connection.close()

        asyncio.run(scenario())
    finally:
        process.stop()
    assert "name 'billing-worker-3'" in process.output()
