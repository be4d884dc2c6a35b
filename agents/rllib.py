"""Training with Ray RLlib (pinned 2.60, new API stack) on the native batched env.

- The env is registered by name (:data:`ENV_NAME`). Each env runner builds one
  :class:`envs.vector.BatchedMarketReplayEnv` of ``num_envs_per_env_runner`` accounts (gymnasium's
  ``vector_entry_point`` mode, NEXT_STEP autoreset as RLlib expects) over one
  :class:`envs.market.MarketData` that the driver prepared and put into Ray's object store once:
  workers on a node read the same shared-memory arrays instead of re-reading the store.
- Workers get plain resolved dicts (never Hydra objects): the env's keyword arguments.
- :func:`rllib_config` is the whole translation from :class:`agents.config.TrainConfig` to an
  RLlib ``AlgorithmConfig``, in one place.
- TensorBoard: plain ``algo.train()`` writes nothing, so each result dict is written under
  ``tb/`` here: ``trading/*`` (finished episodes, mean over the last 100), ``validation/*`` next to
  ``validation_buy_and_hold/*``, and RLlib's own numbers under ``rllib/*``.
- The bundle holds the inference RLModule (``policy/rl_module``); :class:`RLlibModel` loads and
  runs it with torch alone: loading a bundle never starts Ray.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from agents.bundle import save_bundle
from agents.config import ConfigError, TrainConfig
from agents.training import TrainResult, bundle_spec, env_refusal, episode_scalars, prepare_run
from envs.market import prepare
from envs.vector import BatchedMarketReplayEnv
from reports import metrics

log = logging.getLogger(__name__)

ENV_NAME = "klinegym-batched"
EPISODE_WINDOW = 100  # trading/* scalars: the mean over this many latest finished episodes
MODULE_DIR = "rl_module"


def make_env(ctx: dict[str, Any]) -> BatchedMarketReplayEnv:
    """The env creator RLlib calls in each env runner: ``ctx["market"]`` is an object ref (or the
    data itself), ``ctx["env"]`` the env's keyword arguments, ``ctx["num_envs"]`` the accounts."""
    market = ctx["market"]
    if not hasattr(market, "features"):
        import ray

        market = ray.get(market)
    return BatchedMarketReplayEnv(
        num_envs=int(ctx.get("num_envs", 1)),
        prepared=market,
        autoreset_mode=gym.vector.AutoresetMode.NEXT_STEP,
        copy=True,
        **ctx["env"],
    )


def _trading_callbacks():
    from ray.rllib.callbacks.callbacks import RLlibCallback

    class TradingCallbacks(RLlibCallback):
        """Logs the trading picture of every finished episode (see
        :func:`agents.training.episode_scalars`) into the env runner's metrics."""

        def on_episode_end(self, *, episode, env_runner, metrics_logger, **kwargs) -> None:
            info = episode.get_infos(-1)
            stats = info.get("episode")
            if stats is None:
                return
            ctx = env_runner.config.env_config
            values = episode_scalars({**info, **stats}, ctx["periods_per_year"], ctx["env"]["initial_equity"])
            for k, v in values.items():
                metrics_logger.log_value(("trading", k), v, reduce="mean", window=EPISODE_WINDOW)

    return TradingCallbacks


# fields of AgentConfig and the AlgorithmConfig attribute each sets; those with no RLlib meaning
# are refused when set rather than silently ignored
_AGENT_TO_RLLIB = {
    "learning_rate": "lr",
    "gamma": "gamma",
    "batch_size": "minibatch_size",
    "n_epochs": "num_epochs",
    "gae_lambda": "lambda_",
    "ent_coef": "entropy_coeff",
    "clip_range": "clip_param",
    "vf_coef": "vf_loss_coeff",
    "max_grad_norm": "grad_clip",
}


