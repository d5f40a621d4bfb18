"""`wavq-convert`: Hugging Face checkpoint -> one .wq file. Parses, calls the library, prints."""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import sys
import threading

import click

from ..formats.constants import MAX_BITS, MIN_BITS, VQ_DIMS
from ..formats.errors import OutputExistsError
from ..formats.writer import stale_partials
from .quant.recipe import (
    DEFAULT_CALIB_SAMPLES,
    DEFAULT_OUTLIER_COLUMNS,
    DEFAULT_TUNE_EPOCHS,
    DEFAULT_VQ_DIM,
    MAX_OUTLIER_COLUMNS,
)
from .registry import ConversionError

# Signals that end a conversion like Ctrl-C does: the writer's cleanup runs and removes its partial file.
_TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_MAX_MESSAGE_CHARS = 300  # a library's error message is cut to one line of this length


def _load_errors() -> tuple[type[BaseException], ...]:
    """What loading a damaged checkpoint raises: OSError (also a read-only directory or a full disk when
    writing), torch.load's RuntimeError / pickle errors / EOFError, safetensors' own error type."""
    errors: tuple[type[BaseException], ...] = (OSError, RuntimeError, EOFError, pickle.UnpicklingError)
    try:
        from safetensors import SafetensorError

        errors += (SafetensorError,)
    except ImportError:  # pragma: no cover - safetensors comes with transformers
        pass
    return errors


# What the `convert` extra provides and the converter imports; torch first: it is installed separately (README).
_CONVERT_EXTRA = ("torch", "transformers", "safetensors")


def _require_extra() -> None:
    """One line naming the missing package instead of a traceback from deep inside the converter."""
    for name in _CONVERT_EXTRA:
        try:
            importlib.import_module(name)
        except ImportError:
            raise click.ClickException(
                f"wavq-convert needs {name}, which is not installed: install torch (a CPU wheel will do), "
                "then pip install 'wavq[convert]'"
            ) from None


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        where = e.filename or ""
        return f"{where}: {e.strerror}" if where else e.strerror
    if isinstance(e, pickle.UnpicklingError) and "WeightsUnpickler error:" in str(e):
        # torch's refusal opens with advice to turn weights_only off, wrong for a damaged file: give its reason
        reason = str(e).split("WeightsUnpickler error:", 1)[1].strip().split("\n\n")[0].strip()
        return f"torch.load (weights only) cannot read the checkpoint: {reason or type(e).__name__}"
    lines = str(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 3] + "..."


