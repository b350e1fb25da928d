"""`guard serve`: one process holds the model and answers many clients.

The core's batch entry (`Guard.judge_batch`) gives each item exactly `Guard.check`'s decision;
a real uvicorn server on a free port answers health, readiness and `POST /v1/check` with the
decision `guard check` prints; a full queue is a fast audited veto; a client whose server is
down or late gets a veto, never an allow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from guard.audit import verify
from guard.backends import JudgeOutput, JudgeRequest, model_options
from guard.backends.scripted import ScriptedBackend, ScriptedModelConfig, ScriptedOptions
from guard.config import GuardConfig
from guard.core import BatchItem, Guard
from guard.types import Decision, Frame, Status, Verdict

#: Decision fields that differ between any two checks (identity and timing).
_PER_CHECK = {"id", "latency_ms"}


def _same(a: Decision, b: Decision) -> dict[str, Any]:
    """The fields of two decisions that differ (risk compared to 1e-5: a batch's logits)."""
    da, db = a.model_dump(mode="json"), b.model_dump(mode="json")
    diff = {k: (da[k], db.get(k)) for k in da if k not in _PER_CHECK and da[k] != db.get(k)}
    if "risk" in diff and abs(da["risk"] - db["risk"]) <= 1e-5:
        del diff["risk"]
    return diff


def _frame(seed: int, size: tuple[int, int] = (64, 48), stamp: float | None = None) -> Frame:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Frame(image=image, stamp=time.time() if stamp is None else stamp, source=f"f{seed}")


class BatchingScripted(ScriptedBackend):
    """The scripted judge with a batch path that records each batch it was given."""

    def __init__(self, options: ScriptedOptions) -> None:
        super().__init__(options)
        self.batches: list[list[JudgeRequest]] = []

    def judge_batch(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
        self.batches.append(list(requests))
        return [self.judge(r) for r in requests]


# -- the core's batch entry ------------------------------------------------------------------


def _mixed_items() -> list[BatchItem]:
    """One of each way a check can end: judged, ruled, invalid, stale, no frame."""
    items = [
        BatchItem(_frame(1), {"name": "stove_on", "description": "turn on the stove"}),
        BatchItem(_frame(2), {"name": "tap_on", "description": "turn on the tap"}),
        BatchItem(_frame(3), {"name": "self_destruct", "description": "blow up"}),  # rule
        BatchItem(_frame(4), {"name": " ", "description": "x"}),  # blank tool name
        BatchItem(_frame(5, stamp=time.time() - 60), {"name": "tap_on"}),  # stale frame
        BatchItem(None, {"name": "tap_on", "description": "no camera"}),
        BatchItem(_frame(6), {"name": "knife", "description": "hand over the knife"}),
    ]
    return [BatchItem(i.frames, {**dict(i.proposal), "id": f"p{k}"})
            for k, i in enumerate(items)]


def _script(config: GuardConfig) -> ScriptedOptions:
    return model_options(config, ScriptedModelConfig).scripted


def _scripted_config(audit_path: Path) -> GuardConfig:
    return GuardConfig().with_overrides(**{
        "audit.path": str(audit_path),
        "model.backend": "scripted",
        "model.scripted.by_action": {
            "stove": {"text": "VETO\nrisk: 0.9\nhazard: fire | towel | burns | 0.9"},
            "knife": {"text": "ANNOTATE\nrisk: 0.4"},
            "tap": {"text": "ALLOW\nrisk: 0.0"},
        },
        "policy.rules": [{"name": "no-self-destruct", "match": {"tool": "self_destruct"},
                          "verdict": "veto", "reason": "never"}],
    })


@pytest.mark.parametrize("batch_path", [True, False], ids=["batch-path", "one-by-one"])
def test_a_batch_decides_as_single_checks(tmp_path: Path, batch_path: bool) -> None:
    config = _scripted_config(tmp_path / "audit.jsonl")
    batching = BatchingScripted(_script(config))
    backend = batching if batch_path else ScriptedBackend(_script(config))
    items, now = _mixed_items(), time.time()  # one clock reading: the stale frame's age
    with Guard(config, backend=backend) as guard:
        batch = guard.judge_batch(items, now=now)
        singles = [guard.judge(i.frames, i.proposal, now=now) for i in items]
    for b, s in zip(batch, singles, strict=True):
        assert _same(b.decision, s.decision) == {}
        assert b.prompt == s.prompt and b.answer == s.answer
    statuses = [j.decision.status for j in batch]
    assert statuses == [Status.OK, Status.OK, Status.OK, Status.INVALID_INPUT,
                        Status.STALE_FRAME, Status.NO_FRAME, Status.OK]
    assert [j.decision.verdict for j in batch][:3] == [Verdict.VETO, Verdict.ALLOW, Verdict.VETO]
    if batch_path:  # the three that reached the model went as one batch
        assert [len(b) for b in batching.batches] == [3]
    records = [json.loads(line) for line in (tmp_path / "audit.jsonl").read_text().splitlines()]
    assert len(records) == 2 * len(items)  # every decision audited, batch and single alike
    assert verify(tmp_path / "audit.jsonl").ok


def test_each_row_of_a_batch_keeps_its_own_deadline(tmp_path: Path) -> None:
    """A hurried row times out; the rows of the same batch with time left keep their answers."""
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "audit.jsonl"), "model.backend": "scripted",
        "model.scripted.responses": [{"text": "ALLOW\nrisk: 0.0", "delay_ms": 150}],
    })
    backend = BatchingScripted(_script(config))
    with Guard(config, backend=backend) as guard:
        hurried, relaxed = guard.judge_batch([
            BatchItem(_frame(1), {"name": "a"}, deadline_ms=50),
            BatchItem(_frame(2), {"name": "b"}),
        ])
        # A deadline that is not a positive number is the caller's bad input.
        bad = guard.check_batch([BatchItem(_frame(3), {"name": "c"}, deadline_ms=-1),
                                 BatchItem(_frame(4), {"name": "d"}, deadline_ms=float("nan"))])
    assert hurried.decision.status is Status.TIMEOUT and hurried.decision.verdict is Verdict.VETO
    assert "deadline_ms (50;" in (hurried.decision.error or "")
    assert relaxed.decision.status is Status.OK and relaxed.decision.verdict is Verdict.ALLOW
    assert [d.status for d in bad] == [Status.INVALID_INPUT] * 2
    assert "deadline_ms = -1" in (bad[0].error or "")


