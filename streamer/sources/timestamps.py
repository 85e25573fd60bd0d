"""Presentation times for decoded frames, for files whose containers get them wrong.

Real files break the muxer in three ways: frames with no pts at all (DivX/Xvid AVI with packed
B-frames: AVI stores no presentation times), pts that go backwards (phone clips whose packets carry
pts = dts, ignoring B-frame reordering), and repeated timestamps (broken remuxes). The decoder
already hands frames out in presentation order; only their times are wrong. So the times of a few
frames in a row are sorted and given out in that order: a file whose pts are right is unchanged,
one whose pts were written in decode order gets them back in presentation order. A frame without
pts takes its packet's dts (what FFmpeg's best-effort timestamp falls back to); a frame with no
time at all, or one not after the previous frame's, gets the previous time plus one frame. The
times handed on always strictly increase.

Formats made for broadcast and camcorders (MPEG-TS, MPEG-PS) may also jump: recordings cut and
joined byte-wise (`cat a.mts b.mts`), a camera's clock reset, a 33-bit clock that wraps. There
FFmpeg's own rule applies (its `-dts_delta_threshold`): a stream's dts jumping forward by more
than 10 s, or back by more than 0.1 s, moves every later packet of the file by the jump, so all
streams go on where they were and audio stays with its video.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from fractions import Fraction
from typing import Generic, TypeVar

import av

Item = TypeVar("Item")
# Frames whose times are sorted together: more than any B-frame reordering depth seen in the wild
# (H.264 allows 16, encoders use up to 4 or 5), few enough to hold as decoded YUV frames.
REORDER_WINDOW = 8


class FrameClock(Generic[Item]):
    """Strictly increasing presentation times (in stream ticks) for decoded frames, in their order."""

    def __init__(self, step: int, start: int = 0, window: int = REORDER_WINDOW) -> None:
        self.step = max(1, step)  # one frame, in ticks: used where a time must be made up
        self.start = start  # the first frame's time when it carries none
        self.window = window
        self._waiting: deque[tuple[Item, bool, int]] = deque()  # (frame, has a time?, duration)
        self._times: list[int] = []  # the waiting frames' times, smallest first
        self.previous: int | None = None
        self.repaired = 0  # frames whose time was missing or not after the previous one

    def push(self, item: Item, pts: int | None, dts: int | None, duration: int = 0) -> Iterator[tuple[Item, int]]:
        """Take a decoded frame; hand out (frame, time) for those that leave the sorting window."""
        time = pts if pts is not None else dts
        if time is not None:
            heapq.heappush(self._times, time)
        self._waiting.append((item, time is not None, duration))
        while len(self._waiting) > self.window:
            yield self._release()

    def drain(self) -> Iterator[tuple[Item, int]]:
        """The frames still waiting, at the end of the input."""
        while self._waiting:
            yield self._release()

    def _release(self) -> tuple[Item, int]:
        item, timed, duration = self._waiting.popleft()
        time = heapq.heappop(self._times) if timed else None
        if self.previous is None:
            time = self.start if time is None else time
        elif time is None or time <= self.previous:
            time = self.previous + (duration if duration and duration > 0 else self.step)
            self.repaired += 1
        self.previous = time
        return item, time


# FFmpeg's defaults (fftools: dts_delta_threshold, and a tenth of a second back)
JUMP_FORWARD_S = 10
JUMP_BACK_S = Fraction(1, 10)


class Rejoin:
    """Removes timestamp jumps from the packets of a file whose format allows them (see above)."""

    def __init__(self, container: av.container.InputContainer) -> None:
        self.active = bool(container.format.flags & av.format.Flags.ts_discont.value)
        self.offset = Fraction(0)  # seconds added to every packet's times
        self.jumps = 0
        self._next: dict[int, Fraction] = {}  # stream index -> where its next packet should start

    def fix(self, packet: av.Packet) -> None:
        """Shift `packet`'s pts and dts by the file's offset, after updating it for a jump here."""
        if not self.active:
            return
        tb = packet.time_base
        if packet.dts is not None:  # (MPEG-PS leaves it out of some packets: they only move along)
            dts = (packet.dts + round(self.offset / tb)) * tb
            expected = self._next.get(packet.stream.index)
            if expected is not None and not -JUMP_BACK_S <= dts - expected <= JUMP_FORWARD_S:
                self.offset -= dts - expected
                self.jumps += 1
                dts = expected
            self._next[packet.stream.index] = dts + (packet.duration or 0) * tb
            packet.dts += round(self.offset / tb)
        if packet.pts is not None:
            packet.pts += round(self.offset / tb)
