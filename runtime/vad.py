"""A simple energy-based voice activity detector in numpy.

Frames of 30 ms; a frame is loud when its energy is a margin above the recording's own noise floor (a low
percentile of the frame energies) and above an absolute floor (so digital silence and faint hiss are never speech).
Loud frames separated by short gaps are joined, runs shorter than a word are dropped, and each region is padded
so that soft word onsets and endings stay inside.

What it can and cannot do: it finds speech against silence and against steady background noise quieter than the
speech. It cannot tell speech from noise, music or another voice at a similar loudness (it measures loudness, not
voice), and a recording that is speech from end to end is simply all speech.
"""

from __future__ import annotations

import dataclasses

import numpy as np

SAMPLE_RATE = 16_000  # Hz
FRAME_SECONDS = 0.030  # analysis frame: 30 ms
NOISE_PERCENTILE = 10.0  # the frame energy below which 10 % of the recording lies is taken as its noise floor
MARGIN_DB = 6.0  # a frame this far above the noise floor is loud (chosen on dev-clean + train-clean-100 in white noise)
ABSOLUTE_FLOOR_DB = -55.0  # dB re full scale: frames quieter than this are never speech
MIN_SILENCE_SECONDS = 0.5  # shorter gaps between loud runs are kept inside one region (hangover)
MIN_SPEECH_SECONDS = 0.25  # shorter loud runs (clicks, breaths) are dropped
PAD_SECONDS = 0.2  # added before and after each region
POWER_EPS = 1e-10  # power floor before the logarithm: digital silence is -100 dB


@dataclasses.dataclass(frozen=True)
class VadOptions:
    margin_db: float = MARGIN_DB
    absolute_floor_db: float = ABSOLUTE_FLOOR_DB
    min_silence: float = MIN_SILENCE_SECONDS
    min_speech: float = MIN_SPEECH_SECONDS
    pad: float = PAD_SECONDS


def frame_energy_db(audio: np.ndarray, frame: int) -> np.ndarray:
    """Mean power of each whole frame of `frame` samples (a partial last frame is zero-padded), in dB re full scale."""
    audio = np.asarray(audio, dtype=np.float32)
    n = -(-len(audio) // frame)
    padded = np.zeros(n * frame, dtype=np.float64)
    padded[: len(audio)] = audio
    power = np.mean(padded.reshape(n, frame) ** 2, axis=1)
    return 10.0 * np.log10(power + POWER_EPS)


def speech_regions(
    audio: np.ndarray,
    sample_rate: int = SAMPLE_RATE,
    options: VadOptions = VadOptions(),  # noqa: B008 (frozen)
) -> list[tuple[int, int]]:
    """[start, end) sample ranges of speech, in order, not overlapping."""
    if len(audio) == 0:
        return []
    frame = max(1, round(FRAME_SECONDS * sample_rate))
    energy = frame_energy_db(audio, frame)
    threshold = max(float(np.percentile(energy, NOISE_PERCENTILE)) + options.margin_db, options.absolute_floor_db)
    runs = _runs(energy > threshold)
    runs = _close_gaps(runs, round(options.min_silence / FRAME_SECONDS))
    runs = [(a, b) for a, b in runs if b - a >= round(options.min_speech / FRAME_SECONDS)]
    pad = round(options.pad * sample_rate)
    regions: list[tuple[int, int]] = []
    for a, b in runs:
        start, end = max(0, a * frame - pad), min(len(audio), b * frame + pad)
        if regions and start <= regions[-1][1]:  # padding made neighbours touch
            regions[-1] = (regions[-1][0], end)
        else:
            regions.append((start, end))
    return regions


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) index ranges where mask is True."""
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()))


def _close_gaps(runs: list[tuple[int, int]], max_gap: int) -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    for a, b in runs:
        if out and a - out[-1][1] < max_gap:
            out[-1] = (out[-1][0], b)
        else:
            out.append((a, b))
    return out


@dataclasses.dataclass(frozen=True)
class SpeechTimeline:
    """The speech regions of a recording, joined into one shorter signal, and the way back to original times."""

    regions: tuple[tuple[int, int], ...]  # [start, end) samples in the original audio
    sample_rate: int = SAMPLE_RATE

    def gather(self, audio: np.ndarray) -> np.ndarray:
        if not self.regions:
            return np.zeros(0, dtype=np.float32)
        return np.concatenate([audio[a:b] for a, b in self.regions]).astype(np.float32, copy=False)

    def original_time(self, seconds: float) -> float:
        """A time in the gathered signal -> the same instant in the original recording (region ends map to the
        end of their region, not the start of the next)."""
        sample = seconds * self.sample_rate
        done = 0
        for a, b in self.regions:
            if sample <= done + (b - a):
                return (a + sample - done) / self.sample_rate
            done += b - a
        last = self.regions[-1][1] if self.regions else 0
        return (last + sample - done) / self.sample_rate
