"""Fuzz the reader with mutated and truncated files: it either reads them or raises FormatError, nothing else.

Seeded and small, so it runs in seconds; WAVQ_FUZZ_CASES=100000 (and WAVQ_FUZZ_SEED) run longer campaigns.
"""

from __future__ import annotations

import collections
import math
import os
import pathlib
import random
import signal
import time
import warnings
import zlib

import pytest
from formats_helpers import codebook_bytes, decomposed_bytes, read_everything, rebuild, sample_bytes, split, tensor_span

from wavq.formats import ChecksumError, FormatError, WqFile

CASES = int(os.environ.get("WAVQ_FUZZ_CASES", "4000"))
SEED = int(os.environ.get("WAVQ_FUZZ_SEED", "20240601"))
TIME_LIMIT_S = 150  # the whole campaign; a hang fails the test instead of stalling CI
CASE_LIMIT_S = 2.0  # any single file taking this long to reject is a bug (quadratic check, huge allocation)
DATA = pathlib.Path(__file__).parent / "data"
# layout revisions 1, 2 (decomposed tensors), 3 (rotated tensors) and 5 (codebook tensors)
GOLDENS = [DATA / "golden_v1.wq", DATA / "golden_v2.wq", DATA / "golden_v3.wq", DATA / "golden_v5.wq"]

VALUES = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    63,
    64,
    65,
    255,
    2**31,
    2**32,
    2**40 + 1,
    2**48,
    2**63 - 1,
    2**64 - 1,
    -(2**63),
    0.0,
    1.5,
    -0.0,
    math.nan,
    math.inf,
    "",
    "x",
    "q.sym3",
    "\u00e9",
    b"",
    b"\x00\xff",
    [],
    [0],
    [1, 2],
    [3, 0],
    [2**40, 2**40],
    [2**20, 2**20, 2**20],
    [0] * 9,
    [1] * 200,
    {},
    {"a": 1},
    {"name": "x"},
    [0, 1, 2, 3],
    [0, 9],
    [9, 1],
    [True],
    [-1],
    list(range(200)),
]


def _random_value(rng: random.Random):
    v = rng.choice(VALUES)
    return list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v


def mutate_header(rng: random.Random, buf: bytes) -> bytes:
    """Edit one header field (set / delete / add a key) and re-pack with a correct header CRC."""
    _, header, data = split(buf)
    targets: list[dict] = [header, header["meta"]] + header["tensors"]
    target = rng.choice(targets)
    action = rng.random()
    if action < 0.1 and target:
        del target[rng.choice(list(target))]
    elif action < 0.2:
        key = rng.choice(
            ["extra", "bits", "group_size", "shape", "x", "outlier_columns", "rotation", "dim", "index_bits"]
            + ["rows_per_book", "encoding"]
        )
        target[key] = _random_value(rng)
    elif target:
        key = rng.choice(list(target))
        old = target[key]
        if isinstance(old, int) and not isinstance(old, bool) and rng.random() < 0.5:
            target[key] = old + rng.choice([-65, -64, -1, 1, 63, 64, 128, 2**32, -(old + 1)])  # near misses
        elif isinstance(old, list) and old and rng.random() < 0.5:
            old[rng.randrange(len(old))] = _random_value(rng)
        else:
            target[key] = _random_value(rng)
    tensors = header.get("tensors")
    if rng.random() < 0.1 and isinstance(tensors, list):
        rng.shuffle(tensors)
    if rng.random() < 0.1 and isinstance(header.get("layout_revision"), int):
        # revision 1 with decomposed tensors, 2 with rotated ones, 3 without either, 4 with codebook tensors
        header["layout_revision"] = rng.choice([1, 2, 3, 4])
    return rebuild(header, data)


def mutate_header_bytes(rng: random.Random, buf: bytes) -> bytes:
    """Garbage inside the msgpack bytes, CRC fixed: exercises the msgpack parser and every type check."""
    prefix, _, data = split(buf)
    raw = bytearray(buf[24 : 24 + prefix["header_len"]])
    for _ in range(rng.randint(1, 4)):
        raw[rng.randrange(len(raw))] = rng.randrange(256)
    if rng.random() < 0.2:
        cut = rng.randrange(len(raw))
        raw = raw[:cut] if rng.random() < 0.5 else raw[:cut] + raw[cut + 1 :]
    return rebuild(bytes(raw), data)


def mutate_prefix(rng: random.Random, buf: bytes) -> bytes:
    prefix, header, data = split(buf)
    field = rng.choice(["version", "header_len", "flags", "magic"])
    if field == "header_len":
        n = rng.choice(
            [
                0,
                1,
                prefix["header_len"] - 1,
                prefix["header_len"] + 1,
                prefix["header_len"] + 64,
                len(buf),
                2**30,
                2**64 - 1,
                rng.randrange(2**64),
            ]
        )
        return rebuild(header, data, header_len=n)
    if field == "version":
        return rebuild(header, data, version=rng.choice([0, 2, 3, 255, 2**32 - 1]))
    if field == "flags":
        return rebuild(header, data, flags=1 << rng.randrange(32))
    return rebuild(header, data, magic=bytes(rng.randrange(256) for _ in range(4)))


