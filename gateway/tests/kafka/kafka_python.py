#!/usr/bin/env python3
"""kafka-python (a pure-Python codec, independent of librdkafka and of the
Rust crate sluice uses) against sluice's Kafka listener, for
gateway/tests/kafka_listener.rs.

  produce --topic T --count N --acks 0|1|all --compression none|gzip|...
          prints {"partition", "offset"} per acknowledged record
  consume --topic T --count N --group G
          reads from the earliest offset with a consumer group, commits,
          prints {"partition", "offset", "key", "value", "headers"} per record

Exit status 0 on success, 1 on a timeout.
"""

import argparse
import json
import sys
import time

from kafka import KafkaConsumer, KafkaProducer


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def produce(args):
    acks = "all" if args.acks == "all" else int(args.acks)
    compression = None if args.compression == "none" else args.compression
    p = KafkaProducer(bootstrap_servers=args.bootstrap, acks=acks, compression_type=compression, linger_ms=5)
    futures = []
    for i in range(args.count):
        futures.append(p.send(args.topic, key=("k%d" % i).encode(), value=("kp-%d" % i).encode(),
                              headers=[("via", b"kafka-python")]))
    p.flush(args.timeout)
    for f in futures:
        meta = f.get(timeout=args.timeout)
        out({"partition": meta.partition, "offset": meta.offset})
    p.close()
    return 0


def consume(args):
    c = KafkaConsumer(args.topic, bootstrap_servers=args.bootstrap, group_id=args.group,
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=6000, heartbeat_interval_ms=500, fetch_max_wait_ms=100)
    got = 0
    deadline = time.time() + args.timeout
    while got < args.count and time.time() < deadline:
        for _tp, msgs in c.poll(timeout_ms=200).items():
            for m in msgs:
                out({"partition": m.partition, "offset": m.offset,
                     "key": None if m.key is None else m.key.decode(),
                     "value": m.value.decode(), "headers": [[k, v.decode()] for k, v in m.headers]})
                got += 1
    if got:
        c.commit()
    c.close()
    return 0 if got >= args.count else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["produce", "consume"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--acks", default="1")
    ap.add_argument("--compression", default="none")
    ap.add_argument("--group", default="kafka-python")
    ap.add_argument("--timeout", type=float, default=60)
    args = ap.parse_args()
    return {"produce": produce, "consume": consume}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
