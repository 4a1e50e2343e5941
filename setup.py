"""Build of the optional C kernels (runtime/_kernels.c); everything else is in pyproject.toml.

`optional=True`: without a compiler the install still succeeds and the runtime uses its numpy paths.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("vqinc.runtime._kernels", ["runtime/_kernels.c"], optional=True,
                             extra_compile_args=["-O3", "-std=c11", "-Wno-psabi"])])
