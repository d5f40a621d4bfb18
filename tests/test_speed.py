"""Speed features of the runtime: kernel products on packed codes, the memory budget, batched greedy decoding.

Each must leave results as they are: the same tokens with and without the kernel (logits within its stated bound),
whatever the budget, and batched or alone."""

import os

import numpy as np
import pytest
from click.testing import CliRunner
from tiny_models import convert_tiny, tiny_whisper

from wavq.runtime import kernel, load
from wavq.runtime.cli import main
from wavq.runtime.weights import keep_within
from wavq.runtime.whisper import OUTPUT_PROJECTION, TOKEN_EMBEDDING, reuse_rank

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "samples")
RATE = 16000
MAX_NEW = 12
needs_kernel = pytest.mark.skipif(kernel._wq_kernel is None, reason="compiled kernel not built")


@pytest.fixture(scope="module")
def tiny_q4(tmp_path_factory):
    d = tmp_path_factory.mktemp("speed")
    return convert_tiny(tiny_whisper(d / "hf"), d / "tiny.wq")


def _audio(seconds: float, seed: int) -> np.ndarray:
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))).astype(np.float32)


def _mel(model, seed: int) -> np.ndarray:
    return model.log_mel(_audio(5, seed))


@needs_kernel
def test_kernel_logits_within_the_kernel_bound(tiny_q4, monkeypatch):
    monkeypatch.delenv(kernel.DISABLE_ENV, raising=False)
    model = load(tiny_q4)
    h = np.random.default_rng(0).standard_normal((3, model.dims.d_model)).astype(np.float32)
    packed = model.weights.packed(model.output_name)
    assert packed is not None  # quantized, not kept: the kernel multiplies its codes
    fast = model.logits(h)
    monkeypatch.setenv(kernel.DISABLE_ENV, "1")
    assert model.weights.packed(model.output_name) is None
    reference = model.logits(h)
    assert np.all(np.abs(fast - reference) <= kernel.float_error_bound(h, packed))


@needs_kernel
def test_kernel_and_numpy_paths_generate_the_same_tokens(tiny_q4, monkeypatch):
    monkeypatch.delenv(kernel.DISABLE_ENV, raising=False)
    model = load(tiny_q4)
    with_kernel = [model.generate(_mel(model, s), max_new_tokens=MAX_NEW) for s in range(3)]
    monkeypatch.setenv(kernel.DISABLE_ENV, "1")
    assert [model.generate(_mel(model, s), max_new_tokens=MAX_NEW) for s in range(3)] == with_kernel


def test_budget_keeps_per_token_decoder_weights_before_encoder_weights(tiny_q4, monkeypatch):
    monkeypatch.setenv(kernel.DISABLE_ENV, "1")  # the output embedding is then kept first
    w = load(tiny_q4).weights
    costs = {n: w.kept_bytes(n) for n in w.names()}
    per_token = [n for n in costs if reuse_rank(n) == 1 and costs[n]]
    encoder = [n for n in costs if n.startswith("model.encoder.layers.") and costs[n]]
    head = OUTPUT_PROJECTION if OUTPUT_PROJECTION in costs else TOKEN_EMBEDDING
    assert per_token and encoder
    budget = costs[head] + sum(costs[n] for n in per_token)
    kept = keep_within(costs, reuse_rank, budget)
    assert head in kept and set(per_token) <= kept
    assert not kept & set(encoder)  # nothing left for the encoder
    assert sum(costs[n] for n in kept) <= budget
    assert keep_within(costs, reuse_rank, costs[head] - 1) == {n for n in costs if costs[n] == 0} | set(
        keep_within({n: c for n, c in costs.items() if n != head}, reuse_rank, costs[head] - 1)
    )  # a table that does not fit is skipped, the smaller ones after it still taken
    assert load(tiny_q4, cache=True).weights.kept == frozenset(costs)
    assert load(tiny_q4, max_memory=float("inf")).weights.cache
    assert load(tiny_q4).weights.kept == {n for n in costs if costs[n] == 0}  # default: only float32 views


