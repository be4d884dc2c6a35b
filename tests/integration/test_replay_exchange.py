"""The replay exchange through the real ccxt client: the kernel's prices and fees, accounts,
funding, resting orders, refusals, faults and the virtual clock. No network is used.

Most numbers come from a hand-made 1m table (spread 2 bps, so half 1 bp, and 1 bp fixed
slippage: a buy in a bar fills at ``open * 1.0002``, a sell at ``open * 0.9998``); two tests
check the same against real Binance bars and the arrays ``envs.market.prepare`` computes.
"""

from __future__ import annotations

import time

import ccxt
import numpy as np
import pandas as pd
import pytest

from data.exchange import make_exchange
from envs.accounting import SLIP_SQRT, fill_price
from envs.config import EnvConfig
from envs.market import prepare
from serving.replay_exchange import ReplayExchange

T0 = 1_704_067_200_000  # 2024-01-01T00:00Z
M = 60_000
#        open  high  low  close
BARS = [
    (100, 101, 99, 100),
    (100, 102, 99, 101),
    (101, 103, 100, 102),
    (102, 104, 101, 103),
    (103, 104, 95, 96),
    (96, 99, 95, 98),
    (98, 100, 97, 99),
    (99, 100, 98, 99),
    (99, 101, 98, 100),
    (100, 101, 99, 100),
]
ENV = {"spread_bps": 2.0, "slippage": "fixed_bps", "slippage_bps": 1.0, "taker_fee": 0.0005,
       "maker_fee": 0.0002, "funding_rate": 0.0}  # fmt: skip
TAKER, MAKER = 0.0005, 0.0002
BUY, SELL = 1.0002, 0.9998
SPOT, PERP = "BTC/USDT", "BTC/USDT:USDT"


def table() -> pd.DataFrame:
    o, h, lo, c = np.array(BARS, dtype=float).T
    return pd.DataFrame({"ts": T0 + M * np.arange(len(BARS)), "open": o, "high": h, "low": lo, "close": c,
                         "volume": np.full(len(BARS), 10.0)})  # fmt: skip


def in_bar(u: int) -> int:
    """A virtual time one second into bar ``u``."""
    return T0 + u * M + 1000


def client(ex: ReplayExchange, market: str, **kw) -> ccxt.Exchange:
    c = make_exchange("binance", market, api_url=ex.url, **kw)
    c.apiKey, c.secret = "replay-key", "replay-secret"
    return c


def spot_exchange(**kw) -> ReplayExchange:
    return ReplayExchange(spot={"BTCUSDT": {"1m": table()}}, env=ENV, start_ms=in_bar(2), **kw)


def perp_exchange(funding: pd.DataFrame | None = None, **kw) -> ReplayExchange:
    rates = {"BTCUSDT": funding} if funding is not None else None
    return ReplayExchange(
        futures={"BTCUSDT": {"1m": table()}}, funding=rates, env=ENV, start_ms=in_bar(2), **kw
    )


# -- prices, fees, accounts -----------------------------------------------------------------


def test_market_buy_fills_at_the_kernels_price_and_pays_the_taker_fee():
    with spot_exchange() as ex:
        c = client(ex, "spot")
        order = c.create_order(SPOT, "market", "buy", 0.5, None, {"newClientOrderId": "buy-1"})
        price = 101 * BUY  # bar 2 opens at 101; half spread 1 bp + slippage 1 bp against the buyer
        fee = TAKER * 0.5 * price
        assert (order["status"], order["clientOrderId"], order["filled"]) == ("closed", "buy-1", 0.5)
        assert order["average"] == pytest.approx(price, rel=1e-12)
        assert order["fee"] == {"currency": "USDT", "cost": pytest.approx(fee, rel=1e-12)}
        balance = c.fetch_balance()
        assert balance["USDT"]["free"] == pytest.approx(10_000 - 0.5 * price - fee, rel=1e-12)
        assert balance["BTC"]["free"] == 0.5
        assert ex.balance("USDT")["total"] == pytest.approx(10_000 - 0.5 * price - fee, rel=1e-12)
        (trade,) = c.fetch_my_trades(SPOT, params={"orderId": order["id"]})
        assert (trade["price"], trade["amount"], trade["takerOrMaker"]) == (
            pytest.approx(price),
            0.5,
            "taker",
        )
        assert ex.orders[0]["avg_price"] == pytest.approx(price, rel=1e-12)
        # a sell in the next bar gets the open moved down by the same 2 bps
        ex.now_ms = in_bar(3)
        sell = c.create_order(SPOT, "market", "sell", 0.5, None)
        assert sell["average"] == pytest.approx(102 * SELL, rel=1e-12)
        assert c.fetch_ticker(SPOT)["last"] == 102  # the open of the bar containing now


