"""Build glue for the optional compiled kernel only; pyproject.toml holds all package metadata.

The extension is optional: without a working C compiler setuptools prints a warning, skips it, and the runtime
uses its numpy path (runtime/kernel.py).
"""

import sys

from setuptools import Extension, setup

# -ffp-contract=off: the integer path's float steps are a contract with its numpy reference (no fused multiply-add).
# Portable -O3 only, no -march: the wheel or editable build must run on any CPU of its architecture.
_FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-std=c99"]

setup(
    ext_modules=[
        Extension(
            "wavq.runtime._wq_kernel",
            sources=["runtime/_kernel/wq_kernel.c"],
            extra_compile_args=_FLAGS,
            optional=True,
        )
    ]
)
