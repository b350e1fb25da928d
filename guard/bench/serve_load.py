"""Load on `guard serve`: N concurrent clients against one served model, against N separate
processes that each load the model.

    python -m guard.bench.serve_load                                  # embedded model, 1 4 16
    python -m guard.bench.serve_load --clients 1 4 16 --requests 16 --separate 1 4 \\
        --model guard/models/hazardworld-small --out serve_load.json

Served: one `guard serve` process (the real command, on a free port) holds the model; for
each N, N client threads each send `--requests` checks (world scenes as PNG, one after the
other) to `POST /v1/check`. Separate: N `python -m guard.bench.serve_load --worker`
processes each load the model (`Guard`, as `guard check` does), wait until all have loaded,
then judge the same number of scenes each. Reported per row: checks per second (all checks
over the wall time from the first sent to the last answered), p50 and p99 latency per check,
how many got a decision with status ok, other statuses (timeouts, stale frames, overloaded:
each a veto), and lost (a request without a decision: must be 0). For the served rows the
server's audit log must hold one record per request (`audited`).

Frames are stamped on arrival, so a check that waits longer than the policy's
`max_frame_age_ms` for the model is a `stale_frame` veto: counted under "other".
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "models" / "hazardworld-small"


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))] if s else float("nan")


def scenes(n: int, seed: int = 11) -> list[dict[str, Any]]:
    """`n` world scenes as request bodies (PNG frames, the world's tool and phrase)."""
    from PIL import Image

    from guard.world import iter_episode

    out = []
    for step in iter_episode(seed=seed, steps=n, split="test_iid"):
        buf = io.BytesIO()
        Image.fromarray(step.frame).save(buf, "PNG")
        out.append({"action": step.action, "tool": step.item.action,
                    "images": [base64.b64encode(buf.getvalue()).decode()]})
    return out


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _row(mode: str, clients: int, results: list[tuple[float, str | None]], wall: float,
         **extra: Any) -> dict[str, Any]:
    lat = [ms for ms, status in results if status is not None]
    statuses = [status for _, status in results]
    return {
        "mode": mode, "clients": clients, "checks": len(results),
        "checks_per_s": round(len(results) / wall, 2) if wall > 0 else None,
        "p50_ms": round(_pct(lat, 0.5), 1), "p99_ms": round(_pct(lat, 0.99), 1),
        "ok": statuses.count("ok"),
        "other": sum(1 for s in statuses if s not in (None, "ok")),
        "lost": statuses.count(None),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses), key=str)},
        **extra,
    }


