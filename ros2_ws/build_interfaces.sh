#!/usr/bin/env bash
# Build guard_interfaces (msg/srv) where no colcon exists and install it into the ACTIVE Python
# environment, against the ROS 2 Jazzy wheels from PyPI. Where no foxglove_msgs is importable
# (there is no wheel of it), it also builds the foxglove_msgs messages that guard_node's
# `publish_annotations` uses (ImageAnnotations and its parts), generated from the definitions
# `guard replay --write-mcap` writes (guard.replay.foxglove.FOXGLOVE_MSGS); skipped, with a
# line in the log, when the guard library is not importable.
#
#   . .venv/bin/activate && bash ros2_ws/build_interfaces.sh            # build if needed
#   bash ros2_ws/build_interfaces.sh --force                            # rebuild from scratch
#   PYTHON=/path/to/venv/bin/python bash ros2_ws/build_interfaces.sh    # pick the env explicitly
#
# On a real ROS 2 install use colcon instead (see ros2_ws/README.md).
#
# The wheels unpack a ROS install prefix into the environment (lib/, share/, include/ beside
# site-packages), so the generated package is installed into that same prefix: its typesupport
# libraries then sit in <prefix>/lib, which the wheels' start-up hook puts on LD_LIBRARY_PATH,
# and rclpy finds them like those of std_msgs.
#
# Quiet on success; on failure names the step and prints the end of the log. Exit codes: 0 built
# or already up to date, 1 failed, 2 usage error.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PKG_SRC="$HERE/src/guard_interfaces"
BUILD_ROOT="$HERE/build"
BUILD_DIR="$BUILD_ROOT/guard_interfaces"
LOG="$BUILD_ROOT/build_interfaces.log"
REQS="$HERE/requirements-ros-build.txt"

force=0
verbose=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -v | --verbose) verbose=1 ;;
    -h | --help)
      sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "build_interfaces.sh: unknown argument '$arg' (try --help)" >&2
      exit 2
      ;;
  esac
done

mkdir -p "$BUILD_ROOT"
# Another run (a parallel test job, a second shell) must not build into the same tree at once.
if command -v flock >/dev/null; then
  exec 9>"$BUILD_ROOT/.lock"
  flock 9
fi
: >"$LOG"
if ((verbose)); then
  exec 3> >(tee -a "$LOG" >&2)
else
  exec 3>>"$LOG"
fi

step="start"
fail() {
  echo "build_interfaces.sh: $step failed: $*" >&2
  if ((!verbose)) && [[ -s "$LOG" ]]; then
    echo "---- last lines of $LOG ----" >&2
    tail -n 40 "$LOG" >&2
  fi
  exit 1
}
trap 'fail "command exited with status $?"' ERR

# The active environment: an explicit PYTHON, else the activated venv, else python3 on PATH.
if [[ -n "${PYTHON:-}" ]]; then
  PY="$PYTHON"
elif [[ -n "${VIRTUAL_ENV:-}" && -x "$VIRTUAL_ENV/bin/python" ]]; then
  PY="$VIRTUAL_ENV/bin/python"
else
  PY="$(command -v python3 || command -v python || true)"
fi
[[ -n "$PY" ]] || { step="finding Python"; fail "no python3 on PATH; activate a venv first"; }

# One interpreter start gives everything below (each start of a venv holding the ROS wheels
# costs a re-exec: their .pth hook restarts Python once to set LD_LIBRARY_PATH). Printed as
# shell assignments; values are shell-quoted.
env_query='
import importlib.metadata as md, os, re, shlex, sys, sysconfig
if sys.version_info < (3, 10):
    sys.exit("Python >= 3.10 is needed, this is " + sys.version.split()[0])
