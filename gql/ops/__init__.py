"""What operators see and tune: Prometheus metrics, a log line per operation, the loop's
longest stall, the garbage collector's policy, and ``jobql check``."""
