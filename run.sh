#!/usr/bin/env bash
# The project's one entry point, for people and for CI (see README.md).
#   ./run.sh setup        install what the lab and the tests need (idempotent)
#   ./run.sh conformance  set up, boot a 3-node netlab, run the suite, write reports, tear down
#   ./run.sh test         set up, then the project's own checks: ruff, mypy, pytest tests
#   ./run.sh bench [--nodes 3,10,30]  set up, benchmark suite and lab, write bench/results.*
#   ./run.sh bench --soak N           the suite N times under each control-plane fault
#                                     (bench/soak.py), its table into bench/results.md
#   ./run.sh bench --real-k8s [--runs N]  the 3-node suite on the genuine Kubernetes fixture
#                                     (../shared/realk8s), young and warm kubelets, serial and
#                                     -n 2 (bench/realk8s.py), its table into bench/results.md
#   ./run.sh wheel        build the wheel users install into dist/ (tests/e2e/test_wheel.py
#                         builds its own, installs it into a fresh virtualenv and runs the suite)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
VENV="$ROOT/.venv"

# Debian packages: the lab's data plane (runc, CNI plugins, iptables, nftables for the
# NetworkPolicy engine, iproute2) and the tools a
# probe image carries (python3 with scapy, tcpdump, curl), because lab containers see the host's files.
# openssl makes the lab API server's serving certificate; chromium (headless) checks the HTML report.
APT_PACKAGES=(runc containernetworking-plugins iptables nftables iproute2 openssl python3 python3-venv python3-scapy tcpdump curl netcat-openbsd util-linux chromium)

say() { printf '%s\n' "$*" >&2; }

need_root() {
  if [ "$(id -u)" -ne 0 ]; then
    say "run.sh: $1 needs root (network namespaces, runc, apt); run it with sudo"
    exit 2
  fi
}

install_debian_packages() {
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    if dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
      say "setup: skip $pkg (installed)"
    else
      missing+=("$pkg")
    fi
  done
  if ! command -v kubectl >/dev/null 2>&1; then
    missing+=(kubernetes-client)
  else
    say "setup: skip kubectl (found at $(command -v kubectl))"
  fi
  if [ ${#missing[@]} -gt 0 ]; then
    say "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

python_for_venv() {
  # Prefer the interpreter on PATH when it is new enough; Debian 12's python3 is 3.11.
  local py
  for py in python3.11 python3 /usr/bin/python3; do
    if command -v "$py" >/dev/null 2>&1 &&
      "$py" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$py"
      return
    fi
  done
  say "setup: no Python >= 3.11 with venv found"
  exit 2
}

create_venv() {
  if [ -x "$VENV/bin/python" ]; then
    say "setup: skip .venv (exists)"
  else
    say "setup: creating .venv"
    "$(python_for_venv)" -m venv "$VENV"
  fi
  # Reinstall only when the project's metadata changed since the last install.
  local stamp="$VENV/.k8s-netconform-installed" want
  want=$(sha256sum pyproject.toml | cut -d' ' -f1)
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    say "setup: skip pip install (pyproject.toml unchanged)"
  else
    say "setup: installing the project and its extras into .venv"
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e ".[lab,dev]"
    echo "$want" >"$stamp"
  fi
}

setup() {
  need_root setup
  install_debian_packages
  create_venv
}

conformance() {
  setup
  mkdir -p reports
  local kubeconfig lab=netconform
  "$VENV/bin/netlab" down --name "$lab" --quiet || true
  trap '"$VENV/bin/netlab" down --name "'"$lab"'" --quiet || true' EXIT
  kubeconfig=$("$VENV/bin/netlab" up --nodes 3 --name "$lab" | tail -n 1)
  # The lab's outside host (a namespace on its fabric) runs the edge server: the edge checks too.
  local outside=() value
  while read -r value; do outside+=(--external-host "$value"); done <"/run/netlab/$lab/external-hosts"
  local status=0
  "$VENV/bin/pytest" --kubeconfig "$kubeconfig" "${outside[@]}" \
    --junitxml=reports/junit.xml --html=reports/report.html --self-contained-html || status=$?
  "$VENV/bin/netlab" down --name "$lab" --quiet || true
  trap - EXIT
  say ""
  say "reports: $ROOT/reports/junit.xml"
  say "         $ROOT/reports/report.html"
  say "         $ROOT/reports/summary.json"
  return $status
}

project_tests() {
  setup
  "$VENV/bin/ruff" check .
  "$VENV/bin/ruff" format --check .
  "$VENV/bin/mypy"
  # The layers of the code (pyproject.toml [tool.importlinter]; tests/unit/test_layers.py the rest).
  "$VENV/bin/lint-imports" --no-cache
  # Two workers, each module whole on one of them (its lab pool or cluster made once): the
  # detection matrix's pool keeps one busy while the other runs the rest. The slowest steps
  # are listed at the end, so a CI log shows where the minutes go.
  "$VENV/bin/pytest" tests -n 2 --dist loadfile --durations=20 "$@"
}

benchmarks() {
  setup
  # The plot needs matplotlib (the `bench` extra), installed on first use only.
  if ! "$VENV/bin/python" -c 'import matplotlib' 2>/dev/null; then
    say "bench: installing the bench extra (matplotlib) into .venv"
    "$VENV/bin/python" -m pip install -q -e ".[lab,dev,bench]"
  fi
  "$VENV/bin/python" -m bench "$@"
}

wheel() {
  setup
  "$VENV/bin/python" -m pip wheel --no-deps -q -w dist .
  say "wheel: $(ls "$ROOT"/dist/k8s_netconform-*.whl)"
}

case "${1:-}" in
  setup) setup ;;
  conformance) conformance ;;
  test) shift; project_tests "$@" ;;
  bench) shift; benchmarks "$@" ;;
  wheel) wheel ;;
  *)
    say "usage: ./run.sh setup | conformance | test [pytest args] | bench [--nodes 3,10,30 | --soak N | --real-k8s] | wheel"
    exit 2
    ;;
esac
