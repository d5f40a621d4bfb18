"""One test per hostile input that once escaped as a traceback, a hang, a crash or garbage output.

Metadata of every wrong type through `wavq info`; WAV headers with absurd parameters; FIFOs, standard input and
unreadable files; `wavq-convert` on damaged checkpoints, unwritable or full disks and terminating signals; a .wq
truncated while memory-mapped; NaN in float tensors.
"""

from __future__ import annotations

import errno
import json
import math
import os
import struct
import subprocess
import sys
import textwrap
import threading
import zlib

import numpy as np
import pytest
from click.testing import CliRunner
from formats_helpers import rebuild, split, tensor_span

from wavq.formats import Encoding, InvalidValueError, TruncatedFileError, WqFile, WqWriter, quantize, write_wq
from wavq.runtime.audio import SOURCE_RATE_RANGE, AudioError, load_audio
from wavq.runtime.cli import main as wavq

RATE = 16_000
CONTROL = [chr(c) for c in range(32) if chr(c) not in "\n"] + ["\x7f", "\u202e"]  # \n: click's own line ends


def _no_traceback(r) -> None:
    """A CliRunner result that ended normally or by a ClickException, never by another exception."""
    assert r.exception is None or isinstance(r.exception, SystemExit), repr(r.exception)
    assert "Traceback" not in r.output


