"""A real ESPnet Conformer ASR model, end to end through stock ESPnet:

built with ``ASRTask.build_model``, trained for a few optimizer steps on real
speech (AN4), saved as an exp dir (config.yaml + model.pth + token list),
compressed with ``python -m espnet_lowrank.bin.compress``, reloaded through
``ASRTask.build_model_from_file`` with zero missing and zero unexpected keys,
and decoded with the stock ``python -m espnet2.bin.asr_inference``.
"""

import sys

import pytest
import torch
import yaml

from espnet_lowrank.audio import load_audio
from espnet_lowrank.data import read_data_dir, write_data_dir
from cli import run_cli, tool_env  # tests/ is on sys.path

pytestmark = pytest.mark.slow

TINY_CONFORMER = {
    "encoder": "conformer",
    "encoder_conf": {
        "output_size": 64, "attention_heads": 2, "linear_units": 128, "num_blocks": 2,
        "dropout_rate": 0.0, "positional_dropout_rate": 0.0, "attention_dropout_rate": 0.0,
        "input_layer": "conv2d", "macaron_style": True, "rel_pos_type": "latest",
        "pos_enc_layer_type": "rel_pos", "selfattention_layer_type": "rel_selfattn",
        "activation_type": "swish", "use_cnn_module": True, "cnn_module_kernel": 7,
    },
    "decoder": "transformer",
    "decoder_conf": {"attention_heads": 2, "linear_units": 128, "num_blocks": 1},
    "model_conf": {"ctc_weight": 0.3, "lsm_weight": 0.1},
    "frontend_conf": {"n_fft": 512, "hop_length": 160, "n_mels": 40},
    "normalize": "utterance_mvn",
}
LOWRANK = {"theta_attention": 0.9, "theta_feed_forward": 0.95, "rank_multiple": 8,
           "attention": "auto", "batch_size": 2}


@pytest.fixture(scope="module")
def an4(shared_data_dir, tmp_path_factory):
    """8 AN4 utterances to train and calibrate on, 3 others to decode."""
    utts = read_data_dir(str(shared_data_dir / "an4"), require_text=True)
    root = tmp_path_factory.mktemp("an4")
    train, test = utts[:8], utts[-3:]
    write_data_dir(str(root / "train"), train)
    write_data_dir(str(root / "test"), test)
    return root, train, test


def _char_ids(text, token_to_id):
    return [token_to_id.get("<space>" if c == " " else c, token_to_id["<unk>"]) for c in text]


