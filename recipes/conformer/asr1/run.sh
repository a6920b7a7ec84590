#!/usr/bin/env bash
# Train a small ESPnet Conformer, compress its encoder (LiteASR low-rank), decode, score.
# Stages keep ESPnet's (egs2/TEMPLATE/asr1/asr.sh) numbers:
#   1   data prep: real speech + Piper speech -> data/{train,dev,test_synth,test_real} (local/data.sh)
#   2   format: data/<set> -> dump/raw/<set> (absolute wav paths, utt2num_samples)
#   3   (no speed perturbation in this recipe)
#   4   drop training/dev utterances shorter than --min_wav_duration or longer than --max_wav_duration
#   5   BPE model (sentencepiece) and token list
#  10   collect feature statistics (espnet2.bin.asr_train --collect_stats true)
#  11   train (espnet2.bin.asr_train); exp/<tag>/model.pth -> valid.acc.ave.pth
#  12   compress with every low-rank config (calibration on training data only, split over
#       --nj jobs, statistics merged), then decode every test set with the dense and the
#       compressed models (stock espnet2.bin.asr_inference over --nj jobs)
#  13   score (basic normalizer) and write RESULTS.md (+ WER-vs-size PNG)
# --setup speaker: the speaker-dependent setup (README.md): stages 1-11 are local/speaker.sh
# (one ARCTIC speaker, whole prompts held out, speed perturbation, joint CTC/attention, LSTM LM;
# stage 11 in the background: local/train_background.sh), stages 12-13 below on its model.
# --tiny true runs every stage on a handful of utterances with a 2-block Conformer (CI;
# tests/test_conformer_recipe.py). The full setup (conf/train_asr_conformer.yaml, a 5.4M-param
# Conformer, on ~1.5 h of real speech from ../../../../shared/data plus ~2.4 h of Piper speech)
# is what RESULTS.md reports: stage 1 ~25 min, stage 11 ~35 min on a 2-core CPU, e.g.
#   ./run.sh --stop_stage 11
#   ./run.sh --stage 12 --nj 2 --lowrank_configs "$(ls conf/lowrank/*.yaml | tr '\n' ' ')"
# Stage 12 on --nj N gives the same plan, weights and hypotheses as on one job: calibration
# parts are cut at the low-rank config's batch boundaries, so every job sees the same batches.
set -euo pipefail
cd "$(dirname "$0")"

stage=1
stop_stage=13
nj=1
backend=local              # local | slurm (jobs of stage 12)
tiny=false
setup=default              # default | speaker (stages 1-11: local/speaker.sh)
asr_config=                # default: conf/train_asr_conformer.yaml (tiny: conf/train_tiny.yaml)
asr_exp=                   # default: exp/asr_<config name>
inference_config=          # default: conf/decode_asr.yaml; --stage 12+: <asr_exp>/decode.yaml (tiny: conf/decode_tiny.yaml)
inference_asr_model=       # default: <asr_exp>/model.pth
lowrank_config=            # default: conf/lowrank/<family>.yaml (tiny: conf/lowrank_tiny.yaml); "none": no compression
lowrank_configs=           # several configs (a θ sweep): "a.yaml b.yaml"
thetas=                    # or a θ sweep on --lowrank_config: "0.9 0.95 0.99" (both θs set to each value)
num_calib=                 # default: the low-rank config's num_calib (else 64)
calib_data=                # stage 12: training speech to calibrate on (Kaldi dir; default dump/raw/train,
                           # made by stages 1-2; a fresh clone passes one, e.g. ../../../../shared/data/an4)
decode_dense=true           # stage 12: also decode with the dense model
test_sets=                 # names under data/ or absolute Kaldi dirs; never used for training/calibration
                           # (default: test_synth test_real test_real_seen; tiny: test_synth test_real)
train_data=                # stage 1: real training speech, Kaldi dirs or LibriSpeech trees ("a b"; default: shared sets)
test_real_data=            # stage 1: real held-out speech dirs for test_real (default: shared arctic_misc)
data_opts=                 # extra options for local/data.sh, e.g. "--real_train /path/to/LibriSpeech/train-clean-100"
nbpe=150
min_wav_duration=0.1
max_wav_duration=20
ngpu=0
results=                   # default: RESULTS.md (tiny: exp/RESULTS.md)
python=python
__recipe_options="stage stop_stage nj backend tiny setup asr_config asr_exp inference_config inference_asr_model decode_dense lowrank_config lowrank_configs thetas num_calib calib_data test_sets train_data test_real_data data_opts nbpe min_wav_duration max_wav_duration ngpu results python"
. ../../common/parse_options.sh