def _strict_json(text: str):
    def no_constant(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(text, parse_constant=no_constant)


def _model(path, meta: dict, names=("enc.fc.weight", "enc.fc.bias")) -> str:
    rng = np.random.default_rng(0)
    tensors = {names[0]: quantize(rng.normal(size=(8, 32)).astype(np.float32), 4, 16, False)[0]}
    tensors.update({n: np.zeros(8, np.float32) for n in names[1:]})
    write_wq(path, meta, tensors)
    return os.fspath(path)


def _nested(depth: int) -> list:
    v: list = [1]
    for _ in range(depth):
        v = [v]
    return v


# ---- wavq info ------------------------------------------------------------------------------------------------
WRONG_METADATA = [
    {"dims": [1, 2]},
    {"dims": "n_mels=80"},
    {"dims": {"d_model": math.nan, "x": [[[]]], "y": b"\x00"}},
    {"quantization": 4},
    {"quantization": {"tensor_bits": [4, 4]}},
    {"quantization": {"tensor_bits": {"enc.fc.weight": "four"}}},
    {"quantization": {"tensor_bits": {"enc.fc.weight": 4}, "tensor_group_size": "g16"}},
    {"quantization": {"tensor_bits": {"enc.fc.weight": 4}, "tensor_group_size": {"enc.fc.weight": 1.5}}},
    {"quantization": {"tensor_bits": {"enc.fc.weight": None}}},
    {"quantization": {"bits_per_weight": math.inf, "rotated": "yes"}},
    {"provenance": [1, 2, 3]},
    {"provenance": "hub"},
    {"architecture": ["whisper"]},
    {"architecture": None, "dims": None, "quantization": None, "provenance": None},
    {"dims": {"deep": _nested(40)}},
]


@pytest.mark.parametrize("meta", WRONG_METADATA, ids=range(len(WRONG_METADATA)))
def test_info_degrades_on_wrong_metadata_types(tmp_path, meta):
    path = _model(tmp_path / "m.wq", {"architecture": "whisper", **meta})
    for args in (["info", path], ["info", "--tensors", path]):
        r = CliRunner().invoke(wavq, args)
        _no_traceback(r)
        assert r.exit_code == 0, r.output
    r = CliRunner().invoke(wavq, ["info", "--json", "--tensors", path])
    _no_traceback(r)
    assert r.exit_code == 0
    _strict_json(r.output)


def test_info_reports_a_metadata_field_of_the_wrong_type(tmp_path):
    path = _model(tmp_path / "m.wq", {"architecture": "whisper", "dims": [1], "provenance": 3})
    out = CliRunner().invoke(wavq, ["info", path]).output
    assert "dims:          (not a map in this file)" in out and "provenance:    (not a map in this file)" in out


def test_info_escapes_control_characters(tmp_path):
    hostile = "".join(CONTROL) + "end"
    meta = {"architecture": "whisper" + hostile, "dims": {"n" + hostile: hostile}, "provenance": {"source": hostile}}
    path = _model(tmp_path / "m.wq", meta, names=("enc.fc.weight" + hostile, "bias" + hostile))
    for args in (["info", "--tensors", path], ["info", "--json", "--tensors", path]):
        r = CliRunner().invoke(wavq, args)
        assert r.exit_code == 0, r.output
        assert not any(c in r.output for c in CONTROL), repr(r.output)
    text = CliRunner().invoke(wavq, ["info", "--tensors", path]).output
    assert "\\x1b" in text and "\\u202e" in text  # escaped, not dropped
    assert _strict_json(CliRunner().invoke(wavq, ["info", "--json", path]).output)["provenance"]["source"] == hostile


def test_info_json_never_writes_nan(tmp_path):
    """No quantized tensor (bits/weight undefined), no parameters at all, NaN and inf in metadata: still JSON."""
    path = tmp_path / "f.wq"
    write_wq(path, {"architecture": "whisper", "quantization": {"x": math.nan, "y": -math.inf}}, {})
    r = CliRunner().invoke(wavq, ["info", "--json", str(path)])
    assert r.exit_code == 0, r.output
    out = _strict_json(r.output)
    assert out["quantized_bits_per_weight"] is None and out["overall_bits_per_parameter"] is None
    assert out["quantization"] == {"x": "nan", "y": "-inf"}
    r = CliRunner().invoke(wavq, ["info", str(path)])
    assert r.exit_code == 0 and "nan" not in r.output.split("quantization")[0]


# ---- NaN in tensors ---------------------------------------------------------------------------------------------
def _poison(buf: bytes, name: str, dtype: str, value: float) -> bytes:
    """Write `value` into the first element of float tensor `name`, with its CRC fixed (reaches the value check)."""
    start, nbytes, _ = tensor_span(buf, name)
    b = bytearray(buf)
    b[start : start + np.dtype(dtype).itemsize] = np.array([value], dtype).tobytes()
    _, header, _ = split(bytes(b))
    for e in header["tensors"]:
        if e["name"] == name:
            e["crc32"] = zlib.crc32(b[start : start + nbytes])
    return rebuild(header, split(bytes(b))[2])


@pytest.mark.parametrize("dtype", ["<f4", "<f2"])
@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_float_tensor_rejected_at_verify_and_first_use(tmp_path, dtype, value):
    clean = tmp_path / "clean.wq"
    write_wq(clean, {"architecture": "whisper"}, {"w": np.ones((4, 4), np.dtype(dtype)), "b": np.zeros(4, np.float32)})
    bad = tmp_path / "bad.wq"
    bad.write_bytes(_poison(clean.read_bytes(), "w", dtype, value))
    with WqFile(bad) as f:
        assert [p.tensor for p in f.verify()] == ["w"]
    with WqFile(bad) as f:
        with pytest.raises(InvalidValueError, match="'w' has a NaN or infinite value"):
            f.array("w")
        f.array("b")  # the other tensors stay usable
    r = CliRunner().invoke(wavq, ["verify", str(bad)])
    assert r.exit_code == 1 and "corrupt: w" in r.output


def test_writer_refuses_non_finite_float_tensors(tmp_path):
    with pytest.raises(ValueError, match="NaN or infinite"):
        write_wq(tmp_path / "x.wq", {}, {"w": np.array([1.0, np.nan], np.float32)})
    with pytest.raises(ValueError, match="NaN or infinite"):
        with WqWriter(tmp_path / "x.wq", {}) as w:
            w.add("w", np.array([1e6], np.float32), Encoding.F16)  # beyond float16's range
    assert not (tmp_path / "x.wq").exists()


# ---- a .wq changed underneath ------------------------------------------------------------------------------------
def test_file_truncated_while_open_raises_instead_of_sigbus(tmp_path):
    path = _model(tmp_path / "m.wq", {"architecture": "whisper"})
    with WqFile(path) as f:
        f.array("enc.fc.bias")
        os.truncate(path, f.data_start)  # another program cuts the file while it is mapped
        with pytest.raises(TruncatedFileError, match="shrank"):
            f.array("enc.fc.weight")
        with pytest.raises(TruncatedFileError, match="shrank"):
            f.array("enc.fc.bias")  # also a tensor checked before the cut
        with pytest.raises(TruncatedFileError):
            f.verify()


# ---- WAV headers ---------------------------------------------------------------------------------------------------
def _wav(frames: bytes, *, channels=1, rate=RATE, bits=16, tag=1, block=None, data_size=None) -> bytes:
    block = channels * bits // 8 if block is None else block
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block & 0xFFFFFFFF, block, bits)
    size = len(frames) if data_size is None else data_size
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", size) + frames
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _tone(n=3200) -> np.ndarray:
    return (0.3 * np.sin(2 * np.pi * 440 * np.arange(n) / RATE)).astype(np.float32)


