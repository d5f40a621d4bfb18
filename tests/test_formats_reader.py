"""One test per way a .wq file can be wrong (SPEC.md section 7): each raises its own FormatError subclass."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tempfile
import zlib

import msgpack
import numpy as np
import pytest
from formats_helpers import (
    SAMPLE_META,
    decompose,
    decomposed_bytes,
    decomposed_tensors,
    fix_tensor_crc,
    quantized_codes_equal,
    rebuild,
    sample_bytes,
    sample_tensors,
    split,
    tensor_span,
)

from wavq.formats import (
    AlignmentError,
    BadMagicError,
    ChecksumError,
    DuplicateNameError,
    FormatError,
    HeaderBoundsError,
    InvalidValueError,
    MalformedHeaderError,
    MissingTensorError,
    OutOfBoundsError,
    OverlapError,
    ShapeMismatchError,
    TrailingDataError,
    TruncatedFileError,
    UnknownEncodingError,
    UnsupportedVersionError,
    WqFile,
    codecs,
    dequantize,
    quantize,
    write_wq,
)
from wavq.formats import reader as reader_module
from wavq.formats.constants import MAX_DIM, MAX_HEADER_LEN, MAX_NAME_LEN, PREFIX_SIZE, Encoding, align
from wavq.formats.layout import part_names, tensor_parts


@pytest.fixture
def put(tmp_path):
    """put(bytes) -> path of a file holding them."""

    def _put(buf: bytes, name: str = "t.wq") -> str:
        p = tmp_path / name
        p.write_bytes(buf)
        return str(p)

    return _put


def parts():
    """Fresh (header, data) of the sample file, to edit."""
    _, header, data = split(sample_bytes())
    return header, data


def decomposed_parts():
    """Fresh (header, data) of the revision-2 sample (decomposed tensors), to edit."""
    _, header, data = split(decomposed_bytes())
    return header, data


def entry(header: dict, name: str) -> dict:
    return next(e for e in header["tensors"] if e["name"] == name)


def rejects(put, buf: bytes, exc: type, match: str | None = None) -> FormatError:
    path = put(buf)
    with pytest.raises(exc, match=match) as info:
        WqFile(path)
    assert path in str(info.value), "the message names the file"
    return info.value


# ---- the valid file ---------------------------------------------------------------------------------------
def test_sample_reads_back(put):
    path = put(sample_bytes())
    with WqFile(path) as f:
        assert list(f.tensors) == list(sample_tensors())
        for name, t in sample_tensors().items():
            expected = dequantize(t) if hasattr(t, "codes") else np.asarray(t, np.float32)
            np.testing.assert_array_equal(f.array(name), expected)
        assert f.verify() == []


def test_rebuild_of_unchanged_header_is_identical():
    header, data = parts()
    assert rebuild(header, data) == sample_bytes()


# ---- prefix ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("magic", [b"WAVX", b"GGUF", b"\0\0\0\0", b"wavq"])
def test_wrong_magic(put, magic):
    rejects(put, magic + sample_bytes()[4:], BadMagicError, "magic")


def test_not_a_wq_file_at_all(put):
    rejects(put, b"PK\x03\x04 some zip file, long enough to hold a prefix", BadMagicError)


@pytest.mark.parametrize("version", [0, 2, 0xFFFFFFFF])
def test_unsupported_container_version(put, version):
    header, data = parts()
    rejects(put, rebuild(header, data, version=version), UnsupportedVersionError, f"container version {version}")


@pytest.mark.parametrize("flags", [1, 0x80000000])
def test_unknown_flags(put, flags):
    header, data = parts()
    rejects(put, rebuild(header, data, flags=flags), MalformedHeaderError, "flags")


# ---- truncation and trailing data ------------------------------------------------------------------------
def _cut_points():
    buf = sample_bytes()
    header_len = split(buf)[0]["header_len"]
    data_start = align(PREFIX_SIZE + header_len)
    return {
        "empty": (0, TruncatedFileError),
        "inside magic": (2, TruncatedFileError),
        "after magic": (4, TruncatedFileError),
        "inside prefix": (PREFIX_SIZE - 1, TruncatedFileError),
        "after prefix": (PREFIX_SIZE, HeaderBoundsError),  # the prefix promises a header the file lacks
        "inside header": (PREFIX_SIZE + header_len // 2, HeaderBoundsError),
        "header minus one": (PREFIX_SIZE + header_len - 1, HeaderBoundsError),
        "in header padding": (data_start - 1, TruncatedFileError)
        if data_start > PREFIX_SIZE + header_len
        else (data_start, TruncatedFileError),
        "data start": (data_start, TruncatedFileError),
        "middle of data": ((data_start + len(buf)) // 2, TruncatedFileError),
        "last byte": (len(buf) - 1, TruncatedFileError),
    }


@pytest.mark.parametrize("where", list(_cut_points()))
def test_truncated_file(put, where):
    cut, exc = _cut_points()[where]
    rejects(put, sample_bytes()[:cut], exc)


@pytest.mark.parametrize("extra", [b"\0", b"\0" * 64, b"garbage"])
def test_trailing_data(put, extra):
    rejects(put, sample_bytes() + extra, TrailingDataError, "after the data region")


def test_data_region_longer_than_its_tensors(put):
    header, data = parts()
    header["data_size"] += 64
    rejects(put, rebuild(header, data + b"\0" * 64), TrailingDataError, "tensors end at")


# ---- header length -------------------------------------------------------------------------------------
@pytest.mark.parametrize("header_len", [0, MAX_HEADER_LEN + 1, 1 << 40, (1 << 64) - 1])
def test_header_length_out_of_bounds(put, header_len):
    header, data = parts()
    rejects(put, rebuild(header, data, header_len=header_len), HeaderBoundsError, "header length")


def test_header_length_past_end_of_file(put):
    header, data = parts()
    buf = rebuild(header, data)
    rejects(put, rebuild(header, data, header_len=len(buf)), HeaderBoundsError, "past the end")


# ---- header checksum -------------------------------------------------------------------------------------
def test_header_checksum_mismatch(put):
    buf = bytearray(sample_bytes())
    buf[PREFIX_SIZE + 5] ^= 0x20  # a byte inside the msgpack header; the CRC in the prefix stays
    err = rejects(put, bytes(buf), ChecksumError, "header checksum")
    assert err.tensor is None


def test_header_crc_field_wrong(put):
    header, data = parts()
    good = zlib.crc32(msgpack.packb(header, use_bin_type=True))
    rejects(put, rebuild(header, data, crc=good ^ 1), ChecksumError)


# ---- malformed header --------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "raw",
    [
        b"\xc1",  # the one byte msgpack never uses
        b"\x85\xa4name",  # a map cut short
        msgpack.packb({"a": 1}) + b"\x01",  # extra bytes after the map
        b"\xa2\xff\xfe",  # a str that is not UTF-8
        b"\x91" * 5000 + b"\x00",  # nesting deeper than msgpack's stack
    ],
    ids=["reserved-byte", "cut-map", "extra-bytes", "bad-utf8", "deep-nesting"],
)
def test_header_not_msgpack(put, raw):
    _, data = parts()
    rejects(put, rebuild(raw, data), MalformedHeaderError, "msgpack")


@pytest.mark.parametrize("value", [[1, 2], 7, "header", None, b"bytes"])
def test_header_not_a_map(put, value):
    _, data = parts()
    rejects(put, rebuild(msgpack.packb(value, use_bin_type=True), data), MalformedHeaderError, "not a map")


@pytest.mark.parametrize("key", ["layout_revision", "meta", "tensors", "data_size"])
def test_header_missing_key(put, key):
    header, data = parts()
    del header[key]
    rejects(put, rebuild(header, data), MalformedHeaderError, f"lacks '{key}'")


@pytest.mark.parametrize(
    "key,value",
    [
        ("layout_revision", "1"),
        ("layout_revision", True),
        ("layout_revision", 1.0),
        ("meta", []),
        ("meta", "x"),
        ("tensors", {}),
        ("tensors", None),
        ("data_size", "64"),
        ("data_size", False),
    ],
)
def test_header_wrong_type(put, key, value):
    header, data = parts()
    header[key] = value
    rejects(put, rebuild(header, data), MalformedHeaderError, f"'{key}' is not")


def test_header_unknown_key(put):
    header, data = parts()
    header["compression"] = "zstd"
    rejects(put, rebuild(header, data), MalformedHeaderError, "unknown keys")


def test_header_repeated_key(put):
    header, data = parts()
    # msgpack dicts cannot hold a repeated key: splice one in by hand (map of 5 pairs, one key twice).
    body = b"".join(msgpack.packb(k) + msgpack.packb(v, use_bin_type=True) for k, v in header.items())
    raw = b"\x85" + body + msgpack.packb("data_size") + msgpack.packb(header["data_size"])
    rejects(put, rebuild(raw, data), MalformedHeaderError, "appears twice")


@pytest.mark.parametrize(
    "meta",
    [
        {1: "integer key"},
        {"when": msgpack.Timestamp(0, 0)},
        {"blob": msgpack.ExtType(5, b"xyz")},
        {"list": [msgpack.ExtType(1, b"")]},
    ],
    ids=["int-key", "timestamp", "ext", "ext-in-list"],
)
def test_meta_not_plain(put, meta):
    header, data = parts()
    header["meta"] = meta
    raw = msgpack.packb(header, use_bin_type=True, strict_types=False)
    rejects(put, rebuild(raw, data), MalformedHeaderError, "plain msgpack")


@pytest.mark.parametrize("revision", [0, 6, 99])
def test_unsupported_layout_revision(put, revision):
    header, data = parts()
    header["layout_revision"] = revision
    rejects(put, rebuild(header, data), UnsupportedVersionError, f"layout revision {revision}")


@pytest.mark.parametrize("size", [-64, 65, 100])
def test_data_size_not_aligned(put, size):
    header, data = parts()
    header["data_size"] = size
    rejects(put, rebuild(header, data), MalformedHeaderError, "data size")


def test_nonzero_header_padding(put):
    header, data = parts()
    raw = msgpack.packb(header, use_bin_type=True)
    n_pad = align(PREFIX_SIZE + len(raw)) - PREFIX_SIZE - len(raw)
    if n_pad == 0:  # make room for padding by growing the header
        header["meta"]["pad"] = "x"
        raw = msgpack.packb(header, use_bin_type=True)
        n_pad = align(PREFIX_SIZE + len(raw)) - PREFIX_SIZE - len(raw)
    assert n_pad > 0
    rejects(put, rebuild(raw, data, pad=b"\0" * (n_pad - 1) + b"\x01"), MalformedHeaderError, "padding")


# ---- tensor entries -------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [[1], "q.sym3", None, 3])
def test_entry_not_a_map(put, value):
    header, data = parts()
    header["tensors"][0] = value
    rejects(put, rebuild(header, data), MalformedHeaderError, "tensor entry 0: not a map")


@pytest.mark.parametrize("name", [None, "", 5, b"bytes-name", "x" * (MAX_NAME_LEN + 1)])
def test_entry_invalid_name(put, name):
    header, data = parts()
    header["tensors"][0]["name"] = name
    rejects(put, rebuild(header, data), MalformedHeaderError, "invalid name")


@pytest.mark.parametrize("key", ["encoding", "offset", "nbytes", "crc32"])
@pytest.mark.parametrize("value", ["missing", "7", 1.0, True, None])
def test_entry_field_missing_or_not_int(put, key, value):
    header, data = parts()
    e = header["tensors"][0]
    if value == "missing":
        del e[key]
    else:
        e[key] = value
    rejects(put, rebuild(header, data), MalformedHeaderError, f"non-integer '{key}'")


@pytest.mark.parametrize(
    "shape",
    [
        "missing",
        5,
        "(5, 13)",
        [5, "13"],
        [5, 13.0],
        [5, True],
        [-1, 13],
        [MAX_DIM + 1, 1],
        [1] * 9,
        [MAX_DIM, MAX_DIM, 0],  # an empty tensor, but its other dims would overflow any size arithmetic
        [2**32, 2**32],  # 2**64 elements: an int64 product wraps to 0
    ],
    ids=lambda s: repr(s)[:24],
)
def test_entry_invalid_shape(put, shape):
    header, data = parts()
    e = entry(header, "f.f32")
    if shape == "missing":
        del e["shape"]
    else:
        e["shape"] = shape
    rejects(put, rebuild(header, data), MalformedHeaderError, "invalid shape")


@pytest.mark.parametrize("encoding", [4, 15, 16, 31, 32, 1 << 40])
def test_unknown_encoding(put, encoding):
    header, data = parts()
    entry(header, "f.f32")["encoding"] = encoding
    rejects(put, rebuild(header, data), UnknownEncodingError, f"unknown encoding {encoding}")


@pytest.mark.parametrize("bits", ["missing", 0, 1, 9, 16, "4", 4.0, True])
def test_entry_bits_invalid(put, bits):
    header, data = parts()
    e = entry(header, "q.sym3")
    if bits == "missing":
        del e["bits"]
    else:
        e["bits"] = bits
    rejects(put, rebuild(header, data), MalformedHeaderError, "bits")


@pytest.mark.parametrize("group_size", ["missing", 0, -1, 14, 1 << 41, "4", None])
def test_entry_group_size_invalid(put, group_size):
    header, data = parts()
    e = entry(header, "q.sym3")  # shape (5, 13)
    if group_size == "missing":
        del e["group_size"]
    else:
        e["group_size"] = group_size
    rejects(put, rebuild(header, data), MalformedHeaderError, "group size")


@pytest.mark.parametrize("key,value", [("bits", 4), ("group_size", 2), ("scale", 1.0)])
def test_entry_unknown_key(put, key, value):
    header, data = parts()
    entry(header, "f.f32")[key] = value
    rejects(put, rebuild(header, data), MalformedHeaderError, "unknown keys")


@pytest.mark.parametrize("crc", [1 << 32, -1])
def test_entry_crc_out_of_range(put, crc):
    header, data = parts()
    entry(header, "f.f32")["crc32"] = crc
    rejects(put, rebuild(header, data), MalformedHeaderError, "crc32")


# ---- placement in the data region ----------------------------------------------------------------------------
@pytest.mark.parametrize("edit", ["offset=data_size", "offset<0", "nbytes<0", "nbytes huge", "offset huge"])
def test_outside_data_region(put, edit):
    header, data = parts()
    e = entry(header, "f.f32")
    if edit == "offset=data_size":
        e["offset"] = header["data_size"]
    elif edit == "offset<0":
        e["offset"] = -64
    elif edit == "nbytes<0":
        e["nbytes"] = -1
    elif edit == "nbytes huge":
        e["nbytes"] = (1 << 64) - 1  # offset + nbytes would wrap a 64-bit sum
    else:
        e["offset"] = (1 << 64) - 64
    rejects(put, rebuild(header, data), OutOfBoundsError, "outside")


def test_overlapping_tensors(put):
    header, data = parts()
    a, b = entry(header, "q.sym3"), entry(header, "q.asym5")
    b["offset"] = a["offset"] + 64  # inside a's span (codes + scales take more than 64 bytes)
    assert b["offset"] < a["offset"] + a["nbytes"]
    rejects(put, rebuild(header, data), OverlapError, "overlap")


def test_identical_offsets_overlap(put):
    header, data = parts()
    entry(header, "f.f16")["offset"] = entry(header, "q.sym3")["offset"]
    rejects(put, rebuild(header, data), OverlapError, "overlap")


@pytest.mark.parametrize("delta", [1, 8, 32])
def test_misaligned_offset(put, delta):
    header, data = parts()
    entry(header, "q.sym3")["offset"] += delta
    rejects(put, rebuild(header, data), AlignmentError, "not a multiple of 64")


def test_duplicate_names(put):
    header, data = parts()
    entry(header, "f.f16")["name"] = "q.sym3"
    rejects(put, rebuild(header, data), DuplicateNameError, "more than once")


# ---- sizes ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name,shape",
    [
        ("f.f32", [3, 3]),
        ("f.f32", [2, 3, 1, 2]),
        ("f.f16", [5]),
        ("q.sym3", [5, 17]),
        ("q.sym3", [6, 13]),
    ],
)
def test_shape_does_not_match_size(put, name, shape):
    header, data = parts()
    entry(header, name)["shape"] = shape
    rejects(put, rebuild(header, data), ShapeMismatchError, "needs")


@pytest.mark.parametrize("delta", [-1, 1, 64])
def test_nbytes_does_not_match_shape(put, delta):
    header, data = parts()
    entry(header, "f.f16")["nbytes"] += delta
    rejects(put, rebuild(header, data), ShapeMismatchError, "needs")


def test_quantized_one_dimensional(put):
    header, data = parts()
    entry(header, "q.sym3")["shape"] = [65]
    rejects(put, rebuild(header, data), ShapeMismatchError, "2 or more dimensions")


def test_quantized_without_columns(put):
    header, data = parts()
    e = entry(header, "q.sym3")
    e["shape"], e["group_size"] = [5, 0], 1
    rejects(put, rebuild(header, data), ShapeMismatchError, "no columns")


def test_float_tensor_cannot_be_reinterpreted_as_quantized(put):
    header, data = parts()
    entry(header, "f.f32")["encoding"] = 2  # QSYM without bits / group size
    rejects(put, rebuild(header, data), MalformedHeaderError, "bits")


# ---- tensor data: checked on first use -------------------------------------------------------------------------
@pytest.mark.parametrize("name", [n for n in sample_tensors() if n != "f.empty"])  # f.empty has no bytes
def test_tensor_checksum_mismatch_names_the_tensor(put, name):
    buf = bytearray(sample_bytes())
    start, nbytes, _ = tensor_span(bytes(buf), name)
    buf[start + nbytes // 2] ^= 0x01
    path = put(bytes(buf))
    with WqFile(path) as f:  # opening reads only the header: it succeeds
        with pytest.raises(ChecksumError, match=name) as info:
            f.array(name)
        assert info.value.tensor == name
        problems = f.verify()
        assert [p.tensor for p in problems] == [name]
        for other in f.tensors:  # the rest of the file is still readable
            if other != name:
                f.array(other)


def test_corruption_in_padding_between_parts_is_caught(put):
    buf = bytearray(sample_bytes())
    start, nbytes, e = tensor_span(bytes(buf), "q.sym3")
    codes_len = 5 * 2 * 3  # (5 rows) x row_bytes(13 cols, 3 bits) = 2 blocks x 3 bytes
    assert codes_len < 64 <= nbytes
    buf[start + codes_len + 1] = 0xFF  # the zero padding before the scales
    with WqFile(put(bytes(buf))) as f:
        with pytest.raises(ChecksumError, match="q.sym3"):
            f.array("q.sym3")


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_scale(put, bad):
    buf = bytearray(sample_bytes())
    start, _, _ = tensor_span(bytes(buf), "q.sym3")
    scales_at = start + 64  # codes (30 bytes) then scales at the next 64-byte boundary
    buf[scales_at + 2 : scales_at + 4] = np.float16(bad).tobytes()
    path = put(fix_tensor_crc(bytes(buf), "q.sym3"))
    with WqFile(path) as f:
        with pytest.raises(InvalidValueError, match="non-finite scale") as info:
            f.array("q.sym3")
        assert info.value.tensor == "q.sym3"
        assert [p.tensor for p in f.verify()] == ["q.sym3"]


def test_missing_tensor(put):
    with WqFile(put(sample_bytes())) as f:
        with pytest.raises(MissingTensorError, match="no.such"):
            f.array("no.such")


def test_unreadable_paths(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        WqFile(tmp_path / "missing.wq")
    with pytest.raises(FormatError, match="cannot read"):
        WqFile(tmp_path)


def test_arrays_outlive_close(put):
    """Closing must not unmap memory a returned view still uses (that would crash the process)."""
    f = WqFile(put(sample_bytes()))
    view = f.array("f.f32")
    expected = np.array(view)
    f.close()
    np.testing.assert_array_equal(view, expected)
    with pytest.raises(ValueError, match="closed"):
        f.array("f.f32")


def test_rows_must_be_a_slice(put):
    with WqFile(put(sample_bytes())) as f:
        with pytest.raises(TypeError, match="slice"):
            f.array("q.sym3", rows=1)


# ---- decomposed tensors (layout revision 2, SPEC.md 5.3) -------------------------------------------------------
def part_at(buf: bytes, name: str, part: str) -> int:
    """File offset of one part ("offset", "outliers", ...) of a tensor."""
    start, _, e = tensor_span(buf, name)
    enc = Encoding(e["encoding"])
    k = len(e["outlier_columns"]) if "outlier_columns" in e else None
    spans = dict(zip(part_names(enc, k), tensor_parts(enc, tuple(e["shape"]), e.get("bits"), e.get("group_size"), k)))
    return start + spans[part][0]


def test_decomposed_sample_reads_back(put):
    with WqFile(put(decomposed_bytes())) as f:
        assert f.layout_revision == 2 and f.verify() == []
        assert f.info("d.asym").outlier_columns == (2, 11, 19) and f.info("d.sym0").outlier_columns == ()
        assert f.info("q.plain").outlier_columns is None and f.info("f.f32").outlier_columns is None
        for name, t in decomposed_tensors().items():
            if not hasattr(t, "codes"):
                np.testing.assert_array_equal(f.array(name), t)
                continue
            assert quantized_codes_equal(f.quantized(name), t)
            full = f.array(name)
            np.testing.assert_array_equal(full, dequantize(t))
            for sel in (slice(1, 3), slice(None, None, 2), slice(-1, None), slice(2, 1)):
                np.testing.assert_array_equal(f.array(name, rows=sel), full[sel], err_msg=f"{name} {sel}")


def test_writer_uses_the_lowest_revision():
    assert split(sample_bytes())[1]["layout_revision"] == 1
    assert split(decomposed_bytes())[1]["layout_revision"] == 2


def test_revision_2_file_without_decomposed_tensors_is_valid(put):
    header, data = parts()
    header["layout_revision"] = 2
    with WqFile(put(rebuild(header, data))) as f:
        assert f.layout_revision == 2 and f.verify() == []
        np.testing.assert_array_equal(f.array("q.sym3"), dequantize(sample_tensors()["q.sym3"]))


def test_revision_1_reader_reads_plain_files_and_rejects_decomposed_ones(put, monkeypatch):
    """Why the writer writes the lowest revision: a reader that predates revision 2 still reads files without
    decomposed tensors, and refuses (rather than misreads) the others."""
    monkeypatch.setattr(reader_module, "SUPPORTED_LAYOUT_REVISIONS", (1,))
    with WqFile(put(sample_bytes())) as f:
        assert f.verify() == []
    rejects(put, decomposed_bytes(), UnsupportedVersionError, "layout revision 2")


@pytest.mark.parametrize("name", ["f.f32", "f.f16"])
def test_outlier_columns_on_a_float_encoding(put, name):
    header, data = parts() if name == "f.f16" else decomposed_parts()
    entry(header, name)["outlier_columns"] = [0]
    header["layout_revision"] = 2
    rejects(put, rebuild(header, data), MalformedHeaderError, f"'{name}'.*quantized encodings only")


@pytest.mark.parametrize("source", ["decomposed file relabelled", "key added to a revision-1 file"])
def test_outlier_columns_in_a_revision_1_file(put, source):
    if source == "decomposed file relabelled":
        header, data = decomposed_parts()
        header["layout_revision"] = 1
        name = "d.asym"
    else:
        header, data = parts()
        entry(header, "q.sym3")["outlier_columns"] = []
        name = "q.sym3"
    rejects(put, rebuild(header, data), MalformedHeaderError, f"'{name}'.*layout revision 2.*revision 1")


@pytest.mark.parametrize(
    "value",
    [
        5,
        "2,11,19",
        None,
        {},
        [2.0, 11, 19],
        [True, 11, 19],
        [2, False, 19],
        ["2", 11, 19],
        [-1, 11, 19],
        [2, 11, [19]],
        b"\x02",
    ],
    ids=lambda v: repr(v)[:20],
)
def test_outlier_columns_not_an_array_of_uints(put, value):
    header, data = decomposed_parts()
    entry(header, "d.asym")["outlier_columns"] = value
    rejects(put, rebuild(header, data), MalformedHeaderError, "'d.asym'.*not an array of non-negative integers")


@pytest.mark.parametrize("value", [[11, 2, 19], [2, 2, 19], [2, 19, 19], [19, 11, 2]])
def test_outlier_columns_not_strictly_increasing(put, value):
    header, data = decomposed_parts()
    entry(header, "d.asym")["outlier_columns"] = value
    rejects(put, rebuild(header, data), MalformedHeaderError, "'d.asym'.*not strictly increasing")


@pytest.mark.parametrize("value", [[2, 11, 20], [2, 11, 2**40], [2, 11, 2**64 - 1]])
def test_outlier_column_outside_the_columns(put, value):
    header, data = decomposed_parts()  # d.asym has 20 columns
    entry(header, "d.asym")["outlier_columns"] = value
    rejects(put, rebuild(header, data), MalformedHeaderError, r"'d.asym'.*outside 0\.\.19")


@pytest.mark.parametrize(
    "name,edit",
    [
        ("d.asym", "fewer columns"),
        ("d.asym", "more columns"),
        ("d.asym", "key removed"),
        ("d.asym", "nbytes+1"),
        ("d.sym0", "key removed"),
        ("d.sym0", "one column"),
        ("q.plain", "key added"),
    ],
)
def test_decomposed_nbytes_does_not_match(put, name, edit):
    header, data = decomposed_parts()
    e = entry(header, name)
    if edit == "fewer columns":
        e["outlier_columns"] = [2, 11]
    elif edit == "more columns":
        e["outlier_columns"] = [2, 5, 11, 19]
    elif edit == "key removed":
        del e["outlier_columns"]
    elif edit == "nbytes+1":
        e["nbytes"] += 1
    elif edit == "one column":
        e["outlier_columns"] = [0]
    else:
        e["outlier_columns"] = []
    rejects(put, rebuild(header, data), ShapeMismatchError, f"'{name}'.*needs")


@pytest.mark.parametrize("part,what", [("offset", "non-finite offset"), ("outliers", "non-finite outlier value")])
@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
def test_non_finite_decomposition_values(put, part, what, bad):
    buf = bytearray(decomposed_bytes())
    at = part_at(bytes(buf), "d.asym", part)
    dtype = np.float32 if part == "offset" else np.float16
    size = np.dtype(dtype).itemsize
    buf[at + 3 * size : at + 4 * size] = np.array(bad, dtype).tobytes()  # one value inside the part
    path = put(fix_tensor_crc(bytes(buf), "d.asym"))
    with WqFile(path) as f:  # opening reads only the header
        for use in (f.array, f.quantized, lambda n: f.array(n, rows=slice(0, 1))):
            with pytest.raises(InvalidValueError, match=f"'d.asym' has a {what}") as info:
                use("d.asym")
            assert info.value.tensor == "d.asym" and path in str(info.value)
        assert [p.tensor for p in f.verify()] == ["d.asym"]
        f.array("d.sym0")  # the other tensors stay readable


@pytest.mark.parametrize("part", ["offset", "outliers"])
def test_checksum_covers_the_decomposition_parts(put, part):
    buf = bytearray(decomposed_bytes())
    buf[part_at(bytes(buf), "d.asym", part) + 1] ^= 0x04
    with WqFile(put(bytes(buf))) as f:
        with pytest.raises(ChecksumError, match="d.asym"):
            f.array("d.asym")
        assert [p.tensor for p in f.verify()] == ["d.asym"]


def test_raw_lists_the_stored_parts(put):
    with WqFile(put(decomposed_bytes())) as f:
        asym = f.raw("d.asym")  # codes, scales, zeros, offset, outliers
        assert [a.shape for a in asym[3:]] == [(20,), (6, 3)]
        assert asym[3].dtype == np.float32 and asym[4].dtype == np.float16
        assert len(f.raw("d.sym0")) == 3  # codes, scales, offset: k = 0 stores no outliers part
        assert len(f.raw("q.plain")) == 2


# ---- rotated tensors (layout revision 3, SPEC.md 5.4) ----------------------------------------------------------
def rotated_tensors() -> dict:
    """A rotated QASYM tensor (24 columns, B = 8: 3, 6, 12 and 24 divide 24, so "not a power of two" and "does not
    divide" are told apart), a rotated 3-D QSYM one with B = 2, a decomposed, a plain and a float tensor."""
    rng = np.random.default_rng(8642)
    w = rng.standard_normal((6, 24)).astype(np.float32)
    w[:, 5] *= 30  # an outlier column, which the rotation spreads over its block
    asym, _ = quantize(codecs.rotate_columns(w, 8), 4, group_size=8, symmetric=False)
    conv = rng.standard_normal((5, 2, 3)).astype(np.float32)
    sym, _ = quantize(codecs.rotate_columns(conv.reshape(5, 6), 2).reshape(5, 2, 3), 3, group_size=4, symmetric=True)
    dec, _ = quantize(rng.standard_normal((4, 16)).astype(np.float32), 4, group_size=8, symmetric=False)
    plain, _ = quantize(rng.standard_normal((3, 16)).astype(np.float32), 5, group_size=4, symmetric=True)
    return {
        "r.asym": dataclasses.replace(asym, rotation=8),
        "r.sym": dataclasses.replace(sym, rotation=2),
        "d.asym": decompose(dec, rng.standard_normal(16), [1, 9], rng.standard_normal((4, 2)) * 20),
        "q.plain": plain,
        "f.f32": rng.standard_normal((2, 3)).astype(np.float32),
    }


@functools.cache
def rotated_bytes() -> bytes:
    """Bytes of a valid (layout revision 3) file holding rotated_tensors()."""
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "rotated.wq")
        write_wq(path, SAMPLE_META, rotated_tensors())
        with open(path, "rb") as f:
            return f.read()


