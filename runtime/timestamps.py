"""Whisper's timestamp-token rules as a logit filter (openai-whisper's ApplyTimestampRules).

Timestamp tokens <|0.00|> ... <|30.00|> follow <|notimestamps|> in the vocabulary, one per TIME_PRECISION seconds.
When the prompt does not end with <|notimestamps|>, the model writes each segment as <|start|> text <|end|>,
and these rules keep what it writes well formed:
- <|notimestamps|> is never sampled;
- timestamps come in pairs (an end, then the next segment's start), except the lone one before end of text:
  after a pair only text may follow, after a single timestamp only a timestamp or end of text;
- timestamps never decrease, and a segment's end is later than its start (no zero-length loop);
- the first token is a timestamp, at most `max_initial_timestamp_index` steps (1 s by default) into the window;
- when the timestamps' summed probability exceeds the likeliest text token's, a timestamp is forced.
"""

from __future__ import annotations

import numpy as np

TIME_PRECISION = 0.02  # seconds per timestamp token: one encoder position (two 10-ms mel frames)
MAX_INITIAL_TIMESTAMP_INDEX = 50  # openai-whisper's max_initial_timestamp=1.0 s, in timestamp steps
NEG_INF = np.float32(-np.inf)


class TimestampRules:
    """Logit filter: `apply(logits (B, V), tokens (B, L))` masks logits in place.

    `tokens` are the full decoder inputs so far (prompt included); sampled tokens start at `sample_begin`.
    `timestamp_begin` is the id of <|0.00|> (no_timestamps + 1 in every Whisper vocabulary); `eot` the end of text,
    the first non-text id below the timestamps.
    """

    def __init__(
        self,
        *,
        timestamp_begin: int,
        eot: int,
        no_timestamps: int | None,
        sample_begin: int,
        max_initial_timestamp_index: int | None = MAX_INITIAL_TIMESTAMP_INDEX,
    ):
        self.timestamp_begin = int(timestamp_begin)
        self.eot = int(eot)
        self.no_timestamps = None if no_timestamps is None else int(no_timestamps)
        self.sample_begin = int(sample_begin)
        self.max_initial_timestamp_index = max_initial_timestamp_index

    def apply(self, logits: np.ndarray, tokens: np.ndarray) -> None:
        ts = self.timestamp_begin
        if self.no_timestamps is not None:
            logits[:, self.no_timestamps] = NEG_INF
        for k, row in enumerate(np.asarray(tokens)):
            sampled = row[self.sample_begin :]
            last_was_timestamp = len(sampled) >= 1 and sampled[-1] >= ts
            penultimate_was_timestamp = len(sampled) < 2 or sampled[-2] >= ts
            if last_was_timestamp:
                if penultimate_was_timestamp:  # a pair closed the segment: text must follow
                    logits[k, ts:] = NEG_INF
                else:  # a segment's end: the next start, or end of text
                    logits[k, : self.eot] = NEG_INF
            timestamps = sampled[sampled >= ts]
            if len(timestamps):
                # an end may equal its pair's start only when it opens the next segment; otherwise strictly later
                last = (
                    int(timestamps[-1])
                    if last_was_timestamp and not penultimate_was_timestamp
                    else int(timestamps[-1]) + 1
                )
                logits[k, ts:last] = NEG_INF
        if np.asarray(tokens).shape[1] == self.sample_begin:
            logits[:, :ts] = NEG_INF  # the first sampled token is a timestamp
            if self.max_initial_timestamp_index is not None:
                logits[:, ts + self.max_initial_timestamp_index + 1 :] = NEG_INF
        self._force_likely_timestamps(logits)

    def _force_likely_timestamps(self, logits: np.ndarray) -> None:
        ts = self.timestamp_begin
        with np.errstate(invalid="ignore", divide="ignore"):  # rows masked entirely give NaN and compare False
            x = logits.astype(np.float32, copy=False)
            m = x.max(axis=-1, keepdims=True)
            logprobs = x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))
            tail = logprobs[:, ts:]
            tail_max = tail.max(axis=-1, keepdims=True)
            timestamp_logprob = (tail_max + np.log(np.exp(tail - tail_max).sum(axis=-1, keepdims=True)))[:, 0]
            max_text_logprob = logprobs[:, :ts].max(axis=-1)
            force = timestamp_logprob > max_text_logprob
        logits[force, :ts] = NEG_INF
