"""data.importer: Binance archives, plain files, and refusing what cannot be imported honestly.

Archives are built in tmp_path from real rows of the shared Binance data, in the exact layout of
data.binance.vision, and must come back from the store unchanged.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from data.errors import ConflictError, ImportFormatError, ValidationError
from data.formats import read_import_file
from data.importer import expand_paths, import_files
from data.store import SeriesKey, Store

SHARED = Path(
    os.environ.get("KLINEGYM_SHARED_DATA") or Path(__file__).resolve().parents[2].parent / "shared" / "data"
)

SPOT_1M = SeriesKey.of("binance", "spot", "BTCUSDT", "1m")
FUTURES_1M = SeriesKey.of("binance", "futures", "BTCUSDT", "1m")
TRADES = SeriesKey.of("binance", "spot", "BTCUSDT", "trades")
FUNDING = SeriesKey.of("binance", "futures", "BTCUSDT", "funding")
MAR_1 = 1_772_323_200_000  # 2026-03-01T00:00Z, first month of the shared data from Binance archives
APR_1 = 1_775_001_600_000  # 2026-04-01T00:00Z
DAY = 86_400_000
FUTURES_HEADER = (
    "open_time,open,high,low,close,volume,close_time,quote_volume,count,taker_buy_volume,"
    "taker_buy_quote_volume,ignore"
)


@pytest.fixture(scope="module")
def spot_rows() -> pd.DataFrame:
    """Three real days of 2026-03 and of 2026-04, with every archive column present."""
    if not (SHARED / "binance").is_dir():
        pytest.skip(f"shared Binance data not found at {SHARED}")
    frame = pd.read_parquet(SHARED / "binance/spot/BTCUSDT/1m.parquet")
    frame["trades"] = frame["trades"].astype("float64")
    keep = frame["ts"].between(MAR_1, MAR_1 + 3 * DAY - 1) | frame["ts"].between(APR_1, APR_1 + 3 * DAY - 1)
    return frame[keep].reset_index(drop=True)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "store")


def stored_files(store: Store) -> list[Path]:
    return sorted(store.root.rglob("*.parquet")) if store.root.exists() else []


def kline_csv(rows: pd.DataFrame, *, micro: bool, header: bool = False, bar_ms: int = 60_000) -> str:
    """Rows in Binance's kline archive layout: prices with 8 decimals, open / close time in ms,
    or in µs as spot archives have them since 2025."""
    scale = 1000 if micro else 1
    lines = [FUTURES_HEADER] if header else []
    for r in rows.itertuples(index=False):
        lines.append(
            ",".join(
                [
                    str(r.ts * scale),
                    f"{r.open:.8f}",
                    f"{r.high:.8f}",
                    f"{r.low:.8f}",
                    f"{r.close:.8f}",
                    f"{r.volume:.8f}",
                    str((r.ts + bar_ms) * scale - 1),
                    f"{r.quote_volume:.8f}",
                    str(int(r.trades)),
                    f"{r.taker_buy_base:.8f}",
                    f"{r.taker_buy_base * r.close:.8f}",
                    "0",
                ]
            )
        )
    return "\n".join(lines) + "\n"


def write_zip(path: Path, text: str) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(path.with_suffix(".csv").name, text)
    return path


def march(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["ts"] < APR_1].reset_index(drop=True)


def april(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[rows["ts"] >= APR_1].reset_index(drop=True)


# -- archives ---------------------------------------------------------------------------------


def test_spot_archive_with_microsecond_open_times_stores_the_rows_exactly_in_ms(spot_rows, store, tmp_path):
    rows = march(spot_rows)
    archive = write_zip(tmp_path / "BTCUSDT-1m-2026-03.zip", kline_csv(rows, micro=True))
    assert archive.read_bytes()[:2] == b"PK"

    result = import_files(store, SPOT_1M, [archive])

    assert result.rows_added == len(rows) == 4320
    pd.testing.assert_frame_equal(store.read(SPOT_1M), rows, check_exact=True)
    assert store.read(SPOT_1M)["ts"].iloc[0] == MAR_1


def test_spot_archive_with_millisecond_open_times_stores_the_rows_exactly(spot_rows, store, tmp_path):
    rows = april(spot_rows)
    archive = write_zip(tmp_path / "BTCUSDT-1m-2026-04.zip", kline_csv(rows, micro=False))

    import_files(store, SPOT_1M, [archive])

    pd.testing.assert_frame_equal(store.read(SPOT_1M), rows, check_exact=True)


def test_futures_archive_with_header_row_is_detected_and_stored_exactly(spot_rows, store, tmp_path):
    # the shared futures files lack the archive-only columns, so real spot rows carry the
    # futures layout (header row, ms times); the layout is what is under test
    rows = april(spot_rows)
    archive = write_zip(tmp_path / "BTCUSDT-1m-2026-04.zip", kline_csv(rows, micro=False, header=True))

    import_files(store, FUTURES_1M, [archive])

    pd.testing.assert_frame_equal(store.read(FUTURES_1M), rows, check_exact=True)


def test_units_are_read_per_row_so_ms_and_us_archives_import_together(spot_rows, store, tmp_path):
    ms_zip = write_zip(tmp_path / "BTCUSDT-1m-2026-04.zip", kline_csv(april(spot_rows), micro=False))
    us_zip = write_zip(tmp_path / "BTCUSDT-1m-2026-03.zip", kline_csv(march(spot_rows), micro=True))

    result = import_files(store, SPOT_1M, [ms_zip, us_zip], progress=False)

    assert result.rows_added == 8640
    assert [p.name for p in result.partitions] == ["2026-03.parquet", "2026-04.parquet"]
    pd.testing.assert_frame_equal(store.read(SPOT_1M), spot_rows, check_exact=True)


def test_plain_csv_in_the_archive_layout_imports_like_the_zip(spot_rows, store, tmp_path):
    path = tmp_path / "BTCUSDT-1m-2026-03.csv"
    path.write_text(kline_csv(march(spot_rows), micro=True))

    import_files(store, SPOT_1M, [path])

    pd.testing.assert_frame_equal(store.read(SPOT_1M), march(spot_rows), check_exact=True)


def test_directory_imports_its_archives_in_name_order_and_skips_checksum_files(spot_rows, store, tmp_path):
    folder = tmp_path / "downloads"
    folder.mkdir()
    write_zip(folder / "BTCUSDT-1m-2026-04.zip", kline_csv(april(spot_rows), micro=False))
    write_zip(folder / "BTCUSDT-1m-2026-03.zip", kline_csv(march(spot_rows), micro=True))
    (folder / "BTCUSDT-1m-2026-03.zip.CHECKSUM").write_text("abc  BTCUSDT-1m-2026-03.zip\n")

    assert [p.name for p in expand_paths([folder])] == ["BTCUSDT-1m-2026-03.zip", "BTCUSDT-1m-2026-04.zip"]
    assert [p.name for p in expand_paths([str(folder / "*-2026-0[34].zip")])] == [
        "BTCUSDT-1m-2026-03.zip",
        "BTCUSDT-1m-2026-04.zip",
    ]
    import_files(store, SPOT_1M, [folder], progress=False)
    assert len(store.read(SPOT_1M)) == 8640


def test_archive_of_another_timeframe_is_refused_by_its_close_times(spot_rows, store, tmp_path):
    # real 1m rows whose close_time says each bar lasts 5 minutes: a 5m file in the 1m series
    text = kline_csv(april(spot_rows).iloc[::5], micro=False, bar_ms=300_000)
    path = write_zip(tmp_path / "klines.zip", text)

    with pytest.raises(ImportFormatError, match=r"bars last 5m .* series is binance/spot/BTCUSDT/1m"):
        import_files(store, SPOT_1M, [path])
    assert stored_files(store) == []


def test_archive_named_for_another_symbol_is_refused(spot_rows, store, tmp_path):
    path = write_zip(tmp_path / "ETHUSDT-1m-2026-04.zip", kline_csv(april(spot_rows), micro=False))

    with pytest.raises(ImportFormatError, match="file name says ETHUSDT 1m"):
        import_files(store, SPOT_1M, [path])
    assert stored_files(store) == []


# -- refusing files ---------------------------------------------------------------------------


def _wrong_columns(tmp_path: Path, rows: pd.DataFrame) -> Path:
    path = tmp_path / "bars.csv"
    frame = april(rows).head(10).rename(columns={"volume": "vol"})
    frame[["ts", "open", "high", "low", "close", "vol"]].to_csv(path, index=False)
    return path


def _truncated_zip(tmp_path: Path, rows: pd.DataFrame) -> Path:
    good = write_zip(tmp_path / "good.zip", kline_csv(april(rows), micro=False))
    data = good.read_bytes()
    path = tmp_path / "BTCUSDT-1m-2026-04.zip"
    path.write_bytes(data[: len(data) // 2])  # a download cut off halfway
    return path


def _corrupt_zip(tmp_path: Path, rows: pd.DataFrame) -> Path:
    good = write_zip(tmp_path / "good.zip", kline_csv(april(rows), micro=False))
    data = bytearray(good.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = bytes(16)  # damaged in transit; the size is right
    path = tmp_path / "BTCUSDT-1m-2026-04.zip"
    path.write_bytes(bytes(data))
    return path


def _zip_cut_mid_row(tmp_path: Path, rows: pd.DataFrame) -> Path:
    text = kline_csv(april(rows), micro=False)
    cut = text.index("\n", len(text) // 2) + 30  # 30 characters into a row
    return write_zip(tmp_path / "BTCUSDT-1m-2026-04.zip", text[:cut])


def _empty_csv(tmp_path: Path, rows: pd.DataFrame) -> Path:
    path = tmp_path / "BTCUSDT-1m-2026-04.csv"
    path.write_bytes(b"")
    return path


def _header_only(tmp_path: Path, rows: pd.DataFrame) -> Path:
    return write_zip(tmp_path / "BTCUSDT-1m-2026-04.zip", FUTURES_HEADER + "\n")


def _missing(tmp_path: Path, rows: pd.DataFrame) -> Path:
    return tmp_path / "BTCUSDT-1m-2026-05.zip"


def _unknown_extension(tmp_path: Path, rows: pd.DataFrame) -> Path:
    path = tmp_path / "bars.txt"
    path.write_text("ts,open,high,low,close,volume\n")
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (
            _wrong_columns,
            r"columns \['ts', 'open', 'high', 'low', 'close', 'vol'\].*missing \['volume'\]"
            r".*unknown \['vol'\]",
        ),
        (_truncated_zip, "not a readable zip .*Download it again"),
        (_corrupt_zip, "not a readable zip .*Download it again"),
        (_zip_cut_mid_row, "Expected 12 columns, got .*cut off"),
        (_empty_csv, "is empty"),
        (_header_only, "has a header but no rows"),
        (_missing, "does not exist"),
        (_unknown_extension, r"unknown extension '\.txt'"),
    ],
    ids=[
        "wrong-columns",
        "truncated-zip",
        "corrupt-zip",
        "zip-cut-mid-row",
        "empty",
        "header-only",
        "missing",
        "extension",
    ],
)
def test_unreadable_file_among_good_ones_raises_and_writes_nothing(spot_rows, store, tmp_path, make, message):
    good = write_zip(tmp_path / "BTCUSDT-1m-2026-03.zip", kline_csv(march(spot_rows), micro=True))
    bad = make(tmp_path, spot_rows)

    with pytest.raises(ImportFormatError, match=message) as info:
        import_files(store, SPOT_1M, [good, bad], progress=False)

    assert bad.name in str(info.value)
    assert stored_files(store) == []


def test_planted_bad_row_is_refused_with_its_timestamp_and_nothing_is_written(spot_rows, store, tmp_path):
    rows = april(spot_rows).copy()
    bad_ts = int(rows["ts"].iloc[100])
    rows.loc[100, "high"] = rows.loc[100, "close"] - 1.0  # high below close
    path = write_zip(tmp_path / "BTCUSDT-1m-2026-04.zip", kline_csv(rows, micro=False))
    good = write_zip(tmp_path / "BTCUSDT-1m-2026-03.zip", kline_csv(march(spot_rows), micro=True))

    with pytest.raises(ValidationError) as info:
        import_files(store, SPOT_1M, [good, path], progress=False)

    assert [(i.ts, i.kind) for i in info.value.issues] == [(bad_ts, "high_below_open_close")]
    assert "2026-04-01T01:40:00Z" in str(info.value) and path.name in str(info.value)
    assert stored_files(store) == []


# -- overlaps ---------------------------------------------------------------------------------


def test_daily_archive_repeating_part_of_the_monthly_one_is_kept_once(spot_rows, store, tmp_path):
    monthly = write_zip(tmp_path / "BTCUSDT-1m-2026-03.zip", kline_csv(march(spot_rows), micro=True))
    day2 = march(spot_rows)[lambda f: f["ts"].between(MAR_1 + DAY, MAR_1 + 2 * DAY - 1)]
    daily = write_zip(tmp_path / "BTCUSDT-1m-2026-03-02.zip", kline_csv(day2, micro=True))

    result = import_files(store, SPOT_1M, [monthly, daily], progress=False)
    assert result.rows_added == 4320
    again = import_files(store, SPOT_1M, [daily])
    assert again.rows_added == 0 and again.partitions == ()
    pd.testing.assert_frame_equal(store.read(SPOT_1M), march(spot_rows), check_exact=True)


def test_files_that_disagree_on_a_bar_are_refused_naming_its_timestamp(spot_rows, store, tmp_path):
    monthly = write_zip(tmp_path / "BTCUSDT-1m-2026-03.zip", kline_csv(march(spot_rows), micro=True))
    day2 = march(spot_rows)[lambda f: f["ts"].between(MAR_1 + DAY, MAR_1 + 2 * DAY - 1)].copy()
    day2.loc[day2.index[60], "volume"] += 1.0
    daily = write_zip(tmp_path / "BTCUSDT-1m-2026-03-02.zip", kline_csv(day2, micro=True))

    with pytest.raises(ValidationError, match="disagree") as info:
        import_files(store, SPOT_1M, [monthly, daily], progress=False)

    issues = [(i.ts, i.kind) for i in info.value.issues]
    assert issues == [(MAR_1 + DAY + 60 * 60_000, "conflicting_duplicate")]
    assert "BTCUSDT-1m-2026-03-02.zip has volume=" in str(info.value)
    assert stored_files(store) == []


def test_import_that_disagrees_with_stored_bars_needs_replace(spot_rows, store, tmp_path):
    monthly = write_zip(tmp_path / "BTCUSDT-1m-2026-04.zip", kline_csv(april(spot_rows), micro=False))
    import_files(store, SPOT_1M, [monthly])
    changed = april(spot_rows).head(1440).copy()
    changed.loc[5, "close"] = changed.loc[5, "open"]
    changed.loc[5, "high"] = max(changed.loc[5, "high"], changed.loc[5, "open"])
    changed.loc[5, "low"] = min(changed.loc[5, "low"], changed.loc[5, "open"])
    daily = write_zip(tmp_path / "BTCUSDT-1m-2026-04-01.zip", kline_csv(changed, micro=False))

    with pytest.raises(ConflictError, match="2026-04-01T00:05:00Z"):
        import_files(store, SPOT_1M, [daily])
    assert store.read(SPOT_1M)["close"].iloc[5] == april(spot_rows)["close"].iloc[5]

    result = import_files(store, SPOT_1M, [daily], on_conflict="replace")

    assert result.rows_added == 0
    stored = store.read(SPOT_1M)
    assert stored["close"].iloc[5] == changed["close"].iloc[5] != april(spot_rows)["close"].iloc[5]
    assert len(stored) == 4320


def hand_bars(n: int, t0: int = MAR_1) -> pd.DataFrame:
    close = 100.0 + np.arange(n, dtype=float)
    return pd.DataFrame(
        {
            "ts": t0 + 60_000 * np.arange(n, dtype=np.int64),
            "open": close - 0.5,
            "high": close + 1.0,
            "low": close - 1.0,
            "close": close,
            "volume": np.full(n, 2.0),
        }
    )


def test_unsorted_rows_when_imported_then_sorted_and_counted_in_the_result(store, tmp_path):
    rows = hand_bars(10)
    shuffled = rows.iloc[[0, 1, 5, 2, 3, 4, 9, 6, 7, 8]]  # 5 and 9 come early: 2, 3, 4, 6, 7, 8 are late
    path = tmp_path / "bars.csv"
    shuffled.to_csv(path, index=False)

    result = import_files(store, SPOT_1M, [path], progress=False)

    assert (result.rows_added, result.rows_read, result.files) == (10, 10, 1)
    assert (result.out_of_order, result.duplicates) == (6, 0)
    pd.testing.assert_frame_equal(store.read(SPOT_1M)[list(rows.columns)], rows)


def test_exact_duplicate_rows_when_imported_then_kept_once_and_counted(store, tmp_path):
    rows = hand_bars(10)
    first = tmp_path / "a.csv"
    second = tmp_path / "b.csv"
    pd.concat([rows.iloc[:6], rows.iloc[[2]]]).to_csv(first, index=False)  # one repeat inside a file
    rows.iloc[4:].to_csv(second, index=False)  # two more across the files

    result = import_files(store, SPOT_1M, [first, second], progress=False)

    assert (result.rows_added, result.rows_read, result.files) == (10, 13, 2)
    # the repeat of row 2 at the end of a.csv is a duplicate, not also a row out of order
    assert (result.out_of_order, result.duplicates) == (0, 3)
    pd.testing.assert_frame_equal(store.read(SPOT_1M)[list(rows.columns)], rows)


def test_files_given_in_reverse_time_order_are_not_out_of_order_rows(store, tmp_path):
    rows = hand_bars(10)
    late, early = tmp_path / "late.csv", tmp_path / "early.csv"
    rows.iloc[5:].to_csv(late, index=False)
    rows.iloc[:5].to_csv(early, index=False)

    result = import_files(store, SPOT_1M, [late, early], progress=False)

    assert (result.rows_added, result.out_of_order, result.duplicates) == (10, 0, 0)


# -- plain files --------------------------------------------------------------------------------


def test_plain_csv_with_iso_dates_or_epoch_seconds_gives_the_same_ms(store, tmp_path):
    iso_path = tmp_path / "iso.csv"
    iso_path.write_text(
        "date,open,high,low,close,volume\n"
        "2024-01-01 00:00:00,42283.58,42298.62,42261.02,42298.61,35.92724\n"
        "2024-01-01T00:01:00Z,42298.62,42320.0,42298.61,42320.0,21.31136\n"
    )
    sec_path = tmp_path / "seconds.csv"
    sec_path.write_text(
        "timestamp,Open,High,Low,Close,Volume,number_of_trades\n"
        "1704067200,42283.58,42298.62,42261.02,42298.61,35.92724,1327\n"
        "1704067260,42298.62,42320.0,42298.61,42320.0,21.31136,\n"
    )

    a = read_import_file(iso_path, SPOT_1M)
    b = read_import_file(sec_path, SPOT_1M)

    assert a["ts"].tolist() == b["ts"].tolist() == [1_704_067_200_000, 1_704_067_260_000]
    assert a["close"].tolist() == b["close"].tolist() == [42298.61, 42320.0]
    assert b["trades"].iloc[0] == 1327 and np.isnan(b["trades"].iloc[1]) and a["trades"].isna().all()


def test_funding_files_accept_binance_api_and_archive_column_names(store, tmp_path):
    api = tmp_path / "funding-api.csv"
    api.write_text(
        "symbol,fundingTime,fundingRate,markPrice\n"
        "BTCUSDT,1701388800000,0.00010000,37716.80000000\n"
        "BTCUSDT,1701417600000,0.00010000,38241.69935484\n"
    )
    archive = write_zip(
        tmp_path / "BTCUSDT-fundingRate-2023-12.zip",
        "calc_time,funding_interval_hours,last_funding_rate\n1701446400000,8,0.00010000\n",
    )

    import_files(store, FUNDING, [api, archive], progress=False)

    stored = store.read(FUNDING)
    assert stored["ts"].tolist() == [1_701_388_800_000, 1_701_417_600_000, 1_701_446_400_000]
    assert stored["rate"].tolist() == [0.0001, 0.0001, 0.0001]
    assert stored["mark_price"].iloc[:2].tolist() == [37716.8, 38241.69935484]
    assert np.isnan(stored["mark_price"].iloc[2])


# -- trades -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def raw_trades() -> pd.DataFrame:
    path = SHARED / "binance/spot/BTCUSDT/trades-2021-01-08.parquet"
    if not path.exists():
        pytest.skip(f"shared trade sample not found at {path}")
    return pd.read_parquet(path)


def trades_csv(raw: pd.DataFrame, *, micro: bool, header: bool) -> str:
    """Binance trades archive layout: spot without header (7 columns), futures with one (6)."""
    lines = ["id,price,qty,quote_qty,time,is_buyer_maker"] if header else []
    for r in raw.itertuples(index=False):
        # µs times get a sub-millisecond part, as real ones have; it must be floored away
        time = r.time * 1000 + r.id % 1000 if micro else r.time
        # qty in full: 492 of the sample's quantities sit one ulp off their 6-decimal value (the
        # fixture went through fixed-point), and the round trip must be exact
        fields = [
            str(r.id),
            f"{r.price:.8f}",
            repr(r.qty),
            f"{r.price * r.qty:.8f}",
            str(time),
            str(r.is_buyer_maker),
        ]
        lines.append(",".join(fields if header else [*fields, "True"]))
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize(("micro", "header"), [(True, False), (False, True)], ids=["spot-us", "futures-ms"])
def test_trades_archive_imports_every_trade_in_order_with_ms_times(
    raw_trades, store, tmp_path, micro, header
):
    text = trades_csv(raw_trades, micro=micro, header=header)
    path = write_zip(tmp_path / "BTCUSDT-trades-2021-01-08.zip", text)

    result = import_files(store, TRADES, [path])

    assert result.rows_added == 2001
    stored = store.read(TRADES)
    expected = raw_trades.rename(columns={"time": "ts"})[["ts", "price", "qty", "is_buyer_maker"]]
    pd.testing.assert_frame_equal(stored, expected, check_exact=True)


def test_overlapping_trades_files_are_merged_by_trade_id(raw_trades, store, tmp_path):
    # a monthly archive in ms and a daily one in µs, sharing trades 1000..1499
    monthly = trades_csv(raw_trades.iloc[:1500], micro=False, header=False)
    daily = trades_csv(raw_trades.iloc[1000:], micro=True, header=False)
    first = write_zip(tmp_path / "BTCUSDT-trades-2021-01.zip", monthly)
    second = write_zip(tmp_path / "BTCUSDT-trades-2021-01-08.zip", daily)

    import_files(store, TRADES, [first, second], progress=False)

    assert len(store.read(TRADES)) == 2001
    assert store.read(TRADES)["qty"].sum() == pytest.approx(87.071596, rel=1e-12)


def test_trades_that_differ_under_one_id_are_refused(raw_trades, store, tmp_path):
    changed = raw_trades.iloc[1000:].copy()
    changed.loc[1200, "qty"] *= 2
    monthly = trades_csv(raw_trades.iloc[:1500], micro=False, header=False)
    first = write_zip(tmp_path / "BTCUSDT-trades-2021-01.zip", monthly)
    daily = trades_csv(changed, micro=False, header=False)
    second = write_zip(tmp_path / "BTCUSDT-trades-2021-01-08.zip", daily)

    with pytest.raises(ValidationError, match=f"trade id {raw_trades['id'].iloc[1200]}") as info:
        import_files(store, TRADES, [first, second], progress=False)
    assert info.value.issues[0].ts == raw_trades["time"].iloc[1200]
    assert stored_files(store) == []


def test_trades_parquet_without_ids_must_not_overlap(raw_trades, store, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    raw_trades.drop(columns="id").iloc[:1500].to_parquet(a)
    raw_trades.drop(columns="id").iloc[1000:].to_parquet(b)

    with pytest.raises(ImportFormatError, match="overlap in time and have no trade ids"):
        import_files(store, TRADES, [a, b], progress=False)
    assert stored_files(store) == []
