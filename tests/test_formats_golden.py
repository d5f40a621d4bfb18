"""Golden bytes: tiny deterministic .wq files, one per layout revision, pin the byte layout (SPEC.md section 13).

golden_v1.wq holds no decomposed or rotated tensor, so the writer must still produce it as layout revision 1, byte
for byte; golden_v2.wq holds decomposed tensors (revision 2) and no rotated one, so it must stay revision 2;
golden_v3.wq holds rotated tensors (revision 3), golden_v4.wq activation specs (revision 4) and golden_v5.wq codebook
(VQ) tensors (revision 5). An accidental layout change fails here loudly. To change the
layout on purpose:
    WAVQ_REGEN_GOLDEN=1 python -m pytest tests/test_formats_golden.py
rewrites the golden files and prints their SHA-256; put those in GOLDENS, bump the container version or layout
revision (formats/constants.py) and add a row to the version history in formats/SPEC.md.

The files are also decoded here by a deliberately naive, independent implementation of SPEC.md (Python ints,
struct, one loop per code), so the document and the code cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import pathlib
import struct
import zlib

import msgpack
import numpy as np
import pytest
from formats_helpers import codebook_equal, quantized_codes_equal, spec_lowbias32, spec_unpack

from wavq.formats import Encoding, QuantizedTensor, WqFile, dequantize, write_wq
from wavq.formats.activation import ActivationSpec
from wavq.formats.codecs import CodebookTensor, dequantize_codebook

DATA = pathlib.Path(__file__).parent / "data"
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


META_V2 = {
    "architecture": "golden",
    "dims": {"n_state": 10, "eps": 1e-5},
    "quantization": {"method": "rtn", "bits": [3, 4, 5], "decomposed": ["decoder.embed_tokens.weight"]},
    "provenance": {"source": "synthetic", "revision": 2},
}


def _decomposed(qt: QuantizedTensor, columns: list[int], k: int) -> QuantizedTensor:
    rows, cols = qt.codes.shape
    # Offsets: multiples of 1/16 in -7/16 .. 7/16, exact in float32. Outliers: multiples of 3/8 up to 24, exact in
    # float16 and larger than the coded range, as a real outlier column would be.
    offset = (((np.arange(cols) * k) % 15 - 7) / 16).astype(np.float32)
    outliers = ((np.arange(rows * len(columns)).reshape(rows, len(columns)) * k) % 129 - 64) * 3 / 8
    return dataclasses.replace(
        qt, offset=offset, outlier_columns=np.array(columns, np.int64).reshape(-1), outliers=outliers.astype(np.float16)
    )


def golden_v2_tensors() -> dict:
    return {
        # the embedding case: asymmetric, k = 2 (one column inside the short last group), last group of 2
        "decoder.embed_tokens.weight": _decomposed(_qt((6, 10), 4, 4, False, 3), [1, 9], 7),
        "encoder.conv1.weight": _decomposed(_qt((3, 2, 5), 3, 3, True, 5), [], 5),  # 3-D, k = 0: offset only
        "encoder.layers.0.fc1.weight": _qt((4, 11), 5, 11, False, 7),  # a plain quantized tensor next to them
        "encoder.layer_norm.weight": ((np.arange(5) - 2) / 4).astype(np.float16),
    }


META_V3 = {
    "architecture": "golden",
    "dims": {"n_state": 16, "eps": 1e-5},
    "quantization": {
        "method": "rtn",
        "bits": [3, 4, 5],
        "rotation": {"encoder.layers.0.fc1.weight": 8, "encoder.conv1.weight": 2},
    },
    "provenance": {"source": "synthetic", "revision": 3},
}


def golden_v3_tensors() -> dict:
    return {
        # B = 8 over 16 columns (two blocks), asymmetric, groups of 6 that straddle the blocks (last group of 4)
        "encoder.layers.0.fc1.weight": dataclasses.replace(_qt((4, 16), 4, 6, False, 3), rotation=8),
        # rank 3, cols 10 = five blocks of B = 2: signs and blocks run over the flattened columns
        "encoder.conv1.weight": dataclasses.replace(_qt((3, 2, 5), 3, 4, True, 5), rotation=2),
        # revision 3 keeps revision 2's decomposed tensors, and plain ones
        "decoder.embed_tokens.weight": _decomposed(_qt((5, 12), 4, 5, False, 7), [0, 7], 3),
        "encoder.layers.0.fc2.weight": _qt((3, 11), 5, 11, True, 2),
    }


META_V4 = {
    "architecture": "golden",
    "dims": {"n_state": 16, "eps": 1e-5},
    "quantization": {"method": "rtn", "bits": [3, 4, 8], "act_bits": [4, 8]},
    "provenance": {"source": "synthetic", "revision": 4},
}


def golden_v4_tensors() -> dict:
    return {
        # dynamic 8-bit inputs on a plain asymmetric weight; a static 4-bit scale on a rotated one
        "encoder.layers.0.fc1.weight": _qt((4, 13), 8, 5, False, 3),
        "encoder.layers.0.fc2.weight": dataclasses.replace(_qt((3, 16), 4, 16, True, 5), rotation=4),
        # revision 4 keeps the earlier features: a decomposed tensor with a static spec, a quantized tensor and a
        # float tensor without one
        "decoder.embed_tokens.weight": _decomposed(_qt((5, 12), 3, 5, False, 7), [3], 3),
        "encoder.conv1.weight": _qt((3, 2, 5), 5, 4, True, 2),
        "encoder.layer_norm.weight": ((np.arange(6) - 2) / 4).astype(np.float16),
    }


META_V5 = {
    "architecture": "golden",
    "dims": {"n_state": 16, "eps": 1e-5},
    "quantization": {"method": "vq", "index_bits": [2, 3, 9]},
    "provenance": {"source": "synthetic", "revision": 5},
}


def _ct(
    shape: tuple[int, ...], dim: int, index_bits: int, group_size: int, rows_per_book: int, k: int, rotation: int = 0
) -> CodebookTensor:
    rows, cols = shape[0], math.prod(shape[1:])
    books = -(-rows // rows_per_book)
    # Codebook entries: multiples of 1/8 in -4 .. 4, exact in float16, with zeros and negative values among them.
    n = books * (1 << index_bits) * dim
    codebooks = (((np.arange(n, dtype=np.int64) * k) % 65 - 32) / 8).astype(np.float16)
    indices = ((np.arange(rows * (cols // dim), dtype=np.int64) * (2 * k + 1) + 5) % (1 << index_bits)).astype(
        np.uint16
    )
    return CodebookTensor(
        shape,
        dim,
        index_bits,
        group_size,
        rows_per_book,
        indices.reshape(rows, cols // dim),
        codebooks.reshape(books, 1 << index_bits, dim),
        _scales(rows, -(-cols // group_size), k),
        rotation,
    )


def golden_v5_tensors() -> dict:
    return {
        # dim 4, 3-bit indices (runs of 8 indices straddle bytes), two codebooks, the second for the last row only
        "encoder.layers.0.fc1.weight": _ct((4, 16), 4, 3, 8, 3, 5),
        # rank 3, dim 2, 9-bit indices (wider than a byte), one scale per row, rotated in blocks of 4
        "encoder.layers.0.fc2.weight": _ct((3, 2, 8), 2, 9, 16, 3, 3, rotation=4),
        # dim 8, 2-bit indices, one codebook per row, groups of 8 in 24 columns
        "decoder.embed_tokens.weight": _ct((5, 24), 8, 2, 8, 1, 7),
        # revision 5 keeps the earlier encodings beside them
        "encoder.conv1.weight": _qt((3, 2, 5), 5, 4, True, 2),
        "encoder.layer_norm.weight": ((np.arange(6) - 2) / 4).astype(np.float16),
    }


# name -> how its input is quantized (SPEC.md 5.5); the scales are binary32 values (3/128, 2**-20 * 5)
GOLDEN_ACTIVATIONS = {
    4: {
        "encoder.layers.0.fc1.weight": ActivationSpec(8),
        "encoder.layers.0.fc2.weight": ActivationSpec(4, 3 / 128),
        "decoder.embed_tokens.weight": ActivationSpec(6, 5 * 2.0**-20),
    }
}

# layout revision -> (file, its SHA-256, metadata, tensors)
GOLDENS = {
    1: (
        DATA / "golden_v1.wq",
        "8f23ae6920baa346a69559dbb5199e29ab3d1c808521e87d4dfa280a48269413",
        META,
        golden_tensors,
    ),
    2: (
        DATA / "golden_v2.wq",
        "b36a73c46a6919b1bf755072dde82fd2d68859a14e4028f75d85391ef78210b0",
        META_V2,
        golden_v2_tensors,
    ),
    3: (
        DATA / "golden_v3.wq",
        "0ae5ca3e47e227e40a281f83ce95882aec418bf097da7bdd389e6780d794197d",
        META_V3,
        golden_v3_tensors,
    ),
    4: (
        DATA / "golden_v4.wq",
        "5187c0b4c91fd732ee018cc3734087936aee23715b2663cfe8944369cb502ec3",
        META_V4,
        golden_v4_tensors,
    ),
    5: (
        DATA / "golden_v5.wq",
        "bfb68cddae327c6ff5cc1c01ac56718394b7fbbfc084a2438d3e4701ca7ebbb0",
        META_V5,
        golden_v5_tensors,
    ),
}
REVISIONS = pytest.mark.parametrize("revision", sorted(GOLDENS))


@REVISIONS
def test_writer_reproduces_golden_bytes(tmp_path, revision):
    path, _, meta, tensors = GOLDENS[revision]
    out = tmp_path / "golden.wq"
    write_wq(out, meta, tensors(), activations=GOLDEN_ACTIVATIONS.get(revision))
    data = out.read_bytes()
    if REGEN:
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        pytest.skip(
            f"rewrote {path}; sha256 = {hashlib.sha256(data).hexdigest()} -> update GOLDENS, "
            "bump the version and add a SPEC.md version-history row"
        )
    assert data == path.read_bytes(), (
        f"the writer no longer produces the bytes of {path.name}: the .wq layout changed. If intended, see this "
        "file's docstring (regenerate, bump the version, update SPEC.md)"
    )


@REVISIONS
def test_golden_sha256(revision):
    path, sha, _, _ = GOLDENS[revision]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == sha


# ---- an independent decoder of SPEC.md ------------------------------------------------------------------
def _align64(n: int) -> int:
    return (n + 63) // 64 * 64


def _spec_inv_sqrt_f32(block: int) -> np.float32:
    """The binary32 value nearest to 1/sqrt(B), B = 2**m, from integers (no float square root): 2**(-m/2) for even
    m; for odd m, 2**-0.5 = sqrt(2**47) * 2**-24 with its 24-bit significand round(sqrt(2**47)) (never a tie)."""
    m = block.bit_length() - 1
    if m % 2 == 0:
        return np.float32(2.0 ** (-m // 2))
    significand = (math.isqrt(4 * 2**47) + 1) // 2  # round(x) = (floor(2x) + 1) // 2
    return np.float32(significand * 2.0 ** (-24 - (m - 1) // 2))  # 24 bits: exact in float64 and float32


def _spec_unrotate_row(v: list, block: int) -> list:
    """SPEC.md 5.4 steps 1-3 on one row of float32 values: butterflies stage by stage (each sum and difference
    rounded once to float32), times float32(1/sqrt(B)), then the column signs."""
    v = [np.float32(x) for x in v]
    for k in range(0, len(v), block):
        h = 1
        while h < block:
            for run in range(k, k + block, 2 * h):
                for i in range(run, run + h):
                    a, b = v[i], v[i + h]
                    v[i], v[i + h] = np.float32(a + b), np.float32(a - b)  # float32 scalars: rounded once
            h *= 2
    scale = _spec_inv_sqrt_f32(block)
    return [np.float32(x * scale) * (-1 if spec_lowbias32(c) & 1 else 1) for c, x in enumerate(v)]


def _spec_decode(buf: bytes) -> tuple[dict, dict, int]:
    """(meta, name -> float32 array, layout revision) following SPEC.md only."""
    magic, version, header_len, header_crc, flags = struct.unpack_from("<4sIQII", buf, 0)
    assert (magic, version, flags) == (b"WAVQ", 1, 0)
    header_bytes = buf[24 : 24 + header_len]
    assert zlib.crc32(header_bytes) == header_crc
    header = msgpack.unpackb(header_bytes, raw=False)
    assert list(header) == sorted(header), "map keys are sorted"
    revision = header["layout_revision"]
    assert revision in (1, 2, 3, 4, 5)
    vq_any = any(e["encoding"] == 16 for e in header["tensors"])
    decomposed_any = any("outlier_columns" in e for e in header["tensors"])
    rotated_any = any("rotation" in e for e in header["tensors"])
    activation_any = any("activation" in e for e in header["tensors"])
    expected_revision = 5 if vq_any else 4 if activation_any else 3 if rotated_any else 2 if decomposed_any else 1
    assert revision == expected_revision, "section 9: the lowest revision that expresses the file"
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
            fmt = f"<{numel}f" if e["encoding"] == 0 else f"<{numel}e"
            assert struct.calcsize(fmt) == e["nbytes"]
            out[e["name"]] = np.array(struct.unpack(fmt, t), np.float32).reshape(shape)
            continue
        if e["encoding"] == 16:
            assert revision >= 5
            out[e["name"]] = _spec_decode_vq(e, t)
            continue
        b, g = e["bits"], e["group_size"]
        rows, cols = shape[0], math.prod(shape[1:])
        ng = -(-cols // g)
        rb, zrb = -(-cols // 8) * b, -(-ng // 8) * b
        scale_at = _align64(rows * rb)
        zero_at = _align64(scale_at + rows * ng * 2)
        end = (zero_at + rows * zrb) if e["encoding"] == 3 else (scale_at + rows * ng * 2)
        # SPEC.md 5.3: a decomposed tensor (revision >= 2) appends offset[cols] (f32), then outliers[rows][k] (f16)
        columns = e.get("outlier_columns")
        if columns is not None:
            assert revision >= 2 and e["encoding"] in (2, 3)
            assert all(type(c) is int for c in columns) and columns == sorted(set(columns))
            assert all(0 <= c < cols for c in columns)
            k = len(columns)
            offset_at = _align64(end)
            offset = struct.unpack_from(f"<{cols}f", t, offset_at)
            end = offset_at + cols * 4
            if k:
                outlier_at = _align64(end)
                end = outlier_at + rows * k * 2
        # SPEC.md 5.4: a rotated tensor (revision 3 only) stores no extra part; its rows are transformed back
        block = e.get("rotation")
        if block is not None:
            assert revision >= 3 and e["encoding"] in (2, 3) and columns is None
            assert type(block) is int and block >= 2 and block & (block - 1) == 0 and cols % block == 0
        # SPEC.md 5.5: an activation spec (revision 4) is metadata of the product; the weight's bytes are unchanged
        act = e.get("activation")
        if act is not None:
            assert revision >= 4 and e["encoding"] in (2, 3)
            assert set(act) in ({"bits"}, {"bits", "scale"}) and type(act["bits"]) is int and 2 <= act["bits"] <= 8
            if "scale" in act:
                scale = act["scale"]
                assert type(scale) is float and 0 < scale < math.inf
                assert struct.unpack("<f", struct.pack("<f", scale))[0] == scale, "a binary32 value"
        w = np.zeros((rows, cols), np.float32)
        for r in range(rows):
            q = spec_unpack(t[r * rb : (r + 1) * rb], b, cols)
            s = struct.unpack_from(f"<{ng}e", t, scale_at + r * ng * 2)
            if e["encoding"] == 2:
                z = [1 << (b - 1)] * ng
            else:
                z = spec_unpack(t[zero_at + r * zrb : zero_at + (r + 1) * zrb], b, ng)
            for c in range(cols):
                v = np.float32((q[c] - z[c // g]) * s[c // g])  # exact in float64, rounded once
                if columns is not None:
                    # float32 + float32 done in float64 and rounded once to float32 equals the float32 sum
                    # (float64 has more than 2 * 24 + 2 bits, so the double rounding is harmless)
                    v = np.float32(float(v) + offset[c])
                w[r, c] = v
            if columns:
                values = struct.unpack_from(f"<{k}e", t, outlier_at + r * k * 2)
                for i, c in enumerate(columns):
                    w[r, c] = values[i]  # assignment: the codes of an outlier column are ignored
            if block is not None:
                w[r] = _spec_unrotate_row(w[r].tolist(), block)
        assert end == e["nbytes"]
        out[e["name"]] = w.reshape(shape)
    return header["meta"], out, revision


def _spec_decode_vq(e: dict, t: bytes) -> np.ndarray:
    """SPEC.md 5.6: packed indices[rows] (runs of 8 indices in index_bits bytes), then at the next 64-byte boundary
    codebooks[books][2**index_bits][dim] (f16), then scales[rows][groups] (f16); w = codebook entry * scale,
    rounded once to float32; then the rotation of 5.4 is undone row by row."""
    assert set(e) <= {"name", "encoding", "shape", "offset", "nbytes", "crc32"} | {
        "dim", "index_bits", "group_size", "rows_per_book", "rotation"
    }  # fmt: skip
    shape, d, b, g, rpb = tuple(e["shape"]), e["dim"], e["index_bits"], e["group_size"], e["rows_per_book"]
    rows, cols = shape[0], math.prod(shape[1:])
    assert d in (2, 4, 8) and 2 <= b <= 16 and cols % d == 0 and g % d == 0 and 1 <= rpb <= rows
    n, books, ng = cols // d, -(-rows // rpb), -(-cols // g)
    rb = -(-n // 8) * b
    book_at = _align64(rows * rb)
    scale_at = _align64(book_at + books * (1 << b) * d * 2)
    assert scale_at + rows * ng * 2 == e["nbytes"]
    w = np.zeros((rows, cols), np.float32)
    for r in range(rows):
        idx = spec_unpack(t[r * rb : (r + 1) * rb], b, n)
        s = struct.unpack_from(f"<{ng}e", t, scale_at + r * ng * 2)
        for v, i in enumerate(idx):
            vec = struct.unpack_from(f"<{d}e", t, book_at + (((r // rpb) << b) + i) * d * 2)
            for j in range(d):
                w[r, v * d + j] = np.float32(vec[j] * s[(v * d + j) // g])  # exact in float64, rounded once
        if "rotation" in e:
            w[r] = _spec_unrotate_row(w[r].tolist(), e["rotation"])
    return w.reshape(shape)


@REVISIONS
def test_golden_decodes_per_spec(revision):
    path, _, meta_expected, tensors = GOLDENS[revision]
    meta, arrays, file_revision = _spec_decode(path.read_bytes())
    assert meta == meta_expected and file_revision == revision
    expected = tensors()
    assert list(arrays) == list(expected), "tensors keep insertion order"
    for name, t in expected.items():
        if isinstance(t, CodebookTensor):
            want = dequantize_codebook(t)
        else:
            want = dequantize(t) if isinstance(t, QuantizedTensor) else np.asarray(t, np.float32)
        np.testing.assert_array_equal(arrays[name], want, err_msg=name)


def test_golden_v2_outlier_columns_take_the_stored_values():
    """The v2 file exercises every step of SPEC.md 5.3: the offset changes values, the float columns replace them."""
    _, arrays, _ = _spec_decode(GOLDENS[2][0].read_bytes())
    t = golden_v2_tensors()["decoder.embed_tokens.weight"]
    plain = dequantize(QuantizedTensor(t.shape, t.bits, t.group_size, t.codes, t.scales, t.zeros))
    got = arrays["decoder.embed_tokens.weight"]
    np.testing.assert_array_equal(got[:, [1, 9]], t.outliers.astype(np.float32))
    others = [c for c in range(10) if c not in (1, 9)]
    np.testing.assert_array_equal(got[:, others], (plain + t.offset)[:, others])
    assert (t.offset != 0).any() and (got[:, [1, 9]] != (plain + t.offset)[:, [1, 9]]).all()


def test_golden_v3_rotation_changes_values():
    """The v3 file exercises SPEC.md 5.4: each rotated tensor decodes to V R^T, not to V (its plain dequantization),
    and the naive decoder agrees with V R^T computed as a dense float64 matrix product (R built from the spec's
    definition) up to float32 rounding; so the comparison with the reader above is not between two no-ops."""
    _, arrays, _ = _spec_decode(GOLDENS[3][0].read_bytes())
    rotated = {n: t for n, t in golden_v3_tensors().items() if t.rotation}
    assert sorted(t.rotation for t in rotated.values()) == [2, 8]
    for name, t in rotated.items():
        rows, cols = t.codes.shape
        plain = dequantize(dataclasses.replace(t, rotation=0)).reshape(rows, cols).astype(np.float64)
        h = np.ones((1, 1))
        while h.shape[0] < t.rotation:
            h = np.block([[h, h], [h, -h]])
        signs = [-1.0 if spec_lowbias32(c) & 1 else 1.0 for c in range(cols)]
        r = np.diag(signs) @ np.kron(np.eye(cols // t.rotation), h) / math.sqrt(t.rotation)
        got = arrays[name].reshape(rows, cols)
        assert -1.0 in signs and np.abs(got - plain).max() > 0.01, name
        np.testing.assert_allclose(got, plain @ r.T, rtol=0, atol=1e-6, err_msg=name)


@REVISIONS
def test_golden_reads_back(revision):
    path, _, meta, tensors = GOLDENS[revision]
    expected = tensors()
    with WqFile(path) as f:
        assert f.meta == meta and f.layout_revision == revision
        assert f.verify() == []
        for name, t in expected.items():
            info = f.info(name)
            if isinstance(t, QuantizedTensor):
                assert info.encoding == t.encoding and info.bits == t.bits and info.group_size == t.group_size
                assert info.outlier_columns == (None if t.outlier_columns is None else tuple(t.outlier_columns))
                assert info.rotation == t.rotation
                assert info.activation == GOLDEN_ACTIVATIONS.get(revision, {}).get(name)
                q = f.quantized(name)
                assert quantized_codes_equal(q, t) and q.rotation == t.rotation
                full = f.array(name)
                np.testing.assert_array_equal(full, dequantize(t))
                np.testing.assert_array_equal(f.array(name, rows=slice(1, 3)), full[1:3])
            elif isinstance(t, CodebookTensor):
                assert info.encoding == Encoding.VQ and info.codebook and not info.quantized
                assert info.vq == (t.dim, t.index_bits, t.rows_per_book) and info.group_size == t.group_size
                assert info.rotation == t.rotation and info.activation is None
                assert codebook_equal(f.codebook(name), t)
                full = f.array(name)
                np.testing.assert_array_equal(full, dequantize_codebook(t))
                np.testing.assert_array_equal(f.array(name, rows=slice(1, 3)), full[1:3])
            else:
                assert info.encoding == (Encoding.F16 if t.dtype == np.float16 else Encoding.F32)
                np.testing.assert_array_equal(f.array(name), t.astype(np.float32))


def test_golden_v4_activation_entries():
    """SPEC.md 5.5 in the bytes: each spec is the entry map {"bits"[, "scale"]}, on exactly the named tensors, and
    a static scale is stored as the msgpack float64 of its binary32 value."""
    buf = GOLDENS[4][0].read_bytes()
    header_len = struct.unpack_from("<Q", buf, 8)[0]
    entries = {e["name"]: e for e in msgpack.unpackb(buf[24 : 24 + header_len], raw=False)["tensors"]}
    expected = GOLDEN_ACTIVATIONS[4]
    assert {n for n, e in entries.items() if "activation" in e} == set(expected)
    assert entries["encoder.layers.0.fc1.weight"]["activation"] == {"bits": 8}
    assert entries["encoder.layers.0.fc2.weight"]["activation"] == {"bits": 4, "scale": 0.0234375}
    assert entries["decoder.embed_tokens.weight"]["activation"] == {"bits": 6, "scale": 5 * 2.0**-20}
    assert b"\xcb" + struct.pack(">d", 0.0234375) in buf[24 : 24 + header_len]
