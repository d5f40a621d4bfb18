"""runtime.mel vs transformers' WhisperFeatureExtractor (which uses torch.stft when torch is installed)."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("transformers")
soundfile = pytest.importorskip("soundfile")

from transformers import WhisperFeatureExtractor  # noqa: E402

from wavq.runtime.mel import hann_window, log_mel_spectrogram, stft_power  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "samples")
TOL = 1e-4


def _speech() -> list[np.ndarray]:
    out = []
    for fn in sorted(os.listdir(SAMPLES)):
        if fn.endswith(".flac"):
            audio, rate = soundfile.read(os.path.join(SAMPLES, fn), dtype="float32")
            assert rate == 16000
            out.append(audio)
    assert out, "samples/ has no FLAC files"
    return out


def _ours(fe: WhisperFeatureExtractor, audio: np.ndarray) -> np.ndarray:
    return log_mel_spectrogram(
        audio,
        fe.mel_filters.astype(np.float32),
        n_fft=fe.n_fft,
        hop_length=fe.hop_length,
        n_samples=fe.n_samples,
        padding_value=fe.padding_value,
    )


def _ref(fe: WhisperFeatureExtractor, audio: np.ndarray) -> np.ndarray:
    return fe(audio, sampling_rate=16000, return_tensors="np").input_features[0]


@pytest.mark.parametrize("n_mels", [80, 128])
def test_real_speech(n_mels):
    fe = WhisperFeatureExtractor(feature_size=n_mels)
    for audio in _speech():
        ours, ref = _ours(fe, audio), _ref(fe, audio)
        assert ours.shape == ref.shape == (n_mels, 3000)
        assert ours.dtype == np.float32
        assert np.abs(ours - ref).max() <= TOL


@pytest.mark.parametrize("seconds", [0.05, 1.0, 29.99, 30.0, 31.5])
def test_lengths_pad_and_cut_like_the_feature_extractor(seconds):
    fe = WhisperFeatureExtractor()
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    assert np.abs(_ours(fe, audio) - _ref(fe, audio)).max() <= TOL


def test_silence():
    fe = WhisperFeatureExtractor()
    audio = np.zeros(16000, dtype=np.float32)
    ours = _ours(fe, audio)
    assert np.abs(ours - _ref(fe, audio)).max() <= TOL
    assert np.allclose(ours, -1.5)  # log10 floor -10, scaled: (-10 + 4) / 4


def test_loud_clipped_audio():
    fe = WhisperFeatureExtractor()
    audio = np.clip(3 * _speech()[0], -1, 1).astype(np.float32)
    assert np.abs(_ours(fe, audio) - _ref(fe, audio)).max() <= TOL


def test_stft_power_matches_numpy_definition():
    rng = np.random.default_rng(1)
    x = rng.standard_normal(4000).astype(np.float32)
    power = stft_power(x, 400, 160)
    assert power.shape == (201, 1 + 4000 // 160)
    padded = np.pad(x.astype(np.float64), 200, mode="reflect")
    frame = padded[160 * 3 : 160 * 3 + 400] * hann_window(400)
    assert np.allclose(power[:, 3], np.abs(np.fft.rfft(frame)) ** 2, rtol=1e-4, atol=1e-3)


def test_rejects_bad_input():
    fe = WhisperFeatureExtractor()
    with pytest.raises(ValueError, match="mono"):
        _ours(fe, np.zeros((2, 100), dtype=np.float32))
