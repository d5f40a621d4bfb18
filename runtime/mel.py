"""Whisper's log-mel spectrogram in numpy, equal to transformers' WhisperFeatureExtractor.

Per 30-s window: zero-pad (or cut) the audio to `n_samples`, centred STFT with reflect padding and a periodic
Hann window (torch.stft's defaults), power spectrum, the stored slaney mel filterbank, log10 floored at 1e-10,
dynamic range clipped to 8 (i.e. 80 dB) below the window's maximum, then scaled to roughly [-1, 1].
"""

from __future__ import annotations

import numpy as np

LOG_FLOOR = 1e-10  # power floor before log10, as the reference implementation
DYNAMIC_RANGE = 8.0  # log10 units (80 dB) kept below the window's loudest bin
LOG_OFFSET = 4.0  # (log + 4) / 4 maps Whisper's typical log-mel range onto about [-1, 1]
LOG_SCALE = 4.0


def hann_window(n: int) -> np.ndarray:
    """Periodic Hann window (torch.hann_window's default), float64."""
    return 0.5 - 0.5 * np.cos(2.0 * np.pi * np.arange(n) / n)


def stft_power(audio: np.ndarray, n_fft: int, hop_length: int) -> np.ndarray:
    """|STFT|^2 of a centred, reflect-padded signal: (n_fft // 2 + 1, 1 + len(audio) // hop_length) float32."""
    half = n_fft // 2
    padded = np.pad(audio.astype(np.float32, copy=False), (half, half), mode="reflect")
    n_frames = 1 + (len(padded) - n_fft) // hop_length
    frames = np.lib.stride_tricks.as_strided(
        padded, shape=(n_frames, n_fft), strides=(padded.strides[0] * hop_length, padded.strides[0]), writeable=False
    )  # (frames, n_fft) view, no copy
    window = hann_window(n_fft).astype(np.float32)
    spec = np.fft.rfft(frames * window, n=n_fft, axis=-1)  # (frames, n_fft // 2 + 1) complex
    power = spec.real * spec.real + spec.imag * spec.imag
    return np.ascontiguousarray(power.T, dtype=np.float32)


def log_mel_spectrogram(
    audio: np.ndarray,
    mel_filters: np.ndarray,
    *,
    n_fft: int = 400,
    hop_length: int = 160,
    n_samples: int | None = 480_000,
    padding_value: float = 0.0,
) -> np.ndarray:
    """(n_mels, n_samples // hop_length) float32 features of one window.

    `mel_filters` is (n_fft // 2 + 1, n_mels) as stored. `n_samples=None` keeps the audio's own length
    (then the dynamic-range clip uses the whole signal's maximum).
    """
    audio = np.asarray(audio, dtype=np.float32)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    if n_samples is not None:
        if len(audio) >= n_samples:
            audio = audio[:n_samples]
        else:
            audio = np.concatenate([audio, np.full(n_samples - len(audio), padding_value, dtype=np.float32)])
    if len(audio) <= n_fft // 2:
        raise ValueError(f"audio of {len(audio)} samples is too short for a {n_fft}-point STFT")
    power = stft_power(audio, n_fft, hop_length)[:, :-1]  # the last frame is dropped, as Whisper does
    mel = mel_filters.T.astype(np.float32, copy=False) @ power  # (n_mels, frames)
    log_spec = np.log10(np.maximum(mel, np.float32(LOG_FLOOR)))
    log_spec = np.maximum(log_spec, log_spec.max() - np.float32(DYNAMIC_RANGE))
    return ((log_spec + np.float32(LOG_OFFSET)) / np.float32(LOG_SCALE)).astype(np.float32, copy=False)