def rllib_config(cfg: TrainConfig, env_config: dict[str, Any], observation_space, action_space):
    """The RLlib ``AlgorithmConfig`` for ``cfg``: algorithm, env runners, learners, model, and
    every hyperparameter. ``agent.n_steps`` is the rollout fragment per account, so one training
    batch is ``n_steps`` x accounts per runner x runners, as in stable-baselines3."""
    from ray.rllib.algorithms.appo import APPOConfig
    from ray.rllib.algorithms.impala import IMPALAConfig
    from ray.rllib.algorithms.ppo import PPOConfig
    from ray.rllib.core.rl_module.default_model_config import DefaultModelConfig

    a, t = cfg.agent, cfg.trainer
    config = {"ppo": PPOConfig, "appo": APPOConfig, "impala": IMPALAConfig}[a.algo]()
    per_runner = t.num_envs_per_env_runner or t.n_envs
    n_steps = a.n_steps or 256
    batch = n_steps * per_runner * max(t.num_env_runners, 1)
    training: dict[str, Any] = {"train_batch_size_per_learner": max(batch // max(t.num_learners, 1), 1)}
    for field, value in a.hyperparameters().items():
        if field == "n_steps":
            continue
        attr = _AGENT_TO_RLLIB.get(field)
        if attr is None or not hasattr(config, attr):
            raise ConfigError(
                f"agent.{field}={value} has no meaning for RLlib {a.algo.upper()}; set agent.{field}=null"
            )
        training[attr] = value
    return (
        config.environment(
            ENV_NAME,
            env_config=env_config,
            observation_space=observation_space,
            action_space=action_space,
            # actions reach the env as the policy gives them, clipped to the space: the bundle's
            # act() does the same, so replays and serving see the training actions
            normalize_actions=False,
            clip_actions=True,
        )
        .framework("torch")
        .env_runners(
            num_env_runners=t.num_env_runners,
            num_envs_per_env_runner=per_runner,
            gym_env_vectorize_mode="vector_entry_point",
            rollout_fragment_length=n_steps,
        )
        .learners(num_learners=t.num_learners, num_gpus_per_learner=t.num_gpus_per_learner)
        .rl_module(
            model_config=DefaultModelConfig(
                fcnet_hiddens=list(a.net_arch), fcnet_activation="tanh", vf_share_layers=False
            )
        )
        .training(**training)
        .callbacks(_trading_callbacks())
        .debugging(seed=cfg.seed)
    )


# -- Ray --------------------------------------------------------------------------------------


def _start_ray(cfg: TrainConfig) -> bool:
    """Start or join Ray per ``ray.address``; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    env_vars = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env_vars}, "include_dashboard": False}
    if cfg.ray.address:
        kwargs["address"] = cfg.ray.address
    elif cfg.ray.num_cpus is not None:
        kwargs["num_cpus"] = cfg.ray.num_cpus
    try:
        ray.init(**kwargs)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"ray.address={cfg.ray.address!r}: {str(exc).splitlines()[0]}; leave ray.address empty to "
            "start a local Ray, or start the cluster first (ray start --head)"
        ) from exc
    return True


def check_resources(cfg: TrainConfig, resources: dict[str, float]) -> None:
    """Refuse, before anything waits forever, a request the Ray cluster cannot place."""
    t = cfg.trainer
    gpus = t.num_gpus_per_learner * max(t.num_learners, 1)
    have_gpus = resources.get("GPU", 0.0)
    if gpus > have_gpus:
        raise ConfigError(
            f"trainer.num_gpus_per_learner={t.num_gpus_per_learner:g} x {max(t.num_learners, 1)} "
            f"learner(s) asks for {gpus:g} GPU(s) but the Ray cluster has {have_gpus:g}; set "
            "trainer.num_gpus_per_learner=0, or join a cluster with GPUs (ray.address=auto)"
        )
    # one CPU per env runner and per learner actor, plus one for the driver's own work
    cpus = t.num_env_runners + t.num_learners + 1
    have_cpus = resources.get("CPU", 0.0)
    if cpus > have_cpus:
        raise ConfigError(
            f"trainer.num_env_runners={t.num_env_runners} and trainer.num_learners={t.num_learners} need "
            f"{cpus} CPUs with the driver, but the Ray cluster has {have_cpus:g}; lower them or add nodes"
        )


# -- the trained policy, without Ray ------------------------------------------------------------


class RLlibModel:
    """An inference RLModule behind the ``predict`` call :class:`agents.bundle.Policy` makes:
    the deterministic action is the distribution's mode (argmax of the logits, or the Gaussian's
    mean clipped to the action space, as ``clip_actions`` does in training)."""

    def __init__(self, module: Any, action_space: gym.Space):
        self.module, self.action_space = module, action_space

    @classmethod
    def load(cls, path: Path, action_space: gym.Space) -> RLlibModel:
        from ray.rllib.core.rl_module.rl_module import RLModule

        return cls(RLModule.from_checkpoint(str(path)), action_space)

    def save(self, path: Path) -> None:
        self.module.save_to_path(str(path))

    def predict(self, obs, state=None, episode_start=None, deterministic: bool = True):
        import torch

        x = np.asarray(obs, dtype=np.float32)
        single = x.ndim == 1
        with torch.no_grad():
            out = self.module.forward_inference({"obs": torch.from_numpy(x[None] if single else x)})
            dist = self.module.get_inference_action_dist_cls().from_logits(out["action_dist_inputs"])
            action = (dist.to_deterministic() if deterministic else dist).sample().numpy()
        if isinstance(self.action_space, gym.spaces.Box):
            action = np.clip(action, self.action_space.low, self.action_space.high).astype(np.float32)
        return (action[0] if single else action), None


def _current_module(algo: Any) -> Any:
    """The driver's inference module, with the learners' latest weights."""
    from ray.rllib.core import DEFAULT_MODULE_ID

    module = algo.get_module()
    weights = algo.learner_group.get_weights()[DEFAULT_MODULE_ID]
    module.set_state({k: weights[k] for k in module.get_state()})
    return module


# -- training -----------------------------------------------------------------------------------


def _scalars(result: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of an RLlib result dict, ``/``-joined."""
    out: dict[str, float] = {}
    for k, v in result.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(_scalars(v, f"{key}/"))
        elif isinstance(v, (int, float, np.number)) and not isinstance(v, bool) and np.isfinite(v):
            out[key] = float(v)
    return out


def _write_result(writer: Any, result: dict[str, Any], step: int) -> None:
    runners = result.get("env_runners", {})
    for k, v in _scalars(runners.get("trading", {})).items():
        writer.add_scalar(f"trading/{k}", v, step)
    for part in ("env_runners", "learners"):
        for k, v in _scalars(result.get(part, {})).items():
            if not k.startswith("trading/"):
                writer.add_scalar(f"rllib/{part}/{k}", v, step)


def train_rllib(cfg: TrainConfig, run_dir: Path, config_dict: dict[str, Any]) -> TrainResult:
    """Train per ``cfg`` with RLlib into ``run_dir``: ``tb/``, ``checkpoints/`` (``step_N``,
    ``best``, ``last``: full RLlib checkpoints, ``resume=`` takes one), ``policy/``."""
    import ray
    import torch

    from envs.config import EnvConfig

    torch.set_num_threads(cfg.trainer.torch_threads)
    data = prepare_run(cfg, run_dir)
    with env_refusal(cfg.data, "train"):
        market = prepare(data.train_bars, data.train_funding, EnvConfig.from_kwargs(data.env_kwargs))
        probe = BatchedMarketReplayEnv(num_envs=1, prepared=market, **data.env_kwargs)
    started = _start_ray(cfg)
    try:
        check_resources(cfg, ray.cluster_resources())
        env_config = {
            "market": ray.put(market),
            "env": data.env_kwargs,
            "periods_per_year": metrics.periods_per_year(cfg.data.timeframe),
        }
        from ray.tune.registry import register_env

        register_env(ENV_NAME, make_env)
        config = rllib_config(cfg, env_config, probe.single_observation_space, probe.single_action_space)
        algo = config.build_algo()
        if cfg.resume:
            algo.restore_from_path(str(Path(cfg.resume).resolve()))
        _train_loop(cfg, run_dir, algo, data.validator)
        algo.save_to_path(str((run_dir / "checkpoints" / "last").resolve()))
        model = RLlibModel(_current_module(algo), probe.single_action_space)
        spec = bundle_spec(cfg, probe, data.validator)
        bundle = save_bundle(run_dir / "policy", model, spec, config_dict)
        data.validator.save(run_dir / "validation.json")
        algo.stop()
    finally:
        if started:
            ray.shutdown()
    return TrainResult(bundle, model, data.validator.history, data.validator.baseline)


def _restored_steps(algo: Any) -> int:
    from ray.rllib.utils.metrics import ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME

    return int(algo.metrics.peek((ENV_RUNNER_RESULTS, NUM_ENV_STEPS_SAMPLED_LIFETIME), default=0))


def _train_loop(cfg: TrainConfig, run_dir: Path, algo: Any, validator: Any) -> None:
    """``algo.train()`` until ``trainer.total_timesteps`` more env-steps are sampled, with
    TensorBoard, validation every ``eval_every`` and checkpoints every ``checkpoint_every``."""
    from torch.utils.tensorboard import SummaryWriter

    t = cfg.trainer
    checkpoints = run_dir / "checkpoints"
    writer = SummaryWriter(str(run_dir / "tb" / f"rllib_{cfg.agent.algo}"))
    steps = _restored_steps(algo) if cfg.resume else 0
    next_eval = (steps // t.eval_every + 1) * t.eval_every
    next_checkpoint = (steps // t.checkpoint_every + 1) * t.checkpoint_every
    evaluated_at = -1
    target = steps + t.total_timesteps

    def evaluate() -> None:
        nonlocal evaluated_at
        model = RLlibModel(_current_module(algo), algo.config.action_space)
        m, best = validator.evaluate(lambda obs, info: model.predict(obs)[0], steps)
        for k, v in validator.scalars(m).items():
            writer.add_scalar(k, v, steps)
        log.info(
            "%s env-steps: validation return %+.1f%% Sharpe %.2f (buy-and-hold %+.1f%%)",
            f"{steps:,}", m["total_return"] * 100, m["sharpe"], validator.baseline["total_return"] * 100,
        )  # fmt: skip
        if best:
            algo.save_to_path(str((checkpoints / "best").resolve()))
        evaluated_at = steps

    while steps < target:
        result = algo.train()
        steps = int(result["num_env_steps_sampled_lifetime"])
        _write_result(writer, result, steps)
        if steps >= next_eval:
            next_eval = (steps // t.eval_every + 1) * t.eval_every
            evaluate()
        if steps >= next_checkpoint:
            next_checkpoint = (steps // t.checkpoint_every + 1) * t.checkpoint_every
            algo.save_to_path(str((checkpoints / f"step_{steps}").resolve()))
    if evaluated_at != steps:
        evaluate()
    writer.close()