@pytest.fixture(scope="module")
def trained_exp(an4, tmp_path_factory):
    from espnet2.tasks.asr import ASRTask

    root, train, _ = an4
    exp = tmp_path_factory.mktemp("exp") / "asr_tiny_conformer"
    exp.mkdir()
    chars = sorted({c for u in train for c in u.text if c != " "})
    tokens = ["<blank>", "<unk>", "<space>"] + chars + ["<sos/eos>"]
    (exp / "tokens.txt").write_text("".join(t + "\n" for t in tokens))
    (exp / "train.yaml").write_text(yaml.safe_dump(TINY_CONFORMER))
    args = ASRTask.get_parser().parse_args([
        "--config", str(exp / "train.yaml"), "--token_list", str(exp / "tokens.txt"),
        "--token_type", "char", "--output_dir", str(exp), "--ngpu", "0",
    ])
    torch.manual_seed(0)
    model = ASRTask.build_model(args)

    # A few optimizer steps on real speech.
    token_to_id = {t: i for i, t in enumerate(tokens)}
    audio = [torch.from_numpy(load_audio(u.wav_path)) for u in train]
    speech = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True)
    speech_lengths = torch.tensor([len(a) for a in audio])
    ids = [torch.tensor(_char_ids(u.text, token_to_id)) for u in train]
    text = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=-1)
    text_lengths = torch.tensor([len(i) for i in ids])
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss, _, _ = model(speech=speech, speech_lengths=speech_lengths, text=text, text_lengths=text_lengths)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0], losses

    # The exp dir as ESPnet's trainer writes it: token_list inlined in config.yaml.
    config = vars(args)
    config["token_list"] = tokens
    (exp / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    torch.save(model.state_dict(), exp / "model.pth")
    (exp / "decode.yaml").write_text(yaml.safe_dump(
        {"beam_size": 2, "ctc_weight": 0.3, "lm_weight": 0.0, "maxlenratio": 0.5, "nbest": 1}))
    return exp


@pytest.fixture(scope="module")
def compressed_exp(trained_exp, an4):
    root, _, _ = an4
    out = trained_exp.parent / "asr_tiny_conformer_lowrank"
    conf = trained_exp.parent / "lowrank.yaml"
    conf.write_text(yaml.safe_dump(LOWRANK))
    run_cli([sys.executable, "-m", "espnet_lowrank.bin.compress",
             "--asr_train_config", str(trained_exp / "config.yaml"),
             "--asr_model_file", str(trained_exp / "model.pth"),
             "--calib_data", str(root / "train"), "--lowrank_config", str(conf),
             "--output_dir", str(out)], env=tool_env())
    return out


def test_reload_through_espnet_with_exact_keys(trained_exp, compressed_exp):
    from espnet2.tasks.asr import ASRTask

    from espnet_lowrank.espnet.registry import register

    register()
    config = yaml.safe_load((compressed_exp / "config.yaml").read_text())
    assert config["encoder"] == "lowrank"
    plan = config["encoder_conf"]["plan"]
    assert plan, "nothing was factored"
    model, _ = ASRTask.build_model_from_file(
        str(compressed_exp / "config.yaml"), str(compressed_exp / "model.pth"), "cpu")
    saved = torch.load(compressed_exp / "model.pth", map_location="cpu")
    built = model.state_dict()
    assert sorted(set(built) - set(saved)) == []  # missing
    assert sorted(set(saved) - set(built)) == []  # unexpected
    for key, value in saved.items():
        assert built[key].shape == value.shape, key
        assert torch.equal(built[key], value), key

    dense, _ = ASRTask.build_model_from_file(
        str(trained_exp / "config.yaml"), str(trained_exp / "model.pth"), "cpu")
    n_dense = sum(p.numel() for p in dense.encoder.parameters())
    n_lowrank = sum(p.numel() for p in model.encoder.parameters())
    assert n_lowrank < n_dense
    # Everything outside the encoder is untouched.
    dense_state = dense.state_dict()
    for key, value in built.items():
        if not key.startswith("encoder."):
            assert torch.equal(value, dense_state[key]), key


def test_stock_asr_inference_decodes_every_utterance(compressed_exp, an4, tmp_path):
    root, _, test = an4
    out = tmp_path / "decode_test"
    run_cli([sys.executable, "-m", "espnet2.bin.asr_inference", "--ngpu", "0", "--batch_size", "1",
             "--data_path_and_name_and_type", f"{root / 'test' / 'wav.scp'},speech,sound",
             "--asr_train_config", str(compressed_exp / "config.yaml"),
             "--asr_model_file", str(compressed_exp / "model.pth"),
             "--config", str(compressed_exp / "decode.yaml"),
             "--output_dir", str(out)], env=tool_env())
    lines = (out / "1best_recog" / "text").read_text().splitlines()
    assert sorted(line.split(maxsplit=1)[0] for line in lines) == sorted(u.utt_id for u in test)


def test_sequential_on_a_masked_conformer(trained_exp, an4, tmp_path):
    """Sequential calibration on ESPnet's Conformer:
    padding-masked frames, rel-pos attention (linear_pos reads the position
    rows), 1x1 pointwise convs; saved and reloaded with exact keys."""
    from espnet_lowrank.api import load_compressed, save_compressed
    from espnet_lowrank.artifact import load_asr_model
    from espnet_lowrank.batches import iter_batches
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.pipeline import compress

    _, train, test = an4
    dense, train_config = load_asr_model(str(trained_exp / "config.yaml"), str(trained_exp / "model.pth"))
    config = LowRankConfig(sequential=True, **LOWRANK)
    result = compress(dense, train, config)
    # Per block: macaron w_1, w_2, q/k/v, linear_pos, linear_out, pointwise 1, 2, w_1, w_2.
    assert result.report["calibration_passes"] == 2 * 9
    assert any(".conv_module.pointwise_conv" in n for n in result.plan.ranks)

    save_compressed(result, train_config, str(tmp_path / "seq"), source_config_file=str(trained_exp / "config.yaml"))
    model, _ = load_compressed(str(tmp_path / "seq"))
    with torch.no_grad():
        for speech, lengths in iter_batches(test, 3):  # padded batch: masks matter
            got, got_lens = model.encode(speech, lengths)
            want, _ = result.model.encode(speech, lengths)
            ref, _ = dense.encode(speech, lengths)
    valid = torch.arange(got.shape[1])[None, :] < got_lens[:, None]
    assert (got - want)[valid].abs().max().item() < 1e-4
    assert ((got - ref)[valid].norm() / ref[valid].norm()).item() < 0.5


def test_recomputed_conformer_blocks_change_no_number(trained_exp, an4):
    """``recovery.recompute_blocks`` on ESPnet's Conformer (tuple outputs,
    masks, rel-pos embeddings through each block): recovery trains bit for bit
    the same factors as with every activation kept. The objective is the
    encoder output's: this briefly trained model's CTC and decoder outputs
    barely depend on the encoder (that loss starts at 9e-7 and, on some CPUs,
    no step lowers it, so keep-the-best would compare untrained factors)."""
    from espnet_lowrank.artifact import load_asr_model
    from espnet_lowrank.config import LowRankConfig
    from espnet_lowrank.pipeline import compress

    _, train, _ = an4
    dense, _ = load_asr_model(str(trained_exp / "config.yaml"), str(trained_exp / "model.pth"))
    states, reports = [], []
    for recompute in (False, True):
        config = LowRankConfig.from_dict(dict(LOWRANK, theta_attention=0.5, theta_feed_forward=0.5,
                                              recovery_steps=4, recovery_lr=3.0e-5,
                                              recovery_objective="encoder", recovery_recompute_blocks=recompute))
        result = compress(dense, train[:4], config)
        states.append(result.model.state_dict())
        reports.append(result.report)
    assert reports[0]["recovery_loss_after"] == reports[1]["recovery_loss_after"]
    assert reports[0]["recovery_best_step"] > 0, {k: v for k, v in reports[0].items() if k.startswith("recovery")}
    assert set(states[0]) == set(states[1])
    assert max((states[0][k].float() - states[1][k].float()).abs().max().item() for k in states[0]) == 0.0
