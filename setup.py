"""Build of the optional C kernels (runtime/engine/_kernels.c); everything else is in pyproject.toml.

`optional=True`: without a compiler the install still succeeds and the runtime uses its numpy paths.
-fno-trapping-math / -fno-math-errno change no IEEE result (they let selects and floor vectorise);
-fopenmp-simd only honours the `omp simd` pragmas (no OpenMP runtime).
"""

from setuptools import Extension, setup

FLAGS = ["-O3", "-std=c11", "-fno-trapping-math", "-fno-math-errno", "-fopenmp-simd", "-Wno-psabi"]

setup(ext_modules=[Extension("vqinc.runtime.engine._kernels", ["runtime/engine/_kernels.c"], optional=True,
                             extra_compile_args=FLAGS)])
