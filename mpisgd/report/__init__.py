"""What a run reports: metrics, the cost split, per-node memory, the timeline."""
