#!/usr/bin/env bash
# Proves the lower bounds of pyproject.toml: installs every dependency at exactly its `>=X` bound
# (`[project] dependencies` and the `dev` extra) into a fresh venv, checks that pip really installed
# X, then runs the fast tests (`-m "not slow"`) against that venv.
#   bash scripts/tools/check_min_versions.sh [--tests PATHS...] [--python PYTHON] [--keep]
#     --tests PATHS...  run only these test files or folders (default: the whole fast suite)
#     --python PYTHON   interpreter the venv is made from (default: $PYTHON or python3; >= 3.11,
#                       whose tomllib reads pyproject.toml)
#     --keep            leave the venv on disk and print its path (default: deleted on exit)
# Exits non-zero when a dependency lacks a `>=` bound, when pip installs another version than the
# bound, or when a test fails. The torch bound is a CUDA build from PyPI: a few GB to download.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
python="${PYTHON:-python3}"
keep=0
tests=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --tests)
      shift
      while [[ $# -gt 0 && "$1" != --* ]]; do
        tests+=("$1")
        shift
      done
      if [[ ${#tests[@]} -eq 0 ]]; then
        echo "check_min_versions: --tests expects one or more test paths, found none" >&2
        exit 2
      fi
      ;;
    --python)
      [[ $# -ge 2 ]] || { echo "check_min_versions: --python expects an interpreter" >&2; exit 2; }
      python="$2"
      shift 2
      ;;
    --keep)
      keep=1
      shift
      ;;
    -h | --help)
      sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "check_min_versions: unknown argument '$1' (expected --tests PATHS..., --python, --keep)" >&2
      exit 2
      ;;
  esac
done

work="$(mktemp -d "${TMPDIR:-/tmp}/maskrank-minver.XXXXXX")"
cleanup() {
  if [[ ${keep} -eq 1 ]]; then
    echo "check_min_versions: venv kept at ${work}/venv"
  else
    rm -rf "${work}"
  fi
}
trap cleanup EXIT

# One line per requirement: `<pip requirement pinned to ==X><TAB><distribution name><TAB><X>`.
# A dependency without a `>=` bound is an error: its tested version would be whatever is newest.
"${python}" - "${repo}/pyproject.toml" > "${work}/pins.tsv" <<'PY'
import re
import sys
import tomllib

with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
requirements = list(project["dependencies"]) + list(project["optional-dependencies"]["dev"])
# name, optional [extras], then the specifier list; an environment marker after ';' is kept as is
pattern = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")
bad = []
for requirement in requirements:
    match = pattern.match(requirement)
    lower = None
    if match:
        name, extras, specifiers, marker = match.groups()
        for spec in filter(None, (s.strip() for s in specifiers.split(","))):
            if spec.startswith(">="):
                lower = spec[2:].strip()
    if lower is None:
        bad.append(requirement)
        continue
    pinned = f"{name}{extras or ''}=={lower}{(' ' + marker) if marker else ''}"
    print(f"{pinned}\t{name}\t{lower}")
if bad:
    sys.exit(f"check_min_versions: no '>=' lower bound in pyproject.toml for: {', '.join(bad)}")
PY

mapfile -t pinned < <(cut -f1 "${work}/pins.tsv")
echo "check_min_versions: installing ${#pinned[@]} lower bounds into ${work}/venv"
"${python}" -m venv "${work}/venv"
venv_python="${work}/venv/bin/python"
"${venv_python}" -m pip install -q "${pinned[@]}"
"${venv_python}" -m pip install -q --no-deps -e "${repo}"

echo "check_min_versions: pip freeze of the pinned packages"
"${venv_python}" - "${work}/pins.tsv" <<'PY'
import re
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version

from packaging.version import Version


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


freeze = subprocess.run(
    [sys.executable, "-m", "pip", "freeze"], capture_output=True, text=True, check=True
).stdout.splitlines()
by_name = {canonical(re.split(r"[=@ ]", line, maxsplit=1)[0]): line for line in freeze}
wrong = []
for line in open(sys.argv[1]):
    _, name, lower = line.rstrip("\n").split("\t")
    print("  " + by_name.get(canonical(name), f"{name}: not in pip freeze"))
    try:
        installed = version(name)
    except PackageNotFoundError:
        wrong.append(f"{name}: declared >={lower}, not installed")
        continue
    # PEP 440 equality: 2.4 == 2.4.0; a local build tag (torch 2.7.0+cpu) is the same release
    if Version(Version(installed).public) != Version(lower):
        wrong.append(f"{name}: declared >={lower}, installed {installed}")
if wrong:
    sys.exit("check_min_versions: installed versions differ from the bounds:\n  " + "\n  ".join(wrong))
print("check_min_versions: every pinned package is installed at its lower bound")
PY

echo "check_min_versions: fast tests on the lower bounds"
cd "${repo}"
start=${SECONDS}
status=0
PATH="${work}/venv/bin:${PATH}" "${venv_python}" -m pytest -m "not slow" -q -x -p no:cacheprovider \
  "${tests[@]}" || status=$?
echo "check_min_versions: tests exited ${status} after $((SECONDS - start)) s"
exit "${status}"