def test_a_failing_batch_path_is_a_veto_for_every_row(tmp_path: Path) -> None:
    class Broken(BatchingScripted):
        def judge_batch(self, requests: list[JudgeRequest]) -> list[JudgeOutput]:
            return [JudgeOutput(text="ALLOW")]  # one answer for several requests

    config = GuardConfig().with_overrides(**{"audit.path": str(tmp_path / "audit.jsonl"),
                                             "model.backend": "scripted"})
    with Guard(config, backend=Broken(ScriptedOptions())) as guard:
        decisions = guard.check_batch([BatchItem(_frame(i), {"name": "x"}) for i in range(3)])
    assert all(d.status is Status.ERROR and d.verdict is Verdict.VETO for d in decisions)
    assert "for 3 requests" in (decisions[0].error or "")


def _steps(n: int) -> list[Any]:
    pytest.importorskip("cv2")
    from guard.world import iter_episode

    return list(iter_episode(seed=3, steps=n, split="test_iid"))


@pytest.fixture(scope="module")
def rigged_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Qwen2.5-VL edited to answer a verdict word first (in format)."""
    pytest.importorskip("transformers")
    from guard.bench.verdict_rig import rig_folder
    from guard.tiny import build_tiny_model

    tiny = build_tiny_model("qwen2_5_vl", tmp_path_factory.mktemp("tiny"), seed=0)
    return rig_folder(tiny, tmp_path_factory.mktemp("rigged"))


def _embedded() -> Path:
    from guard.cli.demo import default_model

    model = default_model()
    if model is None:
        pytest.skip("the embedded model is not in this install")
    return model


@pytest.mark.parametrize("which", ["tiny-qwen2_5_vl", "hazardworld-small"])
def test_a_batch_on_a_real_model_decides_as_single_checks(
    tmp_path: Path, rigged_dir: Path, which: str
) -> None:
    """N items in one `judge_batch` (one call of the engine's batch path) give the decisions
    of N `Guard.check` calls: same verdict, status, risk, hazards, prompt and answer."""
    pytest.importorskip("transformers")
    model = str(rigged_dir if which.startswith("tiny") else _embedded())
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "audit.jsonl"), "model.id": model,
        "policy.deadline_ms": 60_000,
    })
    steps = _steps(6)
    with Guard(config) as guard:
        now = time.time()
        items = [BatchItem(Frame(image=s.frame, stamp=now, source=f"step{k}"),
                           {"name": s.item.action, "description": s.action, "id": f"p{k}"})
                 for k, s in enumerate(steps)]
        calls: list[int] = []
        batch_path = guard.backend.judge_batch  # type: ignore[attr-defined]

        def counted(requests: list[JudgeRequest]) -> list[JudgeOutput]:
            calls.append(len(requests))
            out: list[JudgeOutput] = batch_path(requests)
            return out

        guard.backend.judge_batch = counted  # type: ignore[attr-defined]
        batch = guard.judge_batch(items, now=now)
        singles = [guard.judge(i.frames, i.proposal, now=now) for i in items]
    assert calls == [len(items)]
    for b, s in zip(batch, singles, strict=True):
        assert _same(b.decision, s.decision) == {}
        assert (b.prompt, b.answer, b.judged_sizes) == (s.prompt, s.answer, s.judged_sizes)
    assert all(j.decision.status is Status.OK for j in batch), [j.decision.error for j in batch]
    assert verify(tmp_path / "audit.jsonl").ok


# -- the server ------------------------------------------------------------------------------

uvicorn = pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

import base64  # noqa: E402
import io  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import threading  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from guard.serve import ServeOptions, create_app  # noqa: E402


class Server:
    """`create_app` under a real uvicorn on a free port, in a thread."""

    def __init__(self, config: GuardConfig, options: ServeOptions | None = None,
                 factory: Callable[[], Guard] | None = None) -> None:
        app = create_app(config, options, factory=factory)
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0,
                                                    log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        for _ in range(500):
            if self.server.started:
                break
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    def wait_ready(self, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        while httpx.get(f"{self.url}/healthz").status_code != 200:
            assert time.monotonic() < end, "the server never became ready"
            time.sleep(0.05)

    def check(self, body: Any, **kw: Any) -> Any:
        return httpx.post(f"{self.url}/v1/check", json=body, timeout=30, **kw)

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _png(seed: int = 0, size: tuple[int, int] = (64, 48)) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def scripted(tmp_path: Path) -> GuardConfig:
    return _scripted_config(tmp_path / "audit.jsonl")


def test_probes_say_loading_then_ready(scripted: GuardConfig) -> None:
    release = threading.Event()

    def slow_load() -> Guard:
        release.wait(30)
        return Guard(scripted)

    with Server(scripted, factory=slow_load) as srv:
        assert httpx.get(f"{srv.url}/livez").status_code == 200
        loading = httpx.get(f"{srv.url}/healthz")
        assert (loading.status_code, loading.json()) == (503, {"status": "loading"})
        assert httpx.get(f"{srv.url}/readyz").status_code == 503
        early = srv.check({"action": "turn on the tap", "images": [_b64(_png())]})
        assert early.status_code == 503
        assert early.json()["verdict"] == "veto" and early.json()["status"] == "error"
        assert "not ready" in early.json()["error"]
        release.set()
        srv.wait_ready()
        ready = httpx.get(f"{srv.url}/healthz").json()
        assert ready["status"] == "ready" and ready["model"] == "scripted"
        assert srv.check({"action": "turn on the tap", "images": [_b64(_png())]}).json()[
            "verdict"] == "allow"
    assert len(_records(Path(scripted.audit.path))) == 2  # the early veto is audited too
    assert verify(scripted.audit.path).ok


def test_a_model_that_does_not_load_is_reported(scripted: GuardConfig) -> None:
    def broken() -> Guard:
        raise RuntimeError("no weights here\nsecond line")

    with Server(scripted, factory=broken) as srv:
        for _ in range(200):
            health = httpx.get(f"{srv.url}/healthz")
            if health.json()["status"] != "loading":
                break
            time.sleep(0.02)
        assert health.status_code == 503
        assert health.json() == {"status": "failed",
                                 "error": "model did not load: no weights here"}
        assert srv.check({"action": "x"}).json()["status"] == "error"


def _guard_check(config_path: Path, image: Path, action: str, *extra: str) -> dict[str, Any]:
    """`guard check`'s printed decision (its `main`, in this process: one import of torch)."""
    import contextlib

    from guard.cli.main import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(["check", "--config", str(config_path), "--image", str(image),
                     "--action", action, *extra])
    assert code in (0, 3)
    decision: dict[str, Any] = json.loads(out.getvalue())
    return decision


#: Fields that differ between two runs of one check (identity, timing, arrival time).
_PER_RUN = {"id", "latency_ms", "frame_stamp", "frame_stamp_ns", "proposal_id"}


@pytest.mark.parametrize("which", ["scripted", "tiny-qwen2_5_vl"])
def test_a_check_over_http_prints_what_guard_check_prints(
    tmp_path: Path, request: pytest.FixtureRequest, which: str
) -> None:
    import yaml

    config = _scripted_config(tmp_path / "audit.jsonl")
    if which != "scripted":
        rigged = request.getfixturevalue("rigged_dir")
        config = GuardConfig().with_overrides(**{
            "audit.path": str(tmp_path / "audit.jsonl"), "model.id": str(rigged),
            "model.max_new_tokens": 16, "policy.deadline_ms": 60_000})
    config_path = tmp_path / "guard.yaml"
    config_path.write_text(yaml.safe_dump(config.model_dump(mode="json")))
    image = tmp_path / "frame.png"
    image.write_bytes(_png(7))
    cases = [("turn on the stove", "stove_on", {"burner": 2}),
             ("turn on the tap", "tap_on", {}),
             ("blow up", "self_destruct", {})]
    with Server(config) as srv:
        srv.wait_ready()
        for action, tool, arguments in cases:
            served = srv.check({"action": action, "tool": tool, "arguments": arguments,
                                "images": [_b64(image.read_bytes())]})
            assert served.status_code == 200
            printed = _guard_check(config_path, image, action, "--tool", tool,
                                   "--arguments", json.dumps(arguments))
            got = {k: v for k, v in served.json().items() if k not in _PER_RUN}
            want = {k: v for k, v in printed.items() if k not in _PER_RUN}
            assert got == want
    assert verify(config.audit.path).ok


def test_the_bearer_token_is_required(scripted: GuardConfig) -> None:
    body = {"action": "turn on the tap", "images": [_b64(_png())]}
    with Server(scripted, ServeOptions(token="s3cret-token")) as srv:
        srv.wait_ready()  # probes need no token
        missing = srv.check(body)
        assert missing.status_code == 401 and missing.headers["www-authenticate"] == "Bearer"
        assert srv.check(body, headers={"Authorization": "Bearer s3cret"}).status_code == 401
        assert srv.check(body, headers={"Authorization": "Basic s3cret-token"}).status_code == 401
        ok = srv.check(body, headers={"Authorization": "Bearer s3cret-token"})
        assert ok.status_code == 200 and ok.json()["verdict"] == "allow"
    assert len(_records(Path(scripted.audit.path))) == 1  # a refused caller proposed nothing


def test_malformed_requests_get_one_clear_line(scripted: GuardConfig) -> None:
    with Server(scripted, ServeOptions(max_body_bytes=4096)) as srv:
        srv.wait_ready()
        url = f"{srv.url}/v1/check"
        cases = [
            (httpx.post(url, content=b"{not json"), 400, "request body is not JSON"),
            (httpx.post(url, json=[1, 2]), 400, "must be a JSON object, got list"),
            (httpx.post(url, json={"tool": "x"}), 422, "action: Field required"),
            (httpx.post(url, json={"action": "x", "arguments": [1]}), 422, "arguments:"),
            (httpx.post(url, json={"action": "x", "images": "abc"}), 422, "images:"),
            (httpx.post(url, json={"action": "x", "camera": 1}), 422, "camera: unknown field"),
            (httpx.post(url, json={"action": "x", "deadline_ms": -5}), 422, "deadline_ms:"),
            (httpx.post(url, json={"action": "x" * 5000}), 413, "over the 4096 byte limit"),
            (httpx.post(url, content=iter([b"{" * 3000, b"[" * 3000])), 413, "over the"),
        ]
        for response, status, text in cases:
            assert response.status_code == status, response.text
            error = response.json()["error"]
            assert text in error and "\n" not in error
    assert _records(Path(scripted.audit.path)) == []  # nothing was proposed, nothing judged


def test_a_bad_image_is_an_audited_invalid_input_veto(scripted: GuardConfig) -> None:
    with Server(scripted) as srv:
        srv.wait_ready()
        bad = [
            ("not base64 at all!", "images[0]: not valid base64"),
            (_b64(b"\x89PNG\r\n\x1a\n but then garbage"), "images[0]"),
            (_b64(b""), "images[0]: image is empty"),
        ]
        for image, text in bad:
            out = srv.check({"action": "turn on the tap", "images": [image]})
            assert out.status_code == 200
            d = out.json()
            assert (d["verdict"], d["status"]) == ("veto", "invalid_input")
            assert text in d["error"]
        # A data URL is a base64 image like any other.
        url = "data:image/png;base64," + _b64(_png())
        assert srv.check({"action": "turn on the tap", "images": [url]}).json()[
            "verdict"] == "allow"
    records = _records(Path(scripted.audit.path))
    assert [r["decision"]["status"] for r in records] == (
        ["invalid_input"] * 3 + ["ok"])


def test_a_full_queue_is_a_fast_audited_veto(tmp_path: Path) -> None:
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "audit.jsonl"), "model.backend": "scripted",
        "model.scripted.responses": [{"text": "ALLOW\nrisk: 0.0", "delay_ms": 1500}],
        "policy.max_frame_age_ms": 10_000,  # a frame stamped on arrival ages while it waits
    })
    body = {"action": "turn on the tap", "images": [_b64(_png())]}
    with (Server(config, ServeOptions(queue_size=1, max_batch=1)) as srv,
          httpx.Client(base_url=srv.url, timeout=30) as client):
        srv.wait_ready()

        def one(_: int) -> tuple[int, dict[str, Any], float]:
            t0 = time.monotonic()
            r = client.post("/v1/check", json=body)
            return r.status_code, r.json(), time.monotonic() - t0

        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(one, range(6)))
    judged = [r for r in results if r[0] == 200]
    refused = [r for r in results if r[0] == 503]
    assert len(judged) + len(refused) == 6 and refused and judged  # no request hangs or is lost
    for _, d, seconds in refused:
        assert (d["verdict"], d["status"]) == ("veto", "error")
        assert d["error"].startswith("overloaded:")
        assert seconds < 0.75  # at once, not after the model's 1.5 s
    assert all(d["verdict"] == "allow" and s >= 1.4 for _, d, s in judged), judged
    records = _records(tmp_path / "audit.jsonl")
    assert len(records) == 6 and verify(tmp_path / "audit.jsonl").ok


