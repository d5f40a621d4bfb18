"""The writer: refuses to overwrite, leaves nothing behind on failure, is strict and deterministic."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from formats_helpers import SAMPLE_META, decompose, decomposed_tensors, sample_tensors

from wavq.formats import (
    Encoding,
    OutputExistsError,
    QuantizedTensor,
    WqFile,
    WqWriter,
    quantize,
    write_wq,
)


def listing(d) -> list[str]:
    return sorted(os.listdir(d))


def test_refuses_to_overwrite(tmp_path):
    path = tmp_path / "m.wq"
    path.write_bytes(b"precious")
    with pytest.raises(OutputExistsError, match="force"):
        WqWriter(path, {})
    with pytest.raises(OutputExistsError):
        write_wq(path, {}, {"x": np.zeros(3, np.float32)})
    assert path.read_bytes() == b"precious"
    assert listing(tmp_path) == ["m.wq"]


def test_force_replaces(tmp_path):
    path = tmp_path / "m.wq"
    path.write_bytes(b"old")
    write_wq(path, {"v": 2}, {"x": np.arange(3, dtype=np.float32)}, force=True)
    with WqFile(path) as f:
        assert f.meta == {"v": 2}
        np.testing.assert_array_equal(f.array("x"), [0, 1, 2])
    assert listing(tmp_path) == ["m.wq"]


def test_exception_inside_with_leaves_nothing(tmp_path):
    path = tmp_path / "m.wq"
    with pytest.raises(RuntimeError, match="boom"):
        with WqWriter(path, {}) as w:
            w.add("x", np.zeros(4, np.float32))
            raise RuntimeError("boom")
    assert listing(tmp_path) == []


def test_exception_with_force_keeps_the_old_file(tmp_path):
    path = tmp_path / "m.wq"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with WqWriter(path, {}, force=True) as w:
            w.add("x", np.zeros(4, np.float32))
            raise KeyboardInterrupt
    assert path.read_bytes() == b"old"
    assert listing(tmp_path) == ["m.wq"]


def test_failure_while_closing_leaves_nothing(tmp_path, monkeypatch):
    def fail(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    w = WqWriter(tmp_path / "m.wq", {})
    w.add("x", np.zeros(4, np.float32))
    with pytest.raises(OSError, match="No space"):
        w.close()
    assert listing(tmp_path) == []
    with pytest.raises(RuntimeError, match="failed"):
        w.add("y", np.zeros(1, np.float32))


def test_duplicate_name_rejected(tmp_path):
    path = tmp_path / "m.wq"
    with WqWriter(path, {}) as w:
        w.add("x", np.zeros(2, np.float32))
        with pytest.raises(ValueError, match="duplicate tensor name 'x'"):
            w.add("x", np.ones(2, np.float32))
    with WqFile(path) as f:  # the rejected call changed nothing
        assert list(f.tensors) == ["x"]
        np.testing.assert_array_equal(f.array("x"), [0, 0])


def test_add_after_close_rejected(tmp_path):
    w = WqWriter(tmp_path / "m.wq", {})
    w.close()
    with pytest.raises(RuntimeError, match="closed"):
        w.add("x", np.zeros(2, np.float32))
    with pytest.raises(RuntimeError, match="closed"):
        w.close()


def test_add_after_abort_rejected(tmp_path):
    w = WqWriter(tmp_path / "m.wq", {})
    w.abort()
    with pytest.raises(RuntimeError, match="aborted"):
        w.add("x", np.zeros(2, np.float32))
    assert listing(tmp_path) == []


@pytest.mark.parametrize("name", ["", None, 3, "x" * 1025, "\ud800"])
def test_bad_names_rejected(tmp_path, name):
    with WqWriter(tmp_path / "m.wq", {}) as w:
        with pytest.raises(ValueError, match="name"):
            w.add(name, np.zeros(1, np.float32))


@pytest.mark.parametrize(
    "meta,exc",
    [
        ([("a", 1)], TypeError),
        ({"a": np.zeros(3)}, TypeError),
        ({1: "x"}, TypeError),
        ({"a": object()}, TypeError),
        ({"a": 1 << 64}, ValueError),
        ({"a": "\udc80"}, ValueError),
    ],
    ids=["not-a-mapping", "array", "int-key", "object", "huge-int", "surrogate"],
)
def test_bad_metadata_rejected(tmp_path, meta, exc):
    with pytest.raises(exc):
        WqWriter(tmp_path / "m.wq", meta)
    assert listing(tmp_path) == []


def test_bad_tensors_rejected(tmp_path):
    qt, _ = quantize(np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32), 4, 4)
    with WqWriter(tmp_path / "m.wq", {}) as w:
        with pytest.raises(ValueError, match="not F16"):
            w.add("q", qt, Encoding.F16)
        bad = QuantizedTensor(qt.shape, qt.bits, qt.group_size, qt.codes, np.full_like(qt.scales, np.inf), qt.zeros)
        with pytest.raises(ValueError, match="non-finite"):
            w.add("q", bad)
        with pytest.raises(TypeError, match="dtype"):
            w.add("c", np.zeros(3, np.complex64))
        with pytest.raises(ValueError, match="F32 or F16"):
            w.add("e", np.zeros(3, np.float32), Encoding.QSYM)
        with pytest.raises(ValueError, match="at most 8 dimensions"):
            w.add("d", np.zeros((1,) * 9, np.float32))
        w.add("q", qt)  # the writer is still usable after rejected calls


def test_bad_decomposed_tensors_rejected(tmp_path):
    qt, _ = quantize(np.random.default_rng(0).standard_normal((3, 10)).astype(np.float32), 4, 4, symmetric=False)
    good = decompose(qt, np.zeros(10), [2, 7], np.ones((3, 2)))
    with WqWriter(tmp_path / "m.wq", {}) as w:
        for field, bad, match in (
            ("offset", np.full(10, np.nan, np.float32), "non-finite offset"),
            ("outliers", np.full((3, 2), np.inf, np.float16), "non-finite outlier"),
        ):
            with pytest.raises(ValueError, match=match):
                w.add("d", dataclasses.replace(good, **{field: bad}))
        # numpy arrays stay mutable after QuantizedTensor checked them: the writer checks again
        mutated = decompose(qt, np.zeros(10), [2, 7], np.ones((3, 2)))
        mutated.outlier_columns[:] = [7, 2]
        with pytest.raises(ValueError, match="strictly increasing"):
            w.add("d", mutated)
        with pytest.raises(ValueError, match="not F16"):
            w.add("d", good, Encoding.F16)
        assert w.layout_revision == 1  # nothing decomposed was added
        w.add("d", good)  # still usable
        assert w.layout_revision == 2
    with WqFile(tmp_path / "m.wq") as f:
        assert f.layout_revision == 2 and list(f.tensors) == ["d"] and f.info("d").outlier_columns == (2, 7)


def test_decomposed_same_inputs_same_bytes(tmp_path):
    a, b = tmp_path / "a.wq", tmp_path / "b.wq"
    write_wq(a, SAMPLE_META, decomposed_tensors())
    write_wq(b, SAMPLE_META, decomposed_tensors())
    assert a.read_bytes() == b.read_bytes()


def test_float_encodings(tmp_path):
    path = tmp_path / "m.wq"
    x = np.linspace(-1, 1, 7, dtype=np.float32)
    with WqWriter(path, {}) as w:
        w.add("default", x)
        w.add("half", x, Encoding.F16)
        w.add("native-half", x.astype(np.float16))
        w.add("from-int", np.arange(3))
    with WqFile(path) as f:
        assert [f.info(n).encoding for n in f.tensors] == [Encoding.F32, Encoding.F16, Encoding.F16, Encoding.F32]
        np.testing.assert_array_equal(f.array("half"), x.astype(np.float16).astype(np.float32))
        np.testing.assert_array_equal(f.array("from-int"), [0, 1, 2])


def test_same_inputs_same_bytes(tmp_path):
    a, b = tmp_path / "a.wq", tmp_path / "b.wq"
    write_wq(a, SAMPLE_META, sample_tensors())
    write_wq(b, SAMPLE_META, sample_tensors())
    assert a.read_bytes() == b.read_bytes()


def test_metadata_order_does_not_matter(tmp_path):
    meta1 = {"architecture": "test", "dims": {"a": 1, "b": 2.5, "c": {"x": True, "y": None}}, "z": [1, "two"]}
    meta2 = {"z": (1, "two"), "dims": {"c": {"y": None, "x": True}, "b": 2.5, "a": np.int64(1)}, "architecture": "test"}
    a, b = tmp_path / "a.wq", tmp_path / "b.wq"
    write_wq(a, meta1, {"x": np.zeros(2, np.float32)})
    write_wq(b, meta2, {"x": np.zeros(2, np.float32)})
    assert a.read_bytes() == b.read_bytes()
    with WqFile(a) as f:
        assert f.meta == meta1


def test_tensor_order_is_insertion_order(tmp_path):
    path = tmp_path / "m.wq"
    names = ["z.weight", "a.weight", "m.bias"]
    write_wq(path, {}, {n: np.zeros(2, np.float32) for n in names})
    with WqFile(path) as f:
        assert list(f.tensors) == names
        offsets = [f.info(n).offset for n in names]
        assert offsets == sorted(offsets)


def test_empty_file_is_valid(tmp_path):
    path = tmp_path / "m.wq"
    write_wq(path, {}, {})
    with WqFile(path) as f:
        assert f.tensors == {} and f.meta == {} and f.data_size == 0 and f.verify() == []


def test_stale_partials_are_those_of_dead_writers_of_the_same_name(tmp_path):
    import subprocess
    import sys

    from wavq.formats.writer import stale_partials

    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()  # its PID no longer runs
    dead, live = child.pid, os.getpid()
    files = {
        f".m.wq.{dead}.abc.partial": True,
        f".m.wq.{live}.abc.partial": False,  # a writer still at work
        f".other.wq.{dead}.abc.partial": False,  # another output's
        ".m.wq.notapid.abc.partial": False,
        f".m.wq.{dead}.abc.tmp": False,
    }
    for name in files:
        (tmp_path / name).write_bytes(b"")
    expected = sorted(str(tmp_path / n) for n, stale in files.items() if stale)
    assert stale_partials(tmp_path / "m.wq") == expected
    assert stale_partials(tmp_path / "missing-dir" / "m.wq") == []
