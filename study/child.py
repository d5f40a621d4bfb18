"""The two stages of a cell, each run in its own interpreter by cell.run_child:

    python -m wavq.study.child convert REQUEST.json REPLY.json
    python -m wavq.study.child evaluate REQUEST.json REPLY.json

The reply is a JSON object; on failure {"error": "<one line>"}.
"""

from __future__ import annotations

import json
import os
import sys

# compute accounting the evaluation result may carry (read when present, else the row's columns stay null)
COMPUTE_FIELDS = ("macs_per_audio_second", "bitops_per_audio_second")
FLOAT_BITS = {"f32": 32.0, "f16": 16.0}


def convert_stage(req: dict) -> dict:
    if req.get("baseline"):
        from .baselines import convert_ctranslate2

        return convert_ctranslate2(req["model"], req["output"])
    from wavq.converter.quant.recipe import Recipe

    recipe = Recipe.from_options(**req["recipe"]) if req["recipe"] else None
    if recipe is not None and recipe.needs_calibration and not req["calib"]:
        # before torch is imported: a grid without calibration audio fails such cells in a fraction of a second
        raise ValueError(f"method {recipe.method!r} needs calibration audio: the grid's [sweep] names no calib")

    import torch

    from wavq.converter.calibrate import select_calibration
    from wavq.converter.export import convert
    from wavq.formats import WqFile
    from wavq.runtime.info import summarize

    torch.set_num_threads(req["threads"])
    calib = None
    if recipe is not None and recipe.uses_calibration and req["calib"]:
        calib = select_calibration(req["calib"], recipe.calib_samples, recipe.seed)
    convert(req["model"], req["output"], recipe, force=True, calib_items=calib)
    with WqFile(req["output"]) as f:
        s = summarize(f)
        quant = f.meta.get("quantization") or {}
    return {
        # an unquantized file: the width its floats are stored in (the header's bytes are in file_bytes)
        "bits_per_weight": s.quantized_bpw if s.n_quantized else FLOAT_BITS[quant.get("dtype", "f32")],
        "file_bytes": s.file_size,
        "n_params": s.n_params,
        "tensor_bits": quant.get("tensor_bits") or {},
        "tensor_group_size": quant.get("tensor_group_size") or {},
        "calibration_ids": len((quant.get("calibration") or {}).get("ids") or []),
    }


def _utterances(spec: dict):
    from wavq.evaluation.datasets import find_utterances

    utts = [u for u in find_utterances(spec["path"]) if u.text is not None]
    if not utts:
        raise ValueError(f"{spec['path']}: no utterances with transcripts (*.trans.txt)")
    return utts[: spec["limit"]] if spec.get("limit") else utts


def evaluate_stage(req: dict) -> dict:
    from wavq.evaluation import evaluate

    if req.get("baseline") and req.get("model_path"):
        from .baselines import CTranslate2Whisper

        model, extra = CTranslate2Whisper(req["model"], req["model_path"], req["threads"]), {}
    elif req.get("baseline"):
        from .baselines import load_baseline

        model, extra = load_baseline(req["model"], req["baseline"], req["threads"])
    else:
        from wavq.runtime import load

        model, extra = load(req["model_path"], cache=True), {}
    opts = {"max_new_tokens": req["max_new_tokens"]} if model.meta.get("architecture") == "whisper" else {}
    sets, results = {}, []
    for spec in req["sets"]:
        r = evaluate(model, _utterances(spec), opts)
        results.append(r)
        sets[spec["name"]] = {
            "wer": r.wer,
            "n_words": r.n_words,
            "n_utterances": r.n_utterances,
            "audio_seconds": r.audio_seconds,
            "compute_seconds": r.compute_seconds,
            "rtf": r.rtf,
        }
    return {**extra, "sets": sets, **compute_per_audio_second(results)}


def compute_per_audio_second(results: list) -> dict[str, float]:
    """The COMPUTE_FIELDS the evaluation results report, over all sets (weighted by their audio seconds)."""
    audio = sum(r.audio_seconds for r in results)
    out = {}
    for k in COMPUTE_FIELDS:
        values = [getattr(r, k, None) for r in results]
        if audio and all(v is not None for v in values):
            out[k] = sum(v * r.audio_seconds for v, r in zip(values, results)) / audio
    return out


STAGES = {"convert": convert_stage, "evaluate": evaluate_stage}


def main(argv: list[str]) -> int:
    stage, request, reply = argv
    with open(request, encoding="utf-8") as f:
        req = json.load(f)
    try:
        out = STAGES[stage](req)
        status = 0
    except Exception as e:  # the cell's failure, recorded in its row; the sweep goes on
        message = str(e).strip().splitlines()[0] if str(e).strip() else ""
        out, status = {"error": f"{type(e).__name__}: {message}".rstrip(": ")}, 1
    tmp = reply + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(out, f)
    os.replace(tmp, reply)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
