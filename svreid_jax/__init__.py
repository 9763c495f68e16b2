"""svreid_jax: synthetic-to-real video person re-identification in JAX/Flax.

`svreid_jax.Embedder` (evaluation/embedder.py) is imported on first use, so that `import svreid_jax`
stays cheap: it does not import jax.
"""

# Read by the build (pyproject.toml) without importing anything: keep this module free of jax imports.
__version__ = "0.2.0"

_LAZY = ("Embedder",)  # names __getattr__ imports on first use


def __getattr__(name):
    if name == "Embedder":
        from svreid_jax.evaluation.embedder import Embedder

        globals()[name] = Embedder  # later lookups skip this hook
        return Embedder
    raise AttributeError(f"module 'svreid_jax' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_LAZY))