def rotated_parts():
    """Fresh (header, data) of the revision-3 sample (rotated tensors), to edit."""
    _, header, data = split(rotated_bytes())
    return header, data


def test_rotated_sample_reads_back(put):
    """Written as revision 3 with the block size in the entry; info() and quantized() report it, and array() of
    the whole tensor and of row slices equals codecs.dequantize (which applies R^T) bit for bit."""
    header, _ = rotated_parts()
    assert header["layout_revision"] == 3
    assert {e["name"]: e.get("rotation") for e in header["tensors"]} == {
        "r.asym": 8,
        "r.sym": 2,
        "d.asym": None,
        "q.plain": None,
        "f.f32": None,
    }
    with WqFile(put(rotated_bytes())) as f:
        assert f.layout_revision == 3 and f.verify() == []
        assert [f.info(n).rotation for n in f.tensors] == [8, 2, 0, 0, 0]
        assert f.info("d.asym").outlier_columns == (1, 9)  # revision 3 still holds decomposed tensors
        for name, t in rotated_tensors().items():
            if not hasattr(t, "codes"):
                np.testing.assert_array_equal(f.array(name), t)
                continue
            q = f.quantized(name)
            assert quantized_codes_equal(q, t) and q.rotation == t.rotation
            full = f.array(name)
            assert full.shape == t.shape and full.dtype == np.float32
            np.testing.assert_array_equal(full, dequantize(t))
            np.testing.assert_array_equal(f.array(name, rows=slice(1, 3)), dequantize(t)[1:3])
            for sel in (slice(None, None, 2), slice(-1, None), slice(2, 1)):
                np.testing.assert_array_equal(f.array(name, rows=sel), full[sel], err_msg=f"{name} {sel}")
            np.testing.assert_array_equal(f.array(name, dtype=np.float16), full.astype(np.float16))


