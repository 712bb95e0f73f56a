# Usage: python3 deploy/bench/idle-conns.py --port 1883 --pid BROKER_PID --steps 1000:5,10000:10 [--batch 500] [--out run.json]  (opens idle MQTT 3.1.1 connections in steps, records the broker's VmRSS/threads after each step's wait)
"""Idle MQTT connection memory probe.

Opens TCP connections to HOST:PORT, sends an MQTT 3.1.1 CONNECT (clean
session, keep-alive 60 s, unique client id) on each, waits for a CONNACK
(0x20 0x02 0x00 0x00) and then holds them idle, answering nothing and
sending a PINGREQ per connection only as keep-alive requires. Connections
are opened in batches (--batch at a time) up to each step's count; after
each step it waits the step's seconds and samples /proc/PID of the broker
(VmRSS, RssAnon, RssFile, Threads, open fds). The baseline sample is taken
--settle seconds after start, before any connection. Then everything is
closed. Standard library only (Python >= 3.8).
"""

import argparse
import asyncio
import json
import os
import sys
import time

CONNACK_OK = b"\x20\x02\x00\x00"
PINGREQ = b"\xc0\x00"


def connect_packet(client_id: str, keep_alive: int) -> bytes:
    cid = client_id.encode()
    var = b"\x00\x04MQTT" + b"\x04" + b"\x02" + keep_alive.to_bytes(2, "big")
    payload = len(cid).to_bytes(2, "big") + cid
    body = var + payload
    # remaining length (< 128 here, but encode properly anyway)
    n, rl = len(body), bytearray()
    while True:
        b, n = n % 128, n // 128
        rl.append(b | (0x80 if n else 0))
        if not n:
            break
    return b"\x10" + bytes(rl) + body


def sample(pid: int) -> dict:
    out = {"t": round(time.time(), 3)}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "VmSize"):
                    out[k + "_kib"] = int(v.split()[0])
                elif k == "Threads":
                    out["threads"] = int(v)
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError):
        out["error"] = "broker process gone"
    return out


class Probe:
    def __init__(self, host, port, keep_alive, timeout, prefix):
        self.host, self.port = host, port
        self.keep_alive, self.timeout, self.prefix = keep_alive, timeout, prefix
        self.conns = []  # (reader, writer, task)
        self.errors = {}
        self.closed_by_broker = 0
        self.next_id = 0

    def err(self, kind):
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def live(self):
        return sum(1 for _, w, t in self.conns if not t.done())

    async def open_one(self):
        cid = f"{self.prefix}-{self.next_id:06d}"
        self.next_id += 1
        try:
            r, w = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
        except ConnectionRefusedError:
            return self.err("refused")
        except asyncio.TimeoutError:
            return self.err("connect_timeout")
        except OSError as e:
            return self.err(f"connect_oserror_{e.errno}")
        try:
            w.write(connect_packet(cid, self.keep_alive))
            await w.drain()
            ack = await asyncio.wait_for(r.readexactly(4), self.timeout)
        except asyncio.TimeoutError:
            w.close()
            return self.err("connack_timeout")
        except asyncio.IncompleteReadError:
            w.close()
            return self.err("closed_before_connack")
        except OSError as e:
            w.close()
            return self.err(f"connack_oserror_{e.errno}")
        if ack != CONNACK_OK:
            w.close()
            return self.err(f"bad_connack_{ack.hex()}")
        self.conns.append((r, w, asyncio.ensure_future(self.drain(r))))

    async def drain(self, r):
        # Idle: discard anything the broker sends (PINGRESP); note a close.
        try:
            while await r.read(4096):
                pass
        except OSError:
            pass
        self.closed_by_broker += 1

    async def open_to(self, target, batch):
        while len(self.conns) < target:
            n = min(batch, target - len(self.conns))
            before = len(self.conns)
            await asyncio.gather(*(self.open_one() for _ in range(n)))
            if len(self.conns) == before:  # a whole batch failed: stop trying
                self.err("gave_up_batch")
                return

    async def pinger(self):
        # PINGREQ on every connection each keep_alive*0.75 s, spread out.
        period = self.keep_alive * 0.75
        while True:
            await asyncio.sleep(period)
            for _, w, t in list(self.conns):
                if not t.done():
                    try:
                        w.write(PINGREQ)
                    except OSError:
                        pass

    async def close_all(self):
        for _, w, t in self.conns:
            t.cancel()
            try:
                w.write(b"\xe0\x00")  # DISCONNECT
                w.close()
            except OSError:
                pass
        await asyncio.sleep(0.5)
        self.conns.clear()


async def main(a):
    steps = [(int(c), float(s)) for c, s in (x.split(":") for x in a.steps.split(","))]
    probe = Probe(a.host, a.port, a.keep_alive, a.timeout, a.prefix or f"idle{os.getpid()}")
    result = {"host": a.host, "port": a.port, "pid": a.pid, "batch": a.batch, "samples": []}

    def record(label, target, opened_s=None):
        s = sample(a.pid) if a.pid else {}
        s.update(label=label, target=target, live=probe.live, closed_by_broker=probe.closed_by_broker,
                 errors=dict(probe.errors))
        if opened_s is not None:
            s["open_seconds"] = round(opened_s, 2)
        result["samples"].append(s)
        print(json.dumps(s), file=sys.stderr, flush=True)

    await asyncio.sleep(a.settle)
    record("baseline", 0)
    ping = asyncio.ensure_future(probe.pinger())
    for target, wait in steps:
        t0 = time.monotonic()
        await probe.open_to(target, a.batch)
        dt = time.monotonic() - t0
        await asyncio.sleep(wait)
        record(f"{target}", target, dt)
    if a.hold:
        await asyncio.sleep(a.hold)
        record("after_hold", steps[-1][0])
    ping.cancel()
    await probe.close_all()
    await asyncio.sleep(a.after)
    record("after_close", 0)
    if a.out:
        with open(a.out, "w") as f:
            json.dump(result, f, indent=1)
    return result


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--pid", type=int, help="broker PID to sample (/proc/PID)")
    p.add_argument("--steps", default="1000:5,10000:10", help="COUNT:WAIT_S,... cumulative targets")
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--settle", type=float, default=3.0, help="seconds before the baseline sample")
    p.add_argument("--keep-alive", type=int, default=60)
    p.add_argument("--timeout", type=float, default=30.0, help="per connect / CONNACK")
    p.add_argument("--hold", type=float, default=0.0, help="extra seconds to hold after the last step")
    p.add_argument("--after", type=float, default=2.0, help="seconds after closing before the last sample")
    p.add_argument("--prefix", help="client id prefix")
    p.add_argument("--out", help="write all samples as JSON here")
    args = p.parse_args()
    need = max(int(x.split(":")[0]) for x in args.steps.split(",")) + 64
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < need:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(need, hard), hard))
    asyncio.run(main(args))
