"""The long-form reference data (benchmarks/make_longform.py): the stored 60-s references rebuild from LibriSpeech,
are well-formed (ordered segments inside the audio, no temperature fallback, so a different sampler can reproduce
them) and transcribe the concatenated LibriSpeech text closely."""

from __future__ import annotations

import importlib.util
import json
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "make_longform.py"
REFERENCES = sorted((ROOT / "tests" / "data" / "longform").glob("*.json"))
LIBRISPEECH = ROOT.parent / "shared" / "librispeech"


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("make_longform", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop(spec.name, None)


def test_references_exist():
    assert {p.name for p in REFERENCES} == {"chapter-60s.whisper-tiny.en.json", "chapter-60s.whisper-base.json"}


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.name)
def test_reference_is_well_formed(path):
    ref = json.loads(path.read_text(encoding="utf-8"))
    assert ref["duration"] >= 60.0 and not ref["any_fallback"]
    assert all(d["temperature"] == 0.0 for d in ref["fallback_decisions"])
    starts = [s["start"] for s in ref["segments"]]
    # the last timestamp may fall a step or two past the audio's end (base says 66.80 s for 66.775 s)
    assert starts == sorted(starts) and ref["segments"][-1]["end"] <= ref["duration"] + 0.1
    assert all(s["start"] < s["end"] for s in ref["segments"])
    assert "".join(s["text"] for s in ref["segments"]) == ref["text"]
    jiwer = pytest.importorskip("jiwer")
    from whisper_normalizer.english import EnglishTextNormalizer

    norm = EnglishTextNormalizer()
    assert jiwer.wer(norm(ref["reference"]), norm(ref["text"])) < 0.06


@pytest.mark.parametrize("path", REFERENCES, ids=lambda p: p.name)
def test_audio_rebuilds_from_librispeech(script, path):
    if not (LIBRISPEECH / "test-clean").is_dir():
        pytest.skip("LibriSpeech test-clean is not in ../shared/librispeech")
    pytest.importorskip("soundfile")
    ref = json.loads(path.read_text(encoding="utf-8"))
    audio = script.build_audio(LIBRISPEECH, ref["utterances"])
    assert len(audio) / script.SAMPLE_RATE == pytest.approx(ref["duration"], abs=1e-4)
    texts = {u.id: u.text for u in script.find_utterances(LIBRISPEECH, "test-clean")}
    assert " ".join(texts[i] for i in ref["utterances"]) == ref["reference"]
