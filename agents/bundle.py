"""The policy bundle: weights plus a ``spec.json`` that rebuilds the exact observation and action.

A bundle is a folder::

    policy/
      model.zip    the stable-baselines3 model (weights, optimiser state), or
      rl_module/   the Ray RLlib inference RLModule (loaded with torch alone, no Ray started)
      spec.json    everything needed to drive it: env config (costs, features with their order,
                   window, norm window), observation shape and dtype, action space, symbol,
                   timeframe, data ranges, algorithm, config hash, package version, git commit

:func:`load_policy` returns a :class:`Policy` with ``act(obs) -> action`` (deterministic by
default) and refuses an env whose spec differs, naming each differing field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import subprocess
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from data.config import ConfigError, build
from envs.config import EnvConfig

SPEC_VERSION = 1
# fields of spec.json that must equal the env's for the policy to read its observations right
MATCHING_FIELDS = (
    "observation_shape", "observation_dtype", "action_space", "features", "window", "norm_window",
    "timeframe", "market",
)  # fmt: skip


class BundleError(ValueError):
    """A bundle that cannot drive the env asked of it. Policy: refuse to act, naming the fields."""


def space_spec(space: gym.Space) -> dict[str, Any]:
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n)}
    if isinstance(space, gym.spaces.Box):
        return {
            "type": "Box",
            "shape": list(space.shape),
            "low": np.asarray(space.low).tolist(),
            "high": np.asarray(space.high).tolist(),
            "dtype": str(space.dtype),
        }
    raise BundleError(f"unsupported action space {space}")


def _space(spec: dict[str, Any]) -> gym.Space:
    """The action space a :func:`space_spec` describes."""
    if spec["type"] == "Discrete":
        return gym.spaces.Discrete(spec["n"])
    return gym.spaces.Box(np.array(spec["low"]), np.array(spec["high"]), tuple(spec["shape"]), spec["dtype"])


def env_spec(env: Any, *, timeframe: str, symbol: str = "", exchange: str = "") -> dict[str, Any]:
    """The part of a spec that an env determines (single or batched env)."""
    cfg: EnvConfig = env.cfg
    obs_space = getattr(env, "single_observation_space", None) or env.observation_space
    act_space = getattr(env, "single_action_space", None) or env.action_space
    return {
        "observation_shape": list(obs_space.shape),
        "observation_dtype": str(obs_space.dtype),
        "action_space": space_spec(act_space),
        "action_values": list(cfg.action_values) if cfg.action_type == "discrete" else None,
        "features": list(env.market.feature_columns),
        "window": cfg.window,
        "norm_window": cfg.norm_window,
        "timeframe": timeframe,
        "market": cfg.market,
        "symbol": symbol,
        "exchange": exchange,
        "env": _plain(dataclasses.asdict(cfg)),
    }


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _git_commit() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


def config_hash(config: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _weights_name(spec: dict[str, Any]) -> str:
    return "rl_module" if spec.get("backend") == "rllib" else "model.zip"


def save_bundle(path: Path, model: Any, spec: dict[str, Any], config: dict[str, Any]) -> Path:
    """Write ``model.zip`` and ``spec.json`` (with provenance) into ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    model.save(path / _weights_name(spec))
    try:
        version = metadata.version("klinegym")
    except metadata.PackageNotFoundError:
        version = None
    full = {
        "spec_version": SPEC_VERSION,
        **spec,
        "config": _plain(config),
        "config_hash": config_hash(config),
        "package_version": version,
        "git_commit": _git_commit(),
    }
    (path / "spec.json").write_text(json.dumps(full, indent=2, default=str))
    return path


class Policy:
    """A trained policy: ``act(obs)`` gives the action for one observation or a batch."""

    def __init__(self, model: Any, spec: dict[str, Any], path: Path):
        self.model, self.spec, self.path = model, spec, path
        self.recurrent = spec.get("algo") == "recurrent_ppo"
        self._state = None
        self._starts = None
        # a stable-baselines3 network with a Discrete action: one observation goes straight to it
        net = getattr(model, "policy", None)
        discrete = spec["action_space"]["type"] == "Discrete"
        self._net = net if discrete and not self.recurrent and hasattr(net, "_predict") else None

    def act(self, obs: np.ndarray, info: dict | None = None, deterministic: bool = True) -> np.ndarray | int:
        """The action for ``obs`` (one observation or a batch); ``info`` is accepted so that
        trained and rule-based policies share one interface, and is not read."""
        batched = np.ndim(obs) == 2
        if self._net is not None and not batched:
            return self._act_one(obs, deterministic)
        if self.recurrent:
            n = len(obs) if batched else 1
            if self._starts is None or len(self._starts) != n:
                self._starts = np.ones(n, dtype=bool)
            action, self._state = self.model.predict(
                obs, state=self._state, episode_start=self._starts, deterministic=deterministic
            )
            self._starts = np.zeros(n, dtype=bool)
        else:
            action, _ = self.model.predict(obs, deterministic=deterministic)
        if not batched and self.spec["action_space"]["type"] == "Discrete":
            return int(np.asarray(action).reshape(-1)[0])
        return action

    def _act_one(self, obs: np.ndarray, deterministic: bool) -> int:
        """``model.predict`` of one observation for a Discrete stable-baselines3 policy, the same
        network call (``policy._predict`` without gradients, the input as given, which the policy's
        own preprocessing makes float) without its per-call work: switching every module to eval
        mode, checking and reshaping the input, the numpy round trip. A third of a serving
        decision's policy time (benchmarks/decision_latency.py)."""
        import torch

        net = self._net
        if net.training:
            net.set_training_mode(False)
        with torch.no_grad():
            action = net._predict(torch.as_tensor(np.asarray(obs)).unsqueeze(0), deterministic=deterministic)
        return int(action.reshape(-1)[0])

    def reset(self) -> None:
        """Forget the recurrent state (a new episode)."""
        self._state, self._starts = None, None

    def check_env(self, env: Any, timeframe: str | None = None) -> None:
        """Refuse an env whose observations or actions differ from the ones trained on."""
        theirs = env_spec(env, timeframe=timeframe or self.spec["timeframe"])
        diffs = [
            f"{k}: bundle {self.spec.get(k)!r} != env {theirs.get(k)!r}"
            for k in MATCHING_FIELDS
            if _plain(self.spec.get(k)) != _plain(theirs.get(k))
        ]
        if diffs:
            raise BundleError(f"{self.path} cannot drive this env: " + "; ".join(diffs))


