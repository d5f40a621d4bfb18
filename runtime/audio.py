"""Audio input: numpy arrays, WAV via the standard library's struct parsing, anything else via soundfile.

Everything comes out as float32 mono at the model's sampling rate (16 kHz for every supported model).
"""

from __future__ import annotations

import math
import os
import struct

import numpy as np

SAMPLE_RATE = 16_000  # Hz, what Whisper and Wav2Vec2 were trained on

_WAVE_FORMAT_PCM = 0x0001
_WAVE_FORMAT_IEEE_FLOAT = 0x0003
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_MAX_CHANNELS = 64

# Windowed-sinc resampler: 32 zero crossings each side and a Kaiser window (beta 8.6) keep the stop-band
# below -80 dB, far under the models' noise floor; cutoff at 95 % of the lower Nyquist frequency.
_SINC_ZEROS = 32
_KAISER_BETA = 8.6
_ROLLOFF = 0.95
_RESAMPLE_CHUNK = 1 << 14  # output samples per vectorised step; bounds the (chunk, taps) temporary
_MAX_PHASES = 4096  # tabulate the kernel per phase up to this many phases


class AudioError(ValueError):
    """Audio that cannot be used: unreadable, empty, not audio, or containing NaN/infinite samples."""


def load_audio(source, sampling_rate: int = SAMPLE_RATE, source_rate: int | None = None) -> np.ndarray:
    """float32 mono samples at `sampling_rate` from a path or an array.

    Arrays are taken to be at `source_rate` (default: already at `sampling_rate`); 2-D arrays are
    (samples, channels) or (channels, samples), channels being the shorter side, and are mixed to mono.
    Integer arrays are scaled from their full range.
    """
    if isinstance(source, (str, os.PathLike)):
        samples, rate = read_audio_file(source)
        name = os.fspath(source)
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
        samples = resample(samples, rate, sampling_rate)
    return np.ascontiguousarray(samples, dtype=np.float32)


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
    """(samples as float32, (n,) or (n, channels)), sample rate) from a file."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioError(f"{path}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{path}: is a directory, not an audio file")
    with open(path, "rb") as f:
        head = f.read(12)
    if len(head) == 12 and head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        try:
            return read_wav(path)
        except AudioError:
            if not _has_soundfile():
                raise
    if not _has_soundfile():
        raise AudioError(
            f"{path}: only WAV is read without extra packages; install soundfile (pip install soundfile or "
            "pip install 'wavq[audio]') to read FLAC, OGG and other formats"
        )
    import soundfile

    try:
        data, rate = soundfile.read(path, dtype="float32", always_2d=False)
    except Exception as e:  # soundfile raises RuntimeError/LibsndfileError/TypeError for non-audio
        raise AudioError(f"{path}: not a readable audio file ({e})") from None
    return np.asarray(data, dtype=np.float32), int(rate)


def _has_soundfile() -> bool:
    try:
        import soundfile  # noqa: F401
    except (ImportError, OSError):  # OSError: the package is there but libsndfile is not
        return False
    return True


def read_wav(path) -> tuple[np.ndarray, int]:
    """Parse a RIFF/WAVE file: PCM 8/16/24/32-bit integer or 32/64-bit float, any channel count."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise AudioError(f"{path}: not a WAV file")
    pos, fmt, payload = 12, None, None
    while pos + 8 <= len(data):
        cid, size = data[pos : pos + 4], struct.unpack("<I", data[pos + 4 : pos + 8])[0]
        body = data[pos + 8 : pos + 8 + size]
        if cid == b"fmt ":
            if len(body) < 16:
                raise AudioError(f"{path}: WAV format chunk is too short")
            fmt = struct.unpack("<HHIIHH", body[:16]) + (body[16:],)
        elif cid == b"data":
            payload = body  # a truncated data chunk is read as far as it goes
        pos += 8 + size + (size & 1)  # chunks are word-aligned
    if fmt is None or payload is None:
        raise AudioError(f"{path}: WAV file lacks a {'fmt' if fmt is None else 'data'} chunk")
    tag, channels, rate, _, block_align, bits, ext = fmt
    if tag == _WAVE_FORMAT_EXTENSIBLE and len(ext) >= 10:
        tag = struct.unpack("<H", ext[8:10])[0]  # first two bytes of the sub-format GUID
    if not (1 <= channels <= _MAX_CHANNELS) or rate <= 0:
        raise AudioError(f"{path}: invalid WAV header ({channels} channels at {rate} Hz)")
    width = bits // 8
    if bits % 8 or block_align != width * channels:
        raise AudioError(f"{path}: unsupported WAV sample layout ({bits} bits, block {block_align})")
    n = len(payload) // block_align
    raw = np.frombuffer(payload, dtype=np.uint8, count=n * block_align)
    if tag == _WAVE_FORMAT_IEEE_FLOAT and bits in (32, 64):
        samples = raw.view("<f4" if bits == 32 else "<f8").astype(np.float32)
    elif tag == _WAVE_FORMAT_PCM and bits in (8, 16, 32):
        samples = _to_float(raw.view({8: "u1", 16: "<i2", 32: "<i4"}[bits]))
    elif tag == _WAVE_FORMAT_PCM and bits == 24:
        b = raw.reshape(-1, 3).astype(np.int32)
        ints = (b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)) << 8 >> 8  # sign-extend 24 -> 32 bits
        samples = ints.astype(np.float32) / float(1 << 23)
    else:
        raise AudioError(f"{path}: unsupported WAV encoding (format tag {tag:#06x}, {bits} bits)")
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

    table = kernel(np.arange(up) / up) if up <= _MAX_PHASES else None  # (up, taps)
    out = np.empty(n_out, dtype=np.float32)
    for o0 in range(0, n_out, _RESAMPLE_CHUNK):
        o = np.arange(o0, min(n_out, o0 + _RESAMPLE_CHUNK), dtype=np.int64)
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
