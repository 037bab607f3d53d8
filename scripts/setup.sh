#!/usr/bin/env bash
# Set-up for MeDiBench, idempotent: a virtual environment in .venv with medibench installed in editable mode,
# torch pinned to the CPU wheel by constraints.txt. With --test: the test extras, plus the test-only data
# (a real H&E image from the tiatoolbox wheel, fetched without its dependencies), plus the example plug-in
# examples/hed_jitter (editable; tests/benchmark/test_plugins.py runs it), plus Debian's chromium and
# poppler-utils for the report tests and Debian's slurm-wlm and munge for the SLURM tests (a one-node cluster the
# tests start: tests/slurm_cluster.py); installed with apt-get when missing, which needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
extras=""
test_mode=0
for arg in "$@"; do
  case "$arg" in
    --test) test_mode=1; extras="[test]" ;;
    *) echo "usage: scripts/setup.sh [--test]" >&2; exit 2 ;;
  esac
done
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e ".${extras}"
if [ "$test_mode" = 1 ]; then
  .venv/bin/python tests/real_he.py >/dev/null
  # the example plug-in package: registers the method hed_jitter through the medibench.methods entry point
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt --no-deps \
    -e examples/hed_jitter
  # The report tests open the leaderboard in headless Chromium and read the PDF with poppler (pdftoppm, pdfimages).
  if [ ! -x /usr/bin/chromium ] || ! command -v pdftoppm >/dev/null || ! command -v pdfimages >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium poppler-utils
    else
      echo "error: the report tests need Debian's chromium and poppler-utils; as root, run:" >&2
      echo "  apt-get update && apt-get install -y --no-install-recommends chromium poppler-utils" >&2
      exit 1
    fi
  fi
  # The SLURM tests start munged, slurmctld and slurmd on 127.0.0.1 and submit with sbatch (and srun in the jobs).
  if [ ! -x /usr/sbin/munged ] || [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] \
      || ! command -v sbatch >/dev/null || ! command -v srun >/dev/null; then
    if [ "$(id -u)" = 0 ]; then
      apt-get update
      DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurm-wlm munge
    else
      echo "error: the SLURM tests need Debian's slurm-wlm and munge; as root, run:" >&2
      echo "  apt-get update && apt-get install -y --no-install-recommends slurm-wlm munge" >&2
      exit 1
    fi
  fi
fi
echo "medibench set up in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
