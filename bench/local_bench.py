"""Local stack: open->opened and ping->pong round trips, and how many concurrent real-time
sessions `audiohook serve` sustains on this machine.

`audiohook serve` (embedded moto + API Gateway emulator + the real handlers) runs in one
process, the Genesys-like load (`audiohook call --sessions N`) in another, so the two do not
share an interpreter. N steps up until a step fails: any protocol finding or error, or a
ping round trip p95 above the bound (the server no longer keeps up with real time).

Run: python bench/local_bench.py [--seconds 8] [--steps 5,10,20,40,80] [--rtt-bound-ms 500]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_serve(port: int) -> subprocess.Popen[str]:
    env = os.environ | {"POWERTOOLS_LOG_LEVEL": "ERROR", "LOG_LEVEL": "ERROR"}
    process = subprocess.Popen([str(BIN / "audiohook"), "serve", "--port", str(port)], cwd=REPO, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if "Ctrl-C" in line:
            return process
    raise RuntimeError("audiohook serve did not start")


def run_load(url: str, sessions: int, seconds: float) -> dict:
    from audiohook.local.embedded_aws import DEMO_API_KEY, DEMO_CLIENT_SECRET

    started = time.perf_counter()
    out = subprocess.run(
        [str(BIN / "audiohook"), "call", url, "--api-key", DEMO_API_KEY, "--client-secret", DEMO_CLIENT_SECRET,
         "--sessions", str(sessions), "--seconds", str(seconds), "--ping-interval", "1", "--json"],
        capture_output=True, text=True, cwd=REPO,
    )
    summary = json.loads(out.stdout)
    summary["wall_s"] = time.perf_counter() - started
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="audio per session at each step")
    parser.add_argument("--steps", default="5,10,20,40,80")
    parser.add_argument("--rtt-bound-ms", type=float, default=500.0)
    args = parser.parse_args()
    port = free_port()
    serve = start_serve(port)
    url = f"ws://127.0.0.1:{port}/prod"
    sustained = 0
    print(f"local stack at {url}; {args.seconds:.0f} s of stereo PCMU per session, 200 ms frames, ping every 1 s")
    print(f"{'sessions':>8} {'ok':>5} {'open->opened p50/p95 ms':>25} {'ping rtt p50/p95/max ms':>26} {'verdict':>10}")
    try:
        for sessions in (int(step) for step in args.steps.split(",")):
            summary = run_load(url, sessions, args.seconds)
            opened, rtt = summary["open_to_opened_ms"], summary["ping_rtt_ms"]
            healthy = (summary["failed"] == 0 and rtt["p95"] is not None and rtt["p95"] <= args.rtt_bound_ms)
            print(f"{sessions:>8} {summary['passed']:>5} {opened['p50']:>12.0f} / {opened['p95']:<10.0f}"
                  f" {rtt['p50']:>9.0f} / {rtt['p95']:.0f} / {rtt['max']:<8.0f} {'sustained' if healthy else 'FAILS':>10}")
            for finding in summary["findings"][:3]:
                print(f"{'':>10}{finding['sessions']} x {finding['message']}")
            if not healthy:
                break
            sustained = sessions
    finally:
        serve.send_signal(signal.SIGINT)
        serve.wait(timeout=30)
    print(f"\nmaximum concurrent real-time sessions sustained by the local stack: {sustained}"
          f" (next step failed or steps exhausted; bound: p95 ping rtt <= {args.rtt_bound_ms:.0f} ms, zero findings)")


if __name__ == "__main__":
    main()
