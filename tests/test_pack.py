"""ESPnet's own packing on a compressed exp dir: ``python -m espnet2.bin.pack asr``
of a compressed Whisper tiny.en, unpacked as ``Speech2Text.from_pretrained``
does it, decodes real speech to the same text as the exp dir itself."""

import sys
import zipfile
from pathlib import Path

import pytest
import yaml

import espnet_lowrank
from espnet_lowrank.audio import load_audio
from espnet_lowrank.scoring import score_texts
from cli import run_cli  # tests/ is on sys.path

pytestmark = pytest.mark.slow

NUM_CALIB = 8  # conftest's lowrank_exp calibrates on the first 8 LibriSpeech utterances



def _pack(exp: Path, outpath: Path) -> None:
    # relative paths (cwd = the exp dir's parent), as asr.sh packs them
    cmd = [sys.executable, "-m", "espnet2.bin.pack", "asr",
           "--asr_train_config", f"{exp.name}/config.yaml",
           "--asr_model_file", f"{exp.name}/model.pth",
           "--option", f"{exp.name}/decode.yaml",
           "--outpath", str(outpath)]
    run_cli(cmd, cwd=exp.parent, timeout=300, stderr_tail=3000)


def _from_pretrained(archive: Path, unpack_dir: Path):
    """``Speech2Text.from_pretrained(<zip>)`` needs espnet_model_zoo's downloader;
    it unpacks with ``pack_funcs.unpack`` and calls ``Speech2Text(**kwargs)``,
    which this does directly."""
    from espnet2.bin.asr_inference import Speech2Text
    from espnet2.main_funcs.pack_funcs import unpack

    files = unpack(archive, unpack_dir)
    decode = Path(files["asr_train_config"]).parent / "decode.yaml"
    options = yaml.safe_load(decode.read_text())
    options.pop("batch_size")
    return Speech2Text.from_pretrained(device="cpu", **files, **options), files


def test_packed_compressed_model_decodes_like_the_exp_dir(lowrank_exp, librispeech, tmp_path):
    from espnet2.bin.asr_inference import Speech2Text

    espnet_lowrank.register()
    archive = tmp_path / "lowrank.zip"
    _pack(lowrank_exp, archive)
    with zipfile.ZipFile(archive) as z:
        names = set(z.namelist())
    exp = lowrank_exp.name
    assert names == {"meta.yaml", f"{exp}/config.yaml", f"{exp}/model.pth", f"{exp}/decode.yaml"}

    packed, files = _from_pretrained(archive, tmp_path / "unpacked")
    assert set(files) == {"asr_train_config", "asr_model_file"}
    assert all(Path(p).is_relative_to(tmp_path / "unpacked") for p in files.values())
    config = yaml.safe_load(Path(files["asr_train_config"]).read_text())
    assert config["encoder"] == "lowrank" and config["encoder_conf"]["plan"]
    options = yaml.safe_load((lowrank_exp / "decode.yaml").read_text())
    options.pop("batch_size")
    direct = Speech2Text(str(lowrank_exp / "config.yaml"), str(lowrank_exp / "model.pth"),
                         device="cpu", **options)
    assert type(packed.asr_model.encoder) is type(direct.asr_model.encoder)
    want_state, got_state = direct.asr_model.state_dict(), packed.asr_model.state_dict()
    assert set(got_state) == set(want_state)
    assert all(got_state[k].equal(want_state[k]) for k in want_state)
    utts = librispeech[NUM_CALIB:NUM_CALIB + 2]
    hyps = {}
    for utt in utts:
        audio = load_audio(utt.wav_path)
        hyps[utt.utt_id] = packed(audio)[0][0]
        assert hyps[utt.utt_id] == direct(audio)[0][0], utt.utt_id
    row = score_texts({u.utt_id: u.text for u in utts}, hyps, normalize="whisper")
    # the bound of test_whisper_compress.py's stock-CLI test on the same two utterances
    assert row.err < 40.0, (row, hyps)
