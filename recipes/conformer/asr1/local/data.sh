#!/usr/bin/env bash
# Stage 1: Kaldi-style data dirs under data/:
#   train, dev   real speech (Kaldi dirs or LibriSpeech trees) + Piper speech synthesized
#                from text_corpora sentences with varied length/noise scales
#   test_synth   Piper speech of sentences disjoint from every training transcript
#   test_real    real speech of speakers never trained on: the --real_test dirs plus
#                the --heldout_speakers of the training dirs (VCTK p227/p228/p334,
#                39 LibriSpeech speakers)
#   test_real_seen  real speech of a trained speaker, sentences never trained on: the
#                --heldout_utts of the training dirs (ARCTIC cathy a0560-a0593, all takes)
# Training utterances whose transcript equals a test transcript are dropped.
set -euo pipefail
shared_data=${ESPNET_LOWRANK_SHARED_DATA:-$(cd ../../../.. && pwd)/shared/data}
real_train="librispeech_train-clean-100 arctic_cathy_a ljspeech vctk an4 pocketsphinx"  # names under shared_data or paths
real_test="arctic_misc"
heldout_speakers='^(p227|p228|p334|1[0-9]{1,3})$'  # regex over speaker ids of the training dirs: held out for test_real
heldout_utts='^cathy_arctic_a05[6-9]'  # regex over utterance ids of the training dirs: held out for test_real_seen
corpora=                   # default: ${shared_data}/text_corpora
num_synth_train=2500       # about 2.5 h of synthesized speech (Piper, 4 voice settings)
num_synth_test=50
num_dev=100
max_per_dir=0              # >0: use only the first N utterances of each training dir
max_test=0                 # >0: at most N real test utterances
tiny=false
python=python
# --tiny true: CI-sized defaults, which other options on the command line still override.
for ((__i = 1; __i < $#; __i++)); do
    __j=$((__i + 1)); [ "${!__i}" = --tiny ] && tiny=${!__j}
done
if [ "${tiny}" = true ]; then
    real_train="an4"; real_test="arctic_misc"; heldout_speakers=; heldout_utts=
    num_synth_train=4; num_synth_test=3; num_dev=2; max_per_dir=8; max_test=3
fi
__recipe_options="shared_data real_train real_test heldout_speakers heldout_utts corpora num_synth_train num_synth_test num_dev max_per_dir max_test tiny python"
. ../../common/parse_options.sh

corpora=${corpora:-${shared_data}/text_corpora}
resolve() { for d in "$@"; do case "$d" in /*|./*|../*) echo "$d" ;; *) echo "${shared_data}/$d" ;; esac; done; }
train_dirs=$(resolve ${real_train})
test_dirs=$(resolve ${real_test})

# Validate every source before any work.
${python} local/recipe_tools.py check_data --require_text ${train_dirs} ${test_dirs}
[ -d "${corpora}" ] || { echo "ERROR: text corpora dir not found: ${corpora}" >&2; exit 1; }

# Replaced only if an earlier run made them (generated.sh); marked before they are
# written, so that a run stopped midway leaves them replaceable.
. ../../common/generated.sh
replace_generated data/train data/dev data/test_real data/test_real_seen data/test_synth data/local
mark_generated data/local data/train data/dev data/test_real
${python} local/recipe_tools.py select_sentences --corpora "${corpora}" --real_dirs ${train_dirs} ${test_dirs} \
    --num_train "${num_synth_train}" --num_test "${num_synth_test}" --groups 4 --out data/local

# Voice settings: (length_scale noise_scale noise_w) per sentence group.
settings=("1.0 0.667 0.8" "0.85 0.5 0.6" "1.2 0.8 1.0" "0.95 0.3 0.4")
synth_dirs=
for g in 0 1 2 3; do
    [ -s "data/local/synth_train.${g}.txt" ] || continue
    read -r ls ns nw <<< "${settings[$g]}"
    ${python} -m espnet_lowrank.bin.synthesize --texts "data/local/synth_train.${g}.txt" \
        --output_dir "data/local/synth_train${g}" --prefix "synth${g}" \
        --length_scale "${ls}" --noise_scale "${ns}" --noise_w "${nw}" --overwrite
    synth_dirs+=" data/local/synth_train${g}"
done
${python} -m espnet_lowrank.bin.synthesize --texts data/local/synth_test.txt --output_dir data/test_synth \
    --prefix synthtest --length_scale 1.05 --noise_scale 0.6 --noise_w 0.7 --overwrite
mark_generated data/test_synth

${python} local/recipe_tools.py combine --real_train ${train_dirs} --real_test ${test_dirs} \
    --heldout_speakers "${heldout_speakers}" --heldout_utts "${heldout_utts}" --synth_train ${synth_dirs} --synth_test data/test_synth \
    --max_per_dir "${max_per_dir}" --max_test "${max_test}" --num_dev "${num_dev}" --out data
[ ! -d data/test_real_seen ] || mark_generated data/test_real_seen
