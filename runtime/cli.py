"""`wavq`: inspect, verify, and run .wq models. Parses, calls the library, prints."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter

import click

from ..formats import FormatError, WqFile
from .audio import AudioError
from .kernel import kernel_status
from .writers import OUTPUT_FORMATS, write_result


def _user_errors(fn):
    """User mistakes (bad files, bad audio, bad folders) become one-line errors with exit status 1."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (FormatError, AudioError) as e:
            raise click.ClickException(str(e)) from None
        except ValueError as e:  # options the model rejects (e.g. a language an English-only model lacks), DatasetError
            raise click.ClickException(str(e)) from None
        except OSError as e:
            raise click.ClickException(_one_line(e)) from None

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="wavq", message="%(prog)s %(version)s\n" + kernel_status())
def main() -> None:
    """Run and inspect wavq models (.wq files) with numpy alone."""


def _mib(n: float) -> str:
    return f"{n / 2**20:.2f} MiB"


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--tensors", is_flag=True, help="Also list every tensor with its encoding and size.")
@click.option("--json", "as_json", is_flag=True, help="Print machine-readable JSON instead of text.")
@click.option(
    "--compute",
    "show_compute",
    is_flag=True,
    help="Print the compute account instead: MACs and bit-operations per second of audio by part, weight bytes "
    "per token and per window, peak activation bytes, and which products run on integer codes.",
)
@_user_errors
def info(file: str, tensors: bool, as_json: bool, show_compute: bool) -> None:
    """Architecture, size, bits per weight, recipe and provenance of FILE."""
    from .info import encoding_label, summarize

    if show_compute:
        _info_compute(file, as_json)
        return
    with WqFile(file) as f:
        s = summarize(f)
        meta = f.meta
        rows = [(t.name, list(t.shape), encoding_label(t), t.nbytes) for t in f.tensors.values()]
        n_rotated = sum(bool(t.rotation) for t in f.tensors.values())
    if as_json:
        _info_json(file, s, meta, rows if tensors else None)
    else:
        _info_text(file, s, meta, rows, n_rotated, tensors)


def _info_compute(file: str, as_json: bool) -> None:
    from .info import compute_report

    with WqFile(file) as f:
        r = compute_report(f)
    if as_json:
        click.echo(json.dumps(r, indent=2, allow_nan=False))
        return
    per_s = r["per_audio_second"]
    scope = ", encoder and cross K/V" if "per_token" in r else ""
    click.echo(f"per second of audio ({r['window_seconds']:.0f}-s window{scope}):")
    for part in per_s["macs"]:
        click.echo(
            f"  {part:<22} {per_s['macs'][part] / 1e6:12.1f} M MACs {per_s['bitops'][part] / 1e9:12.1f} G bit-ops"
        )
    total_macs, total_bits = sum(per_s["macs"].values()), sum(per_s["bitops"].values())
    click.echo(f"  {'total':<22} {total_macs / 1e6:12.1f} M MACs {total_bits / 1e9:12.1f} G bit-ops")
    if "per_token" in r:
        tok = r["per_token"]
        tok_bits = sum(tok["bitops"].values())
        click.echo(f"per decoded token:       {tok['total_macs'] / 1e6:.2f} M MACs {tok_bits / 1e9:.2f} G bit-ops")
    wb = r["weight_bytes"]
    click.echo("weight bytes read:       " + ", ".join(f"{_mib(v)} {k.replace('_', ' ')}" for k, v in wb.items()))
    click.echo(f"peak activation bytes:   {_mib(r['peak_activation_bytes'])}")
    click.echo(f"bit-ops vs f32 x f32:    {r['bitops_vs_float']:.4f}")
    click.echo(f"integer products:        {len(r['integer_products'])} weights (codes x activation codes)")
    click.echo(f"float products:          {', '.join(r['float_products']) or 'none'}; softmax, norms, activations")


