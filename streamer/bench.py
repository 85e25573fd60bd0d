"""`streamer bench`: placeholder until the benchmark lands."""

import click

from streamer.errors import StreamerError


@click.command()
def bench() -> None:
    """Measure model-only, serial and pipeline throughput and live latency (not yet available)."""
    raise StreamerError("bench is not implemented yet", hint="see the benchmarks issue")
