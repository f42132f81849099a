"""A worker on every queue takes an order to send before new trades, and those before housekeeping."""

from __future__ import annotations

from kombu import Connection, Consumer, Message, Producer

import celeryconfig


def test_a_waiting_submit_is_taken_before_accumulate_runs_and_sweeps(broker_url: str) -> None:
    queues = list(celeryconfig.task_queues)
    taken: list[str] = []

    def on_message(body: object, message: Message) -> None:
        taken.append(str(body))
        message.ack()

    with Connection(broker_url, transport_options=celeryconfig.broker_transport_options) as connection:
        producer = Producer(connection.channel())
        for queue in queues:
            queue(producer.channel).declare()
        # Queued in the worst order: housekeeping first, the order to send last.
        for name in ("ops", "ingestion", "ingestion", "execution"):
            producer.publish(name, routing_key=name, serializer="json")
        with Consumer(connection.channel(), queues=queues, callbacks=[on_message], prefetch_count=1):
            while len(taken) < 4:
                try:
                    connection.drain_events(timeout=5)
                except TimeoutError:  # socket.timeout is TimeoutError
                    break
    assert taken == ["execution", "ingestion", "ingestion", "ops"]
