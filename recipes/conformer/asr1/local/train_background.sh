#!/usr/bin/env bash
# Start, resume, stop or inspect a speaker-dependent training run in the background, at one CPU
# thread and low priority, detached from the session (setsid nohup). Each run takes one core:
#   local/train_background.sh start|status|stop [asr|lm] [local/speaker.sh options]
#   local/train_background.sh                    # ASR (stage 11), conf/train_asr_conformer_sd.yaml
#   local/train_background.sh start lm           # the LM (stage 8)
#   local/train_background.sh start asr --bpe_from exp/asr_train_asr_conformer \
#       --asr_config conf/train_asr_conformer_sd_ft.yaml   # the fine-tuned model
# A start resumes from <exp>/checkpoint.pth (--resume true). Stages 1-10 first:
# ./run.sh --setup speaker --stop_stage 10 (with the same options). status and stop take the same
# config options, to find the exp dir. Output: <exp>/train.log; the wrapper's: <exp>/background.log.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-start}; task=${2:-asr}; shift $(($# < 2 ? $# : 2))
root=$(cd ../../.. && pwd)
python=${PYTHON:-${root}/.venv/bin/python}
usage() { echo "usage: $0 [start|status|stop] [asr|lm] [local/speaker.sh options]" >&2; exit 1; }
# The exp dir as local/speaker.sh names it: --asr_exp / --lm_exp, else exp/<task>_<config name>.
asr_config=conf/train_asr_conformer_sd.yaml; lm_config=conf/train_lm_sd.yaml; asr_exp=; lm_exp=
args=("$@")
while [ $# -gt 0 ]; do
    case "$1" in
        --asr_config) asr_config=$2 ;; --lm_config) lm_config=$2 ;;
        --asr_exp) asr_exp=$2 ;; --lm_exp) lm_exp=$2 ;;
    esac
    shift
done
case "${task}" in
    asr) exp=${asr_exp:-exp/asr_$(basename "${asr_config}" .yaml)}; stage=11 ;;
    lm) exp=${lm_exp:-exp/lm_$(basename "${lm_config}" .yaml)}; stage=8 ;;
    *) usage ;;
esac
pidfile=${exp}/background.pid
running() { [ -f "${pidfile}" ] && kill -0 "$(cat "${pidfile}")" 2>/dev/null; }

case "${what}" in
    status)
        if running; then echo "running: pid $(cat "${pidfile}") (${exp})"; else echo "not running (${exp})"; fi
        grep -h "epoch results" "${exp}/train.log" 2>/dev/null | tail -3 | cut -c1-400 || true
        tail -2 "${exp}/train.log" 2>/dev/null | cut -c1-300 || true ;;
    stop)
        if running; then kill -- "-$(cat "${pidfile}")" && echo "stopped process group $(cat "${pidfile}")"; else echo "not running (${exp})"; fi ;;
    start)
        if running; then echo "already running: pid $(cat "${pidfile}")"; exit 0; fi
        mkdir -p "${exp}"
        setsid nohup nice -n 15 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
            PATH="$(dirname "${python}"):${PATH}" \
            local/speaker.sh --stage "${stage}" --stop_stage "${stage}" --python "${python}" "${args[@]}" \
            >> "${exp}/background.log" 2>&1 < /dev/null &
        echo $! > "${pidfile}"
        echo "started pid $! (log: ${exp}/train.log)" ;;
    *) usage ;;
esac
