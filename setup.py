"""invideo_jax: InternVideo and InternVideo2 in JAX/Flax."""
import setuptools

# Exact pins: these versions were resolved and tested together (see docs/ and
# ../shared/reference/environment.md). PyPI moves; bump them together.
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "grain==0.2.18",
    "ml-collections==1.1.0",
    "tensorflow-datasets==4.9.10",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "av==18.1.0",
    "numpy>=2.4,<2.5",
    "safetensors==0.8.0",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
]

EXTRAS_REQUIRE = {
    # torch is a test/conversion dependency only; install torch==2.13.0 FIRST
    # (the CPU wheel), see the Makefile.
    "test": ["pytest==9.2.0", "pytest-xdist==3.8.0", "torch==2.13.0"],
    "convert": ["torch==2.13.0"],
    # libtpu: compiles for real TPU topologies with no TPU attached (`python -m invideo_jax.aot`), and runs on
    # TPU VMs. The version jax 0.10.2 pins.
    "tpu": ["jax[tpu]==0.10.2", "libtpu==0.0.42.1"],
}

setuptools.setup(
    name="invideo_jax",
    version="0.1.0",
    description="JAX/Flax reimplementation of the InternVideo video foundation models",
    packages=setuptools.find_packages(include=["invideo_jax", "invideo_jax.*"]),
    python_requires=">=3.11",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    entry_points={
        "console_scripts": [
            "invideo-train=invideo_jax.main:run",
            "invideo-convert=invideo_jax.convert.cli:run",
        ]
    },
)