@needs_kernel
@pytest.mark.parametrize("no_kernel", ["0", "1"])
def test_the_output_embedding_is_kept_first_with_or_without_the_kernel(tiny_q4, monkeypatch, no_kernel):
    # A float32 column-major copy multiplies a decoding step's rows faster than the kernel does on the packed
    # codes: every budget that fits the table keeps it, before anything else, and cache=True always does.
    monkeypatch.setenv(kernel.DISABLE_ENV, no_kernel)
    w = load(tiny_q4).weights
    head = OUTPUT_PROJECTION if OUTPUT_PROJECTION in w else TOKEN_EMBEDDING
    for model in (load(tiny_q4, max_memory=w.kept_bytes(head)), load(tiny_q4, cache=True)):
        assert head in model.weights.kept
        assert model.weights.packed(head) is None
        assert model.weights[head].flags.f_contiguous
    only_head = load(tiny_q4, max_memory=w.kept_bytes(head)).weights.kept
    assert only_head == {head} | {n for n in w.names() if w.kept_bytes(n) == 0}


def test_results_identical_whatever_the_budget(tiny_q4):
    mels = [_mel(load(tiny_q4), s) for s in range(2)]
    w = load(tiny_q4).weights
    half = sum(w.kept_bytes(n) for n in w.names()) // 2
    results = [
        [load(tiny_q4, **kw).generate(m, max_new_tokens=MAX_NEW) for m in mels]
        for kw in ({}, {"max_memory": half}, {"cache": True})
    ]
    assert results[0] == results[1] == results[2]


def test_batched_transcripts_equal_transcribing_alone(tiny_q4):
    model = load(tiny_q4)
    audio = [_audio(s, i) for i, s in enumerate((3.0, 7.5, 1.2, 31.0, 4.0))]  # 31 s: long-form, on its own
    alone = [model.transcribe(a, max_new_tokens=MAX_NEW) for a in audio]
    batched = model.transcribe(audio, batch_size=3, max_new_tokens=MAX_NEW)
    assert [r.to_dict() for r in batched] == [r.to_dict() for r in alone]


def test_batched_cross_attention_matches_one_row_at_a_time(tiny_q4):
    from wavq.runtime.whisper import stack_cross

    model = load(tiny_q4)
    crosses = [model.cross_kv(model.encode(_mel(model, s))) for s in range(3)]
    prompt = np.array([[model.sot, model.no_timestamps]])
    alone = np.concatenate([model.decoder_step(prompt, model.new_state(1), c) for c in crosses])
    batched = model.decoder_step(np.repeat(prompt, 3, axis=0), model.new_state(3), stack_cross(crosses))
    np.testing.assert_allclose(batched, alone, rtol=1e-5, atol=1e-5)
    assert not np.allclose(alone[0], alone[1])  # each row attends to its own audio


def test_cli_memory_option_and_version():
    r = CliRunner().invoke(main, ["--version"])
    assert r.exit_code == 0 and "compiled kernel" in r.output
    r = CliRunner().invoke(main, ["transcribe", "missing.wq", "x.wav", "--max-memory", "lots"])
    assert r.exit_code == 2 and "not a memory size" in r.output


@pytest.mark.real
def test_real_tiny_en_kernel_budget_and_batch_give_the_same_transcripts(tmp_path, monkeypatch):
    from wavq.converter.export import convert
    from wavq.converter.quant.recipe import Recipe

    path = str(tmp_path / "tiny.en.q4.wq")
    try:
        convert("openai/whisper-tiny.en", path, Recipe(method="rtn", bits=4, group_size=128))
    except OSError:
        pytest.skip("openai/whisper-tiny.en is not in the Hugging Face cache")
    files = sorted(os.path.join(SAMPLES, f) for f in os.listdir(SAMPLES) if f.endswith(".flac"))
    monkeypatch.setenv(kernel.DISABLE_ENV, "1")
    reference = [load(path).transcribe(f).text for f in files]
    budget = load(path, max_memory=30 * 10**6)  # part of the decoder kept, the rest dequantized per use
    assert 0 < len(budget.weights.kept) < len(budget.weights.names())
    assert [r.text for r in budget.transcribe(files, batch_size=4)] == reference
    monkeypatch.delenv(kernel.DISABLE_ENV)
    model = load(path)
    assert [model.transcribe(f).text for f in files] == reference
    assert [r.text for r in model.transcribe(files, batch_size=4)] == reference
