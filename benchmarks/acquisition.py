"""Benchmark iNaturalist acquisition against the fake iNaturalist server on 127.0.0.1.

Downloads the same photos (2,000 by default) twice, side by side in one run: with one download
thread, then with the configured concurrency. The API rate limit is set high so that photo
downloads are the bottleneck; the fake server adds a fixed latency per photo, like a CDN. For
each run it prints photos per second, requests per second (counted by the server, retries
included), and how many photo requests were in flight on average and at peak.

    python benchmarks/acquisition.py [--photos 2000] [--concurrency 8] [--latency-ms 20]

With ``--storm``, it instead checks the API rate limit in real time: observations are served
one per page, a share of API requests (``--fault-rate``) is answered 429 (Retry-After: 1) or 500,
and the client runs at ``--requests-per-minute`` until ``--api-requests`` went out. It prints
the busiest 60 s window of API requests seen by the server (retries included) against the
limit, the retry delays, and whether the dataset card counted every request.

    python benchmarks/acquisition.py --storm [--requests-per-minute 30] [--api-requests 45] [--fault-rate 0.4]
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

from mushroom.config import INaturalistSourceConfig
from mushroom.sources.inaturalist import acquire_inaturalist
from mushroom.species import Catalog, Species
from mushroom.testing.inat_server import FakeINaturalist

TAXA = (1001, 1002, 1003, 1004)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--photos", type=int, default=2000, help="photos to download per run")
    parser.add_argument("--concurrency", type=int, default=8, help="download threads of the second run")
    parser.add_argument("--latency-ms", type=float, default=20.0, help="server delay per photo")
    parser.add_argument("--image-size", type=int, default=160, help="width and height of the photos")
    parser.add_argument("--storm", action="store_true", help="check the API rate limit under 429/500 storms")
    parser.add_argument("--requests-per-minute", type=int, default=30, help="--storm: the client's API limit")
    parser.add_argument("--api-requests", type=int, default=45, help="--storm: about how many API requests to send")
    parser.add_argument("--fault-rate", type=float, default=0.4, help="--storm: share of API requests that fail")
    return parser.parse_args(argv)


def run_once(inat: FakeINaturalist, photos_per_species: int, concurrency: int, out_dir: Path) -> dict:
    """Acquire every photo once into ``out_dir``; return timings and the server's counts."""
    catalog = Catalog([Species(t, f"Benchmark species{t}", f"Species {t}", "edible") for t in TAXA])
    config = INaturalistSourceConfig(
        api_url=inat.api_url,
        photos_per_species=photos_per_species,
        photo_size="medium",
        requests_per_minute=1_000_000,
        requests_per_day=100_000_000,
        media_bytes_per_hour=10**15,
        concurrency=concurrency,
        timeout_s=10,
    )
    inat.reset_counts()
    start = time.perf_counter()
    records = acquire_inaturalist(config, catalog, out_dir)
    seconds = time.perf_counter() - start
    requests = inat.count("api") + inat.count("photo")
    return {
        "concurrency": concurrency,
        "photos": len(records),
        "seconds": seconds,
        "photos_per_s": len(records) / seconds,
        "api_requests": inat.count("api"),
        "requests_per_s": requests / seconds,
        "mean_in_flight": inat.photo_busy_s / seconds,
        "peak_in_flight": inat.peak_photos_in_flight,
    }


def storm(args: argparse.Namespace) -> None:
    """Run at the configured API rate with a share of 429/500 answers; report what the server saw."""
    from mushroom.sources.inaturalist import acquisition_report

    pages = max(2, round(args.api_requests * (1 - args.fault_rate)))  # successful requests needed
    server = FakeINaturalist.with_taxa({TAXA[0]: pages}, photos_per_observation=1, max_per_page=1)
    catalog = Catalog([Species(TAXA[0], "Benchmark species", "Species", "edible")])
    with server as inat, tempfile.TemporaryDirectory() as tmp:
        config = INaturalistSourceConfig(
            api_url=inat.api_url,
            photos_per_species=pages,
            requests_per_minute=args.requests_per_minute,
            max_retries=10,
            backoff_factor=0.5,
            backoff_max=8,
            timeout_s=10,
        )
        inat.api_fault_rate(args.fault_rate, ("429", "500"), seed=1)
        start = time.monotonic()
        acquire_inaturalist(config, catalog, Path(tmp))
        seconds = time.monotonic() - start
        inat.wait_idle()
        card = acquisition_report(Path(tmp))["run"]
        api = sorted((r for r in inat.log if r.kind == "api"), key=lambda r: r.arrived)
    gaps = [b.arrived - a.time for a, b in zip(api, api[1:], strict=False) if a.status == 500]
    busiest = inat.max_in_window(60.0, "api")
    print(
        f"\nAPI rate limit under a 429/500 storm: requests_per_minute={args.requests_per_minute}, "
        f"fault rate {args.fault_rate:g}, {seconds:.0f} s"
    )
    print(
        f"API requests seen by the server: {len(api)} ({inat.count('api:429')} x 429, "
        f"{inat.count('api:500')} x 500, {inat.count('api:200')} x 200); the card counted {card['api_requests']}"
    )
    print(
        f"busiest 60 s window: {busiest} API requests (limit {args.requests_per_minute}): "
        f"{'within' if busiest <= args.requests_per_minute else 'ABOVE'} the limit"
    )
    if gaps:
        print(
            f"wait before the retry of a 500: min {min(gaps):.2f} s, median {sorted(gaps)[len(gaps) // 2]:.2f} s "
            f"(rate limiter and backoff together)"
        )


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.storm:
        storm(args)
        return
    per_species = -(-args.photos // len(TAXA))
    observations = {t: -(-per_species // 2) for t in TAXA}
    server = FakeINaturalist.with_taxa(
        observations,
        photos_per_observation=2,
        image_size=(args.image_size, args.image_size),
        photo_latency_s=args.latency_ms / 1000,
    )
    results = []
    with server as inat, tempfile.TemporaryDirectory() as tmp:
        for concurrency in (1, args.concurrency):
            results.append(run_once(inat, per_species, concurrency, Path(tmp) / f"c{concurrency}"))
    print(f"\n{args.photos} photos of {len(TAXA)} species, {args.latency_ms:g} ms server latency per photo")
    print(
        f"{'threads':>7} {'photos':>6} {'seconds':>7} {'photos/s':>8} {'requests/s':>10} {'API req':>7} "
        f"{'in flight (mean / peak)':>24}"
    )
    for r in results:
        print(
            f"{r['concurrency']:>7} {r['photos']:>6} {r['seconds']:>7.2f} {r['photos_per_s']:>8.1f} "
            f"{r['requests_per_s']:>10.1f} {r['api_requests']:>7} "
            f"{r['mean_in_flight']:>15.2f} / {r['peak_in_flight']:<6}"
        )
    serial, parallel = results
    speedup = parallel["photos_per_s"] / serial["photos_per_s"]
    print(
        f"speed-up with {parallel['concurrency']} threads: {speedup:.2f}x; mean photo requests in flight "
        f"{parallel['mean_in_flight']:.2f} of {parallel['concurrency']} configured"
    )


if __name__ == "__main__":
    main()
