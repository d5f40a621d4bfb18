"""Structure-aware fuzz of everything above the reader: `wavq info`, `info --json`, `verify`, load() and transcribe().

tests/test_formats_fuzz.py mutates bytes; this mutates the *decoded* header of real converted models (a tiny random
Wav2Vec2-CTC and, when its tokenizer is cached, a tiny random Whisper): any field of `meta` at any depth and any
field of the tensor table, set to wrong types, extreme integers, NaN, control characters, empty and huge containers;
and tensor shapes changed to others of the same element count, which the reader's size checks cannot see.
Each file is re-encoded with a correct header checksum, so every mutation reaches the code that interprets it.

Cases run in child processes (a batch per child) under an address-space limit and a per-stage alarm; each child
reports one JSON line per case and stage. A stage passes a case when it succeeds or fails with a FormatError /
AudioError subclass (a one-line click error for the commands): no other exception, no traceback, no raw control
character on the terminal, no invalid JSON, no hang, no crash. One test per stage, so a failing stage is visible
on its own. WAVQ_RUNTIME_FUZZ_CASES and WAVQ_RUNTIME_FUZZ_SEED run longer campaigns.
"""

from __future__ import annotations

import collections
import copy
import json
import math
import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from formats_helpers import rebuild, split

pytest.importorskip("torch")
pytest.importorskip("transformers")

CASES = int(os.environ.get("WAVQ_RUNTIME_FUZZ_CASES", "2000"))
SEED = int(os.environ.get("WAVQ_RUNTIME_FUZZ_SEED", "20261203"))
CASES_PER_CHILD = 200  # amortises the child's imports; a crash costs the rest of its batch one re-run
WHISPER_SHARE = 0.03  # tiny Whisper decodes a 30 s window per transcribe (~1 s): a small share of the cases
STAGE_LIMIT_S = 20  # per case and stage; far above any legitimate case, far below a hang
MEMORY_LIMIT = 3 << 30  # bytes of address space per child (RLIMIT_AS): a runaway allocation fails, not the machine
STAGES = ("info", "info-json", "verify", "load+transcribe")

HUGE_LIST = list(range(20_000))
HUGE_MAP = {f"k{i}": i for i in range(5_000)}


def _deep(depth: int):
    v: list = []
    for _ in range(depth):
        v = [v]
    return v


POOL = [
    None,
    True,
    False,
    0,
    1,
    -1,
    2,
    3,
    7,
    2**31 - 1,
    2**31,
    2**32,
    2**53 + 1,
    2**63 - 1,
    -(2**63),
    2**64 - 1,
    0.0,
    -0.0,
    0.5,
    1e308,
    -1e308,
    math.nan,
    math.inf,
    -math.inf,
    "",
    "x",
    "whisper",
    "wav2vec2-ctc",
    "\x1b[2J\x1b[31mred\x07\x00",
    "\u202eevil",
    "é" * 3,
    "x" * 100_000,
    b"",
    b"\xff" * 8,
    [],
    [0],
    [-1],
    [math.nan],
    ["a"],
    [[]],
    [None, 1.5, "x"],
    {},
    {"a": 1},
    {"": None},
    HUGE_LIST,
    HUGE_MAP,
    _deep(64),
]
ENTRY_KEYS = ["name", "encoding", "shape", "offset", "nbytes", "crc32", "bits", "group_size", "rotation"]


def _pool(rng: random.Random):
    return copy.deepcopy(rng.choice(POOL)) if rng.random() < 0.2 else rng.choice(POOL)


def _near(rng: random.Random, v: int):
    return rng.choice([0, -1, v - 1, v + 1, 2 * v, -v, v * 1000, 2**31, 2**63 - 1])


def _walk(rng: random.Random, root):
    """A container inside `root` reached by a random walk (often root itself, sometimes deep)."""
    node = root
    while rng.random() < 0.6:
        children = [v for v in (node.values() if isinstance(node, dict) else node) if isinstance(v, (dict, list))]
        if not children:
            break
        node = rng.choice(children)
    return node


def _mutate_container(rng: random.Random, node, known_keys=()) -> None:
    action = rng.random()
    if isinstance(node, dict):
        keys = list(node)
        if keys and action < 0.15:
            del node[rng.choice(keys)]
        elif action < 0.3 or not keys:
            node[rng.choice(list(known_keys) or ["x"]) if rng.random() < 0.5 else "x"] = _pool(rng)
        else:
            k = rng.choice(keys)
            old = node[k]
            is_int = isinstance(old, int) and not isinstance(old, bool)
            node[k] = _near(rng, old) if is_int and rng.random() < 0.4 else _pool(rng)
    elif node:
        i = rng.randrange(len(node))
        if action < 0.15:
            del node[i:]
        elif action < 0.25:
            node.extend(node[: rng.randint(1, 3)])
        else:
            old = node[i]
            is_int = isinstance(old, int) and not isinstance(old, bool)
            node[i] = _near(rng, old) if is_int and rng.random() < 0.4 else _pool(rng)
    else:
        node.append(_pool(rng))