root=$(cd ../../.. && pwd)
if [ "${tiny}" = true ]; then
    asr_config=${asr_config:-conf/train_tiny.yaml}
    inference_config=${inference_config:-conf/decode_tiny.yaml}
    lowrank_config=${lowrank_config:-conf/lowrank_tiny.yaml}
    results=${results:-exp/RESULTS.md}
    nbpe=40
    data_opts="--tiny true ${data_opts}"
    test_sets=${test_sets:-test_synth test_real}
fi
if [ "${setup}" = speaker ]; then
    asr_config=${asr_config:-conf/train_asr_conformer_sd.yaml}
    inference_config=${inference_config:-conf/decode_asr_sd.yaml}
    test_sets=${test_sets:-sd/test_real_seen}
    calib_data=${calib_data:-dump/sd/raw/train}
    results=${results:-exp/RESULTS_sd.md}
    if [ ${stage} -le 11 ]; then
        local/speaker.sh --stage "${stage}" --stop_stage "$((stop_stage < 11 ? stop_stage : 11))" \
            --asr_config "${asr_config}" --nbpe "${nbpe}" --min_wav_duration "${min_wav_duration}" \
            --max_wav_duration "${max_wav_duration}" --ngpu "${ngpu}" --python "${python}" \
            ${asr_exp:+--asr_exp "${asr_exp}"}
        [ ${stop_stage} -gt 11 ] || exit 0
        stage=12
    fi
elif [ "${setup}" != default ]; then
    echo "$0: ERROR: --setup ${setup}: default or speaker" >&2; exit 1
fi
test_sets=${test_sets:-test_synth test_real test_real_seen}
asr_config=${asr_config:-conf/train_asr_conformer.yaml}
results=${results:-RESULTS.md}
asr_exp=${asr_exp:-exp/asr_$(basename "${asr_config}" .yaml)}
# Stages 12-13 alone decode with the exp dir's own decode.yaml (the shipped one: CTC + LM);
# a model trained by stage 11 gets conf/decode_asr.yaml (no LM: its BPE is new).
if [ -z "${inference_config}" ] && [ ${stage} -ge 12 ] && [ -f "${asr_exp}/decode.yaml" ]; then
    inference_config=${asr_exp}/decode.yaml
fi
inference_config=${inference_config:-conf/decode_asr.yaml}
model_file=${inference_asr_model:-${asr_exp}/model.pth}
token_dir=data/token_list/bpe_unigram${nbpe}
bpemodel=${token_dir}/bpe.model
token_list=${token_dir}/tokens.txt
stats_dir=exp/asr_stats_$(basename "${asr_config}" .yaml)

log() { echo "$(date '+%H:%M:%S') [stage ${1}] ${*:2}" >&2; }
fail() { echo "$0: ERROR: $*" >&2; exit 1; }
tools() { ${python} local/recipe_tools.py "$@"; }
. ../../common/generated.sh  # replace_generated: remove only the folders this recipe made

