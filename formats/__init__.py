"""The .wq container: constants, codecs, bit packing, and the one reader and writer (numpy + msgpack only)."""

from .codecs import QuantizedTensor, apply_decomposition, dequantize, quantize, quantize_with_scales, rtn_scales
from .constants import CONTAINER_VERSION, LAYOUT_REVISION, Encoding
from .errors import (
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
    OutputExistsError,
    OverlapError,
    ShapeMismatchError,
    TrailingDataError,
    TruncatedFileError,
    UnknownEncodingError,
    UnsupportedVersionError,
)
from .reader import TensorInfo, WqFile, open_wq
from .writer import WqWriter, write_wq

__all__ = [
    "QuantizedTensor",
    "apply_decomposition",
    "dequantize",
    "quantize",
    "quantize_with_scales",
    "rtn_scales",
    "CONTAINER_VERSION",
    "LAYOUT_REVISION",
    "Encoding",
    "AlignmentError",
    "BadMagicError",
    "ChecksumError",
    "DuplicateNameError",
    "FormatError",
    "HeaderBoundsError",
    "InvalidValueError",
    "MalformedHeaderError",
    "MissingTensorError",
    "OutOfBoundsError",
    "OutputExistsError",
    "OverlapError",
    "ShapeMismatchError",
    "TrailingDataError",
    "TruncatedFileError",
    "UnknownEncodingError",
    "UnsupportedVersionError",
    "TensorInfo",
    "WqFile",
    "open_wq",
    "WqWriter",
    "write_wq",
]
