"""A ps-lite program for command-mode tests: every worker pushes known values and checks the pull.

    python pslite_check.py --expect-json '["a b", "$HOME"]' -- "a b" '$HOME'

Run as every role by mxft-launch (servers and the scheduler become ps-lite nodes when
they import mxnet). Each worker checks that its own argv after ``--`` equals the JSON
list (what the launcher was given), that ``--expect-env NAME=VALUE`` holds (or
``--expect-env-sha256 NAME=HEX``, for a value that must not appear on a command line), pushes
``rank + 1`` into a small key and a key big enough to be split over every server,
and checks the pulled sums on every worker. ``--fail-rank R`` makes rank R exit 3; ``--raise-rank R`` makes rank R
raise after its first round, while the others go on to the next.
"""
import argparse
import hashlib
import json
import os
import sys

import mxnet as mx  # a server or the scheduler runs its ps-lite loop here and exits

parser = argparse.ArgumentParser()
parser.add_argument("--expect-json", default="[]")
parser.add_argument("--expect-env", action="append", default=[])
parser.add_argument("--expect-env-sha256", action="append", default=[])
parser.add_argument("--fail-rank", type=int, default=-1)
parser.add_argument("--raise-rank", type=int, default=-1)
parser.add_argument("--rounds", type=int, default=3)
parser.add_argument("words", nargs="*")
args = parser.parse_args()

kv = mx.kv.create("dist_sync")
rank, workers = kv.rank, kv.num_workers
print(f"rank {rank} of {workers}, role {os.environ.get('DMLC_ROLE')}, cwd {os.getcwd()}", flush=True)
expected = json.loads(args.expect_json)
if args.words != expected:
    sys.exit(f"argv changed on the way: got {args.words!r}, expected {expected!r}")
for item in args.expect_env:
    name, _, value = item.partition("=")
    if os.environ.get(name) != value:
        sys.exit(f"environment: {name}={os.environ.get(name)!r}, expected {value!r}")
for item in args.expect_env_sha256:
    name, _, digest = item.partition("=")
    if hashlib.sha256(os.environ.get(name, "").encode()).hexdigest() != digest:
        sys.exit(f"environment: {name} is not the value expected (sha256 {digest[:12]}...)")
if rank == args.fail_rank:
    print(f"rank {rank} fails on purpose", flush=True)
    os._exit(3)

shapes = {3: (4, 5), 7: (1200, 1000)}  # 1.2M floats: above MXNET_KVSTORE_BIGARRAY_BOUND, split over servers
for key, shape in shapes.items():
    kv.init(key, mx.nd.zeros(shape))
total = workers * (workers + 1) / 2
for step in range(args.rounds):
    for key, shape in shapes.items():
        kv.push(key, mx.nd.ones(shape) * (rank + 1) * (step + 1))
        out = mx.nd.zeros(shape)
        kv.pull(key, out=out)
        got = out.asnumpy()
        want = total * (step + 1)
        if not (got == want).all():
            sys.exit(f"key {key} step {step}: pulled {got.min()}..{got.max()}, expected {want} everywhere")
    if rank == args.raise_rank:
        raise RuntimeError(f"rank {rank} raises on purpose after round {step + 1}")
kv._barrier()  # every worker checked before any leaves
print(f"rank {rank}: all {args.rounds} rounds of push/pull correct (sum {total:g} per round)", flush=True)
