"""Files whose timestamps or bitstreams are broken the ways real camera and phone files are (issue 19).

The ordinary corpus (tests/media_corpus.py) holds what clean encoders write. These kinds carry
what they do not: DivX/Xvid AVI with packed B-frames (no pts for most frames), MP4 whose packets
carry pts = dts although the video has B-frames (decoded pts go backwards), edit lists over such
a stream (negative timestamps), repeated timestamps, a slice damaged mid-file that FFmpeg
conceals, and sparse variable-rate frames in AVI. Made with the ffmpeg CLI (and byte edits), never
with PyAV, and judged with ffprobe; each maker takes parameters so HELD_OUT can vary them.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from fractions import Fraction
from functools import partial
from pathlib import Path

from media_corpus import FFMPEG, FFPROBE, H264, Maker, Size, audio_in, ffmpeg, video_in


def packed_xvid_avi(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 2.0,
    bframes: int = 2,
    audio: bool = True,
) -> Path:
    """Xvid with packed B-frames in AVI, as DivX/Xvid camcorders and old films: AVI stores no
    presentation times, so most decoded frames come out without (or with reordered) pts."""
    out = directory / "xvid.avi"
    sound = audio_in(duration, 44100) if audio else []
    codecs = ["-c:v", "libxvid", "-bf", bframes, *(["-c:a", "libmp3lame"] if audio else [])]
    ffmpeg(*video_in(size, rate, duration), *sound, *codecs, out)
    return out


def mpeg4_bframes_avi(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 10,
    duration: float = 2.0,
    bframes: int = 2,
    tag: str = "XVID",
) -> Path:
    """MPEG-4 Part 2 with B-frames from FFmpeg's own encoder, tagged as DivX/Xvid, in AVI."""
    out = directory / "mpeg4.avi"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *("-c:v", "mpeg4", "-bf", bframes, "-vtag", tag, "-q:v", 4),
        *("-c:a", "libmp3lame"),
        out,
    )
    return out


def pts_equal_dts(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 15,
    duration: float = 1.5,
    bframes: int = 2,
    edit_list: bool = False,
    slices: int = 1,
    damage: bool = False,
) -> Path:
    """H.264 with B-frames whose packets carry pts = dts, as some phones write: B-frame
    reordering ignored, so decoded pts go backwards. Without `edit_list` the timeline is moved
    to start at 0; with it the muxer keeps the encoder's edit list over negative timestamps.
    `damage` also corrupts a slice mid-file (the phone clip of issue 19 had one)."""
    out = directory / "pts_dts.mp4"
    ts = "setts=pts=DTS" if edit_list else "setts=ts=DTS-STARTDTS"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *H264,
        *("-bf", bframes, "-x264-params", f"slices={slices}:log-level=error"),
        *("-bsf:v", ts, "-c:a", "aac"),
        out,
    )
    if damage:
        corrupt_packet(out, out, fraction=0.5, where="header" if slices > 1 else "payload")
    return out


def repeated_pts(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 15,
    duration: float = 1.5,
    frames: tuple[int, ...] = (6,),
) -> Path:
    """Matroska where some frames repeat the previous frame's timestamp (a broken remux)."""
    out = directory / "repeated.mkv"
    same = "+".join(f"eq(N\\,{n})" for n in frames)
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *H264,
        *("-bf", 0, "-bsf:v", f"setts=ts=if({same}\\,PREV_OUTPTS\\,PTS)", "-c:a", "aac"),
        out,
    )
    return out


def corrupt_slice(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 15,
    duration: float = 1.5,
    fraction: float = 0.5,
    bframes: int = 2,
) -> Path:
    """H.264 with bytes of one mid-file packet's slice data overwritten: FFmpeg conceals the
    damage and still outputs the frame (flagged as decoded with errors)."""
    clean = directory / "clean.mp4"
    out = directory / "corrupt.mp4"
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration), *H264, "-bf", bframes, "-c:a", "aac", clean)
    corrupt_packet(clean, out, fraction)
    return out


def sparse_vfr_avi(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 30,
    duration: float = 1.0,
    keep: str = "lt(mod(n,5),2)",
    codec: str = "mpeg4",
) -> Path:
    """Variable frame rate in AVI: frames sit in a `rate` grid with whole slots left empty."""
    out = directory / "sparse.avi"
    ffmpeg(
        *video_in(size, rate, duration),
        *audio_in(duration),
        *("-vf", f"select='{keep}'", "-fps_mode", "vfr", "-c:v", codec, "-c:a", "pcm_s16le"),
        out,
    )
    return out


