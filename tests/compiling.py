"""Quicker XLA compiles for tests: the same HLO programs with LLVM's optimisations off (and, for `jax.jit(...).lower(
...).compile(FAST_COMPILE)`, XLA's elemental instead of its MLIR fusion emitters). On 2 cores that compiles in a third
to a half of the default's time; results may differ from the default's in the last bits."""
import contextlib

import jax
from jax.experimental.compilation_cache import compilation_cache

FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
_CACHE_SETTINGS = ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs",
                   "jax_persistent_cache_min_entry_size_bytes")


@contextlib.contextmanager
def quick_compiles(cache_dir):
    """Compiling for tests that train in this process, as it was again on exit: LLVM's optimisations off and a
    persistent compilation cache in `cache_dir`, so that a program compiled again (each `trainer.train` call jits its
    own init, step and predict) is read back instead, as `stages.run_pipeline` does between stages."""
    before = dict({name: getattr(jax.config, name) for name in _CACHE_SETTINGS},
                  jax_disable_most_optimizations=jax.config.read("jax_disable_most_optimizations"))
    compilation_cache.reset_cache()  # the cache directory is read once, at the first compile after a reset
    jax.config.update("jax_disable_most_optimizations", True)
    jax.config.update("jax_compilation_cache_dir", str(cache_dir))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
    try:
        yield
    finally:
        compilation_cache.reset_cache()
        for name, value in before.items():
            jax.config.update(name, value)
