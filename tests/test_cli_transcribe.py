"""`wavq transcribe` options on tiny random models: transcript files, folders, standard input, per-file errors,
Whisper-only options on a CTC model, --threads; `wavq info` languages; missing extras; the `wavq` package."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave

import numpy as np
import pytest
from click.testing import CliRunner

from wavq.formats import write_wq
from wavq.runtime.cli import main

SR = 16_000


def _write_wav(path, n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    x = (0.3 * rng.standard_normal(n) * np.abs(np.sin(np.arange(n) / 3000))).clip(-1, 1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    return str(path)


@pytest.fixture(scope="module")
def w2v(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import convert_tiny, tiny_wav2vec2

    root = tmp_path_factory.mktemp("w2v")
    return convert_tiny(tiny_wav2vec2(root / "ckpt"), root / "w2v.wq")


@pytest.fixture
def audio(tmp_path):
    """a.wav alone, and a folder with b.wav, sub/c.flac-named WAV, a junk .wav and a text file."""
    a = _write_wav(tmp_path / "a.wav", 12_000, 1)
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    _write_wav(folder / "b.wav", 9_000, 2)
    _write_wav(folder / "sub" / "c.wav", 7_000, 3)
    (folder / "broken.wav").write_bytes(b"RIFF, but not really")
    (folder / "notes.txt").write_text("not audio")
    (folder / ".hidden.wav").write_bytes(b"skipped")
    return a, str(folder)


def _run(*args):
    return CliRunner().invoke(main, ["transcribe", *map(str, args)])


def test_default_printing_unchanged(w2v, audio):
    a, _ = audio
    r = _run(w2v, a)
    assert r.exit_code == 0, r.output
    from wavq.runtime import load

    assert r.output == load(w2v).transcribe(a).text + "\n"


def test_srt_files_for_a_folder_with_a_broken_file(w2v, audio, tmp_path):
    a, folder = audio
    out = tmp_path / "subs"
    r = _run(w2v, a, folder, "--output-format", "srt", "-o", out)
    assert r.exit_code == 1
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert written == ["a.srt", "b.srt", "sub/c.srt"]  # the folder's layout is kept; junk and hidden files skipped
    errors = [ln for ln in r.output.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "broken.wav" in errors[0]
    assert "Error: 1 of 4 inputs could not be transcribed" in r.output
    srt = (out / "a.srt").read_text()
    assert srt.startswith("1\n00:00:00,000 --> 00:00:0")


def test_output_dir_alone_writes_every_format(w2v, audio, tmp_path):
    a, _ = audio
    r = _run(w2v, a, "-o", tmp_path / "all")
    assert r.exit_code == 0, r.output
    assert sorted(os.listdir(tmp_path / "all")) == ["a.json", "a.srt", "a.tsv", "a.txt", "a.vtt"]
    assert r.output.splitlines() == [str(tmp_path / "all" / f"a.{f}") for f in ("txt", "vtt", "srt", "tsv", "json")]


def test_word_timestamps_in_json(w2v, audio, tmp_path):
    a, _ = audio
    r = _run(w2v, a, "--word-timestamps", "-f", "json", "-o", tmp_path)
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "a.json").read_text())
    words = [w for s in d["segments"] for w in s["words"]]
    assert words and all(w["start"] <= w["end"] for w in words)
    plain = json.loads(_run(w2v, a, "--json").output)
    assert all(s["words"] is None for s in plain["segments"])


def test_vad_option(w2v, tmp_path):
    silence_then_noise = tmp_path / "late.wav"
    rng = np.random.default_rng(0)
    x = np.concatenate([np.zeros(SR), 0.3 * rng.standard_normal(SR)])
    with wave.open(str(silence_then_noise), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes((x * 32767).astype("<i2").tobytes())
    r = _run(w2v, silence_then_noise, "--vad", "--json", "--word-timestamps")
    assert r.exit_code == 0, r.output
    segments = json.loads(r.output)["segments"]
    assert segments and segments[0]["start"] >= 0.7  # the first second is silence


def test_unwritable_output_dir_is_one_line_before_any_work(w2v, audio, tmp_path):
    a, _ = audio
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = _run(w2v, a, "-f", "txt", "-o", blocker / "sub")
    assert r.exit_code == 1 and r.output.count("\n") == 1 and "Error:" in r.output
    assert "Traceback" not in r.output


def test_same_transcript_name_is_an_error_for_the_second_file(w2v, audio, tmp_path):
    a, folder = audio
    other = tmp_path / "other"
    other.mkdir()
    again = _write_wav(other / "a.wav", 5_000)
    r = _run(w2v, a, again, "-f", "txt", "-o", tmp_path / "out")
    assert r.exit_code == 1
    assert os.listdir(tmp_path / "out") == ["a.txt"]
    assert "would replace that of" in r.output


def test_stdin_is_transcribed_once_and_named_stdin(w2v, audio, tmp_path):
    a, _ = audio
    data = open(a, "rb").read()
    cmd = [sys.executable, "-m", "wavq", "transcribe", w2v, "-", "-f", "txt", "-o", str(tmp_path)]
    p = subprocess.run(cmd, input=data, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    expected = CliRunner().invoke(main, ["transcribe", w2v, a]).output
    assert (tmp_path / "stdin.txt").read_text() == expected  # txt: one line per segment; a single segment here


@pytest.mark.parametrize(
    "args, flag",
    [
        (["--temperature", "0.5"], "--temperature"),
        (["--initial-prompt", "hi"], "--initial-prompt"),
        (["--no-speech-threshold", "0.3"], "--no-speech-threshold"),
        (["--no-condition-on-previous-text"], "--no-condition-on-previous-text"),
        (["--language", "en"], "--language"),
        (["--task", "translate"], "--task"),
        (["--beam-size", "2"], "--beam-size"),
    ],
)
def test_whisper_only_options_are_refused_for_ctc(w2v, audio, args, flag):
    a, _ = audio
    r = _run(w2v, a, *args)
    assert r.exit_code == 2
    assert f"Error: {flag} apply to Whisper models only; this is a wav2vec2-ctc model" in r.output


def test_whisper_options_at_their_defaults_are_fine_for_ctc(w2v, audio):
    a, _ = audio
    r = _run(w2v, a, "--condition-on-previous-text", "--task", "transcribe", "--beam-size", "1")
    assert r.exit_code == 0, r.output


def test_json_flag_and_output_files_exclude_each_other(w2v, audio, tmp_path):
    a, _ = audio
    r = _run(w2v, a, "--json", "-o", tmp_path)
    assert r.exit_code == 2 and "--output-format json" in r.output


def test_threads_are_set_before_numpy_loads(w2v, audio):
    """`wavq ... --threads 3` sets the BLAS variables while numpy is still unimported."""
    a, _ = audio
    code = f"""
