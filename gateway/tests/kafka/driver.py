#!/usr/bin/env python3
"""Drives confluent-kafka (librdkafka) against sluice's Kafka listener for
gateway/tests/kafka_listener.rs. Every command prints JSON lines on stdout.

  produce  --count N --acks 0|1|all [--key K] [--header NAME=VALUE ...]
           one line per delivered record: {"partition", "offset", "error"}
  consume  --count N [--start earliest|latest] [--group G]
           one line per record: {"partition", "offset", "key", "value",
           "headers": [[name, value], ...], "timestamp"}; with --group the
           group commits what it read (synchronously) before it exits.
  member   --group G --topics a,b --name NAME
           a consumer group member that prints {"event": "assigned", ...},
           {"event": "record", ...}, commits each record synchronously, and
           closes (LeaveGroup) when a line "leave" arrives on stdin.
  admin    [--topic T --partitions P] [--group G]
           creates T (CreateTopics), then prints {"created": ...},
           {"groups": [[id, state], ...]} (ListGroups) and, with --group,
           {"group": id, "state", "members": [client ids]} (DescribeGroups)
  bench    --count N --size B   produce throughput (acks=1, linger 5 ms):
           {"records", "seconds", "per_sec"}
  consume-bench --count N --group G   a consumer group reading N records
           from the earliest offset: {"records", "seconds", "per_sec"}
  describe-configs --topics a,b   AdminClient.describe_configs of each topic
           and broker 0: {"resource", "type", "configs": {name: value},
           "read_only"} or {"resource", "type", "error"}
  latency  --count N   N records one at a time (acks=all, linger 0), each
           after the previous one's acknowledgement, 10 ms apart:
           {"records", "p50_ms", "p99_ms", "max_ms"}
  http-group-bench --http HOST:PORT --count N --group G   the same read
           through sluice's HTTP group fetch and commit (for comparison)
  consumer-latency --topics alarms,bulk --count N --group G [--work-ms W]
           [--prefetch-kb K]   a group member reading both topics from
           their end, W ms of work per record, while alarms (acks=all) are
           produced every 20 ms with their send time: the alarms' produce ->
           consumer's hand latency {"alarms", "p50_ms", "p99_ms", "max_ms",
           "bulk_per_sec"}; with K, librdkafka prefetches at most K KiB
           (queued.max.messages.kbytes, fetch.max.bytes)

With --sasl, client errors (error_cb) are printed as {"client_error",
"code"} lines.
Options --ca/--cert/--cert-key (TLS) and --sasl/--user/--password (SASL)
apply to every command.

Exit status 0 on success, 1 on a timeout, 2 on a client error.
"""

import argparse
import json
import select
import sys
import time

from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic, ResourceType


