"""Threads, queues, device transfers and statistics. Knows frames and tensors, not Metric3D."""