def joined_mpegts(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 25,
    duration: float = 1.0,
    offsets: tuple[float, float] = (20.0, 5.0),
    bframes: int = 2,
) -> Path:
    """Two camcorder recordings (H.264 with B-frames + AAC in MPEG-TS, each starting at its
    `offsets` seconds) joined byte-wise, as `cat 00001.MTS 00002.MTS` does: the timestamps jump
    back (or forward) where the second begins."""
    out = directory / "joined.mts"
    parts = []
    for i, offset in enumerate(offsets):
        part = directory / f"part{i}.ts"
        sound = audio_in(duration, 48000, 440 * (i + 1))
        codecs = [*H264, "-bf", bframes, "-c:a", "aac", "-output_ts_offset", offset, "-f", "mpegts"]
        ffmpeg(*video_in(size, rate, duration), *sound, *codecs, part)
        parts.append(part.read_bytes())
    out.write_bytes(b"".join(parts))
    return out


def late_program_stream(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 25,
    duration: float = 1.6,
    offset: float = 3.7,
    bframes: int = 2,
) -> Path:
    """MPEG-2 with B-frames and MP2 audio in an MPEG program stream (.mpg/.vob, DVD and old
    camcorders) whose clock starts `offset` seconds in."""
    out = directory / "late.mpg"
    codecs = ["-c:v", "mpeg2video", "-bf", bframes, "-g", 12, "-c:a", "mp2", "-output_ts_offset", offset]
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration), *codecs, "-f", "mpeg", out)
    return out


def cut_mid_gop(
    directory: Path,
    size: Size = (96, 64),
    rate: float = 25,
    duration: float = 2.0,
    gop: int = 30,
    dropped: int = 5,
) -> Path:
    """Matroska whose first `dropped` video packets (the keyframe among them) are gone, as a
    recording started or cut mid-GOP: the video decodes from the next keyframe, the audio from 0."""
    full = directory / "full.mkv"
    out = directory / "mid_gop.mkv"
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration), *H264, "-g", gop, "-bf", 2, "-c:a", "aac", full)
    ffmpeg("-i", full, "-c", "copy", "-bsf:v", f"noise=drop=lt(n\\,{dropped})", out)
    return out


def delayed_video_mov(
    directory: Path, size: Size = (96, 64), rate: float = 20, duration: float = 1.5, delay: float = 0.4
) -> Path:
    """MOV whose video starts `delay` seconds after its audio through an empty edit (edit list
    with two entries), as editors and some cameras write."""
    full = directory / "full.mov"
    out = directory / "delayed.mov"
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration), *H264, "-bf", 2, "-c:a", "aac", full)
    ffmpeg("-itsoffset", delay, "-i", full, "-i", full, "-map", "0:v", "-map", "1:a", "-c", "copy", out)
    return out


def thumbnail_first(directory: Path, size: Size = (96, 64), rate: float = 15, duration: float = 1.2) -> Path:
    """Matroska whose first video track is a one-frame JPEG thumbnail, the clip's H.264 second,
    as some cameras and taggers write: the ffmpeg CLI (and players) show the clip."""
    clip = directory / "clip.mp4"
    thumb = directory / "thumb.jpg"
    out = directory / "thumbnail_first.mkv"
    ffmpeg(*video_in(size, rate, duration), *audio_in(duration), *H264, "-bf", 2, "-c:a", "aac", clip)
    ffmpeg("-f", "lavfi", "-i", "color=red:size=64x64", "-frames:v", 1, thumb)
    ffmpeg("-i", thumb, "-i", clip, "-map", "0", "-map", "1", "-c", "copy", out)
    return out


