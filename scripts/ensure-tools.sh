#!/usr/bin/env bash
# Install the system tools the tests need that pip and npm do not bring, only when missing:
#   prometheus, promtool  (Debian package `prometheus`): the observability tests run a real
#                          Prometheus and check every PromQL expression with promtool.
# Quick when everything is present (a few `command -v`). Needs root (or sudo) to install.
set -euo pipefail

missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null 2>&1 || { echo "install the Debian package prometheus (needs root)" >&2; exit 1; }
    sudo="sudo"
fi
command -v apt-get >/dev/null 2>&1 || {
    echo "no apt-get here: install Prometheus 2.x so that prometheus and promtool are on PATH" >&2
    exit 1
}
echo "installing: prometheus (prometheus, promtool)"
$sudo apt-get update -qq
# NOTE: the package's service is not wanted (tests start their own on a free port); in a
# container without an init system nothing starts anyway.
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends prometheus >/dev/null
# NOTE: on a machine with systemd the package starts a Prometheus on :9090, the default
# metrics port of Ferry's processes; the tests and `ferry dev` want that port free.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
    $sudo systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
