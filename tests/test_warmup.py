"""The deadline covers judging, not loading: a backend's first-call costs are paid when the
guard is built."""

import threading
import time

from guard.backends.base import JudgeOutput
from guard.core import Guard
from guard.types import ActionProposal, Status


class ColdBackend:
    """First call slow (as a fresh CPU process is), later calls instant."""

    name = "cold"
    model_id = "cold"

    def __init__(self, first_call_s=1.0):
        self.first_call_s = first_call_s
        self.calls = 0
        self.warm_requests = []
        self._lock = threading.Lock()

    def warmup(self, request):
        self.warm_requests.append(request)
        self.judge(request)

    def judge(self, request):
        with self._lock:
            self.calls += 1
            first = self.calls == 1
        if first:
            time.sleep(self.first_call_s)
        return JudgeOutput(text="ALLOW\nrisk: 0.0")

    def close(self):
        pass


def test_the_first_check_is_not_charged_for_the_first_call(config, frame):
    config = config.with_overrides(**{"policy.deadline_ms": 300})
    backend = ColdBackend(first_call_s=1.0)
    with Guard(config, backend=backend) as g:
        fresh = frame.model_copy(update={"stamp": time.time()})
        d = g.check(fresh, ActionProposal(name="stove_on"))
    assert d.status is Status.OK, d.error
    (warm,) = backend.warm_requests
    assert warm.deadline is None and len(warm.prompt.images) == 1


def test_without_warmup_the_first_check_times_out(config, frame):
    config = config.with_overrides(**{"policy.deadline_ms": 300, "model.warmup": False})
    with Guard(config, backend=ColdBackend(first_call_s=1.0)) as g:
        d = g.check(frame, ActionProposal(name="stove_on"))
    assert d.status is Status.TIMEOUT


def test_a_backend_without_warmup_is_left_alone(config):
    with Guard(config) as g:  # scripted: no warm-up, its scripted answers stay in order
        assert g.warmup() is None


def test_the_embedded_model_warms_up(config):
    from guard.cli.demo import DEFAULT_MODEL_DIR

    config = config.with_overrides(**{"model.backend": "transformers",
                                      "model.id": str(DEFAULT_MODEL_DIR)})
    with Guard(config) as g:
        assert g.warmup() is not None