def test_rotated_tensor_decodes_to_the_weight_not_its_rotation(put):
    """array() is W's approximation, not the stored V = W R: the error against W is the quantization error (half
    a step per value spread by an orthogonal transform), while V itself is far from W."""
    w = np.random.default_rng(8642).standard_normal((6, 24)).astype(np.float32)
    w[:, 5] *= 30  # as in rotated_tensors()
    with WqFile(put(rotated_bytes())) as f:
        got = f.array("r.asym")
        q = f.quantized("r.asym")
    v = dequantize(dataclasses.replace(q, rotation=0))
    row_bound = np.linalg.norm(codecs.error_bound(q).repeat(8, axis=1), axis=1)  # groups of 8 = one block each
    assert (np.linalg.norm(got - w, axis=1) <= row_bound * 1.001).all()
    assert (np.linalg.norm(v - w, axis=1) > 10 * row_bound).all()


def test_writer_writes_revision_3_only_for_rotated_tensors(tmp_path):
    tensors = rotated_tensors()
    for names, revision in ((["q.plain", "f.f32"], 1), (["d.asym", "q.plain"], 2), (["q.plain", "r.sym"], 3)):
        path = tmp_path / f"rev{revision}.wq"
        write_wq(path, {}, {n: tensors[n] for n in names})
        with WqFile(path) as f:
            assert f.layout_revision == revision, names


