#!/usr/bin/env python3
"""Reference producer for the uplink drain benchmark: confluent-kafka
(librdkafka) produces --count records of --size bytes round-robin over the
--partitions partitions of --topic (created first, not timed; --create-only does only that), lz4,
acks=all, and prints one JSON line: {"records": N, "seconds": S, "rate": R}
where S runs from the first produce() to the end of flush() (every record
acknowledged). Run with the venv's python (deploy/install-test-peers.sh).
"""

import argparse
import json
import sys
import time

from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient, NewTopic


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--bootstrap", required=True)
    p.add_argument("--topic", required=True)
    p.add_argument("--count", type=int, default=100_000)
    p.add_argument("--size", type=int, default=100)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--compression", default="lz4")
    p.add_argument("--create-only", action="store_true",
                   help="only create the topic (so the timed runs of both sides start with it there)")
    p.add_argument("--headers", action="store_true",
                   help="add the five provenance headers sluice adds (sluice.node, .service, .topic, "
                        ".partition, .offset), so both sides send the same records")
    a = p.parse_args()
    admin = AdminClient({"bootstrap.servers": a.bootstrap})
    for f in admin.create_topics([NewTopic(a.topic, a.partitions, 1)]).values():
        f.result(30)
    if a.create_only:
        return
    producer = Producer({
        "bootstrap.servers": a.bootstrap,
        "compression.type": a.compression,
        "acks": "all",
        "linger.ms": 5,
        "queue.buffering.max.messages": max(a.count, 100_000),
    })
    value = b"v" * a.size
    failed = []

    def report(err, _msg):
        if err is not None:
            failed.append(err)

    start = time.monotonic()
    for i in range(a.count):
        while True:
            try:
                partition = i % a.partitions
                headers = None
                if a.headers:
                    headers = [("sluice.node", b"pi-01"), ("sluice.service", b"telemetry"),
                               ("sluice.topic", a.topic.encode()), ("sluice.partition", b"%d" % partition),
                               ("sluice.offset", b"%d" % (i // a.partitions))]
                producer.produce(a.topic, value=value, key=b"k%d" % (i // a.partitions), partition=partition,
                                 headers=headers, on_delivery=report)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    left = producer.flush(300)
    seconds = time.monotonic() - start
    if left or failed:
        print(f"{left} undelivered, {len(failed)} failed: {failed[:3]}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps({"records": a.count, "seconds": seconds, "rate": a.count / seconds}))


if __name__ == "__main__":
    main()
