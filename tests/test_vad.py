"""Energy VAD: silence and steady noise give no speech; real speech (samples/) is covered, with and without
background noise, and a silent gap between utterances is left out."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from wavq.runtime.audio import load_audio
from wavq.runtime.vad import SpeechTimeline, frame_energy_db, speech_regions

SR = 16_000
SAMPLES = sorted((pathlib.Path(__file__).resolve().parents[1] / "samples").glob("*.flac"))
FRAME = 480


def covered(regions, n):
    mask = np.zeros(n, bool)
    for a, b in regions:
        mask[a:b] = True
    return mask


def loud_frames(u):
    """Samples of frames within 30 dB of the utterance's loudest frame: where the speech is."""
    e = frame_energy_db(u, FRAME)
    return np.repeat(e > e.max() - 30, FRAME)[: len(u)]


@pytest.fixture(scope="module")
def utterances():
    pytest.importorskip("soundfile")
    return [load_audio(str(p), SR) for p in SAMPLES]


def test_silence_and_steady_noise_are_not_speech():
    rng = np.random.default_rng(0)
    assert speech_regions(np.zeros(20 * SR, np.float32)) == []
    assert speech_regions(np.zeros(0, np.float32)) == []
    for level_db in (-70, -40, -20, -6):
        noise = rng.standard_normal(10 * SR).astype(np.float32) * np.float32(10 ** (level_db / 20))
        assert speech_regions(noise) == [], level_db


def test_a_burst_in_silence_is_found_and_padded():
    x = np.zeros(5 * SR, np.float32)
    x[2 * SR : 3 * SR] = 0.1 * np.sin(np.arange(SR) * 0.3)
    (region,) = speech_regions(x)
    # whole 30-ms frames (the one holding 2.0 s starts at 1.98 s), and 0.2 s of padding each side
    assert region == ((2 * SR // FRAME) * FRAME - SR // 5, 3 * SR + SR // 5)
    x[4 * SR : 4 * SR + 1600] = 0.1  # a 0.1-s click is shorter than any word
    assert speech_regions(x) == [region]


@pytest.mark.parametrize("snr_db", [None, 20.0, 10.0])
def test_speech_is_covered_and_a_silent_gap_is_not(utterances, snr_db):
    rng = np.random.default_rng(1)
    for u1, u2 in zip(utterances, utterances[1:]):
        gap = np.zeros(3 * SR, np.float32)
        x = np.concatenate([u1, gap, u2])
        if snr_db is not None:
            power = np.mean(np.concatenate([u1, u2]) ** 2)
            x = x + rng.standard_normal(len(x)).astype(np.float32) * np.float32(np.sqrt(power / 10 ** (snr_db / 10)))
        mask = covered(speech_regions(x), len(x))
        speech = np.concatenate([loud_frames(u1), np.zeros(len(gap), bool), loud_frames(u2)])
        assert mask[speech].mean() > (0.97 if snr_db is None or snr_db >= 20 else 0.85)
        middle = slice(len(u1) + SR // 2, len(u1) + len(gap) - SR // 2)
        assert not mask[middle].any()


def test_timeline_gathers_speech_and_maps_times_back():
    audio = np.arange(10 * SR, dtype=np.float32)
    timeline = SpeechTimeline(((SR, 2 * SR), (5 * SR, 7 * SR)))
    gathered = timeline.gather(audio)
    assert len(gathered) == 3 * SR and gathered[0] == SR and gathered[SR] == 5 * SR
    assert timeline.original_time(0.0) == 1.0
    assert timeline.original_time(0.5) == 1.5
    assert timeline.original_time(1.0) == 2.0  # the end of a region stays in it
    assert timeline.original_time(1.25) == 5.25
    assert timeline.original_time(3.5) == 7.5  # past the last region: continues from its end
    assert len(SpeechTimeline(()).gather(audio)) == 0
