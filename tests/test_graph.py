"""The tutorial's graph edit on a real MXNet symbol."""
from __future__ import annotations

import mxnet as mx
import pytest

from launcher.data.demo_assets import mini_resnet
from trainer.graph import fine_tune_symbol


@pytest.fixture(scope="module")
def pretrained():
    sym = mini_resnet(7)
    mod = mx.mod.Module(sym, context=mx.cpu())
    mod.bind(data_shapes=[("data", (1, 3, 28, 28))], label_shapes=[("softmax_label", (1,))])
    mod.init_params(mx.init.Xavier())
    args, aux = mod.get_params()
    return sym, args, aux


def test_full_keeps_every_pretrained_weight_but_the_old_output_layer(pretrained):
    sym, args, aux = pretrained
    net, new_args, new_aux, fixed = fine_tune_symbol(sym, args, aux, num_classes=3)
    assert net.list_outputs() == ["softmax_output"]
    assert set(new_args) == set(args) - {"fc1_weight", "fc1_bias"}
    assert new_aux.keys() == aux.keys() and fixed == []
    _, out_shapes, _ = net.infer_shape(data=(2, 3, 28, 28))
    assert out_shapes == [(2, 3)]
    assert dict(zip(net.list_arguments(), net.infer_shape(data=(2, 3, 28, 28))[0]))["fc1_weight"] == (3, 64)


def test_frozen_fixes_the_backbone_and_stops_its_gradient(pretrained):
    sym, args, aux = pretrained
    net, new_args, _, fixed = fine_tune_symbol(sym, args, aux, num_classes=3, variant="frozen")
    assert fixed == sorted(new_args) and "fc1_weight" not in fixed and "conv0_weight" in fixed
    assert "flatten0_frozen_output" in net.get_internals().list_outputs()


def test_scratch_keeps_nothing(pretrained):
    sym, args, aux = pretrained
    _, new_args, new_aux, fixed = fine_tune_symbol(sym, args, aux, num_classes=3, variant="scratch")
    assert new_args == {} and new_aux == {} and fixed == []


def test_cut_elsewhere_and_bad_layer(pretrained):
    sym, args, aux = pretrained
    net, new_args, _, _ = fine_tune_symbol(sym, args, aux, num_classes=3, cut_layer="relu1")
    assert "flatten0_output" not in net.get_internals().list_outputs()
    with pytest.raises(ValueError, match="layer 'flaten0' is not in the graph; its last layers are .*flatten0"):
        fine_tune_symbol(sym, args, aux, num_classes=3, cut_layer="flaten0")
