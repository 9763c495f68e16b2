"""svreid_jax: synthetic-to-real video person re-identification in JAX/Flax."""

# Read by the build (pyproject.toml) without importing anything: keep this module free of jax imports.
__version__ = "0.2.0"
