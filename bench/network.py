"""Gradient steps against a real network limit (issue 13, items 1-4): the tutorial's gradients over tbf links.

Three namespace hosts (testing/netns.py) whose links are limited to ``RATE_MBIT`` in each
direction with ``tc ... tbf``, so the network, not the two shared cores, sets the pace.
``bench/programs/kvstore_step.py`` (command mode) pushes and pulls the exact parameter
shapes of the tutorial's fine-tuned ResNet-50 and ResNet-152 (built from the
pre-activation ResNet of ``bench.synthetic``, cut at flatten0 with a 257-class ``fc1``; the
key order is Module's), one worker per host. For each setting it reports the median step
time, the lower bound ``t_min = 2·G·(H-1)/(H·B)`` (G bytes of gradients, H hosts, B bytes/s
per link and direction: each host must send and receive its share, the bound of a ring
all-reduce), their ratio, and the bytes each server receives per step under MXNet's key
assignment (``server_shares``, from ``src/kvstore/kvstore_dist.h``: an array of fewer values
than ``MXNET_KVSTORE_BIGARRAY_BOUND`` goes whole to server ``key*9973 % S``, a larger one is
split evenly over all servers).

Hosts: one (nothing crosses a link: the step is what ps-lite itself costs here), two and three.
Placements: one server per host (mxft's ``servers: auto``; tools/launch.py's ``-s`` =
``-n`` puts them on the same hosts here, one worker per host), and a single server. Bounds:
MXNet's default 1,000,000 and mxft's default 100,000 (``cluster.bigarray_bound``).

Each key moves as MXNet 1.9's ``Module.update`` moves it: one ``pushpull`` (a push that the
servers answer with the merged value, to every worker at once), and for comparison as a push
then a pull (``--push-then-pull``, what Module does for compressed pushes). With the second,
a worker whose pulls finish first pushes its next step into the downlink of a worker still
pulling, whose uplink idles meanwhile, and the step stretches (the links' byte counters,
sampled every 0.2 s, showed it). Beside them, plain TCP over the same links
(``bench/programs/tcp_mesh.py``) moves a step's bytes: what the links deliver with no ps-lite.
``bench.trainer_step`` measures the trainer's own steps against the same bound.

``python -m bench network`` (root; about 10 minutes); ``MXFT_NET_MBIT`` sets the rate.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from bench.report import ROOT, provenance, spread, write_section

RATE_MBIT = float(os.environ.get("MXFT_NET_MBIT", "400"))
STEPS = 5
MXNET_BOUND, MXFT_BOUND = 1_000_000, 100_000


def server_shares(sizes: list[int], servers: int, bound: int) -> list[int]:
    """Values each server holds (and receives from each worker per push) under MXNet's key assignment.

    >>> server_shares([10, 10, 10, 300], 3, 100)     # 300 >= 100: split; keys 0-2 -> servers 0-2
    [110, 110, 110]
    >>> server_shares([10, 10, 10, 300], 3, 1000)    # key 3 -> server 3*9973 % 3 = 0, whole
    [310, 10, 10]
    """
    out = [0] * servers
    for key, size in enumerate(sizes):
        if size < bound:
            out[(key * 9973) % servers] += size
        else:
            for i in range(servers):
                out[i] += round(size / servers * (i + 1)) - round(size / servers * i)
    return out


def t_min_s(gradient_bytes: int, hosts: int, rate_mbit: float) -> float:
    """The push+pull step's lower bound on links of ``rate_mbit`` each way.

    >>> round(t_min_s(96_000_000, 3, 400), 3)
    2.56
    """
    return 2 * gradient_bytes * (hosts - 1) / (hosts * rate_mbit * 1e6 / 8)


def model_shapes(depth: int, work: str) -> list[list[int]]:
    """The fine-tuned tutorial network's parameter shapes, in Module's key order (a child process: mxnet).

    The cut-and-extended graph has the arguments of the pre-activation ResNet with a 257-class
    ``fc1``, in the same order (``trainer.graph`` puts the new fc1 where the old one was: last).
    """
    out = os.path.join(work, f"shapes-{depth}.json")
    code = f"""
import json
from bench.synthetic import preact_resnet
net = preact_resnet({depth}, 257)
shapes, _, _ = net.infer_shape(data=(1, 3, 224, 224), softmax_label=(1,))
json.dump([list(s) for n, s in zip(net.list_arguments(), shapes) if n not in ("data", "softmax_label")],
          open({out!r}, "w"))