def test_waiting_requests_are_judged_in_one_batch(tmp_path: Path) -> None:
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "audit.jsonl"), "model.backend": "scripted",
        "model.scripted.responses": [{"text": "ALLOW\nrisk: 0.0", "delay_ms": 300}],
    })
    backend = BatchingScripted(_script(config))
    with Server(config, factory=lambda: Guard(config, backend=backend)) as srv:
        srv.wait_ready()
        body = {"action": "turn on the tap", "images": [_b64(_png())]}
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda _: srv.check(body), range(8)))
    assert all(r.status_code == 200 and r.json()["verdict"] == "allow" for r in results)
    # Those that waited together went together (a lone request goes straight to `judge`).
    assert len(backend.requests) == 8 and max(len(b) for b in backend.batches) > 1


def test_a_request_deadline_counts_its_wait(tmp_path: Path) -> None:
    """A request that waits behind a slow batch past its own deadline is a timeout veto,
    answered at its deadline, not when the model frees up."""
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "audit.jsonl"), "model.backend": "scripted",
        "model.scripted.responses": [{"text": "ALLOW\nrisk: 0.0", "delay_ms": 800}],
    })
    body = {"action": "turn on the tap", "images": [_b64(_png())]}
    with Server(config, ServeOptions(max_batch=1)) as srv:
        srv.wait_ready()
        with ThreadPoolExecutor(2) as pool:
            slow = pool.submit(srv.check, body)
            time.sleep(0.1)
            t0 = time.monotonic()
            hurried = pool.submit(srv.check, {**body, "deadline_ms": 200}).result()
            waited = time.monotonic() - t0
        assert slow.result().json()["verdict"] == "allow"
    d = hurried.json()
    assert (d["verdict"], d["status"]) == ("veto", "timeout") and "200" in d["error"]
    assert waited < 0.6
    assert len(_records(tmp_path / "audit.jsonl")) == 2


