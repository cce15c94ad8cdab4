"""Trimming a checkpoint to the graph below the cut, checked with mxnet's own loader."""
from __future__ import annotations

import os
import struct

import mxnet as mx

from launcher.data.trim import trim_params, used_variables


def test_trimmed_params_keep_everything_below_the_cut(demo_assets, tmp_path):
    prefix = os.path.join(demo_assets, "pretrained-digits0to4")
    keep = used_variables(prefix + "-symbol.json", "flatten0")
    assert "fc1_weight" not in keep and "conv0_weight" in keep and "bn1_moving_var" in keep
    assert trim_params(prefix + "-0000.params", keep, str(tmp_path / "t.params")) == (41, 2)
    original, trimmed = mx.nd.load(prefix + "-0000.params"), mx.nd.load(str(tmp_path / "t.params"))
    assert set(original) - set(trimmed) == {"arg:fc1_weight", "arg:fc1_bias"}
    assert all((original[name] == trimmed[name]).asnumpy().all() for name in trimmed)
    assert os.path.getsize(tmp_path / "t.params") < os.path.getsize(prefix + "-0000.params")
    # the BatchNorm statistics alone: what a host without worker 0 gets (issue 26: the model once)
    kept = trim_params(prefix + "-0000.params", keep, str(tmp_path / "s.params"), kinds=("aux",))
    statistics = mx.nd.load(str(tmp_path / "s.params"))
    assert kept == (len(statistics), 43 - len(statistics)) and statistics
    assert {name for name in original if name.startswith("aux:")} == set(statistics)


def test_other_dtypes_and_unknown_forms(tmp_path):
    mx.nd.save(str(tmp_path / "a.params"), {"arg:x": mx.nd.ones((2, 3), dtype="float16"),
                                            "arg:y": mx.nd.array([1, 2], dtype="int64"), "aux:z": mx.nd.ones((4,))})
    assert trim_params(str(tmp_path / "a.params"), {"x", "z"}, str(tmp_path / "b.params")) == (2, 1)
    loaded = mx.nd.load(str(tmp_path / "b.params"))
    assert sorted(loaded) == ["arg:x", "aux:z"] and loaded["arg:x"].dtype.__name__ == "float16"
    header = struct.pack("<QQQ", 0x112, 0, 1)  # claims one array, then holds no NDArray magic
    (tmp_path / "junk.params").write_bytes(header + b"\0" * 40)
    assert trim_params(str(tmp_path / "junk.params"), {"x"}, str(tmp_path / "c.params")) is None
    assert not (tmp_path / "c.params").exists()


def test_sparse_arrays_are_kept_verbatim_and_a_cut_file_is_not_trimmed(tmp_path):
    source, out = str(tmp_path / "s.params"), str(tmp_path / "t.params")
    mx.nd.save(source, {"arg:w": mx.nd.array([[0, 1], [2, 0]]).tostype("csr"), "arg:fc1_weight": mx.nd.ones((3,))})
    assert trim_params(source, {"w"}, out) == (1, 1)
    assert (mx.nd.load(out)["arg:w"].asnumpy() == [[0, 1], [2, 0]]).all()
    data = open(source, "rb").read()
    with open(source, "wb") as handle:
        handle.write(data[:-3])  # the last name cut short
    os.remove(out)
    assert trim_params(source, {"w"}, out) is None
    assert os.listdir(tmp_path) == ["s.params"]  # no output, no temporary file left
