"""invideo_jax: InternVideo and InternVideo2 in JAX/Flax."""