def run_served(model: str, clients: list[int], requests: int, bodies: list[dict[str, Any]],
               workdir: Path, max_batch: int) -> list[dict[str, Any]]:
    """Rows for one `guard serve` process and each client count."""
    import httpx

    port, audit = _free_port(), workdir / "serve-audit.jsonl"
    server = subprocess.Popen(
        [sys.executable, "-m", "guard.cli.main", "serve", "--model", model, "--port", str(port),
         "--audit", str(audit), "--max-batch", str(max_batch)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    rows = []
    try:
        t_start = time.monotonic()
        while True:
            if server.poll() is not None:
                err = server.stderr.read() if server.stderr else ""
                raise RuntimeError(f"guard serve exited: {err.strip()}")
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        ready_s = time.monotonic() - t_start
        sent = 0
        for n in clients:
            results: list[tuple[float, str | None]] = []
            lock = threading.Lock()

            def client(k: int, n: int = n, results: list[tuple[float, str | None]] = results,
                       lock: threading.Lock = lock) -> None:
                with httpx.Client(base_url=url, timeout=60) as http:
                    for i in range(requests):
                        body = bodies[(k * requests + i) % len(bodies)]
                        t0 = time.perf_counter()
                        try:
                            r = http.post("/v1/check", json=body)
                            status: str | None = r.json().get("status")
                        except Exception:
                            status = None  # no decision came back: lost
                        with lock:
                            results.append(((time.perf_counter() - t0) * 1000.0, status))

            threads = [threading.Thread(target=client, args=(k,)) for k in range(n)]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
            sent += n * requests
            batches = httpx.get(f"{url}/healthz").json().get("batches")
            rows.append(_row("served", n, results, wall, load_s=round(ready_s, 1),
                             batches_so_far=batches))
    finally:
        server.terminate()
        server.wait(timeout=60)
    records = len(audit.read_text().splitlines()) if audit.exists() else 0
    for row in rows:
        row["audited_total"] = f"{records}/{sent}"
    return rows


def run_separate(model: str, clients: list[int], requests: int, workdir: Path
                 ) -> list[dict[str, Any]]:
    """Rows for N processes that each load the model and judge alone."""
    rows = []
    for n in clients:
        go = workdir / f"go-{n}"
        procs = [subprocess.Popen(
            [sys.executable, "-m", "guard.bench.serve_load", "--worker", str(k),
             "--model", model, "--requests", str(requests), "--go", str(go),
             "--audit", str(workdir / f"sep-{n}-{k}.jsonl")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        ) for k in range(n)]
        ready = [workdir / f"go-{n}.ready{k}" for k in range(n)]
        t_start = time.monotonic()
        while not all(p.exists() for p in ready):
            if any(p.poll() is not None for p in procs):
                break
            time.sleep(0.05)
        load_s = time.monotonic() - t_start
        go.touch()  # every worker loaded: start judging together
        outs = [p.communicate(timeout=1800) for p in procs]
        results: list[tuple[float, str | None]] = []
        spans, rss = [], []
        for (out, err), p in zip(outs, procs, strict=True):
            if p.returncode != 0 or not out.strip():
                results.extend([(0.0, None)] * requests)
                print(f"worker failed: {err.strip().splitlines()[-1:]}", file=sys.stderr)
                continue
            rep = json.loads(out.strip().splitlines()[-1])
            results.extend((ms, st) for ms, st in rep["results"])
            spans.append((rep["t0"], rep["t1"]))
            rss.append(rep["rss_mb"])
        wall = (max(t1 for _, t1 in spans) - min(t0 for t0, _ in spans)) if spans else 0.0
        rows.append(_row("separate", n, results, wall, load_s=round(load_s, 1),
                         rss_mb_each=round(statistics.mean(rss), 0) if rss else None))
    return rows


def worker(args: argparse.Namespace) -> int:
    """One separate process: load, say ready, wait for go, judge, print timings as JSON."""
    import resource

    from guard.config import GuardConfig
    from guard.core import Guard
    from guard.serve.app import CheckBody, _frames

    config = GuardConfig().with_overrides(**{"model.id": args.model, "audit.path": args.audit})
    bodies = scenes(args.requests, seed=11 + args.worker)
    with Guard(config) as guard:
        Path(f"{args.go}.ready{args.worker}").touch()
        while not Path(args.go).exists():
            time.sleep(0.01)
        results = []
        t0 = time.time()
        for body in bodies:
            start = time.perf_counter()
            req = CheckBody.model_validate(body)
            frames = _frames(req.images, config)  # decoded as the server decodes them
            assert not isinstance(frames, str)
            d = guard.check(frames, req.proposal())
            results.append(((time.perf_counter() - start) * 1000.0, d.status.value))
        t1 = time.time()
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    print(json.dumps({"results": results, "t0": t0, "t1": t1, "rss_mb": rss}))
    return 0


def _table(rows: list[dict[str, Any]]) -> str:
    head = "| mode | clients | checks | checks/s | p50 ms | p99 ms | ok | other | lost |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['mode']} | {r['clients']} | {r['checks']} | {r['checks_per_s']} | "
                     f"{r['p50_ms']} | {r['p99_ms']} | {r['ok']} | {r['other']} | {r['lost']} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m guard.bench.serve_load",
                                description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default=str(DEFAULT_MODEL), help="judge model folder")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16],
                   help="concurrent clients against the server (default: 1 4 16)")
    p.add_argument("--separate", type=int, nargs="*", default=[1, 4],
                   help="separate-process counts to compare (default: 1 4; each loads the "
                   "model: memory and load time grow with N)")
    p.add_argument("--requests", type=int, default=16, help="checks per client (default: 16)")
    p.add_argument("--max-batch", type=int, default=16, help="guard serve --max-batch")
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--go", default=None, help=argparse.SUPPRESS)
    p.add_argument("--audit", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.worker is not None:
        return worker(args)
    bodies = scenes(max(64, args.requests))
    with tempfile.TemporaryDirectory(prefix="serve-load-") as tmp:
        rows = run_served(args.model, args.clients, args.requests, bodies, Path(tmp),
                          args.max_batch)
        if args.separate:
            rows += run_separate(args.model, args.separate, args.requests, Path(tmp))
    print(_table(rows))
    for r in rows:
        extra = {k: v for k, v in r.items() if k in ("load_s", "audited_total", "rss_mb_each",
                                                      "batches_so_far", "statuses")}
        print(f"{r['mode']} x{r['clients']}: {extra}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")
    return 1 if any(r["lost"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