import json, os, sys
import wavq.__main__ as entry
assert "numpy" not in sys.modules, "importing the entry point loaded numpy"
sys.argv = ["wavq", "transcribe", {w2v!r}, {a!r}, "--threads", "3"]
try:
    entry.main()
except SystemExit as e:
    code = e.code
names = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "WAVQ_KERNEL_THREADS")
print(json.dumps({{"code": code, "env": [os.environ.get(n) for n in names]}}))
"""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_NUM_THREADS")}
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    out = json.loads(p.stdout.strip().splitlines()[-1])
    assert out == {"code": 0, "env": ["3"] * 4}, p.stderr


def test_threads_from_args():
    from wavq.__main__ import threads_from_args

    assert threads_from_args(["transcribe", "m", "--threads", "2"]) == "2"
    assert threads_from_args(["eval", "--threads=4"]) == "4"
    assert threads_from_args(["transcribe", "--threads", "0"]) is None  # click reports it
    assert threads_from_args(["transcribe", "--", "--threads", "2"]) is None
    r = CliRunner().invoke(main, ["transcribe", "m.wq", "a.wav", "--threads", "0"])
    assert r.exit_code == 2 and "--threads" in r.output


# ---- Whisper: the long-form options reach WhisperModel.transcribe -------------------------------------------------
def _whisper_takes(name: str) -> bool:
    """Whether WhisperModel.transcribe takes the long-form keyword `name` (decoding.TranscriptionOptions)."""
    import dataclasses

    from wavq.runtime import decoding

    options = getattr(decoding, "TranscriptionOptions", None)
    return options is not None and name in {f.name for f in dataclasses.fields(options)}


@pytest.mark.slow
@pytest.mark.skipif(not _whisper_takes("temperature"), reason="needs the long-form WhisperModel.transcribe")
def test_whisper_long_form_options(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import convert_tiny, tiny_whisper

    model = convert_tiny(tiny_whisper(tmp_path / "ckpt"), tmp_path / "whisper.wq")
    a = _write_wav(tmp_path / "a.wav", 20_000)
    args = ["--temperature", "0", "--no-speech-threshold", "0.5", "--no-condition-on-previous-text"]
    args += ["--initial-prompt", "Hello.", "--word-timestamps", "--vad", "-f", "json", "-o", tmp_path / "out"]
    r = _run(model, a, *args)
    assert r.exit_code == 0, r.output
    d = json.loads((tmp_path / "out" / "a.json").read_text())
    assert all(s["temperature"] == 0.0 and s["words"] is not None for s in d["segments"])


# ---- wavq info: languages -----------------------------------------------------------------------------------------
def _header_only(path, meta) -> str:
    write_wq(path, meta, {"w": np.zeros((2, 2), np.float32)})
    return str(path)


def test_info_lists_languages(tmp_path):
    gen = {
        "is_multilingual": True,
        "lang_to_id": {"<|de|>": 50261, "<|en|>": 50259, "<|zh|>": 50260},
        "languages": {"en": "english", "zh": "chinese", "de": "german"},
    }
    multi = _header_only(tmp_path / "m.wq", {"architecture": "whisper", "generation": gen})
    r = CliRunner().invoke(main, ["info", multi])
    assert r.exit_code == 0 and "languages:     multilingual, 3: en, zh, de\n" in r.output
    out = json.loads(CliRunner().invoke(main, ["info", "--json", multi]).output)
    assert out["multilingual"] is True and out["languages"] == {"en": "english", "zh": "chinese", "de": "german"}
    english = _header_only(tmp_path / "e.wq", {"architecture": "whisper", "generation": {"is_multilingual": False}})
    assert "languages:     English only (not multilingual)" in CliRunner().invoke(main, ["info", english]).output
    ctc = _header_only(tmp_path / "c.wq", {"architecture": "wav2vec2-ctc"})
    assert "\nlanguages:" not in CliRunner().invoke(main, ["info", ctc]).output
    assert json.loads(CliRunner().invoke(main, ["info", "--json", ctc]).output)["multilingual"] is None
    hostile = _header_only(
        tmp_path / "h.wq", {"architecture": "whisper", "generation": {"is_multilingual": True, "lang_to_id": [1]}}
    )
    r = CliRunner().invoke(main, ["info", hostile])
    assert r.exit_code == 0 and "languages:     multilingual, 0: \n" in r.output


# ---- missing extras: one line, no traceback -----------------------------------------------------------------------
def _blocked(package: str, call: str) -> subprocess.CompletedProcess:
    code = f"import sys; sys.modules[{package!r}] = None\n{call}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def _one_line_error(p: subprocess.CompletedProcess, needle: str) -> None:
    assert p.returncode == 1, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in p.stderr, p.stderr


def test_convert_without_torch(tmp_path):
    call = f"from wavq.converter.cli import main; main(['openai/whisper-tiny.en', '-o', {str(tmp_path / 'x.wq')!r}])"
    _one_line_error(_blocked("torch", call), "wavq-convert needs torch")
    assert not (tmp_path / "x.wq").exists()


def test_eval_without_jiwer_stops_before_transcribing(tmp_path):
    call = f"from wavq.runtime.cli import main; main(['eval', 'missing.wq', '--data', {str(tmp_path)!r}])"
    _one_line_error(_blocked("jiwer", call), "wavq eval needs jiwer")


# ---- the wavq package ----------------------------------------------------------------------------------------------
def test_top_level_package():
    code = """
import sys, json
import wavq
lazy = "numpy" not in sys.modules
from wavq import load, Transcription, Segment, Word, __version__
from importlib.metadata import version
from importlib.resources import files
print(json.dumps([lazy, __version__ == version("wavq"), files("wavq").joinpath("py.typed").is_file(),
                  load.__module__, Word.__module__]))
"""
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert json.loads(p.stdout) == [True, True, True, "wavq.runtime", "wavq.runtime.types"], p.stderr
    p = subprocess.run([sys.executable, "-m", "wavq", "--help"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "transcribe" in p.stdout