def _pcm16(x: np.ndarray) -> bytes:
    return np.round(x * 32767).astype("<i2").tobytes()


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(bits=0, block=0), "0 bits"),
        (dict(bits=12, block=3), "12 bits, block 3"),
        (dict(bits=65, block=9), "65 bits"),
        (dict(bits=16, block=3), "block 3"),
        (dict(channels=0), "0 channels"),
        (dict(channels=65535, block=2), "65535 channels"),
        (dict(rate=1), "rate 1 Hz is outside"),
        (dict(rate=0), "rate 0 Hz"),
        (dict(rate=4294967295), "4294967295 Hz"),
        (dict(tag=0x55), "format tag 0x0055"),
        (dict(data_size=10**6), "declares 1000000 bytes"),
    ],
)
def test_wav_header_fields_are_validated(tmp_path, kwargs, match):
    path = tmp_path / "bad.wav"
    path.write_bytes(_wav(_pcm16(_tone()), **kwargs))
    with pytest.raises(AudioError, match=match):
        load_audio(path)


def test_wav_rates_accepted_are_a_stated_range_and_resampling_stays_proportional(tmp_path):
    lo, hi = SOURCE_RATE_RANGE
    for rate in (lo, hi):
        x = np.zeros(rate // 10, np.float32)  # 0.1 s
        y = load_audio(x, source_rate=rate)
        assert len(y) == RATE // 10  # output length follows the duration, whatever the source rate
    with pytest.raises(AudioError, match="outside"):
        load_audio(np.zeros(100, np.float32), source_rate=lo - 1)


def test_streaming_wav_with_placeholder_size_reads_to_the_end(tmp_path):
    x = _tone()
    path = tmp_path / "stream.wav"
    path.write_bytes(_wav(_pcm16(x), data_size=0xFFFFFFFF))
    np.testing.assert_allclose(load_audio(path), x, atol=1e-4)


def test_audio_bytes_are_decoded_from_memory():
    x = _tone()
    np.testing.assert_allclose(load_audio(_wav(_pcm16(x))), x, atol=1e-4)


# ---- FIFOs, standard input, unreadable files ------------------------------------------------------------------
def _feed_fifo(path, data: bytes) -> threading.Thread:
    def write():
        with open(path, "wb") as f:
            f.write(data)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_fifo_is_read_once(tmp_path):
    x = _tone()
    fifo = tmp_path / "in.wav"
    os.mkfifo(fifo)
    writer = _feed_fifo(fifo, _wav(_pcm16(x)))
    np.testing.assert_allclose(load_audio(fifo), x, atol=1e-4)
    writer.join(5)
    assert not writer.is_alive()


def test_stdin_dash(tmp_path):
    x = _tone()
    code = "import sys; from wavq.runtime.audio import load_audio; a = load_audio('-'); print(len(a), float(a[100]))"
    p = subprocess.run([sys.executable, "-c", code], input=_wav(_pcm16(x)), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    n, v = p.stdout.split()
    assert int(n) == len(x) and abs(float(v) - x[100]) < 1e-4


def test_unreadable_file_is_an_audio_error(tmp_path, monkeypatch):
    import wavq.runtime.audio as audio

    path = tmp_path / "secret.wav"
    path.write_bytes(_wav(_pcm16(_tone())))

    def denied(*args, **kwargs):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))

    monkeypatch.setattr(audio, "open", denied, raising=False)
    with pytest.raises(AudioError, match="cannot read .Permission denied"):
        load_audio(path)
    monkeypatch.undo()
    with pytest.raises(AudioError, match="File name too long"):
        load_audio(tmp_path / ("x" * 5000))


