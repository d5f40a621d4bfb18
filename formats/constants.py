"""Every constant that defines the bytes of a .wq file. Nothing else in wavq may restate these."""

from __future__ import annotations

import enum
import struct

MAGIC = b"WAVQ"

# The container version changes only when the byte layout (prefix, header framing, data region) changes.
CONTAINER_VERSION = 1
SUPPORTED_CONTAINER_VERSIONS = (1,)

# The layout revision (header key "layout_revision") changes when the meaning of tensor entries or of an
# encoding changes while the container stays the same (e.g. a new code order inside a packed block).
# LAYOUT_REVISION is the newest this code knows. Writers write the lowest revision that can express a file
# (SPEC.md section 9), so a file without decomposed tensors stays readable by revision-1 readers.
LAYOUT_REVISION = 5
SUPPORTED_LAYOUT_REVISIONS = (1, 2, 3, 4, 5)
BASE_LAYOUT_REVISION = 1  # what a file holding no decomposed or rotated tensor is written as
DECOMPOSED_LAYOUT_REVISION = 2  # first revision with the "outlier_columns" entry key (decomposed tensors)
ROTATED_LAYOUT_REVISION = 3  # first revision with the "rotation" entry key (rotated tensors)
ACTIVATION_LAYOUT_REVISION = 4  # first revision with the "activation" entry key (quantized inputs, SPEC.md 5.5)
VQ_LAYOUT_REVISION = 5  # first revision with encoding VQ (codebook tensors, SPEC.md 5.6)

# <4s magic><u32 container_version><u64 header_len><u32 header_crc32><u32 flags>, little-endian, 24 bytes.
PREFIX = struct.Struct("<4sIQII")
PREFIX_SIZE = PREFIX.size
PREFIX_FLAGS = 0  # no flags are defined; readers reject any other value

ALIGNMENT = 64  # bytes; data region, every tensor and every tensor part start on this boundary (cache line, SIMD)
MAX_HEADER_LEN = 1 << 30  # 1 GiB: far above any real header (whisper-large-v3's is < 2 MiB)
MAX_NDIM = 8
MAX_NAME_LEN = 1024  # bytes of UTF-8
MAX_DIM = 1 << 40  # largest single dimension a reader accepts
# Largest element count (a zero-length dimension counted as 1): keeps every size and every numpy shape
# derived from a header far inside int64, even for empty tensors whose other dimensions are huge.
MAX_ELEMENTS = 1 << 48

MIN_BITS = 2
MAX_BITS = 8
VQ_DIMS = (2, 4, 8)  # weights per codebook vector
VQ_MIN_INDEX_BITS = 2
VQ_MAX_INDEX_BITS = 16  # a codebook of at most 65536 vectors
CODES_PER_BLOCK = 8  # 8 codes of b bits fill exactly b bytes, so every width packs densely
MAX_PACKED_BITS = VQ_MAX_INDEX_BITS  # widest code the dense packing stores (VQ indices; scalar codes stop at 8)


class Encoding(enum.IntEnum):
    """Tensor encodings. Values are stored in files: never reuse or renumber one."""

    F32 = 0  # IEEE-754 binary32, little-endian
    F16 = 1  # IEEE-754 binary16, little-endian
    QSYM = 2  # b-bit unsigned codes, w = (q - 2**(b-1)) * scale, f16 scale per group
    QASYM = 3  # b-bit unsigned codes, w = (q - zero) * scale, f16 scale and b-bit zero point per group
    # 4..15: reserved for further uniform integer encodings.
    VQ = 16  # vectors of d weights as indices into a float16 codebook, f16 scale per group (SPEC.md 5.6)
    # 17..31: reserved for further non-uniform (codebook / lookup-table) encodings.
    # 32 and up: unassigned; assigning one needs an amendment of SPEC.md.


RESERVED_ENCODINGS_END = 32  # values below this that Encoding lacks are reserved, not garbage


FLOAT_ENCODINGS = {Encoding.F32: "<f4", Encoding.F16: "<f2"}
SCALE_DTYPE = "<f2"  # one IEEE binary16 scale per group
OFFSET_DTYPE = "<f4"  # decomposed tensors: one binary32 offset per column of the 2-D view
OUTLIER_DTYPE = "<f2"  # decomposed tensors: binary16 values of the columns kept in float
CODEBOOK_DTYPE = "<f2"  # VQ tensors: binary16 codebook vectors
QUANT_ENCODINGS = (Encoding.QSYM, Encoding.QASYM)  # scalar integer codes (packed kernel, integer path)
READABLE_ENCODINGS = (*FLOAT_ENCODINGS, *QUANT_ENCODINGS, Encoding.VQ)  # what this reader implements


def align(n: int, alignment: int = ALIGNMENT) -> int:
    """Smallest multiple of `alignment` that is >= n."""
    return -(-n // alignment) * alignment
