"""Test set-up: 8 simulated CPU devices, no hub access, absl flags parsed for grain workers."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

import pytest  # noqa: E402

from invideo_jax.data import synthetic  # noqa: E402
from tests import compiling  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_videos(tmp_path_factory) -> str:
    """The generated dataset several test files train on, written once per session: 16 train and 8 val clips of
    8 frames at 16 px (seed 0), VideoMAE csv and InternVideo JSON lists in one directory. Read it; write elsewhere."""
    root = str(tmp_path_factory.mktemp("synthetic_videos"))
    synthetic.write_dataset(root, num_train=16, num_val=8, num_frames=8, size=16, seed=0)
    return root


@pytest.fixture(scope="module")
def quick_compiling(tmp_path_factory):
    """For a module that asks for it (`pytestmark = pytest.mark.usefixtures("quick_compiling")`): its programs
    compiled with LLVM's optimisations off, and each once for the module (tests/compiling.py)."""
    with compiling.quick_compiles(tmp_path_factory.mktemp("xla_cache")):
        yield
