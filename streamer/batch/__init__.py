"""Many files: resumable batch transcoding on one machine, or on a Ray cluster (optional extra).

inputs.py (what to read, where outputs go), resume.py (sidecars that make reruns skip finished
work), local.py (one model per GPU or CPU, several files in flight), cluster.py (Ray actors),
report.py (outcomes and the JSON report), run.py (`run_batch`, from start to end).
"""

from streamer.batch.report import BatchReport, Outcome, Progress
from streamer.batch.run import run_batch

__all__ = ["BatchReport", "Outcome", "Progress", "run_batch"]