def _info_json(file: str, s, meta: dict, rows: list | None) -> None:
    from .info import finite_or_none, json_value

    out = {
        "file": file,
        "architecture": s.architecture,
        "file_size": s.file_size,
        "parameters": s.n_params,
        "quantized_parameters": s.n_quantized,
        "quantized_bits_per_weight": finite_or_none(s.quantized_bpw),
        "overall_bits_per_parameter": finite_or_none(s.overall_bpw),
        "by_role": s.by_role,
        "by_encoding": s.by_encoding,
        "dims": json_value(meta.get("dims")),
        "quantization": json_value(meta.get("quantization")),
        "provenance": json_value(meta.get("provenance")),
        **_languages_json(meta),
        "runtime": kernel_status(),
    }
    if rows is not None:
        out["tensors"] = [dict(zip(("name", "shape", "encoding", "bytes"), r)) for r in rows]
    click.echo(json.dumps(out, indent=2, allow_nan=False))


def _languages_json(meta: dict) -> dict:
    from .info import languages

    langs = languages(meta)
    if langs is None:
        return {"multilingual": None, "languages": None}
    return {"multilingual": langs.multilingual, "languages": langs.names}


def _languages_text(meta: dict) -> None:
    from .info import languages, printable

    langs = languages(meta)
    if langs is None:  # a CTC model writes what its vocabulary spells; the header names no language
        return
    if not langs.multilingual:
        click.echo("languages:     English only (not multilingual)")
        return
    codes = ", ".join(printable(c) for c in langs.names)
    click.echo(f"languages:     multilingual, {len(langs.names)}: {codes}")


def _info_text(file: str, s, meta: dict, rows: list, n_rotated: int, tensors: bool) -> None:
    from .info import int_map, meta_map, printable

    invalid = "(not a map in this file)"
    click.echo(f"file:          {printable(file)} ({_mib(s.file_size)})")
    click.echo(f"architecture:  {printable(s.architecture)}")
    dims = meta_map(meta, "dims")
    if dims is None or dims:
        click.echo("dims:          " + (invalid if dims is None else _pairs(dims)))
    _languages_text(meta)
    click.echo(f"parameters:    {s.n_params:,} ({s.n_quantized:,} quantized)")
    if s.n_quantized:
        click.echo(
            f"bits/weight:   {s.quantized_bpw:.3f} over quantized tensors (codes or codebook indices, scales, zero "
            "points, codebooks, offset rows and float columns)"
        )
    if s.n_params:
        click.echo(f"bits/param:    {s.overall_bpw:.3f} over the whole file")
    click.echo("by role:")
    for role, (count, params, nbytes) in sorted(s.by_role.items(), key=lambda kv: -kv[1][2]):
        click.echo(f"  {role:<38} {count:>5} tensors {params:>13,} params {_mib(nbytes):>12}")
    click.echo("by encoding:")
    for label, (count, params, nbytes) in sorted(s.by_encoding.items(), key=lambda kv: -kv[1][2]):
        click.echo(f"  {label:<38} {count:>5} tensors {params:>13,} params {_mib(nbytes):>12}")
    q = dict(meta_map(meta, "quantization") or {})
    if meta_map(meta, "quantization") is None:
        click.echo(f"quantization:  {invalid}")
    allocation = int_map(q.pop("tensor_bits", None))
    group_of = int_map(q.pop("tensor_group_size", None))
    rotated = q.pop("rotated", None)
    if q:
        click.echo("quantization:  " + _pairs({k: v for k, v in q.items() if not isinstance(v, dict)}))
    if allocation is None or group_of is None:
        click.echo("bit allocation: (tensor_bits or tensor_group_size is not a map of integers in this file)")
    elif allocation:
        _bit_allocation(allocation, group_of, tensors)
    if rotated is not None or n_rotated:  # how many tensors are stored under a rotation (SPEC.md 5.4)
        click.echo(f"rotated:       {n_rotated} quantized tensors stored under a block Hadamard rotation")
    prov = meta_map(meta, "provenance")
    if prov is None or prov:
        click.echo("provenance:    " + (invalid if prov is None else _pairs(prov)))
    click.echo(f"runtime:       {kernel_status()}")
    if tensors:
        click.echo("tensors:")
        for name, shape, label, nbytes in rows:
            click.echo(f"  {printable(name):<60} {str(tuple(shape)):<18} {label:<38} {nbytes:>10,} B")