def test_market_order_on_real_bars_fills_at_fill_price_of_the_prepared_arrays(shared_data):
    bars = pd.read_parquet(shared_data / "binance/spot/BTCUSDT/5m.parquet").iloc[:2000].reset_index(drop=True)
    env = {"slippage": "sqrt_impact", "impact_k": 3.0, "spread_bps": 1.0, "taker_fee": 0.001}
    md = prepare(bars, None, EnvConfig.from_kwargs({**env, "features": ("log_return",)}))
    u = 1500 + int(np.argmax(md.high[1500:] > md.open[1500:] * 1.003))  # a bar wide enough not to clip
    with ReplayExchange(spot={"BTCUSDT": {"5m": bars}}, env=env, start_ms=int(bars.ts[u]) + 5000,
                        balances={"USDT": 1_000_000.0}) as ex:  # fmt: skip
        order = client(ex, "spot").create_order(SPOT, "market", "buy", 2.5, None)
    t = u - 1
    want = fill_price(md.open[u], md.high[u], md.low[u], 2.5, md.half_spread[t], SLIP_SQRT, 3.0,
                      md.sigma[t], md.ref_volume[t])  # fmt: skip
    assert md.open[u] * (1 + 0.5e-4) < want < md.high[u]  # the impact term is in it, unclipped
    assert order["average"] == pytest.approx(want, rel=1e-12)
    assert order["fee"]["cost"] == pytest.approx(0.001 * 2.5 * want, rel=1e-12)


def test_futures_position_entry_and_wallet_after_open_add_reduce_and_flip():
    with perp_exchange() as ex:
        c = client(ex, "futures")
        cash = 10_000.0

        def trade(u: int, side: str, qty: float, price: float, **params) -> None:
            nonlocal cash
            ex.now_ms = in_bar(u)
            order = c.create_order(PERP, "market", side, qty, None, params)
            assert order["average"] == pytest.approx(price, rel=1e-12)
            cash -= (qty if side == "buy" else -qty) * price + TAKER * qty * price

        def check(qty: float, entry: float, mark: float) -> None:
            pos = ex.position("BTCUSDT")
            assert pos["qty"] == pytest.approx(qty, abs=1e-12)
            assert pos["entry_price"] == pytest.approx(entry, rel=1e-12)
            assert pos["mark_price"] == mark
            bal = ex.balance("USDT")
            assert bal["cash"] == pytest.approx(cash, rel=1e-12)
            assert bal["wallet"] == pytest.approx(cash + qty * entry, rel=1e-12)
            assert bal["equity"] == pytest.approx(cash + qty * mark, rel=1e-12)
            (p,) = c.fetch_positions([PERP])
            assert (p["contracts"], p["side"]) == (pytest.approx(abs(qty)), "long" if qty > 0 else "short")
            assert p["entryPrice"] == pytest.approx(entry, rel=1e-12)
            assert p["unrealizedPnl"] == pytest.approx(qty * (mark - entry), rel=1e-9)
            assert c.fetch_balance()["USDT"]["total"] == pytest.approx(cash + qty * mark, rel=1e-12)

        p1, p2, p3, p4 = 101 * BUY, 102 * BUY, 103 * SELL, 96 * SELL
        trade(2, "buy", 2, p1)
        check(2, p1, mark=101)  # mark: the close of the last closed bar
        trade(3, "buy", 1, p2)
        check(3, (2 * p1 + p2) / 3, mark=102)
        trade(4, "sell", 1.5, p3, reduceOnly=True)
        check(1.5, (2 * p1 + p2) / 3, mark=103)  # a reduction keeps the entry
        trade(5, "sell", 3, p4)
        check(-1.5, p4, mark=96)  # a flip enters at the fill price
        realized = [t["info"]["realizedPnl"] for t in c.fetch_my_trades(PERP)]
        assert float(realized[2]) == pytest.approx(1.5 * (p3 - (2 * p1 + p2) / 3), rel=1e-9)


