#!/usr/bin/env bash
# The GPU evidence issues 2-4 ask for, in steps that each fit one 10-minute device call.
#   bash tools/gpu-evidence.sh baseline   # record baselines/<gpu>/wan22.json (full suite) + a profiled trace
#   bash tools/gpu-evidence.sh unchanged[N] # full suite against that baseline: must pass
#   bash tools/gpu-evidence.sh controls   # +10% on single_frame, then expand as single_frame: both must fail
#   bash tools/gpu-evidence.sh repeatN    # latent prep + VAE encode again against the baseline (false-positive check)
# Merge the baseline with later unchanged runs so that the gate sees run-to-run noise (>= 3 runs):
#   python -m bench baseline --from-run results/baseline --from-run results/unchanged --from-run results/repeat1 --force
# Needs the wheels from tools/gpu-wheels.sh in .whl/ (carried to the device, which is offline); with them
# on PYTHONPATH the sessions find every dependency present and install nothing. Everything it writes
# lands in results/ and baselines/, and is packed into $OUT/evidence-<step>.tar.gz when $OUT is set.
# A step whose gate fails (as the controls must) does not stop the script: each exit status is in its log.
set -uo pipefail
step=${1:?usage: gpu-evidence.sh baseline|unchanged|controls|repeatN}
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
fi
export PYTHONUNBUFFERED=1
mkdir -p results/logs
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee results/logs/gpu.txt
run() {  # run NAME CMD...: log the output, keep the exit status
  local name=$1; shift
  echo "\$ $*" | tee "results/logs/$name.log"
  "$@" 2>&1 | tee -a "results/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "exit status: $rc" | tee -a "results/logs/$name.log"
}
case $step in
  baseline)
    run baseline python3 -m nox -s baseline -- --run-id baseline
    run profile python3 -m nox -s profile -- --num-profiled-timesteps 3 --trace-dir results/traces ;;
  unchanged*)
    run "$step" python3 -m nox -s bench -- --run-id "$step" --require-baseline ;;
  controls)
    run slowed python3 -m nox -s bench -- --run-id slowed --require-baseline -k test_latent_prep \
      --exclude 'vae_encode[*]' --exclude 'e2e[*]' --inject-slowdown 'latent_prep[single_frame-*]=0.10'
    run reverted python3 -m nox -s bench -- --run-id reverted --require-baseline -k test_latent_prep \
      --exclude 'vae_encode[*]' --exclude 'e2e[*]' --revert-single-frame ;;
  repeat*)  # another unchanged run of the fast (launch-bound) cases: how often does unchanged code pass?
    run "$step" python3 -m nox -s bench -- --run-id "$step" --require-baseline -k 'not test_e2e' --exclude 'e2e[*]' ;;
  *) echo "unknown step: $step" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/evidence-$step.tar.gz" --exclude='*.json.gz' results baselines
  cp results/traces/*.json.gz "$OUT/" 2>/dev/null || true
fi
