"""Many files: resumable batch transcoding on one machine, or on a Ray cluster (optional extra).

inputs.py (what to read, where outputs go), resume.py (sidecars that make reruns skip finished
work), local.py (one model per GPU or CPU, several files in flight), cluster.py (Ray actors),
report.py (outcomes and the JSON report), run.py (`run_batch`, from start to end).

Lazy (lazy_loader): `streamer batch --help` reads inputs.py and report.py without importing torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={"report": ["BatchReport", "Outcome", "Progress"], "run": ["run_batch"]},
)
