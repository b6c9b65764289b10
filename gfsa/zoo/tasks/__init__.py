"""Tasks: datasets in their real on-disk formats plus the metrics the paper reports, one file per domain."""
