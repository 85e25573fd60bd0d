"""The engine's intake: frames from the source, through the frames queue, into the model's batches.

The capture thread runs `capture` (pacing a file that feeds live outputs to real time); the model
loop takes `next_batch`. A live source's queue holds one frame, the newest: the stale frames it
drops pass their audio on to the next frame, so a recording loses no sound. Files block instead.
"""

from __future__ import annotations

import threading
import time
from queue import Empty

from streamer.engine.queues import END, StageQueue
from streamer.engine.stats import Stats
from streamer.types import Frame

# a file's times that leap further than this ahead (a recording paused, clips joined) are not
# waited out when pacing: playback goes on at once and is paced from there (FFmpeg's jump threshold)
PACE_LEAP_S = 10.0


class Intake:
    """One run's frames queue and what feeds it and reads it; `stop` is the run's stop event."""

    def __init__(
        self, source, stats: Stats, stop: threading.Event, batch_size: int, queue_size: int, pace: bool
    ) -> None:
        self.source, self.stats, self.stop = source, stats, stop
        self.live = bool(source.info.live)
        self.pace = pace and not self.live
        self.batch_size = 1 if self.live else batch_size
        # live: a one-slot queue that always holds the newest frame; files: back-pressure
        self.frames = (
            StageQueue(1, "latest", "frames", on_drop=self._keep_audio)
            if self.live
            else StageQueue(queue_size, "block", "frames")
        )
        self._lock = threading.Lock()
        self._audio_carry: list = []  # audio of dropped live frames rides on the next frame

    def capture(self) -> None:
        """The capture thread: decode, pace, queue; the end of the source ends the queue."""
        clock: tuple[float, float] | None = None  # (wall, media seconds) of the first frame, when pacing
        try:
            frames = iter(self.source.frames(self.stop))
            while True:
                started = time.perf_counter()
                frame = next(frames, None)
                if frame is None:
                    break
                self.stats.stage("decode", time.perf_counter() - started)
                if self.pace:
                    clock = clock or (time.monotonic(), frame.seconds)
                    delay = clock[0] + frame.seconds - clock[1] - time.monotonic()
                    if delay > PACE_LEAP_S:
                        clock, delay = (time.monotonic(), frame.seconds), 0.0
                    if delay > 0 and self.stop.wait(delay):
                        break
                    frame.capture_time = time.monotonic()
                self.stats.frame_in()
                if not self.frames.put(frame, self.stop):
                    break
        finally:
            self.frames.put_end(END)

    def _keep_audio(self, frame: Frame) -> None:
        with self._lock:
            self._audio_carry.extend(frame.audio)

    def take(self, timeout: float):
        """The next frame (with the audio of live frames dropped before it), or END."""
        item = self.frames.get(timeout=timeout)
        if self.live and item is not END:
            with self._lock:
                if self._audio_carry:
                    item.audio[:0] = self._audio_carry
                    self._audio_carry = []
        return item

    def next_batch(self, carry: list[Frame], poll_s: float) -> list[Frame] | None:
        """Up to `batch_size` frames of one size and focal length (None: the source ended or the
        run stopped); a frame that differs waits in `carry` for the next batch."""
        batch = carry[:1] if carry else []
        carry.clear()
        while len(batch) < self.batch_size:
            try:
                item = self.take(poll_s)
            except Empty:
                if self.stop.is_set():
                    return None
                continue
            if item is END:
                self.frames.put_end(END)  # leave it for the next call
                break
            if batch and (item.image.shape != batch[0].image.shape or item.focal != batch[0].focal):
                carry.append(item)  # a batch holds one frame size and one focal length (photos of two cameras)
                break
            batch.append(item)
        return batch or None
