"""Push and pull a model's gradients through a dist kvstore, timing each step (a bench program).

    mxft-launch -H hosts.txt -n 4 -s 2 -- python kvstore_step.py --model resnet50 --steps 10

Every array of the model (the shapes of its parameters) goes through one ``pushpull``, as
``Module.update`` sends it (MXNet 1.9: a push whose answer is the servers' merged value), or
with ``--push-then-pull`` a push and then a pull, as Module does for compressed pushes; a
step ends when every pulled array is ready. Rank 0 prints ``@bench {json}`` with the median
and min-max step time.
"""
import argparse
import json
import statistics
import time

import mxnet as mx  # servers and the scheduler run their ps-lite loop here and exit


def shapes_of(model: str, params: str | None, shapes: str | None = None) -> list[tuple[int, ...]]:
    if shapes:  # a JSON list of shapes in the order Module initialises its keys (bench/network.py writes it)
        with open(shapes, encoding="utf-8") as handle:
            return [tuple(shape) for shape in json.load(handle)]
    if model == "resnet50":  # the tutorial's network with a 257-class head; built, not downloaded
        net = mx.gluon.model_zoo.vision.resnet50_v1(classes=257)
        net.initialize()
        net(mx.nd.zeros((1, 3, 224, 224)))
        return [p.shape for p in net.collect_params().values() if p.grad_req != "null"]
    loaded = mx.nd.load(params)
    return [a.shape for name, a in loaded.items() if name.startswith("arg:")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("demo", "resnet50"), default="demo")
    parser.add_argument("--params", help="for --model demo: the pretrained .params file")
    parser.add_argument("--shapes", help="a JSON list of array shapes (instead of --model)")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--kvstore", default="dist_sync")
    parser.add_argument("--push-then-pull", action="store_true", help="a push, then a pull of each key (as "
                        "MXNet's Module does only for compressed or sparse arrays); default: one pushpull per key, "
                        "as Module does otherwise, so the servers answer a push with the merged value")
    parser.add_argument("--compression", type=float, default=0.0, help="2bit gradient compression with this "
                        "threshold (0: none), set before any key as mxft's trainer does")
    args = parser.parse_args()
    shapes = shapes_of(args.model, args.params, args.shapes)
    kv = mx.kv.create(args.kvstore)
    if args.compression:
        kv.set_gradient_compression({"type": "2bit", "threshold": args.compression})
    grads = [mx.nd.ones(shape) for shape in shapes]
    outs = [mx.nd.zeros(shape) for shape in shapes]
    for key, grad in enumerate(grads):
        kv.init(key, mx.nd.zeros(grad.shape))
    mx.nd.waitall()
    times = []
    for step in range(args.steps + 2):  # two warm-up steps
        started = time.perf_counter()
        for key, grad in enumerate(grads):
            if args.push_then_pull or args.compression:  # MXNet 1.9 refuses pushpull with compression
                kv.push(key, grad, priority=-key)
                kv.pull(key, out=outs[key], priority=-key)
            else:
                kv.pushpull(key, grad, out=outs[key], priority=-key)
        mx.nd.waitall()
        if step >= 2:
            times.append(time.perf_counter() - started)
    size_mb = sum(g.size for g in grads) * 4 / 1e6
    if kv.rank == 0:
        print("@bench " + json.dumps({"workers": kv.num_workers, "arrays": len(grads), "mb": round(size_mb, 2),
                                      "step_ms": [round(t * 1000, 2) for t in times],
                                      "median_ms": round(statistics.median(times) * 1000, 2)}), flush=True)


if __name__ == "__main__":
    main()
