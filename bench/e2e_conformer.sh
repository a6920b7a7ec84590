#!/usr/bin/env bash
# End-to-end rows of the shipped Conformer (recipes/conformer/asr1): its held-out real sets as the
# recipe's stage 1 defines them (test_real: VCTK p227/p228/p334, LibriSpeech speakers 1xxx,
# arctic_misc; test_real_seen: ARCTIC cathy a0560-a0593), the recipe's conf/lowrank/best.yaml
# calibrated on AN4 (training speech), then bench/e2e_speed.py at beam 1 and 4, 1 and 2 threads.
#   bash bench/e2e_conformer.sh WORK_DIR [OUT_DIR]     (default OUT_DIR: bench/results/e2e_conformer)
# BEAMS="" decodes at each exp dir's decode.yaml beam (the shipped: 10, with the LM); THREADS="1" one count.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
work=$(mkdir -p "$1" && cd "$1" && pwd); out=${2:-${repo}/bench/results/e2e_conformer}
out=$(mkdir -p "${out}" && cd "${out}" && pwd)   # the script runs from the recipe dir below
shared=${ESPNET_LOWRANK_SHARED_DATA:-$(cd "${repo}/.." && pwd)/shared/data}
python=${PYTHON:-${repo}/.venv/bin/python}
cd "${repo}/recipes/conformer/asr1"   # the exp dir's config.yaml paths are relative to it
"${python}" - "${shared}" "${work}" <<'PY'
import re, sys
from espnet_lowrank.data import read_data_dir, write_data_dir
shared, work = sys.argv[1:]
held = re.compile(r"^(p227|p228|p334|1[0-9]{1,3})$")
real = [u for d in ("vctk", "librispeech_train-clean-100") for u in read_data_dir(f"{shared}/{d}", require_text=True)
        if held.match(u.speaker)] + read_data_dir(f"{shared}/arctic_misc", require_text=True)
seen = [u for u in read_data_dir(f"{shared}/arctic_cathy_a", require_text=True)
        if 560 <= int(re.search(r"_a(\d{4})", u.utt_id).group(1)) <= 593]
write_data_dir(f"{work}/test_real", real)
write_data_dir(f"{work}/test_real_seen", seen)
print(f"test_real {len(real)}, test_real_seen {len(seen)} utterances")
PY
beams=${BEAMS-1 4}; beam_args=(); [ -z "${beams}" ] || beam_args=(--beams ${beams})
best=${work}/exp/asr_train_asr_conformer_best
[ -f "${best}/model.pth" ] || "${python}" -m espnet_lowrank.bin.compress \
    --asr_train_config exp/asr_train_asr_conformer/config.yaml --asr_model_file exp/asr_train_asr_conformer/model.pth \
    --calib_data "${shared}/an4" --lowrank_config conf/lowrank/best.yaml --output_dir "${best}"
"${python}" "${repo}/bench/e2e_speed.py" --dense "${PWD}/exp/asr_train_asr_conformer" --exps "${best}" \
    --int8 dense asr_train_asr_conformer_best --faster_whisper none \
    --sets "${work}/test_real" "${work}/test_real_seen" "${beam_args[@]}" \
    --threads ${THREADS:-1 2} --out_dir "${out}"
cp "${best}/report.json" "${out}/compress_report.json"
