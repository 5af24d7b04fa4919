"""msdr_jax: multi-stage disentangled representation learning in JAX."""

import setuptools

setuptools.setup(
    name="msdr_jax",
    version="0.1.0",
    description=(
        "Multi-stage disentangled representation learning: a disentangling "
        "VAE (stage one) plus a detail model (stage two), in JAX/Flax."
    ),
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    # configs/ too: `--config=configs/dsprites.py` and `from configs import
    # dsprites` work after a plain install, from any directory.
    packages=setuptools.find_packages(include=["msdr_jax", "msdr_jax.*", "configs"]),
    python_requires=">=3.11",  # jax >= 0.7, flax 0.12 and orbax 0.12 need 3.11.
    install_requires=[
        "absl-py>=2.1",
        "etils[epath]>=1.5",
        "flax>=0.10",
        "h5py>=3.9",  # Shapes3D's official 3dshapes.h5 (config.data.source="file").
        "jax>=0.7",  # jax.shard_map with check_vma (msdr_jax/parallel.py).
        "ml-collections>=1.0",
        "numpy>=1.26",
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "pillow>=10.0",
        "scikit-learn>=1.3",
        "scipy>=1.11",
        "tensorboardX>=2.6",
    ],
    extras_require={
        # config.data.source="tfds": data sets prepared by TensorFlow Datasets.
        "tfds": ["tensorflow-datasets>=4.9.7"],
        # The study's plots (experiments/) and the Colab notebook.
        "experiments": ["matplotlib>=3.7"],
        "test": [
            "ipykernel>=6.0",
            "matplotlib>=3.7",
            "nbclient>=0.10",
            "nbformat>=5.9",
            "pytest>=8.0",
            "pytest-xdist>=3.5",
            "tensorflow-datasets>=4.9.7",
            # TFDS's own builders prepare data sets in a test; their download
            # and preparation code needs these, reading does not.
            "importlib_resources>=6.0",
        ],
    },
)
