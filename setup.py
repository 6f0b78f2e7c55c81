"""dsbs-jax: distilling step-by-step on JAX, T5X-style."""

from setuptools import find_packages, setup

setup(
    name="dsbs-jax",
    version="0.1.0",
    description="Distilling step-by-step (Hsieh et al., 2023) on JAX/TPU: teacher rationales "
    "to SeqIO mixtures to a sharded T5 student.",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=["dsbs_jax", "dsbs_jax.*"]),
    include_package_data=True,
    package_data={"dsbs_jax": ["tasks/cards/*.yaml", "gin_configs/*/*.gin"]},
    install_requires=[
        "jax>=0.10.2",
        "flax>=0.12.8",
        "optax>=0.2.8",
        "orbax-checkpoint>=0.12.8",
        "tensorstore>=0.1.86",  # T5X's msgpack + tensorstore checkpoints
        "ml-dtypes>=0.5",
        "seqio>=0.0.20",
        # tensorflow-text (needed by seqio) depends on `tensorflow`, not `tensorflow-cpu`.
        # Asking for `tensorflow` alone avoids two TF builds in one environment; on a
        # machine without CUDA it runs on the CPU, and JAX owns the accelerators.
        "tensorflow>=2.21",
        "tensorflow-text>=2.21.1",
        "tensorflow-datasets>=4.9.10",
        "gin-config>=0.5.0",
        "clu>=0.0.12",
        "tensorboard>=2.20",
        "sentencepiece>=0.2.3",
        "matplotlib>=3.9",
        "pyyaml>=6.0",
        "numpy>=1.26",
    ],
    extras_require={
        "test": ["pytest>=8", "pytest-xdist>=3.5", "hypothesis>=6.100", "ruff>=0.6"],
        # Hugging Face interop and the PyTorch baseline in bench/. torch 2.13.0 (CPU) is
        # what this project was tested with.
        "hf": ["torch>=2.13.0", "transformers>=4.46", "safetensors>=0.4"],
        # seqio's cache_tasks_main (offline caching of tasks) runs on Apache Beam.
        "cache": ["apache-beam>=2.50"],
        # The TPU compiler, for `dsbs compile` on any host (no TPU needed) and for TPU VMs: the
        # libtpu build that jax 0.10.2 pins (jax[tpu] asks for the same).
        "tpu": ["libtpu==0.0.42.*"],
    },
    entry_points={"console_scripts": ["dsbs=dsbs_jax.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