def test_funding_is_charged_on_the_position_held_through_the_bar_of_the_event():
    funding = pd.DataFrame({"ts": [T0 + 5 * M], "rate": [0.001], "mark_price": [100.0]})
    per_unit = prepare(table(), funding, EnvConfig(market="perp", features=("log_return",))).funding_per_unit
    assert per_unit[4] == pytest.approx(0.1) and not per_unit[np.arange(10) != 4].any()  # bar 4 holds it
    with perp_exchange(funding) as ex:
        c = client(ex, "futures")
        ex.now_ms = in_bar(3)
        c.create_order(PERP, "market", "buy", 2, None)
        ex.now_ms = in_bar(4)
        before = ex.balance("USDT")["cash"]
        assert c.fetch_funding_history(PERP) == []  # bar 4 has not closed yet
        ex.now_ms = in_bar(5)
        assert ex.balance("USDT")["cash"] == pytest.approx(before - 2 * per_unit[4], rel=1e-12)
        (paid,) = c.fetch_funding_history(PERP)
        assert paid["amount"] == pytest.approx(-0.2, rel=1e-12)
        assert paid["timestamp"] == T0 + 5 * M


def test_funding_on_real_perp_bars_equals_qty_times_funding_per_unit(shared_data):
    root = shared_data / "binance/futures_um/BTCUSDT"
    bars = pd.read_parquet(root / "5m.parquet").iloc[:1000].reset_index(drop=True)
    funding = pd.read_parquet(root / "funding.parquet")
    md = prepare(bars, funding, EnvConfig(market="perp", features=("log_return",)))
    u = int(np.flatnonzero(md.funding_per_unit)[3])
    with ReplayExchange(futures={"BTCUSDT": {"5m": bars}}, funding={"BTCUSDT": funding},
                        start_ms=int(bars.ts[u]) + 1000) as ex:  # fmt: skip
        c = client(ex, "futures")
        c.create_order(PERP, "market", "sell", 0.05, None)
        cash = ex.balance("USDT")["cash"]
        ex.now_ms = int(bars.ts[u + 1]) + 1000
        assert ex.balance("USDT")["cash"] - cash == pytest.approx(0.05 * md.funding_per_unit[u], rel=1e-12)
        assert ex.matcher.income[0]["amount"] == pytest.approx(0.05 * md.funding_per_unit[u], rel=1e-12)


def test_a_long_past_its_liquidation_price_is_closed_there_and_the_loss_stops_at_the_wallet():
    env = {**ENV, "maintenance_margin_rate": 0.004, "liquidation_fee": 0.005}
    with ReplayExchange(futures={"BTCUSDT": {"1m": table()}}, env=env, start_ms=in_bar(2),
                        balances={"USDT": 600.0}) as ex:  # fmt: skip
        c = client(ex, "futures")
        c.create_order(PERP, "market", "buy", 115, None)  # 19x the wallet at the default leverage 20
        price = 101 * BUY
        cash = 600 - 115 * price - TAKER * 115 * price
        p_liq = -cash / (115 * (1 - 0.004))
        assert 95 < p_liq < 100  # bar 4 (low 95) reaches it, bars 2 and 3 do not
        ex.now_ms = in_bar(4)
        assert ex.position("BTCUSDT")["qty"] == 115
        ex.now_ms = in_bar(5)
        assert ex.position("BTCUSDT")["qty"] == 0
        liquidation = ex.orders[-1]
        assert liquidation["client_id"].startswith("autoclose-")
        assert liquidation["avg_price"] == pytest.approx(p_liq, rel=1e-12)
        # equity at P is the maintenance margin, less than the liquidation fee: the wallet ends at 0
        assert ex.balance("USDT")["cash"] == 0.0


