"""dsbs-jax: distilling step-by-step on JAX, the T5X way."""

__version__ = "0.1.0"
