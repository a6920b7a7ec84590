#!/usr/bin/env bash
# Stages 1-11 of the speaker-dependent setup (./run.sh --setup speaker calls this; run.sh's
# stages 12-13 then compress/decode/score its model). One speaker (ARCTIC cathy, "a" prompts),
# sentences never trained on: whole prompts are held out, every take of them.
#   1   split shared/data/arctic_cathy_a by prompt -> data/sd/{train,dev,test_real_seen}
#       (dev: prompts a0520-a0559; test_real_seen: a0560-a0593, the default setup's test_real_seen)
#   2   format -> dump/sd/raw/<set> (absolute wav paths, utt2num_samples)
#   3   speed perturbation 0.9/1.0/1.1 (resampling, ESPnet's sp<f>- ids) -> dump/sd/raw/train_sp
#   4   drop train_sp/dev utterances outside [min_wav_duration, max_wav_duration]
#   5   BPE (sentencepiece unigram, training transcripts only) -> data/sd/token_list/bpe_unigram<nbpe>,
#       or --bpe_from DIR: copy that exp dir's BPE (to fine-tune its model) -> data/sd/token_list/<DIR name>
#   6   LM text: training transcripts + text_corpora VCTK/LJSpeech sentences, never a dev/test
#       sentence (the ARCTIC prompt list is not read) -> dump/sd/lm/{train,dev}.txt
#   7   LM statistics (espnet2.bin.lm_train --collect_stats true) -> exp/lm_stats_sd
#   8   LM training (espnet2.bin.lm_train, resumable) -> exp/lm_<lm_config name>
#  10   ASR statistics -> exp/asr_stats_<asr_config name>
#  11   ASR training (espnet2.bin.asr_train, --resume true) -> exp/asr_<asr_config name>
# Training in the background at 1 thread, resumable across sessions: local/train_background.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

stage=1
stop_stage=11
src=                       # default: ${shared_data}/arctic_cathy_a
dev_prompts=520-559
test_prompts=560-593
speed_factors="0.9 1.1"    # besides 1.0; "" turns speed perturbation off
nbpe=150
bpe_from=                  # an exp dir (bpe.model, config.yaml): reuse its BPE instead of training one
min_wav_duration=0.1
max_wav_duration=20
asr_config=conf/train_asr_conformer_sd.yaml
asr_exp=                   # default: exp/asr_<asr_config name>
lm_config=conf/train_lm_sd.yaml
lm_exp=                    # default: exp/lm_<lm_config name>
lm_args=                   # extra lm_train options, e.g. "--max_epoch 1 --num_iters_per_epoch 20"
asr_args=                  # extra asr_train options
ngpu=0
python=python
__recipe_options="stage stop_stage src dev_prompts test_prompts speed_factors nbpe bpe_from min_wav_duration max_wav_duration asr_config asr_exp lm_config lm_exp lm_args asr_args ngpu python"
. ../../common/parse_options.sh
. ../../common/generated.sh

shared_data=${ESPNET_LOWRANK_SHARED_DATA:-$(cd ../../../.. && pwd)/shared/data}
src=${src:-${shared_data}/arctic_cathy_a}
asr_exp=${asr_exp:-exp/asr_$(basename "${asr_config}" .yaml)}
lm_exp=${lm_exp:-exp/lm_$(basename "${lm_config}" .yaml)}
asr_stats=exp/asr_stats_$(basename "${asr_config}" .yaml)
lm_stats=exp/lm_stats_$(basename "${lm_config}" .yaml)
token_dir=data/sd/token_list/bpe_unigram${nbpe}
if [ -n "${bpe_from}" ]; then
    for f in bpe.model config.yaml feats_stats.npz; do
        [ -f "${bpe_from}/${f}" ] || { echo "$0: ERROR: --bpe_from ${bpe_from}: no ${f}" >&2; exit 1; }
    done
    token_dir=data/sd/token_list/$(basename "${bpe_from}")
fi
bpemodel=${token_dir}/bpe.model
token_list=${token_dir}/tokens.txt
raw=dump/sd/raw
log() { echo "$(date '+%H:%M:%S') [speaker stage ${1}] ${*:2}" >&2; }
fail() { echo "$0: ERROR: $*" >&2; exit 1; }
st() { ${python} local/speaker_tools.py "$@"; }