data = sysconfig.get_path("data")
purelib = sysconfig.get_path("purelib")
inc = sysconfig.get_paths()["include"]
def pins(path):
    for line in open(path):
        line = line.split("#", 1)[0].strip()
        if line.startswith("-r "):
            yield from pins(os.path.join(os.path.dirname(path), line[3:].strip()))
        elif line:
            m = re.fullmatch(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?==(\S+)", line)
            if not m:
                sys.exit("unsupported line in " + path + ": " + line)
            yield m.group(1), m.group(3)
missing = []
for name, version in pins(sys.argv[1]):
    try:
        have = md.version(name)
    except md.PackageNotFoundError:
        have = None
    if have != version:
        missing.append(name + "==" + version + " (have " + str(have) + ")")
try:
    import numpy
    npinc = numpy.get_include()
except ImportError:
    npinc = ""
out = dict(
    PY_EXE=sys.executable, PY_VER="%d.%d" % sys.version_info[:2], PREFIX=data,
    PURELIB=purelib, PYINC=inc, NPINC=npinc, MISSING="; ".join(missing),
    HAVE_PIP="1" if __import__("importlib.util").util.find_spec("pip") else "",
)
for k, v in out.items():
    print(k + "=" + shlex.quote(v))
'

query_env() {
  local out
  out="$("$PY" -c "$env_query" "$REQS" 2>&3)" || fail "could not query $PY"
  eval "$out"
}

step="inspecting the Python environment ($PY)"
query_env

# Done once, before the first package that needs building: wheels, tools, the wheels' paths.
prepared=0
prepare() {
  ((prepared)) && return 0
  prepared=1
  if [[ ! -w "$PREFIX" ]]; then
    step="checking the install prefix"
    fail "$PREFIX is not writable; activate a virtual environment (python -m venv) first"
  fi

  if [[ -n "$MISSING" ]]; then
    step="installing the ROS 2 Jazzy build wheels (ros2_ws/requirements-ros-build.txt)"
    echo "missing or other version: $MISSING" >&3
    if [[ -n "$HAVE_PIP" ]]; then
      "$PY" -m pip install --disable-pip-version-check --no-input -r "$REQS" >&3 2>&3
    elif command -v uv >/dev/null; then
      uv pip install --python "$PY_EXE" -r "$REQS" >&3 2>&3
    else
      fail "$PY has no pip (and no uv on PATH) to install $REQS"
    fi
    query_env
    [[ -z "$MISSING" ]] || fail "still missing after install: $MISSING"
  fi

  step="checking build tools"
  if ! command -v cmake >/dev/null; then
    # The cmake wheel puts its binary into the environment's bin/, which is not on PATH when
    # the environment was picked with PYTHON= rather than activated.
    PATH="$(dirname "$PY_EXE"):$PATH"
    if ! command -v cmake >/dev/null; then
      "$PY" -m pip install --disable-pip-version-check --no-input "cmake>=3.22,<4" >&3 2>&3 ||
        fail "no cmake on PATH and the cmake wheel did not install"
      command -v cmake >/dev/null || fail "no cmake found after installing the cmake wheel"
    fi
  fi
  for tool in cc c++; do
    command -v "$tool" >/dev/null ||
      fail "no C/C++ compiler ($tool) on PATH; install one (Debian: apt-get install build-essential)"
  done
  [[ -f "$PYINC/Python.h" ]] ||
    fail "no Python.h in $PYINC; install the Python headers (Debian: apt-get install python3-dev)"
  [[ -n "$NPINC" ]] || fail "numpy is not importable from $PY (the generated C code needs it)"

  # The wheels' exported CMake files name the wheel builder's Python include dirs (a
  # /opt/python/cpXY-cpXY tree that exists only there); anything linking the generated Python
  # typesupport of std_msgs & co. fails to configure until they point at this environment's.
  step="rewriting the wheels' hard-coded Python include paths"
  "$PY" -c '
import pathlib, re, sys
share, pyinc, npinc = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
for f in share.glob("*/cmake/*.cmake"):
    text = f.read_text()
    if "/opt/python/" not in text:
        continue
    new = re.sub(r"/opt/python/[^;\"\s]*/include/python3\.\d+", lambda m: pyinc, text)
    new = re.sub(r"/opt/python/[^;\"\s]*/numpy/_core/include", lambda m: npinc, new)
    if new != text:
        f.write_text(new)
        print("rewrote", f)
' "$PREFIX/share" "$PYINC" "$NPINC" >&3 2>&3
}

# build_package NAME SOURCE_DIR CHECK: build one rosidl package with plain CMake and install it
# into the prefix, unless its stamp says the same sources are installed already; CHECK is
# Python run from a fresh interpreter to prove the installed package.
build_package() {
  local name="$1" src="$2" check="$3"
  local build_dir="$BUILD_ROOT/$name" stamp stamp_file="$PREFIX/share/$1/build_interfaces.stamp"
  # Everything that should trigger a rebuild: sources, this script, the pinned wheels, the
  # target environment.
  stamp="$(
    {
      cd "$HERE"
      sha256sum build_interfaces.sh requirements-ros.txt requirements-ros-build.txt
      cd "$src"
      find . -type f \( -name '*.msg' -o -name '*.srv' -o -name CMakeLists.txt \
        -o -name package.xml \) | LC_ALL=C sort | xargs sha256sum
      echo "$PY_EXE $PY_VER $PREFIX $PURELIB"
    } | sha256sum | cut -c1-16
  )"
  if ((!force)) && [[ -z "$MISSING" ]] && [[ -f "$stamp_file" ]] &&
    [[ "$(cat "$stamp_file")" == "$stamp" ]] && [[ -f "$PURELIB/$name/msg/__init__.py" ]]
  then
    return 0
  fi
  prepare

  # A build tree configured for another environment (or an older layout) is thrown away rather
  # than trusted: CMake caches absolute paths.
  if ((force)) || [[ ! -f "$build_dir/.configured_for" ]] ||
    [[ "$(cat "$build_dir/.configured_for")" != "$PY_EXE $PREFIX $src" ]]; then
    rm -rf "$build_dir"
  fi
  mkdir -p "$build_dir"

  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if [[ ! -f "$build_dir/CMakeCache.txt" ]]; then
    step="configuring $name (cmake)"
    # AMENT_PREFIX_PATH / CMAKE_PREFIX_PATH pinned to this prefix so a sourced ROS install
    # cannot mix its packages into a build against the wheels.
    AMENT_PREFIX_PATH="$PREFIX" CMAKE_PREFIX_PATH="$PREFIX" cmake -S "$src" -B "$build_dir" \
      "${generator[@]}" \
      -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_TESTING=OFF \
      -DCMAKE_PREFIX_PATH="$PREFIX" \
      -DCMAKE_INSTALL_PREFIX="$PREFIX" \
      -DPYTHON_INSTALL_DIR="$(realpath --relative-to="$PREFIX" "$PURELIB")" \
      -DPython3_EXECUTABLE="$PY_EXE" \
      >&3 2>&3
    echo "$PY_EXE $PREFIX $src" >"$build_dir/.configured_for"
  fi

  step="building $name"
  local jobs
  jobs="$(nproc 2>/dev/null || echo 2)"
  AMENT_PREFIX_PATH="$PREFIX" cmake --build "$build_dir" --parallel "$jobs" >&3 2>&3

  # Remove what an earlier install left, so a message deleted from msg/ does not stay
  # importable.
  step="installing $name into $PREFIX"
  [[ -n "$PREFIX" && -n "$PURELIB" ]] || fail "empty install prefix"
  rm -rf "${PURELIB:?}/$name" "$PURELIB"/"$name"-*.egg-info \
    "$PREFIX/share/$name" "$PREFIX/include/$name" \
    "$PREFIX"/lib/lib"$name"__*.so
  cmake --install "$build_dir" >&3 2>&3

  # Prove it from a fresh interpreter outside the source tree: the Python package imports and
  # its C typesupport (what rclpy needs to publish) loads.
  step="checking the installed $name"
  (cd / && "$PY" -c "$check") >&3 2>&3

  echo "$stamp" >"$stamp_file"
}