def _pairs(d: dict) -> str:
    from .info import printable

    return ", ".join(f"{printable(k)}={printable(v)}" for k, v in d.items())


def _bit_allocation(allocation: dict[str, int], group_of: dict[str, int], tensors: bool) -> None:
    from .info import printable

    def label(name):
        g = group_of.get(name)
        return f"{allocation[name]} bits" + ("" if g is None else f", {'per channel' if g == 0 else f'group {g}'}")

    # numeric order (per channel last); Counter keeps the order labels first appear in
    labels = {n: label(n) for n in sorted(allocation, key=lambda n: (allocation[n], group_of.get(n) or 1 << 40))}
    counts = Counter(labels.values())
    click.echo("bit allocation: " + ", ".join(f"{n} tensors at {k}" for k, n in counts.items()))
    if len(counts) > 1 or tensors:
        width = max(map(len, counts))
        for name in allocation:
            click.echo(f"  {labels[name]:<{width}}  {printable(name)}")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@_user_errors
def verify(file: str) -> None:
    """Check FILE completely: structure, header checksum and every tensor's checksum and values."""
    from .info import printable

    with WqFile(file) as f:
        problems = f.verify()
        n = len(f.tensors)
    if problems:
        for p in problems:
            click.echo(f"corrupt: {printable(p.tensor)}", err=True)
        raise click.ClickException(f"{file}: {len(problems)} of {n} tensors are corrupt")
    click.echo(f"{file}: ok ({n} tensors, checksums match)")


class _ByteSize(click.ParamType):
    """A memory size: bytes, or a number with a unit (KB, MB, GB: powers of 1000; KiB, MiB, GiB: of 1024)."""

    name = "size"
    _UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}

    def convert(self, value, param, ctx) -> int:
        if isinstance(value, int):
            return value
        text = str(value).strip().upper()
        number = text.rstrip("KMGIB ")
        try:
            size = float(number) * self._UNITS[text[len(number) :].strip()]
        except (KeyError, ValueError):
            self.fail(f"{value!r} is not a memory size (e.g. 150MB, 1.5GiB, 0)", param, ctx)
        if size < 0:
            self.fail(f"{value!r} is negative", param, ctx)
        return int(size)


def _transcribe_options(
    model, beam_size: int = 1, language: str | None = None, task: str = "transcribe", **more
) -> dict:
    """The transcribe() keywords the user set (options left at their defaults are the model's own defaults).
    A Whisper-only option given for a CTC model is a usage error naming the option."""
    from .wav2vec2 import WHISPER_ONLY_OPTIONS

    opts = {"beam_size": beam_size, "task": task, "language": language, **more}
    defaults = {**WHISPER_ONLY_OPTIONS, "word_timestamps": False, "vad": False}
    opts = {k: v for k, v in opts.items() if v is not None and v != defaults.get(k)}
    arch = model.meta.get("architecture")
    if arch != "whisper":
        given = [_flag(k, v) for k, v in opts.items() if k in WHISPER_ONLY_OPTIONS]
        if given:
            raise click.UsageError(f"{', '.join(given)} apply to Whisper models only; this is a {arch} model")
    return opts


def _flag(keyword: str, value) -> str:
    """The command-line option that sets a transcribe() keyword to `value`."""
    name = keyword.replace("_", "-")
    return f"--no-{name}" if value is False else f"--{name}"


def _set_threads(ctx, param, value: int | None) -> int | None:
    """--threads for what reads it at run time (the compiled kernel). The BLAS libraries read their variables
    when numpy loads; the `wavq` command (wavq/__main__.py) sets those before importing anything."""
    if value is not None:
        from .kernel import THREADS_ENV

        os.environ[THREADS_ENV] = str(value)
    return value


