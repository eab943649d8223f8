#!/usr/bin/env bash
# The GPU evidence issues 2-4 ask for, in steps that each fit one 10-minute device call.
#   bash tools/gpu-evidence.sh baseline   # record baselines/<gpu>/wan22.json (full suite) + a profiled trace
#   bash tools/gpu-evidence.sh unchanged[N] # full suite against that baseline: must pass
#   bash tools/gpu-evidence.sh controls   # +10% on single_frame, then expand as single_frame: both must fail
#   bash tools/gpu-evidence.sh repeatN    # latent prep + VAE encode again against the baseline (false-positive check)
# Issue 9 (counters, device time, calibration); CAL names one calibration folder across calls:
#   bash tools/gpu-evidence.sh calib-baseline  # 3 runs of the calibration subset merged into its baseline
#   bash tools/gpu-evidence.sh calib-aaN       # 5 more unchanged runs (call twice: 10 A/A runs)
#   bash tools/gpu-evidence.sh calib-gpu       # 10 runs per injected size 2, 3, 5, 10% (split by SIZES=0.02 ...)
#   bash tools/gpu-evidence.sh calib-report    # calibration.md: false alarms, detection, counters identical across runs
#   bash tools/gpu-evidence.sh counter-controls  # --inject-sync and --inject-kernel, 3 runs each: must fail naming the counter
# Issue 11 (e2e fidelity):
#   bash tools/gpu-evidence.sh e2e-stages      # one e2e request profiled per stage, beside the latent-prep stage alone
#   bash tools/gpu-evidence.sh extended        # e2e with --grid extended (the upstream 832x480 case, first_frame_2d)
#   bash tools/gpu-evidence.sh dit30           # e2e at full TI2V-5B depth, both sizes, its own baseline label
# Issue 12 (first_frame_2d):
#   bash tools/gpu-evidence.sh first-frame     # speed options, FLOPs, roofline, bf16 errors against the fp32 oracle
#   bash tools/gpu-evidence.sh revert-2d       # single_frame under the first_frame_2d label: the 1.5x check must fail
#   bash tools/gpu-evidence.sh compare-aa[N]   # N (default 5) A/A compares of the single_frame latent-prep cases
#   bash tools/gpu-evidence.sh compare-inject[N] # N (default 10) compares with +2% injected on single_frame
# The compare steps print, per case, the spread of the median paired ratio over the runs, the CI half-width,
# the per-trial IQR, and the smallest effect flagged (tools/compare-spread.py). THRESHOLD (default 0.01) is
# their --threshold: an effect exactly at the threshold is flagged half the time by construction, so the +2%
# injection is judged at 1%, and the A/A runs at the same 1%, the stricter test of false alarms.
# Merge the baseline with later unchanged runs so that the gate sees run-to-run noise (>= 3 runs):
#   python -m bench baseline --from-run results/baseline --from-run results/unchanged --from-run results/repeat1 --force
# Needs the wheels from tools/gpu-wheels.sh in .whl/ (carried to the device, which is offline); with them
# on PYTHONPATH the sessions find every dependency present and install nothing. Everything it writes
# lands in results/ and baselines/, and is packed into $OUT/evidence-<step>.tar.gz when $OUT is set.
# A step whose gate fails (as the controls must) does not stop the script: each exit status is in its log.
set -uo pipefail
step=${1:?usage: gpu-evidence.sh STEP (the steps are listed at the top of this file)}
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
# A/A base: a commit holding exactly this working tree's tracked files (a copied tree may come without .git).
snapshot() {
  if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
    git init -q && git add -A && git -c user.email=bench@localhost -c user.name=bench commit -qm "evidence snapshot"
  fi
  local stash
  stash=$(git stash create 2>/dev/null)  # the uncommitted changes as a commit, HEAD and the tree untouched
  echo "${stash:-$(git rev-parse HEAD)}"
}
# compares NAME N ARGS...: up to N A/A compares of the single_frame latent-prep cases, none started after
# COMPARE_WALL_S (so that the step fits a 10-minute call), then their summary.
compares() {
  local name=$1 n=$2 base tag=$(date -u +%H%M%S); shift 2
  base=$(snapshot)
  local start=$SECONDS
  for i in $(seq 1 "$n"); do
    if (( SECONDS - start > ${COMPARE_WALL_S:-480} )); then echo "stopping after $((i - 1)) compares (time)"; break; fi
    run "$name-$tag-$i" python3 -m nox -s compare -- --base "$base" -k 'test_latent_prep and single_frame' \
      --threshold "${THRESHOLD:-0.01}" --run-id "$name-$tag-$i" "$@"
  done
  PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} python3 tools/compare-spread.py results/"$name-$tag"-* \
    | tee "results/logs/$name-$tag-spread.log"
}
case $step in
  compare-aa*)
    n=${step#compare-aa}
    compares compare-aa "${n:-5}" ;;
  compare-inject*)
    n=${step#compare-inject}
    compares compare-inject "${n:-10}" --inject-slowdown 'latent_prep[single_frame-*]=0.02' ;;
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
  calib-baseline)
    run "$step" python3 -m nox -s calibrate -- --calibration-dir "results/${CAL:-calibration}" --step baseline ;;
  calib-aa*)
    run "$step" python3 -m nox -s calibrate -- --calibration-dir "results/${CAL:-calibration}" --step aa \
      --aa-runs "${AA_RUNS:-10}" ;;
  calib-gpu)
    run "$step" python3 -m nox -s calibrate -- --calibration-dir "results/${CAL:-calibration}" --step gpu \
      --sizes "${SIZES:-0.02,0.03,0.05,0.1}" --runs-per-size "${RUNS_PER_SIZE:-10}" ;;
  calib-report)
    run "$step" python3 -m nox -s calibrate -- --calibration-dir "results/${CAL:-calibration}" --step report ;;
  counter-controls)
    for i in 1 2 3; do
      run "sync$i" python3 -m nox -s bench -- --run-id "sync$i" --require-baseline --case 'latent_prep[single_frame-*]' \
        --exclude '*' --inject-sync 'latent_prep[single_frame-*]'
      run "kernel$i" python3 -m nox -s bench -- --run-id "kernel$i" --require-baseline --case 'latent_prep[single_frame-*]' \
        --exclude '*' --inject-kernel 'latent_prep[single_frame-*]'
    done ;;
  e2e-stages)
    run e2e-stages-720p python3 tools/e2e_stage_counters.py --preset wan22 --height 720 --width 1280 --num-frames 81
    run e2e-stages-480p python3 tools/e2e_stage_counters.py --preset wan22 --height 480 --width 832 --num-frames 81 ;;
  extended)
    run "$step" python3 -m nox -s bench -- --run-id "$step" --grid extended -k test_e2e --exclude '*' ;;
  dit30)
    run "$step" python3 -m nox -s bench -- --run-id "$step" --grid extended --dit-layers 30 -k test_e2e \
      --case 'e2e[single_frame-*]' --case 'e2e[expand-*]' ;;
  first-frame)
    run "$step" python3 tools/first_frame_speed.py ;;
  revert-2d)
    run "$step" python3 -m nox -s bench -- --run-id "$step" --case 'latent_prep[*-81f]' --exclude '*' --revert-first-frame ;;
  *) echo "unknown step: $step" >&2; exit 2 ;;
esac
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/evidence-$step.tar.gz" --exclude='*.json.gz' results baselines
  cp results/traces/*.json.gz "$OUT/" 2>/dev/null || true
fi
