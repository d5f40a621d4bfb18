"""Activation specs in the .wq format (SPEC.md 5.5, layout revision 4): written, read back, and every malformed
entry rejected with its own message; files of earlier revisions still load and carry no spec."""

from __future__ import annotations

import dataclasses
import math
import pathlib

import numpy as np
import pytest
from formats_helpers import rebuild, sample_tensors, split

from wavq.formats import MalformedHeaderError, UnsupportedVersionError, WqFile, write_wq
from wavq.formats.activation import ActivationSpec
from wavq.formats.reader import TensorInfo

DATA = pathlib.Path(__file__).parent / "data"
SPECS = {"q.sym3": ActivationSpec(8), "q.asym5": ActivationSpec(4, 0.125)}


def _write(tmp_path, activations=SPECS, name="a.wq") -> pathlib.Path:
    path = tmp_path / name
    write_wq(path, {"architecture": "test"}, sample_tensors(), activations=activations)
    return path


def _parts(tmp_path):
    _, header, data = split(_write(tmp_path).read_bytes())
    return header, data


def _entry(header: dict, name: str) -> dict:
    return next(e for e in header["tensors"] if e["name"] == name)


def _rejects(tmp_path, header, data, exc=MalformedHeaderError, match=None):
    path = tmp_path / "bad.wq"
    path.write_bytes(rebuild(header, data))
    with pytest.raises(exc, match=match) as info:
        WqFile(path)
    assert str(path) in str(info.value)


def test_round_trip_and_revision(tmp_path):
    with WqFile(_write(tmp_path)) as f:
        assert f.layout_revision == 4 and f.verify() == []
        assert {n: t.activation for n, t in f.tensors.items() if t.activation} == SPECS
        assert f.info("f.f32").activation is None


def test_specs_do_not_change_the_tensor_bytes(tmp_path):
    with_specs = split(_write(tmp_path).read_bytes())
    without = split(_write(tmp_path, {}, "b.wq").read_bytes())
    assert with_specs[2] == without[2] and without[1]["layout_revision"] == 1


@pytest.mark.parametrize("path", sorted(DATA.glob("golden_v[123].wq")), ids=lambda p: p.name)
def test_older_revisions_load_without_specs(path):
    with WqFile(path) as f:
        assert f.layout_revision < 4 and f.verify() == []
        assert all(t.activation is None for t in f.tensors.values())
        for name in f.tensors:
            f.array(name)


def test_tensor_info_default():
    assert TensorInfo("w", 0, (2,), 0, 8, 0).activation is None


@pytest.mark.parametrize(
    "value, match",
    [
        ([8], "not a map"),
        ({}, "lacks 'bits'"),
        ({"bits": 8, "zero": 0}, "unknown keys"),
        ({"bits": 1}, "outside 2..8"),
        ({"bits": 9}, "outside 2..8"),
        ({"bits": True}, "outside 2..8"),
        ({"bits": 8.0}, "outside 2..8"),
        ({"bits": 8, "scale": 1}, "not a float"),
        ({"bits": 8, "scale": None}, "nil"),
        ({"bits": 8, "scale": "0.5"}, "not a float"),
        ({"bits": 8, "scale": 0.0}, "positive finite"),
        ({"bits": 8, "scale": -0.5}, "positive finite"),
        ({"bits": 8, "scale": math.inf}, "positive finite"),
        ({"bits": 8, "scale": math.nan}, "positive finite"),
        ({"bits": 8, "scale": 0.1}, "binary32"),
        ({"bits": 8, "scale": 1e300}, "binary32"),
    ],
)
def test_malformed_specs_are_rejected(tmp_path, value, match):
    header, data = _parts(tmp_path)
    _entry(header, "q.sym3")["activation"] = value
    _rejects(tmp_path, header, data, match=match)


def test_spec_on_a_float_tensor_is_rejected(tmp_path):
    header, data = _parts(tmp_path)
    _entry(header, "f.f32")["activation"] = {"bits": 8}
    _rejects(tmp_path, header, data, match="quantized encodings only")


@pytest.mark.parametrize("revision", [1, 2, 3])
def test_spec_in_an_older_revision_is_rejected(tmp_path, revision):
    header, data = _parts(tmp_path)
    header["layout_revision"] = revision
    _rejects(tmp_path, header, data, match="only from layout revision 4")


def test_revision_4_without_specs_is_valid_and_6_is_not(tmp_path):
    header, data = _parts(tmp_path)
    for e in header["tensors"]:
        e.pop("activation", None)
    path = tmp_path / "r4.wq"
    path.write_bytes(rebuild(header, data))
    with WqFile(path) as f:
        assert f.layout_revision == 4
    header["layout_revision"] = 6  # 5 (codebook tensors, SPEC.md 5.6) is the newest revision
    _rejects(tmp_path, header, data, UnsupportedVersionError, "layout revision 6")


def test_writer_rejections(tmp_path):
    with pytest.raises(ValueError, match="quantized weight"):
        _write(tmp_path, {"f.f32": ActivationSpec(8)})
    with pytest.raises(ValueError, match="not written"):
        _write(tmp_path, {"missing": ActivationSpec(8)})
    with pytest.raises(TypeError, match="ActivationSpec"):
        _write(tmp_path, {"q.sym3": {"bits": 8}})
    spec = ActivationSpec(8, 0.5)
    object.__setattr__(spec, "scale", float("nan"))  # a frozen dataclass can still be forced
    with pytest.raises(ValueError, match="positive finite"):
        _write(tmp_path, {"q.sym3": spec})
    assert not list(tmp_path.glob("*.wq")), "no file is left behind"


def test_static_scale_survives_exactly(tmp_path):
    spec = ActivationSpec.static_from_range(8, 3.3)
    path = _write(tmp_path, {"q.sym3": spec})
    with WqFile(path) as f:
        got = f.info("q.sym3").activation
    assert got == spec and np.float32(got.scale) * 127 >= 3.3
    assert dataclasses.asdict(got) == {"bits": 8, "scale": spec.scale}
