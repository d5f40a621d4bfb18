"""Audio input: WAV parsing in every PCM/float layout, mixing, resampling, and clear errors for bad input."""

import struct
import wave

import numpy as np
import pytest

from wavq.runtime.audio import AudioError, load_audio, read_wav, resample

RATE = 16_000


def _tone(n=4000, rate=RATE, freq=440.0):
    return (0.5 * np.sin(2 * np.pi * freq * np.arange(n) / rate)).astype(np.float32)


def _write_wav(path, frames: bytes, channels: int, rate: int, bits: int, tag: int = 1, extensible=False):
    block = channels * bits // 8
    if extensible:
        fmt = struct.pack("<HHIIHHHHI", 0xFFFE, channels, rate, rate * block, block, bits, 22, bits, 0)
        fmt += struct.pack("<H", tag) + b"\x00\x00\x00\x00\x10\x00\x80\x00\x00\xaa\x00\x38\x9b\x71"
    else:
        fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"LIST" + struct.pack("<I", 3) + b"abc\x00"  # odd-sized chunk before data, padded
    body += b"data" + struct.pack("<I", len(frames)) + frames
    path.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)


def _pcm(x: np.ndarray, bits: int) -> bytes:
    if bits == 8:
        return np.clip(np.round(x * 128 + 128), 0, 255).astype(np.uint8).tobytes()
    if bits == 24:
        ints = np.round(x * (1 << 23)).astype(np.int32)
        b = ints.astype("<i4").view(np.uint8).reshape(-1, 4)[:, :3]
        return b.tobytes()
    dtype = {16: "<i2", 32: "<i4"}[bits]
    return np.round(x * (2 ** (bits - 1) - 1)).astype(dtype).tobytes()


@pytest.mark.parametrize("bits,tol", [(8, 1 / 100), (16, 1e-4), (24, 1e-6), (32, 1e-8)])
def test_pcm_widths(tmp_path, bits, tol):
    x = _tone()
    p = tmp_path / f"a{bits}.wav"
    _write_wav(p, _pcm(x, bits), 1, RATE, bits)
    y = load_audio(p)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert np.abs(y - x).max() < tol


@pytest.mark.parametrize("bits", [32, 64])
@pytest.mark.parametrize("extensible", [False, True])
def test_float_wav(tmp_path, bits, extensible):
    x = _tone()
    p = tmp_path / "f.wav"
    _write_wav(p, x.astype("<f4" if bits == 32 else "<f8").tobytes(), 1, RATE, bits, tag=3, extensible=extensible)
    np.testing.assert_allclose(load_audio(p), x, atol=1e-7)


def test_stdlib_wave_file_and_stereo_mix(tmp_path):
    left, right = _tone(), _tone(freq=300.0)
    inter = np.stack([left, right], axis=1)
    p = tmp_path / "s.wav"
    with wave.open(str(p), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(np.round(inter * 32767).astype("<i2").tobytes())
    y = load_audio(p)
    np.testing.assert_allclose(y, (left + right) / 2, atol=1e-4)


def test_resampled_to_16k(tmp_path):
    rate = 44_100
    x = _tone(n=rate, rate=rate)
    p = tmp_path / "r.wav"
    _write_wav(p, _pcm(x, 16), 1, rate, 16)
    y = load_audio(p)
    assert len(y) == RATE
    ref = 0.5 * np.sin(2 * np.pi * 440.0 * np.arange(RATE) / RATE)
    assert np.abs(y - ref)[500:-500].max() < 1e-3  # away from the edges, where the filter sees padding


def test_resample_preserves_band_and_length():
    x = _tone(n=8000, rate=8000, freq=1000.0)
    y = resample(x, 8000, RATE)
    assert len(y) == 16000
    ref = 0.5 * np.sin(2 * np.pi * 1000.0 * np.arange(16000) / RATE)
    assert np.abs(y - ref)[200:-200].max() < 1e-3


def test_arrays_int_and_channels():
    x = _tone()
    ints = np.round(x * 32767).astype(np.int16)
    np.testing.assert_allclose(load_audio(ints), x, atol=1e-4)
    stereo = np.stack([x, x])  # (channels, samples)
    np.testing.assert_allclose(load_audio(stereo), x, atol=1e-7)
    np.testing.assert_allclose(load_audio(stereo.T), x, atol=1e-7)
    assert len(load_audio(x, source_rate=8000)) == 2 * len(x)


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.zeros(0, np.float32), "no samples"),
        (np.array([0.0, np.nan], np.float32), "NaN"),
        (np.array([0.0, np.inf], np.float32), "NaN or infinite"),
        (np.zeros((2, 3, 4), np.float32), "1-D or 2-D"),
        (np.array(["a", "b"]), "numbers"),
    ],
)
def test_bad_arrays(bad, match):
    with pytest.raises(AudioError, match=match):
        load_audio(bad)


def test_bad_files(tmp_path):
    with pytest.raises(AudioError, match="no such file"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="directory"):
        load_audio(tmp_path)
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    with pytest.raises(AudioError):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    _write_wav(empty, b"", 1, RATE, 16)
    with pytest.raises(AudioError, match="no samples"):
        load_audio(empty)
    nodata = tmp_path / "nodata.wav"
    nodata.write_bytes(b"RIFF\x04\x00\x00\x00WAVE")
    with pytest.raises(AudioError, match="lacks"):
        read_wav(nodata)


def test_silence_is_valid_audio():
    assert load_audio(np.zeros(RATE, np.float32)).shape == (RATE,)
