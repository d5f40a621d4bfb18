"""Word end times of the runtime's `word_timestamps=True` against transformers' `return_token_timestamps` (the same
cross-attention DTW over the checkpoint's alignment heads) on the first utterances of a LibriSpeech subset.

    python benchmarks/compare_word_times.py model.wq --model openai/whisper-tiny.en --n 20

transformers gives one time per token: the DTW time at which the token ends. A word's end is the time of its last
token that is not punctuation (openai-whisper times a word without the punctuation it merges into it); the
runtime's words are compared with transformers' in order, where both tokenisations give the same word.
"""

from __future__ import annotations

import argparse
import difflib
import glob
import os
import string

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from transformers import WhisperForConditionalGeneration, WhisperProcessor  # noqa: E402

from wavq.runtime import load  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE, load_audio  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
WIDE = 0.5  # s: a difference this large is printed with its word
LIBRISPEECH = os.path.join(HERE, "..", "..", "shared", "librispeech")


def transformers_words(proc, model, audio: np.ndarray) -> list[tuple[str, float]]:
    """(word, end time in s) from transformers' token timestamps, greedy, timestamp tokens on (as the runtime)."""
    feats = proc(audio, sampling_rate=SAMPLE_RATE, return_tensors="pt").input_features
    with torch.no_grad():
        out = model.generate(feats, return_token_timestamps=True, return_timestamps=True)
    words: list[tuple[str, float]] = []
    for tok, t in zip(out["sequences"][0].tolist(), out["token_timestamps"][0].tolist()):
        if tok >= proc.tokenizer.eos_token_id:  # special tokens
            continue
        text = proc.tokenizer.decode([tok])
        if text.startswith(" ") or not words:
            words.append((text.strip(), t))
        elif text.strip() in string.punctuation:  # openai-whisper merges it into the word but keeps the word's end
            words[-1] = (words[-1][0] + text, words[-1][1])
        else:
            words[-1] = (words[-1][0] + text, t)
    return words


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("wq")
    p.add_argument("--model", default="openai/whisper-tiny.en")
    p.add_argument("--n", type=int, default=20)
    p.add_argument("--subset", default="test-clean")
    args = p.parse_args()
    proc = WhisperProcessor.from_pretrained(args.model)
    ref = WhisperForConditionalGeneration.from_pretrained(args.model).eval()
    ours = load(args.wq)
    diffs: list[float] = []
    words = 0
    paths = sorted(glob.glob(os.path.join(LIBRISPEECH, args.subset, "*", "*", "*.flac")))[: args.n]
    for path in paths:
        audio = load_audio(path)
        theirs = transformers_words(proc, ref, audio)
        mine = [w for s in ours.transcribe(audio, word_timestamps=True).segments for w in s.words]
        words += len(mine)
        # pair words of equal text along the longest common subsequence, so a word one side lacks shifts nothing
        match = difflib.SequenceMatcher(None, [w.word.strip() for w in mine], [t for t, _ in theirs], autojunk=False)
        for a, b, size in match.get_matching_blocks():
            for k in range(size):
                diffs.append(abs(mine[a + k].end - theirs[b + k][1]))
                if diffs[-1] > WIDE:
                    print(
                        f"{os.path.basename(path)} {theirs[b + k][0]!r}: "
                        f"{mine[a + k].end:.2f} vs {theirs[b + k][1]:.2f} s"
                    )
    d = np.array(diffs)
    print(
        f"{len(paths)} {args.subset} utterances, {words} words, {d.size} compared (same word in both): "
        "|end difference| "
        f"median {np.median(d):.3f} s, 90th percentile {np.percentile(d, 90):.3f} s, max {d.max():.3f} s, "
        f"{(d <= 0.02).mean():.0%} within 0.02 s"
    )


if __name__ == "__main__":
    main()
