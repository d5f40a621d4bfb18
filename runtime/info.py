"""What `wavq info` reports about a .wq file, computed from the header alone."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from ..formats import WqFile
from ..formats.constants import Encoding
from ..formats.stats import payload_bits


def tensor_role(shape: tuple[int, ...]) -> str:
    """Shape-derived role; the file stores names and shapes, not layer types."""
    return {0: "scalar", 1: "vector (norm/bias)", 2: "matrix (linear/embedding)"}.get(len(shape), "convolution")


def encoding_label(info) -> str:
    if info.encoding in (Encoding.F32, Encoding.F16):
        return info.encoding.name
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
        if info.quantized:
            n_quant += info.numel
            qbits += payload_bits(info.encoding, info.shape, info.bits, info.group_size, info.n_outlier_columns)
    return Summary(
        architecture=str(f.meta.get("architecture", "?")),
        file_size=f.file_size,
        n_params=n_params,
        n_quantized=n_quant,
        quantized_bpw=qbits / n_quant if n_quant else float("nan"),
        overall_bpw=8 * f.file_size / n_params if n_params else float("nan"),
        by_role=dict(by_role),
        by_encoding=dict(by_enc),
    )
