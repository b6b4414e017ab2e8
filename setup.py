"""Builds bnlib's one compiled part: the fused CPU loops of bnlib.torch (bnlib/torch/_fused.cpp).

It is optional. Without a C++ compiler that has GCC's vector extensions (GCC or Clang), bnlib
installs without it and bnlib.torch runs the same formulas in torch operations (slower on
small inputs; ``bnlib.torch.fused_loops_available()`` says which). Everything else about
the package is in pyproject.toml.

The flags fix the floating-point semantics: no fast-math and no contracted multiply-adds, so
that every CPU computes the same bits.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

GCC_FLAGS = ["-O3", "-std=c++17", "-fno-fast-math", "-ffp-contract=off", "-pthread",
             "-Wno-psabi"]


class BuildExt(build_ext):
    def build_extensions(self):
        unix = self.compiler.compiler_type != "msvc"
        for ext in self.extensions:
            ext.extra_compile_args = GCC_FLAGS if unix else ["/O2", "/fp:precise"]
            ext.extra_link_args = ["-pthread"] if unix else []
        super().build_extensions()


setup(
    ext_modules=[Extension("bnlib.torch._fused", ["bnlib/torch/_fused.cpp"], language="c++",
                           optional=True)],
    cmdclass={"build_ext": BuildExt},
)