build_package guard_interfaces "$PKG_SRC" '
from guard_interfaces.msg import ActionProposal, Decision, Hazard
from guard_interfaces.srv import CheckAction
for t in (ActionProposal, Decision, Hazard, CheckAction):
    t.__class__.__import_type_support__()
    assert t.__class__._TYPE_SUPPORT is not None, t
'

# foxglove_msgs: only where none is installed (a ROS install's ros-$ROS_DISTRO-foxglove-msgs
# wins), or where this script built it before. Its sources are generated from the guard
# library's definitions, the ones `guard replay --write-mcap` stores in its files.
step="generating the foxglove_msgs sources"
FOX_SRC="$BUILD_ROOT/foxglove_msgs_src"
fox="$("$PY" - "$FOX_SRC" "$PREFIX/share/foxglove_msgs/build_interfaces.stamp" 2>&3 <<'PYEOF'
import importlib.util, os, pathlib, sys
src, ours = pathlib.Path(sys.argv[1]), os.path.exists(sys.argv[2])
if importlib.util.find_spec("foxglove_msgs") is not None and not ours:
    sys.exit(print("installed") or 0)
try:
    from guard.replay.foxglove import FOXGLOVE_MSGS
except ImportError as exc:
    sys.exit(print("no-guard", exc) or 0)
