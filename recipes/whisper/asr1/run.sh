#!/usr/bin/env bash
# Zero-shot Whisper: no training. Stages keep ESPnet's numbers:
#   1   data: a synthesized calibration set and test set (Piper), or real speech;
#       ../shared/data/vctk is decoded as a real test set too when it is there
#  12   export the dense Whisper model, compress it, decode every test set
#       (dense and compressed) with the stock espnet2.bin.asr_inference
#  13   score with jiwer; write RESULTS.md (WER, end-to-end decode time and RTF, size, FLOPs,
#       CPU latency ratio)
set -euo pipefail
cd "$(dirname "$0")"

stage=1
stop_stage=13
nj=1
backend=local             # local | slurm
model=tiny.en             # tiny.en | base | a CT2 / openai .pt / HF checkpoint path
lowrank_config=           # default: conf/lowrank/whisper_int8.yaml (the default with int8)
inference_config=         # default: the exp dir's decode.yaml
asr_exp=                  # default: exp/whisper_<model>
inference_asr_model=      # default: <exp>/model.pth
real_data=                # Kaldi or LibriSpeech dir: calibrate on its first utterances, test on the rest
num_calib=32
num_test=16
test_sets=                # extra test sets: names under data/ or absolute Kaldi dirs
shared_data=${ESPNET_LOWRANK_SHARED_DATA:-$(cd ../../../.. && pwd)/shared/data}
shared_test_sets="vctk"   # real test sets taken from ${shared_data} when it exists (not with --tiny)
tiny=false                # CI-sized run of every stage
python=python
__recipe_options="stage stop_stage nj backend model lowrank_config inference_config asr_exp inference_asr_model real_data num_calib num_test test_sets shared_data shared_test_sets tiny python"
. ../../common/parse_options.sh

if [ "${tiny}" = true ]; then num_calib=4; num_test=4; fi
tag=$(basename "${model}")
asr_exp=${asr_exp:-exp/whisper_${tag}}
lowrank_exp=${asr_exp}_lowrank
lowrank_config=${lowrank_config:-../../../conf/lowrank/whisper_int8.yaml}

log() { echo "$(date '+%H:%M:%S') [stage ${1}] ${*:2}" >&2; }

# Resolve test sets: the main one from stage 1, plus names under data/ or absolute dirs.
all_test_sets="data/test"
for t in ${test_sets}; do
    case "$t" in /*) all_test_sets+=" $t" ;; *) all_test_sets+=" data/$t" ;; esac
done
# Real speech beside the checkout (../shared/data) is an extra test set when present; the
# job itself never needs it (calibration stays on data/calib).
if [ "${tiny}" != true ] && [ -d "${shared_data}" ]; then
    for s in ${shared_test_sets}; do
        [ -d "${shared_data}/$s" ] && all_test_sets+=" ${shared_data}/$s"
    done
fi

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    log 1 "data preparation"
    local/data.sh --real_data "${real_data}" --num_calib "${num_calib}" --num_test "${num_test}" --python "${python}"
fi

# Fail before any work on missing inputs.
for d in data/calib ${all_test_sets}; do
    ${python} -c "import sys; from espnet_lowrank.data import read_data_dir; read_data_dir(sys.argv[1])" "$d" \
        || { echo "$0: bad data dir $d (run stage 1 first?)" >&2; exit 1; }
done

if [ ${stage} -le 12 ] && [ ${stop_stage} -ge 12 ]; then
    if [ ! -f "${asr_exp}/model.pth" ]; then
        log 12 "export dense Whisper ${model} -> ${asr_exp}"
        ${python} -m espnet_lowrank.bin.export_whisper --model "${model}" --output_dir "${asr_exp}"
    fi
    log 12 "compress ${asr_exp} -> ${lowrank_exp} (calibration on data/calib only, ${nj} jobs, ${backend})"
    ${python} -m espnet_lowrank.bin.compress \
        --asr_train_config "${asr_exp}/config.yaml" \
        --asr_model_file "${inference_asr_model:-${asr_exp}/model.pth}" \
        --calib_data data/calib --num_calib "${num_calib}" \
        --lowrank_config "${lowrank_config}" \
        --output_dir "${lowrank_exp}" --overwrite --nj "${nj}" --backend "${backend}"
    for exp in "${asr_exp}" "${lowrank_exp}"; do
        for t in ${all_test_sets}; do
            log 12 "decode $(basename "$t") with ${exp}"
            ${python} -m espnet_lowrank.bin.decode --asr_exp "${exp}" --data "$t" \
                --output_dir "${exp}/decode_$(basename "$t")" --nj "${nj}" --backend "${backend}" \
                ${inference_config:+--inference_config "${inference_config}"}
        done
    done
fi

if [ ${stage} -le 13 ] && [ ${stop_stage} -ge 13 ]; then
    log 13 "score and write RESULTS.md"
    ${python} -m espnet_lowrank.bin.results --exps "${asr_exp}" "${lowrank_exp}" \
        --test_sets ${all_test_sets} --normalize whisper --output RESULTS.md
fi
