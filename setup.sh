#!/usr/bin/env bash
# Create the virtualenv (.venv, or $ESPNET_LOWRANK_VENV) and install the plugin
# with everything the main job and the tests need. Safe to run again.
#   --with-slurm   also install slurm-wlm and munge (Debian, root) for the
#                  one-node test cluster of tests/slurm/; quick when installed.
set -euo pipefail
cd "$(dirname "$0")"
for arg in "$@"; do
    case "$arg" in
        --with-slurm) bash tests/slurm/install.sh ;;
        *) echo "$0: unknown option $arg (known: --with-slurm)" >&2; exit 1 ;;
    esac
done
VENV=${ESPNET_LOWRANK_VENV:-.venv}
PYTHON=${PYTHON:-python3}

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
# Keep the pip that ships with Python 3.11 (23.x): newer pips reject espnet's
# ci_sdr dependency, whose extra names a git URL.
"$VENV/bin/pip" install -q --disable-pip-version-check -e ".[base,tts,test]"

# g2p_en (pulled in by espnet) calls nltk.download() at import when these two
# archives are absent; with no network that only costs time and log noise.
# ASR never uses g2p, so empty placeholders in the venv's nltk_data suffice.
"$VENV/bin/python" - <<'PY'
import os, sys, zipfile
root = os.path.join(sys.prefix, "nltk_data")
for rel in ("taggers/averaged_perceptron_tagger_eng.zip", "corpora/cmudict.zip"):
    path = os.path.join(root, rel)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        zipfile.ZipFile(path, "w").close()
PY

# Opt-in import hook: plain `python -m espnet2.bin.asr_inference` then knows
# `encoder: lowrank` inside this venv.
"$VENV/bin/python" -m espnet_lowrank.bin.install_hook
echo "espnet_lowrank installed in $VENV"
