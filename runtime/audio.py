"""Audio input: numpy arrays, WAV via the standard library's struct parsing, anything else via soundfile.

Everything comes out as float32 mono at the model's sampling rate (16 kHz for every supported model).
"""

from __future__ import annotations

import io
import math
import os
import struct
import sys
from typing import BinaryIO

import numpy as np

SAMPLE_RATE = 16_000  # Hz, what Whisper and Wav2Vec2 were trained on

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_MAX_CHANNELS = 64
_MAX_SAMPLE_BITS = 64  # float64 samples; a sample occupies ceil(bits / 8) bytes of each block

# Windowed-sinc resampler: 32 zero crossings each side and a Kaiser window (beta 8.6) keep the stop-band
# below -80 dB, far under the models' noise floor; cutoff at 95 % of the lower Nyquist frequency.
_SINC_ZEROS = 32
_KAISER_BETA = 8.6
_ROLLOFF = 0.95
# (output samples x taps) per vectorised step, and the most kernel values tabulated per phase: bounds every
# temporary of the resampler whatever the rates (taps grow with the input rate when downsampling).
_RESAMPLE_BLOCK_ELEMENTS = 1 << 22


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, not audio, or containing NaN/infinite samples."""


class _UnsupportedWav(AudioError):
    """A valid WAV header whose sample encoding this parser does not decode (soundfile may)."""


STDIN = "-"  # the path that names standard input
# Source sampling rates accepted, in Hz: from half of narrowband telephony up to the highest studio rate. The
# bounds keep resampling cost proportional to the input: upsampling makes at most 4x the samples, and
# downsampling's filter length grows with the rate.
SOURCE_RATE_RANGE = (4_000, 384_000)
MAX_INPUT_BYTES = 1 << 32  # 4 GiB, the most a RIFF file can address; also bounds reading an endless stream
_READ_CHUNK = 1 << 20  # bytes per read() from a file, pipe or FIFO
_WAV_PCM_DTYPES = {8: "u1", 16: "<i2", 32: "<i4"}  # 24-bit PCM is unpacked by hand
_WAV_FLOAT_DTYPES = {32: "<f4", 64: "<f8"}
# Streaming writers that cannot seek back (ffmpeg or sox writing to a pipe) leave a data size at or above this.
_WAV_UNKNOWN_SIZE = 0x7FFFF000


def load_audio(source, sampling_rate: int = SAMPLE_RATE, source_rate: int | None = None) -> np.ndarray:
    """float32 mono samples at `sampling_rate` from a path ("-" is standard input), the bytes of an audio file,
    or an array.

    Arrays are taken to be at `source_rate` (default: already at `sampling_rate`); 2-D arrays are
    (samples, channels) or (channels, samples), channels being the shorter side, and are mixed to mono.
    Integer arrays are scaled from their full range.
    """
    if isinstance(source, (str, os.PathLike)):
        samples, rate = read_audio_file(source)
        name = os.fspath(source)
    elif isinstance(source, (bytes, bytearray, memoryview)):
        name = "audio bytes"
        samples, rate = decode_audio(bytes(source), name)
    else:
        samples, rate, name = np.asarray(source), source_rate or sampling_rate, "audio array"
        if samples.dtype == object or not (np.issubdtype(samples.dtype, np.number)):
            raise AudioError(f"{name}: expected numbers, got dtype {samples.dtype}")
        samples = _to_float(samples)
        if samples.ndim == 2:
            samples = samples.T if samples.shape[0] < samples.shape[1] else samples
        elif samples.ndim != 1:
            raise AudioError(f"{name}: expected a 1-D or 2-D array, got shape {samples.shape}")
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)
    if samples.size == 0:
        raise AudioError(f"{name}: contains no samples")
    if not np.all(np.isfinite(samples)):
        raise AudioError(f"{name}: contains NaN or infinite samples")
    if rate != sampling_rate:
        _check_rate(rate, name)
        samples = resample(samples, rate, sampling_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


def _check_rate(rate: int, name: str) -> None:
    lo, hi = SOURCE_RATE_RANGE
    if not lo <= rate <= hi:
        raise AudioError(f"{name}: sampling rate {rate} Hz is outside the supported {lo}..{hi} Hz")


def _to_float(a: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.floating):
        return a.astype(np.float32, copy=False)
    if a.dtype == np.uint8:  # 8-bit PCM is unsigned, centred at 128
        return (a.astype(np.float32) - 128.0) / 128.0
    if np.issubdtype(a.dtype, np.signedinteger):
        return a.astype(np.float32) / float(2 ** (8 * a.dtype.itemsize - 1))
    if np.issubdtype(a.dtype, np.bool_):
        raise AudioError("boolean arrays are not audio")
    return a.astype(np.float32)


def read_audio_file(path) -> tuple[np.ndarray, int]:
    """(samples as float32, (n,) or (n, channels)), sample rate) from a file, FIFO, or "-" (standard input).

    The input is read once, then sniffed and decoded from memory: a pipe cannot be opened or read twice.
    """
    path = os.fspath(path)
    return decode_audio(read_bytes(path), path)


def read_bytes(path: str) -> bytes:
    """Every byte of a file, FIFO or "-" (standard input), up to MAX_INPUT_BYTES; OS errors become AudioError."""
    try:
        if path == STDIN:
            return _read_stream(sys.stdin.buffer, "standard input")
        with open(path, "rb") as f:
            return _read_stream(f, path)
    except FileNotFoundError:
        raise AudioError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise AudioError(f"{path}: is a directory, not an audio file") from None
    except OSError as e:
        raise AudioError(f"{path}: cannot read ({e.strerror or e})") from None


def _read_stream(f: BinaryIO, name: str) -> bytes:
    chunks, total = [], 0
    while chunk := f.read(_READ_CHUNK):
        total += len(chunk)
        if total > MAX_INPUT_BYTES:
            raise AudioError(f"{name}: more than {MAX_INPUT_BYTES} bytes of input")
        chunks.append(chunk)
    return b"".join(chunks)


def decode_audio(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Decode the bytes of an audio file: WAV by the standard library, anything else by soundfile if present."""
    wav_error = None
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WAVE":
        try:
            return parse_wav(data, name)
        except _UnsupportedWav as e:  # an invalid header is final; an encoding we lack may suit soundfile
            if not _has_soundfile():
                raise
            wav_error = e
    if not _has_soundfile():
        raise AudioError(
            f"{name}: only WAV is read without extra packages; install soundfile (pip install soundfile or "
            "pip install 'wavq[audio]') to read FLAC, OGG and other formats"
        )
    import soundfile

    try:
        samples, rate = soundfile.read(io.BytesIO(data), dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/TypeError for non-audio
        reason = getattr(e, "error_string", None) or e  # libsndfile's own words, without the BytesIO object's repr
        raise wav_error or AudioError(f"{name}: not a readable audio file ({reason})") from None
    return np.asarray(samples, dtype=np.float32), int(rate)


def _has_soundfile() -> bool:
    try:
        import soundfile  # noqa: F401
    except (ImportError, OSError):  # OSError: the package is there but libsndfile is not
        return False
    return True


def read_wav(path) -> tuple[np.ndarray, int]:
    """Parse a RIFF/WAVE file (see parse_wav)."""
    path = os.fspath(path)
    return parse_wav(read_bytes(path), path)


def parse_wav(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """Parse the bytes of a RIFF/WAVE file: PCM 8/16/24/32-bit integer or 32/64-bit float, 1.._MAX_CHANNELS
    channels, a rate in SOURCE_RATE_RANGE. A data chunk must fit in the file, unless its size is a streaming
    writer's placeholder (then it runs to the end of the input); a partial last frame is dropped."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(f"{name}: not a WAV file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise AudioError(f"{name}: WAV format chunk is too short")
            fmt = struct.unpack("<HHIIHH", body[:16]) + (body[16:],)
        elif cid == b"data":
            if len(body) < size and size < _WAV_UNKNOWN_SIZE:
                raise AudioError(
                    f"{name}: WAV data chunk declares {size} bytes, the file holds {len(body)} (truncated file)"
                )
            payload = body
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or payload is None:
        raise AudioError(f"{name}: WAV file lacks a {'fmt' if fmt is None else 'data'} chunk")
    tag, channels, rate, _, block_align, bits, ext = fmt  # the byte rate is redundant and not used
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(ext) >= 10:
        tag = struct.unpack("<H", ext[8:10])[0]  # first two bytes of the sub-format GUID
    if not 1 <= channels <= _MAX_CHANNELS:
        raise AudioError(f"{name}: invalid WAV header ({channels} channels, expected 1..{_MAX_CHANNELS})")
    _check_rate(rate, name)
    if not 1 <= bits <= _MAX_SAMPLE_BITS or block_align != -(-bits // 8) * channels:
        raise AudioError(f"{name}: invalid WAV sample layout ({bits} bits, block {block_align})")
    widths = _WAV_FLOAT_DTYPES if tag == _WAVE_FORMAT_IEEE_FLOAT else {**_WAV_PCM_DTYPES, 24: ""}
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT) or bits not in widths:
        raise _UnsupportedWav(f"{name}: unsupported WAV encoding (format tag {tag:#06x}, {bits} bits)")
    n = len(payload) // block_align
    raw = np.frombuffer(payload, dtype=np.uint8, count=n * block_align)
    if tag == _WAVE_FORMAT_IEEE_FLOAT:
        with np.errstate(over="ignore"):  # float64 beyond float32's range becomes inf, rejected as such later
            samples = raw.view(_WAV_FLOAT_DTYPES[bits]).astype(np.float32)
    elif bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 -> 32 bits
        samples = ints.astype(np.float32) / float(1 << 23)
    else:
        samples = _to_float(raw.view(_WAV_PCM_DTYPES[bits]))
    samples = samples.reshape(n, channels)
    return (samples[:, 0] if channels == 1 else samples), int(rate)


def resample(x: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Band-limited resampling of a 1-D signal by windowed-sinc interpolation, vectorised in chunks.

    Output sample o sits at input time o * down / up (up/down = rate_out/rate_in in lowest terms), so its
    filter phase is (o * down) mod up: the kernel is tabulated once per phase when there are few phases.
    """
    if rate_in == rate_out or x.size == 0:
        return x.astype(np.float32, copy=False)
    if rate_in <= 0 or rate_out <= 0:
        raise AudioError(f"invalid sample rates {rate_in} -> {rate_out}")
    g = math.gcd(int(rate_in), int(rate_out))
    up, down = rate_out // g, rate_in // g
    cutoff = _ROLLOFF * min(1.0, up / down)  # relative to the input Nyquist frequency
    half = int(math.ceil(_SINC_ZEROS / cutoff))  # taps each side, in input samples
    n_out = -(-len(x) * up // down)
    xp = np.pad(x.astype(np.float32), (half, half + 1))
    offsets = np.arange(-half + 1, half + 1)  # (taps,)

    def kernel(frac: np.ndarray) -> np.ndarray:  # frac: fractional input position, (n,) -> (n, taps)
        d = frac[:, None] - offsets[None, :]
        return (cutoff * np.sinc(cutoff * d) * _kaiser(d / (half + 1))).astype(np.float32)

    taps = len(offsets)
    table = kernel(np.arange(up) / up) if up * taps <= _RESAMPLE_BLOCK_ELEMENTS else None  # (up, taps)
    chunk = max(1, _RESAMPLE_BLOCK_ELEMENTS // taps)
    out = np.empty(n_out, dtype=np.float32)
    for o0 in range(0, n_out, chunk):
        o = np.arange(o0, min(n_out, o0 + chunk), dtype=np.int64)
        base, phase = np.divmod(o * down, up)
        k = table[phase] if table is not None else kernel(phase / up)  # (chunk, taps)
        idx = base[:, None] + offsets[None, :] + half  # (chunk, taps) indices into the padded input
        out[o0 : o0 + len(o)] = np.einsum("ij,ij->i", xp[idx], k)
    return out


def _kaiser(u: np.ndarray) -> np.ndarray:
    """Kaiser window evaluated at u in [-1, 1] (zero outside)."""
    inside = np.abs(u) < 1
    arg = _KAISER_BETA * np.sqrt(np.clip(1 - u * u, 0, None))
    return np.where(inside, np.i0(arg) / np.i0(_KAISER_BETA), 0.0)