def test_guard_serve_command(tmp_path: Path) -> None:
    """The CLI: serves on the port it is given, answers, exits 0 on Ctrl-C; a bad flag is 2."""
    import signal
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = tmp_path / "token"
    token.write_text("tok-123\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "guard.cli.main", "serve", "--backend", "scripted",
         "--port", str(port), "--token-file", str(token), "--audit", str(tmp_path / "a.jsonl")],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        end = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < end and proc.poll() is None
            time.sleep(0.1)
        r = httpx.post(f"{url}/v1/check", headers={"Authorization": "Bearer tok-123"},
                       json={"action": "turn on the tap", "images": [_b64(_png())]})
        assert r.status_code == 200 and r.json()["verdict"] == "allow"
    finally:
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    bad = subprocess.run([sys.executable, "-m", "guard.cli.main", "serve", "--port", "70000"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "--port 70000: must be 0..65535" in bad.stderr


@pytest.fixture
def _unused() -> Iterator[None]:
    yield


def _cli(*argv: str) -> tuple[int, dict[str, Any], str]:
    """`guard ...` in this process: exit code, the decision printed, stderr."""
    import contextlib

    from guard.cli.main import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, json.loads(out.getvalue()) if out.getvalue() else {}, err.getvalue()


def test_guard_check_server_prints_the_servers_decision(scripted: GuardConfig,
                                                        tmp_path: Path) -> None:
    image = tmp_path / "frame.png"
    image.write_bytes(_png(3))
    local = tmp_path / "client-audit.jsonl"
    with Server(scripted, ServeOptions(token="tok")) as srv:
        srv.wait_ready()
        token = tmp_path / "token"
        token.write_text("tok")
        code, decision, _ = _cli("check", "--server", srv.url, "--token-file", str(token),
                                 "--image", str(image), "--action", "turn on the stove",
                                 "--tool", "stove_on", "--audit", str(local))
        assert code == 3 and (decision["verdict"], decision["status"]) == ("veto", "ok")
        assert decision["hazards"][0]["category"] == "fire"
        code, decision, _ = _cli("check", "--server", srv.url, "--token-file", str(token),
                                 "--image", str(image), "--action", "turn on the tap")
        assert code == 0 and decision["verdict"] == "allow"
        # The server decided and audited both; nothing failed on this side.
        served = [r["decision"]["id"] for r in _records(Path(scripted.audit.path))]
        assert decision["id"] in served and len(served) == 2
        assert not local.exists() or _records(local) == []
        # A wrong token brings no decision back: a veto audited here.
        token.write_text("wrong")
        code, decision, err = _cli("check", "--server", srv.url, "--token-file", str(token),
                                   "--image", str(image), "--action", "turn on the tap",
                                   "--audit", str(local))
        assert code == 3 and (decision["verdict"], decision["status"]) == ("veto", "error")
        assert "HTTP 401" in decision["error"] and "HTTP 401" in err
    assert [r["decision"]["status"] for r in _records(local)] == ["error"]
    assert verify(local).ok


def test_a_server_down_or_late_is_a_veto(tmp_path: Path) -> None:
    import socket

    image = tmp_path / "frame.png"
    image.write_bytes(_png(3))
    local = tmp_path / "client-audit.jsonl"
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    code, decision, _ = _cli("check", "--server", down, "--image", str(image),
                             "--action", "turn on the tap", "--audit", str(local))
    assert code == 3 and (decision["verdict"], decision["status"]) == ("veto", "error")
    assert "unreachable" in decision["error"]
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "server.jsonl"), "model.backend": "scripted",
        "model.scripted.responses": [{"text": "ALLOW\nrisk: 0.0", "delay_ms": 1500}],
    })
    with Server(config) as srv:
        srv.wait_ready()
        code, decision, _ = _cli("check", "--server", srv.url, "--image", str(image),
                                 "--action", "turn on the tap", "--audit", str(local),
                                 "--server-timeout-s", "0.3")
    assert code == 3 and (decision["verdict"], decision["status"]) == ("veto", "timeout")
    assert [r["decision"]["status"] for r in _records(local)] == ["error", "timeout"]
    assert verify(local).ok
    code, _, err = _cli("check", "--server", "ftp://x", "--image", str(image), "--action", "x")
    assert code == 2 and "--server: 'ftp://x' is not an http:// or https:// URL" in err
    code, _, err = _cli("check", "--server", down, "--model", "m", "--image", str(image),
                        "--action", "x")
    assert code == 2 and "--model: not used with --server" in err


