"""The CLI contract through real subprocesses: exit codes, JSON on stdout, one-line errors."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "kitchen_towel_on_stove.jpg"
VETO = "VETO\\nrisk: 0.9\\nhazard: fire | towel on the burner | the towel ignites | 0.9"


def guard(*args, env=None, timeout=60, stdin=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "guard.cli.main", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=e, cwd=ROOT, input=stdin,
    )


@pytest.fixture
def scripted_config(tmp_path):
    def make(answer="ALLOW", extra=""):
        p = tmp_path / "guard.yaml"
        p.write_text(
            "model:\n  backend: scripted\n  scripted:\n    responses:\n"
            f'      - text: "{answer}"\n'
            f"audit:\n  path: {tmp_path / 'audit.jsonl'}\n{extra}"
        )
        return p

    return make


def assert_one_clear_line(stderr):
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr


def test_help_is_instant_and_lists_the_commands():
    t0 = time.monotonic()
    r = guard("--help")
    assert r.returncode == 0 and time.monotonic() - t0 < 5
    for cmd in ("check", "tiny-model", "audit"):
        assert cmd in r.stdout
    assert guard("check", "--help").returncode == 0


def test_allow_exits_0_and_veto_exits_3(scripted_config):
    r = guard("check", "--image", EXAMPLE, "--action", "wipe the table",
              "--config", scripted_config("ALLOW"))
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["verdict"] == "allow"
    r = guard("check", "--image", EXAMPLE, "--action", "turn on the stove",
              "--config", scripted_config(VETO))
    d = json.loads(r.stdout)
    assert r.returncode == 3 and d["verdict"] == "veto" and d["hazards"][0]["category"] == "fire"


def test_usage_errors_exit_2(scripted_config, tmp_path):
    r = guard("check", "--image", tmp_path / "missing.jpg", "--action", "x")
    assert r.returncode == 2 and "file not found" in r.stderr
    assert_one_clear_line(r.stderr)
    r = guard("check", "--image", EXAMPLE)  # no --action
    assert r.returncode == 2
    r = guard("check", "--image", EXAMPLE, "--action", "x", "--config", tmp_path / "no.yaml")
    assert r.returncode == 2 and "file not found" in r.stderr
    r = guard("check", "--image", EXAMPLE, "--action", "x", "--arguments", "{bad",
              "--config", scripted_config())
    assert r.returncode == 2 and "--arguments" in r.stderr


@pytest.mark.parametrize(("flags", "expected"), [
    (("--backend", "oracle"), "model.backend = 'oracle': unknown backend"),
    (("--backend", "onnx", "--model", "export/", "--adapter", "lora/"),
     "model.adapter: not a field of the onnx backend"),
    (("--backend", "openai", "--adapter", "lora/"), "model.adapter: not a field of the openai"),
])
def test_a_flag_the_config_cannot_take_is_a_usage_error(tmp_path, flags, expected):
    audit = tmp_path / "audit.jsonl"
    r = guard("check", "--image", EXAMPLE, "--action", "x", "--audit", audit, *flags)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and expected in r.stderr
    assert r.stderr.startswith("guard check: error: command-line flags: ")
    assert_one_clear_line(r.stderr)


def test_a_config_file_of_another_backends_fields_fails_on_load(tmp_path):
    cfg = tmp_path / "onnx.yaml"
    cfg.write_text("model:\n  backend: onnx\n  id: export/\n  quantization: 4bit\n")
    out = tmp_path / "replay"
    r = guard("replay", ROOT / "examples" / "world_episode.mcap", "--out", out, "--config", cfg)
    assert r.returncode == 2 and "model.quantization: not a field of the onnx backend" in r.stderr
    assert_one_clear_line(r.stderr)
    assert not (out / "decisions.jsonl").exists()


@pytest.mark.parametrize(
    "content",
    [
        pytest.param(lambda: EXAMPLE.read_bytes()[:2000], id="truncated-jpeg"),
        pytest.param(lambda: b"", id="empty"),
        pytest.param(lambda: b"this is a text file, not an image\n" * 10, id="not-an-image"),
        pytest.param(lambda: b"\x89PNG\r\n\x1a\n" + os.urandom(300), id="corrupt-png"),
    ],
)
def test_bad_images_are_invalid_input_vetoes(scripted_config, tmp_path, content):
    bad = tmp_path / "frame.jpg"
    bad.write_bytes(content())
    r = guard("check", "--image", bad, "--action", "turn on the stove",
              "--config", scripted_config("ALLOW"))
    assert r.returncode == 3, r.stderr
    d = json.loads(r.stdout)
    assert (d["verdict"], d["status"]) == ("veto", "invalid_input")
    assert_one_clear_line(r.stderr)
    assert "frame.jpg" in r.stderr


def test_absurd_image_size_is_refused_before_decoding(scripted_config, tmp_path):
    from PIL import Image

    big = tmp_path / "big.png"
    Image.new("RGB", (12000, 9000)).save(big)  # 108 MP, compresses to a few hundred KB
    r = guard("check", "--image", big, "--action", "x", "--config", scripted_config("ALLOW"))
    d = json.loads(r.stdout)
    assert r.returncode == 3 and d["status"] == "invalid_input" and "pixel limit" in r.stderr
    assert_one_clear_line(r.stderr)


@pytest.mark.parametrize("via", ["argv", "stdin"])
def test_megabytes_of_action_text_are_invalid_input(scripted_config, via):
    # One argv string is capped by the OS at 128 KiB; megabytes come through --action -.
    text = "a" * (100_000 if via == "argv" else 3_000_000)
    action = text if via == "argv" else "-"
    r = guard("check", "--image", EXAMPLE, "--action", action,
              "--config", scripted_config("ALLOW"), stdin=text if via == "stdin" else None)
    d = json.loads(r.stdout)
    assert r.returncode == 3 and d["status"] == "invalid_input"
    assert "max_action_chars" in r.stderr
    assert_one_clear_line(r.stderr)


def test_a_config_with_wrong_types_prints_an_invalid_input_veto(scripted_config):
    cfg = scripted_config("ALLOW", extra="policy:\n  deadline_ms: soon\n")
    r = guard("check", "--image", EXAMPLE, "--action", "x", "--config", cfg)
    d = json.loads(r.stdout)
    assert r.returncode == 3 and (d["verdict"], d["status"]) == ("veto", "invalid_input")
    assert "policy.deadline_ms = 'soon'" in r.stderr
    assert_one_clear_line(r.stderr)


def test_deadline_flag_gives_a_prompt_timeout_veto(scripted_config, tmp_path):
    cfg = tmp_path / "slow.yaml"
    cfg.write_text(
        "model:\n  backend: scripted\n  scripted:\n    responses:\n"
        "      - {text: ALLOW, delay_ms: 5000}\n"
        f"audit:\n  path: {tmp_path / 'audit.jsonl'}\n"
    )
    t0 = time.monotonic()
    r = guard("check", "--image", EXAMPLE, "--action", "x", "--config", cfg,
              "--deadline-ms", "1")
    assert time.monotonic() - t0 < 4.5
    d = json.loads(r.stdout)
    assert r.returncode == 3 and (d["verdict"], d["status"]) == ("veto", "timeout")


def test_a_model_that_does_not_load_is_an_error_veto(tmp_path):
    r = guard("check", "--image", EXAMPLE, "--action", "x", "--model", tmp_path / "no-model",
              "--audit", tmp_path / "a.jsonl")
    assert r.returncode == 3, r.stderr
    d = json.loads(r.stdout)
    assert (d["verdict"], d["status"]) == ("veto", "error")
    assert_one_clear_line(r.stderr)
    (rec,) = [json.loads(x) for x in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert rec["decision"]["id"] == d["id"]  # audited like every decision


def test_audit_verify_catches_an_edited_record(scripted_config, tmp_path):
    cfg = scripted_config(VETO)
    for _ in range(3):
        guard("check", "--image", EXAMPLE, "--action", "turn on the stove", "--config", cfg)
    log = tmp_path / "audit.jsonl"
    r = guard("audit", "verify", log)
    assert r.returncode == 0 and "3 records" in r.stdout
    lines = log.read_text().splitlines()
    lines[1] = lines[1].replace('"verdict":"veto"', '"verdict":"allow"')
    log.write_text("\n".join(lines) + "\n")
    r = guard("audit", "verify", log)
    assert r.returncode == 1 and "line 2" in r.stdout
    r = guard("audit", "verify", tmp_path / "nope.jsonl")
    assert r.returncode == 2


# -- with real (tiny, random-weight) Qwen-VL models through the transformers backend ---------


@pytest.fixture(scope="module", params=["qwen2_5_vl", "qwen3_vl"])
def tiny_model(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    r = guard("tiny-model", "--arch", request.param, "--out", out, "--seed", "0", timeout=300)
    assert r.returncode == 0, r.stderr
    assert (out / "config.json").is_file()
    return out


def test_check_with_a_tiny_model_prints_a_full_decision(tiny_model, tmp_path):
    # A generous deadline: a loaded CI machine must not turn this into a timeout veto.
    r = guard("check", "--image", EXAMPLE, "--action", "turn on the stove", "--model", tiny_model,
              "--deadline-ms", "120000", "--audit", tmp_path / "a.jsonl", timeout=300)
    assert r.returncode in (0, 3), r.stderr
    d = json.loads(r.stdout)
    from tests.test_types import CONTRACT_FIELDS

    assert CONTRACT_FIELDS <= set(d)
    assert d["model"] == str(tiny_model)
    # A random model does not follow the answer format: a fail-closed veto, never an allow.
    if d["status"] != "ok":
        assert (r.returncode, d["verdict"]) == (3, "veto")
    rec = json.loads((tmp_path / "a.jsonl").read_text().splitlines()[0])
    assert rec["decision"]["id"] == d["id"] and "answer" in rec


def test_tiny_model_with_a_1ms_deadline_is_a_prompt_timeout_veto(tiny_model, tmp_path):
    r = guard("check", "--image", EXAMPLE, "--action", "turn on the stove", "--model", tiny_model,
              "--deadline-ms", "1", "--audit", tmp_path / "a.jsonl", timeout=300)
    d = json.loads(r.stdout)
    assert r.returncode == 3 and (d["verdict"], d["status"]) == ("veto", "timeout")
    assert d["latency_ms"] < 200


def test_truncated_jpeg_with_a_real_model_gives_one_stderr_line(tiny_model, tmp_path):
    bad = tmp_path / "cut.jpg"
    bad.write_bytes(EXAMPLE.read_bytes()[:3000])
    r = guard("check", "--image", bad, "--action", "turn on the stove", "--model", tiny_model,
              "--audit", tmp_path / "a.jsonl", timeout=300)
    d = json.loads(r.stdout)
    assert r.returncode == 3 and d["status"] == "invalid_input"
    assert_one_clear_line(r.stderr)


def test_an_audit_log_that_does_not_open_is_named_as_such(scripted_config, tmp_path):
    """A torn tail the log could not move to evidence (the evidence write hits a file-size
    limit here, as on a full disk) was reported as 'model did not load'."""
    import resource
    import signal

    cfg = scripted_config("ALLOW")
    log = tmp_path / "audit.jsonl"
    assert guard("check", "--image", EXAMPLE, "--action", "x", "--config", cfg).returncode == 0
    with log.open("ab") as f:  # a writer that crashed mid-record
        f.write(b'{"seq": 1, "kind": "decision", "x": "' + b"y" * 8192)

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of a kill
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, resource.RLIM_INFINITY))

    r = subprocess.run(
        [sys.executable, "-m", "guard.cli.main", "check", "--image", str(EXAMPLE),
         "--action", "x", "--config", str(cfg)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, preexec_fn=limit,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    d = json.loads(r.stdout)
    assert r.returncode == 3 and (d["verdict"], d["status"]) == ("veto", "error")
    assert_one_clear_line(r.stderr)
    assert "model did not load" not in r.stderr
    assert f"audit log {log} did not open: the log ends in a torn record" in r.stderr


def test_other_commands_errors_show_control_characters_as_escapes(tmp_path):
    """`guard audit verify` printed the path of its not-found error raw: a line break and a
    terminal escape sequence in it forged a second line on stderr and drove the terminal."""
    r = guard("audit", "verify", tmp_path / "a\nguard audit: OK\x1b[2J.jsonl")
    assert r.returncode == 2
    assert_one_clear_line(r.stderr)
    assert "\x1b" not in r.stderr and "a\\nguard audit: OK\\x1b[2J.jsonl" in r.stderr
