"""ESPnet Whisper encoder/decoder, the dense exp-dir export, and decoding
parity of ESPnet's asr_inference with openai-whisper greedy decoding."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
import yaml

from espnet_lowrank.espnet.registry import register
from espnet_lowrank.whisper import checkpoints as ck
from espnet_lowrank.whisper.espnet_whisper import LocalWhisperDecoder, LocalWhisperEncoder

from test_whisper_checkpoints import read_utts
from cli import run_cli  # tests/ is on sys.path

REPO = Path(__file__).resolve().parents[1]

register()


def _randomize(module: torch.nn.Module, seed: int = 0) -> None:
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.1)


# -- modules ---------------------------------------------------------------------


def test_unknown_kwargs_rejected():
    with pytest.raises(ValueError, match="unknown"):
        LocalWhisperEncoder(n_state=16, n_head=2, n_layer=1, bogus=1)
    with pytest.raises(ValueError, match="unknown"):
        LocalWhisperDecoder(100, 16, n_state=16, n_head=2, n_layer=1, bogus=1)


def test_encoder_padded_batch_equals_single_utterances():
    enc = LocalWhisperEncoder(n_mels=80, n_state=16, n_head=2, n_layer=1).eval()
    _randomize(enc)
    torch.manual_seed(1)
    a, b = torch.randn(16000) * 0.1, torch.randn(24000) * 0.1
    batch = torch.zeros(2, 24000)
    batch[0, :16000], batch[1] = a, b
    with torch.no_grad():
        xs, olens, _ = enc(batch, torch.tensor([16000, 24000]))
        single, _, _ = enc(a[None], torch.tensor([16000]))
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(a), 80)
        ref = enc.encoders(mel[None])
    assert xs.shape == (2, 1500, 16) and olens.tolist() == [1500, 1500]
    assert enc.output_size() == 16
    torch.testing.assert_close(xs[:1], single)
    torch.testing.assert_close(single, ref)


def test_encoder_128_mels():
    enc = LocalWhisperEncoder(n_mels=128, n_state=16, n_head=2, n_layer=1).eval()
    with torch.no_grad():
        xs, _, _ = enc(torch.randn(1, 8000) * 0.1, torch.tensor([8000]))
    assert xs.shape == (1, 1500, 16)


def test_decoder_scores_match_full_forward():
    dec = LocalWhisperDecoder(51864, 16, n_ctx=32, n_state=16, n_head=2, n_layer=2).eval()
    _randomize(dec)
    memory = torch.randn(2, 30, 16)
    ys = torch.tensor([[50257, 50362, 40, 716], [50257, 50362, 11, 12]])
    with torch.no_grad():
        logits, _ = dec(memory, torch.tensor([30, 30]), ys, torch.tensor([4, 4]))
        ref = torch.log_softmax(logits[:, -1], dim=-1)
        logp, states = dec.batch_score(ys[:, :3], [None, None], memory)
        logp2, _ = dec.batch_score(ys, states, memory)  # cached cross-attention
        one, _ = dec.score(ys[1], None, memory[1])
    torch.testing.assert_close(logp2, ref)
    torch.testing.assert_close(one, ref[1])
    assert logp.shape == (2, 51864)


def test_decoder_suppression():
    dec = LocalWhisperDecoder(
        51864, 16, n_ctx=32, n_state=16, n_head=2, n_layer=1,
        suppress_tokens=[5, 6], suppress_blank_tokens=[220, 50256], sample_begin=2,
    ).eval()
    # openai-whisper leaves some weights as torch.empty (loaded from a checkpoint
    # in real use): give them finite values, or the logits can be NaN by chance.
    torch.manual_seed(0)
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0.0, 0.02)
    memory = torch.randn(1, 30, 16)
    with torch.no_grad():
        first, _ = dec.batch_score(torch.tensor([[50257, 50362]]), [None], memory)
        later, _ = dec.batch_score(torch.tensor([[50257, 50362, 40]]), [None], memory)
    assert torch.isinf(first[0, [5, 6, 220, 50256]]).all()
    assert torch.isinf(later[0, [5, 6]]).all() and torch.isfinite(later[0, [220, 50256]]).all()


def test_ends_in_loop():
    from espnet_lowrank.whisper.loop_guard import ends_in_loop

    assert ends_in_loop([1, 2] + [7, 8, 9] * 4, repeats=4, min_tokens=12)
    assert not ends_in_loop([7, 8, 9] * 3, repeats=4, min_tokens=12)
    assert not ends_in_loop([7, 8, 9] * 4 + [1], repeats=4, min_tokens=12)
    # short spans must cover min_tokens: "no no no no" is speech, not a loop
    assert not ends_in_loop([5] * 11, repeats=4, min_tokens=12)
    assert ends_in_loop([5] * 12, repeats=4, min_tokens=12)
    assert not ends_in_loop([], repeats=4, min_tokens=12)


def test_decoder_loop_guard_forces_the_end_token():
    def build(sample_begin=2, **kw):
        dec = LocalWhisperDecoder(51864, 16, n_ctx=64, n_state=16, n_head=2, n_layer=1,
                                  sample_begin=sample_begin, **kw).eval()
        _randomize(dec)
        return dec

    memory = torch.randn(1, 30, 16)
    eot = 50256  # tiny.en's <|endoftext|>
    prefix = [50257, 50362]
    # " New York," (968, 1971, 11 in the GPT-2 vocabulary) four times, and three times
    loop, three = prefix + [968, 1971, 11] * 4, prefix + [968, 1971, 11] * 3
    with torch.no_grad():
        forced, _ = build().batch_score(torch.tensor([loop]), [None], memory)
        free, _ = build().batch_score(torch.tensor([three]), [None], memory)
        unguarded, _ = build(loop_repeats=0).batch_score(torch.tensor([loop]), [None], memory)
        # the prompt never counts: a repeated prefix does not end the text
        prompt_only, _ = build(sample_begin=13).batch_score(torch.tensor([[50257] * 13]), [None], memory)
    assert forced[0, eot] == 0.0 and torch.isinf(forced[0]).sum() == 51863
    for logp in (free, unguarded, prompt_only):
        assert torch.isfinite(logp[0]).sum() > 50000
    with pytest.raises(ValueError, match="loop_repeats"):
        build(loop_repeats=1)



def test_tokenizer_patch_is_explicit():
    """Importing the Whisper modules (and registering) patches nothing; building
    the decoder, as Speech2Text and training do, installs the compat view."""
    code = (
        "import espnet_lowrank, espnet_lowrank.whisper.espnet_whisper as ew\n"
        "import espnet_lowrank.whisper.tokenizer, espnet_lowrank.whisper.export\n"
        "espnet_lowrank.register()\n"
        "from whisper.tokenizer import Tokenizer\n"
        "print('patched:', 'tokenizer' in Tokenizer.__dict__)\n"
        "ew.LocalWhisperDecoder(51864, 16, n_ctx=4, n_state=16, n_head=2, n_layer=1)\n"
        "print('patched:', 'tokenizer' in Tokenizer.__dict__)\n"
    )
    proc = run_cli([sys.executable, "-c", code], cwd=REPO, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # ESPnet prints its own notes to stdout
    assert [l for l in proc.stdout.splitlines() if l.startswith("patched:")] == [
        "patched: False", "patched: True"]


def test_espnet_whisper_tokenizer_classes_work():
    from espnet2.text.whisper_token_id_converter import OpenAIWhisperTokenIDConverter
    from espnet2.text.whisper_tokenizer import OpenAIWhisperTokenizer

    from espnet_lowrank.whisper.tokenizer import install_tokenizer_compat

    install_tokenizer_compat()

    text = " Hello world, it's Mrs. Linde's café."
    for model_type in ("whisper_en", "whisper_multilingual"):
        conv = OpenAIWhisperTokenIDConverter(model_type=model_type)
        tok = OpenAIWhisperTokenizer(model_type=model_type)
        ids = conv.tokenizer.encode(text)
        tokens = conv.ids2tokens(ids + [conv.tokenizer.eot])
        assert tok.tokens2text(tokens) == text
        assert tok.text2tokens(text) == tokens
        assert conv.tokens2ids(tokens)[-len(ids):] == ids


# -- export ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_exp(tmp_path_factory):
    try:
        ck.packaged_model_dir("tiny.en")
    except ck.CheckpointError as e:
        pytest.skip(str(e))
    from espnet_lowrank.bin.export_whisper import main

    out = tmp_path_factory.mktemp("exp") / "whisper_tiny_en"
    main(["--model", "tiny.en", "--output_dir", str(out)])
    return out


def test_export_loads_with_no_missing_keys(tiny_exp):
    from espnet2.tasks.asr import ASRTask

    assert sorted(os.listdir(tiny_exp)) == ["config.yaml", "decode.yaml", "model.pth"]
    config = yaml.safe_load((tiny_exp / "config.yaml").read_text(encoding="utf-8"))
    assert config["encoder"] == "whisper_local" and config["decoder"] == "whisper_local"
    assert config["token_type"] == "whisper_en" and len(config["token_list"]) == 51864
    model, _ = ASRTask.build_model_from_file(
        tiny_exp / "config.yaml", None, "cpu"
    )
    state = torch.load(tiny_exp / "model.pth", map_location="cpu")
    result = model.load_state_dict(state, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    assert set(state) == set(model.state_dict())
    assert model.ctc is None
    assert model.token_list[model.sos] == "<|startoftranscript|>"
    assert model.token_list[model.eos] == "<|endoftext|>"
    names = dict(model.named_modules())
    for n in ("encoder.encoders.blocks.3.attn.query", "encoder.encoders.blocks.0.mlp.2"):
        assert isinstance(names[n], torch.nn.Linear)
    with pytest.raises(FileExistsError):
        from espnet_lowrank.bin.export_whisper import main

        main(["--model", "tiny.en", "--output_dir", str(tiny_exp), "--no_check"])


def _whisper_decode(model, audio: np.ndarray) -> str:
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)), model.dims.n_mels)
    options = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
    return whisper.decode(model, mel, options).text.strip()


def _speech2text(exp: Path):
    from espnet2.bin.asr_inference import Speech2Text

    decode = yaml.safe_load((exp / "decode.yaml").read_text())
    decode.pop("batch_size")
    return Speech2Text(
        asr_train_config=str(exp / "config.yaml"),
        asr_model_file=str(exp / "model.pth"),
        device="cpu",
        **decode,
    )


@pytest.mark.slow
def test_speech2text_matches_whisper_decode(tiny_exp, shared_data_dir):
    model = ck.build_whisper_model("tiny.en")
    s2t = _speech2text(tiny_exp)
    for utt, audio in read_utts(shared_data_dir, 3):
        text = s2t(audio)[0][0].strip()
        assert text == _whisper_decode(model, audio), utt


@pytest.mark.slow
def test_asr_inference_cli(tiny_exp, shared_data_dir, tmp_path):
    utts = read_utts(shared_data_dir, 2)
    set_dir = shared_data_dir / "librispeech_train-clean-100"
    lines = (set_dir / "wav.scp").read_text().splitlines()[: len(utts)]
    wav_scp = tmp_path / "wav.scp"
    wav_scp.write_text(
        "".join(f"{u} {set_dir / rel}\n" for u, rel in (l.split(maxsplit=1) for l in lines))
    )
    out = tmp_path / "decode"
    cmd = [
        sys.executable, "-m", "espnet_lowrank.launch", "-m", "espnet2.bin.asr_inference",
        "--asr_train_config", str(tiny_exp / "config.yaml"),
        "--asr_model_file", str(tiny_exp / "model.pth"),
        "--config", str(tiny_exp / "decode.yaml"),
        "--data_path_and_name_and_type", f"{wav_scp},speech,sound",
        "--output_dir", str(out), "--ngpu", "0",
    ]
    proc = run_cli(cmd, cwd=REPO, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hyps = {}
    for line in (out / "1best_recog" / "text").read_text(encoding="utf-8").splitlines():
        utt, _, text = line.partition(" ")
        hyps[utt] = text.strip()
    model = ck.build_whisper_model("tiny.en")
    assert hyps == {utt: _whisper_decode(model, audio) for utt, audio in utts}


@pytest.mark.slow
def test_base_multilingual_export_matches_whisper_decode(tmp_path, shared_data_dir):
    try:
        ck.packaged_model_dir("base")
    except ck.CheckpointError as e:
        pytest.skip(str(e))
    from espnet_lowrank.whisper.export import export_whisper

    exp = Path(export_whisper("base", str(tmp_path / "whisper_base"), check=False))
    config = yaml.safe_load((exp / "config.yaml").read_text(encoding="utf-8"))
    assert config["token_type"] == "whisper_multilingual"
    assert len(config["token_list"]) == 51865
    assert config["decoder_conf"]["sample_begin"] == 4  # sot, en, transcribe, notimestamps
    assert (config["decoder_conf"]["loop_repeats"], config["decoder_conf"]["loop_tokens"]) == (4, 12)
    (utt, audio), = read_utts(shared_data_dir, 1)
    text = _speech2text(exp)(audio)[0][0].strip()
    assert text == _whisper_decode(ck.build_whisper_model("base"), audio), utt


def test_decoder_prompt_follows_the_exps_language_and_task():
    """Recovery teacher-forces the prefix that decoding primes with, so a
    multilingual exp's whisper_language / whisper_task must reach prompt()."""
    from whisper.model import ModelDimensions
    from whisper.tokenizer import get_tokenizer

    from espnet_lowrank.artifact import build_asr_model
    from espnet_lowrank.whisper.export import build_config

    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=1, n_audio_layer=1,
                           n_vocab=51865, n_text_ctx=448, n_text_state=64, n_text_head=1, n_text_layer=1)
    for language, task in (("de", "transcribe"), ("en", "translate"), ("en", "transcribe")):
        model = build_asr_model(build_config(dims, language, task))
        tokenizer = get_tokenizer(True, language=language, task=task)
        prefix, eot = model.decoder.prompt()
        assert prefix == list(tokenizer.sot_sequence_including_notimestamps) and eot == tokenizer.eot
        assert prefix[1] == tokenizer.to_language_token(language)
