#!/usr/bin/env bash
# One device call's worth of proof for the DeepSeek MoE solutions (run from the repo root on the
# GPU machine, carrying .device). Part A: `fib run` cold and warm (harness overhead), the roofline.
# Part B: `fib profile` under nsys and torch.profiler, nsys's own nvtx_kern_sum, fib's verify,
# the stage report, fib's median against nsys. Everything lands in $OUT/proof.tar.gz.
set -uo pipefail
source .device/activate.sh
# The tree arrives without .git: `git rev-parse HEAD > .device/git-commit` before the call records it.
[ -f .device/git-commit ] && export FIB_GIT_COMMIT=$(cat .device/git-commit)
P=${1:-A}
R=$OUT/proof
mkdir -p $R
DS=moe_fp8_block_scale_ds_routing_topk8_ng8_kg4_e32_h7168_i2048
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv > $R/nvidia-smi-$P.csv 2>&1
if [ "$P" = A ]; then
  python3 benchmarks/harness_overhead.py --output $R/harness --definition $DS \
    --solutions torch_eager triton_staged triton_fused flashinfer_cutlass flashinfer_trtllm \
    --also-check 0.1,0.2,0.85 --iterations 20 --num-trials 3 2>&1 | tail -40
  python3 families/moe/benchmarks/roofline.py $R/harness/run_warm --output $R/roofline 2>&1 | tail -70
  rm -rf $R/harness/cache
fi
if [ "$P" = C ]; then
  python3 -m fib run --definitions $DS --also-check 0.1,0.2,0.85 --iterations 20 --num-trials 3 \
    --output $R/run_ds 2>&1 | tail -45
  python3 families/moe/benchmarks/roofline.py $R/run_ds --output $R/roofline 2>&1 | tail -60
fi
if [ "$P" = D ]; then  # several GPUs: the same run on one and on two devices (warm reference cache)
  nvidia-smi -L > $R/gpus.txt
  F="--definitions $DS --solutions triton_staged triton_fused --iterations 10 --num-trials 3"
  for RUN in "fill cuda:0 cuda:1" "one cuda:0" "two cuda:0 cuda:1"; do
    set -- $RUN
    NAME=$1; shift
    S=$(date +%s.%N)
    python3 -m fib run $F --devices "$@" --output $R/run_$NAME > $R/run_$NAME.log 2>&1
    E=$(date +%s.%N)
    echo "$NAME devices=$* wall_s=$(python3 -c "print(round($E-$S,1))") $(tail -2 $R/run_$NAME.log | head -1)" | tee -a $R/multi_gpu.txt
  done
fi
if [ "$P" = E ]; then  # the seed's way: nsys around a whole (warm) `fib run`, then `fib report stages` on it
  F="--definitions $DS --solutions torch_eager triton_staged triton_fused"
  python3 -m fib run $F --iterations 1 --num-trials 1 --warmup-runs 1 --output $R/run_fill > $R/run_fill.log 2>&1
  tail -1 $R/run_fill.log
  $FIB_NSYS profile --trace cuda,nvtx --force-overwrite true -o $R/whole_run \
    python3 -m fib run $F --iterations 20 --num-trials 3 --output $R/run_under_nsys > $R/run_under_nsys.log 2>&1
  tail -2 $R/run_under_nsys.log
  python3 -m fib report stages $R/whole_run.nsys-rep --output $R/report_whole_run \
    --definition definitions/moe/$DS.json --workloads datasets/moe/$DS.jsonl --title "Whole fib run under nsys" 2>&1 | tail -3
  rm -f $R/whole_run.nsys-rep; gzip -f $R/whole_run.sqlite 2>/dev/null
  # the export is tens of MB: it travels beside the tarball only when it fits the 16 MB return limit
  if [ -f $R/whole_run.sqlite.gz ]; then
    if [ $(stat -c %s $R/whole_run.sqlite.gz) -lt 15000000 ]; then mv $R/whole_run.sqlite.gz $OUT/; else
      echo "whole_run.sqlite.gz is $(stat -c %s $R/whole_run.sqlite.gz) bytes: not returned" | tee $R/whole_run.sqlite.txt
      rm -f $R/whole_run.sqlite.gz; fi
  fi
