"""What `wavq info` reports about a .wq file, computed from the header alone.

The reader validates the container, not the metadata a model interprets, so everything taken from `meta` here is
checked or rendered defensively: any type, NaN, control characters, deep nesting.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections import defaultdict
from typing import Any

from ..formats import WqFile
from ..formats.constants import Encoding
from ..formats.stats import payload_bits

MAX_TEXT_CHARS = 200  # one metadata value printed as text is cut to this many characters
MAX_DEPTH = 16  # metadata nested deeper than this is shown as "..." (a hostile header nests up to msgpack's limit)


def json_value(v: Any, depth: int = 0) -> Any:
    """Metadata made plain JSON: non-finite floats as the strings "nan"/"inf"/"-inf", bytes as hex text,
    containers below MAX_DEPTH as "...". json.dumps(..., allow_nan=False) accepts the result."""
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, bytes):
        return v.hex()
    if depth >= MAX_DEPTH:
        return "..."
    if isinstance(v, dict):
        return {str(k): json_value(x, depth + 1) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [json_value(x, depth + 1) for x in v]
    return str(v)


def printable(v: Any) -> str:
    """One line of text for a metadata value: strings as they are, anything else as JSON; control and other
    non-printable characters escaped (\x1b, \u202e), cut to MAX_TEXT_CHARS."""
    text = v if isinstance(v, str) else json.dumps(json_value(v), ensure_ascii=False, allow_nan=False)
    text = "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 3] + "..."


def meta_map(meta: dict, key: str) -> dict | None:
    """meta[key] when it is a map ({} when absent or null); None when the file stores something else there."""
    v = meta.get(key)
    if v is None:
        return {}
    return v if isinstance(v, dict) else None


def int_map(v: Any) -> dict[str, int] | None:
    """A map of tensor names to integers (bits, group sizes); {} when absent; None when it is anything else."""
    if v is None:
        return {}
    if not isinstance(v, dict) or not all(isinstance(n, int) and not isinstance(n, bool) for n in v.values()):
        return None
    return v


def finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def tensor_role(shape: tuple[int, ...]) -> str:
    """Shape-derived role; the file stores names and shapes, not layer types."""
    return {0: "scalar", 1: "vector (norm/bias)", 2: "matrix (linear/embedding)"}.get(len(shape), "convolution")


def encoding_label(info) -> str:
    if info.encoding in (Encoding.F32, Encoding.F16):
        return info.encoding.name
    if info.vq is not None:  # indices into codebooks of 2**index_bits vectors of `dim` weights (SPEC.md 5.6)
        vq = info.vq
        label = f"VQ d{vq.dim} {vq.index_bits}-bit idx ({1 << vq.index_bits}-entry codebook) g{info.group_size}"
        if vq.rows_per_book < info.shape[0]:
            label += f" {vq.n_books(info.shape[0])} books"
        return label + (f" rotated/{info.rotation}" if info.rotation else "")
    kind = "sym" if info.encoding == Encoding.QSYM else "asym"
    cols = 1
    for d in info.shape[1:]:
        cols *= d
    group = "per-channel" if info.group_size >= cols else f"g{info.group_size}"
    label = f"Q{info.bits} {kind} {group}"
    k = info.n_outlier_columns
    if k is not None:  # decomposed: an offset row, and k columns stored as float16 instead of codes
        label += " +offset" + (f" +{k} float col{'' if k == 1 else 's'}" if k else "")
    if info.rotation:  # stored as the codes of W R, R a block Hadamard rotation (SPEC.md 5.4)
        label += f" rotated/{info.rotation}"
    return label


@dataclasses.dataclass
class Summary:
    architecture: str
    file_size: int
    n_params: int  # every stored model tensor (extra arrays under "preprocess." excluded)
    n_quantized: int
    quantized_bpw: float  # effective bits per quantized weight: scales, zero points, offsets, float columns included
    overall_bpw: float  # whole file (header, floats, padding included) per model parameter
    by_role: dict  # role -> [count, params, bytes]
    by_encoding: dict  # label -> [count, params, bytes]


def summarize(f: WqFile) -> Summary:
    by_role: dict = defaultdict(lambda: [0, 0, 0])
    by_enc: dict = defaultdict(lambda: [0, 0, 0])
    n_params = n_quant = qbits = 0
    for info in f.tensors.values():
        if info.name.startswith("preprocess."):
            continue
        for table, key in ((by_role, tensor_role(info.shape)), (by_enc, encoding_label(info))):
            row = table[key]
            row[0] += 1
            row[1] += info.numel
            row[2] += info.nbytes
        n_params += info.numel
        if info.quantized or info.codebook:
            n_quant += info.numel
            qbits += payload_bits(
                info.encoding, info.shape, info.bits, info.group_size, info.n_outlier_columns, info.vq
            )
    arch = f.meta.get("architecture", "?")
    return Summary(
        architecture=arch if isinstance(arch, str) else f"(not a string: {printable(arch)})",
        file_size=f.file_size,
        n_params=n_params,
        n_quantized=n_quant,
        quantized_bpw=qbits / n_quant if n_quant else float("nan"),
        overall_bpw=8 * f.file_size / n_params if n_params else float("nan"),
        by_role=dict(by_role),
        by_encoding=dict(by_enc),
    )


@dataclasses.dataclass(frozen=True)
class Languages:
    multilingual: bool
    names: dict[str, str]  # code -> English name, in the model's token order; {"en": "english"} if English-only


ENGLISH_ONLY = {"en": "english"}


def languages(meta: dict) -> Languages | None:
    """The languages a Whisper model's header declares (generation.is_multilingual, lang_to_id, languages);
    None for other architectures. Read defensively like the rest of `meta`: a malformed entry is skipped."""
    if meta.get("architecture") != "whisper":
        return None
    gen = meta_map(meta, "generation") or {}
    if gen.get("is_multilingual") is not True:
        return Languages(False, dict(ENGLISH_ONLY))
    ids = int_map(gen.get("lang_to_id")) or {}
    names = meta_map(gen, "languages") or {}
    codes = [t[2:-2] for t in sorted(ids, key=ids.__getitem__) if isinstance(t, str) and t[:2] + t[-2:] == "<||>"]
    return Languages(True, {c: str(names.get(c, c)) for c in codes})


def compute_report(f: WqFile) -> dict[str, Any]:
    """`wavq info --compute`: compute.summary of the file (MACs and bit-operations by part per 30-s window and per
    decoded token, weight bytes, peak activation bytes, integer products), plus MACs and bit-operations per
    second of audio (the window's work over its length; for Whisper the decoder's per-token work comes on top)
    and which operations run on integer codes and which in float."""
    from . import compute

    report = compute.summary(f.meta, compute.table_from_file(f))
    seconds = report["window_seconds"]
    window = report["per_window"]
    report["per_audio_second"] = {
        "macs": {part: macs / seconds for part, macs in window["macs"].items()},
        "bitops": {part: bits / seconds for part, bits in window["bitops"].items()},
    }
    integer = set(report["integer_products"])
    report["float_products"] = sorted(
        {compute.part_of(n) for n, t in compute.table_from_file(f).items() if _is_product(n, t) and n not in integer}
        | {compute.ATTENTION_SCORES}
    )
    return report


def _is_product(name: str, cost) -> bool:
    """A weight some matrix product multiplies (matrices and convolution kernels, position tables excepted)."""
    return len(cost.shape) >= 2 and "embed_positions" not in name and name.endswith(".weight")