def corrupt_packet(src: Path, out: Path, fraction: float, where: str = "payload") -> None:
    """Overwrite bytes inside the video packet `fraction` of the way through `src` (MP4, H.264
    with 4-byte NAL lengths): in the middle of its payload, or in its second slice's header."""
    cmd = [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_packets", "-of", "json", str(src)]
    packets = json.loads(subprocess.run(cmd, capture_output=True, check=True, text=True).stdout)["packets"]
    packet = packets[int(len(packets) * fraction)]
    pos, size = int(packet["pos"]), int(packet["size"])
    if src != out:
        shutil.copyfile(src, out)
    with out.open("r+b") as f:
        if where == "payload":
            f.seek(pos + size // 2)
            f.write(bytes([0x55, 0xAA] * 4))
            return
        f.seek(pos)
        first = int.from_bytes(f.read(4), "big")
        f.seek(pos + 4 + first + 4 + 1)  # past the first NAL, the second's length and its NAL header
        f.write(b"\xff\xff\xff")


def frame_times(path: Path) -> list[float | None]:
    """The video's presented times as ffprobe decodes it, in its output order: each frame's pts,
    else its packet's dts (None without either). The decoder outputs frames in presentation
    order, so where the pts were written in decode order, the sorted times are the true ones."""
    cmd = [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_frames", "-show_entries"]
    cmd += ["frame=pts_time,pkt_dts_time", "-of", "json", str(path)]
    frames = json.loads(subprocess.run(cmd, capture_output=True, check=True, text=True).stdout)["frames"]
    stamps = [next((f[k] for k in ("pts_time", "pkt_dts_time") if f.get(k, "N/A") != "N/A"), None) for f in frames]
    known = iter(sorted(float(t) for t in stamps if t is not None))
    return [None if t is None else next(known) for t in stamps]


def ffmpeg_times(path: Path) -> list[float]:
    """The video's frame times as the ffmpeg CLI outputs them (its own choice of video stream and
    decode loop, which joins the jumps of MPEG-TS/PS timestamps), relative to the first frame."""
    cmd = [FFMPEG, "-hide_banner", "-nostdin", "-v", "error", "-i", str(path), "-an", "-sn", "-dn"]
    cmd += ["-fps_mode", "passthrough", "-enc_time_base:v", "-1", "-f", "framecrc", "-"]
    lines = subprocess.run(cmd, capture_output=True, check=True, text=True, timeout=120).stdout.splitlines()
    base = next(Fraction(line.split(":", 1)[1].strip()) for line in lines if line.startswith("#tb 0:"))
    ticks = [int(line.split(",")[2]) for line in lines if line and not line.startswith("#")]
    return [float((t - ticks[0]) * base) for t in ticks]


BROKEN: list[tuple[str, Maker]] = [
    ("xvid-packed-bframes-avi", partial(packed_xvid_avi)),
    ("mpeg4-bframes-avi", partial(mpeg4_bframes_avi)),
    ("pts-equal-dts-mp4", partial(pts_equal_dts)),
    ("pts-equal-dts-edit-list", partial(pts_equal_dts, edit_list=True)),
    ("repeated-pts-mkv", partial(repeated_pts)),
    ("corrupt-slice", partial(corrupt_slice)),
    ("sparse-vfr-avi", partial(sparse_vfr_avi)),
    ("cut-mid-gop-mkv", partial(cut_mid_gop)),
    ("delayed-video-mov", partial(delayed_video_mov)),
]

# The same kinds with other sizes, rates, B-frame counts, tags and damage places.
BROKEN_HELD_OUT: list[tuple[str, Maker]] = [
    (
        "xvid-packed-bframes-avi",
        partial(packed_xvid_avi, size=(128, 80), rate=12, duration=1.5, bframes=1, audio=False),
    ),
    ("mpeg4-bframes-avi", partial(mpeg4_bframes_avi, size=(80, 48), rate=25, duration=1.0, bframes=3, tag="DX50")),
    (
        "pts-equal-dts-damaged-slice",
        partial(pts_equal_dts, size=(128, 96), rate=24, duration=1.0, bframes=3, slices=4, damage=True),
    ),
    (
        "pts-equal-dts-edit-list",
        partial(pts_equal_dts, size=(80, 64), rate=12, duration=1.2, bframes=1, edit_list=True),
    ),
    ("repeated-pts-mkv", partial(repeated_pts, size=(80, 48), rate=20, duration=1.0, frames=(3, 4, 11))),
    ("corrupt-slice", partial(corrupt_slice, size=(112, 64), rate=20, duration=1.0, fraction=0.3, bframes=0)),
    (
        "sparse-vfr-avi",
        partial(sparse_vfr_avi, size=(80, 48), rate=25, duration=1.2, keep="not(eq(mod(n,4),1))", codec="mjpeg"),
    ),
    ("cut-mid-gop-mkv", partial(cut_mid_gop, size=(80, 48), rate=20, duration=1.5, gop=12, dropped=3)),
    ("delayed-video-mov", partial(delayed_video_mov, size=(80, 64), rate=12, duration=1.2, delay=0.5)),
]

# Recordings joined byte-wise: the timestamps jump back or forward where the second begins.
JOINED: list[tuple[str, Maker]] = [
    ("joined-mpegts-back", partial(joined_mpegts)),
    ("joined-mpegts-forward", partial(joined_mpegts, size=(80, 48), rate=15, duration=0.8, offsets=(2.0, 300.0))),
]

# Files whose clock starts late: `--start`/`--end` count from where the file starts, as players show it.
LATE: list[tuple[str, Maker]] = [
    ("late-program-stream", partial(late_program_stream)),
    ("late-mpegts-joined", partial(joined_mpegts, offsets=(12.3, 30.0), duration=0.8, bframes=3)),
]