def test_leverage_and_margin_mode_set_through_ccxt_bound_orders_and_show_in_positions():
    with perp_exchange(balances={"USDT": 1000.0}) as ex:
        c = client(ex, "futures")
        c.set_leverage(2, PERP)
        c.set_margin_mode("isolated", PERP)
        assert c.fetch_position_mode(PERP)["hedged"] is False
        with pytest.raises(ccxt.ExchangeError, match="-2019"):
            c.create_order(PERP, "market", "buy", 20, None)  # 2,020 USDT > 2 x 1,000
        c.create_order(PERP, "market", "sell", 19, None)
        (p,) = c.fetch_positions([PERP])
        assert (p["side"], p["contracts"], p["leverage"], p["marginMode"]) == ("short", 19, 2, "isolated")
        assert c.fetch_funding_rate(PERP)["markPrice"] == 101  # the last close, not the open bar's
        assert ex.position("BTCUSDT")["leverage"] == 2


# -- orders: limits, ids, refusals ----------------------------------------------------------


def test_a_gtc_limit_rests_until_a_bar_reaches_it_then_fills_at_the_limit_with_the_maker_fee():
    with perp_exchange() as ex:
        c = client(ex, "futures")
        order = c.create_order(PERP, "limit", "buy", 2, 96.0, {"timeInForce": "GTC"})
        assert (order["status"], order["filled"]) == ("open", 0.0)
        assert [o["id"] for o in c.fetch_open_orders(PERP)] == [order["id"]]
        ex.now_ms = in_bar(4)  # bar 3 (low 101) closed without reaching 96
        assert c.fetch_order(order["id"], PERP)["status"] == "open"
        ex.now_ms = in_bar(5)  # bar 4 (low 95) did
        done = c.fetch_order(order["id"], PERP)
        assert (done["status"], done["filled"], done["average"]) == ("closed", 2.0, 96.0)
        (fill,) = c.fetch_my_trades(PERP, params={"orderId": order["id"]})
        assert (fill["takerOrMaker"], fill["fee"]["cost"]) == ("maker", pytest.approx(MAKER * 2 * 96.0))
        assert fill["timestamp"] == T0 + 5 * M - 1  # the close of bar 4
        assert ex.position("BTCUSDT")["entry_price"] == 96.0
        assert c.fetch_open_orders(PERP) == []


def test_ioc_limits_fill_at_the_kernels_price_within_the_limit_and_expire_beyond_it():
    with perp_exchange() as ex:
        c = client(ex, "futures")
        inside = c.create_order(PERP, "limit", "buy", 1, 101.1, {"timeInForce": "IOC"})
        assert (inside["status"], inside["average"]) == ("closed", pytest.approx(101 * BUY, rel=1e-12))
        beyond = c.create_order(PERP, "limit", "buy", 1, 101.0, {"timeInForce": "IOC"})
        assert (beyond["status"], beyond["filled"]) == ("expired", 0.0)
        marketable = c.create_order(PERP, "limit", "sell", 1, 100.0, {"timeInForce": "GTC"})
        assert (marketable["status"], marketable["average"]) == (
            "closed",
            pytest.approx(101 * SELL, rel=1e-12),
        )
        resting = c.create_order(PERP, "limit", "sell", 1, 110.0, {"timeInForce": "GTC"})
        assert (
            c.cancel_order(None, PERP, {"origClientOrderId": resting["clientOrderId"]})["status"]
            == "canceled"
        )
        with pytest.raises(ccxt.OrderNotFound, match="-2011"):
            c.cancel_order(None, PERP, {"origClientOrderId": resting["clientOrderId"]})


