#!/usr/bin/env bash
# Start, resume, stop or inspect the speaker-dependent training in the background, at one CPU
# thread and low priority (the other core stays free), detached from the session (setsid nohup):
#   local/train_background.sh            # start, or resume from <exp>/checkpoint.pth (--resume true)
#   local/train_background.sh status     # running?, last epoch lines of <exp>/train.log
#   local/train_background.sh stop       # stop it (its process group); a later start resumes
#   local/train_background.sh lm         # the LM (stage 8) instead; never while the ASR runs
# The ASR run is local/speaker.sh --stage 11 (stages 1-10 first: ./run.sh --setup speaker
# --stop_stage 10); its output is appended to <exp>/train.log, the wrapper's to <exp>/background.log.
set -euo pipefail
cd "$(dirname "$0")/.."
what=${1:-start}
root=$(cd ../../.. && pwd)
python=${PYTHON:-${root}/.venv/bin/python}
if [ "${what}" = lm ]; then
    exp=exp/lm_train_lm_sd; stage=8
else
    exp=exp/asr_train_asr_conformer_sd; stage=11
fi
pidfile=${exp}/background.pid
running() { [ -f "${pidfile}" ] && kill -0 "$(cat "${pidfile}")" 2>/dev/null; }
other=exp/asr_train_asr_conformer_sd/background.pid; [ "${stage}" = 11 ] && other=exp/lm_train_lm_sd/background.pid

case "${what}" in
    status)
        if running; then echo "running: pid $(cat "${pidfile}") ($exp)"; else echo "not running ($exp)"; fi
        grep -h "epoch results" "${exp}/train.log" 2>/dev/null | tail -3 | cut -c1-400 || true
        tail -2 "${exp}/train.log" 2>/dev/null | cut -c1-300 || true ;;
    stop)
        if running; then kill -- "-$(cat "${pidfile}")" && echo "stopped process group $(cat "${pidfile}")"; else echo "not running"; fi ;;
    start|lm)
        if running; then echo "already running: pid $(cat "${pidfile}")"; exit 0; fi
        if [ -f "${other}" ] && kill -0 "$(cat "${other}")" 2>/dev/null; then
            echo "ERROR: $(dirname "${other}") is training (one background core): stop it first" >&2; exit 1
        fi
        mkdir -p "${exp}"
        setsid nohup nice -n 15 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 \
            PATH="$(dirname "${python}"):${PATH}" \
            local/speaker.sh --stage "${stage}" --stop_stage "${stage}" --python "${python}" \
            >> "${exp}/background.log" 2>&1 < /dev/null &
        echo $! > "${pidfile}"
        echo "started pid $! (log: ${exp}/train.log)" ;;
    *) echo "usage: $0 [start|status|stop|lm]" >&2; exit 1 ;;
esac
