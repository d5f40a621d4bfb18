"""Golden bytes: a tiny deterministic .wq file pins the byte layout (SPEC.md section 13).

An accidental layout change fails here loudly. To change the layout on purpose:
    WAVQ_REGEN_GOLDEN=1 python -m pytest tests/test_formats_golden.py
rewrites tests/data/golden_v1.wq and prints its SHA-256; put that in GOLDEN_SHA256, bump the container version
or layout revision (formats/constants.py) and add a row to the version history in formats/SPEC.md.

The file is also decoded here by a deliberately naive, independent implementation of SPEC.md (Python ints,
struct, one loop per code), so the document and the code cannot drift apart.
"""

from __future__ import annotations

import hashlib
import math
import os
import pathlib
import struct
import zlib

import msgpack
import numpy as np
import pytest

from wavq.formats import Encoding, QuantizedTensor, WqFile, dequantize, write_wq

GOLDEN = pathlib.Path(__file__).parent / "data" / "golden_v1.wq"
GOLDEN_SHA256 = "8f23ae6920baa346a69559dbb5199e29ab3d1c808521e87d4dfa280a48269413"
REGEN = os.environ.get("WAVQ_REGEN_GOLDEN") == "1"

META = {
    "architecture": "golden",
    "dims": {"n_state": 7, "eps": 1e-5, "causal": False, "name": "tiny"},
    "quantization": {"method": "rtn", "bits": [3, 5], "symmetric": [True, False]},
    "provenance": {"source": "synthetic"},
}


def _codes(rows: int, cols: int, bits: int, k: int) -> np.ndarray:
    return ((np.arange(rows * cols, dtype=np.int64).reshape(rows, cols) * k + 3) % (1 << bits)).astype(np.uint8)


def _scales(rows: int, ng: int, k: int) -> np.ndarray:
    # Multiples of 1/32 in -5/32 .. 5/32: exact in float16, with negative and zero scales among them.
    i = np.arange(rows * ng, dtype=np.int64).reshape(rows, ng)
    return (((i * k) % 11 - 5) / 32).astype(np.float16)