def test_a_duplicate_client_id_is_refused_and_the_first_order_stays_unchanged():
    with spot_exchange() as ex:
        c = client(ex, "spot")
        c.create_order(SPOT, "market", "buy", 0.5, None, {"newClientOrderId": "bar-2"})
        usdt = ex.balance("USDT")["total"]
        with pytest.raises(ccxt.InvalidOrder, match="Duplicate order sent"):
            c.create_order(SPOT, "market", "buy", 0.7, None, {"newClientOrderId": "bar-2"})
        assert [(o["client_id"], o["qty"], o["filled"]) for o in ex.orders] == [("bar-2", 0.5, 0.5)]
        assert ex.balance("USDT")["total"] == usdt
        assert c.fetch_order(None, SPOT, {"origClientOrderId": "bar-2"})["filled"] == 0.5
        with pytest.raises(ccxt.OrderNotFound, match="-2013"):
            c.fetch_order(None, SPOT, {"origClientOrderId": "never-sent"})


def test_an_order_answered_late_times_out_but_fetch_order_by_client_id_finds_it_filled():
    with perp_exchange(timeout_sleep_s=1.5) as ex:
        c = client(ex, "futures", timeout_ms=400)
        c.load_markets()
        ex.inject("order", "late")
        with pytest.raises(ccxt.RequestTimeout):
            c.create_order(PERP, "market", "buy", 2, None, {"newClientOrderId": "bar-2-open"})
        order = c.fetch_order(None, PERP, {"origClientOrderId": "bar-2-open"})
        assert (order["status"], order["filled"]) == ("closed", 2.0)
        assert ex.position("BTCUSDT")["qty"] == 2


def test_a_partial_fill_fills_half_the_quantity_down_to_the_step_and_expires_the_rest():
    with perp_exchange() as ex:
        c = client(ex, "futures")
        ex.inject("order", "partial")
        order = c.create_order(PERP, "market", "buy", 3.001, None, {"newClientOrderId": "half"})
        assert (order["status"], order["filled"], order["amount"]) == ("expired", 1.5, 3.001)
        assert ex.position("BTCUSDT")["qty"] == 1.5


def test_refusals_map_to_cxxt_errors_with_binances_codes():
    with spot_exchange() as ex:
        c = client(ex, "spot")
        with pytest.raises(ccxt.InsufficientFunds):
            c.create_order(SPOT, "market", "buy", 99, None)  # ~10,000 USDT of 9,999 after fees
        with pytest.raises(ccxt.InsufficientFunds):
            c.create_order(SPOT, "market", "sell", 0.1, None)  # no BTC
        ex.inject("order", "reject")
        with pytest.raises(ccxt.InsufficientFunds):
            c.create_order(SPOT, "market", "buy", 0.1, None)
        c.markets[SPOT]["precision"]["amount"] = 1e-8  # let ccxt send what the LOT_SIZE filter refuses
        with pytest.raises(ccxt.InvalidOrder, match="LOT_SIZE"):
            c.create_order(SPOT, "market", "buy", 0.100005, None)
        with pytest.raises(ccxt.BadRequest, match="NOTIONAL"):
            c.create_order(SPOT, "market", "buy", 0.04, None)  # 4 USDT < minNotional 5
        assert ex.orders == [] and ex.balance("USDT")["total"] == 10_000
    with perp_exchange(balances={"USDT": 100.0}) as ex:
        c = client(ex, "futures")
        # ccxt picks Binance's futures error table by hostname, so on 127.0.0.1 these futures-only
        # codes arrive as plain ExchangeError (InsufficientFunds / InvalidOrder on fapi.binance.com)
        with pytest.raises(ccxt.ExchangeError, match="-2019"):
            c.create_order(PERP, "market", "buy", 20, None)  # 2,020 USDT > 20 x 100
        with pytest.raises(ccxt.ExchangeError, match="-4164"):
            c.create_order(PERP, "market", "buy", 0.5, None)  # 50 USDT < 100
        c.create_order(PERP, "market", "buy", 1, None)
        with pytest.raises(ccxt.ExchangeError, match="-2022"):
            c.create_order(PERP, "market", "sell", 2, None, {"reduceOnly": True})  # would flip
        assert c.create_order(PERP, "market", "sell", 1, None, {"reduceOnly": True})["status"] == "closed"
    # bar 0 has no bar before it to take the spread and slippage from
    early = ReplayExchange(spot={"BTCUSDT": {"1m": table()}}, start_ms=T0 + 1000)
    with early as ex, pytest.raises(ccxt.MarketClosed, match="Market is closed"):
        client(ex, "spot").create_order(SPOT, "market", "buy", 0.1, None)


