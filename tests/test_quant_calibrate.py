"""Recipe parsing and calibration-audio selection (LibriSpeech layout and plain folders)."""

from __future__ import annotations

import msgpack
import numpy as np
import pytest

sf = pytest.importorskip("soundfile")

from wavq.converter.calibrate import (  # noqa: E402
    MAX_SECONDS,
    CalibrationError,
    choose,
    list_audio_files,
    overlap_warning,
    read_transcripts,
    select_calibration,
)
from wavq.converter.quant.recipe import Recipe, parse_method  # noqa: E402
from wavq.runtime.audio import SAMPLE_RATE  # noqa: E402


@pytest.mark.parametrize(
    "text, canonical",
    [
        ("rtn", "rtn"),
        ("gptq", "gptq"),
        ("awq", "awq+rtn"),
        ("GPTQ+AWQ", "awq+gptq"),
        ("clip", "clip+rtn"),
        ("gptq+clip+awq", "awq+clip+gptq"),
        ("awq+clip", "awq+clip+rtn"),
        ("none", "none"),
    ],
)
def test_method_syntax(text, canonical):
    r = Recipe(method=text, bits=4)
    assert r.method == canonical
    assert Recipe(method=r.method, bits=4) == r  # canonical names parse to themselves


@pytest.mark.parametrize(
    "text, message",
    [("gtpq", "unknown quantization method"), ("rtn+gptq", "two rounding"), ("awq+awq", "twice"), ("", "unknown")],
)
def test_method_mistakes_are_explained(text, message):
    with pytest.raises(ValueError, match=message):
        Recipe(method=text)


def test_recipe_fields_and_calibration_needs():
    assert Recipe(method="rtn", clip=True).method == "clip+rtn"
    assert Recipe(method="gptq").needs_calibration and Recipe(method="awq").needs_calibration
    assert not Recipe(method="clip").needs_calibration and Recipe(method="clip").uses_calibration
    assert Recipe(method="rtn", bits=None, target_bpw=3.5).uses_calibration
    assert not Recipe(method="rtn").uses_calibration
    assert Recipe.from_options(method="gptq", bits=None, target_bpw=3.2, keep=[("a*", 8)]).keep == (("a*", 8),)
    assert Recipe.from_options(method="rtn").bits == 4
    for bad in (
        dict(bits=9),
        dict(bits=1),
        dict(group_size=-1),
        dict(damp=0.0),
        dict(calib_samples=0),
        dict(keep=(("x", 12),)),
        dict(bits=None),
        dict(target_bpw=0.0),
        dict(tune_epochs=0),
    ):
        with pytest.raises(ValueError):
            Recipe(**bad)
    meta = Recipe(method="awq+gptq", keep=(("*fc1*", 6),), target_bpw=3.3).to_meta()
    assert msgpack.unpackb(msgpack.packb(meta)) == meta and meta["method"] == "awq+gptq"
    assert parse_method("none") is None
    # the tune stage's epochs are recorded for methods that tune, and only for them
    assert Recipe(method="gptq+tune", tune_epochs=4).to_meta()["tune_epochs"] == 4
    assert "tune_epochs" not in Recipe(method="gptq", tune_epochs=4).to_meta()
    # rotation: recorded when asked for; it cannot combine with AWQ's per-channel scales or with float export
    assert Recipe(method="gptq", rotate=True).to_meta()["rotate"] is True and "rotate" not in Recipe().to_meta()
    with pytest.raises(ValueError, match="rotation and AWQ"):
        Recipe(method="awq+gptq", rotate=True)
    with pytest.raises(ValueError, match="nothing to rotate"):
        Recipe(method="none", rotate=True)


@pytest.fixture(scope="module")
def librispeech(tmp_path_factory):
    """A LibriSpeech-layout tree: 2 speakers x 2 chapters x 3 utterances, with trans.txt files."""
    root = tmp_path_factory.mktemp("ls") / "train-clean-100"
    rng = np.random.default_rng(0)
    for spk in ("19", "26"):
        for chap in ("198", "495"):
            d = root / spk / chap
            d.mkdir(parents=True)
            lines = []
            for n in range(3):
                utt = f"{spk}-{chap}-{n:04d}"
                sf.write(d / f"{utt}.flac", (rng.standard_normal(1600 * (n + 1)) * 0.1).astype(np.float32), SAMPLE_RATE)
                lines.append(f"{utt} HELLO WORLD NUMBER {n}")
            (d / f"{spk}-{chap}.trans.txt").write_text("\n".join(lines) + "\n")
    return root


def test_librispeech_selection_is_seeded_and_has_transcripts(librispeech):
    files = list_audio_files(librispeech)
    assert len(files) == 12 and files == sorted(files)
    assert read_transcripts(librispeech)["19-198-0002"] == "HELLO WORLD NUMBER 2"
    a = select_calibration(librispeech, 5, seed=3)
    b = select_calibration(librispeech, 5, seed=3)
    c = select_calibration(librispeech, 5, seed=4)
    assert [i.id for i in a] == [i.id for i in b] != [i.id for i in c]
    assert [i.path for i in a] == sorted(i.path for i in a)
    assert all(np.array_equal(x.audio, y.audio) for x, y in zip(a, b))
    assert all(i.text and i.text.startswith("HELLO") and i.audio.dtype == np.float32 for i in a)
    assert len(select_calibration(librispeech, 100)) == 12  # fewer files than asked: all of them
    assert choose(12, 5, 3) == [i for i in range(12) if files[i].stem in {x.id for x in a}]


def test_plain_folder_of_audio(tmp_path):
    (tmp_path / "sub").mkdir()
    sf.write(tmp_path / "b.wav", np.zeros(800, np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "sub" / "a.flac", np.full(int(SAMPLE_RATE * (MAX_SECONDS + 2)), 0.1, np.float32), SAMPLE_RATE)
    sf.write(tmp_path / "c.wav", np.zeros(800, np.float32), 8000)  # resampled to 16 kHz
    (tmp_path / "notes.txt").write_text("not audio")
    items = select_calibration(tmp_path, 10)
    assert [i.path for i in items] == ["b.wav", "c.wav", "sub/a.flac"]
    assert all(i.text is None for i in items)
    assert len(items[1].audio) == 1600
    assert len(items[2].audio) == int(MAX_SECONDS * SAMPLE_RATE)  # cut at 30 s


def test_calibration_mistakes_are_clear(tmp_path):
    with pytest.raises(CalibrationError, match="does not exist"):
        select_calibration(tmp_path / "missing", 4)
    with pytest.raises(CalibrationError, match="no audio files"):
        select_calibration(tmp_path, 4)
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
    with pytest.raises(CalibrationError, match="cannot read"):
        select_calibration(tmp_path, 4)
    with pytest.raises(CalibrationError, match=">= 1"):
        choose(3, 0, 0)


def test_overlap_warning():
    calib = ["19-198-0001", "19-198-0002", "26-495-0000"]
    assert "2 of 3 evaluation utterances" in overlap_warning(calib, ["19-198-0001", "x/26-495-0000.flac", "1-2-3"])
    assert "speaker" in overlap_warning(calib, ["19-200-0001"])
    assert overlap_warning(calib, ["1272-128104-0000"]) is None
    assert overlap_warning([], ["a"]) is None