def test_revision_3_file_without_rotated_tensors_is_valid(put):
    header, data = decomposed_parts()
    header["layout_revision"] = 3
    with WqFile(put(rebuild(header, data))) as f:
        assert f.layout_revision == 3 and f.verify() == []
        assert f.info("d.asym").outlier_columns == (2, 11, 19) and f.info("d.asym").rotation == 0
        np.testing.assert_array_equal(f.array("d.asym"), dequantize(decomposed_tensors()["d.asym"]))


def test_revision_2_reader_reads_older_files_and_rejects_rotated_ones(put, monkeypatch):
    """A reader that predates revision 3 still reads revision-1 and -2 files, and refuses (rather than misreads:
    the codes of W R are valid codes) a file with rotated tensors."""
    monkeypatch.setattr(reader_module, "SUPPORTED_LAYOUT_REVISIONS", (1, 2))
    for buf in (sample_bytes(), decomposed_bytes()):
        with WqFile(put(buf)) as f:
            assert f.verify() == []
    rejects(put, rotated_bytes(), UnsupportedVersionError, "layout revision 3")


def test_rotation_adds_no_bytes(put):
    """The key changes values, not sizes (SPEC.md 5.4): on a plain tensor of a revision-3 file it is accepted with
    the same nbytes, and the tensor then reads as the rotation of the same codes."""
    header, data = rotated_parts()
    entry(header, "q.plain")["rotation"] = 4
    with WqFile(put(rebuild(header, data))) as f:
        assert f.info("q.plain").rotation == 4 and f.verify() == []
        plain = dequantize(rotated_tensors()["q.plain"])
        np.testing.assert_array_equal(f.array("q.plain"), codecs.unrotate_columns(plain, 4))
    header, data = rotated_parts()
    del entry(header, "r.asym")["rotation"]  # and removing it leaves a valid, unrotated tensor
    with WqFile(put(rebuild(header, data))) as f:
        np.testing.assert_array_equal(
            f.array("r.asym"), dequantize(dataclasses.replace(rotated_tensors()["r.asym"], rotation=0))
        )


