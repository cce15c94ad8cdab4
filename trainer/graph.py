"""The fine-tuning graph edit of MXNet's tutorial, as a pure function of a symbol."""
from __future__ import annotations

import mxnet as mx

NEW_LAYER = "fc1"


def fine_tune_symbol(symbol: mx.sym.Symbol, arg_params: dict, aux_params: dict, *, num_classes: int,
                     cut_layer: str = "flatten0", variant: str = "full"):
    """Cut ``symbol`` at ``cut_layer`` and put a new ``fc1`` + ``softmax`` on top.

    Returns ``(new_symbol, arg_params, aux_params, fixed_param_names)``: the pretrained
    weights the new graph still uses (everything but the old output layer; none for
    the ``scratch`` variant), and for ``frozen`` the names of every pretrained
    parameter, which then stay fixed while only the new layer learns. ``frozen`` also
    stops the backward pass at the cut, so the backbone costs only its forward pass.

    Raises ValueError naming the layers there are when ``cut_layer`` is not in the graph.
    """
    internals = symbol.get_internals()
    outputs = internals.list_outputs()
    wanted = f"{cut_layer}_output"
    if wanted not in outputs:
        layers = [name[: -len("_output")] for name in outputs if name.endswith("_output")]
        raise ValueError(f"layer '{cut_layer}' is not in the graph; its last layers are {', '.join(layers[-6:])}")
    features = internals[wanted]
    if variant == "frozen":
        features = mx.sym.BlockGrad(features, name=f"{cut_layer}_frozen")
    net = mx.sym.FullyConnected(data=features, num_hidden=num_classes, name=NEW_LAYER)
    net = mx.sym.SoftmaxOutput(data=net, name="softmax")

    new_layer = {f"{NEW_LAYER}_weight", f"{NEW_LAYER}_bias"}
    keep_args = set(net.list_arguments()) - new_layer
    keep_aux = set(net.list_auxiliary_states())
    if variant == "scratch":
        return net, {}, {}, []
    args = {name: value for name, value in arg_params.items() if name in keep_args}
    aux = {name: value for name, value in aux_params.items() if name in keep_aux}
    fixed = sorted(args) if variant == "frozen" else []
    return net, args, aux, fixed