if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    log 1 "split ${src} by prompt (dev a${dev_prompts}, test a${test_prompts}) -> data/sd"
    replace_generated data/sd || exit 1; mark_generated data/sd
    st split "${src}" --dev "${dev_prompts}" --test "${test_prompts}" --out data/sd
    st check_heldout data/sd/train data/sd/dev data/sd/test_real_seen
    st minutes data/sd/train data/sd/dev data/sd/test_real_seen
fi

if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log 2 "format data/sd/{train,dev,test_real_seen} -> ${raw}"
    replace_generated dump/sd || exit 1; mark_generated dump/sd
    ${python} local/recipe_tools.py format data/sd/train data/sd/dev data/sd/test_real_seen --out_root "${raw}"
fi

if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ]; then
    log 3 "speed perturbation 1.0 ${speed_factors} -> ${raw}/train_sp"
    rm -rf "${raw}/train_sp"
    st speed_perturb "${raw}/train" --factors ${speed_factors} --out "${raw}/train_sp"
fi

if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    log 4 "remove utterances outside [${min_wav_duration}, ${max_wav_duration}] s from train_sp and dev"
    for d in "${raw}/train_sp" "${raw}/dev"; do
        ${python} local/recipe_tools.py filter "$d" --min "${min_wav_duration}" --max "${max_wav_duration}"
    done
    st check_heldout "${raw}/train_sp" "${raw}/dev" "${raw}/test_real_seen"
    st minutes "${raw}/train_sp" "${raw}/dev" "${raw}/test_real_seen"
fi

if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ] && [ -n "${bpe_from}" ]; then
    log 5 "BPE and token list of ${bpe_from} -> ${token_dir}"
    mkdir -p "${token_dir}"
    cp "${bpe_from}/bpe.model" "${bpemodel}"
    ${python} -c "
import sys, yaml
print('\\n'.join(yaml.safe_load(open(sys.argv[1]))['token_list']))
" "${bpe_from}/config.yaml" > "${token_list}"
elif [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    log 5 "BPE (unigram, ${nbpe}) and token list from ${raw}/train/text (training transcripts only)"
    mkdir -p "${token_dir}"
    cut -d' ' -f2- "${raw}/train/text" > "${token_dir}/train.txt"
    ${python} local/recipe_tools.py train_bpe "${token_dir}/train.txt" "${token_dir}/bpe" "${nbpe}" > "${token_dir}/spm_train.log" 2>&1 \
        || { tail -20 "${token_dir}/spm_train.log" >&2; fail "sentencepiece training failed"; }
    ${python} -m espnet2.bin.tokenize_text --token_type bpe --bpemodel "${bpemodel}" \
        --input "${token_dir}/train.txt" --output "${token_list}" --write_vocabulary true \
        --add_symbol '<blank>:0' --add_symbol '<unk>:1' --add_symbol '<sos/eos>:-1' 2>> "${token_dir}/spm_train.log"
fi

token_opts=(--token_type bpe --bpemodel "${PWD}/${bpemodel}" --token_list "${PWD}/${token_list}"
            --non_linguistic_symbols none --cleaner none --g2p none --ngpu "${ngpu}")
shape_bpe() {  # <stats dir>: text_shape -> text_shape.bpe (ESPnet's folded shape files)
    local n; n=$(wc -l < "${token_list}")
    for s in train valid; do awk -v N="${n}" '{ print $0 "," N }' "$1/${s}/text_shape" > "$1/${s}/text_shape.bpe"; done
}

if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ]; then
    log 6 "LM text -> dump/sd/lm (no dev/test sentence)"
    st lm_text --corpora "${shared_data}/text_corpora" --train_text "${raw}/train/text" \
        --exclude "${raw}/dev" "${raw}/test_real_seen" --out dump/sd/lm/train.txt
    cp "${raw}/dev/text" dump/sd/lm/dev.txt
fi

lm_data=(--train_data_path_and_name_and_type dump/sd/lm/train.txt,text,text
         --valid_data_path_and_name_and_type dump/sd/lm/dev.txt,text,text)
