"""Training: the loop that runs a model's declared stages (:mod:`.loop`) and the accelerate side of it,
devices, precision, trackers and several processes (:mod:`.distributed`)."""

from llmrec.training.distributed import accelerator_for
from llmrec.training.loop import fit

__all__ = ["fit", "accelerator_for"]