# -- the server backend: a client guard that renders, decides and audits; the model elsewhere --


def _client_config(tmp_path: Path, url: str, model: str | None, **extra: Any) -> GuardConfig:
    return GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "client.jsonl"), "model.backend": "server",
        "model.server.url": url, "model.id": model, "policy.deadline_ms": 60_000, **extra,
    })


def test_the_server_backend_judges_as_a_local_guard(tmp_path: Path) -> None:
    """A guard on the server backend gives each proposal the local guard's prompt, judged
    size, answer and decision; its clients' prompts are batched on the server."""
    pytest.importorskip("transformers")
    model = str(_embedded())
    served = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "server.jsonl"), "model.id": model,
        "policy.deadline_ms": 60_000})
    local_cfg = served.with_overrides(**{"audit.path": str(tmp_path / "local.jsonl")})
    steps = _steps(8)
    with Server(served) as srv, Guard(local_cfg) as local:
        srv.wait_ready()
        with Guard(_client_config(tmp_path, srv.url, model)) as client:
            assert client.backend.model_id == local.backend.model_id == model
            now = time.time()
            items = [(Frame(image=s.frame, stamp=now, source=f"s{k}"),
                      {"name": s.item.action, "description": s.action, "id": f"p{k}"})
                     for k, s in enumerate(steps)]
            with ThreadPoolExecutor(8) as pool:  # eight robots at once
                remote = list(pool.map(lambda it: client.judge(*it, now=now), items))
            here = [local.judge(*it, now=now) for it in items]
        batches = httpx.get(f"{srv.url}/healthz").json()["batches"]
    for r, h in zip(remote, here, strict=True):
        assert _same(r.decision, h.decision) == {}
        assert (r.prompt, r.answer, r.judged_sizes) == (h.prompt, h.answer, h.judged_sizes)
        assert r.decision.status is Status.OK
    assert batches < len(items)  # prompts that waited together went as one batch
    assert len(_records(tmp_path / "client.jsonl")) == len(items)  # decided and audited here
    assert _records(tmp_path / "server.jsonl") == []  # the server only answered prompts


