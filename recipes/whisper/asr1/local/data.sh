#!/usr/bin/env bash
# Stage 1: data/calib and data/test as Kaldi-style dirs.
#  default: synthesized with Piper from fixed sentences (deterministic)
#  --real_data DIR: a Kaldi or LibriSpeech dir; its first num_calib utterances
#  calibrate, the next num_test are the test set (never overlapping).
set -euo pipefail
real_data=
num_calib=32
num_test=16
python=python
__recipe_options="real_data num_calib num_test python"
. ../../common/parse_options.sh
. ../../common/generated.sh

texts=../../common
# data/calib and data/test are replaced only if an earlier run made them.
require_generated data/calib data/test
if [ -z "${real_data}" ]; then
    replace_generated data/calib data/test
    ${python} -m espnet_lowrank.bin.synthesize --texts ${texts}/texts_calib.txt --output_dir data/calib \
        --prefix calib --num "${num_calib}"
    ${python} -m espnet_lowrank.bin.synthesize --texts ${texts}/texts_test.txt --output_dir data/test \
        --prefix test --num "${num_test}"
    mark_generated data/calib data/test
else
    [ -d "${real_data}" ] || { echo "$0: --real_data ${real_data} is not a directory" >&2; exit 1; }
    ${python} - "${real_data}" "${num_calib}" "${num_test}" "${GENERATED_MARK}" <<'PY'
import os, shutil, sys
from espnet_lowrank.data import prepare_data_dir, write_data_dir
import tempfile

src, num_calib, num_test, mark = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
with tempfile.TemporaryDirectory() as tmp:
    utts = prepare_data_dir(src, tmp + "/all")
if len(utts) < num_calib + 1:
    sys.exit(f"{src} has {len(utts)} utterances; need more than --num_calib {num_calib}")
calib, test = utts[:num_calib], utts[num_calib:num_calib + num_test]
for d, part in (("data/calib", calib), ("data/test", test)):
    if os.path.exists(d):  # made by an earlier run (require_generated checked its marker)
        shutil.rmtree(d)
    os.makedirs(d)
    open(os.path.join(d, mark), "w").close()
    write_data_dir(d, part)
print(f"data/calib: {len(calib)} utterances, data/test: {len(test)} utterances from {src}")
PY
fi