if [ ${stage} -le 7 ] && [ ${stop_stage} -ge 7 ]; then
    log 7 "LM statistics -> ${lm_stats}"
    replace_generated "${lm_stats}" || exit 1; mark_generated "${lm_stats}"
    ${python} -m espnet2.bin.lm_train --collect_stats true "${token_opts[@]}" --use_preprocessor true \
        --config "${lm_config}" "${lm_data[@]}" \
        --train_shape_file dump/sd/lm/train.txt --valid_shape_file dump/sd/lm/dev.txt \
        --output_dir "${lm_stats}" > "${lm_stats}/collect_stats.log" 2>&1 \
        || { tail -20 "${lm_stats}/collect_stats.log" >&2; fail "LM collect stats failed"; }
    shape_bpe "${lm_stats}"
fi

if [ ${stage} -le 8 ] && [ ${stop_stage} -ge 8 ]; then
    log 8 "LM training ${lm_config} -> ${lm_exp} (log: ${lm_exp}/train.log)"
    mkdir -p "${lm_exp}"
    # shellcheck disable=SC2086
    ${python} -m espnet2.bin.lm_train "${token_opts[@]}" --use_preprocessor true --config "${lm_config}" \
        "${lm_data[@]}" --train_shape_file "${lm_stats}/train/text_shape.bpe" \
        --valid_shape_file "${lm_stats}/valid/text_shape.bpe" --fold_length 150 \
        --resume true --use_tensorboard false --output_dir "${lm_exp}" ${lm_args} >> "${lm_exp}/train.log" 2>&1 \
        || { tail -20 "${lm_exp}/train.log" >&2; fail "LM training failed (${lm_exp}/train.log)"; }
fi

asr_data=(--train_data_path_and_name_and_type "${raw}/train_sp/wav.scp,speech,sound"
          --train_data_path_and_name_and_type "${raw}/train_sp/text,text,text"
          --valid_data_path_and_name_and_type "${raw}/dev/wav.scp,speech,sound"
          --valid_data_path_and_name_and_type "${raw}/dev/text,text,text")
if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 10 ]; then
    log 10 "ASR statistics -> ${asr_stats}"
    replace_generated "${asr_stats}" || exit 1; mark_generated "${asr_stats}"
    ${python} -m espnet2.bin.asr_train --collect_stats true "${token_opts[@]}" --use_preprocessor true \
        --config "${asr_config}" --frontend_conf fs=16k "${asr_data[@]}" \
        --train_shape_file "${raw}/train_sp/wav.scp" --valid_shape_file "${raw}/dev/wav.scp" \
        --output_dir "${asr_stats}" > "${asr_stats}/collect_stats.log" 2>&1 \
        || { tail -20 "${asr_stats}/collect_stats.log" >&2; fail "ASR collect stats failed"; }
    shape_bpe "${asr_stats}"
fi

if [ ${stage} -le 11 ] && [ ${stop_stage} -ge 11 ]; then
    # A fine-tuned model keeps the feature statistics its encoder was trained with.
    feats_stats=${PWD}/${asr_stats}/train/feats_stats.npz
    [ -z "${bpe_from}" ] || feats_stats=${PWD}/${bpe_from}/feats_stats.npz
    log 11 "ASR training ${asr_config} -> ${asr_exp} (log: ${asr_exp}/train.log)"
    mkdir -p "${asr_exp}"
    # Appended: with --resume true a rerun continues the same log (summarize_training.py reads it).
    # shellcheck disable=SC2086
    ${python} -m espnet_lowrank.launch -m espnet2.bin.asr_train "${token_opts[@]}" --use_preprocessor true \
        --config "${asr_config}" --frontend_conf fs=16k \
        --normalize global_mvn --normalize_conf "stats_file=${feats_stats}" \
        "${asr_data[@]}" \
        --train_shape_file "${asr_stats}/train/speech_shape" --train_shape_file "${asr_stats}/train/text_shape.bpe" \
        --valid_shape_file "${asr_stats}/valid/speech_shape" --valid_shape_file "${asr_stats}/valid/text_shape.bpe" \
        --fold_length 80000 --fold_length 150 --resume true --use_tensorboard false \
        --output_dir "${asr_exp}" ${asr_args} >> "${asr_exp}/train.log" 2>&1 \
        || { tail -20 "${asr_exp}/train.log" >&2; fail "ASR training failed (${asr_exp}/train.log)"; }
    ${python} local/summarize_training.py "${asr_exp}/train.log" --out_md "${asr_exp}/train_summary.md" \
        --out_png "${asr_exp}/learning_curves.png" --title "Speaker-dependent Conformer (1 CPU thread)"
fi
