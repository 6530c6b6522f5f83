"""The one compiled extension: the byte-plane and cast loops in C (``weightvault.codec._kernels``).

Everything else about the package is in pyproject.toml. ``optional=True``: where it cannot be
built (no C compiler) the install still succeeds and ``weightvault.codec.kernels`` runs the same
loops in NumPy. ``scripts/setup`` builds it in place (an editable install); after editing the C
source, run ``scripts/setup`` again.
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "weightvault.codec._kernels",
            sources=["src/weightvault/codec/_kernels.c"],
            extra_compile_args=["-O3"],
            optional=True,
        )
    ]
)
