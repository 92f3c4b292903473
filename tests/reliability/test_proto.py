from __future__ import annotations
import time, os, signal
from pathlib import Path
import numpy as np
from flowkit import decisions, demo_config, gen_payloads, items_of, run_memory
from enginekit import Engine, engine_args, shard_states, comparable, counters, wait_for
from intentflow.commands.produce import Producer

def test_proto(forkserver, redis_url, redis_client, tmp_path):
    t0=time.time()
    payloads = gen_payloads(5000, seed=21, poison_fraction=0.005)
    ref_dir = tmp_path / "ref"; ref_dir.mkdir()
    out = run_memory(demo_config(), items_of(payloads), recovery_dir=ref_dir)
    print("ref", time.time()-t0, len(decisions(out)))
    ref = shard_states(ref_dir)
    print({k: v["counters"] for k,v in ref.items()})
    Producer(redis_client, "intentflow:events:", 2).send(payloads)
    rec = tmp_path / "rec"
    t0=time.time()
    e = Engine(forkserver, engine_args(redis_url, recovery=rec, init=True), tmp_path/"e.log").start()
    wait_for(lambda: counters(shard_states(rec)) == counters(ref), 60, "all", e)
    print("engine", time.time()-t0)
    e.kill9()
    probe = np.random.default_rng(0).normal(size=(50, 64))
    a = comparable(shard_states(rec), probe); b = comparable(ref, probe)
    assert a == b