def test_unrecognised_audio_error_names_the_reason_not_a_buffer_object(tmp_path):
    pytest.importorskip("soundfile")
    path = tmp_path / "notes.wav"
    path.write_text("not audio\n")
    with pytest.raises(AudioError, match="not a readable audio file") as e:
        load_audio(path)
    assert "BytesIO" not in str(e.value) and " at 0x" not in str(e.value), str(e.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_mode(tmp_path):
    path = tmp_path / "secret.wav"
    path.write_bytes(_wav(_pcm16(_tone())))
    path.chmod(0)
    with pytest.raises(AudioError, match="Permission denied"):
        load_audio(path)


# ---- the tiny model: transcribe from a FIFO and from standard input ---------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    from tiny_models import convert_tiny, tiny_wav2vec2

    root = tmp_path_factory.mktemp("tiny")
    checkpoint = tiny_wav2vec2(root / "w2v")
    return checkpoint, convert_tiny(checkpoint, root / "w2v.wq")


def test_transcribe_reads_a_fifo_and_stdin(tmp_path, tiny):
    _, model = tiny
    audio = _wav(_pcm16(_tone(8000)))
    plain = tmp_path / "a.wav"
    plain.write_bytes(audio)
    expected = CliRunner().invoke(wavq, ["transcribe", model, str(plain)])
    assert expected.exit_code == 0, expected.output
    fifo = tmp_path / "in.fifo"
    os.mkfifo(fifo)
    writer = _feed_fifo(fifo, audio)
    r = CliRunner().invoke(wavq, ["transcribe", model, str(fifo)])
    writer.join(5)
    assert r.exit_code == 0 and r.output == expected.output
    cmd = [sys.executable, "-m", "wavq.runtime.cli", "transcribe", model, "-"]
    p = subprocess.run(cmd, input=audio, capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.decode() == expected.output


# ---- wavq-convert ------------------------------------------------------------------------------------------------
def _convert(*args):
    from wavq.converter.cli import main as convert_main

    return CliRunner().invoke(convert_main, [str(a) for a in args])


def _one_line_failure(r, *, output) -> None:
    assert r.exit_code == 1, r.output
    _no_traceback(r)
    # transformers may draw a progress bar first; the error itself is one line
    assert len([ln for ln in r.output.splitlines() if ln.startswith("Error: ")]) == 1, r.output
    assert not output.exists()
    assert not [n for n in os.listdir(output.parent) if n.endswith(".partial")]


def _copy_checkpoint(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_convert_truncated_safetensors(tmp_path, tiny):
    ckpt = _copy_checkpoint(tiny[0], tmp_path / "ckpt")
    weights = ckpt / "model.safetensors"
    data = weights.read_bytes()
    for cut in (len(data) // 2, 4):
        weights.write_bytes(data[:cut])
        _one_line_failure(_convert(ckpt, "-o", tmp_path / "out.wq", "-q"), output=tmp_path / "out.wq")


def test_convert_corrupt_torch_checkpoint(tmp_path, tiny):
    """Random blobs are seeded so a failure names the bytes that caused it: about one blob in five once made
    torch's weights-only unpickler raise IndexError or KeyError instead of its own error."""
    ckpt = _copy_checkpoint(tiny[0], tmp_path / "ckpt")
    os.unlink(ckpt / "model.safetensors")
    blobs = [np.random.default_rng(seed).bytes(4096) for seed in range(8)]
    for junk in (b"PK\x03\x04 not a zip", b"", *blobs):
        (ckpt / "pytorch_model.bin").write_bytes(junk)
        r = _convert(ckpt, "-o", tmp_path / "out.wq", "-q")
        _one_line_failure(r, output=tmp_path / "out.wq")
        assert "weights_only` set to `False`" not in r.output  # torch's advice to unpickle unsafely


@pytest.mark.parametrize("err", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_convert_unwritable_or_full_output(tmp_path, tiny, monkeypatch, err):
    """A read-only directory fails when the writer creates its spool; a full disk when it writes to it."""
    import tempfile

    real = tempfile.TemporaryFile

    class Full:
        def __init__(self, f):
            self.f = f
            self.closed = False

        def write(self, b):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        def close(self):
            self.closed = True
            self.f.close()

    def spool(*args, **kwargs):
        if err == errno.ENOSPC:
            return Full(real(*args, **kwargs))
        raise OSError(err, os.strerror(err), kwargs.get("dir"))

    monkeypatch.setattr(tempfile, "TemporaryFile", spool)
    r = _convert(tiny[0], "-o", tmp_path / "out.wq", "-q")
    _one_line_failure(r, output=tmp_path / "out.wq")
    assert os.strerror(err) in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_convert_read_only_directory(tmp_path, tiny):
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    try:
        _one_line_failure(_convert(tiny[0], "-o", out / "x.wq", "-q"), output=out / "x.wq")
    finally:
        out.chmod(0o755)


_KILL_WHILE_WRITING = textwrap.dedent(
    """
    import os, signal, sys, time
    real_fsync = os.fsync

    def fsync(fd):  # the partial file is complete on disk: the signal arrives just before the rename
        real_fsync(fd)
        os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        time.sleep(30)

    os.fsync = fsync
    from wavq.converter.cli import main
    main(sys.argv[2:], prog_name="wavq-convert")
    """
)


def _convert_killed(signame: str, ckpt, out) -> subprocess.CompletedProcess:
    args = [sys.executable, "-c", _KILL_WHILE_WRITING, signame, str(ckpt), "-o", str(out), "-q"]
    return subprocess.run(args, capture_output=True, text=True, timeout=300)


def _partials(directory) -> list[str]:
    return [n for n in os.listdir(directory) if n.endswith(".partial")]


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGHUP"])
def test_convert_terminated_leaves_no_partial_file(tmp_path, tiny, signame):
    out = tmp_path / "out.wq"
    p = _convert_killed(signame, tiny[0], out)
    signum = getattr(__import__("signal"), signame)
    assert p.returncode == 128 + signum, p.stderr
    assert "Traceback" not in p.stderr and f"Aborted ({signame})" in p.stderr
    assert not out.exists() and _partials(tmp_path) == []


def test_convert_killed_partial_is_removed_by_the_next_run(tmp_path, tiny):
    out = tmp_path / "out.wq"
    p = _convert_killed("SIGKILL", tiny[0], out)
    assert p.returncode == -9
    (left,) = _partials(tmp_path)
    assert left.startswith(".out.wq.")
    dead_pid = left.split(".")[3]  # .out.wq.PID.RANDOM.partial
    other = tmp_path / f".other.wq.{dead_pid}.x.partial"  # another output's partial: not this run's to remove
    other.write_bytes(b"")
    r = _convert(tiny[0], "-o", out, "-q")
    assert r.exit_code == 0, r.output
    assert f"removed {tmp_path / left}, left by an interrupted conversion" in r.output
    assert _partials(tmp_path) == [other.name]
    WqFile(out).close()