def bundle_dir(path: str | Path) -> Path:
    """The bundle folder of ``path`` (a bundle, or a run folder holding ``policy/``)."""
    path = Path(path)
    if (path / "policy" / "spec.json").exists():
        path = path / "policy"
    if not (path / "spec.json").exists():
        raise BundleError(f"{path} is not a policy bundle (no spec.json); give a run's policy/ folder")
    return path


DAMAGED = "the bundle is damaged: copy it again from where it was trained, or retrain it"
LOAD_ERRORS = (ValueError, AssertionError, KeyError, RuntimeError, EOFError, OSError, zipfile.BadZipFile,
               pickle.UnpicklingError)  # fmt: skip
"""What loading weights with damaged bytes raises (stable-baselines3, torch, zipfile, pickle)."""


def read_spec(path: str | Path) -> dict[str, Any]:
    """A bundle's ``spec.json`` (env, features, market, ...) without loading its weights; one that
    is not JSON, lacks a field a policy is driven by, or names an env that cannot be (an unknown
    feature, say) is a :class:`BundleError` naming the file."""
    file = bundle_dir(path) / "spec.json"
    text = file.read_text()
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as exc:
        what = "empty" if not text.strip() else f"not valid JSON ({exc})"
        raise BundleError(f"{file} is {what}; {DAMAGED}") from None
    if not isinstance(spec, dict):
        raise BundleError(f"{file} is not a bundle spec (a JSON object); {DAMAGED}")
    missing = [k for k in (*MATCHING_FIELDS, "env") if k not in spec]
    if missing:
        raise BundleError(f"{file} lacks {', '.join(missing)}: {DAMAGED}")
    try:
        build(EnvConfig, spec["env"], "env.")
    except ConfigError as exc:
        raise BundleError(f"{file}: {exc}") from None
    return spec


def load_policy(path: str | Path, env: Any = None) -> Policy:
    """Load a bundle folder (or a run folder holding ``policy/``), without starting Ray.

    With ``env``, the bundle's spec is checked against it first (:meth:`Policy.check_env`).
    """
    path = bundle_dir(path)
    spec = read_spec(path)
    weights = path / _weights_name(spec)
    if not weights.exists():
        raise BundleError(
            f"{path} has no {weights.name} (the policy's weights): the bundle is incomplete; copy it again "
            "from where it was trained, or retrain it"
        )
    try:
        if spec.get("backend") == "rllib":
            from agents.rllib import RLlibModel

            model = RLlibModel.load(weights, _space(spec["action_space"]))
        else:
            from agents.algorithms import algorithm_class

            model = algorithm_class(spec["algo"]).load(weights, device="cpu")
    except LOAD_ERRORS as exc:
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BundleError(f"{weights} cannot be loaded ({why}); {DAMAGED}") from exc
    policy = Policy(model, spec, path)
    if env is not None:
        policy.check_env(env)
    return policy


def bundle_identity(path: str | Path) -> str:
    """``sha256:`` and the first 16 hex digits of a hash over what decides: ``spec.json`` and the
    weights (names and bytes, in name order; other files in the folder do not count). The same
    bundle copied anywhere has the same identity, a retrained or edited one another. A serving
    state store is tied to it."""
    folder = bundle_dir(path)
    weights = folder / _weights_name(read_spec(folder))
    files = [folder / "spec.json", *(sorted(p for p in weights.rglob("*") if p.is_file()) if weights.is_dir()
                                     else [weights])]  # fmt: skip
    digest = hashlib.sha256()
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(file.read_bytes()).digest() if file.exists() else b"(missing)")
    return "sha256:" + digest.hexdigest()[:16]