def out(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def text(b):
    return None if b is None else b.decode("utf-8", "replace")


def client_error(err):
    """librdkafka's error callback: each error as a JSON line (the tests
    read SASL failures from here)."""
    out({"client_error": str(err), "code": err.name()})


def security(args):
    """TLS settings when --ca is given (the listener's CA), with a client
    certificate when --cert/--cert-key are; SASL with --sasl MECHANISM
    --user U --password P (SASL_PLAINTEXT, or SASL_SSL with --ca)."""
    conf = {}
    if args.ca:
        conf.update({"security.protocol": "SSL", "ssl.ca.location": args.ca,
                     "ssl.endpoint.identification.algorithm": "none"})
    if args.cert:
        conf.update({"ssl.certificate.location": args.cert, "ssl.key.location": args.cert_key})
    if args.sasl:
        conf.update({"security.protocol": "SASL_SSL" if args.ca else "SASL_PLAINTEXT",
                     "sasl.mechanism": args.sasl, "sasl.username": args.user,
                     "sasl.password": args.password, "error_cb": client_error})
    return conf


def produce(args):
    p = Producer({"bootstrap.servers": args.bootstrap, "acks": args.acks, "linger.ms": 5,
                  "message.timeout.ms": int(args.timeout * 1000), "batch.num.messages": args.batch,
                  **security(args)})
    results = []

    def done(err, msg):
        results.append({"partition": msg.partition(), "offset": msg.offset(),
                        "error": None if err is None else str(err)})

    headers = [tuple(h.split("=", 1)) for h in args.header]
    for i in range(args.count):
        value = args.value.replace("{i}", str(i)).encode()
        key = None if args.key is None else args.key.replace("{i}", str(i)).encode()
        p.produce(args.topic, value=value, key=key, headers=headers or None, on_delivery=done)
        p.poll(0)
    left = p.flush(args.timeout)
    for r in results:
        out(r)
    return 1 if left else (2 if any(r["error"] for r in results) else 0)


def consumer(args, group, extra=None):
    conf = {"bootstrap.servers": args.bootstrap, "group.id": group,
            "auto.offset.reset": getattr(args, "start", "earliest"), "enable.auto.commit": False,
            "session.timeout.ms": 6000, "heartbeat.interval.ms": 300,
            "fetch.wait.max.ms": 100, "topic.metadata.refresh.interval.ms": 1000, **security(args)}
    conf.update(extra or {})
    return Consumer(conf)


def record(msg):
    return {"topic": msg.topic(), "partition": msg.partition(), "offset": msg.offset(),
            "key": text(msg.key()), "value": text(msg.value()),
            "headers": [[k, text(v)] for k, v in (msg.headers() or [])],
            "timestamp": msg.timestamp()[1]}


def consume(args):
    group = args.group or "driver-%d" % time.monotonic_ns()
    c = consumer(args, group)
    c.subscribe([args.topic])
    got = 0
    deadline = time.time() + args.timeout
    while got < args.count and time.time() < deadline:
        msg = c.poll(0.2)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() == KafkaError._PARTITION_EOF:
                continue
            sys.stderr.write("consume error: %s\n" % msg.error())
            return 2
        out(record(msg))
        got += 1
    if args.group and got:
        c.commit(asynchronous=False)
    c.close()
    return 0 if got >= args.count else 1


def member(args):
    c = consumer(args, args.group, {"client.id": args.name})

    def on_assign(_c, parts):
        out({"event": "assigned", "name": args.name,
             "partitions": sorted([p.topic, p.partition] for p in parts)})

    def on_revoke(_c, parts):
        out({"event": "revoked", "name": args.name})

    c.subscribe(args.topics.split(","), on_assign=on_assign, on_revoke=on_revoke)
    deadline = time.time() + args.timeout
    while time.time() < deadline:
        ready, _, _ = select.select([sys.stdin], [], [], 0)
        if ready:
            line = sys.stdin.readline()
            if line.strip() == "leave" or line == "":
                c.close()
                out({"event": "left", "name": args.name})
                return 0
        msg = c.poll(0.1)
        if msg is None:
            continue
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                sys.stderr.write("member error: %s\n" % msg.error())
            continue
        c.commit(message=msg, asynchronous=False)
        rec = record(msg)
        rec.update({"event": "record", "name": args.name})
        out(rec)
    c.close()
    return 1


def admin(args):
    a = AdminClient({"bootstrap.servers": args.bootstrap, **security(args)})
    if args.topic:
        futures = a.create_topics([NewTopic(args.topic, args.partitions, 1)], request_timeout=args.timeout)
        for topic, f in futures.items():
            try:
                f.result()
                out({"created": topic})
            except Exception as e:  # the test prints what failed
                out({"created": None, "error": str(e)})
    listed = a.list_consumer_groups(request_timeout=args.timeout).result()
    out({"groups": sorted([g.group_id, str(g.state)] for g in listed.valid)})
    if args.group:
        d = a.describe_consumer_groups([args.group], request_timeout=args.timeout)[args.group].result()
        out({"group": d.group_id, "state": str(d.state),
             "members": sorted(m.client_id for m in d.members)})
    return 0


def describe_configs(args):
    """DescribeConfigs of each --topics entry and of broker 0."""
    a = AdminClient({"bootstrap.servers": args.bootstrap, **security(args)})
    resources = [ConfigResource(ResourceType.TOPIC, t) for t in args.topics.split(",")]
    resources.append(ConfigResource(ResourceType.BROKER, "0"))
    for res, f in a.describe_configs(resources, request_timeout=args.timeout).items():
        kind = "broker" if res.restype == ResourceType.BROKER else "topic"
        try:
            entries = f.result()
            out({"resource": res.name, "type": kind,
                 "configs": {n: e.value for n, e in entries.items()},
                 "read_only": sorted({e.is_read_only for e in entries.values()})})
        except Exception as e:  # the test checks what failed
            out({"resource": res.name, "type": kind, "error": str(e)})
    return 0


def latency(args):
    p = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 0, **security(args)})
    took = []
    for i in range(args.count):
        done = []
        start = time.perf_counter()
        p.produce(args.topic, value=b"alarm %d" % i, on_delivery=lambda err, _m: done.append(err))
        while not done:
            p.poll(0.001)
        if done[0] is not None:
            sys.stderr.write("alarm failed: %s\n" % done[0])
            return 2
        took.append((time.perf_counter() - start) * 1000)
        time.sleep(0.01)
    took.sort()
    pick = lambda q: round(took[min(len(took) - 1, int(q * len(took)))], 2)
    out({"records": len(took), "p50_ms": pick(0.5), "p99_ms": pick(0.99), "max_ms": round(took[-1], 2)})
    return 0


