"""`streamer transcode` as a user times it, against a plain PyAV loop around DepthEstimator.

A synthetic 640x480 H.264 clip and a checkpoint of deterministic weights (speed does not depend
on the weights) are made in a temporary folder. Each round runs, in turn: the command with its
defaults (a new process, start-up included, as a person waits for it), and the plain loop
(decode, `DepthEstimator.predict`, colour picture, encode, one after another, torch on every
core: what a user's own script does), after one untimed run of each command (the first exports the
graph for the ONNX runtimes, once per checkpoint). `--tree NAME=PATH` adds the command from another checkout
of this repository (e.g. an older commit in a git worktree), so old and new are timed in one run;
`--variant NAME="FLAGS"` adds the command from this checkout with extra flags (e.g. --lanes 1).

usage (repository root):
  python benchmarks/transcode.py --frames 40 --input-size 224x392 --rounds 3
  python benchmarks/transcode.py --tree before=/tmp/streamer-before --rounds 3
  python benchmarks/transcode.py --variant "one lane=--lanes 1" --rounds 3
"""

from __future__ import annotations

import cv2

import argparse
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import av
import numpy as np
import torch

from streamer import DepthEstimator
from streamer.models.metric3d import build_metric3d
from streamer.models.metric3d.weights import load_weights, rule_weights, to_model_keys
from streamer.sources.testsrc import pattern_image

SIZE = (640, 480)
RATE = 25


def make_clip(path: Path, frames: int) -> Path:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=RATE, options={"preset": "veryfast", "crf": "18"})
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        for i in range(frames):
            picture = av.VideoFrame.from_ndarray(pattern_image(*SIZE, i / RATE), format="rgb24")
            for packet in stream.encode(picture):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def make_checkpoint(path: Path) -> Path:
    model = build_metric3d("vit-small", device="meta")
    state = rule_weights(model)
    load_weights(model, to_model_keys(state))
    torch.save({"model_state_dict": state}, path)
    return path


def run_command(
    tree: Path, clip: Path, out: Path, checkpoint: Path, input_size: str, flags: tuple[str, ...] = ()
) -> float:
    """Seconds for the whole command, start-up included."""
    env = {**os.environ, "PYTHONPATH": str(tree)}
    args = [sys.executable, "-m", "streamer", "transcode", str(clip), "-o", str(out), "--overwrite"]
    args += ["--checkpoint", str(checkpoint), "--input-size", input_size, "--device", "cpu", *flags]
    started = time.perf_counter()
    done = subprocess.run(args, env=env, cwd=tree, capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{tree}: transcode failed:\n{done.stderr[-2000:]}")
    return elapsed


def run_plain_loop(clip: Path, out: Path, checkpoint: Path, input_size: str) -> float:
    """Seconds for a user's own loop: the model loaded, then decode, predict, colour, encode."""
    torch.set_num_threads(os.cpu_count() or 1)
    h, w = (int(v) for v in input_size.split("x"))
    started = time.perf_counter()
    estimator = DepthEstimator(checkpoint=str(checkpoint), input_size=(h, w), device="cpu", runtime="torch")
    with av.open(str(clip)) as src, av.open(str(out), "w") as dst:
        enc = dst.add_stream("libx264", rate=RATE, options={"preset": "veryfast", "crf": "18"})
        enc.width, enc.height, enc.pix_fmt = *SIZE, "yuv420p"
        for frame in src.decode(video=0):
            depth = estimator.predict(frame.to_ndarray(format="rgb24"), fx=500.0)["depth"]
            lo, hi = np.percentile(depth[::4, ::4], (2, 98))
            levels = np.clip((hi - depth) * (255 / max(hi - lo, 1e-3)), 0, 255).astype(np.uint8)
            picture = cv2.applyColorMap(levels, cv2.COLORMAP_TURBO)[..., ::-1]
            for packet in enc.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(picture), format="rgb24")):
                dst.mux(packet)
        for packet in enc.encode(None):
            dst.mux(packet)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--input-size", default="224x392")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tree", action="append", default=[], metavar="NAME=PATH")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=FLAGS")
    args = parser.parse_args()
    here = Path(__file__).resolve().parents[1]
    trees: dict[str, tuple[Path, tuple[str, ...]]] = {"this": (here, ())}
    trees.update((name, (Path(path).resolve(), ())) for name, path in (t.split("=", 1) for t in args.tree))
    trees.update((name, (here, tuple(shlex.split(flags)))) for name, flags in (v.split("=", 1) for v in args.variant))
    with TemporaryDirectory() as tmp:
        folder = Path(tmp)
        clip = make_clip(folder / "clip.mp4", args.frames)
        checkpoint = make_checkpoint(folder / "metric_depth_vit_small_800k.pth")
        seconds: dict[str, list[float]] = {f"transcode ({name})": [] for name in trees}
        seconds["plain PyAV loop, torch"] = []
        for tree, flags in trees.values():  # not timed: a checkout's first run exports the graph once
            run_command(tree, clip, folder / "out.mp4", checkpoint, args.input_size, flags)
        for _ in range(args.rounds):  # round-robin: a load that comes and goes hits them alike
            for name, (tree, flags) in trees.items():
                seconds[f"transcode ({name})"].append(
                    run_command(tree, clip, folder / "out.mp4", checkpoint, args.input_size, flags)
                )
            seconds["plain PyAV loop, torch"].append(
                run_plain_loop(clip, folder / "loop.mp4", checkpoint, args.input_size)
            )
    loop = min(seconds["plain PyAV loop, torch"])
    print(
        f"{args.frames} frames of {SIZE[0]}x{SIZE[1]}, input {args.input_size}, {args.rounds} rounds, {os.cpu_count()} cores"
    )
    print("| run | s (median) | fastest s | fps (fastest) | vs plain loop |")
    print("|---|---|---|---|---|")
    for name, times in seconds.items():
        best = min(times)
        print(
            f"| {name} | {statistics.median(times):.1f} | {best:.1f} | {args.frames / best:.2f} | {loop / best:.2f}x |"
        )


if __name__ == "__main__":
    main()