_model_options = [
    click.option(
        "--beam-size",
        default=1,
        show_default=True,
        type=click.IntRange(1, 16),
        help="Beam width (Whisper); 1 is greedy decoding.",
    ),
    click.option("--language", default=None, help="Language code for multilingual Whisper (detected if omitted)."),
    click.option(
        "--task",
        type=click.Choice(["transcribe", "translate"]),
        default="transcribe",
        show_default=True,
        help="Whisper task.",
    ),
    click.option(
        "--cache/--low-memory",
        default=False,
        show_default=True,
        help="Keep dequantized weights in memory (faster) or dequantize each layer as it is used.",
    ),
    click.option(
        "--threads",
        type=click.IntRange(1),
        default=None,
        expose_value=False,
        callback=_set_threads,
        help="Threads for matrix products (BLAS and the compiled kernel); default: the libraries' own choice.",
    ),
    click.option(
        "--max-memory",
        type=_ByteSize(),
        default=None,
        help="Keep dequantized weights up to this much memory, e.g. 150MB (the most re-read first; overrides --cache).",
    ),
]


def _with_model_options(fn):
    for opt in reversed(_model_options):
        fn = opt(fn)
    return fn


# Extensions of the audio files a folder given to `wavq transcribe` is searched for (WAV, and what soundfile reads).
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
STDIN_NAME = "stdin"  # the transcript files of "-" are named stdin.<format>


def _audio_inputs(paths: tuple[str, ...]) -> tuple[list[tuple[str, str]], list[str]]:
    """([(audio path, transcript name)], errors): files and "-" as given, named by their stem; folders walked
    (sorted, hidden entries skipped) for AUDIO_EXTENSIONS, named by their path inside the folder."""
    inputs: list[tuple[str, str]] = []
    errors: list[str] = []
    for path in paths:
        if path == "-":
            inputs.append((path, STDIN_NAME))
        elif os.path.isdir(path):

            def unreadable(e: OSError) -> None:
                errors.append(f"{e.filename}: {e.strerror}")

            for root, dirs, files in os.walk(path, onerror=unreadable):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(files):
                    if not name.startswith(".") and name.lower().endswith(AUDIO_EXTENSIONS):
                        full = os.path.join(root, name)
                        inputs.append((full, os.path.splitext(os.path.relpath(full, path))[0]))
        else:
            inputs.append((path, os.path.splitext(os.path.basename(path))[0]))
    return inputs, errors


def _writable_dir(path: str) -> None:
    """Create `path` if needed and check that files can be created in it, before any transcription runs."""
    import tempfile

    os.makedirs(path, exist_ok=True)
    with tempfile.TemporaryFile(dir=path):
        pass