# ---------------------------------------------------------------- input checks (before any work)
test_dirs=
for t in ${test_sets}; do
    case "$t" in /*) test_dirs+=" $t" ;; *) test_dirs+=" data/$t" ;; esac
done
[ -n "${test_dirs}" ] || fail "no --test_sets"
[ -f "${inference_config}" ] || fail "inference config not found: ${inference_config}"
if [ ${stage} -le 11 ] && [ ${stop_stage} -ge 10 ]; then
    family=$(tools check_family "${asr_config}") || fail "cannot compress the encoder of ${asr_config} (see above)"
elif [ ${stop_stage} -ge 12 ] && [ ${stage} -le 13 ]; then
    family=$(tools check_family "${asr_exp}/config.yaml") || fail "cannot compress ${asr_exp} (see above)"
    [ -f "${model_file}" ] || fail "model not found: ${model_file} (run stage 11 first?)"
fi
if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    # Test sets that stage 1 does not make must exist already.
    for d in ${test_dirs}; do
        case "$d" in data/test_synth|data/test_real|data/test_real_seen) ;; *) tools check_data --require_text "$d" || fail "bad test set $d" ;; esac
    done
else
    if [ ${stage} -le 11 ] && [ ${stop_stage} -ge 2 ]; then
        tools check_data --require_text data/train data/dev || fail "bad training data (run stage 1 first?)"
    fi
    if [ ${stop_stage} -ge 12 ] && [ ${stage} -le 13 ]; then
        tools check_data --require_text ${test_dirs} || fail "bad test set (run stage 1 first?)"
    fi
fi
calib_data=${calib_data:-dump/raw/train}
if [ ${stage} -le 12 ] && [ ${stop_stage} -ge 12 ] && [ ${stage} -gt 2 ]; then
    tools check_data "${calib_data}" >/dev/null \
        || fail "no calibration speech at ${calib_data}: run stages 1-2, or pass --calib_data DIR (training speech, never a test set)"
fi

# Low-rank configs: --lowrank_configs, or a --thetas sweep on --lowrank_config, or one config.
if [ ${stop_stage} -ge 12 ] && [ "${lowrank_config}" != none ]; then
    lowrank_config=${lowrank_config:-${root}/conf/lowrank/${family:-conformer}.yaml}
    if [ -n "${thetas}" ]; then
        tools check_lowrank "${lowrank_config}" >/dev/null || fail "bad --lowrank_config"
        lowrank_configs=$(tools sweep_configs --base "${lowrank_config}" --thetas ${thetas} --out "${asr_exp}_lowrank_configs")
    fi
    lowrank_configs=${lowrank_configs:-${lowrank_config}}
    tools check_lowrank ${lowrank_configs} >/dev/null || fail "bad low-rank config"
else
    lowrank_configs=
fi
n_configs=$(echo ${lowrank_configs} | wc -w)
lowrank_exp_of() {  # config -> exp dir
    if [ "${n_configs}" -le 1 ]; then echo "${asr_exp}_lowrank"; else echo "${asr_exp}_lowrank_$(basename "$1" .yaml)"; fi
}

# ---------------------------------------------------------------- stage 1
if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ]; then
    log 1 "data preparation"
    local/data.sh --python "${python}" ${data_opts} \
        ${train_data:+--real_train "${train_data}"} ${test_real_data:+--real_test "${test_real_data}"}
fi

# ---------------------------------------------------------------- stages 2-5
if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ]; then
    log 2 "format data/{train,dev} and the test sets into dump/raw"
    for d in data/train data/dev ${test_dirs}; do
        out=dump/raw/$(basename "$d")
        replace_generated "${out}" || exit 1; mark_generated "${out}"
    done
    tools format data/train data/dev ${test_dirs} --out_root dump/raw
fi
if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ]; then
    log 4 "remove utterances outside [${min_wav_duration}, ${max_wav_duration}] s from train and dev"
    for d in dump/raw/train dump/raw/dev; do
        tools filter "$d" --min "${min_wav_duration}" --max "${max_wav_duration}"
    done
fi
if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ]; then
    log 5 "BPE (unigram, ${nbpe}) and token list from dump/raw/train/text"
    mkdir -p "${token_dir}"
    cut -d' ' -f2- dump/raw/train/text > "${token_dir}/train.txt"
    ${python} local/recipe_tools.py train_bpe "${token_dir}/train.txt" "${token_dir}/bpe" "${nbpe}" > "${token_dir}/spm_train.log" 2>&1 \
        || { tail -20 "${token_dir}/spm_train.log" >&2; fail "sentencepiece training failed"; }
    ${python} -m espnet2.bin.tokenize_text --token_type bpe --bpemodel "${bpemodel}" \
        --input "${token_dir}/train.txt" --output "${token_list}" --write_vocabulary true \
        --add_symbol '<blank>:0' --add_symbol '<unk>:1' --add_symbol '<sos/eos>:-1' 2>> "${token_dir}/spm_train.log"
fi

train_opts=(--use_preprocessor true --token_type bpe --bpemodel "${PWD}/${bpemodel}"
            --token_list "${PWD}/${token_list}" --non_linguistic_symbols none --cleaner none --g2p none
            --ngpu "${ngpu}" --config "${asr_config}" --frontend_conf fs=16k)

# ---------------------------------------------------------------- stage 10
if [ ${stage} -le 10 ] && [ ${stop_stage} -ge 10 ]; then
    log 10 "collect stats -> ${stats_dir}"
    replace_generated "${stats_dir}" || exit 1; mark_generated "${stats_dir}"
    ${python} -m espnet2.bin.asr_train --collect_stats true "${train_opts[@]}" \
        --train_data_path_and_name_and_type dump/raw/train/wav.scp,speech,sound \
        --train_data_path_and_name_and_type dump/raw/train/text,text,text \
        --valid_data_path_and_name_and_type dump/raw/dev/wav.scp,speech,sound \
        --valid_data_path_and_name_and_type dump/raw/dev/text,text,text \
        --train_shape_file dump/raw/train/wav.scp --valid_shape_file dump/raw/dev/wav.scp \
        --output_dir "${stats_dir}" > "${stats_dir}/collect_stats.log" 2>&1 \
        || { tail -20 "${stats_dir}/collect_stats.log" >&2; fail "collect stats failed (${stats_dir}/collect_stats.log)"; }
    n_tokens=$(wc -l < "${token_list}")
    for s in train valid; do
        awk -v N="${n_tokens}" '{ print $0 "," N }' "${stats_dir}/${s}/text_shape" > "${stats_dir}/${s}/text_shape.bpe"
    done
fi

# ---------------------------------------------------------------- stage 11
if [ ${stage} -le 11 ] && [ ${stop_stage} -ge 11 ]; then
    log 11 "train ${asr_config} -> ${asr_exp} (log: ${asr_exp}/train.log)"
    mkdir -p "${asr_exp}"
    # Appended, not overwritten: with --resume true a rerun continues the same log, and the
    # per-epoch summary below reads every epoch from it.
    ${python} -m espnet_lowrank.launch -m espnet2.bin.asr_train "${train_opts[@]}" \
        --normalize global_mvn --normalize_conf "stats_file=${PWD}/${stats_dir}/train/feats_stats.npz" \
        --train_data_path_and_name_and_type dump/raw/train/wav.scp,speech,sound \
        --train_data_path_and_name_and_type dump/raw/train/text,text,text \
        --valid_data_path_and_name_and_type dump/raw/dev/wav.scp,speech,sound \
        --valid_data_path_and_name_and_type dump/raw/dev/text,text,text \
        --train_shape_file "${stats_dir}/train/speech_shape" --train_shape_file "${stats_dir}/train/text_shape.bpe" \
        --valid_shape_file "${stats_dir}/valid/speech_shape" --valid_shape_file "${stats_dir}/valid/text_shape.bpe" \
        --fold_length 80000 --fold_length 150 --resume true --use_tensorboard false \
        --output_dir "${asr_exp}" >> "${asr_exp}/train.log" 2>&1 \
        || { tail -20 "${asr_exp}/train.log" >&2; fail "training failed (${asr_exp}/train.log)"; }
    # The model the config's best_model_criterion picked: its n-best average, else its best epoch.
    best=$(cd "${asr_exp}" && ls valid.*.ave.pth valid.*.best.pth 2>/dev/null | head -1)
    [ -n "${best}" ] || fail "training wrote no valid.*.ave.pth or valid.*.best.pth in ${asr_exp}"
    # Self-contained exp dir (model.pth, bpe.model, feats_stats.npz, relative paths),
    # per-epoch summary and learning curves: what the repository ships.
    ${python} local/ship_exp.py "${asr_exp}" --model "${best}"
    ${python} local/summarize_training.py "${asr_exp}/train.log" --out_md "${asr_exp}/train_summary.md" \
        --out_png "$(dirname "${results}")/learning_curves.png"
    cp "${inference_config}" "${asr_exp}/decode.yaml"
fi

# ---------------------------------------------------------------- stage 12
if [ ${stage} -le 12 ] && [ ${stop_stage} -ge 12 ]; then
    calib_dir=${asr_exp}_calib
    for conf in ${lowrank_configs}; do
        lowrank_exp=$(lowrank_exp_of "${conf}")
        batch_size=$(tools check_lowrank "${conf}")
        n=${num_calib:-$(${python} -c "import sys; from espnet_lowrank.config import LowRankConfig as C; print(C.from_yaml(sys.argv[1]).calibration.num_calib or 64)" "${conf}")}
        # Calibration: n training utterances (never dev/test), split at batch boundaries.
        # Part statistics stay: a rerun reuses those whose inputs are unchanged (jobs.py).
        require_generated "${calib_dir}" || exit 1
        mark_generated "${calib_dir}"
        rm -rf "${calib_dir}"/split*
        jobs=$(tools calib_split --train "${calib_data}" --num "${n}" --batch_size "${batch_size}" --nj "${nj}" --out "${calib_dir}")
        if [ "$(tools needs_audio "${conf}")" = yes ]; then
            # Sequential calibration / recovery pass over the audio many times: one job.
            log 12 "compress ${asr_exp} on ${n} training utterances ($(basename "${conf}"), one job) -> ${lowrank_exp}"
            ${python} -m espnet_lowrank.bin.compress --asr_train_config "${asr_exp}/config.yaml" \
                --asr_model_file "${model_file}" --lowrank_config "${conf}" --calib_data "${calib_dir}" \
                --output_dir "${lowrank_exp}" --overwrite > "${calib_dir}/compress.log" 2>&1 \
                || { tail -20 "${calib_dir}/compress.log" >&2; fail "compression failed"; }
            cp "${inference_config}" "${lowrank_exp}/decode.yaml"
            continue
        fi
        log 12 "calibrate ${asr_exp} on ${n} training utterances in ${jobs} jobs ($(basename "${conf}"))"
        ${python} - "${jobs}" "${backend}" "${calib_dir}" "${asr_exp}/config.yaml" "${model_file}" "${conf}" <<'PY'
import sys
from espnet_lowrank.jobs import run_jobs
nj, backend, calib, config, model, conf = sys.argv[1:]
cmds, logs = [], []
for j in range(1, int(nj) + 1):
    cmds.append([sys.executable, "-m", "espnet_lowrank.bin.compress", "--asr_train_config", config,
                 "--asr_model_file", model, "--lowrank_config", conf,
                 "--calib_data", f"{calib}/split{nj}/{j}", "--stats_out", f"{calib}/stats.{j}.pt"])
    logs.append(f"{calib}/log/calib.{j}.log")
run_jobs(cmds, logs, backend=backend, desc="calibration",
         outputs=[f"{calib}/stats.{j}.pt" for j in range(1, int(nj) + 1)])
PY
        log 12 "merge statistics and compress -> ${lowrank_exp}"
        ${python} -m espnet_lowrank.bin.compress --asr_train_config "${asr_exp}/config.yaml" \
            --asr_model_file "${model_file}" --lowrank_config "${conf}" \
            --stats $(for j in $(seq 1 "${jobs}"); do echo "${calib_dir}/stats.${j}.pt"; done) \
            --output_dir "${lowrank_exp}" --overwrite > "${calib_dir}/compress.log" 2>&1 \
            || { tail -20 "${calib_dir}/compress.log" >&2; fail "compression failed"; }
        cp "${inference_config}" "${lowrank_exp}/decode.yaml"
    done
    dense=; [ "${decode_dense}" = true ] && dense=${asr_exp}
    for exp in ${dense} $(for c in ${lowrank_configs}; do lowrank_exp_of "$c"; done); do
        for t in ${test_dirs}; do
            name=$(basename "$t")
            log 12 "decode ${name} with ${exp}"
            dump=dump/raw/${name}; [ -f "${dump}/wav.scp" ] || dump=$t
            mf=${exp}/model.pth; [ "${exp}" = "${asr_exp}" ] && mf=${model_file}
            ${python} -m espnet_lowrank.bin.decode --asr_exp "${exp}" --data "${dump}" \
                --output_dir "${exp}/decode_${name}" --nj "${nj}" --backend "${backend}" \
                --inference_config "${inference_config}" --inference_asr_model "${mf}"
        done
    done
fi

# ---------------------------------------------------------------- stage 13
if [ ${stage} -le 13 ] && [ ${stop_stage} -ge 13 ]; then
    log 13 "score and write ${results}"
    exps="${asr_exp} $(for c in ${lowrank_configs}; do lowrank_exp_of "$c"; done)"
    mkdir -p "$(dirname "${results}")"
    ${python} -m espnet_lowrank.bin.results --exps ${exps} --test_sets ${test_dirs} \
        --normalize basic --output "${results}"
    log 13 "wrote ${results}"
fi
