#!/usr/bin/env bash
# The GPU measurements this suite still lacks, in resumable steps sized to one run of about 530 s on one
# H100/H200 (a runner that allows about 590 s per command, with the wheels staged; fetch the wheels
# first with `bash tools/gpu-wheels.sh .whl`):
#
#     bash tools/gpu-evidence.sh session
#
# It runs the steps of PLAN in order, skips a step marked done by an earlier call (results/evidence/done/), and
# starts none that its estimate says would end after SESSION_S seconds (default 530). A counting step
# (calib, compare-aa, compare-inject, compare-inject-gpu) starts runs while one more fits. Each step runs under
# `timeout`; results/evidence/ is packed into $OUT/evidence.tar.gz after every step. Unpack it into the
# checkout and commit it after the call: the next call resumes where this one stopped.
#
#     bash tools/gpu-evidence.sh STEP          # one step alone, whatever its marker says (SESSION_S still ends it)
#     bash tools/gpu-evidence.sh plan          # the calls PLAN needs by the estimates below; runs nothing
#     DRY_RUN=1 bash tools/gpu-evidence.sh ... # print the commands, run nothing (tests/tools/test_gpu_evidence.py)
#
# The plan, call by call, and what each buys: tools/GPU-PLAN.md. Steps: what they measure, the estimated
# seconds on one H100/H200 (from the H100 logs of 2026-11-23 in results/example/logs/ and per-request times;
# logs/durations.txt corrects them), and what must hold.
#   smoke             420  first-frame at 720p, an A/A compare of two cases, the default suite (run full-1); one
#                          PASS/FAIL line per check (see smoke() below)
#   first-frame       300  speed of every mode (torch.compile default only), capture cost, FLOPs and roofline,
#                          bf16 errors against the fp32 oracle, at 720p and 480p
#   revert-2d          90  single_frame under the first_frame_2d label: the in-run 1.5x check must fail (exit 1)
#   full-1, full-2    300  the default suite, e2e included (full-1 is the smoke's run), less diffusers' cases: the
#                          diffusers step measures those (-k 'not diffusers' keeps these runs' estimates)
#   extended          200  e2e on the extended grid, only what the full runs lack: 832x480 (the upstream case) in
#                          all three strategies, and first_frame_2d at 720p
#   baseline           20  merge full-1/2 and fast-1..3 into baselines/<gpu>/wan22.json (replaces it: more runs)
#   e2e-stages        180  one profiled e2e request per size, counted per stage (GC included)
#   compare-aa      n x 100  A/A compares of the single_frame latent-prep cases, judged at THRESHOLD (0.01)
#   compare-inject  n x 100  the same with a +2% host slowdown in the head: the detection rate at 1%
#   compare-inject-gpu n x 100  the same with +2% GPU work in the head (--inject-gpu-work)
#   compare-twelve    360  one A/A compare of the twelve latent-prep cases (single_frame and expand): <= 300 s
#   fast-1..3         150  the suite less e2e (excluded from the gate: the baseline holds them) and less diffusers'
#                          cases: with full-1/2, five unchanged runs of every profiled case (the counters' agreement)
#   diffusers         340  diffusers' Cosmos3OmniPipeline.prepare_latents as shipped and with the
#                          single-frame encode, at 1280x720 and 832x480 for 33, 81 and 121 frames: the in-run 2x check
#                          (single_frame over shipped) and the bitwise equivalence on diffusers' own latents; and one
#                          whole request through its __call__ (720p, 81 frames, 35 steps) split per stage; estimate:
#                          ours' expand cases' ~10 rounds of 0.6-2.4 s (720p) and 0.3-1.1 s (480p), plus the start,
#                          plus about 90 s for the request (ours takes about a minute per e2e case at this size)
#                          (not in the default PLAN, which it would take to nine calls: run it by name, in one call);
#                          then tools/diffusers_crosscheck.py at both sizes: preprocessing and latents against ours
#   dit36-480, dit36-720-single_frame, dit36-720-expand   420, 480, 480   e2e at full depth (36 layers, Cosmos3-Nano;
#                          480p is the upstream case: estimates from ~0.7 s per guided step at 480p, ~1.8 s at 720p)
#   baseline-dit36     20  merge the three into baselines/<gpu>/wan22-dit36.json
#   upstream-timers-single_frame, upstream-timers-expand   300, 200   the upstream case at full depth through
#                          `python -m cosmos3`: stage tables with the synchronised and the host (upstream's) stage
#                          timer, the first request of the shape apart, and (single_frame) cuDNN autotuning on
#   compare-calib-1, compare-calib-2   480 each   `calibrate --compare`: 5 A/A compares of the three 720p
#                          single_frame latent-prep cases (33/81/121f, K=4) per call, their false alarms, spreads and GPU state
#                          (not in the default PLAN: run them by name)
#   calib         12 x 60  calibration, sized to fit: 3 baseline, 3 A/A, 2 at each of +3/10%, 1 sync, 1 kernel run
#   calib-report       30  calibration.md, calibration.json and the plot, from every calibration run so far
# The default PLAN: 8 calls (`plan` prints them); the full-depth steps are left out of it (run them by name).
set -uo pipefail
E=${EVIDENCE:-results/evidence}
SESSION_S=${SESSION_S:-530}
PLAN=${PLAN:-"smoke revert-2d full-2 baseline fast-1 fast-2 fast-3 baseline compare-twelve extended e2e-stages \
first-frame compare-aa compare-inject compare-inject-gpu calib calib-report"}
AA_COMPARES=${AA_COMPARES:-3} INJECT_COMPARES=${INJECT_COMPARES:-2}
CAL=$E/calibration
CAL_RUNS=(--baseline-runs 3 --aa-runs 3 --runs-per-size 2 --sizes 0.03,0.1 --runs-per-control 1)
CAL_TOTAL=12  # 3 + 3 + 2 x 2 + 2 x 1
declare -A EST=([smoke]=420 [first-frame]=300 [revert-2d]=90 [full-1]=300 [full-2]=300 [extended]=200 [baseline]=20
  [e2e-stages]=180 [compare-aa]=100 [compare-inject]=100 [compare-inject-gpu]=100 [compare-twelve]=360 [fast-1]=150 [fast-2]=150 [fast-3]=150 [diffusers]=340
  [compare-calib-1]=480 [compare-calib-2]=480 [dit36-480]=420 [dit36-720-single_frame]=480 [dit36-720-expand]=480 [baseline-dit36]=20 [upstream-timers-single_frame]=300 [upstream-timers-expand]=200 [calib]=60
  [calib-report]=30)  # for a counting step: one run
