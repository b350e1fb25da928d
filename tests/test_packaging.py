"""Packaging: the extras are honest ranges, every extra a message names exists, and the built
wheel installs and works with each extra alone.

The static checks read pyproject.toml, configs/constraints.txt and the sources. The wheel
test (marked ``packaging``; CI runs it) is in tests/test_wheel_extras.py.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

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
_PROSE = {"same", "one", "an", "new", "other", "optional", "first", "last"}


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
        assert re.search(rf"^\s*(import|from) {module}\b", sources, re.M), module
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
