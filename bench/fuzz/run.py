"""Run the fuzz targets (`bench/fuzz/targets.py`) with atheris, each in its own process.

    .venv/bin/python bench/fuzz/run.py --seconds 600            # every target, 10 min each
    .venv/bin/python bench/fuzz/run.py --seconds 60 bgp_session # one target

Corpora live in ~/.cache/openelb-fuzz/<target> (seeded from the codecs' encodings, grown by each
run); a crash is written there as crash-<hash> with the input that caused it, and this exits 1.
CI runs every target for a few seconds on its seeds (`tests/unit/test_fuzz_smoke.py`).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = Path(os.environ.get("OPENELB_FUZZ_CORPUS", Path.home() / ".cache" / "openelb-fuzz"))


def child(target: str, seconds: float, corpus: Path) -> None:
    import atheris  # noqa: PLC0415 - only in the fuzzing child

    sys.path.insert(0, str(HERE))
    with atheris.instrument_imports():
        import targets  # noqa: PLC0415 - instrumented on purpose
    fn = targets.TARGETS[target]
    argv = [sys.argv[0], str(corpus), f"-max_total_time={int(max(1, seconds))}", f"-artifact_prefix={corpus}/crash-",
            "-print_final_stats=1", "-rss_limit_mb=1024", "-max_len=4096"]  # fmt: skip
    atheris.Setup(argv, fn)
    atheris.Fuzz()


def seed(target: str) -> Path:
    sys.path.insert(0, str(HERE))
    import targets  # noqa: PLC0415

    d = CORPUS / target
    d.mkdir(parents=True, exist_ok=True)
    for data in targets.seeds(target):
        (d / f"seed-{hashlib.sha256(data).hexdigest()[:12]}").write_bytes(data)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("targets", nargs="*", help="default: all")
    ap.add_argument("--seconds", type=float, default=60.0, help="per target")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.seconds, CORPUS / args.child)
        return 0
    sys.path.insert(0, str(HERE))
    import targets  # noqa: PLC0415

    names = args.targets or list(targets.TARGETS)
    failed = []
    t0 = time.monotonic()
    for i, name in enumerate(names, 1):
        corpus = seed(name)
        print(
            f"[fuzz +{time.monotonic() - t0:5.0f}s] {i}/{len(names)} {name}: {args.seconds:.0f} s on {corpus}",
            flush=True,
        )
        out = subprocess.run(
            [sys.executable, __file__, "--child", name, "--seconds", str(args.seconds)],
            capture_output=True, text=True, timeout=args.seconds * 3 + 60, check=False,
        )  # fmt: skip
        stats = [line for line in out.stderr.splitlines() if line.startswith(("stat::number_of_executed_units", "#"))]
        execs = next((line.split(":")[-1].strip() for line in stats if "executed_units" in line), "?")
        if out.returncode != 0:
            failed.append(name)
            tail = "\n".join(out.stderr.splitlines()[-25:])
            print(
                f"  FOUND a failure in {name} (exit {out.returncode}); input saved under {corpus}:\n{tail}", flush=True
            )
        else:
            print(f"  ok: {execs} inputs", flush=True)
    print(
        f"[fuzz] {len(names) - len(failed)}/{len(names)} targets clean"
        + (f"; failing: {', '.join(failed)}" if failed else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
