"""Performance metrics and the replay evaluation report."""
