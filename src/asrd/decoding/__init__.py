"""Decoding: requests' audio cut into windows, batched across requests on one thread per
model, checked like Whisper's sequential pipeline checks them.

`windows` cuts audio, `batching` picks batches, `packing` shares model inputs between short
windows, `checks` judges the results, `whisper` runs the model and `scheduler` runs it all.
"""

from .memory import release_free_memory
from .results import DecodedSegment, JobResult
from .scheduler import Scheduler
from .settings import DecodeSettings
from .windows import Job, new_job

__all__ = [
    "DecodeSettings",
    "DecodedSegment",
    "Job",
    "JobResult",
    "Scheduler",
    "new_job",
    "release_free_memory",
]
