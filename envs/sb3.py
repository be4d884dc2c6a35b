"""A stable-baselines3 ``VecEnv`` over the native batched env (no copies of the simulation).

SB3 expects, per sub-env, a list of info dicts carrying ``terminal_observation`` and
``TimeLimit.truncated`` when an episode ends, and ``episode`` (``r`` return, ``l`` length,
``t`` seconds since start) as ``VecMonitor`` would write it. The finished episode's trading
picture (``equity``, ``fees``, ``funding``, ``turnover``, ``liquidated``, ...) rides along in the
same dict for callbacks that log it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import VecEnv
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from envs.vector import INFO_KEYS, BatchedMarketReplayEnv


class SB3VecEnv(VecEnv):
    """``SB3VecEnv(BatchedMarketReplayEnv(num_envs=64, bars=df, ...))`` or
    ``SB3VecEnv.make(num_envs=64, bars=df, ...)``."""

    def __init__(self, env: BatchedMarketReplayEnv):
        self.env = env  # before VecEnv.__init__, which reads render_mode through get_attr
        super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)
        self._actions: np.ndarray | None = None
        self._t0 = time.time()

    @classmethod
    def make(cls, num_envs: int, **kwargs: Any) -> SB3VecEnv:
        return cls(BatchedMarketReplayEnv(num_envs=num_envs, copy=True, **kwargs))

    def reset(self) -> np.ndarray:
        options = self._options[0] or None
        obs, info = self.env.reset(seed=self._seeds[0], options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{k: info[k][i].item() for k in INFO_KEYS} for i in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        obs, rewards, terminated, truncated, info = self.env.step(self._actions)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            final = info["final_info"]
            elapsed = round(time.time() - self._t0, 6)
            for i in np.flatnonzero(dones):
                d = infos[i]
                d.update({k: final[k][i].item() for k in INFO_KEYS})
                d["terminal_observation"] = info["final_obs"][i]
                d["TimeLimit.truncated"] = bool(truncated[i])
                d["episode"] = {
                    "r": float(final["episode_return"][i]),
                    "l": int(final["episode_length"][i]),
                    "t": elapsed,
                }
                # the trading picture of the finished episode, for callbacks that log it
                d.update({k: final[k][i].item() for k in final if k.startswith("episode_")})
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        self.env.close()

    # -- the VecEnv attribute API: one env object serves every index -------------------------

    def _count(self, indices: VecEnvIndices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        return [getattr(self.env, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        setattr(self.env, attr_name, value)

    def env_method(
        self, method_name: str, *args: Any, indices: VecEnvIndices = None, **kwargs: Any
    ) -> list[Any]:
        return [getattr(self.env, method_name)(*args, **kwargs)] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * self._count(indices)

    def get_images(self) -> Sequence[np.ndarray | None]:
        return [None] * self.num_envs