step=${1:?usage: gpu-evidence.sh session | STEP (the steps are listed at the top of this file)}
dry=${DRY_RUN:-}
if [ "$step" = session ] || [ "$step" = plan ]; then
  for s in $PLAN; do  # all checked before anything runs
    if [ -z "${EST[$s]:-}" ]; then echo "unknown step in PLAN: $s" >&2; exit 2; fi
  done
fi
# The calls the steps of PLAN need by the estimates in EST, simulated as `session` would run them: each call
# starts after START_S (the wheels' install, nvidia-smi) and starts no step, nor a counting step's next run,
# that would end after SESSION_S. A merge counts as done once the runs it names are all measured.
START_S=${START_S:-20}
count() {  # the runs a step still has to make (1 for a step that is not counting)
  case $1 in
    calib) echo $(( CAL_TOTAL - $(ls "$CAL"/runs/*/run.json 2>/dev/null | wc -l) )) ;;
    compare-aa) echo $(( $AA_COMPARES - $(finished compare-aa) )) ;;
    compare-inject|compare-inject-gpu) echo $(( $INJECT_COMPARES - $(finished "$1") )) ;;
    *) if [ -f "$E/done/$1" ]; then echo 0; else echo 1; fi ;;
  esac
}
declare -A MERGES=([baseline]="smoke full-2 fast-1 fast-2 fast-3" [baseline-dit36]="dit36-480 dit36-720-single_frame dit36-720-expand")
plan_calls() {
  local -A n
  local s r k t line call=0 measured
  for s in $PLAN; do n[$s]=$(count "$s"); done
  while :; do
    line="" t=$START_S
    for s in $PLAN; do
      (( n[$s] > 0 && SESSION_S - t >= EST[$s] )) || continue
      k=1
      case $s in
        calib) k=$(( (SESSION_S - t - 30) / EST[$s] )) ;;
        compare-aa|compare-inject|compare-inject-gpu) k=$(( (SESSION_S - t) / EST[$s] )) ;;
      esac
      (( k > n[$s] )) && k=${n[$s]}
      (( k > 0 )) || continue
      if [ "$s" = calib-report ] && (( ${n[calib]:-0} > 0 )); then continue; fi  # done only after calib
      if [ -n "${MERGES[$s]:-}" ]; then
        measured=0
        for r in ${MERGES[$s]}; do (( ${n[$r]:-0} == 0 )) && measured=$(( measured + 1 )); done
        (( measured < 2 )) && continue
        (( measured < $(wc -w <<< "${MERGES[$s]}") )) && k=0  # merged now, and again once all are in
      fi
      t=$(( t + (k > 1 ? k : 1) * EST[$s] )); n[$s]=$(( n[$s] - k ))
      line+=" $s$( (( k > 1 )) && echo " x$k"; (( k == 0 )) && echo " (partial)")"
    done
    [ -z "$line" ] && break
    call=$(( call + 1 )); echo "call $call, ~$t s:$line"
  done
  for s in $PLAN; do (( n[$s] > 0 )) && echo "never fits in a call of $SESSION_S s: $s"; done
  echo "calls: $call"
}
if [ -z "$dry" ] && [ "$step" != plan ]; then
  if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --upgrade --target /tmp/site .whl/*.whl || exit 2
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH} PATH=/tmp/site/bin:$PATH
  fi
  mkdir -p "$E/logs" "$E/done"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$E/logs/gpu.txt"
fi
export PYTHONUNBUFFERED=1
left() { echo $(( SESSION_S - SECONDS )); }
# run NAME CMD...: log the output and the exit status, stopped (SIGTERM, then KILL) at the session's end.
quoted() { printf '%q ' "$@" | sed 's/ $//'; echo; }
LOGS=()  # the logs of the step running now: done_if looks for a traceback in them
CAP=0  # > 0: run stops its command after CAP seconds, or at the session's end if that comes first
run() {
  local name=$1; shift
  if [ -n "$dry" ]; then quoted "$@"; return 0; fi
  LOGS+=("$E/logs/$name.log")
  echo "\$ $(quoted "$@")" | tee "$E/logs/$name.log"
  local limit=$(( $(left) > 30 ? $(left) : 30 ))
  if (( CAP > 0 && CAP < limit )); then limit=$CAP; fi
  timeout -k 20 "$limit" "$@" 2>&1 | tee -a "$E/logs/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "exit status: $rc" | tee -a "$E/logs/$name.log"
  return "$rc"
}
# done_if NAME RC EXPECTED [RECORD...]: mark NAME done on a verdict, and only on one: exit 0, or exit 1 where
# a failing verdict is the one expected (a negative control), with every RECORD the step writes (a run's
# run.json, a tool's JSON) and no Python traceback in the step's logs. nox exits 1 for a traceback as for a
# verdict, so exit 1 alone proves nothing. A crash (a traceback, exit 2 or more, a missing record), a cut
# (124, 137) or an exit 1 where a pass was expected leaves NAME for a later call, and says why. An exit 0
# where 1 was expected (a control that did not fail) is a verdict: done, with a warning to read its log.
done_if() {
  local name=$1 rc=$2 expected=$3 record why=""; shift 3
  if [ -n "$dry" ]; then return; fi
  if [ "$rc" != 0 ] && [ "$rc" != 1 ]; then why="exit $rc"
  elif [ "$rc" = 1 ] && [ "$expected" != 1 ]; then why="exit 1, expected $expected"
  fi
  for record in "$@"; do [ -f "$record" ] || why="${why:+$why, }no $record"; done
  if (( ${#LOGS[@]} )) && grep -qs 'Traceback (most recent call last):' "${LOGS[@]}"; then
    why="${why:+$why, }a Python traceback in its log"
  fi
  if [ -n "$why" ]; then
    echo "$name: not done ($why): read its log; a later call runs it again"
    return
  fi
  echo "exit $rc (expected $expected) $(date -u +%FT%TZ)" > "$E/done/$name"
  if [ "$rc" != "$expected" ]; then echo "WARNING: $name exited $rc, expected $expected: read its log"; fi
}
pack() {
  if [ -n "$dry" ] || [ -z "${OUT:-}" ]; then return; fi
  tar czf "$OUT/evidence.tar.gz.tmp" "$E" baselines && mv "$OUT/evidence.tar.gz.tmp" "$OUT/evidence.tar.gz"
}
# fresh NAME: move aside what a call cut short left of run NAME (run ids are never reused), keeping it.
fresh() { if [ -z "$dry" ] && [ -e "$E/$1" ]; then mkdir -p "$E/stale" && mv "$E/$1" "$E/stale/$1-$(date -u +%s)"; fi; }
bench() { fresh "$1"; run "$1" python3 -m nox -s bench -- --results-dir "$E" --run-id "$1" "${@:2}"; }
rec() { echo "$E/$1/run.json"; }  # the run record a bench run NAME leaves
# The compare runs of one step so far: NAME-<i>, never another step's NAME-gpu-<i>.
finished() { ls -d "$E"/"$1"-[0-9]*/compare.json 2>/dev/null | wc -l; }
# compares NAME N ARGS...: A/A compares of the single_frame latent-prep cases until N exist or time is up,
# then the spread of their paired ratios (tools/compare-spread.py).
compares() {
  local name=$1 n=$2 base i; shift 2
  base=$(if [ -n "$dry" ]; then echo BASE; else snapshot; fi)
  for i in $(seq "$(( $(finished "$name") + 1 ))" "$n"); do
    if [ -z "$dry" ] && (( $(left) < ${EST[$name]} )); then echo "$name: time is up after $(finished "$name") of $n"; break; fi
    fresh "$name-$i"
    run "$name-$i" python3 -m nox -s compare -- --base "$base" -k 'test_latent_prep and single_frame' \
      --threshold "${THRESHOLD:-0.01}" --results-dir "$E" --run-id "$name-$i" "$@"
    pack
  done
  run "$name-spread" env PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" python3 tools/compare-spread.py "$E/$name"-[0-9]*
  if (( $(finished "$name") >= n )); then done_if "$name" 0 0; fi
}
# The A/A base: a commit holding exactly this working tree's tracked files (a copied tree may come without .git).
snapshot() {
  if ! git rev-parse --verify -q HEAD >/dev/null 2>&1; then
    git init -q && git add -A && git -c user.email=bench@localhost -c user.name=bench commit -qm "evidence snapshot"
  fi
  local stash
  stash=$(git stash create 2>/dev/null)  # the uncommitted changes as a commit, HEAD and the tree untouched
  echo "${stash:-$(git rev-parse HEAD)}"
}
# merge NAME RUN...: the runs that exist (two at least) merged into the baseline of their label (the command
# logs the file it wrote and the runs merged). Exit 3, not done, until every run named is in it: the step is
# then merged again where it next comes in PLAN, or in a later call.
merge() {
  local name=$1 from=() r missing=0; shift
  for r in "$@"; do
    if [ -f "$E/$r/run.json" ] || [ -n "$dry" ]; then from+=(--from-run "$E/$r"); else missing=$(( missing + 1 )); fi
  done
  if (( ${#from[@]} < 4 )); then echo "$name: needs at least two of $*"; return 3; fi
  run "$name" python3 -m bench baseline "${from[@]}" --force || return $?
  if (( missing )); then echo "$name: merged $(( $# - missing )) of $# runs; merged again once all exist"; return 3; fi
}
# The smoke: three checks that decide the most in the first call, each with a `PASS|FAIL <check>: <figure>`
# line (tools/smoke_summary.py) and its own marker, so a later call runs only the parts not done:
#   first-frame  720p: first_frame_2d (eager, packed, CUDA graph; no torch.compile) against the 3D encode,
#                and the bf16 errors against the fp32 oracle                                     ~45 s, cap 75
#   compare      an A/A compare (base: this tree, see snapshot) of latent_prep single_frame 1280x720 at
#                33 and 81 frames: it must pass, its median paired ratios near 1                 ~60 s, cap 100
#   bench        the default suite (`nox -s bench`, e2e included; diffusers' cases left to the diffusers step),
#                gated by its in-run checks only: an empty
#                --baselines-dir, so a committed baseline of another era is not used either. Its run id is
#                full-1: the baseline step merges it and the full-1 step is done  ~300 s, the rest of SMOKE_S
# The estimates: the default suite took 238-241 s on one H100 on 2026-11-23 (results/example/logs/, then
# without the six first_frame_2d cases and the profiled counter rounds: ~60 s more, estimated); the 2-case
# compare is 2 x 4 s of paired rounds (CASE_BUDGET_S) plus two workers' start; the speed tool at one size
# without compile modes is a VAE build, 35 rounds of four ~20 ms encodes and the fp32 error check.
SMOKE_S=${SMOKE_S:-420}
SMOKE_NO_BASELINE=no-baselines  # under $E, never created: no baseline for any device
# smoke_part MARKER CAP CHECK RECORD [SUMMARY-ARG...] -- CMD...: CMD under timeout (CAP seconds, or what is left
# of SMOKE_S), then its summary line, also added to logs/smoke.txt; MARKER done on a verdict with RECORD.
smoke_part() {
  local marker=$1 cap=$2 check=$3 record=$4 sargs=() t0=$SECONDS rc left_s; shift 4
  while [ "$1" != -- ]; do sargs+=("$1"); shift; done; shift
  if [ -f "$E/done/$marker" ]; then echo "== smoke $check: done in an earlier call ($(cat "$E/done/$marker"))"; return; fi
  left_s=$(( SMOKE_T0 + SMOKE_S - SECONDS ))
  if [ -z "$dry" ] && (( left_s < 20 )); then
    echo "FAIL $check: not started, the smoke's ${SMOKE_S} s are spent" | tee -a "$E/logs/smoke.txt"; return
  fi
  LOGS=()
  fresh "$marker"  # what an earlier call cut short of this run, kept aside
  CAP=$(( cap < left_s ? cap : left_s )) run "smoke-$check" "$@"; rc=$?
  run "smoke-$check-summary" env PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}" python3 tools/smoke_summary.py "$check" \
    --rc "$rc" --wall-s "$(( SECONDS - t0 ))" "${sargs[@]}"
  if [ -z "$dry" ]; then tail -n 2 "$E/logs/smoke-$check-summary.log" | head -n 1 >> "$E/logs/smoke.txt"; fi
  LOGS=("$E/logs/smoke-$check.log")
  done_if "$marker" "$rc" 0 "$record"
}
smoke() {
  SMOKE_T0=$SECONDS
  local ff=$E/smoke-first-frame.json base
  smoke_part smoke-first-frame 75 first-frame "$ff" --json "$ff" -- python3 tools/first_frame_speed.py \
    --resolutions 1280x720 --compile-modes none --budget-s 45 --json "$ff"
  base=$(if [ -n "$dry" ]; then echo BASE; else snapshot; fi)
  smoke_part smoke-compare 100 compare "$E/smoke-compare/compare.json" --run "$E/smoke-compare" -- \
    python3 -m nox -s compare -- --base "$base" -k 'test_latent_prep and single_frame and 1280x720 and (33f or 81f)' \
    --results-dir "$E" --run-id smoke-compare
  smoke_part full-1 "$SMOKE_S" bench "$(rec full-1)" --run "$E/full-1" -- python3 -m nox -s bench -- \
    --results-dir "$E" --run-id full-1 --baselines-dir "$E/$SMOKE_NO_BASELINE" -k 'not diffusers'
  if [ -z "$dry" ]; then
    echo "smoke: $(( SECONDS - SMOKE_T0 )) s of ${SMOKE_S}"
    if [ -f "$E/done/smoke-first-frame" ] && [ -f "$E/done/smoke-compare" ] && [ -f "$E/done/full-1" ]; then
      LOGS=(); done_if smoke 0 0
    fi
  fi
}
one() {  # one STEP: run it; its exit status is its verdict
  local s=$1 rc
  case $s in
    smoke)
      smoke ;;
    first-frame)
      run "$s" python3 tools/first_frame_speed.py --budget-s "$(( $(left) > 120 ? $(left) - 60 : 60 ))" \
        --compile-modes default --json "$E/first_frame_speed.json"; done_if "$s" $? 0 "$E/first_frame_speed.json" ;;
    revert-2d)
      bench "$s" --case 'latent_prep[*-81f]' --exclude '*' --revert-first-frame; done_if "$s" $? 1 "$(rec "$s")" ;;
    full-[0-9]*)
      bench "$s" -k 'not diffusers' --exclude 'diffusers_*'; done_if "$s" $? 0 "$(rec "$s")" ;;
    fast-[0-9]*)
      bench "$s" -k 'not test_e2e and not diffusers' --exclude 'e2e[*]' --exclude 'diffusers_*'
      done_if "$s" $? 0 "$(rec "$s")" ;;
    diffusers)  # the baseline (merged from the full and fast runs) holds none of these: gated in-run only
      bench "$s" -k diffusers --exclude '*'; rc=$?
      run "$s-crosscheck" python3 tools/diffusers_crosscheck.py --preset wan22 --num-frames 33 \
        --json "$E/diffusers-crosscheck.json"; done_if "$s" $(( rc | $? )) 0 "$(rec "$s")" "$E/diffusers-crosscheck.json" ;;
    baseline)
      merge "$s" full-1 full-2 fast-1 fast-2 fast-3; done_if "$s" $? 0 ;;
    extended)
      bench "$s" --grid extended -k test_e2e --exclude '*' --case 'e2e[*-832x480-81f]' \
        --case 'e2e[first_frame_2d-1280x720-81f]'; done_if "$s" $? 0 "$(rec "$s")" ;;
    e2e-stages)
      run "$s-720p" python3 tools/e2e_stage_counters.py --preset wan22 --height 720 --width 1280 --num-frames 81 \
        --json "$E/e2e-stages-720p.json"; rc=$?
      run "$s-480p" python3 tools/e2e_stage_counters.py --preset wan22 --height 480 --width 832 --num-frames 81 \
        --json "$E/e2e-stages-480p.json"; done_if "$s" $(( rc | $? )) 0 "$E"/e2e-stages-{720,480}p.json ;;
    compare-aa)
      compares "$s" "$AA_COMPARES" ;;
    compare-inject)
      compares "$s" "$INJECT_COMPARES" --inject-slowdown 'latent_prep[single_frame-*]=0.02' ;;
    compare-inject-gpu)
      compares "$s" "$INJECT_COMPARES" --inject-gpu-work 'latent_prep[single_frame-*]=0.02' ;;
    compare-twelve)  # a compare of the twelve latent_prep cases takes at most 5 minutes
      fresh "$s"; t0=$SECONDS
      run "$s" python3 -m nox -s compare -- --base "$(if [ -n "$dry" ]; then echo BASE; else snapshot; fi)" \
        -k 'test_latent_prep and not first_frame_2d' --results-dir "$E" --run-id "$s"; rc=$?
      if [ -z "$dry" ]; then echo "$s: $(( SECONDS - t0 )) s for the compare (the limit is 300 s)" | tee -a "$E/logs/$s.log"; fi
      done_if "$s" $rc 0 "$E/$s/compare.json" ;;
    compare-calib-*)  # A/A compares of the 720p single_frame cases, through calibrate --compare
      fresh "$s"
      run "$s" python3 -m nox -s calibrate -- --compare --base "$(if [ -n "$dry" ]; then echo BASE; else snapshot; fi)" \
        -k 'test_latent_prep and single_frame and 1280x720' --aa-runs 5 --runs-per-size 0 --calibration-dir "$E/$s" \
        --load "gpu-evidence.sh $s"
      done_if "$s" $? 0 "$E/$s/compare_calibration.json" ;;
    dit36-480)
      bench "$s" --grid extended --dit-layers 36 -k test_e2e --exclude '*' \
        --case 'e2e[single_frame-832x480-81f]' --case 'e2e[expand-832x480-81f]'; done_if "$s" $? 0 "$(rec "$s")" ;;
    dit36-720-*)
      bench "$s" --grid extended --dit-layers 36 -k test_e2e --exclude '*' --case "e2e[${s#dit36-720-}-1280x720-81f]"
      done_if "$s" $? 0 "$(rec "$s")" ;;
    upstream-timers-*)  # the 342 ms of upstream's latent preparation, candidate by candidate
      strategy=${s#upstream-timers-}; rc=0
      for timer in device host; do
        run "$s-$timer" python3 -m cosmos3 --preset wan22 --dit-layers 36 --width 832 --height 480 --num-frames 81 \
          --steps 35 --guidance-scale 4.0 --strategy "$strategy" --stage-timer "$timer" --no-progress; rc=$(( rc | $? ))
      done
      if [ "$strategy" = single_frame ]; then
        run "$s-host-cudnn" python3 -m cosmos3 --preset wan22 --dit-layers 36 --width 832 --height 480 \
          --num-frames 81 --steps 35 --guidance-scale 4.0 --strategy "$strategy" --stage-timer host --cudnn-benchmark \
          --no-progress; rc=$(( rc | $? ))
      fi
      done_if "$s" $rc 0 ;;
    baseline-dit36)
      merge "$s" dit36-480 dit36-720-single_frame dit36-720-expand; done_if "$s" $? 0 ;;
    calib)
      run "$s" python3 -m nox -s calibrate -- --calibration-dir "$CAL" "${CAL_RUNS[@]}" --step baseline --step aa \
        --step gpu --step controls --time-budget-s "$(( $(left) > ${EST[calib]} + 30 ? $(left) - ${EST[calib]} - 30 : 1 ))"
      if [ -z "$dry" ] && (( $(ls "$CAL"/runs/*/run.json 2>/dev/null | wc -l) >= CAL_TOTAL )); then done_if "$s" 0 0; fi ;;
    calib-report)
      run "$s" python3 -m nox -s calibrate -- --calibration-dir "$CAL" "${CAL_RUNS[@]}" --step report; rc=$?
      if [ -f "$E/done/calib" ]; then done_if "$s" $rc 0; fi ;;
    *) echo "unknown step: $s" >&2; return 2 ;;
  esac
}
# timed STEP: run it, and log how long it took (the data that corrects the estimates in EST).
timed() {
  local t0=$SECONDS rc
  LOGS=()
  one "$1"; rc=$?
  if [ -z "$dry" ]; then echo "$1 $(( SECONDS - t0 )) s $(date -u +%FT%TZ)" >> "$E/logs/durations.txt"; fi
  return "$rc"
}
if [ "$step" = plan ]; then plan_calls; exit 0; fi
if [ "$step" != session ]; then
  timed "$step"; rc=$?; pack; exit $(( rc == 2 ? 2 : 0 ))
fi
for s in $PLAN; do
  if [ -f "$E/done/$s" ]; then echo "== $s: done in an earlier call ($(cat "$E/done/$s"))"; continue; fi
  if [ -z "$dry" ] && (( $(left) < ${EST[$s]} )); then echo "== $s: not started (needs ~${EST[$s]} s, $(left) s left)"; continue; fi
  echo "== $s ($(left) s left)"
  timed "$s"
  pack
done
echo "session over after ${SECONDS} s"
# What the next calls still have to do, by the same estimates (a counting step: its missing runs).
todo=() total=0
for s in $(printf '%s\n' $PLAN | awk '!seen[$0]++'); do
  if [ -f "$E/done/$s" ]; then continue; fi
  case $s in
    calib) n=$(( CAL_TOTAL - $(ls "$CAL"/runs/*/run.json 2>/dev/null | wc -l) )) ;;
    compare-aa) n=$(( $AA_COMPARES - $(finished compare-aa) )) ;;
    compare-inject|compare-inject-gpu) n=$(( $INJECT_COMPARES - $(finished "$s") )) ;;
    *) n=1 ;;
  esac
  todo+=("$s$( (( n > 1 )) && echo " x$n")"); total=$(( total + n * ${EST[$s]} ))
done
echo "still to do: $(IFS=,; echo "${todo[*]:-nothing}" | sed 's/,/, /g') (about ${total} s of device time, \
$(( (total + SESSION_S - 1) / SESSION_S )) calls of ${SESSION_S} s)"
