"""Builds the Cython kernel (ext/_kernel.pyx) into heatsvc.model._kernel; metadata lives in pyproject.toml."""
import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-adds, so row(p) = floor(u(p)) rounds exactly as Python's math does.
compile_args = ["-O3", "-ffp-contract=off", "-fno-math-errno"]

extensions = [
    Extension(
        "heatsvc.model._kernel",
        ["ext/_kernel.pyx"],
        include_dirs=[np.get_include()],
        extra_compile_args=compile_args,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    )
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={"language_level": 3, "boundscheck": False, "wraparound": False,
                             "cdivision": True, "initializedcheck": False},
    )
)
