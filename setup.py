"""svreid_jax: synthetic-to-real video person re-identification in JAX/Flax."""
import setuptools

setuptools.setup(
    name="svreid_jax",
    version="0.1.0",
    description="Synthetic-to-real video person re-ID (arXiv 2402.02108) in JAX/Flax",
    packages=setuptools.find_packages(include=["svreid_jax", "svreid_jax.*"]),
    python_requires=">=3.11",
    install_requires=[
        "jax==0.10.2",
        "jaxlib==0.10.2",
        "flax==0.12.8",
        "optax==0.2.8",
        "orbax-checkpoint==0.12.8",
        "grain==0.2.18",
        "tensorflow-datasets==4.9.10",
        "ml-collections==1.1.0",
        "clu==0.0.12",
        "numpy>=2.0,<3",
        "scipy>=1.11,<2",
        "h5py>=3.10,<4",
        "pillow>=10,<14",
        "simplejpeg==1.9.0",
        "tensorboardX==2.6.5",
        "absl-py>=2.1,<3",
        "huggingface_hub==1.33.0",
        "safetensors==0.8.0",
    ],
    extras_require={
        "test": ["pytest>=8,<10", "pytest-timeout==2.4.0", "nbmake==1.5.5", "hypothesis>=6.100,<7"],
        "torch": ["torch==2.13.0"],
    },
)
