"""tensorflow-datasets builders, one package directory each (docs/METHOD.md §10.4).

Importing a builder imports tensorflow_datasets (not TensorFlow); nothing here is imported by the
training code unless packed data is used. See svreid_jax.data.pack for the command line.
"""
