"""Training backends, the policy bundle and the training configuration.

``agents.load_policy(path)`` loads a trained policy bundle (see :mod:`agents.bundle`).
"""

from agents.bundle import Policy, load_policy

__all__ = ["Policy", "load_policy"]