def _qt(shape: tuple[int, ...], bits: int, group_size: int, symmetric: bool, k: int) -> QuantizedTensor:
    rows, cols = shape[0], math.prod(shape[1:])
    ng = -(-cols // group_size)
    zeros = None if symmetric else ((np.arange(rows * ng).reshape(rows, ng) * 3 + 1) % (1 << bits)).astype(np.uint8)
    return QuantizedTensor(shape, bits, group_size, _codes(rows, cols, bits, k), _scales(rows, ng, k), zeros)


def golden_tensors() -> dict:
    return {
        "encoder.conv1.weight": _qt((4, 3, 5), 3, 4, True, 5),  # 3-D conv, cols 15, last group of 3
        "encoder.layers.0.fc1.weight": _qt((3, 11), 5, 11, False, 7),  # per-channel, cols not a multiple of 8
        "encoder.layers.0.fc2.weight": _qt((2, 19), 3, 5, False, 3),  # last group of 4
        "decoder.embed_tokens.weight": _qt((5, 9), 5, 3, True, 2),
        "encoder.layer_norm.weight": ((np.arange(7) - 3) / 4).astype(np.float16),
        "encoder.layer_norm.bias": (np.arange(6).reshape(2, 3) / 8).astype(np.float32),
    }


def test_writer_reproduces_golden_bytes(tmp_path):
    out = tmp_path / "golden.wq"
    write_wq(out, META, golden_tensors())
    data = out.read_bytes()
    if REGEN:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_bytes(data)
        pytest.skip(f"rewrote {GOLDEN}; sha256 = {hashlib.sha256(data).hexdigest()} -> update GOLDEN_SHA256, "
                    "bump the version and add a SPEC.md version-history row")
    assert data == GOLDEN.read_bytes(), (
        "the writer no longer produces the golden bytes: the .wq layout changed. If intended, see this file's "
        "docstring (regenerate, bump the version, update SPEC.md)")


def test_golden_sha256():
    assert hashlib.sha256(GOLDEN.read_bytes()).hexdigest() == GOLDEN_SHA256


# ---- an independent decoder of SPEC.md ------------------------------------------------------------------
def _align64(n: int) -> int:
    return (n + 63) // 64 * 64


def _spec_unpack(row: bytes, bits: int, n: int) -> list[int]:
    """SPEC.md 5.1: each run of 8 codes is `bits` bytes; code i sits at bits [b*i, b*i+b) of the run (LE)."""
    out = []
    for blk in range(len(row) // bits):
        run = int.from_bytes(row[blk * bits : (blk + 1) * bits], "little")
        out += [(run >> (bits * i)) & ((1 << bits) - 1) for i in range(8)]
    assert all(c == 0 for c in out[n:]), "padding codes are zero"
    return out[:n]


def _spec_decode(buf: bytes) -> tuple[dict, dict]:
    """(meta, name -> float32 array) following SPEC.md only."""
    magic, version, header_len, header_crc, flags = struct.unpack_from("<4sIQII", buf, 0)
    assert (magic, version, flags) == (b"WAVQ", 1, 0)
    header_bytes = buf[24 : 24 + header_len]
    assert zlib.crc32(header_bytes) == header_crc
    header = msgpack.unpackb(header_bytes, raw=False)
    assert list(header) == sorted(header), "map keys are sorted"
    assert header["layout_revision"] == 1
    data_start = _align64(24 + header_len)
    assert set(buf[24 + header_len : data_start]) <= {0}
    assert len(buf) == data_start + header["data_size"]
    out = {}
    for e in header["tensors"]:
        assert list(e) == sorted(e)
        assert e["offset"] % 64 == 0
        t = buf[data_start + e["offset"] : data_start + e["offset"] + e["nbytes"]]
        assert zlib.crc32(t) == e["crc32"]
        shape, numel = tuple(e["shape"]), math.prod(e["shape"])
        if e["encoding"] in (0, 1):
            fmt = "<%df" % numel if e["encoding"] == 0 else "<%de" % numel
            assert struct.calcsize(fmt) == e["nbytes"]
            out[e["name"]] = np.array(struct.unpack(fmt, t), np.float32).reshape(shape)
            continue
        b, g = e["bits"], e["group_size"]
        rows, cols = shape[0], math.prod(shape[1:])
        ng = -(-cols // g)
        rb, zrb = -(-cols // 8) * b, -(-ng // 8) * b
        scale_at = _align64(rows * rb)
        zero_at = _align64(scale_at + rows * ng * 2)
        w = np.zeros((rows, cols), np.float32)
        for r in range(rows):
            q = _spec_unpack(t[r * rb : (r + 1) * rb], b, cols)
            s = struct.unpack_from("<%de" % ng, t, scale_at + r * ng * 2)
            if e["encoding"] == 2:
                z = [1 << (b - 1)] * ng
            else:
                z = _spec_unpack(t[zero_at + r * zrb : zero_at + (r + 1) * zrb], b, ng)
            for c in range(cols):
                w[r, c] = np.float32((q[c] - z[c // g]) * s[c // g])  # exact in float64, rounded once
        end = (zero_at + rows * zrb) if e["encoding"] == 3 else (scale_at + rows * ng * 2)
        assert end == e["nbytes"]
        out[e["name"]] = w.reshape(shape)
    return header["meta"], out


def test_golden_decodes_per_spec():
    meta, arrays = _spec_decode(GOLDEN.read_bytes())
    assert meta == META
    expected = golden_tensors()
    assert list(arrays) == list(expected), "tensors keep insertion order"
    for name, t in expected.items():
        want = dequantize(t) if isinstance(t, QuantizedTensor) else np.asarray(t, np.float32)
        np.testing.assert_array_equal(arrays[name], want, err_msg=name)


def test_golden_reads_back():
    expected = golden_tensors()
    with WqFile(GOLDEN) as f:
        assert f.meta == META
        assert f.verify() == []
        for name, t in expected.items():
            info = f.info(name)
            if isinstance(t, QuantizedTensor):
                assert info.encoding == t.encoding and info.bits == t.bits and info.group_size == t.group_size
                q = f.quantized(name)
                np.testing.assert_array_equal(q.codes, t.codes)
                np.testing.assert_array_equal(q.scales.view(np.uint16), t.scales.view(np.uint16))
                if t.zeros is not None:
                    np.testing.assert_array_equal(q.zeros, t.zeros)
                np.testing.assert_array_equal(f.array(name), dequantize(t))
            else:
                assert info.encoding == (Encoding.F16 if t.dtype == np.float16 else Encoding.F32)
                np.testing.assert_array_equal(f.array(name), t.astype(np.float32))