@pytest.mark.parametrize("name", ["f.f32", "f.f16"])
@pytest.mark.parametrize("value", [2, 0, "8"])
def test_rotation_on_a_float_encoding(put, name, value):
    """Rejected whatever its value, before the value is looked at: float tensors have no codes to rotate."""
    if name == "f.f16":
        header, data = parts()
        header["layout_revision"] = 3
    else:
        header, data = rotated_parts()
    entry(header, name)["rotation"] = value
    rejects(
        put,
        rebuild(header, data),
        MalformedHeaderError,
        f"'{name}': 'rotation' is defined for quantized encodings only, not F{name[-2:]}",
    )


@pytest.mark.parametrize("revision", [1, 2])
def test_rotation_in_a_revision_1_or_2_file(put, revision):
    """A valid block size (8 divides the 24 columns) is still rejected when the file claims a revision that
    predates the key: such a reader would take the codes of W R for W's."""
    header, data = rotated_parts()
    header["layout_revision"] = revision
    rejects(
        put,
        rebuild(header, data),
        MalformedHeaderError,
        f"'r.asym': key 'rotation' exists only from layout revision 3; this file is revision {revision}",
    )


@pytest.mark.parametrize(
    "value", [True, False, 8.0, 2.0, "8", None, [8], {"B": 8}, b"\x08"], ids=lambda v: repr(v)[:20]
)
def test_rotation_not_an_integer(put, value):
    """msgpack booleans, floats (even integral ones), strings, ... are not block sizes."""
    header, data = rotated_parts()
    entry(header, "r.asym")["rotation"] = value
    rejects(
        put,
        rebuild(header, data),
        MalformedHeaderError,
        rf"'r.asym': rotation {re.escape(repr(value))} is not an integer power of two >= 2 dividing the 24 columns",
    )


