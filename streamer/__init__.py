"""streamer: live video to metric depth."""
