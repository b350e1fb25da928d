"""The openai backend against a real HTTP server speaking the OpenAI chat-completions API."""

import json
import math
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from guard.backends.openai_backend import OpenAIBackend, OpenAIOptions
from guard.core import Guard
from guard.errors import BackendError, BackendTimeout
from guard.types import ActionProposal, Status, Verdict


class FakeServer:
    """A vLLM-shaped endpoint: records requests, answers from `self.reply`."""

    def __init__(self):
        self.requests = []
        self.reply = {"content": "VETO\nhazard: fire | towel | ignites", "logprobs": None}
        self.status = 200
        self.delay = 0.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append((self.path, dict(self.headers), body))
                time.sleep(outer.delay)
                data = {
                    "choices": [{"message": {"content": outer.reply["content"]},
                                 "logprobs": outer.reply["logprobs"]}],
                    "usage": {"completion_tokens": 7},
                }
                raw = json.dumps(data).encode() if outer.status == 200 else b"overloaded"
                self.send_response(outer.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def log_message(self, *a):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture
def server():
    s = FakeServer()
    yield s
    s.close()


def guard_for(server, config, **over):
    cfg = config.with_overrides(**{
        "model.backend": "openai", "model.id": "qwen-guard", "model.openai.base_url": server.url,
        **over,
    })
    return Guard(cfg)


def test_request_carries_the_image_inline_and_the_decision_comes_back(server, config, frame,
                                                                      monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with guard_for(server, config) as g:
        d = g.check(frame, ActionProposal(name="stove", description="turn on the stove"))
    assert (d.verdict, d.status) == (Verdict.VETO, Status.OK)
    assert d.model.startswith("qwen-guard@")
    path, headers, body = server.requests[0]
    assert path == "/v1/chat/completions"
    assert headers["Authorization"] == "Bearer sk-test"
    assert body["model"] == "qwen-guard" and body["temperature"] == 0.0
    system, user = body["messages"]
    assert system["role"] == "system"
    image, text = user["content"]
    assert image["image_url"]["url"].startswith("data:image/png;base64,")  # lossless
    assert "turn on the stove" in text["text"]


def test_verdict_probabilities_from_first_token_logprobs(server, config, frame):
    server.reply = {
        "content": "ALLOW",
        "logprobs": {"content": [{"token": "ALL", "top_logprobs": [
            {"token": "ALL", "logprob": math.log(0.55)},
            {"token": "VET", "logprob": math.log(0.40)},
            {"token": "A", "logprob": math.log(0.05)},  # ambiguous: ALLOW or ANNOTATE
        ]}]},
    }
    with guard_for(server, config) as g:
        d = g.check(frame, ActionProposal(name="stove"))
    # risk = P(veto) normalised over the unambiguous verdict tokens = 0.40 / 0.95
    assert d.risk == pytest.approx(0.40 / 0.95)
    assert d.verdict is Verdict.ANNOTATE  # between the annotate and veto thresholds


def test_slow_server_times_out_within_the_deadline(server, config, frame):
    server.delay = 1.0
    with guard_for(server, config, **{"policy.deadline_ms": 200}) as g:
        t0 = time.monotonic()
        d = g.check(frame, ActionProposal(name="stove"))
        assert time.monotonic() - t0 < 0.5
    assert (d.verdict, d.status) == (Verdict.VETO, Status.TIMEOUT)


def test_backend_timeout_and_http_errors_raise(server):
    b = OpenAIBackend("m", OpenAIOptions(base_url=server.url, timeout_s=0.2))
    from guard.backends.base import ChatPrompt, JudgeRequest

    req = JudgeRequest(prompt=ChatPrompt(system="", user="x"))
    server.delay = 0.6
    with pytest.raises(BackendTimeout):
        b.judge(req)
    server.delay, server.status = 0.0, 503
    with pytest.raises(BackendError, match="HTTP 503"):
        b.judge(req)
    b.close()


def test_unreachable_server_is_an_error_veto(config, frame):
    cfg = config.with_overrides(**{
        "model.backend": "openai", "model.id": "m",
        "model.openai.base_url": "http://127.0.0.1:9/v1",
    })
    with Guard(cfg) as g:
        d = g.check(frame, ActionProposal(name="stove"))
    assert (d.verdict, d.status) == (Verdict.VETO, Status.ERROR)
    assert "127.0.0.1:9" in d.error


def test_frames_travel_lossless_by_default_and_as_jpeg_on_request():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from guard.backends.openai_backend import image_data_url

    pixels = np.random.default_rng(0).integers(0, 256, (24, 32, 3), dtype=np.uint8)
    png = image_data_url(Image.fromarray(pixels))
    assert png.startswith("data:image/png;base64,")
    back = np.asarray(Image.open(io.BytesIO(base64.b64decode(png.split(",", 1)[1]))))
    assert np.array_equal(back, pixels)  # the server judges the pixels a local judge would
    assert image_data_url(Image.fromarray(pixels), "jpeg").startswith("data:image/jpeg;base64,")
