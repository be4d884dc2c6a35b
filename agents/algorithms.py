"""The stable-baselines3 algorithms by name, and what each accepts."""

from __future__ import annotations

from typing import Any

import gymnasium as gym

from agents.config import CONTINUOUS_ONLY, DISCRETE_ONLY, AgentConfig, ConfigError

ON_POLICY = {"ppo", "a2c", "recurrent_ppo"}
# hyperparameters each algorithm takes (AgentConfig fields not listed are ignored for it)
ACCEPTS = {
    "ppo": {"learning_rate", "gamma", "n_steps", "batch_size", "n_epochs", "gae_lambda", "ent_coef",
            "clip_range", "vf_coef", "max_grad_norm"},
    "recurrent_ppo": {"learning_rate", "gamma", "n_steps", "batch_size", "n_epochs", "gae_lambda",
                      "ent_coef", "clip_range", "vf_coef", "max_grad_norm"},
    "a2c": {"learning_rate", "gamma", "n_steps", "gae_lambda", "ent_coef", "vf_coef", "max_grad_norm"},
    "dqn": {"learning_rate", "gamma", "buffer_size", "learning_starts", "batch_size", "train_freq",
            "gradient_steps", "tau", "exploration_fraction"},
    "sac": {"learning_rate", "gamma", "buffer_size", "learning_starts", "batch_size", "train_freq",
            "gradient_steps", "tau", "ent_coef"},
    "td3": {"learning_rate", "gamma", "buffer_size", "learning_starts", "batch_size", "train_freq",
            "gradient_steps", "tau"},
}  # fmt: skip


def algorithm_class(algo: str) -> type:
    if algo == "recurrent_ppo":
        from sb3_contrib import RecurrentPPO

        return RecurrentPPO
    import stable_baselines3 as sb3

    classes = {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN, "sac": sb3.SAC, "td3": sb3.TD3}
    if algo not in classes:
        raise ConfigError(f"agent.algo={algo!r} is not offered; choose one of {', '.join(ACCEPTS)}")
    return classes[algo]


def build_model(agent: AgentConfig, env: Any, *, seed: int, device: str, tensorboard_log: str | None) -> Any:
    """The algorithm of ``agent`` on ``env`` (an SB3 VecEnv), checked against its action space."""
    space = env.action_space
    if agent.algo in DISCRETE_ONLY and not isinstance(space, gym.spaces.Discrete):
        raise ConfigError(f"agent={agent.algo} needs discrete actions: set env.action_type=discrete")
    if agent.algo in CONTINUOUS_ONLY and not isinstance(space, gym.spaces.Box):
        raise ConfigError(f"agent={agent.algo} needs continuous actions: add env.action_type=continuous")
    params = {k: v for k, v in agent.hyperparameters().items() if k in ACCEPTS[agent.algo]}
    if agent.algo in ON_POLICY and "batch_size" in params and "n_steps" in params:
        rollout = params["n_steps"] * env.num_envs
        params["batch_size"] = min(params["batch_size"], rollout)  # a minibatch cannot exceed the rollout
    arch = list(agent.net_arch)
    policy_kwargs = {"net_arch": arch if agent.algo in ("dqn", "sac", "td3") else {"pi": arch, "vf": arch}}
    if agent.algo in ("sac", "td3"):
        policy_kwargs = {"net_arch": {"pi": arch, "qf": arch}}
    return algorithm_class(agent.algo)(
        agent.policy, env, seed=seed, device=device, tensorboard_log=tensorboard_log,
        policy_kwargs=policy_kwargs, verbose=0, **params,
    )  # fmt: skip