def consume_bench(args):
    c = Consumer({"bootstrap.servers": args.bootstrap, "group.id": args.group,
                  "auto.offset.reset": "earliest", **security(args)})
    c.subscribe([args.topic])
    got = 0
    start = time.perf_counter()
    deadline = time.time() + args.timeout
    while got < args.count and time.time() < deadline:
        for msg in c.consume(10000, 0.5):
            if not msg.error():
                got += 1
    seconds = time.perf_counter() - start
    c.commit(asynchronous=False)
    c.close()
    out({"records": got, "seconds": seconds, "per_sec": got / seconds})
    return 0 if got >= args.count else 1


def http_group_bench(args):
    import urllib.request

    def post(path, body):
        req = urllib.request.Request("http://%s%s" % (args.http, path), data=json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=args.timeout) as r:
            return json.load(r)

    got = 0
    start = time.perf_counter()
    deadline = time.time() + args.timeout
    while got < args.count and time.time() < deadline:
        recs = post("/v1/groups/%s/fetch" % args.group,
                    {"topics": [args.topic], "max_records": 10000, "wait_ms": 500})["records"]
        if not recs:
            continue
        got += len(recs)
        last = {}
        for r in recs:
            last[r["partition"]] = r["offset"] + 1
        post("/v1/groups/%s/commit" % args.group,
             {"offsets": [{"topic": args.topic, "partition": p, "offset": o} for p, o in last.items()]})
    seconds = time.perf_counter() - start
    out({"records": got, "seconds": seconds, "per_sec": got / seconds})
    return 0 if got >= args.count else 1


