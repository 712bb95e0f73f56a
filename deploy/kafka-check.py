#!/usr/bin/env python3
"""Reads a Kafka topic from the beginning with confluent-kafka (librdkafka),
an independent client, for the uplink tests.

Prints one JSON object per record on stdout, in partition order, then offset
order:
  {"partition": 0, "offset": 0, "key_b64": "ZGV2LTE=" or null,
   "value_b64": "...", "headers": [["sluice.node", "<base64>"], ...],
   "timestamp": <ms since the epoch>, "timestamp_type": "create"|"append"|"none"}
Headers keep their order and repeated names. Reading stops once at least
--count records were read and every partition is at its end (so records
beyond --count are printed too), or at --timeout.

With --watermarks it prints {"partition": 0, "low": 0, "high": 25} per
partition instead (a broker's offsets, without fetching records).

Exit status: 0 when at least --count records were read; 1 at the timeout
with fewer (the records read are still printed); 2 when the topic does not
exist or the client failed. Install the client with
deploy/install-test-peers.sh and run this with the venv's python.
"""

import argparse
import base64
import json
import sys
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

TIMESTAMP_TYPES = {0: "none", 1: "create", 2: "append"}


def b64(data):
    return None if data is None else base64.b64encode(data).decode("ascii")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bootstrap", required=True, help="host:port of a broker")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--count", type=int, default=0, help="records to wait for")
    parser.add_argument(
        "--watermarks",
        action="store_true",
        help='print {"partition", "low", "high"} per partition instead of reading records',
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds before giving up")
    parser.add_argument("--ca", help="PEM file of CA certificates: connect over TLS")
    parser.add_argument("--cert", help="PEM client certificate (with --ca and --key)")
    parser.add_argument("--key", help="PEM private key of --cert")
    parser.add_argument("--sasl-mechanism", help="PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512")
    parser.add_argument("--username")
    parser.add_argument("--password")
    args = parser.parse_args()

    deadline = time.monotonic() + args.timeout
    config = {
        "bootstrap.servers": args.bootstrap,
        # Unique, and never committed: every run reads from the start.
        "group.id": f"sluice-kafka-check-{uuid.uuid4()}",
        "enable.auto.commit": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "check.crcs": True,
        # Small fetches: tansu 0.6 answers a fetch that spans many small
        # batches slowly enough to time out; a small response limit keeps
        # each fetch short.
        "fetch.max.bytes": 2 * 1024 * 1024,
        "message.max.bytes": 1024 * 1024,
        "max.partition.fetch.bytes": 64 * 1024,
    }
    if args.ca:
        config["ssl.ca.location"] = args.ca
    if args.cert:
        config["ssl.certificate.location"] = args.cert
        config["ssl.key.location"] = args.key
    if args.sasl_mechanism:
        config["sasl.mechanism"] = args.sasl_mechanism
        config["sasl.username"] = args.username
        config["sasl.password"] = args.password
    tls, sasl = bool(args.ca), bool(args.sasl_mechanism)
    config["security.protocol"] = {
        (False, False): "plaintext",
        (True, False): "ssl",
        (False, True): "sasl_plaintext",
        (True, True): "sasl_ssl",
    }[(tls, sasl)]
    consumer = Consumer(config)
    try:
        metadata = consumer.list_topics(args.topic, timeout=max(1.0, deadline - time.monotonic()))
        topic = metadata.topics.get(args.topic)
        if topic is None or topic.error is not None or not topic.partitions:
            why = topic.error if topic is not None and topic.error is not None else "no partitions"
            print(f"kafka-check: topic {args.topic!r} not found on {args.bootstrap}: {why}", file=sys.stderr)
            return 2
        partitions = sorted(topic.partitions)
        if args.watermarks:
            for p in partitions:
                timeout = max(1.0, deadline - time.monotonic())
                low, high = consumer.get_watermark_offsets(TopicPartition(args.topic, p), timeout=timeout)
                print(json.dumps({"partition": p, "low": low, "high": high}))
            return 0
        # Explicit assignment: no group coordination, no rebalance delay.
        consumer.assign([TopicPartition(args.topic, p, OFFSET_BEGINNING) for p in partitions])
        records = {p: [] for p in partitions}
        at_end = set()
        read = 0
        while time.monotonic() < deadline:
            msg = consumer.poll(min(0.5, max(0.0, deadline - time.monotonic())))
            if msg is None:
                continue
            if msg.error() is not None:
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    at_end.add(msg.partition())
                    if read >= args.count and at_end.issuperset(partitions):
                        break
                    continue
                raise KafkaException(msg.error())
            at_end.discard(msg.partition())
            ts_type, ts = msg.timestamp()
            records[msg.partition()].append(
                {
                    "partition": msg.partition(),
                    "offset": msg.offset(),
                    "key_b64": b64(msg.key()),
                    "value_b64": b64(msg.value()),
                    "headers": [[name, b64(value)] for name, value in (msg.headers() or [])],
                    "timestamp": ts,
                    "timestamp_type": TIMESTAMP_TYPES.get(ts_type, str(ts_type)),
                }
            )
            read += 1
        for p in partitions:
            for record in records[p]:
                print(json.dumps(record))
        if read < args.count:
            print(
                f"kafka-check: read {read} of {args.count} records of {args.topic!r} in {args.timeout}s",
                file=sys.stderr,
            )
            return 1
        return 0
    except KafkaException as e:
        print(f"kafka-check: {e}", file=sys.stderr)
        return 2
    finally:
        consumer.close()


if __name__ == "__main__":
    sys.exit(main())
