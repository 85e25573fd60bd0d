"""The command line: thin commands that build a config and call the library. Only this package prints."""