def mutate_data_fixed_crc(rng: random.Random, buf: bytes) -> bytes:
    """Random bytes in one tensor with its CRC recomputed: reaches the value checks (scales) and dequantization."""
    _, header, data = split(buf)
    live = [e for e in header["tensors"] if e["nbytes"]]
    e = rng.choice(live)
    data = bytearray(data)
    for _ in range(rng.randint(1, 16)):
        data[e["offset"] + rng.randrange(e["nbytes"])] = rng.randrange(256)
    e["crc32"] = zlib.crc32(data[e["offset"] : e["offset"] + e["nbytes"]])
    return rebuild(header, bytes(data))


def flip_bytes(rng: random.Random, buf: bytes) -> bytes:
    b = bytearray(buf)
    for _ in range(rng.randint(1, 8)):
        b[rng.randrange(len(b))] ^= rng.randrange(1, 256)
    return bytes(b)


def overwrite_range(rng: random.Random, buf: bytes) -> bytes:
    b = bytearray(buf)
    start = rng.randrange(len(b))
    n = rng.randint(1, 64)
    fill = rng.choice([b"\0" * n, b"\xff" * n, bytes(rng.randrange(256) for _ in range(n))])
    b[start : start + n] = fill[: len(b) - start]
    return bytes(b)


def truncate(rng: random.Random, buf: bytes) -> bytes:
    return buf[: rng.randrange(len(buf))]


def splice(rng: random.Random, buf: bytes) -> bytes:
    at = rng.randrange(len(buf) + 1)
    if rng.random() < 0.5:
        return buf[:at] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 70))) + buf[at:]
    return buf[:at] + buf[at + rng.randint(1, 70) :]


MUTATORS = [
    mutate_header,
    mutate_header,
    mutate_header_bytes,
    mutate_header_bytes,
    mutate_prefix,
    mutate_data_fixed_crc,
    flip_bytes,
    overwrite_range,
    truncate,
    splice,
]


@pytest.fixture
def alarm():
    def on_alarm(signum, frame):
        raise TimeoutError(f"fuzz campaign exceeded {TIME_LIMIT_S} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(TIME_LIMIT_S)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


@pytest.mark.slow
def test_fuzz_only_format_errors(tmp_path, alarm):
    rng = random.Random(SEED)
    bases = [sample_bytes(), decomposed_bytes(), codebook_bytes()] + [p.read_bytes() for p in GOLDENS]
    outcomes: collections.Counter = collections.Counter()
    failures = []
    slowest = 0.0
    for case in range(CASES):
        mutator = MUTATORS[case % len(MUTATORS)]
        buf = mutator(rng, rng.choice(bases))
        path = tmp_path / f"case{case}.wq"
        path.write_bytes(buf)
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a numpy RuntimeWarning on hostile input is a bug too
                read_everything(str(path))
            outcomes["ok"] += 1
        except FormatError as e:
            outcomes[type(e).__name__] += 1
        except Exception as e:  # noqa: BLE001 - anything else escaping the reader is the failure we look for
            failures.append(f"case {case} ({mutator.__name__}): {type(e).__name__}: {e}")
        slowest = max(slowest, time.perf_counter() - started)
        path.unlink()
    assert not failures, f"{len(failures)} of {CASES} cases raised non-FormatError:\n" + "\n".join(failures[:20])
    assert slowest < CASE_LIMIT_S, f"one case took {slowest:.2f} s"
    # the campaign must reach deep checks, not stop at the magic or the checksum every time
    reached = set(outcomes)
    for expected in (
        "ok",
        "ChecksumError",
        "MalformedHeaderError",
        "TruncatedFileError",
        "BadMagicError",
        "HeaderBoundsError",
        "UnsupportedVersionError",
        "ShapeMismatchError",
        "OutOfBoundsError",
        "InvalidValueError",
    ):
        assert expected in reached, f"fuzz never produced {expected}: {dict(outcomes)}"


def _source(name: str) -> bytes:
    return {
        "sample": sample_bytes,
        "decomposed": decomposed_bytes,
        "rotated": (DATA / "golden_v3.wq").read_bytes,
        "codebook": codebook_bytes,
    }[name]()


@pytest.mark.slow
@pytest.mark.parametrize("source", ["sample", "decomposed", "rotated", "codebook"])
def test_every_truncation_of_the_sample(tmp_path, source):
    """Not sampled: every prefix of the file is rejected as a FormatError (and never read successfully)."""
    buf = _source(source)
    path = tmp_path / "cut.wq"
    for cut in range(len(buf)):
        path.write_bytes(buf[:cut])
        with pytest.raises(FormatError):
            read_everything(str(path))


@pytest.mark.parametrize("source", ["sample", "decomposed", "rotated", "codebook"])
def test_corrupt_tensor_surfaces_as_checksum_error_naming_it(tmp_path, source):
    rng = random.Random(SEED)
    buf = _source(source)
    _, header, _ = split(buf)
    names = [e["name"] for e in header["tensors"] if e["nbytes"]]
    for case in range(200):
        name = names[case % len(names)]
        start, nbytes, _ = tensor_span(buf, name)
        b = bytearray(buf)
        b[start + rng.randrange(nbytes)] ^= rng.randrange(1, 256)
        path = tmp_path / "c.wq"
        path.write_bytes(bytes(b))
        with WqFile(path) as f:
            with pytest.raises(ChecksumError) as info:
                f.array(name)
            assert info.value.tensor == name and repr(name) in str(info.value)
            assert [p.tensor for p in f.verify()] == [name]
