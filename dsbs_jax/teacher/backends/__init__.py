"""Teacher backends: an OpenAI-compatible server, files of outputs made already, the simulated teacher."""

from dsbs_jax.teacher.backends.base import (
    Backend,
    Completion,
    Request,
    RequestFailed,
    SamplingParams,
)

__all__ = ["Backend", "Completion", "Request", "RequestFailed", "SamplingParams"]
