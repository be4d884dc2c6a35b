"""Serving: a trained policy trading paper (live comes next) behind hard risk limits, losing nothing
across restarts."""
