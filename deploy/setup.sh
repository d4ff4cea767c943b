#!/usr/bin/env bash
# Fresh-machine set-up for igrec, safe to run again (it only does what is missing):
#   1. a JDK 17+ and Maven from Debian's packages, if missing (Kafka 4 and Neo4j 5.26 run on Java 17);
#   2. the Python virtual environment (.venv) with the pinned dependencies of requirements.lock;
#   3. the Kafka and Neo4j jars from Maven Central into deploy/.cache (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${IGREC_VENV:-.venv}
PYTHON=${PYTHON:-python3}
UV_VERSION=0.13.9

missing=()
javac -version 2>&1 | grep -Eq '^javac (1[7-9]|[2-9][0-9])' || missing+=(openjdk-17-jdk-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]} from Debian's packages"
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: igrec needs Python 3.11+ ($PYTHON is $("$PYTHON" --version)); set PYTHON=python3.11" >&2; exit 1; }
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install -q "uv==$UV_VERSION"
echo "setup: Python dependencies (requirements.lock) into $VENV"
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" -r requirements.lock
"$VENV/bin/uv" pip install -q --python "$VENV/bin/python" --no-deps -e .
"$VENV/bin/igrec" stack fetch
echo "setup: done"
