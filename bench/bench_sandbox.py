"""Sandbox round trips per second, as ratios to an in-process baseline.

Baseline: the same pymongo-style ``insert_one`` loop on an in-process
mongomock-ng client (what the sandbox stores data in), measured in this run.
Measured: ``insert_one`` through pymongo -> wire protocol -> sandbox, and a
watched insert (insert, then wait until the change stream delivers its
event).  The sandbox runs as a separate process, as ``walkit sandbox`` does,
so client and server do not share one interpreter lock.

    .venv/bin/python bench/bench_sandbox.py [--n 3000]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import mongomock_ng
import pymongo

from walkit.sandbox import SandboxProcess


def rate(n: int, step: Callable[[int], object]) -> float:
    for i in range(min(200, n)):  # warm up
        step(-1 - i)
    start = time.perf_counter()
    for i in range(n):
        step(i)
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=3000, help="round trips per measurement")
    n = parser.parse_args().n
    doc = {"item": "tea", "qty": 2, "tags": ["a", "b"], "nested": {"x": 1.5, "y": "z" * 64}}

    baseline_coll = mongomock_ng.MongoClient().bench.c
    baseline = rate(n, lambda i: baseline_coll.insert_one({"_id": i, **doc}))

    with SandboxProcess() as server:
        client: pymongo.MongoClient = pymongo.MongoClient(server.uri)
        coll = client.bench.c
        inserts = rate(n, lambda i: coll.insert_one({"_id": i, **doc}))
        coll.drop()
        with coll.watch(max_await_time_ms=1000) as stream:

            def watched(i: int) -> None:
                coll.insert_one({"_id": i, **doc})
                event = stream.next()
                assert event["documentKey"]["_id"] == i

            watched_rate = rate(n // 3, watched)
        client.close()

    rows = [
        ("mongomock-ng insert_one, in process (baseline)", baseline),
        ("sandbox insert_one via pymongo", inserts),
        ("sandbox watched insert (write -> event delivered)", watched_rate),
    ]
    print(f"{'measure':<52}{'ops/s':>10}{'ratio':>10}")
    for label, value in rows:
        print(f"{label:<52}{value:>10.0f}{value / baseline:>10.2f}")


if __name__ == "__main__":
    main()