"""
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, env=dict(os.environ, PYTHONPATH=ROOT),
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(out, encoding="utf-8") as handle:
        return json.load(handle)


def step_times(cluster, work: str, shapes_file: str, *, hosts: int, servers: int, bound: int,
               extra: tuple[str, ...] = (), workers: int | None = None) -> list[float]:
    """Step seconds of kvstore_step.py (after its warm-up) with one worker on each of the first ``hosts`` hosts
    (``workers``: on the first that many; servers go round-robin after them; ``extra``: more of its arguments)."""
    hosts_file = os.path.join(work, f"hosts{hosts}.txt")
    with open(hosts_file, "w", encoding="utf-8") as handle:
        handle.writelines(f"{h.address} python={sys.executable}\n" for h in cluster.hosts[:hosts])
    result = subprocess.run(
        [sys.executable, "-m", "launcher.cli", "-H", hosts_file, "--ssh-config", cluster.ssh_config, "--remote-dir",
         "/srv/mxft-host", "-n", str(workers or hosts), "-s", str(servers), "--sync-dir",
         "/srv/mxft-host/bench-network",
         "--env", f"MXNET_KVSTORE_BIGARRAY_BOUND={bound}", "--run-root", os.path.join(work, "runs"), "--",
         "python", "kvstore_step.py", "--shapes", os.path.basename(shapes_file), "--steps", str(STEPS), *extra],
        cwd=os.path.dirname(shapes_file), env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True,
        timeout=900)
    line = next((l for l in result.stdout.splitlines() if "@bench " in l), None)
    if result.returncode != 0 or line is None:
        raise RuntimeError(f"kvstore_step failed ({result.returncode}): {result.stdout[-1500:]}{result.stderr[-800:]}")
    return [ms / 1000 for ms in json.loads(line.split("@bench ", 1)[1])["step_ms"]]


SETTINGS = (  # (depth, hosts, servers, bound, pushpull: one call per key as Module makes it; else push, then pull)
    (50, 1, 1, MXFT_BOUND, True),  # nothing crosses a link: what ps-lite itself costs a step here
    (50, 2, 2, MXNET_BOUND, True), (50, 2, 2, MXFT_BOUND, True), (50, 2, 1, MXFT_BOUND, True),
    (50, 3, 3, MXNET_BOUND, True), (50, 3, 3, MXFT_BOUND, True), (50, 3, 3, MXFT_BOUND, False),
    (50, 3, 1, MXFT_BOUND, True),
    (152, 3, 3, MXNET_BOUND, True), (152, 3, 3, MXFT_BOUND, True),
)


def tcp_mesh_s(cluster, hosts: int, per_peer: int) -> float:
    """Seconds plain TCP takes when each of the first ``hosts`` hosts sends ``per_peer`` bytes to every other at
    once (``bench/programs/tcp_mesh.py`` in each namespace): what the links deliver, with no ps-lite."""
    program = os.path.join(ROOT, "bench", "programs", "tcp_mesh.py")
    chosen = cluster.hosts[:hosts]
    start_at = time.time() + 2
    runs = [subprocess.Popen(["ip", "netns", "exec", host.namespace, sys.executable, program, host.address,
                              ",".join(other.address for other in chosen if other is not host), str(per_peer),
                              f"{start_at:.3f}"], stdout=subprocess.PIPE, text=True) for host in chosen]
    try:
        outputs = [run.communicate(timeout=660)[0] for run in runs]
    finally:
        for run in runs:
            run.kill()
    if any(run.returncode for run in runs):
        raise RuntimeError(f"tcp_mesh.py failed on {hosts} hosts: {outputs}")
    return max(float(out) for out in outputs)


def bench_program(work: str, depths=(50, 152)) -> tuple[str, dict[int, list[list[int]]]]:
    """kvstore_step.py and each network's shapes file in one folder (what --sync-dir sends); their shapes."""
    program = os.path.join(work, "program")
    os.makedirs(program)
    shutil.copy(os.path.join(ROOT, "bench", "programs", "kvstore_step.py"), program)
    shapes = {}
    for depth in depths:
        shapes[depth] = model_shapes(depth, work)
        with open(os.path.join(program, f"shapes-{depth}.json"), "w", encoding="utf-8") as handle:
            json.dump(shapes[depth], handle)
    return program, shapes