def test_a_wrong_key_or_secret_raises_authentication_error():
    with spot_exchange(api_key="k1", api_secret="s1") as ex:
        c = client(ex, "spot")
        with pytest.raises(ccxt.AuthenticationError, match="-2015"):
            c.fetch_balance()
        c.apiKey, c.secret = "k1", "wrong"
        with pytest.raises(ccxt.AuthenticationError, match="-1022"):
            c.fetch_balance()
        c.secret = "s1"
        assert c.fetch_balance()["USDT"]["free"] == 10_000


@pytest.mark.parametrize("skew_ms", [60_000, -5_000])
def test_a_timestamp_outside_the_recv_window_raises_invalid_nonce(skew_ms):
    with spot_exchange(clock_skew_ms=skew_ms) as ex, pytest.raises(ccxt.InvalidNonce, match="-1021"):
        client(ex, "spot").fetch_balance()


def test_an_injected_binance_code_is_answered_with_its_message():
    with spot_exchange() as ex:
        c = client(ex, "spot")
        ex.inject("account", -1021)
        with pytest.raises(ccxt.InvalidNonce, match="outside of the recvWindow"):
            c.fetch_balance()
        assert c.fetch_balance()["USDT"]["free"] == 10_000  # one fault, then normal answers
        with pytest.raises(ValueError, match="Binance codes"):
            ex.inject("order", -9999)


# -- the virtual clock ----------------------------------------------------------------------


def test_virtual_time_with_speed_advances_and_stops_at_the_end_of_the_data():
    wall = time.monotonic()
    with ReplayExchange(spot={"BTCUSDT": {"1m": table()}}, start_ms=T0 + 2 * M, speed=600.0) as ex:
        c = client(ex, "spot")
        first = c.fetch_time()
        time.sleep(0.2)
        now = c.fetch_time()
        elapsed = (time.monotonic() - wall) * 1000 * 600
        assert T0 + 2 * M <= first < now <= T0 + 2 * M + elapsed + 1
        assert now - first >= 0.2 * 600 * 1000 * 0.9
        time.sleep(max(0.0, (T0 + 10 * M - now) / 600 / 1000 + 0.1))
        assert c.fetch_time() == T0 + 10 * M == ex.now_ms  # the close of the last bar, no further
        ex.now_ms = T0 + 3 * M
        assert T0 + 3 * M <= ex.now_ms < T0 + 4 * M


def test_klines_never_return_bars_after_virtual_now_and_the_open_candle_shows_only_its_open():
    with spot_exchange() as ex:
        ex.now_ms = T0 + 4 * M + 30_000
        candles = client(ex, "spot").fetch_ohlcv(SPOT, "1m", limit=100)
        assert [row[0] for row in candles] == [T0 + i * M for i in range(5)]
        assert candles[-1][1:] == [103, 103, 103, 103, 0]  # no low of 95 or close of 96 yet
        assert candles[-2][1:] == [102, 104, 101, 103, 10]
