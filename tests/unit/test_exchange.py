"""The ccxt edge: client options, URL rewriting and the retry policy. No network is used."""

from __future__ import annotations

import ccxt
import pytest
import requests

from data import exchange as edge
from data.errors import DownloadError
from data.exchange import call, check_timeframe, make_exchange, rewrite_api_urls


def test_rewrite_api_urls_replaces_scheme_host_and_port_and_keeps_paths():
    urls = {
        "public": "https://api.binance.com/api/v3",
        "fapiPublic": "https://fapi.binance.com/fapi/v1",
        "nested": {"rest": "https://dapi.binance.com:8443/dapi/v1?x=1", "list": ["wss://s.binance.com/ws"]},
        "flag": "not a url",
    }
    out = rewrite_api_urls(urls, "http://127.0.0.1:8080")
    assert out == {
        "public": "http://127.0.0.1:8080/api/v3",
        "fapiPublic": "http://127.0.0.1:8080/fapi/v1",
        "nested": {"rest": "http://127.0.0.1:8080/dapi/v1?x=1", "list": ["http://127.0.0.1:8080/ws"]},
        "flag": "not a url",
    }
    assert urls["public"] == "https://api.binance.com/api/v3"  # input untouched


def test_rewrite_api_urls_puts_a_path_prefix_of_api_url_before_each_path():
    assert rewrite_api_urls("https://api.binance.com/api/v3", "http://127.0.0.1:9/proxy/") == (
        "http://127.0.0.1:9/proxy/api/v3"
    )


def test_rewrite_api_urls_refuses_an_api_url_without_host():
    with pytest.raises(ValueError, match="must look like"):
        rewrite_api_urls({"public": "https://api.binance.com/api/v3"}, "127.0.0.1:9")


def test_binance_futures_is_binanceusdm_loading_linear_markets_only():
    ex = make_exchange("binance", "futures", timeout_ms=1234)
    assert ex.id == "binanceusdm"
    assert ex.enableRateLimit is True
    assert ex.timeout == 1234
    assert ex.options["fetchMarkets"]["types"] == ["linear"]
    assert ex.options["fetchCurrencies"] is False
    assert ex.options["fetchMargins"] is False
    assert ex.options["defaultType"] == "swap"


def test_binance_spot_loads_spot_markets_only():
    ex = make_exchange("Binance", "spot")
    assert ex.id == "binance"
    assert ex.options["fetchMarkets"]["types"] == ["spot"]
    assert ex.options["defaultType"] == "spot"


def test_other_exchanges_keep_their_id_and_default_to_swap_for_futures():
    ex = make_exchange("bybit", "futures")
    assert ex.id == "bybit"
    assert ex.options["defaultType"] == "swap"


def test_api_url_points_every_api_url_at_the_given_host():
    ex = make_exchange("binance", "spot", api_url="http://127.0.0.1:9")
    flat = []

    def walk(v):
        if isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, str):
            flat.append(v)

    walk(ex.urls["api"])
    assert len(flat) >= 20
    assert all(u.startswith("http://127.0.0.1:9/") for u in flat)
    assert ex.urls["api"]["public"] == "http://127.0.0.1:9/api/v3"


def test_unknown_exchange_is_a_value_error_naming_close_ccxt_ids():
    with pytest.raises(ValueError, match="not a ccxt exchange") as info:
        make_exchange("binanse", "spot")
    assert "binance" in str(info.value)


def test_unknown_market_is_a_value_error():
    with pytest.raises(ValueError, match="market 'margin' is not supported"):
        make_exchange("binance", "margin")


def test_timeframe_not_offered_lists_the_offered_ones():
    ex = make_exchange("binance", "spot")
    with pytest.raises(DownloadError) as info:
        check_timeframe(ex, "7m")
    assert str(info.value).startswith(
        "timeframe '7m' is not offered by binance; choose one of 1s, 1m, 3m, 5m"
    )


def test_timeframe_without_fixed_length_is_refused_with_the_usable_ones():
    ex = make_exchange("binance", "spot")
    with pytest.raises(DownloadError, match="'1M' has no fixed length") as info:
        check_timeframe(ex, "1M")
    assert "1w" in str(info.value)


class Flaky:
    """Raises the given errors in turn, then returns ``result``."""

    def __init__(self, *errors: Exception, result: object = "ok"):
        self.errors = list(errors)
        self.calls = 0
        self.result = result

    def __call__(self) -> object:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.result


@pytest.mark.parametrize(
    "error",
    [
        ccxt.RequestTimeout("t"),
        ccxt.ExchangeNotAvailable("502"),
        ccxt.DDoSProtection("429"),
        ccxt.RateLimitExceeded("-1003"),
        ccxt.BadResponse("garbled"),
        ccxt.OperationFailed("-1001 internal error"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_transient_errors_are_retried_until_success(error):
    fn = Flaky(error, error, result=42)
    assert call(fn, what="x", max_retries=5, backoff_s=0.001) == 42
    assert fn.calls == 3


@pytest.mark.parametrize(
    "error",
    [
        ccxt.BadSymbol("-1121"),
        ccxt.BadRequest("-1120"),
        ccxt.AuthenticationError("401"),
        ccxt.ExchangeError("?"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_permanent_errors_stop_at_once(error):
    fn = Flaky(error)
    with pytest.raises(DownloadError, match=f"fetch page failed: {type(error).__name__}"):
        call(fn, what="fetch page", max_retries=5, backoff_s=0.001)
    assert fn.calls == 1


def test_exhausted_retries_say_what_failed_and_that_a_rerun_resumes():
    fn = Flaky(*[ccxt.ExchangeNotAvailable("503 busy")] * 4)
    counted = []
    with pytest.raises(DownloadError) as info:
        call(
            fn,
            what="binance fetch_ohlcv",
            max_retries=2,
            backoff_s=0.001,
            on_attempt=lambda: counted.append(1),
        )
    assert fn.calls == 3
    assert len(counted) == 3
    text = str(info.value)
    assert text.startswith("binance fetch_ohlcv failed 3 times, last with ExchangeNotAvailable: 503 busy")
    assert "re-run resumes" in text


def test_backoff_doubles_from_the_base_and_is_capped(monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(edge.time, "sleep", waits.append)
    monkeypatch.setattr(edge, "RETRY_BACKOFF_CAP_S", 3.0)
    with pytest.raises(DownloadError):
        call(Flaky(*[ccxt.RequestTimeout("t")] * 6), what="x", max_retries=5, backoff_s=0.5)
    assert waits == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_unreachable_host_points_to_the_offline_import():
    def refused():
        try:
            raise requests.exceptions.ConnectionError("Connection refused")
        except requests.exceptions.ConnectionError as exc:
            raise ccxt.NetworkError("binance GET http://127.0.0.1:1/api/v3/exchangeInfo") from exc

    with pytest.raises(DownloadError) as info:
        call(refused, what="binance load_markets", max_retries=1, backoff_s=0.001)
    assert "cannot reach the exchange after 2 attempts" in str(info.value)
    assert "python -m data import path=" in str(info.value)