def measure(cluster, work: str, program: str, shapes: dict[int, list[list[int]]]) -> list[dict]:
    rows = []
    for depth, hosts, servers, bound, pushpull in SETTINGS:
        sizes = [math.prod(s) for s in shapes[depth]]
        steps = step_times(cluster, work, os.path.join(program, f"shapes-{depth}.json"), hosts=hosts,
                           servers=servers, bound=bound, extra=() if pushpull else ("--push-then-pull",))
        shares = server_shares(sizes, servers, bound)
        rows.append({"depth": depth, "hosts": hosts, "servers": servers, "bound": bound, "pushpull": pushpull,
                     "step_s": statistics.median(steps), "steps": steps,
                     "t_min_s": t_min_s(4 * sum(sizes), hosts, RATE_MBIT), "shares": shares})
        print(f"[bench] resnet-{depth} {hosts} hosts {servers} servers bound {bound} pushpull {pushpull}: {steps}",
              flush=True)
    return rows


def measure_shares(cluster, work: str, program: str, shapes: dict[int, list[list[int]]]) -> list[dict]:
    """The bytes each server receives, counted: one worker on the first host, a server on each of the other two
    (command mode's round-robin), so each server host's link carries only what is pushed to its server. Links
    unlimited for this (bytes do not depend on the rate), limited again after."""
    from testing import netns
    netns.limit_links(cluster, None)
    rows = []
    try:
        for depth in (50, 152):
            for bound in (MXNET_BOUND, MXFT_BOUND):
                before = netns.link_bytes(cluster)
                step_times(cluster, work, os.path.join(program, f"shapes-{depth}.json"), hosts=3, servers=2,
                           bound=bound, workers=1)
                after = netns.link_bytes(cluster)
                received = [after[h.name][0] - before[h.name][0] for h in cluster.hosts[1:3]]
                rows.append({"depth": depth, "bound": bound, "received": received,
                             "computed": server_shares([math.prod(s) for s in shapes[depth]], 2, bound)})
                print(f"[bench] server bytes resnet-{depth} bound {bound}: {rows[-1]}", flush=True)
    finally:
        netns.limit_links(cluster, RATE_MBIT)
    return rows


