"""One exception family for everything a reader can find wrong with a .wq file."""

from __future__ import annotations

import os


class FormatError(Exception):
    """A .wq file is not valid. The message names the file and the problem."""

    def __init__(self, path: str | os.PathLike | None, problem: str):
        self.path = None if path is None else os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class BadMagicError(FormatError):
    """The file does not start with the .wq magic bytes."""


class UnsupportedVersionError(FormatError):
    """The container version or layout revision is not one this reader supports."""


class TruncatedFileError(FormatError):
    """The file ends before the prefix, header or data region does."""


class TrailingDataError(FormatError):
    """The file continues past the end of its data region."""


class HeaderBoundsError(FormatError):
    """The header length is zero, too large, or reaches past the end of the file."""


class MalformedHeaderError(FormatError):
    """The header is not valid msgpack, or lacks or mistypes a required field."""


class OutOfBoundsError(FormatError):
    """A tensor's offset or length lies outside the data region."""


class OverlapError(FormatError):
    """Two tensors share bytes."""


class AlignmentError(FormatError):
    """A tensor does not start on the required alignment."""


class DuplicateNameError(FormatError):
    """Two tensors have the same name."""


class UnknownEncodingError(FormatError):
    """A tensor uses an encoding this reader does not know."""


class ShapeMismatchError(FormatError):
    """A tensor's byte length does not match its shape, encoding, bits and group size."""


class ChecksumError(FormatError):
    """The header or a tensor does not match its CRC32."""

    def __init__(self, path, problem: str, tensor: str | None = None):
        self.tensor = tensor
        super().__init__(path, problem)


class InvalidValueError(FormatError):
    """A tensor holds a value its encoding forbids (a non-finite scale). Found when the tensor is first used."""

    def __init__(self, path, problem: str, tensor: str | None = None):
        self.tensor = tensor
        super().__init__(path, problem)


class MissingTensorError(FormatError):
    """A tensor the model needs is not in the file."""


class OutputExistsError(FileExistsError):
    """The writer refuses to replace an existing file unless told to."""