def _reshaped(rng: random.Random, shape: list[int]) -> list[int]:
    """`shape` permuted, flattened, given a unit axis or split at a divisor: the same element count."""
    n = math.prod(shape)
    divisors = [d for d in range(2, min(n, 64)) if n % d == 0]
    choice = rng.randrange(4)
    if choice == 0 and len(shape) > 1:
        return rng.sample(shape, len(shape))
    if choice == 1 and divisors:
        d = rng.choice(divisors)
        return rng.choice([[d, n // d], [n // d, d]])
    if choice == 2:
        return rng.choice([[n], [1, *shape], [*shape, 1]])
    return [n] if len(shape) > 1 else [1, n]


def mutate(rng: random.Random, buf: bytes) -> bytes:
    """1-3 structural edits of the decoded header (meta at any depth, or the tensor table), re-encoded with a
    correct header CRC."""
    _, header, data = split(buf)
    meta, entries = header["meta"], header["tensors"]
    for _ in range(rng.randint(1, 3)):
        r = rng.random()
        if r < 0.7:
            node = _walk(rng, meta)
            _mutate_container(rng, node, known_keys=meta if node is meta else ())
        elif r < 0.8 and entries:  # a tensor the model needs disappears under another name
            rng.choice(entries)["name"] = rng.choice(["x", "", "model.x", "\x1b[0m"]) + str(rng.randrange(9))
        elif r < 0.9 and entries:  # same byte count in another shape, so the reader accepts it
            e = rng.choice(entries)
            if isinstance(e.get("shape"), list) and all(isinstance(n, int) and n > 0 for n in e["shape"]):
                e["shape"] = _reshaped(rng, e["shape"])
        elif entries:
            e = rng.choice(entries)
            _mutate_container(rng, e, known_keys=ENTRY_KEYS)
    return rebuild(header, data)


CHILD = textwrap.dedent(
    """
    import json, os, resource, signal, sys, traceback
    limit = int(sys.argv[2])
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    import numpy as np
    from click.testing import CliRunner
    from wavq.formats import FormatError
    from wavq.runtime import AudioError, load
    from wavq.runtime.cli import main
    from wavq.runtime.whisper import WhisperModel

    CONTROL = set(map(chr, range(32))) - {"\\n"} | {"\\x7f"}

    class Hang(BaseException):
        pass

    def on_alarm(signum, frame):
        raise Hang()

    signal.signal(signal.SIGALRM, on_alarm)
    job = json.load(open(sys.argv[1]))
    audio = np.asarray(job["audio"], np.float32)

    def no_constant(name):
        raise ValueError(name)

    def command(args, as_json=False):
        r = CliRunner().invoke(main, args)
        if r.exception is not None and not isinstance(r.exception, SystemExit):
            return "escape: " + type(r.exception).__name__ + ": " + str(r.exception)[:200]
        if "Traceback" in r.output:
            return "traceback"
        if CONTROL & set(r.output):
            return "raw control characters"
        if r.exit_code not in (0, 1):
            return f"exit status {r.exit_code}"
        if as_json and r.exit_code == 0:
            try:
                json.loads(r.output, parse_constant=no_constant)
            except ValueError as e:
                return "invalid JSON: " + str(e)[:100]
        return "ok" if r.exit_code == 0 else "error"

    def run_model(path):
        try:
            model = load(path)
            opts = {"max_new_tokens": 2} if isinstance(model, WhisperModel) else {}
            model.transcribe(audio, **opts)
        except (FormatError, AudioError) as e:
            return "error"
        except Hang:
            raise
        except BaseException as e:
            tb = traceback.extract_tb(e.__traceback__)[-1]
            where = os.path.basename(tb.filename) + ":" + str(tb.lineno)
            return "escape: " + type(e).__name__ + " at " + where + ": " + str(e)[:200]
        return "ok"

    stages = {
        "info": lambda p: command(["info", "--tensors", p]),
        "info-json": lambda p: command(["info", "--json", "--tensors", p], as_json=True),
        "verify": lambda p: command(["verify", p]),
        "load+transcribe": run_model,
    }
    for case, path in job["cases"]:
        for stage, fn in stages.items():
            signal.alarm(job["stage_limit"])
            try:
                outcome = fn(path)
            except Hang:
                outcome = "hang"
            finally:
                signal.alarm(0)
            print(json.dumps({"case": case, "stage": stage, "outcome": outcome}), flush=True)
    """
)


class Campaign:
    def __init__(self):
        self.outcomes = {s: collections.Counter() for s in STAGES}
        self.failures: dict[str, list[str]] = {s: [] for s in STAGES}
        self.cases = 0

    def record(self, case: int, stage: str, outcome: str, label: str) -> None:
        kind = outcome if outcome in ("ok", "error") else "failure"
        self.outcomes[stage][kind] += 1
        if kind == "failure":
            self.failures[stage].append(f"case {case} ({label}): {outcome}")


def _run_batch(campaign: Campaign, batch: list[tuple[int, str, str]], audio: list, tmp) -> None:
    """Run cases in one child; a child that dies or stalls costs the case it was on, the rest run again."""
    pending = list(batch)
    while pending:
        job = tmp / "job.json"
        job.write_text(
            json.dumps({"cases": [(c, p) for c, p, _ in pending], "audio": audio, "stage_limit": STAGE_LIMIT_S})
        )
        env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
        timeout = STAGE_LIMIT_S * len(STAGES) * len(pending) + 60
        try:
            p = subprocess.run(
                [sys.executable, "-c", CHILD, str(job), str(MEMORY_LIMIT)],
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
            )
            out, died = p.stdout, f"child ended with status {p.returncode}: {p.stderr.strip()[-300:]}"
        except subprocess.TimeoutExpired as e:
            out, died = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or ""), "hang"
        labels = {c: label for c, _, label in pending}
        done = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
        for r in done:
            campaign.record(r["case"], r["stage"], r["outcome"], labels[r["case"]])
        finished = {(r["case"], r["stage"]) for r in done}
        for i, (c, _, label) in enumerate(pending):  # the child runs cases and stages in order
            missing = [s for s in STAGES if (c, s) not in finished]
            if missing:
                campaign.record(c, missing[0], died, label)  # the stage it was in when it died
                pending = pending[i + 1 :]
                break
        else:
            pending = []


def _category(failure: str) -> str:
    """ "escape: TypeError at wav2vec2.py:91" from a failure line; other failures by their first words."""
    outcome = failure.split("): ", 1)[1]
    if outcome.startswith("escape: "):
        return outcome.split(": ", 2)[1]
    return outcome[:60]


@pytest.fixture(scope="module")
def campaign(tmp_path_factory):
    from tiny_models import convert_tiny, tiny_wav2vec2, tiny_whisper

    root = tmp_path_factory.mktemp("runtime_fuzz")
    bases = {"wav2vec2": open(convert_tiny(tiny_wav2vec2(root / "w2v"), root / "w2v.wq"), "rb").read()}
    try:
        bases["whisper"] = open(convert_tiny(tiny_whisper(root / "wh"), root / "wh.wq"), "rb").read()
    except pytest.skip.Exception:
        pass  # Whisper's tokenizer is not cached: Wav2Vec2 cases only
    rng = random.Random(SEED)
    audio = (0.1 * np.sin(2 * np.pi * 440 * np.arange(4000) / 16_000)).tolist()  # 0.25 s
    result = Campaign()
    cases = root / "cases"
    cases.mkdir()
    batch: list[tuple[int, str, str]] = []
    for case in range(CASES):
        arch = "whisper" if "whisper" in bases and rng.random() < WHISPER_SHARE else "wav2vec2"
        path = cases / f"{case}.wq"
        path.write_bytes(mutate(rng, bases[arch]))
        batch.append((case, str(path), arch))
        if len(batch) == CASES_PER_CHILD or case == CASES - 1:
            _run_batch(result, batch, audio, root)
            for _, p, _ in batch:
                os.unlink(p)
            batch = []
        result.cases += 1
    return result


@pytest.mark.slow
@pytest.mark.parametrize("stage", STAGES)
def test_stage_raises_only_format_and_audio_errors(campaign, stage):
    n = sum(campaign.outcomes[stage].values())
    assert campaign.cases == CASES
    failures = campaign.failures[stage]
    kinds = collections.Counter(_category(f) for f in failures)
    listed = sorted(kinds.items(), key=lambda kv: -kv[1])
    assert not failures, (
        f"{stage}: {len(failures)} of {n} cases failed; by kind and place:\n"
        + "\n".join(f"{count:6}  {kind}" for kind, count in listed)
        + "\nfirst cases (hangs and crashes first):\n"
        + "\n".join(sorted(failures, key=lambda f: "escape: " in f)[:25])
    )
    # the mutations must reach both outcomes, not stop at one check every time
    assert campaign.outcomes[stage]["ok"] and campaign.outcomes[stage]["error"], dict(campaign.outcomes[stage])
