"""The cmd_vel gate as a plain object (no ROS): when commands pass, and why they are zeroed.

The gate judges the camera by the core's freshness rule with the guard's policy; before it
had its own copy, which treated a frame stamped ahead of the clock as fresh for as long as
the stamp lay ahead (one frame stamped +1 h, then a silent camera: the gate stayed open).
An open gate also relayed NaN and infinite velocities to the base, and passed with a node
clock that did not run (use_sim_time, no /clock).
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from guard_ros.gate import (
    TWIST_FIELDS,
    Action,
    CmdVelGate,
    GatePolicy,
    GateState,
    StopReason,
    clock_problem,
    command_problem,
    inactive,
)

from guard.config import PolicyConfig
from guard.freshness import frame_freshness
from guard.types import Status, Verdict

NOW = 1_700_000_000.0
POLICY = GatePolicy(mode="enforce", max_frame_age_ms=1000.0, max_clock_skew_ms=100.0)


def _gate(stamp: float | None = NOW, verdict: Verdict | None = Verdict.ALLOW) -> CmdVelGate:
    gate = CmdVelGate()
    if stamp is not None:
        gate.on_frame(stamp)
    if verdict is not None:
        gate.on_decision(verdict)
    return gate


def test_fresh_frame_and_allow_pass() -> None:
    assert _gate().blocked_reason(NOW + 0.5, POLICY) is None
    # Annotate does not block; a frame slightly ahead (within the skew) is fresh.
    assert _gate(NOW + 0.05, Verdict.ANNOTATE).blocked_reason(NOW, POLICY) is None


def test_starts_closed_without_a_frame() -> None:
    assert CmdVelGate().blocked_reason(NOW, POLICY) == "no camera frame yet"


def test_veto_blocks_until_the_next_allow() -> None:
    gate = _gate(verdict=Verdict.VETO)
    assert gate.blocked_reason(NOW, POLICY) == "latest decision is a veto"
    gate.on_decision(Verdict.ALLOW)
    assert gate.blocked_reason(NOW, POLICY) is None


@pytest.mark.parametrize("ahead_s", [5.0, 3600.0, 2**31 - 1 - NOW])
def test_frame_stamped_in_the_future_closes_the_gate(ahead_s: float) -> None:
    # The measured defect: +1 h, then silence; the gate must be closed at once, and stay so.
    gate = _gate(NOW + ahead_s)
    for later in (0.0, 1.0, 10.0, 60.0):
        reason = gate.blocked_reason(NOW + later, POLICY)
        assert reason is not None and "stale_frame" in reason, reason
        # Ahead of the clock while the stamp is in the future, too old once it is past.
        assert ("ahead" if later < ahead_s else "old") in reason, reason


@pytest.mark.parametrize("stamp", [math.nan, math.inf, -math.inf])
def test_non_finite_stamp_closes_the_gate(stamp: float) -> None:
    reason = _gate(stamp).blocked_reason(NOW, POLICY)
    assert reason is not None and "stale_frame" in reason


def test_old_frame_closes_and_a_new_one_reopens() -> None:
    gate = _gate()
    assert "old" in (gate.blocked_reason(NOW + 1.5, POLICY) or "")
    gate.on_frame(NOW + 1.4)
    assert gate.blocked_reason(NOW + 1.5, POLICY) is None


def test_the_gate_agrees_with_the_core_rule() -> None:
    # The same answer as the one rule for every kind of stamp, so a frame the judge calls
    # stale can never keep the gate open (and vice versa).
    for stamp in (NOW, NOW - 0.999, NOW - 1.001, NOW + 0.099, NOW + 0.101, NOW + 3600.0,
                  math.nan, None):
        gate = _gate(stamp if stamp is not None else None)
        rule = frame_freshness(stamp, NOW, max_age_ms=1000.0, max_skew_ms=100.0,
                               has_frame=stamp is not None)
        assert (gate.blocked_reason(NOW, POLICY) is None) == rule.fresh, stamp
        assert gate.camera(NOW, POLICY).status == rule.status


def test_policy_comes_from_the_guard_config() -> None:
    policy = GatePolicy.of(PolicyConfig(max_frame_age_ms=200.0, max_clock_skew_ms=0.0))
    assert (policy.max_frame_age_ms, policy.max_clock_skew_ms) == (200.0, 0.0)
    gate = _gate()
    assert gate.blocked_reason(NOW + 0.1, policy) is None
    assert gate.blocked_reason(NOW + 0.3, policy) is not None
    # Any stamp ahead of the clock at all is refused with a zero skew.
    assert _gate(NOW + 0.001).blocked_reason(NOW, policy) is not None
    # No age limit: still no future stamps, no NaN.
    unlimited = GatePolicy(max_frame_age_ms=None)
    assert _gate().blocked_reason(NOW + 1e6, unlimited) is None
    assert _gate(NOW + 3600.0).blocked_reason(NOW, unlimited) is not None


def test_shadow_mode_passes_everything() -> None:
    shadow = GatePolicy(mode="shadow")
    assert _gate(NOW + 3600.0, Verdict.VETO).blocked_reason(NOW, shadow) is None
    assert CmdVelGate().blocked_reason(NOW, shadow) is None


def test_reset_closes_the_gate() -> None:
    gate = _gate()
    gate.reset()
    assert gate.blocked_reason(NOW, POLICY) == "no camera frame yet"
    assert gate.last_verdict is None


def test_statuses_are_the_cores() -> None:
    assert _gate(NOW + 3600.0).camera(NOW, POLICY).status is Status.STALE_FRAME
    assert CmdVelGate().camera(NOW, POLICY).status is Status.NO_FRAME


# -- the state, nav2's stop_pub_timeout, and "an invalid source means stop" -------------------


def test_no_decision_yet_stops_even_with_a_fresh_camera() -> None:
    # Nothing judged yet is not "allowed": the gate stops until the first proposal decision.
    gate = _gate(verdict=None)
    state = gate.state(NOW, POLICY)
    assert (state.passing, state.reason) == (False, StopReason.NO_DECISION_YET)
    gate.on_decision(Verdict.ANNOTATE)
    assert gate.state(NOW, POLICY).passing


def test_reasons_in_order_veto_then_camera_then_no_decision() -> None:
    assert CmdVelGate().state(NOW, POLICY).reason is StopReason.STALE_CAMERA
    assert _gate(None, Verdict.VETO).state(NOW, POLICY).reason is StopReason.VETO
    assert _gate(NOW - 5.0, None).state(NOW, POLICY).reason is StopReason.STALE_CAMERA


class _BrokenPolicy:
    """Shaped like a GatePolicy, but its age limit cannot be read."""

    mode = "enforce"
    max_clock_skew_ms = 100.0

    @property
    def max_frame_age_ms(self) -> float:
        raise RuntimeError("policy unreadable")


def test_a_check_that_cannot_run_stops() -> None:
    # The node had its own except-and-stop around the gate; the gate now decides it.
    broken: Any = _BrokenPolicy()
    state = _gate().state(NOW, broken)
    assert state.reason is StopReason.STALE_CAMERA and "policy unreadable" in state.detail
    assert _gate().on_command(NOW, broken).action is Action.ZERO


def test_stop_pub_timeout_sends_zeros_then_goes_quiet() -> None:
    # The measured defect: zeros were sent forever (31 in 3 s with no camera). Now: zeros on
    # every command and tick for stop_pub_timeout after stopping, then nothing, as nav2 does.
    gate = CmdVelGate(stop_pub_timeout=2.0)
    gate.on_frame(NOW)
    gate.on_decision(Verdict.VETO)
    ticks = [gate.on_tick(NOW + 0.1 * i, POLICY) for i in range(31)]
    assert [t.action for t in ticks] == [Action.ZERO] * 21 + [Action.QUIET] * 10
    assert [t.changed for t in ticks] == [True] + [False] * 30
    assert gate.on_command(NOW + 3.0, POLICY).action is Action.QUIET
    # Passing again, then a new stop: zeros again for the full timeout.
    gate.on_frame(NOW + 3.0)
    gate.on_decision(Verdict.ALLOW)
    step = gate.on_command(NOW + 3.1, POLICY)
    assert (step.action, step.changed, step.state.passing) == (Action.PASS, True, True)
    assert gate.on_tick(NOW + 3.2, POLICY).action is Action.QUIET  # no zeros while passing
    gate.on_decision(Verdict.VETO)
    assert gate.on_command(NOW + 3.3, POLICY).action is Action.ZERO
    assert gate.on_tick(NOW + 5.3, POLICY).action is Action.ZERO
    assert gate.on_tick(NOW + 5.31, POLICY).action is Action.QUIET


def test_a_new_reason_restarts_the_zeros() -> None:
    gate = CmdVelGate(stop_pub_timeout=1.0)
    gate.on_frame(NOW)
    gate.on_decision(Verdict.VETO)
    assert gate.on_tick(NOW, POLICY).action is Action.ZERO
    assert gate.on_tick(NOW + 1.01, POLICY).action is Action.QUIET
    # Still a veto, and now also a stale camera: the reason stays "veto" (first in order).
    assert gate.on_tick(NOW + 1.6, POLICY).action is Action.QUIET
    gate.on_decision(Verdict.ALLOW)  # veto lifted, but the camera is stale by now
    step = gate.on_tick(NOW + 1.7, POLICY)
    assert (step.action, step.changed, step.state.reason) == (
        Action.ZERO, True, StopReason.STALE_CAMERA)


def test_a_clock_going_back_restarts_the_zeros() -> None:
    # A bag looping under use_sim_time: the stop is measured from the new time.
    gate = CmdVelGate(stop_pub_timeout=1.0)
    assert gate.on_tick(NOW, POLICY).action is Action.ZERO
    assert gate.on_tick(NOW + 2.0, POLICY).action is Action.QUIET
    assert gate.on_tick(NOW - 100.0, POLICY).action is Action.ZERO


def test_zero_timeout_sends_one_zero_and_shadow_never_stops() -> None:
    gate = CmdVelGate(stop_pub_timeout=0.0)
    assert gate.on_command(NOW, POLICY).action is Action.ZERO
    assert gate.on_command(NOW + 0.01, POLICY).action is Action.QUIET
    shadow = CmdVelGate()
    assert shadow.on_command(NOW, GatePolicy(mode="shadow")).action is Action.PASS


@pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf])
def test_stop_pub_timeout_is_validated(bad: float) -> None:
    with pytest.raises(ValueError, match="stop_pub_timeout"):
        CmdVelGate(stop_pub_timeout=bad)


def test_state_json() -> None:
    assert json.loads(GateState().to_json()) == {"state": "passing", "reason": "", "detail": ""}
    stopped = json.loads(_gate(verdict=Verdict.VETO).state(NOW, POLICY).to_json())
    assert stopped == {"state": "stopped", "reason": "veto",
                       "detail": "latest decision is a veto"}
    assert json.loads(inactive("deactivated").to_json())["state"] == "inactive"
    assert not inactive("x").passing


# -- commands the base must not be given, and a clock that does not run -----------------------

MOVING = (0.5, 0.0, 0.0, 0.0, 0.0, 0.2)


def _open() -> CmdVelGate:
    gate = _gate()
    assert gate.on_command(NOW, POLICY).action is Action.PASS
    return gate


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("field", range(6))
def test_a_non_finite_command_is_never_passed(field: int, value: float) -> None:
    # The measured defect: an open gate relayed linear.x = nan (and inf, -inf) to the base.
    components = list(MOVING)
    components[field] = value
    problem = command_problem(components, None, NOW, POLICY)
    assert problem is not None and TWIST_FIELDS[field] in problem
    for policy in (POLICY, GatePolicy(mode="shadow")):  # not a judgement: shadow stops too
        gate = _open()
        step = gate.on_command(NOW, policy, problem)
        assert (step.action, step.changed) == (Action.ZERO, True)
        assert step.state.reason is StopReason.INVALID_COMMAND
        assert json.loads(step.state.to_json())["reason"] == "invalid_command"
        # Zeros on the watchdog while no valid command comes, for stop_pub_timeout...
        assert gate.on_tick(NOW + 0.1, policy).action is Action.ZERO
        assert gate.on_tick(NOW + 5.0, policy).action is Action.QUIET
        # ...and the next valid command passes again (the gate's rule decides as before).
        step = gate.on_command(NOW + 0.2, policy, None)
        assert (step.action, step.changed, step.state.passing) == (Action.PASS, True, True)


def test_a_large_finite_command_is_not_the_gates_to_limit() -> None:
    # Magnitudes are the velocity smoother's and the base's limits; the gate refuses only
    # what no limit can compare (NaN) or clamp to a number (inf).
    assert command_problem((1e308, -1e308, 0.0, 0.0, 0.0, 1e308), None, NOW, POLICY) is None


def test_a_stamped_command_is_held_to_the_freshness_rule() -> None:
    assert command_problem(MOVING, NOW - 0.5, NOW, POLICY) is None
    assert command_problem(MOVING, NOW + 0.05, NOW, POLICY) is None  # within the skew
    ahead = command_problem(MOVING, NOW + 3600.0, NOW, POLICY)
    assert ahead is not None and "ahead of the node's clock" in ahead
    old = command_problem(MOVING, NOW - 3600.0, NOW, POLICY)
    assert old is not None and "over max_frame_age_ms (1000)" in old
    assert command_problem(MOVING, NOW - 3600.0, NOW, GatePolicy(max_frame_age_ms=None)) is None
    # No /clock yet: the gate stops for the clock itself (below), not for the command.
    assert command_problem(MOVING, NOW, 0.0, POLICY) is None


def test_a_clock_that_does_not_run_stops_the_gate() -> None:
    # use_sim_time with no /clock yet: ROS time 0. A frame timed on arrival then was "0 s
    # old" and the gate passed (the measured defect, with a zero-stamped camera).
    gate = _gate(0.0)
    assert clock_problem(0.0) is not None and clock_problem(NOW) is None
    state = gate.state(0.0, POLICY)
    assert state.reason is StopReason.STALE_CAMERA and "/clock" in state.detail
    assert gate.on_command(0.0, POLICY).action is Action.ZERO


def test_an_untrusted_frame_stops_the_gate() -> None:
    gate = _gate()
    gate.on_frame(NOW, untrusted="has no header stamp (zero)")
    state = gate.state(NOW, POLICY)
    assert state.reason is StopReason.STALE_CAMERA and "no header stamp" in state.detail
    assert gate.camera(NOW, POLICY).status is Status.STALE_FRAME
    gate.on_frame(NOW)  # a stamped frame again
    assert gate.state(NOW, POLICY).passing