@pytest.mark.parametrize("value", [3, 6, 12, 24], ids=lambda v: f"B={v}")
def test_rotation_not_a_power_of_two(put, value):
    """Each of these divides the 24 columns: only the power-of-two rule rejects them (a Sylvester Hadamard
    matrix exists for powers of two only)."""
    header, data = rotated_parts()
    entry(header, "r.asym")["rotation"] = value
    rejects(
        put,
        rebuild(header, data),
        MalformedHeaderError,
        f"'r.asym': rotation {value} is not an integer power of two >= 2 dividing the 24 columns",
    )


@pytest.mark.parametrize("value", [1, 0, -1, -2, -8, -(2**63)], ids=lambda v: f"B={v}")
def test_rotation_below_two(put, value):
    """1 is a power of two dividing everything (an identity "rotation" a writer never writes); 0 means "not
    rotated" only by the key's absence; negative sizes are nonsense."""
    header, data = rotated_parts()
    entry(header, "r.asym")["rotation"] = value
    rejects(
        put,
        rebuild(header, data),
        MalformedHeaderError,
        f"'r.asym': rotation {value} is not an integer power of two >= 2 dividing the 24 columns",
    )


@pytest.mark.parametrize(
    "name,value,cols",
    [
        ("r.asym", 16, 24),
        ("r.asym", 32, 24),
        ("r.asym", 2**40, 24),
        ("r.asym", 2**63, 24),
        ("r.sym", 4, 6),
        ("r.sym", 8, 6),
    ],
    ids=lambda v: str(v),
)
def test_rotation_not_dividing_the_columns(put, name, value, cols):
    """Powers of two that do not divide cols (of the 2-D view: 2 * 3 for the 3-D tensor), up to uint64 sizes."""
    header, data = rotated_parts()
    entry(header, name)["rotation"] = value
    rejects(
        put,
        rebuild(header, data),
        MalformedHeaderError,
        f"'{name}': rotation {value} is not an integer power of two >= 2 dividing the {cols} columns",
    )


