"""Results: run directories read back, the history store, compare, change points, the dashboard."""
