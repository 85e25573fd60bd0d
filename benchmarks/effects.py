"""The keyed view's cost per frame at 1280x720, A/B against another revision of processors/effects.py.

    python benchmarks/effects.py                          # this checkout, 1 and 2 torch threads
    python benchmarks/effects.py --against 812b520        # and effects.py as it was at that commit
    python benchmarks/effects.py --device cuda --runs 50

The scene is the one `streamer bench` keys (streamer.bench_costs.effects_ms: a random picture, metres on a
16 px grid). Each revision keeps its own Keyer (hysteresis, scratch tensors) as a sink does; the
revisions take turns frame by frame, so a machine that other jobs load slows both alike. Reported
per frame: the median process CPU time (what the work costs, whatever else runs) and the median
wall time (what a viewer waits, which on a loaded machine is several times the CPU time).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from streamer.effect_settings import EffectSettings

ROOT = Path(__file__).resolve().parent.parent
SOURCE = "streamer/processors/effects.py"
CASES = {
    "key, blurred background": EffectSettings(0.0, 2.0, "blur"),
    "key, colour background": EffectSettings(0.0, 2.0, "color:#00B140"),
    "depth of field alone": EffectSettings(background="none", focus=1.2),
}


def load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(f"effects_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def scene(device: torch.device, w: int = 1280, h: int = 720) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (1, h, w, 3), generator=gen, dtype=torch.uint8).to(device)
    depth = (0.5 + 4 * torch.rand(1, h // 16, w // 16, generator=gen)).to(device)
    return images, F.interpolate(depth[:, None], (h, w), mode="bilinear", align_corners=False)[:, 0]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(modules: dict, device: torch.device, runs: int) -> None:
    images, depth = scene(device)
    for case, settings in CASES.items():
        keyers = {name: m.Keyer() for name, m in modules.items()}
        times: dict[str, tuple[list, list]] = {name: ([], []) for name in modules}
        for i in range(runs + 2):  # two warm-up frames
            for name, keyer in keyers.items():
                sync(device)
                cpu, wall = time.process_time(), time.perf_counter()
                keyer(images, depth, settings, 1000.0, alpha_out=False)
                sync(device)
                if i >= 2:
                    times[name][0].append(time.process_time() - cpu)
                    times[name][1].append(time.perf_counter() - wall)
        cells = [
            f"{n}: CPU {1000 * statistics.median(c):5.1f} wall {1000 * statistics.median(w):5.1f}"
            for n, (c, w) in times.items()
        ]
        print(f"  {case:24s} " + "   ".join(cells) + "  ms", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", help="a git revision whose effects.py to time alongside")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--runs", type=int, default=25)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        modules = {}
        if args.against:
            old = Path(tmp) / "effects_old.py"
            old.write_bytes(
                subprocess.run(
                    ["git", "show", f"{args.against}:{SOURCE}"], cwd=ROOT, check=True, capture_output=True
                ).stdout
            )
            modules[args.against] = load("old", old)
        modules["this"] = load("this", ROOT / SOURCE)
        for threads in args.threads:
            torch.set_num_threads(threads)
            print(f"{args.device}, {threads} torch thread(s), 1280x720, median of {args.runs}:")
            measure(modules, torch.device(args.device), args.runs)


if __name__ == "__main__":
    main()