@pytest.mark.parametrize(
    "edit",
    [
        "rotation added to a decomposed tensor",
        "outlier columns added to a rotated one",
        "empty outlier columns added to a rotated one",
    ],
)
def test_rotation_with_outlier_columns(put, edit):
    """A tensor is never both rotated and decomposed (SPEC.md 5.4): rejected from the header, before the sizes
    (which would not match either) are compared."""
    header, data = rotated_parts()
    if edit.startswith("rotation"):
        name = "d.asym"
        entry(header, name)["rotation"] = 8
    else:
        name = "r.asym"
        entry(header, name)["outlier_columns"] = [] if edit.startswith("empty") else [3, 17]
    rejects(put, rebuild(header, data), MalformedHeaderError, f"'{name}': a tensor is either decomposed or rotated")


def test_checksum_covers_rotated_tensors(put):
    buf = bytearray(rotated_bytes())
    start, nbytes, _ = tensor_span(bytes(buf), "r.sym")
    buf[start + nbytes - 1] ^= 0x10
    with WqFile(put(bytes(buf))) as f:
        with pytest.raises(ChecksumError, match="r.sym"):
            f.array("r.sym", rows=slice(0, 1))
        assert [p.tensor for p in f.verify()] == ["r.sym"]
        f.array("r.asym")
