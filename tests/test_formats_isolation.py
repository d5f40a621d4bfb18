"""formats/ and runtime/ import with numpy and msgpack only: torch, transformers, safetensors and jiwer blocked.

Each check runs in a fresh interpreter with a meta-path finder that makes the heavy packages unimportable,
so an eager `import torch` anywhere in the import chain fails the test (GUIDE.md: the runtime needs numpy +
msgpack only).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

BLOCKED = ["torch", "transformers", "safetensors", "jiwer"]

_PRELUDE = r"""
import importlib.abc, json, sys
BLOCKED = set(json.loads(sys.argv[1]))

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            raise ImportError(f"{name} is blocked in this test")
        return None

sys.meta_path.insert(0, Block())
before = set(sys.modules)
"""


def run_isolated(body: str) -> dict:
    code = _PRELUDE + body
    proc = subprocess.run(
        [sys.executable, "-c", code, json.dumps(BLOCKED)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", ["wavq.formats", "wavq.runtime", "wavq.runtime.whisper", "wavq.runtime.wav2vec2"])
def test_imports_without_heavy_packages(module):
    # a guarded module that was renamed or removed fails here: a skip would let the guard lapse unnoticed
    assert importlib.util.find_spec(module) is not None, f"{module} no longer exists: update this test's list"
    out = run_isolated(f"""
import importlib
importlib.import_module({module!r})
new = sorted({{m.partition(".")[0] for m in set(sys.modules) - before}})
print(json.dumps({{"new": new}}))
""")
    assert not set(out["new"]) & set(BLOCKED)


@pytest.mark.parametrize("module", ["wavq.formats", "wavq.runtime"])
def test_third_party_imports_are_numpy_and_msgpack_only(module):
    """Stronger than blocking a list: whatever the package imports outside the standard library must be numpy,
    msgpack (or wavq itself)."""
    out = run_isolated(f"""
import importlib
importlib.import_module({module!r})
new = {{m.partition(".")[0] for m in set(sys.modules) - before}}
third = sorted(m for m in new if m not in sys.stdlib_module_names and not m.startswith("_"))
print(json.dumps({{"third": third}}))
""")
    # cython_runtime is the bookkeeping module every Cython extension (msgpack's) registers
    assert set(out["third"]) <= {"numpy", "msgpack", "wavq", "cython_runtime"}, out["third"]


def test_runtime_cli_imports_the_eval_layer_only_when_eval_runs():
    """`wavq eval` needs the measurement layer; loading the CLI (and so `wavq transcribe`) must not import it."""
    out = run_isolated("""
import wavq.runtime.cli
print(json.dumps({"loaded": sorted(m for m in sys.modules if m.startswith("wavq.evaluation"))}))
""")
    assert out["loaded"] == []


def test_blocking_works():
    """The harness itself: a blocked package really is unimportable."""
    out = run_isolated("""
try:
    import torch
    print(json.dumps({"blocked": False}))
except ImportError:
    print(json.dumps({"blocked": True}))
""")
    assert out["blocked"]


# Deferred imports (inside functions) escape the checks above, which only import the package. Every import
# statement in formats/ and runtime/ is read here instead; the optional extras each name the file allowed them.
# wavq's own packages count by their second part: runtime/ may use formats/, and only its CLI the eval layer.
OPTIONAL = {
    "soundfile": {"audio.py"},
    "click": {"cli.py"},
    "wavq.evaluation": {"cli.py"},
    "wavq.study": {"cli.py"},
    "wavq.formats": None,
    "wavq.runtime": None,
}


@pytest.mark.parametrize("package", ["formats", "runtime"])
def test_every_import_statement_is_stdlib_numpy_msgpack_or_a_named_extra(package):
    import ast
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent / package
    files = sorted(root.rglob("*.py"))
    assert files, root
    bad = []
    for path in files:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                top = name.partition(".")[0]
                if top in sys.stdlib_module_names or top in ("numpy", "msgpack"):
                    continue
                if top == "wavq":
                    top = ".".join(name.split(".")[:2])
                if top in OPTIONAL and (OPTIONAL[top] is None or path.name in OPTIONAL[top]):
                    continue
                bad.append(f"{path.relative_to(root.parent)}:{node.lineno} imports {name}")
    assert not bad, bad
