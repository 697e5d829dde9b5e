"""Times the bindings from Python beside the Rust API in the same run: a durable
`note add`, and listing the latest 50 of 10,000 notes.

    CARE_PROFILE=release bindings/generate target/bindings
    CARE_BINDINGS_DIR=target/bindings/python python3 bindings/python/bench.py

It runs `cargo bench -p care-bindings --bench native` for the Rust figures first.
"""

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.abspath(os.environ.get("CARE_BINDINGS_DIR", "target/bindings/python")))
from care_bindings import CareHome, NewNote  # noqa: E402

ADDS = 200
NOTES = 10_000
LISTS = 50


def percentile(times, p):
    times = sorted(times)
    return times[min(len(times) * p // 100, len(times) - 1)] * 1e3


async def bindings_figures(dir):
    home = await CareHome.open(dir, "Rosa")
    team = await home.create_team("Rosa's team")
    adds = []
    for i in range(2 * ADDS):
        started = time.perf_counter()
        await home.add_note(team, NewNote(text=f"Visit {i}: tea, toast and a walk."))
        if i >= ADDS:
            adds.append(time.perf_counter() - started)
    for i in range(2 * ADDS, NOTES):
        await home.add_note(team, NewNote(text=f"Visit {i}: tea, toast and a walk."))
    lists = []
    for _ in range(LISTS + 5):
        started = time.perf_counter()
        latest = await home.notes(team, limit=50)
        lists.append(time.perf_counter() - started)
        assert len(latest) == 50
    await home.close()
    return {
        "note_add_p50_ms": percentile(adds, 50),
        "note_add_p95_ms": percentile(adds, 95),
        "list_50_p50_ms": percentile(lists[5:], 50),
    }


def rust_figures():
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..")
    run = subprocess.run(
        ["cargo", "bench", "--locked", "-p", "care-bindings", "--bench", "native"],
        cwd=root, check=True, capture_output=True, text=True,
    )
    return json.loads(run.stdout.strip().splitlines()[-1])


def main():
    rust = rust_figures()
    with tempfile.TemporaryDirectory() as dir:
        python = asyncio.run(bindings_figures(dir))
    rows = [
        ("note add, durable, p50 (ms)", "posted_note_add_p50_ms", "note_add_p50_ms"),
        ("note add, durable, p95 (ms)", "posted_note_add_p95_ms", "note_add_p95_ms"),
        (f"latest 50 of {NOTES} notes, p50 (ms)", None, "list_50_p50_ms"),
    ]
    print(f"{'':36} {'Rust, direct':>14} {'Rust, async':>12} {'Python':>10}")
    for label, posted, key in rows:
        async_rust = f"{rust[posted]:12.3f}" if posted else f"{'-':>12}"
        print(f"{label:36} {rust[key]:14.3f} {async_rust} {python[key]:10.3f}")
    print("(Rust, async: posted to the home's owner thread and awaited, as an async app does)")
    add_gap = python["note_add_p50_ms"] - rust["posted_note_add_p50_ms"]
    add_gap_direct = python["note_add_p50_ms"] - rust["note_add_p50_ms"]
    list_ratio = python["list_50_p50_ms"] / rust["list_50_p50_ms"]
    print(
        f"note add: Python is {add_gap:+.3f} ms from async Rust, {add_gap_direct:+.3f} ms from "
        "a direct call (target: within 0.2 ms)"
    )
    print(f"listing: Python takes {list_ratio:.2f}x Rust's time (target: within 1.3x)")


if __name__ == "__main__":
    main()
