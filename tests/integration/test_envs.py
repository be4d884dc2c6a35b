"""The replay envs as gymnasium and SB3 see them, and the promises they make about time."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from data.schema import parse_time
from data.store import SeriesKey, Store
from data.synthetic import SyntheticConfig, generate
from envs.replay import MarketReplayEnv
from envs.sb3 import SB3VecEnv
from envs.vector import BatchedMarketReplayEnv

pytestmark = pytest.mark.filterwarnings("ignore:.*Box observation space.*:UserWarning")
SMALL = dict(norm_window=100, episode_length=60)


@pytest.fixture(scope="module")
def synthetic():
    return generate(SyntheticConfig(seed=4, bars=4_000))


@pytest.mark.parametrize(
    "extra",
    [
        dict(),
        dict(market="perp"),
        dict(market="perp", action_type="continuous"),
        dict(action_type="continuous", reward="differential_sharpe"),
        dict(market="spot", allow_short=True, borrow_rate=0.1, reward="log_return_drawdown"),
        dict(market="perp", slippage="sqrt_impact", spread="estimated", reward="pnl", lot_size=0.001),
    ],
    ids=["spot", "perp", "perp-continuous", "spot-continuous-dsr", "spot-short", "perp-impact"],
)
def test_gymnasium_and_sb3_env_checkers_pass(synthetic, extra):
    bars, funding = synthetic
    if extra.get("market") == "perp":
        extra = {**extra, "funding": funding}
    env = gym.make(envs.ENV_ID, bars=bars, **SMALL, **extra)
    check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(MarketReplayEnv(bars=bars, **SMALL, **extra), warn=False)


def run(env, actions, seed):
    """(obs, reward, terminated, truncated, info) of every step, resetting on episode end."""
    obs, info = env.reset(seed=seed)
    out = [(obs, 0.0, False, False, info)]
    for a in actions:
        step = env.step(a)
        out.append(step)
        if step[2] or step[3]:
            obs, info = env.reset()
            out.append((obs, 0.0, False, False, info))
    return out


def test_single_env_is_the_batched_env_with_one_account(synthetic):
    bars, funding = synthetic
    kw = dict(bars=bars, funding=funding, market="perp", **SMALL)
    actions = np.random.default_rng(0).integers(0, 3, 200)  # spans 3 episodes of 60 bars
    single = MarketReplayEnv(**kw)
    vec = BatchedMarketReplayEnv(num_envs=1, **kw)
    obs, info = vec.reset(seed=11)
    s_obs, s_info = single.reset(seed=11)
    np.testing.assert_array_equal(obs[0], s_obs)
    assert s_info["ts"] == info["ts"][0]
    for a in actions:
        obs, rew, term, trunc, info = vec.step(np.array([a]))
        s_obs, s_rew, s_term, s_trunc, s_info = single.step(int(a))
        assert (s_rew, s_term, s_trunc) == (rew[0], term[0], trunc[0])
        if term[0] or trunc[0]:
            np.testing.assert_array_equal(info["final_obs"][0], s_obs)
            assert s_info == {k: info["final_info"][k][0].item() for k in s_info}
            s_obs, s_info = single.reset()
        np.testing.assert_array_equal(obs[0], s_obs)
        assert s_info == {k: info[k][0].item() for k in s_info}


def test_first_account_of_a_batch_replays_the_single_env_with_the_same_seed(synthetic):
    bars, _ = synthetic
    single = MarketReplayEnv(bars=bars, **SMALL)
    vec = BatchedMarketReplayEnv(num_envs=5, bars=bars, **SMALL)
    obs, _ = vec.reset(seed=3)
    s_obs, _ = single.reset(seed=3)
    np.testing.assert_array_equal(obs[0], s_obs)
    for a in [1, 1, 0, 1, 0, 0, 1] * 5:
        obs, rew, *_ = vec.step(np.full(5, a))
        s_obs, s_rew, *_ = single.step(a)
        np.testing.assert_array_equal(obs[0], s_obs)
        assert rew[0] == s_rew


def test_reset_with_the_same_seed_reproduces_and_another_seed_does_not(synthetic):
    bars, _ = synthetic
    env = MarketReplayEnv(bars=bars, **SMALL)
    actions = [1, 0, 1, 1, 0] * 30
    a = run(env, actions, seed=5)
    b = run(env, actions, seed=5)
    c = run(env, actions, seed=6)
    assert [x[4] for x in a] == [x[4] for x in b]
    assert [x[4]["ts"] for x in a] != [x[4]["ts"] for x in c]


def test_changing_every_bar_after_t_leaves_observations_and_infos_up_to_t_unchanged(synthetic):
    bars, funding = synthetic
    kw = dict(funding=funding, market="perp", spread="estimated", slippage="sqrt_impact", **SMALL)
    env = MarketReplayEnv(bars=bars, **kw)
    env.reset(options={"start": int(bars.ts[2000])})
    actions = [2, 2, 0, 1, 0, 2, 2, 1, 0, 0] * 3
    base = [env.step(a) for a in actions]
    t = 2000 + 20  # the bar the account was marked at after step 20
    future = bars.copy()
    rng = np.random.default_rng(1)
    scale = np.exp(rng.normal(0, 0.05, len(bars) - t - 1)).cumprod()
    for col in ("open", "high", "low", "close"):
        future.loc[t + 1 :, col] = bars[col].to_numpy()[t + 1 :] * scale
    future.loc[t + 1 :, "volume"] = rng.random(len(bars) - t - 1) * 100
    changed_funding = funding.assign(rate=np.where(funding.ts > bars.ts[t] + 60_000, -0.01, funding.rate))
    other = MarketReplayEnv(bars=future, **{**kw, "funding": changed_funding})
    other.reset(options={"start": int(bars.ts[2000])})
    changed = [other.step(a) for a in actions]
    for k in range(20):
        np.testing.assert_array_equal(base[k][0], changed[k][0])
        assert base[k][1:] == changed[k][1:]
    assert base[25][4]["equity"] != changed[25][4]["equity"]  # the future did change something


def test_make_and_make_vec_build_the_registered_envs(synthetic):
    bars, _ = synthetic
    env = gym.make("klinegym/MarketReplay-v0", bars=bars, **SMALL)
    assert isinstance(env.unwrapped, MarketReplayEnv)
    vec = gym.make_vec(
        "klinegym/MarketReplay-v0", num_envs=3, vectorization_mode="vector_entry_point", bars=bars, **SMALL
    )
    assert isinstance(vec, BatchedMarketReplayEnv)
    assert vec.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, info = vec.reset(seed=0)
    assert obs.shape == (3, 32 * 8 + 4) and info["equity"].tolist() == [10_000.0] * 3


def test_episodes_end_truncated_at_the_length_and_autoreset_in_the_same_step(synthetic):
    bars, _ = synthetic
    vec = BatchedMarketReplayEnv(num_envs=2, bars=bars, **SMALL)
    vec.reset(seed=1, options={"start": "2024-01-02T12:00", "length": 5})
    for _ in range(4):
        _, _, term, trunc, info = vec.step(np.array([1, 0]))
        assert not (term.any() or trunc.any())
    obs, _, term, trunc, info = vec.step(np.array([1, 0]))
    assert trunc.tolist() == [True, True] and not term.any()
    assert info["final_info"]["ts"].tolist() == [pd.Timestamp("2024-01-02T12:05Z").value // 10**6] * 2
    assert info["final_info"]["episode_length"].tolist() == [5, 5]
    assert info["equity"].tolist() == [10_000.0, 10_000.0]  # the next episode's start
    assert info["final_obs"][0].shape == obs[0].shape


def test_next_step_autoreset_returns_the_last_observation_then_restarts_on_the_following_step(synthetic):
    bars, _ = synthetic
    same = BatchedMarketReplayEnv(num_envs=2, bars=bars, **SMALL)
    nxt = BatchedMarketReplayEnv(num_envs=2, bars=bars, autoreset_mode="NextStep", **SMALL)
    assert nxt.metadata["autoreset_mode"] == gym.vector.AutoresetMode.NEXT_STEP
    options = {"start": "2024-01-02T12:00", "length": 5}
    same.reset(seed=1, options=options)
    nxt.reset(seed=1, options=options)
    for _ in range(4):
        a, b = same.step(np.array([1, 1])), nxt.step(np.array([1, 1]))
        np.testing.assert_array_equal(a[0], b[0])
        np.testing.assert_array_equal(a[1], b[1])
    _, s_rew, _, s_trunc, s_info = same.step(np.array([1, 1]))
    n_obs, n_rew, _, n_trunc, n_info = nxt.step(np.array([1, 1]))
    # the ending step: the episode's own last observation, reward and info
    np.testing.assert_array_equal(n_obs[0], s_info["final_obs"][0])
    np.testing.assert_array_equal(n_rew, s_rew)
    assert n_trunc.tolist() == s_trunc.tolist() == [True, True]
    assert n_info["equity"].tolist() == s_info["final_info"]["equity"].tolist()
    assert n_info["_episode"].tolist() == [True, True]
    assert n_info["episode"]["episode_length"].tolist() == [5, 5]
    # the next step ignores the action and starts the new episode, reward 0
    _, rew, term, trunc, info = nxt.step(np.array([1, 1]))
    assert rew.tolist() == [0.0, 0.0] and not (term.any() or trunc.any())
    assert info["equity"].tolist() == [10_000.0, 10_000.0] and info["position"].tolist() == [0.0, 0.0]
    assert "episode" not in info
    # and the episode after that steps normally
    _, rew, *_ = nxt.step(np.array([1, 1]))
    assert np.all(rew != 0.0)


def test_episodes_never_straddle_a_gap_in_the_data(synthetic):
    bars, _ = synthetic
    gappy = bars.drop(index=range(3000, 3010)).reset_index(drop=True)  # a 10-minute hole
    env = MarketReplayEnv(bars=gappy, norm_window=100, episode_length=10_000)
    env.reset(options={"start": int(gappy.ts[2900])})
    steps, info, trunc = 0, None, False
    while not trunc:
        _, _, _, trunc, info = env.step(1)
        steps += 1
    assert steps == 99 and info["ts"] == int(bars.ts[2999])  # stops at the last bar before the hole
    with pytest.raises(ValueError, match="not a bar where an episode can start"):
        env.reset(options={"start": int(gappy.ts[3001])})  # right after the hole: no history


def test_sb3_vecenv_reports_terminal_observation_truncation_and_episode(synthetic):
    bars, _ = synthetic
    venv = SB3VecEnv.make(4, bars=bars, **SMALL)
    venv.seed(7)
    obs = venv.reset()
    assert obs.shape == (4, 260) and venv.reset_infos[0]["equity"] == 10_000.0
    for step in range(60):
        obs, rewards, dones, infos = venv.step(np.ones(4, dtype=np.int64))
        assert rewards.dtype == np.float32
        if step < 59:
            assert not dones.any() and infos == [{}] * 4
    assert dones.all()
    for info in infos:
        assert info["TimeLimit.truncated"] is True
        assert info["terminal_observation"].shape == (260,)
        assert info["episode"]["l"] == 60 and np.isfinite(info["episode"]["r"])
        assert info["fees"] > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(window=5000), "no episode fits"),
        (dict(features=["rsi", "moon_phase"]), "moon_phase"),
        (dict(max_leverage=3), "spot accounts trade without leverage"),
        (dict(taker_fee=-0.001), "env.taker_fee=-0.001 is invalid"),
        (dict(market="perp", max_leverage=300), "must stay below 250"),
        (dict(actions=[-1, 0, 1]), "negative exposures need market=perp"),
        (dict(slippage="zero"), "choose one of none, fixed_bps, sqrt_impact"),
        (dict(leverage=2), "unknown env argument"),
    ],
)
def test_a_config_that_cannot_work_fails_at_construction_naming_the_field(synthetic, kwargs, message):
    bars, _ = synthetic
    with pytest.raises((ValueError, TypeError), match=message):
        MarketReplayEnv(bars=bars, **SMALL, **kwargs)


def test_nan_in_the_bars_is_refused_with_its_timestamp(synthetic):
    bars, _ = synthetic
    bad = bars.copy()
    bad.loc[100, "close"] = np.nan
    with pytest.raises(ValueError, match="2024-01-01T01:40:00Z .*non_finite"):
        MarketReplayEnv(bars=bad, **SMALL)


def test_an_action_outside_the_space_fails_at_the_step(synthetic):
    bars, _ = synthetic
    env = MarketReplayEnv(bars=bars, **SMALL)
    env.reset(seed=0)
    with pytest.raises(
        ValueError, match="outside Discrete\\(2\\); the actions are target exposures \\[0.0, 1.0\\]"
    ):
        env.step(2)
    cont = MarketReplayEnv(bars=bars, action_type="continuous", market="perp", **SMALL)
    cont.reset(seed=0)
    with pytest.raises(ValueError, match="continuous actions must lie in \\[-1, 1\\]"):
        cont.step(np.array([1.5]))
    with pytest.raises(RuntimeError, match="call reset"):
        MarketReplayEnv(bars=bars, **SMALL).step(0)


@pytest.mark.parametrize(
    ("market", "path", "funding_path"),
    [
        ("spot", "binance/spot/BTCUSDT/1m.parquet", None),
        ("perp", "binance/futures_um/BTCUSDT/1m.parquet", "binance/futures_um/BTCUSDT/funding.parquet"),
        ("perp", "binance/futures_um/ETHUSDT/5m.parquet", "binance/futures_um/ETHUSDT/funding.parquet"),
    ],
)
def test_observations_are_finite_over_real_binance_history(shared_data, market, path, funding_path):
    bars = pd.read_parquet(shared_data / path)
    funding = pd.read_parquet(shared_data / funding_path) if funding_path else None
    env = BatchedMarketReplayEnv(
        num_envs=64, bars=bars, funding=funding, market=market, copy=False, features=None
    )
    assert np.isfinite(env.market.features[env.market.warmup :]).all()
    obs, _ = env.reset(seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        obs, rewards, *_ = env.step(rng.integers(0, env.single_action_space.n, 64))
        assert np.isfinite(obs).all() and np.isfinite(rewards).all()
    if market == "perp":
        assert np.abs(env.market.funding_per_unit).sum() > 0  # real funding reached the accounts


def test_from_store_reads_perp_bars_and_their_real_funding(shared_data, store_root):
    store = Store(store_root)
    bars = pd.read_parquet(shared_data / "binance/futures_um/BTCUSDT/1m.parquet")
    funding = pd.read_parquet(shared_data / "binance/futures_um/BTCUSDT/funding.parquet")
    store.write(SeriesKey.of("binance", "futures", "BTC/USDT", "1m"), bars)
    store.write(
        SeriesKey.of("binance", "futures", "BTC/USDT", "funding"),
        funding.rename(columns={"funding_rate": "rate"}),
    )
    env = MarketReplayEnv.from_store(
        "BTC/USDT",
        "1m",
        start="2025-06-01",
        end="2025-06-03",
        root=store_root,
        market="perp",
        window=8,
        norm_window=60,
        episode_length=100,
    )
    assert len(env.market) == 2 * 1440
    # the 08:00 event of 2025-06-01 is charged at the close of the 07:59 bar, at its mark price
    event = funding[funding.ts == parse_time("2025-06-01T08:00")].iloc[0]
    j = int(np.searchsorted(env.market.ts, parse_time("2025-06-01T07:59")))
    assert env.market.funding_per_unit[j] == pytest.approx(event.funding_rate * event.mark_price)
    # 08 and 16 h of June 1, 00, 08 and 16 h of June 2, and 00 h of June 3 (at the 23:59 bar)
    assert np.count_nonzero(env.market.funding_per_unit) == 6
    env.reset(options={"start": "2025-06-01T07:00"})
    for _ in range(59):
        *_, info = env.step(2)  # long through 08:00
    assert info["funding"] == pytest.approx(info["position"] * event.funding_rate * event.mark_price)
