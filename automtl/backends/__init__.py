"""Who runs the trials: ``local`` (worker processes on this machine) or ``ray`` (a cluster)."""
