"""The shared training loop, optimizer and schedules, losses, and metrics."""