def measure_tcp(cluster, work: str) -> list[dict]:
    """Plain TCP moving a ResNet-50 step's bytes (each host sends 2·G/H to every other host), 3 times per count."""
    gradient_bytes = 4 * sum(math.prod(s) for s in model_shapes(50, work))
    rows = []
    for hosts in (2, 3):
        runs = [tcp_mesh_s(cluster, hosts, 2 * gradient_bytes // hosts) for _ in range(3)]
        rows.append({"hosts": hosts, "runs": runs, "t_min_s": t_min_s(gradient_bytes, hosts, RATE_MBIT)})
        print(f"[bench] tcp mesh {hosts} hosts: {runs}", flush=True)
    return rows


def section(rows: list[dict], tcp: list[dict], counted: list[dict]) -> str:
    rate = "" if RATE_MBIT == 400 else f", {RATE_MBIT:g} Mbit/s"
    lines = [f"## Gradient steps on a limited network (issue 13){rate}", "",
             f"Three namespace hosts, each link limited to {RATE_MBIT:g} Mbit/s each way (`tc tbf`); one worker per "
             "host pushes and pulls the fine-tuned tutorial network's gradients (`bench/programs/kvstore_step.py`, "
             f"median of {STEPS} steps after 2 warm-up steps). t_min = 2·G·(H−1)/(H·B). Server shares: values "
             "each server receives per worker push, largest / smallest. Calls: `pushpull`, one per key, as MXNet's "
             "Module makes them (the servers answer each push with the merged value), or a push then a pull, as "
             "Module does for compressed pushes. One host: nothing crosses a link, the step is ps-lite's own cost.",
             "",
             "| network | hosts | servers | bigarray bound | calls | step s (min-max) | t_min s | step / t_min | "
             "server shares max/min |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ratio = max(r["shares"]) / min(r["shares"])
        to_bound = f"{r['step_s'] / r['t_min_s']:.2f}" if r["t_min_s"] else "-"  # one host: nothing crosses a link
        lines.append(f"| ResNet-{r['depth']} | {r['hosts']} | {r['servers']} | {r['bound']:,} | "
                     f"{'pushpull' if r['pushpull'] else 'push, pull'} | {spread(r['steps'], '{:.2f}')} | "
                     f"{r['t_min_s']:.2f} | {to_bound} | {ratio:.2f} |")
    lines += ["", "Plain TCP over the same links (`bench/programs/tcp_mesh.py`: every host sends a ResNet-50 step's "
                  "bytes to every other at once, no ps-lite), 3 runs:", "",
              "| hosts | seconds (min-max) | t_min s | seconds / t_min |", "|---|---|---|---|"]
    lines += [f"| {t['hosts']} | {spread(t['runs'], '{:.2f}')} | {t['t_min_s']:.2f} | "
              f"{statistics.median(t['runs']) / t['t_min_s']:.2f} |" for t in tcp]
    lines += ["", "Bytes each server received, counted on its host's link: one worker on the first host and a server "
                  f"on each of the other two, {STEPS} + 2 steps and the keys' first values; against the shares "
                  "computed from MXNet's key assignment above:", "",
              "| network | bigarray bound | server hosts' bytes received (MB) | max/min counted | max/min computed |",
              "|---|---|---|---|---|"]
    lines += [f"| ResNet-{c['depth']} | {c['bound']:,} | {', '.join(f'{b / 1e6:,.0f}' for b in c['received'])} | "
              f"{max(c['received']) / min(c['received']):.2f} | {max(c['computed']) / min(c['computed']):.2f} |"
              for c in counted]
    return "\n".join(lines + ["", *network_verdict(rows, counted), "", f"Measured {provenance()}."])


def network_verdict(rows: list[dict], counted: list[dict]) -> list[str]:
    """The goals, said plainly."""
    def row(depth, servers, bound, pushpull=True):
        return next(r for r in rows if (r["depth"], r["hosts"], r["servers"], r["bound"], r["pushpull"])
                    == (depth, 3, servers, bound, pushpull))
    mxft3, split3 = row(50, 3, MXFT_BOUND), row(50, 3, MXFT_BOUND, pushpull=False)
    launch_py3 = row(50, 3, MXNET_BOUND)
    balanced = all(max(r["shares"]) / min(r["shares"]) <= 1.10 for r in rows
                   if r["bound"] == MXFT_BOUND and r["servers"] > 1) and \
        all(max(c["received"]) / min(c["received"]) <= 1.10 for c in counted if c["bound"] == MXFT_BOUND)
    faster = mxft3["step_s"] <= launch_py3["step_s"]
    return ["tools/launch.py's placement is the same here (`-s` = `-n`, one worker per host: a server on each "
            "host) with MXNet's bound; mxft's default is its placement with bound 100,000. ResNet-50, 3 hosts: "
            f"mxft {mxft3['step_s']:.2f} s vs launch.py {launch_py3['step_s']:.2f} s (goal: at least as fast): "
            f"**{'met' if faster else 'NOT met'}**" + (" (every mxft step faster than every launch.py step)."
                                                     if max(mxft3["steps"]) < min(launch_py3["steps"])
                                                     else " (the step ranges overlap)."),
            "",
            f"ResNet-50 at 3 hosts with mxft's placement and bound, keys moved as the trainer moves them (goal: at "
            f"most 1.3x t_min): {mxft3['step_s'] / mxft3['t_min_s']:.2f}x, slowest step "
            f"{max(mxft3['steps']) / mxft3['t_min_s']:.2f}x: "
            f"**{'met' if mxft3['step_s'] <= 1.3 * mxft3['t_min_s'] else 'NOT met'}**. A push then a pull (as with "
            f"compression): {split3['step_s'] / split3['t_min_s']:.2f}x. Server shares within 10% with "
            f"mxft's bound, both networks (computed for 2 and 3 servers, counted for 2): "
            f"**{'met' if balanced else 'NOT met'}**."]


@contextlib.contextmanager
def limited_hosts(rate_mbit: float, count: int = 3):
    """``count`` namespace hosts whose links carry ``rate_mbit`` each way, and a work folder; both gone after."""
    sys.path.insert(0, ROOT)
    from testing import netns
    cluster = netns.up(count)
    try:
        netns.limit_links(cluster, rate_mbit)
        with tempfile.TemporaryDirectory() as work:
            yield cluster, work
    finally:
        netns.down()


def main() -> None:
    with limited_hosts(RATE_MBIT) as (cluster, work):
        program, shapes = bench_program(work)
        rows = measure(cluster, work, program, shapes)
        tcp = measure_tcp(cluster, work)
        counted = measure_shares(cluster, work, program, shapes)
    text = section(rows, tcp, counted)
    write_section("network" if RATE_MBIT == 400 else f"network-{RATE_MBIT:g}mbit", text)  # other rates: beside it
    print(text)


if __name__ == "__main__":
    main()
