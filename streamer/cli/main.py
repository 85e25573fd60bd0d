"""`streamer` entry point: wires the subcommands and turns errors into one line and an exit code."""

from __future__ import annotations

import logging
import sys
import traceback

import click

from streamer import __version__
from streamer.cli import interrupts
from streamer.cli.interrupts import EXIT_INTERRUPTED
from streamer.errors import Interrupted, StreamerError


class Group(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return ["preview", "transcode", "batch", "virtualcam", "serve", "depth", "bench", "export", "doctor"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="streamer")
@click.option("--debug", is_flag=True, help="Show tracebacks and debug logs.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
@click.pass_context
def cli(ctx: click.Context, debug: bool, quiet: bool) -> None:
    """Live video to metric depth (metres) with Metric3D v2, in real time on a CUDA GPU.

    \b
    Quick start:
      streamer doctor                                  # what works on this machine
      streamer preview --source testsrc                # live depth window, no camera needed
      streamer transcode in.mp4 -o depth.mp4           # depth video, same frames and audio
      streamer batch videos/ -o depth/                 # a library of videos, resumable
      streamer depth photo.jpg -o out/                 # PNG + NPZ (metres) per image

    Weights (metric_depth_vit_*_800k.pth) download from Hugging Face (JUGGHM/Metric3D) on first use.
    """
    ctx.obj = {"debug": debug}
    level = logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format="%(levelname)s: %(message)s", stream=sys.stderr)
    for noisy in ("PIL", "matplotlib", "urllib3", "huggingface_hub", "filelock", "onnxscript", "onnx_ir", "torch.onnx"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))


def _register() -> None:
    from streamer.cli.batch import batch
    from streamer.cli.bench import bench
    from streamer.cli.commands import depth, doctor, preview, serve, transcode, virtualcam
    from streamer.cli.export import export

    for command in (preview, transcode, batch, virtualcam, serve, depth, bench, export, doctor):
        cli.add_command(command)


def main(argv: list[str] | None = None) -> int:
    """Run a command; a run a person stopped leaves without waiting for a busy model thread."""
    _register()
    with interrupts.installed():  # Ctrl-C / SIGTERM: a clean stop; a second one: leave at once
        return interrupts.finish(_run(argv))


def _run(argv: list[str] | None) -> int:
    debug = "--debug" in (argv if argv is not None else sys.argv[1:])
    try:
        cli.main(args=argv, prog_name="streamer", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.UsageError as exc:
        command = exc.ctx.command_path if exc.ctx else "streamer"
        click.echo(f"error: {exc.format_message().rstrip('.')}; see '{command} --help'", err=True)
        return exc.exit_code
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    except click.Abort:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except StreamerError as exc:
        if debug:
            traceback.print_exc()
        prefix = "interrupted" if isinstance(exc, Interrupted) else "error"
        click.echo(f"{prefix}: {exc.message}" + (f"; {exc.hint}" if exc.hint else ""), err=True)
        return exc.exit_code
    except Exception as exc:  # an unexpected bug: still one line unless --debug
        if debug:
            traceback.print_exc()
        click.echo(f"error: unexpected {type(exc).__name__}: {exc} (run with --debug for the traceback)", err=True)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
