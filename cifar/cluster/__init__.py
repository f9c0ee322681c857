"""What the Ray cluster has and who holds it; the watchdog of a waiting job; local test clusters."""
