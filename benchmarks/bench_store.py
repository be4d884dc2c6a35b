"""Store throughput: write, load and resample one year of 1m bars (525,600 rows).

    python benchmarks/bench_store.py [--repeat 5]

Prints the best and median wall time of each step; the target for loading is well under 1 s.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from data.loader import load_bars
from data.resample import resample
from data.store import SeriesKey, Store
from data.synthetic import SyntheticConfig, generate

YEAR_OF_MINUTES = 525_600


def timed(fn, repeat: int) -> tuple[float, float, object]:
    times, out = [], None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), statistics.median(times), out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--bars", type=int, default=YEAR_OF_MINUTES)
    args = parser.parse_args()

    t0 = time.perf_counter()
    bars, _ = generate(SyntheticConfig(bars=args.bars, start="2024-01-01"))
    print(f"generate {args.bars:,} synthetic 1m bars: {time.perf_counter() - t0:.3f} s")
    with tempfile.TemporaryDirectory() as root:
        key = SeriesKey.of("synthetic", "spot", "SYN/USDT", "1m")
        store = Store(root)
        t0 = time.perf_counter()
        result = store.write(key, bars)
        elapsed = time.perf_counter() - t0
        print(f"write (validate + {len(result.partitions)} monthly partitions): {elapsed:.3f} s")

        best, median, loaded = timed(
            lambda: load_bars("SYN/USDT", "1m", exchange="synthetic", root=root), args.repeat
        )
        rows = f"{len(loaded):,} rows, all columns"
        print(f"load_bars {rows}: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms")
        best, median, _ = timed(
            lambda: load_bars(
                "SYN/USDT", "1m", exchange="synthetic", root=root, start="2024-06-01", end="2024-07-01"
            ),
            args.repeat,
        )
        print(f"load_bars one month of a year: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms")
        best, median, _ = timed(lambda: loaded.to_frame(), args.repeat)
        print(f"Bars.to_frame: best {best * 1000:.1f} ms, median {median * 1000:.1f} ms")
        frame = loaded.to_frame()
        best, median, _ = timed(lambda: resample(frame, "1m", "5m"), args.repeat)
        print(f"resample the year 1m -> 5m: best {best * 1e3:.1f} ms, median {median * 1e3:.1f} ms")
        best, median, _ = timed(lambda: store.validate(key), 1)
        print(f"validate the stored year: {best * 1000:.0f} ms")


if __name__ == "__main__":
    main()
