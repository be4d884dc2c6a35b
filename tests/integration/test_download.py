"""Downloads through the real ccxt client against the loopback Binance, on real Binance data.

Every server here lives inside a ``with`` block and stops itself after ``max_seconds`` anyway.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.download import download_funding, download_ohlcv
from data.errors import DownloadError
from data.loopback import LoopbackExchange
from data.schema import BAR_COLUMNS, MINUTE_MS, parse_time
from data.store import SeriesKey, Store
from data.validate import find_gaps

pytestmark = pytest.mark.timeout(60)

PROJECT = Path(__file__).resolve().parents[2]
SPOT_KEY = SeriesKey.of("binance", "spot", "BTC/USDT", "1m")
FAST = {"progress": False, "backoff_s": 0.01}  # tests wait 10 ms before a retry, not 1 s


def shared_data() -> Path:
    env = os.environ.get("KLINEGYM_SHARED_DATA")
    return Path(env) if env else PROJECT.parent / "shared" / "data"


def read_shared(relative: str) -> pd.DataFrame:
    path = shared_data() / relative
    if not path.exists():
        pytest.skip(f"real data {path} is absent (set KLINEGYM_SHARED_DATA to its folder)")
    return pd.read_parquet(path)


@pytest.fixture(scope="module")
def spot_1m() -> pd.DataFrame:
    return read_shared("binance/spot/BTCUSDT/1m.parquet")


@pytest.fixture(scope="module")
def futures_1m() -> pd.DataFrame:
    return read_shared("binance/futures_um/BTCUSDT/1m.parquet")


@pytest.fixture(scope="module")
def funding_src() -> pd.DataFrame:
    return read_shared("binance/futures_um/BTCUSDT/funding.parquet")


def bars(frame: pd.DataFrame) -> pd.DataFrame:
    return frame[list(BAR_COLUMNS)].reset_index(drop=True)


def assert_same_bars(stored: pd.DataFrame, source: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(bars(stored), bars(source), check_exact=True)


def kline_starts(ex: LoopbackExchange, since: int = 0) -> list[int]:
    """``startTime`` of every klines request from the ``since``-th logged request on."""
    logged = ex.requests[since:]
    return [int(p["startTime"]) for path, p in logged if path.endswith("/klines") and "startTime" in p]


def download(store: Store, ex: LoopbackExchange, start: int, end: int | None = None, **kw) -> object:
    args = {**FAST, "api_url": ex.url, "limit": 100, **kw}
    return download_ohlcv(store, "binance", "spot", "BTC/USDT", "1m", start, end, **args)


# -- paging and the open candle ----------------------------------------------------------------


def test_pages_of_100_store_every_source_bar_exactly(tmp_path, spot_1m, capsys):
    src = spot_1m.iloc[:2_500]
    store = Store(tmp_path)
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        result = download(store, ex, int(src.ts.iloc[0]), progress=True)
    shown = capsys.readouterr().err
    assert "binance/spot/BTCUSDT/1m: 100%" in shown
    assert "2.50k/2.50k" in shown
    assert "bar/s]" in shown
    assert result.rows_added == 2_500
    assert result.requests == 25
    assert (result.first_ts, result.last_ts) == (int(src.ts.iloc[0]), int(src.ts.iloc[-1]))
    # one exchangeInfo, one time, then 25 pages that each start one page after the last
    assert [p for p, _ in ex.requests[:2]] == ["/api/v3/exchangeInfo", "/api/v3/time"]
    assert kline_starts(ex) == [int(src.ts.iloc[0]) + i * 100 * MINUTE_MS for i in range(25)]
    assert {p["limit"] for path, p in ex.requests if path.endswith("/klines")} == {"100"}
    assert_same_bars(store.read(SPOT_KEY), src)
    assert store.validate(SPOT_KEY) == []


def test_open_candle_is_never_stored_and_a_rerun_adds_exactly_the_newly_closed_bars(tmp_path, spot_1m):
    src = spot_1m.iloc[:2_000]
    ts = src.ts.to_numpy()
    store = Store(tmp_path)
    # the exchange clock stands 30 s into bar 1200: the server returns that bar, still open
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, now_ms=int(ts[1200]) + 30_000, max_seconds=60) as ex:
        first = download(store, ex, int(ts[0]), limit=1000)
        latest = ex.answer("/api/v3/klines", {"symbol": "BTCUSDT", "interval": "1m", "limit": "1"})[1]
        assert latest[0][0] == ts[1200]
        assert first.rows_added == 1200
        assert store.last_ts(SPOT_KEY) == ts[1199]
        ex.now_ms = int(ts[1500]) + 10_000
        logged = len(ex.requests)
        second = download(store, ex, int(ts[0]), limit=1000)
    assert second.rows_added == 300
    assert (second.first_ts, second.last_ts) == (ts[1200], ts[1499])
    # the re-run asked from the first missing bar only; the open candle (partial volume) was
    # not stored the first time, or this merge would have raised a ConflictError
    assert kline_starts(ex, logged) == [ts[1200]]
    assert_same_bars(store.read(SPOT_KEY), src.iloc[:1500])


def test_end_is_exclusive_and_a_rerun_fetches_nothing(tmp_path, spot_1m):
    src = spot_1m.iloc[:1_000]
    ts = src.ts.to_numpy()
    store = Store(tmp_path)
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        first = download(store, ex, int(ts[100]), int(ts[400]))
        logged = len(ex.requests)
        again = download(store, ex, int(ts[100]), int(ts[400]))
    assert first.rows_added == 300
    assert (again.rows_added, again.requests) == (0, 0)
    assert kline_starts(ex, logged) == []
    assert_same_bars(store.read(SPOT_KEY), src.iloc[100:400])


def test_a_start_before_the_stored_rows_backfills_only_the_missing_front(tmp_path, spot_1m):
    src = spot_1m.iloc[:1_000]
    ts = src.ts.to_numpy()
    store = Store(tmp_path)
    store.write(SPOT_KEY, bars(src.iloc[500:800]))
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        result = download(store, ex, int(ts[0]), limit=1000)
    assert result.rows_added == 700
    assert kline_starts(ex) == [ts[0], ts[800]]
    assert_same_bars(store.read(SPOT_KEY), src)


def test_a_gap_in_exchange_history_is_kept_and_paging_stops_where_the_history_ends(tmp_path, spot_1m):
    ts_all = spot_1m.ts.to_numpy()
    hole = int(np.flatnonzero(np.diff(ts_all) > MINUTE_MS)[0])  # 2025-08-18T18:27 .. 2026-03-01
    src = spot_1m.iloc[hole - 86 : hole + 62]
    store = Store(tmp_path)
    # the clock is 10 days past the last bar: the page after it comes back empty
    now = int(src.ts.iloc[-1]) + 10 * 24 * 60 * MINUTE_MS
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, now_ms=now, max_seconds=60) as ex:
        result = download(store, ex, int(src.ts.iloc[0]))
    assert result.rows_added == 148
    # 100 + 48 rows, one empty page, one look at the latest bar, which shows nothing is later
    assert ex.count("klines") == 4
    assert result.requests == 4
    assert_same_bars(store.read(SPOT_KEY), src)
    assert find_gaps(store.read(SPOT_KEY).ts.to_numpy(), MINUTE_MS).tolist() == [
        [int(ts_all[hole]) + MINUTE_MS, int(ts_all[hole + 1])]
    ]


def test_futures_klines_come_from_fapi_in_pages_of_1000(tmp_path, futures_1m):
    src = futures_1m.iloc[:2_500]
    store = Store(tmp_path)
    with LoopbackExchange(futures={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        result = download_ohlcv(
            store, "binance", "futures", "BTC/USDT", "1m", int(src.ts.iloc[0]), api_url=ex.url, **FAST
        )
    key = SeriesKey.of("binance", "futures", "BTC/USDT", "1m")
    assert result.key == key
    assert result.rows_added == 2_500
    klines = [(path, p["limit"]) for path, p in ex.requests if path.endswith("/klines")]
    # ccxt 4.5.90 clamps binanceusdm pages to 1000 although Binance serves 1500 there
    assert klines == [("/fapi/v1/klines", "1000")] * 3
    assert [p for p, _ in ex.requests[:2]] == ["/fapi/v1/exchangeInfo", "/fapi/v1/time"]
    assert_same_bars(store.read(key), src)


# -- transient faults ---------------------------------------------------------------------------


@pytest.mark.parametrize("fault", [429, 418, 500, 502, 503, 504, "timeout", "malformed", "reset"], ids=str)
def test_a_transient_fault_mid_download_is_retried_and_the_data_is_complete(tmp_path, spot_1m, fault):
    src = spot_1m.iloc[:2_000]
    store = Store(tmp_path)
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60, timeout_sleep_s=2.0) as ex:
        ex.inject("klines", fault, after=5)
        result = download(store, ex, int(src.ts.iloc[0]), timeout_ms=500)
    starts = kline_starts(ex)
    assert len(starts) == 21
    # the sixth page was asked twice, the rest once
    assert starts[5] == starts[6] == int(src.ts.iloc[500])
    assert result.requests == 21
    assert result.rows_added == 2_000
    assert_same_bars(store.read(SPOT_KEY), src)


@pytest.mark.parametrize("endpoint", ["exchangeInfo", "time"])
def test_faults_on_markets_and_clock_are_retried_too(tmp_path, spot_1m, endpoint):
    src = spot_1m.iloc[:300]
    store = Store(tmp_path)
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        # a truncated exchangeInfo would otherwise read as "no symbols", a truncated time as None
        ex.inject(endpoint, "malformed", 503)
        result = download(store, ex, int(src.ts.iloc[0]))
    assert ex.count(endpoint) == 3
    assert result.rows_added == 300


def test_exhausted_retries_raise_and_keep_every_row_fetched_before(tmp_path, spot_1m):
    src = spot_1m.iloc[:2_000]
    ts = src.ts.to_numpy()
    store = Store(tmp_path)
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        ex.inject("klines", 503, 503, 503, after=7)
        with pytest.raises(DownloadError) as info:
            download(store, ex, int(ts[0]), max_retries=2)
        assert ex.count("klines") == 10
        text = str(info.value)
        assert "failed 3 times, last with ExchangeNotAvailable" in text
        assert "since 2025-05-20T11:40:00Z" in text
        assert "a re-run resumes" in text
        # the 700 rows of the 7 good pages were written on the way out
        assert store.validate(SPOT_KEY) == []
        assert_same_bars(store.read(SPOT_KEY), src.iloc[:700])
        logged = len(ex.requests)
        result = download(store, ex, int(ts[0]))
    assert result.rows_added == 1_300
    assert kline_starts(ex, logged)[0] == ts[700]
    assert_same_bars(store.read(SPOT_KEY), src)


# -- permanent errors ---------------------------------------------------------------------------


def test_an_unknown_symbol_fails_at_once_naming_offered_symbols(tmp_path, spot_1m):
    src = spot_1m.iloc[:10]
    with (
        LoopbackExchange(spot={"BTCUSDT": {"1m": src}, "ETHUSDT": {"1m": src}}, max_seconds=60) as ex,
        pytest.raises(DownloadError) as info,
    ):
        download_ohlcv(Store(tmp_path), "binance", "spot", "DOGE/USDT", "1m", 0, api_url=ex.url, **FAST)
    assert str(info.value) == (
        "symbol 'DOGE/USDT' is not offered on binance spot (2 symbols); for example: BTC/USDT, ETH/USDT"
    )
    assert [path for path, _ in ex.requests] == ["/api/v3/exchangeInfo"]


def test_a_mistyped_symbol_is_answered_with_its_close_match(tmp_path, spot_1m):
    with (
        LoopbackExchange(futures={"BTCUSDT": {"1m": spot_1m.iloc[:10]}}, max_seconds=60) as ex,
        pytest.raises(DownloadError) as info,
    ):
        download_ohlcv(Store(tmp_path), "binance", "futures", "BTC/USTD", "1m", 0, api_url=ex.url, **FAST)
    assert str(info.value) == (
        "symbol 'BTC/USTD:USTD' is not offered on binanceusdm futures (1 symbols); "
        "close matches: BTC/USDT:USDT"
    )


def test_an_error_the_exchange_calls_permanent_is_not_retried(tmp_path, spot_1m):
    src = spot_1m.iloc[:1_000]
    store = Store(tmp_path)
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        ex.inject("klines", 400, after=3)  # {"code": -1121, "msg": "Invalid symbol."}
        with pytest.raises(DownloadError, match=r"failed: BadSymbol: binance .*Invalid symbol"):
            download(store, ex, int(src.ts.iloc[0]))
    assert ex.count("klines") == 4
    assert_same_bars(store.read(SPOT_KEY), src.iloc[:300])


def test_an_unknown_timeframe_is_refused_before_any_request(tmp_path):
    with LoopbackExchange(max_seconds=60) as ex, pytest.raises(DownloadError) as info:
        download_ohlcv(Store(tmp_path), "binance", "spot", "BTC/USDT", "7m", 0, api_url=ex.url, **FAST)
    assert str(info.value).startswith(
        "timeframe '7m' is not offered by binance; choose one of 1s, 1m, 3m, 5m,"
    )
    assert ex.requests == []


def test_no_network_says_the_store_can_be_filled_offline(tmp_path):
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DownloadError) as info:
        download_ohlcv(
            Store(tmp_path),
            "binance",
            "spot",
            "BTC/USDT",
            "1m",
            0,
            api_url=f"http://127.0.0.1:{port}",
            max_retries=1,
            **FAST,
        )
    assert "binance load_markets: cannot reach the exchange after 2 attempts" in str(info.value)
    assert "python -m data import path=" in str(info.value)


# -- a killed download ---------------------------------------------------------------------------


def download_command(root: Path, url: str, start: str, end: str) -> list[str]:
    args = [
        "exchange=binance",
        "market=spot",
        "symbol=BTC/USDT",
        "timeframe=1m",
        f"start={start}",
        f"end={end}",
        f"root={root}",
        f"api_url={url}",
        "limit=100",
        "progress=false",
    ]
    return [sys.executable, "-m", "data", "download", *args]


def test_a_killed_download_leaves_a_valid_store_and_the_rerun_resumes_without_refetching(tmp_path, spot_1m):
    # May holds 1,440 bars (15 pages, flushed at the month boundary), June 2,880 (29 pages):
    # at 50 ms a page the process is killed with well over a second of June still to fetch
    start, end = "2025-05-31T00:00:00", "2025-06-03T00:00:00"
    lo, hi = parse_time(start), parse_time(end)
    src = spot_1m[(spot_1m.ts >= lo) & (spot_1m.ts < hi)]
    root = tmp_path / "store"
    store = Store(root)
    may = SPOT_KEY.path(root) / "2025-05.parquet"
    served = {"BTCUSDT": {"1m": spot_1m.iloc[:25_000]}}  # to 2025-06-06
    with LoopbackExchange(spot=served, latency_s=0.05, max_seconds=60) as ex:
        proc = subprocess.Popen(
            download_command(root, ex.url, start, end),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            while not may.exists() and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            if not may.exists():
                pytest.fail(proc.stderr.read().decode() if proc.poll() is not None else "no flush in 30 s")
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, "the download finished before it could be killed"
        killed_pages = ex.count("klines")
        # every partition a reader sees is whole and valid; no temp file is among them
        assert [p.name for p in store.partitions(SPOT_KEY)] == ["2025-05.parquet"]
        assert store.validate(SPOT_KEY) == []
        assert_same_bars(store.read(SPOT_KEY), src[src.ts < parse_time("2025-06-01")])
        resumed_at = store.last_ts(SPOT_KEY) + MINUTE_MS
        assert resumed_at == parse_time("2025-06-01")

        logged = len(ex.requests)
        ex.latency_s = 0.0
        rerun = subprocess.run(
            download_command(root, ex.url, start, end), cwd=tmp_path, capture_output=True, timeout=40
        )
        assert rerun.returncode == 0, rerun.stderr.decode()
    starts = kline_starts(ex, logged)
    assert starts[0] == resumed_at  # nothing of May was asked again
    assert len(starts) == 29  # June's 2,880 bars in pages of 100, the unflushed ones again
    assert 15 <= killed_pages < 15 + 29
    assert_same_bars(store.read(SPOT_KEY), src)
    assert store.validate(SPOT_KEY) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "kill"])
def test_ctrl_c_or_kill_writes_the_buffered_rows_before_exiting(tmp_path, spot_1m, sig):
    start, end = "2025-05-31T00:00:00", "2025-06-03T00:00:00"
    lo = parse_time(start)
    root = tmp_path / "store"
    store = Store(root)
    served = {"BTCUSDT": {"1m": spot_1m.iloc[:25_000]}}
    with LoopbackExchange(spot=served, latency_s=0.05, max_seconds=60) as ex:
        proc = subprocess.Popen(
            download_command(root, ex.url, start, end),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            deadline = time.monotonic() + 30
            # when page 20 is asked, 19 are in: May (1,440 bars) is written, June's first 460
            # bars sit in the buffer only
            while ex.count("klines") < 20 and proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.01)
            proc.send_signal(sig)
            _, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert proc.returncode == 130, err.decode()
    assert "re-run the same command to resume" in err.decode()
    stored = store.read(SPOT_KEY)
    pages_answered = ex.count("klines")
    assert len(stored) >= 1_900  # the buffered part of June was written on the way out
    assert len(stored) <= pages_answered * 100
    assert [p.name for p in store.partitions(SPOT_KEY)] == ["2025-05.parquet", "2025-06.parquet"]
    assert store.validate(SPOT_KEY) == []
    assert_same_bars(stored, spot_1m[spot_1m.ts >= lo].iloc[: len(stored)])


# -- funding ------------------------------------------------------------------------------------


def test_funding_rates_and_mark_prices_equal_the_source_with_ts_rounded_to_seconds(tmp_path, funding_src):
    src = funding_src.copy()
    src.loc[:4, "mark_price"] = np.nan  # Binance's oldest records carry markPrice ""
    store = Store(tmp_path)
    key = SeriesKey.of("binance", "futures", "BTC/USDT", "funding")
    # Binance stamps fundingTime a few ms after the hour: here 0..9 ms
    with LoopbackExchange(funding={"BTCUSDT": src}, funding_offset_ms=9, max_seconds=60) as ex:
        stamped = [r["fundingTime"] for r in ex.answer("/fapi/v1/fundingRate", {"symbol": "BTCUSDT"})[1]]
        assert {t % 1000 for t in stamped} == set(range(10))
        start, cut = int(src.ts.iloc[0]), int(src.ts.iloc[1500])
        first = download_funding(store, "binance", "futures", "BTC/USDT", start, cut, api_url=ex.url, **FAST)
        logged = len(ex.requests)
        rest = download_funding(store, "binance", "futures", "BTC/USDT", start, api_url=ex.url, **FAST)
        again = download_funding(store, "binance", "futures", "BTC/USDT", start, api_url=ex.url, **FAST)
    assert first.key == key
    assert (first.rows_added, first.requests) == (1_500, 2)
    # 624 events after the stored ones, then an empty page and a look at the latest event
    assert (rest.rows_added, rest.requests) == (624, 3)
    funding_calls = [p for path, p in ex.requests[logged:] if path.endswith("/fundingRate")]
    # resumed half a second after the last stored (rounded) ts, so its own stamp is not refetched
    assert int(funding_calls[0]["startTime"]) == int(src.ts.iloc[1499]) + 500
    # the clock says nothing can have come since: a third run asks nothing
    assert (again.rows_added, again.requests) == (0, 0)
    got = store.read(key)
    np.testing.assert_array_equal(got.ts.to_numpy(), src.ts.to_numpy())
    np.testing.assert_array_equal(got.rate.to_numpy(), src.funding_rate.to_numpy())
    np.testing.assert_array_equal(got.mark_price.to_numpy(), src.mark_price.to_numpy())
    assert got.mark_price.isna().sum() == 5


def test_funding_on_the_spot_market_is_refused(tmp_path):
    with pytest.raises(ValueError, match="funding rates exist only for perpetual futures"):
        download_funding(Store(tmp_path), "binance", "spot", "BTC/USDT", 0)


# -- nothing to download -----------------------------------------------------------------------


def synthetic_1m(n: int) -> pd.DataFrame:
    from data.synthetic import SyntheticConfig, generate

    return generate(SyntheticConfig(seed=3, bars=n))[0]  # from 2024-01-01T00:00Z


def test_a_start_after_the_latest_closed_bar_is_refused_naming_that_bar(tmp_path):
    src = synthetic_1m(600)
    store = Store(tmp_path)
    latest = r"latest closed 1m bar of binance BTC/USDT \(2024-01-01T09:59:00Z\)"
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        with pytest.raises(DownloadError, match=latest):
            download(store, ex, parse_time("2024-01-01T10:00"))
        assert kline_starts(ex) == []
    assert store.partitions(SPOT_KEY) == []


def test_a_start_after_the_last_bar_of_a_symbol_that_stopped_trading_names_its_last_bar(tmp_path):
    src = synthetic_1m(600)
    # the exchange's clock runs on a day past the symbol's last bar (a delisting)
    now = int(src.ts.iloc[-1]) + 24 * 60 * MINUTE_MS
    last = "after the latest 1m bar binance has for BTC/USDT, which is 2024-01-01T09:59:00Z"
    with (
        LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, now_ms=now, max_seconds=60) as ex,
        pytest.raises(DownloadError, match=last),
    ):
        download(Store(tmp_path), ex, parse_time("2024-01-01T12:00"))


def test_a_resume_with_nothing_new_sends_nothing_and_raises_nothing(tmp_path):
    src = synthetic_1m(600)
    store = Store(tmp_path)
    with LoopbackExchange(spot={"BTCUSDT": {"1m": src}}, max_seconds=60) as ex:
        first = download(store, ex, int(src.ts.iloc[0]))
        again = download(store, ex, int(src.ts.iloc[0]))
    assert (first.rows_added, again.rows_added, again.requests) == (600, 0, 0)
