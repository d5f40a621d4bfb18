"""Transcript writers: golden strings in openai-whisper's formats, atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from wavq.runtime import writers
from wavq.runtime.types import Segment, Transcription, Word
from wavq.runtime.writers import format_timestamp, write_result

RESULT = Transcription(
    text=" Hello there. Tabs\tand --> arrows",
    segments=[
        Segment(0.0, 2.5, " Hello there.", tokens=[1, 2], avg_logprob=-0.25, no_speech_prob=0.01),
        Segment(2.5, 3661.0015, " Tabs\tand --> arrows"),
    ],
    language="en",
    language_probability=0.98,
)


def test_format_timestamp():
    assert format_timestamp(0) == "00:00.000"
    assert format_timestamp(61.0005) == "01:01.000"  # round half to even on milliseconds, as round()
    assert format_timestamp(61.0015) == "01:01.002"
    assert format_timestamp(3661.5, always_include_hours=False) == "01:01:01.500"
    assert format_timestamp(5.25, True, ",") == "00:00:05,250"
    with pytest.raises(ValueError, match="not negative"):
        format_timestamp(-0.1)


def test_txt_srt_vtt_tsv_golden():
    assert writers.to_txt(RESULT) == "Hello there.\nTabs\tand --> arrows\n"
    assert writers.to_srt(RESULT) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello there.\n\n2\n00:00:02,500 --> 01:01:01,002\nTabs\tand -> arrows\n\n"
    )
    assert writers.to_vtt(RESULT) == (
        "WEBVTT\n\n00:00.000 --> 00:02.500\nHello there.\n\n00:02.500 --> 01:01:01.002\nTabs\tand -> arrows\n\n"
    )
    assert writers.to_tsv(RESULT) == "start\tend\ttext\n0\t2500\tHello there.\n2500\t3661002\tTabs and --> arrows\n"


def test_json_keeps_every_field():
    d = json.loads(writers.to_json(RESULT))
    assert d["language"] == "en" and d["language_probability"] == 0.98
    assert d["segments"][0]["avg_logprob"] == -0.25 and d["segments"][0]["tokens"] == [1, 2]
    assert d["segments"][1]["end"] == 3661.0015


def test_word_timings_make_the_cues():
    words = [Word(" Hello", 0.32, 0.6, 0.9), Word(" there.", 0.62, 1.1, 0.8)]
    result = Transcription(
        " Hello there.", [Segment(0.0, 2.5, " Hello there.", words=words), Segment(2.5, 3.0, "", words=[])]
    )
    assert writers.to_srt(result) == "1\n00:00:00,320 --> 00:00:01,100\nHello there.\n\n"
    assert writers.to_vtt(result) == "WEBVTT\n\n00:00.320 --> 00:01.100\nHello there.\n\n"
    assert writers.to_tsv(result) == "start\tend\ttext\n0\t2500\tHello there.\n2500\t3000\t\n"


def test_write_all_and_one(tmp_path):
    out = tmp_path / "out"
    paths = write_result(RESULT, "chapter", out, "all")
    assert sorted(os.path.basename(p) for p in paths) == [f"chapter.{e}" for e in ("json", "srt", "tsv", "txt", "vtt")]
    assert (out / "chapter.srt").read_text(encoding="utf-8") == writers.to_srt(RESULT)
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in paths)  # no temporary files left
    assert write_result(RESULT, "x", out, "vtt") == [str(out / "x.vtt")]
    with pytest.raises(ValueError, match="output format"):
        write_result(RESULT, "x", out, "docx")


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(result):
        raise RuntimeError("formatting failed")

    monkeypatch.setitem(writers.FORMATS, "txt", broken)
    with pytest.raises(RuntimeError):
        write_result(RESULT, "a", tmp_path, "txt")
    (tmp_path / "b.srt").write_text("old", encoding="utf-8")
    monkeypatch.setattr(writers.os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_result(RESULT, "b", tmp_path, "srt")
    assert os.listdir(tmp_path) == ["b.srt"] and (tmp_path / "b.srt").read_text(encoding="utf-8") == "old"
