"""Profile a real ``ms07 run`` with py-spy: a drain and a paced run, flame graphs out.

    python -m bench.profile [-n 20000] [-c 64] [--rate 1000] [--seconds 10] [--format flamegraph|raw]
                            [--out docs/benchmarks]

py-spy (``pip install py-spy``) attaches to the engine once it has started delivering
(``record --pid --nonblocking``, 200 samples/s, idle frames left out) and stops when the
sink has seen every delivery: ``profile-drain.svg`` is N queued distributions drained,
``profile-paced.svg`` the same warm engine taking distributions submitted at ``--rate``/s.
``--format raw`` writes collapsed stacks (``.txt``) instead and prints the top frames by
own and by total samples. CPU per delivery (psutil) is printed for both parts.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import signal
import subprocess
import tempfile
from pathlib import Path

from bench import common
from bench.throughput import _paced_library_submit


def _spy(pid: int, out: Path, fmt: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - py-spy from this environment, our engine's pid
        ["py-spy", "record", "--pid", str(pid), "-r", "200", "--nonblocking", "--format", fmt, "-o", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def _stop(spy: subprocess.Popen[bytes]) -> None:
    spy.send_signal(signal.SIGINT)
    try:
        spy.wait(60)
    except subprocess.TimeoutExpired:
        spy.kill()


def top(raw: Path, k: int = 25) -> str:
    """The frames with the most samples, own (leaf) and total (anywhere on the stack)."""
    own: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    samples = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        samples += n
        own[frames[-1]] += n
        for f in set(frames):
            total[f] += n
    lines = [f"{samples} samples", "own:"]
    lines += [f"  {c / samples:6.1%}  {f}" for f, c in own.most_common(k)]
    lines += ["total:"]
    lines += [f"  {c / samples:6.1%}  {f}" for f, c in total.most_common(k)]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", type=int, default=20_000)
    p.add_argument("-c", "--concurrency", type=int, default=64)
    p.add_argument("--rate", type=float, default=1000.0)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--format", choices=("flamegraph", "raw"), default="flamegraph")
    p.add_argument("--out", type=Path, default=common.ROOT / "docs" / "benchmarks")
    a = p.parse_args()
    ext = "svg" if a.format == "flamegraph" else "txt"
    a.out.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="ms07-profile-"))
    with common.sink_process() as (sink_port, _), common.servers() as srv:
        config = common.write_config(tmp / "config.yaml", sink_port, a.concurrency)
        from ms07.config import load_settings

        settings = load_settings(config, environ={}, database_url=srv.database_url, redis_url=srv.redis_url)
        common.reset_state(srv)
        common.sink_reset(sink_port)
        asyncio.run(common.fill(settings, a.n))
        engine = common.start_engine(config, srv, common.free_port(), log=tmp / "engine.log", wait=False)
        watch = common.ProcessWatch(engine.pid)
        try:
            common.wait_delivered(sink_port, 1, None, timeout=60, poll=0.005)
            spy = _spy(engine.pid, a.out / f"profile-drain.{ext}", a.format)
            d = common.wait_delivered(sink_port, a.n, watch, timeout=300)
            _stop(spy)
            print(f"drain: {d.rate:,.0f}/s, engine CPU {d.cpu_seconds / a.n * 1000:.3f} s / 1k")
            common.sink_reset(sink_port)
            n = int(a.rate * a.seconds)
            spy = _spy(engine.pid, a.out / f"profile-paced.{ext}", a.format)
            c0 = watch.cpu_seconds()
            asyncio.run(_paced_library_submit(settings, n, a.rate))
            common.wait_delivered(sink_port, n, None, timeout=120)
            c1 = watch.cpu_seconds()
            _stop(spy)
            print(f"paced at {a.rate:,.0f}/s: engine CPU {(c1 - c0) / n * 1000:.3f} s / 1k")
        finally:
            engine.send_signal(signal.SIGTERM)
            engine.wait(60)
            watch.stop()
    if a.format == "raw":
        for part in ("drain", "paced"):
            print(f"\n== {part}\n" + top(a.out / f"profile-{part}.txt"))


if __name__ == "__main__":
    main()
