"""Every encoder honours `--crf`, opens on every input size, and its refusals never blame the disk.

Issue 19: `--crf` must reach each encoder's own constant-quality control (x264/x265 crf, VP9 crf
with bitrate 0, NVENC VBR + cq), never leaving an encoder at its default bitrate: a detailed
(noisy) clip is transcoded at two qualities and its bitrate read back with ffprobe. Issue 21:
`.webm` from 44.1 kHz audio, metric16 on 1x1 and 2x2 inputs, and encoder errors said as such.
"""

from __future__ import annotations

import cv2  # noqa: F401  (before av: see streamer/__init__.py)

import errno
import subprocess
from pathlib import Path

import av
import pytest
from media_corpus import FFPROBE, H264, audio_in, ffmpeg, ffmpeg_available, probe, video_in

from streamer.cli.main import main
from streamer.sinks.encoders import encoder_opens, ffv1_slices
from streamer.sinks.video import WRITE_HINT, write_error

from conftest import missing_tool

LIBVPX_DEFAULT_KBPS = 256  # what libvpx encodes at when given no bitrate and no crf


@pytest.fixture(scope="module")
def ffmpeg_cli() -> None:
    missing = ffmpeg_available()
    if missing:
        missing_tool(f"these tests make their inputs with the ffmpeg CLI: {missing}")


def transcode(src: Path, out: Path, capsys, *args: str) -> tuple[int, str]:
    code = main(["transcode", str(src), "-o", str(out), "--processor", "null", "--device", "cpu", *args])
    return code, capsys.readouterr().err


def detailed_clip(directory: Path, size: tuple[int, int] = (160, 96), rate: int = 10, duration: float = 1.0) -> Path:
    """Strong temporal noise over a test pattern: every frame is new detail, as in grainy footage.
    The null processor turns green into depth, so the depth picture carries the noise too."""
    out = directory / "detailed.mkv"
    w, h = size
    source = f"testsrc2=size={w}x{h}:rate={rate}:duration={duration},noise=alls=90:allf=t"
    ffmpeg("-f", "lavfi", "-i", source, "-c:v", "ffv1", out)
    return out


def kbps(path: Path) -> float:
    """The video stream's bitrate: its packets' bytes over its duration, as ffprobe reads them."""
    cmd = [FFPROBE, "-v", "error", "-select_streams", "v:0", "-show_entries", "packet=size", "-of", "csv=p=0"]
    sizes = subprocess.run([*cmd, str(path)], capture_output=True, check=True, text=True).stdout.split()
    return sum(map(int, sizes)) * 8 / 1000 / probe(path, ("video",)).video.duration


@pytest.mark.parametrize(
    ("suffix", "codec"),
    [(".mp4", "libx264"), (".webm", "libvpx-vp9"), (".mkv", "libx265"), (".avi", "mpeg4")],
)
def test_lower_crf_gives_more_bits_on_every_encoder(suffix, codec, ffmpeg_cli, tmp_path, capsys):
    src = detailed_clip(tmp_path)
    rates = {}
    for crf in (12, 40):
        out = tmp_path / f"q{crf}{suffix}"
        code, said = transcode(src, out, capsys, "--format", "gray", "--codec", codec, "--crf", str(crf))
        assert code == 0, said
        rates[crf] = kbps(out)
    assert rates[12] > 2 * rates[40], f"{codec}: {rates} kb/s at crf 12 and 40"
    if codec == "libvpx-vp9":  # not held at libvpx's default target
        assert rates[12] > 2 * LIBVPX_DEFAULT_KBPS, f"VP9 at crf 12: {rates[12]:.0f} kb/s"


@pytest.mark.gpu
@pytest.mark.skipif(not encoder_opens("h264_nvenc"), reason="needs NVENC (an NVIDIA GPU and driver)")
def test_nvenc_is_constant_quality_not_its_default_bitrate(ffmpeg_cli, tmp_path, capsys):
    src = detailed_clip(tmp_path, size=(320, 192), rate=30)
    rates = {}
    for crf in (12, 40):
        out = tmp_path / f"q{crf}.mp4"
        code, said = transcode(src, out, capsys, "--format", "gray", "--codec", "h264_nvenc", "--crf", str(crf))
        assert code == 0, said
        rates[crf] = kbps(out)
    assert rates[12] > 2 * rates[40], f"NVENC: {rates} kb/s at cq 12 and 40"


def test_webm_from_44k_audio_resamples_for_opus(ffmpeg_cli, tmp_path, capsys):
    """Opus takes 48 kHz (and its divisors), so 44.1 kHz AAC is resampled, not refused."""
    src = tmp_path / "cd_rate.mp4"
    ffmpeg(*video_in((96, 64), 10, 1.0), *audio_in(1.0, 44100), *H264, "-c:a", "aac", src)
    out = tmp_path / "out.webm"
    code, said = transcode(src, out, capsys)
    assert code == 0, said
    audio = probe(out).audio
    assert audio and audio[0].codec == "opus" and audio[0].sample_rate == 48000
    assert abs(audio[0].duration - probe(src).audio[0].duration) < 0.1


@pytest.mark.parametrize("size", [(1, 1), (2, 2), (3, 5)])
def test_metric16_writes_pictures_of_any_size(size, ffmpeg_cli, tmp_path, capsys):
    """FFV1 takes only as many slices as the picture has room for (24 fail on 2x2 and 1x1)."""
    src = tmp_path / "tiny.mkv"
    w, h = size
    ffmpeg(
        "-f",
        "lavfi",
        "-i",
        f"testsrc2=size=8x8:rate=10:duration=0.5,format=rgb24,crop={w}:{h}:0:0",
        "-c:v",
        "ffv1",
        src,
    )
    out = tmp_path / "depth.mkv"
    code, said = transcode(src, out, capsys, "--format", "metric16")
    assert code == 0, said
    v = probe(out, ("video",)).video
    assert (v.width, v.height, v.frames) == (w, h, 5)


def test_ffv1_slices_fit_the_picture():
    assert [ffv1_slices(w, h) for w, h in [(1, 1), (2, 2), (3, 3), (2, 200), (200, 2), (64, 48)]] == [1, 4, 9, 4, 6, 24]


def test_an_encoder_refusing_its_settings_is_named_not_the_disk(ffmpeg_cli, tmp_path, capsys):
    """MPEG-4 Part 2 has no 4:4:4 (what odd sizes are written in): the error names the encoder."""
    src = tmp_path / "odd.mp4"
    ffmpeg(*video_in((97, 55), 10, 0.5), "-c:v", "libx264", "-pix_fmt", "yuv444p", src)
    code, said = transcode(src, tmp_path / "out.avi", capsys, "--format", "gray", "--codec", "mpeg4")
    assert code != 0
    assert "mpeg4 encoder" in said and "disk" not in said, said


def test_only_disk_errors_blame_the_disk():
    for code in (errno.ENOSPC, errno.EACCES, errno.EROFS):
        try:
            av.error.err_check(-code)  # as PyAV raises what FFmpeg returns
        except av.FFmpegError as exc:
            assert write_error("writing x", exc).hint == WRITE_HINT
    assert write_error("writing x", OSError(errno.ENOSPC, "No space left on device")).hint == WRITE_HINT
    refused = write_error("writing x", av.error.InvalidDataError(errno.EINVAL, "Invalid argument"))
    assert "disk" not in f"{refused} {refused.hint}".replace("not a disk problem", "")
