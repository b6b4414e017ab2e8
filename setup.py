"""Builds bnlib's one compiled part: the fused CPU loops of bnlib.torch (bnlib/torch/_fused.cpp).

It is optional. Without a C++ compiler that has GCC's vector extensions (GCC or Clang), bnlib
installs without it and bnlib.torch runs the same formulas in torch operations (slower on
small inputs; ``bnlib.torch.fused_loops_available()`` says which). Everything else about
the package is in pyproject.toml.

The flags fix the floating-point semantics: no fast-math and no contracted multiply-adds, so
that every CPU computes the same bits.
"""

import platform

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

FLAGS = ["-O3", "-std=c++17", "-fno-fast-math", "-ffp-contract=off", "-Wno-psabi"]
# 32-bit x86 computes in the x87 unit's 80-bit registers unless told to use SSE2.
X87_FLAGS = ["-msse2", "-mfpmath=sse"] if platform.machine() in ("i386", "i686") else []


class BuildExt(build_ext):
    def build_extensions(self):
        if self.compiler.compiler_type == "msvc":  # no GCC vector extensions
            print("bnlib: MSVC cannot build the compiled loops; bnlib.torch runs torch "
                  "operations instead")
            self.extensions = []
            return
        for ext in self.extensions:
            ext.extra_compile_args = FLAGS + X87_FLAGS
        super().build_extensions()


setup(
    ext_modules=[Extension("bnlib.torch._fused", ["bnlib/torch/_fused.cpp"], language="c++",
                           optional=True)],
    cmdclass={"build_ext": BuildExt},
)