def consumer_latency(args):
    import threading

    topics = args.topics.split(",")
    alarm_topic = topics[0]
    extra = {"auto.offset.reset": "latest", "enable.auto.commit": True}
    if args.prefetch_kb:
        extra.update({"queued.max.messages.kbytes": args.prefetch_kb,
                      "fetch.max.bytes": args.prefetch_kb * 1024,
                      "message.max.bytes": args.prefetch_kb * 1024,
                      # Fetch again at once when the small queue has room
                      # (the default waits 1 s once it was full).
                      "queued.min.messages": 1, "fetch.queue.backoff.ms": 1, "fetch.wait.max.ms": 10,
                      "max.partition.fetch.bytes": args.prefetch_kb * 1024})
    c = consumer(args, args.group, extra)
    c.subscribe(topics)
    # Joined and fetching before the first alarm.
    deadline = time.time() + args.timeout
    while not c.assignment() and time.time() < deadline:
        c.poll(0.1)
    # Positions ("latest") are resolved by the first fetches.
    settle = time.time() + 1
    while time.time() < settle:
        c.poll(0.1)
    stop = threading.Event()

    def alarms():
        p = Producer({"bootstrap.servers": args.bootstrap, "acks": "all", "linger.ms": 0, **security(args)})
        for _ in range(args.count):
            if stop.is_set():
                break
            p.produce(alarm_topic, value=repr(time.time()).encode())
            p.poll(0)
            time.sleep(0.02)
        p.flush(10)

    t = threading.Thread(target=alarms)
    t.start()
    took, bulk = [], 0
    start = time.perf_counter()
    quiet_since = None
    while len(took) < args.count and time.time() < deadline:
        msg = c.poll(0.1)
        if msg is None or msg.error():
            # Done when the producer is and nothing came for 5 s.
            if not t.is_alive():
                quiet_since = quiet_since or time.time()
                if time.time() - quiet_since > 5:
                    break
            continue
        quiet_since = None
        if args.work_ms:
            time.sleep(args.work_ms / 1000)
        if msg.topic() == alarm_topic:
            took.append((time.time() - float(msg.value())) * 1000)
        else:
            bulk += 1
    seconds = time.perf_counter() - start
    stop.set()
    t.join()
    c.close()
    if not took:
        out({"alarms": 0})
        return 1
    took.sort()
    pick = lambda q: round(took[min(len(took) - 1, int(q * len(took)))], 2)
    out({"alarms": len(took), "sent": args.count, "p50_ms": pick(0.5), "p99_ms": pick(0.99),
         "max_ms": round(took[-1], 2), "bulk_per_sec": round(bulk / seconds)})
    return 0


def bench(args):
    p = Producer({"bootstrap.servers": args.bootstrap, "acks": 1, "linger.ms": 5,
                  "queue.buffering.max.messages": 1000000})
    value = b"x" * args.size
    failed = []
    start = time.perf_counter()
    for _ in range(args.count):
        while True:
            try:
                p.produce(args.topic, value=value,
                          on_delivery=lambda err, _m: failed.append(err) if err else None)
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    left = p.flush(args.timeout)
    seconds = time.perf_counter() - start
    out({"records": args.count, "seconds": seconds, "per_sec": args.count / seconds,
         "failed": len(failed) + left})
    return 0 if not failed and not left else 2


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", choices=["produce", "consume", "member", "admin", "bench", "consume-bench",
                                        "http-group-bench", "latency", "describe-configs", "consumer-latency"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic")
    ap.add_argument("--topics")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--acks", default="1")
    ap.add_argument("--key")
    ap.add_argument("--value", default="v{i}")
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("--start", default="earliest")
    ap.add_argument("--group")
    ap.add_argument("--name", default="m")
    ap.add_argument("--size", type=int, default=100)
    ap.add_argument("--partitions", type=int, default=1)
    ap.add_argument("--batch", type=int, default=10000, help="records per produce batch, at most")
    ap.add_argument("--http")
    ap.add_argument("--ca")
    ap.add_argument("--cert")
    ap.add_argument("--cert-key")
    ap.add_argument("--sasl", help="SASL mechanism: PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")
    ap.add_argument("--user")
    ap.add_argument("--password")
    ap.add_argument("--timeout", type=float, default=60)
    ap.add_argument("--work-ms", type=float, default=0, help="consumer-latency: work per record")
    ap.add_argument("--prefetch-kb", type=int, default=0, help="consumer-latency: librdkafka prefetch limit")
    args = ap.parse_args()
    commands = {"produce": produce, "consume": consume, "member": member, "admin": admin, "bench": bench,
                "consume-bench": consume_bench, "http-group-bench": http_group_bench, "latency": latency,
                "describe-configs": describe_configs, "consumer-latency": consumer_latency}
    return commands[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