@main.command()
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.argument("inputs", metavar="FILES|DIRS|-", nargs=-1, required=True, type=click.Path())
@_with_model_options
@click.option(
    "--output-format",
    "-f",
    type=click.Choice(OUTPUT_FORMATS),
    default=None,
    help="Write transcript files in this format (all: every one) instead of printing the text.  [default with -o: all]",
)
@click.option(
    "-o",
    "--output-dir",
    type=click.Path(file_okay=False),
    default=None,
    help="Folder for the transcript files (created if needed; a folder input's layout is kept).  [default: .]",
)
@click.option("--word-timestamps", is_flag=True, help="Time every word (subtitle cues then follow the words).")
@click.option(
    "--temperature",
    type=click.FloatRange(0.0),
    default=None,
    help="Sample at this one temperature (Whisper).  [default: 0, falling back to 0.2 ... 1.0 on failure]",
)
@click.option(
    "--no-speech-threshold",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="A window whose no-speech probability is above this (and whose text is unlikely) is silence (Whisper).  "
    "[default: 0.6]",
)
@click.option(
    "--condition-on-previous-text/--no-condition-on-previous-text",
    default=True,
    show_default=True,
    help="Prompt each window with the text before it (Whisper); off avoids repetition loops.",
)
@click.option("--initial-prompt", default=None, help="Text that prompts the first window: spellings, style (Whisper).")
@click.option("--vad", is_flag=True, help="Transcribe only the regions voice activity detection finds as speech.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file (text, segments, language).")
@_user_errors
def transcribe(
    model_path,
    inputs,
    beam_size,
    language,
    task,
    cache,
    max_memory,
    output_format,
    output_dir,
    word_timestamps,
    temperature,
    no_speech_threshold,
    condition_on_previous_text,
    initial_prompt,
    vad,
    as_json,
) -> None:
    """Transcribe audio FILES (folders: every audio file in them; -: standard input) with MODEL.

    Prints the text, or with --output-format / -o writes txt, srt, vtt, tsv or json files and prints their paths.
    A file that fails is reported on one line and the others go on; the exit status is then 1.
    """
    from . import load
    from .audio import load_audio

    write = output_format is not None or output_dir is not None
    if write and as_json:
        raise click.UsageError("--json prints the transcripts; to write JSON files use --output-format json")
    output_dir = output_dir or "."
    if write:
        _writable_dir(output_dir)
    files, failures = _audio_inputs(inputs)
    for message in failures:
        click.echo(f"error: {message}", err=True)
    if not files:
        raise click.ClickException("no audio files found in " + ", ".join(inputs))
    model = load(model_path, cache=cache, max_memory=max_memory)
    opts = _transcribe_options(
        model,
        beam_size,
        language,
        task,
        word_timestamps=word_timestamps,
        temperature=None if temperature is None else (temperature,),
        no_speech_threshold=no_speech_threshold,
        condition_on_previous_text=condition_on_previous_text,
        initial_prompt=initial_prompt,
        vad=vad,
    )
    names: dict[str, str] = {}
    n_failed = len(failures)
    show_bar = len(files) > 1 and sys.stderr.isatty()
    with click.progressbar(files, label="transcribing", file=sys.stderr, hidden=not show_bar) as bar:
        for path, name in bar:
            try:
                if write and name in names:
                    raise ValueError(f"{path}: its transcript would replace that of {names[name]} (same name)")
                names[name] = path
                result = model.transcribe(load_audio(path), **opts)
                if write:
                    where = os.path.join(output_dir, os.path.dirname(name))
                    for written in write_result(result, os.path.basename(name), where, output_format or "all"):
                        click.echo(written)
                elif as_json:
                    click.echo(json.dumps({"file": path, **result.to_dict()}, ensure_ascii=False))
                elif len(files) > 1:
                    click.echo(f"{path}\t{result.text}")
                else:
                    click.echo(result.text)
            except (AudioError, ValueError, OSError) as e:
                n_failed += 1
                click.echo(f"error: {_one_line(e)}", err=True)
    if n_failed:
        raise click.ClickException(f"{n_failed} of {len(files) + len(failures)} inputs could not be transcribed")


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return f"{e.filename or ''}: {e.strerror}".lstrip(": ")
    return str(e).splitlines()[0] if str(e) else type(e).__name__