def test_the_server_backend_fails_closed(tmp_path: Path) -> None:
    import socket

    from guard.errors import BackendError, ConfigError

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        down = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(BackendError, match="unreachable"):
        Guard(_client_config(tmp_path, down, None))
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "server.jsonl"), "model.backend": "scripted",
        "model.scripted.by_action": {"slow": {"text": "ALLOW", "delay_ms": 1500}},
        "prompt.template": "consequence_v1"})
    with Server(config, ServeOptions(token="t0k")) as srv:
        srv.wait_ready()
        with Guard(_client_config(tmp_path, srv.url, None,
                                  **{"model.server.token_env": "NO_SUCH_TOKEN_VAR"})) as guard:
            refused = guard.check(_frame(1), {"name": "tap_on"})  # probes need no token
        assert (refused.verdict, refused.status) == (Verdict.VETO, Status.ERROR)
        assert "HTTP 401" in (refused.error or "")
        (tmp_path / "token").write_text("t0k\n")
        token = {"model.server.token_file": str(tmp_path / "token")}
        with pytest.raises(ConfigError, match="template 'consequence_v1'"):
            Guard(_client_config(tmp_path, srv.url, None, **token,
                                 **{"prompt.template": "consequence_compact"}))
        client = Guard(_client_config(tmp_path, srv.url, None, **token,
                                      **{"policy.deadline_ms": 500}))
        fast = client.check(_frame(1), {"name": "tap_on", "description": "turn on the tap"})
        slow = client.check(_frame(2), {"name": "x", "description": "slow move"})
    down_now = client.check(_frame(3), {"name": "tap_on", "description": "turn on the tap"})
    client.close()
    assert (fast.verdict, fast.status) == (Verdict.ALLOW, Status.OK)
    assert (slow.verdict, slow.status) == (Verdict.VETO, Status.TIMEOUT)
    assert (down_now.verdict, down_now.status) == (Verdict.VETO, Status.ERROR)
    assert "unreachable" in (down_now.error or "")
    assert verify(tmp_path / "client.jsonl").ok


def test_a_request_in_flight_at_shutdown_gets_its_decision(tmp_path: Path) -> None:
    config = GuardConfig().with_overrides(**{
        "audit.path": str(tmp_path / "audit.jsonl"), "model.backend": "scripted",
        "model.scripted.responses": [{"text": "ALLOW\nrisk: 0.0", "delay_ms": 800}],
    })
    srv = Server(config)
    with srv:
        srv.wait_ready()
        with ThreadPoolExecutor(1) as pool:
            pending = pool.submit(srv.check, {"action": "turn on the tap",
                                              "images": [_b64(_png())]})
            time.sleep(0.3)
            srv.server.should_exit = True  # Ctrl-C while the model is judging it
            answer = pending.result(timeout=30)
    assert not srv.thread.is_alive()
    assert answer.status_code == 200 and answer.json()["verdict"] == "allow"
    assert len(_records(tmp_path / "audit.jsonl")) == 1