names = [name.rsplit("/", 1)[1] for name in FOXGLOVE_MSGS]
files = {f"msg/{name.rsplit('/', 1)[1]}.msg": text.replace("foxglove_msgs/", "")
         for name, text in FOXGLOVE_MSGS.items()}
files["CMakeLists.txt"] = """cmake_minimum_required(VERSION 3.8)
project(foxglove_msgs)
find_package(ament_cmake REQUIRED)
find_package(rosidl_default_generators REQUIRED)
find_package(builtin_interfaces REQUIRED)
rosidl_generate_interfaces(${PROJECT_NAME}
%s
  DEPENDENCIES builtin_interfaces
)
ament_export_dependencies(rosidl_default_runtime)
ament_package()
""" % "\n".join(f'  "msg/{n}.msg"' for n in names)
files["package.xml"] = """<?xml version="1.0"?>
<package format="3">
  <name>foxglove_msgs</name>
  <version>0.0.0</version>
  <description>
    The foxglove_msgs image annotation messages (ImageAnnotations and its parts), field for
    field as Foxglove publishes them, built by embodied-guard where no foxglove_msgs exists.
  </description>
  <maintainer email="maintainers@embodied-guard.org">embodied-guard maintainers</maintainer>
  <license>MIT</license>
  <buildtool_depend>ament_cmake</buildtool_depend>
  <buildtool_depend>rosidl_default_generators</buildtool_depend>
  <depend>builtin_interfaces</depend>
  <exec_depend>rosidl_default_runtime</exec_depend>
  <member_of_group>rosidl_interface_packages</member_of_group>
  <export>
    <build_type>ament_cmake</build_type>
  </export>
</package>
"""
for rel, text in files.items():
    path = src / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists() or path.read_text() != text:
        path.write_text(text)
print("build")
PYEOF
)" || fail "could not run $PY"
case "$fox" in
  build)
    build_package foxglove_msgs "$FOX_SRC" '
from foxglove_msgs.msg import ImageAnnotations
ImageAnnotations.__class__.__import_type_support__()
assert ImageAnnotations.__class__._TYPE_SUPPORT is not None
'
    ;;
  installed) echo "foxglove_msgs: an installed one is used" >&3 ;;
  *) echo "foxglove_msgs not built: the guard library is not importable ($fox)" >&3 ;;
esac
