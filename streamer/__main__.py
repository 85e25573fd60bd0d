from streamer.cli.entry import run

run()
