"""The params file walk: every form MXNet loads is accepted, anything cut short or padded is not."""
from __future__ import annotations

import os
import struct

import mxnet as mx
import pytest

from cluster.errors import InputError
from launcher.data.inputs import check_params_file
from launcher.data.paramsfile import ArraySpan, BadParams, ParamsLayout, parse_layout, read_layout

_V1, _V2 = 0xF993FAC8, 0xF993FAC9


def _dense_v2(values: list[float], shape: tuple[int, ...]) -> bytes:
    """One float32 array as mx.nd.save writes it (V2, default storage, cpu(0))."""
    return (struct.pack(f"<Iii{len(shape)}q", _V2, 0, len(shape), *shape) + struct.pack("<iii", 1, 0, 0)
            + struct.pack(f"<{len(values)}f", *values))


def _params(arrays: list[bytes], names: list[str]) -> bytes:
    body = struct.pack("<QQQ", 0x112, 0, len(arrays)) + b"".join(arrays) + struct.pack("<Q", len(names))
    return body + b"".join(struct.pack("<Q", len(n.encode())) + n.encode() for n in names)


GOOD = _params([_dense_v2([1, 2, 3, 4, 5, 6], (2, 3)), _dense_v2([7], (1,))], ["arg:w", "aux:m"])


def test_a_complete_file_and_where_each_array_is():
    # header 24 bytes; array 0: 28 of header and shape, 12 of context and dtype, 24 of data; array 1: 20 + 12 + 4
    assert parse_layout(GOOD) == ParamsLayout(158, (ArraySpan(24, 88, True), ArraySpan(88, 124, True)),
                                              ("arg:w", "aux:m"))


def test_every_cut_of_a_file_is_refused_with_where():
    for cut in range(len(GOOD)):
        found = parse_layout(GOOD[:cut])
        assert isinstance(found, BadParams), cut
        assert found.reason == "bad header" if cut < 8 else found.reason.startswith(f"cut short at byte {cut}: ")
    assert parse_layout(GOOD[:122]) == BadParams("cut short at byte 122: array 1's data needs 4 bytes from byte 120")


def test_extra_bytes_and_garbage_are_refused():
    assert parse_layout(GOOD + b"\0") == BadParams(f"1 extra bytes after the last name (from byte {len(GOOD)})")
    assert parse_layout(b"garbage!" + GOOD[8:]) == BadParams("bad header")
    assert parse_layout(os.urandom(64)) == BadParams("bad header")
    junk = struct.pack("<QQQ", 0x112, 0, 1) + b"\xff" * 40  # one array with no NDArray header
    assert parse_layout(junk) == BadParams("array 0 has no NDArray header (0xffffffff at byte 24)")
    unknown_dtype = GOOD[:60] + struct.pack("<i", 99) + GOOD[64:]
    assert parse_layout(unknown_dtype) == BadParams("array 0 has unknown data type 99 (byte 60)")
    two_names = _params([_dense_v2([1], (1,))], ["arg:a", "arg:b"])
    assert parse_layout(two_names) == BadParams("2 names for 1 arrays (byte 60)")
    assert parse_layout(struct.pack("<QQQ", 0x112, 0, 10 ** 18)).reason.startswith("cut short at byte 24: ")


def test_empty_file(tmp_path):
    (tmp_path / "e.params").write_bytes(b"")
    assert read_layout(str(tmp_path / "e.params")) == BadParams("the file is empty")


@pytest.mark.parametrize("arrays, dense", [
    ({"arg:h": mx.nd.ones((2, 3), dtype="float16"), "arg:i": mx.nd.array([1, 2], dtype="int64"),
      "arg:u": mx.nd.array([1, 2], dtype="uint8"), "aux:s": mx.nd.array([5])}, [True] * 4),
    ({"arg:csr": mx.nd.array([[0, 1], [2, 0]]).tostype("csr"),
      "arg:csr2": mx.nd.sparse.csr_matrix(([1, 2, 3], [0, 2, 1], [0, 2, 3]), shape=(2, 3)),
      "aux:rsp": mx.nd.array([[0, 0], [1, 2], [0, 0], [3, 4]]).tostype("row_sparse"),
      "aux:rsp3": mx.nd.array(list(range(24))).reshape((2, 3, 4)).tostype("row_sparse"),
      "arg:d": mx.nd.ones((3,))}, [False, False, False, False, True]),
    ([mx.nd.ones((3,)), mx.nd.zeros((1, 1))], [True, True]),  # saved from a list: no names
], ids=["dtypes", "sparse", "unnamed"])
def test_what_mxnet_writes_is_accepted_and_every_cut_of_it_refused(tmp_path, arrays, dense):
    path = str(tmp_path / "m.params")
    mx.nd.save(path, arrays)
    layout = read_layout(path)
    assert isinstance(layout, ParamsLayout), layout
    assert layout.size_bytes == os.path.getsize(path) and [span.dense for span in layout.arrays] == dense
    assert list(layout.names) == (list(arrays) if isinstance(arrays, dict) else [])
    data = open(path, "rb").read()
    assert [cut for cut in range(len(data)) if not isinstance(parse_layout(data[:cut]), BadParams)] == []


def test_v3_scalars_and_empty_arrays(tmp_path):
    path = str(tmp_path / "np.params")
    with mx.util.np_shape(True):
        mx.nd.save(path, {"arg:scalar": mx.nd.array([3.0]).reshape(()), "arg:empty": mx.nd.ones((0, 3))})
    layout = read_layout(path)
    assert isinstance(layout, ParamsLayout) and layout.names == ("arg:scalar", "arg:empty")
    assert [span.end - span.start for span in layout.arrays] == [28, 40]  # the scalar has 4 bytes of data


def test_v1_and_legacy_arrays_that_mxnet_still_loads(tmp_path):
    context_dtype = struct.pack("<iii", 1, 0, 0)
    v1 = struct.pack("<Iiqq", _V1, 2, 1, 2) + context_dtype + struct.pack("<2f", 1.5, 2.5)
    legacy = struct.pack("<III", 2, 2, 1) + context_dtype + struct.pack("<2f", 3.5, 4.5)  # ndim, uint32 dims
    data = _params([v1, legacy], ["arg:v1", "arg:legacy"])
    (tmp_path / "old.params").write_bytes(data)
    loaded = mx.nd.load(str(tmp_path / "old.params"))
    assert loaded["arg:v1"].shape == (1, 2) and loaded["arg:legacy"].asnumpy().tolist() == [[3.5], [4.5]]
    assert read_layout(str(tmp_path / "old.params")) == ParamsLayout(
        len(data), (ArraySpan(24, 24 + len(v1), True), ArraySpan(24 + len(v1), 24 + len(v1) + len(legacy), True)),
        ("arg:v1", "arg:legacy"))


def test_the_input_check_names_the_file_and_what_is_wrong(tmp_path):
    path = tmp_path / "m.params"
    path.write_bytes(GOOD[:-1])
    with pytest.raises(InputError) as refused:
        check_params_file(str(path))
    assert str(refused.value) == (f"{path}: is not an MXNet params file (cut short at byte 157: name 1 needs 5 bytes "
                                  "from byte 153) (the download may be incomplete; fetch it again)")
    path.write_bytes(_params([_dense_v2([1], (1,))], []))
    with pytest.raises(InputError, match="holds 1 arrays without names"):
        check_params_file(str(path))
    path.write_bytes(GOOD)
    check_params_file(str(path))