fi
if [ "$P" = F ]; then  # control for the torch-vs-nsys agreement: each backend against itself, run to run
  W="--workloads seq_len=7 seq_len=80 seq_len=901 seq_len=14107"
  for RUN in nsys1 nsys2 torch1 torch2; do
    python3 -m fib profile --definitions $DS --solutions torch_eager triton_staged triton_fused \
      $W --backend ${RUN%?} --iterations 10 --output $R/prof_$RUN 2>&1 | tail -1
    rm -f $R/prof_$RUN/profile/capture.nsys-rep $R/prof_$RUN/profile/capture.sqlite $R/prof_$RUN/profile/trace.json
  done
  for PAIR in "nsys1 nsys2" "torch1 torch2" "nsys1 torch1" "nsys2 torch2"; do
    set -- $PAIR
    python3 benchmarks/profile_backends_agree.py $R/prof_$1 $R/prof_$2 --labels $1 $2 --output $R/agree_$1_$2.csv 2>&1 | tail -1 | sed "s/^/$1 vs $2: /"
  done
fi
if [ "$P" = B ]; then
  W="--workloads seq_len=7 seq_len=80 seq_len=901 seq_len=14107"
  [ -n "${FIB_PROOF_W:-}" ] && W="--workloads $FIB_PROOF_W"
  python3 -m fib profile --definitions $DS --solutions torch_eager triton_staged triton_fused \
    $W --backend nsys --iterations 10 --output $R/prof_nsys 2>&1 | tail -5
  $FIB_NSYS stats --force-export=true --report nvtx_kern_sum --format csv -o $R/prof_nsys/profile/stats \
    $R/prof_nsys/profile/capture.nsys-rep > $R/prof_nsys/profile/nsys_stats.log 2>&1 || tail -5 $R/prof_nsys/profile/nsys_stats.log
  python3 -m fib.profile.verify $R/prof_nsys/profile/capture.sqlite \
    --nvtx-kern-sum $R/prof_nsys/profile/stats_nvtx_kern_sum.csv 2>&1 | tail -25
  if [ "${FIB_PROOF_VERIFY_ONLY:-0}" = 1 ]; then
    rm -f $R/prof_nsys/profile/capture.nsys-rep; cd $OUT && tar czf proof-$P.tar.gz proof && rm -rf proof; exit 0
  fi
  python3 -m fib profile --definitions $DS --solutions torch_eager triton_staged triton_fused \
    $W --backend torch --iterations 10 --output $R/prof_torch 2>&1 | tail -3
  python3 benchmarks/profile_backends_agree.py $R/prof_nsys $R/prof_torch --output $R/torch_vs_nsys.csv 2>&1 | tail -2
  python3 -m fib run --definitions $DS --solutions torch_eager triton_staged triton_fused $W \
    --iterations 20 --num-trials 3 --output $R/run_timing 2>&1 | tail -3
  python3 benchmarks/timing_vs_nsys.py $R/run_timing $R/prof_nsys 2>&1 | tail -20
  [ "${FIB_PROOF_TIMERS:-1}" = 1 ] && for T in cuda_event cuda_graph; do
    python3 -m fib run --definitions $DS --solutions triton_staged triton_fused $W --timer $T \
      --iterations 20 --num-trials 3 --output $R/run_$T 2>&1 | tail -1
    python3 benchmarks/timing_vs_nsys.py $R/run_$T $R/prof_nsys --output $R/vs_nsys_$T 2>&1 | tail -10
  done
  python3 -m fib report stages $R/prof_nsys --output $R/report_nsys --title "DeepSeek MoE stages (nsys)" 2>&1 | tail -3
  python3 -m fib report stages $R/prof_torch --output $R/report_torch --title "DeepSeek MoE stages (torch.profiler)" 2>&1 | tail -3
  python3 tests/fixtures/profile/make_nsys_fixture.py shrink $R/prof_nsys/profile/capture.sqlite $R/moe_fixture.sqlite 2>&1 | tail -2
  rm -f $R/prof_nsys/profile/capture.nsys-rep $R/prof_torch/profile/trace.json
  [ "${FIB_PROOF_TIMERS:-1}" = 1 ] && timeout 120 python3 benchmarks/timing_fidelity.py --output $R/fidelity 2>&1 | tail -15
fi
cd $OUT && tar czf proof-$P.tar.gz proof && rm -rf proof
ls -la $OUT
