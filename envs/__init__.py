"""Market-replay environments. Importing this package registers ``klinegym/MarketReplay-v0``:

import envs, gymnasium
env = gymnasium.make("klinegym/MarketReplay-v0", bars=df, market="perp", funding=funding_df)
vec = gymnasium.make_vec("klinegym/MarketReplay-v0", num_envs=64,
                         vectorization_mode="vector_entry_point", bars=df)
"""

from gymnasium.envs.registration import register, registry

ENV_ID = "klinegym/MarketReplay-v0"

if ENV_ID not in registry:
    register(
        id=ENV_ID,
        entry_point="envs.replay:MarketReplayEnv",
        vector_entry_point="envs.vector:BatchedMarketReplayEnv",
    )