@main.command(name="eval")
@click.argument("model_path", metavar="MODEL", type=click.Path(dir_okay=False))
@click.option(
    "--data",
    required=True,
    type=click.Path(file_okay=False),
    help="LibriSpeech-layout directory (or a subset folder inside one).",
)
@click.option("--subset", default=None, help="Subset folder under --data, e.g. test-clean.")
@click.option("--limit", type=click.IntRange(1), default=None, help="Evaluate only the first N utterances (by id).")
@_with_model_options
@click.option(
    "--batch-size",
    type=click.IntRange(1, 64),
    default=None,
    help="Whisper: decode N utterances together, short-form without timestamps (as transformers' generate) "
    "[default: 1: one at a time through the timestamp seek loop].",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also write the results, with every transcript, to this JSON file.",
)
@_user_errors
def eval_(model_path, data, subset, limit, beam_size, language, task, cache, max_memory, batch_size, json_path) -> None:
    """Word error rate, real-time factor and peak memory of MODEL on transcribed speech."""
    import importlib.util
    import time

    if importlib.util.find_spec("jiwer") is None:  # scoring comes after every transcription: check first
        raise click.ClickException("wavq eval needs jiwer, which is not installed: pip install 'wavq[eval]'")
    # the measurement layer (the `eval` extra), outside the runtime: imported only when this command runs
    from wavq.evaluation import evaluate, normalizer_for
    from wavq.evaluation.datasets import find_utterances, overlap_warning

    from . import load

    utts = [u for u in find_utterances(data, subset) if u.text is not None]
    if not utts:
        raise click.ClickException(f"{data}: no utterances with transcripts (*.trans.txt) found")
    utts = utts[:limit] if limit else utts
    t0 = time.perf_counter()
    model = load(model_path, cache=cache, max_memory=max_memory)
    load_s = time.perf_counter() - t0
    opts = _transcribe_options(model, beam_size, language, task)
    try:
        normalizer_for(model.meta.get("architecture", ""))  # whisper-normalizer, for Whisper models
    except RuntimeError as e:
        raise click.ClickException(str(e)) from None
    if batch_size and batch_size > 1 and model.meta.get("architecture") == "whisper":
        # one decoder pass per step serves the whole batch; batching is short-form decoding (no timestamps)
        opts.update(batch_size=batch_size, without_timestamps=True)
    calib_ids = ((model.meta.get("quantization") or {}).get("calibration") or {}).get("ids") or []
    overlap = overlap_warning(calib_ids, [u.id for u in utts])
    if overlap:
        click.echo(f"warning: {overlap}", err=True)
    with click.progressbar(
        length=len(utts), label="evaluating", file=sys.stderr, hidden=not sys.stderr.isatty()
    ) as bar:
        try:
            r = evaluate(model, utts, opts, on_progress=bar.update)
        except RuntimeError as e:
            raise click.ClickException(str(e)) from None
    click.echo(f"model          {model_path}")
    click.echo(f"utterances     {r.n_utterances} ({r.n_words} words, {r.audio_seconds:.1f} s of audio)")
    click.echo(f"WER            {100 * r.wer:.2f} %")
    click.echo(f"RTF            {r.rtf:.3f} (compute {r.compute_seconds:.1f} s)")
    click.echo(f"load time      {load_s:.2f} s")
    click.echo(f"peak RSS       {r.peak_rss_mb:.0f} MiB")
    click.echo(f"MACs/s audio   {r.macs_per_audio_second / 1e9:.3f} G (measured)")
    click.echo(f"bit-ops/s      {r.bitops_per_audio_second / 1e12:.3f} T (MACs x weight bits x activation bits)")
    if json_path:
        out = {
            "model": os.path.basename(model_path),
            "data": subset or os.path.basename(os.path.normpath(data)),
            "wer": r.wer,
            "n_utterances": r.n_utterances,
            "n_words": r.n_words,
            "audio_seconds": r.audio_seconds,
            "compute_seconds": r.compute_seconds,
            "rtf": r.rtf,
            "load_seconds": load_s,
            "peak_rss_mb": r.peak_rss_mb,
            "macs_per_audio_second": r.macs_per_audio_second,
            "bitops_per_audio_second": r.bitops_per_audio_second,
            "macs_by_part": r.counts.macs,
            "bitops_by_part": r.counts.bitops,
            "options": opts,
            "utterances": r.hypotheses,
        }
        tmp = json_path + ".partial"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(out, fh, indent=1, ensure_ascii=False)
        os.replace(tmp, json_path)


def _study(name: str, attr: str, summary: str) -> None:
    """`wavq NAME` runs wavq.study's command, imported only when called: the runtime never needs the study."""

    @main.command(name=name, help=summary, add_help_option=False, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def run(args) -> None:
        try:
            from wavq.study import cli as study
        except ImportError as e:
            raise click.ClickException(f"wavq {name} needs {e.name}: pip install 'wavq[sweep,plot]'") from None
        getattr(study, attr).main(list(args), prog_name=f"wavq {name}")


_study("sweep", "sweep", "Convert and evaluate a grid of recipes (wavq.study; the sweep extra).")
_study("report", "report", "Report and plots from a sweep's results (wavq.study; the plot extra).")
_study("sweep-import", "sweep_import", "Import a benchmark table's rows into a sweep's results (wavq.study).")


if __name__ == "__main__":  # pragma: no cover
    main(prog_name="wavq")