class _Terminated(BaseException):
    """Raised by the signal handler: unwinds like KeyboardInterrupt, so every cleanup on the way runs."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


@contextlib.contextmanager
def _terminate_cleanly():
    """SIGTERM and SIGHUP raise _Terminated (the writer removes its partial file) instead of killing the
    process on the spot; the previous handlers come back afterwards."""

    def handler(signum, frame):
        raise _Terminated(signum)

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {s: signal.signal(s, handler) for s in _TERMINATING_SIGNALS}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _remove_stale_partials(output: str) -> None:
    """A run killed by SIGKILL cannot clean up: its ".NAME.PID.*.partial" is removed by the next run into the
    same output name (only when that PID no longer runs)."""
    for path in stale_partials(output):
        try:
            os.unlink(path)
            click.echo(f"removed {path}, left by an interrupted conversion", err=True)
        except OSError as e:
            click.echo(f"warning: cannot remove {path}, left by an interrupted conversion: {e.strerror}", err=True)


def _parse_keep(ctx, param, values) -> list[tuple[str, int]]:
    out = []
    for v in values:
        pattern, sep, bits = v.rpartition("=")
        if not sep or not pattern or not bits.isdigit() or not (2 <= int(bits) <= 8 or int(bits) in (16, 32)):
            raise click.BadParameter(f"{v!r}: expected PATTERN=BITS with BITS from 2 to 8, or 16/32 to keep it float")
        out.append((pattern, int(bits)))
    return out


def _parse_groups(ctx, param, value) -> tuple[int, ...]:
    if value is None:
        return ()
    parts = [p.strip() for p in value.split(",")]
    if not all(p.isdigit() for p in parts):
        raise click.BadParameter(f"{value!r}: expected comma-separated group sizes, e.g. 64,128 (0 = per channel)")
    return tuple(int(p) for p in parts)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("source")
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="The .wq file to write.")
@click.option(
    "--bits",
    type=click.FloatRange(2, 8),
    default=None,
    help="Quantize weights to this many bits (2-8; fractional only with --method vq, where bits * --vq-dim "
    "index bits address a codebook, e.g. 2.5). Without --bits or --target-bpw: no quantization.",
)
@click.option(
    "--method",
    default=None,
    show_default="rtn when quantizing",
    help="rtn, gptq, awq, or a '+' combination such as awq+clip+gptq; 'clip' adds range clipping search, "
    "'tune' (e.g. gptq+tune) then distils the float model into the scales and norms. 'vq': codebook vectors "
    "with GPTQ-style compensation (with --rotate only).",
)
@click.option(
    "--vq-dim",
    type=click.Choice([str(d) for d in VQ_DIMS]),
    default=str(DEFAULT_VQ_DIM),
    show_default=True,
    help="With --method vq: weights per codebook vector.",
)
@click.option(
    "--group-size",
    type=click.IntRange(0),
    default=128,
    show_default=True,
    help="Input columns per scale; 0 = one scale per output channel.",
)
@click.option(
    "--asym/--sym",
    default=True,
    show_default="--asym",
    help="Asymmetric codes with a zero point per group, or symmetric codes (zero point fixed at the middle "
    "code; 1/32 bit per weight less at group 128, but a larger error on Whisper's skewed groups).",
)
@click.option(
    "--target-bpw",
    type=click.FloatRange(2.0, 9.0),
    default=None,
    help="Mixed precision: choose bits per tensor to average this many bits per weight (scales included).",
)
@click.option(
    "--mixed-groups",
    callback=_parse_groups,
    default=None,
    metavar="G1,G2,...",
    help="With --target-bpw: group sizes each tensor may also use (0 = per channel), chosen with its bits; "
    "e.g. 64 lets a tensor take 3 bits in groups of 64 (3.30 bits/weight) instead of 4 bits.",
)
@click.option(
    "--min-bits",
    "mixed_min_bits",
    type=click.IntRange(MIN_BITS, MAX_BITS),
    default=MIN_BITS,
    show_default=True,
    help="With --target-bpw: the fewest bits the allocation may give a tensor (--keep pins are exempt); "
    "3 keeps every tensor off 2 bits and spends the budget on fewer 4-bit tensors instead.",
)
@click.option(
    "--keep",
    "keep",
    multiple=True,
    callback=_parse_keep,
    metavar="PATTERN=BITS",
    help="Pin tensors whose name matches the glob PATTERN to BITS (repeatable; 16 or 32 keeps them float), "
    "e.g. '*conv1*=8'. Below 4 bits, pin Whisper's tied embedding: '*embed_tokens*=8'.",
)
@click.option(
    "--embedding-outliers",
    type=click.IntRange(0, MAX_OUTLIER_COLUMNS),
    default=DEFAULT_OUTLIER_COLUMNS,
    show_default=True,
    help="Store token-embedding tables as a float32 mean row + this many float16 outlier columns + codes of "
    "the rest (0: plain codes). Costs 32 + 16 * K bits per row; cuts Whisper's embedding error "
    "several-fold.",
)
@click.option(
    "--calib",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Calibration audio: a LibriSpeech-layout directory or any folder of audio files.",
)
@click.option(
    "--calib-samples",
    type=click.IntRange(1),
    default=DEFAULT_CALIB_SAMPLES,
    show_default=True,
    help="Number of calibration utterances.",
)
@click.option(
    "--tune-epochs",
    type=click.IntRange(1),
    default=DEFAULT_TUNE_EPOCHS,
    show_default=True,
    help="With a '+tune' method: passes of the distillation over the calibration audio.",
)
@click.option("--act-order", is_flag=True, help="GPTQ: quantize columns in order of decreasing activation energy.")
@click.option(
    "--rotate",
    is_flag=True,
    help="Also quantize each weight under a block Hadamard rotation of its input columns and keep whichever "
    "has the smaller output error (stored rotated: layout revision 3). Not with AWQ.",
)
@click.option(
    "--act-bits",
    type=click.IntRange(2, 8),
    default=None,
    help="Also quantize the input of every quantized linear weight to this many bits (dynamic per-token scale); "
    "the runtime then multiplies integer codes (layout revision 4). With --rotate the rotated input x R is quantized.",
)
@click.option(
    "--act-static",
    is_flag=True,
    help="With --act-bits: one activation scale per tensor, MSE-clipped on the inputs seen on the --calib audio "
    "(weights the calibration does not reach stay dynamic).",
)
@click.option(
    "--smooth",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    help="SmoothQuant: move activation outliers into the weights with strength ALPHA (measured on the --calib "
    "audio, folded into the preceding layer norm or linear; other sites are skipped).",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for calibration sampling.")
@click.option(
    "--dtype",
    type=click.Choice(["f32", "f16"]),
    default="f32",
    show_default=True,
    help="Storage of unquantized tensors (all of them without --bits).",
)
@click.option("--revision", default=None, help="Hub revision (branch, tag or commit) of SOURCE.")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
def main(
    source,
    output,
    bits,
    method,
    vq_dim,
    group_size,
    asym,
    target_bpw,
    mixed_groups,
    mixed_min_bits,
    keep,
    embedding_outliers,
    calib,
    calib_samples,
    tune_epochs,
    act_order,
    rotate,
    act_bits,
    act_static,
    smooth,
    seed,
    dtype,
    revision,
    force,
    quiet,
) -> None:
    """Convert SOURCE (a Hugging Face hub id or local model directory) to a .wq file.

    \b
    Examples:
      wavq-convert openai/whisper-base --bits 4 -o base.wq
      wavq-convert facebook/wav2vec2-base-960h --bits 4 --method gptq --calib librispeech/train-clean-100 -o w2v.wq
    """
    _require_extra()
    from .export import convert

    quantize = bits is not None or target_bpw is not None
    if not quantize and (method or keep or calib or act_order or rotate or act_bits):
        raise click.UsageError(
            "--method, --keep, --calib, --act-order, --rotate and --act-bits need --bits or --target-bpw"
        )
    if mixed_groups and target_bpw is None:
        raise click.UsageError("--mixed-groups needs --target-bpw")
    if mixed_min_bits != MIN_BITS and target_bpw is None:
        raise click.UsageError("--min-bits needs --target-bpw")
    recipe = None
    calib_items = None
    try:
        if quantize:
            from .quant.recipe import Recipe

            recipe = Recipe.from_options(
                method=method or "rtn",
                bits=bits,
                group_size=group_size,
                symmetric=not asym,
                target_bpw=target_bpw,
                keep=keep,
                mixed_group_sizes=mixed_groups,
                mixed_min_bits=mixed_min_bits,
                act_order=act_order,
                calib_samples=calib_samples,
                seed=seed,
                outlier_columns=embedding_outliers,
                tune_epochs=tune_epochs,
                rotate=rotate,
                act_bits=act_bits,
                act_static=act_static,
                smooth=smooth,
                vq_dim=int(vq_dim),
            )
            if smooth is not None and calib is None:
                raise click.UsageError("--smooth measures activation ranges on calibration audio: pass --calib DIR")
            if act_static and calib is None:
                raise click.UsageError("--act-static observes activation ranges on calibration audio: pass --calib DIR")
            if recipe.needs_calibration and calib is None:
                raise click.UsageError(f"method {recipe.method!r} needs calibration audio: pass --calib DIR")
            if calib is not None and recipe.uses_calibration:
                from .calibrate import select_calibration

                calib_items = select_calibration(calib, calib_samples, seed)
        stage = (lambda s: None) if quiet else (lambda s: click.echo(s, err=True))
        _remove_stale_partials(output)
        with _terminate_cleanly():
            report = convert(
                source,
                output,
                recipe,
                dtype=dtype,
                force=force,
                revision=revision,
                progress=not quiet and sys.stderr.isatty(),
                calib_items=calib_items,
                on_stage=stage,
            )
    except (ConversionError, OutputExistsError, ValueError) as e:
        raise click.ClickException(str(e)) from None
    except _Terminated as e:
        click.echo(f"Aborted ({e}).", err=True)
        sys.exit(128 + e.signum)  # the shell convention for a process ended by a signal
    except _load_errors() as e:
        raise click.ClickException(f"{source} -> {output}: {_one_line(e)}") from None
    bpw = report.quantization.get("bits_per_weight")
    click.echo(
        f"wrote {report.path}: {report.architecture}, {report.n_params:,} parameters "
        f"({report.n_quantized:,} quantized{f', {bpw:.3f} bits/weight' if bpw else ''}), "
        f"{report.file_size / 2**20:.2f} MiB in {report.seconds:.1f} s"
    )


if __name__ == "__main__":  # pragma: no cover
    main(prog_name=os.path.basename(sys.argv[0]))
