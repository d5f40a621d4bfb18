"""The timestamp logit rules: hand-checked cases, and identical masks to transformers' WhisperTimeStampLogitsProcessor
on random logits and token histories."""

from __future__ import annotations

import types

import numpy as np
import pytest

from wavq.runtime.timestamps import TimestampRules

EOT, NO_TS, TS = 20, 25, 26  # a small vocabulary: text 0..19, specials 20..25, timestamps 26..
V = TS + 60
PROMPT = [21, 22, NO_TS - 1]  # any three non-timestamp prompt tokens


def rules(max_initial=5):
    return TimestampRules(
        timestamp_begin=TS,
        eot=EOT,
        no_timestamps=NO_TS,
        sample_begin=len(PROMPT),
        max_initial_timestamp_index=max_initial,
    )


def masked(history, logits=None, **kw):
    tokens = np.array([PROMPT + history])
    if logits is None:  # text clearly likelier than all timestamps together: the forcing rule stays out of the way
        logits = np.zeros((1, V), np.float32)
        logits[0, :TS] = 10.0
    x = logits.copy()
    rules(**kw).apply(x, tokens)
    return np.isneginf(x[0])


def allowed(mask):
    return set(np.flatnonzero(~mask).tolist())


NON_TIMESTAMPS = set(range(TS)) - {NO_TS}


def test_first_token_is_an_early_timestamp():
    assert allowed(masked([])) == set(range(TS, TS + 6))  # <|0.00|> .. <|0.10|> with max_initial 5
    assert allowed(masked([], max_initial=None)) == set(range(TS, V))


def test_pairs_monotonic_and_no_empty_segments():
    # the opening timestamp is followed by text (or end of text), never a second timestamp
    assert allowed(masked([TS + 3])) == NON_TIMESTAMPS
    # inside a segment: text, or a closing timestamp strictly after the opening one
    assert allowed(masked([TS + 3, 5])) == NON_TIMESTAMPS | set(range(TS + 4, V))
    # after the closing timestamp: the next segment's start (not before the end) or end of text
    assert allowed(masked([TS + 3, 5, 7, TS + 9])) == {EOT, 21, 22, 23, 24} | set(range(TS + 9, V))
    # a pair closes the segment: text (or end of text) next
    assert allowed(masked([TS + 3, 5, TS + 9, TS + 9])) == NON_TIMESTAMPS
    # inside the second segment timestamps may not go back to the last one
    assert allowed(masked([TS + 3, 5, TS + 9, TS + 9, 6])) == NON_TIMESTAMPS | set(range(TS + 10, V))


def test_likely_timestamps_are_forced():
    logits = np.zeros((1, V), np.float32)
    logits[0, TS + 10 :] = 1.0  # 50 timestamps each as likely as e**1 against text at e**0: their sum wins
    a = allowed(masked([TS, 1, 2], logits))
    assert a and min(a) >= TS
    logits[0, 3] = 10.0  # one clearly best text token
    assert 3 in allowed(masked([TS, 1, 2], logits))


def _hf_processor(max_initial, begin):
    pytest.importorskip("torch")
    logits_process = pytest.importorskip("transformers.generation.logits_process")
    config = types.SimpleNamespace(
        no_timestamps_token_id=NO_TS,
        eos_token_id=EOT,
        bos_token_id=EOT,
        max_initial_timestamp_index=max_initial,
        _detect_timestamp_from_logprob=True,
    )
    return logits_process.WhisperTimeStampLogitsProcessor(config, begin_index=begin)


def _random_history(rng, n):
    """Token histories that visit every rule: text, single and paired timestamps, increasing and not."""
    out, t = [], int(rng.integers(0, 5))
    for _ in range(n):
        r = rng.random()
        if r < 0.45:
            out.append(int(rng.integers(0, EOT)))
        elif r < 0.9:
            t = min(V - TS - 1, t + int(rng.integers(0, 8)))
            out.append(TS + t)
        else:
            out.append(TS + int(rng.integers(0, V - TS)))  # occasionally out of order
    return out


@pytest.mark.parametrize("max_initial", [None, 0, 5])
def test_masks_equal_transformers(max_initial):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(max_initial or 7)
    batch = 4
    for trial in range(300):
        length = int(rng.integers(0, 12))
        tokens = np.array([PROMPT + _random_history(rng, length) for _ in range(batch)])
        scale = float(rng.choice([0.5, 3.0, 10.0]))
        logits = (rng.standard_normal((batch, V)) * scale).astype(np.float32)
        if trial % 3 == 0:  # make timestamps collectively likely, so the forcing rule fires in both directions
            logits[:, TS:] += float(rng.uniform(0, 3))
        ours = logits.copy()
        rules(max_initial).apply(ours, tokens)
        ref = _hf_processor(max_initial, len(PROMPT))(torch.from_numpy(tokens), torch.from_numpy(logits)).numpy()
        np.testing.assert_array_equal(np.isneginf(ours), np.isneginf(ref), err_msg=str(tokens))
        np.testing.assert_array_equal(ours[~np.isneginf(ours)], ref[~np.isneginf(ref)])
