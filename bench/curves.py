"""How the forwarding path scales: spans per CPU-second by request size and by sample rate.

Usage: ``.venv/bin/python bench/curves.py [--seconds N] [--out bench/curves.png]``

Runs ``bench/throughput.py --pipeline forward --json`` (the reference processors, batches
forwarded with ``otlp_http``, the bare grpc.aio ceiling measured in the same run) at 1, 10,
100, 512 and 2,048 spans per request (sample rate 0.1; traces of at most 64 spans), then at
sample rates 0.01, 0.1 and 1.0 (512-span requests), prints the figures and draws both
curves, sidecar and ceiling, in one PNG (matplotlib, installed by ``make bench``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from targets import throughput

SIZES = (1, 10, 100, 512, 2048)
RATES = (0.01, 0.1, 1.0)
Point = tuple[float, float, float]  # x, sidecar spans/CPU-s, ceiling spans/CPU-s


def measure(seconds: float, spans: int, rate: float) -> tuple[float, float]:
    """Sidecar and ceiling spans per CPU-second."""
    traces = max(1, spans // 64)
    data = throughput(seconds, "--pipeline", "forward", "--spans", str(spans),
                      "--traces", str(traces), "--rate", str(rate))  # fmt: skip
    return data["sidecar"]["spans_per_cpu_s"], data["ceiling"]["spans_per_cpu_s"]


def draw(by_size: list[Point], by_rate: list[Point], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot

    figure, (left, right) = pyplot.subplots(1, 2, figsize=(11, 4.2))
    for axes, points, label in ((left, by_size, "spans per request (sample rate 0.1)"),
                                (right, by_rate, "sample rate (512-span requests)")):  # fmt: skip
        xs = [x for x, _, _ in points]
        axes.plot(xs, [s for _, s, _ in points], "o-", label="otel-sidecar (forward)")
        axes.plot(xs, [c for _, _, c in points], "s--", label="bare grpc.aio ceiling")
        axes.set_xscale("log")
        axes.set_xlabel(label)
        axes.set_ylabel("spans per CPU-second")
        axes.grid(True, which="both", alpha=0.3)
        axes.legend()
    figure.suptitle("Forwarding to OTLP/HTTP: spans per CPU-second (bench/curves.py)")
    figure.tight_layout()
    figure.savefig(out, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0, help="load per phase (6)")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("curves.png"))
    args = parser.parse_args()
    runs = [(spans, 0.1) for spans in SIZES] + [(512, rate) for rate in RATES if rate != 0.1]
    figures = {}
    print("| spans per request | rate | sidecar spans/CPU-s | ceiling | ratio |")
    print("|---:|---:|---:|---:|---:|")
    for spans, rate in runs:
        sidecar, ceiling = figures[spans, rate] = measure(args.seconds, spans, rate)
        print(f"| {spans:,} | {rate} | {sidecar:,.0f} | {ceiling:,.0f} | {sidecar / ceiling:.2f} |",
              flush=True)  # fmt: skip
    by_size = [(spans, *figures[spans, 0.1]) for spans in SIZES]
    by_rate = [(rate, *figures[512, rate]) for rate in RATES]
    draw(by_size, by_rate, args.out)
    print(f"\ndrawn: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
