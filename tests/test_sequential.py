"""Sequential (layer-group by layer-group) calibration and the short
recovery, on real tiny.en and real speech."""

import json
import platform
import sys
import textwrap

import pytest
import torch

from espnet_lowrank.api import load_compressed, save_compressed
from espnet_lowrank.artifact import load_asr_model
from espnet_lowrank.config import LowRankConfig
from espnet_lowrank.pipeline import calibrate_model, compress
from cli import run_cli  # tests/ is on sys.path


def test_sequential_on_tiny_en(dense_exp, librispeech, tmp_path):
    exp = dense_exp
    dense, train_config = load_asr_model(str(exp / "config.yaml"), str(exp / "model.pth"))
    utts = librispeech[:2]
    kw = dict(theta_attention=0.98, theta_feed_forward=0.995)
    one = compress(dense, utts, LowRankConfig(**kw))
    seq = compress(dense, utts, LowRankConfig(sequential=True, **kw))
    # Groups in forward order: q/k/v (one input), out, mlp.0, mlp.2 for each of 4 blocks.
    assert seq.report["calibration_passes"] == 16
    # The first group sees the dense inputs either way: same ranks there.
    qkv = [f"encoders.blocks.0.attn.{p}" for p in ("query", "key", "value")]
    assert {n: one.plan.ranks.get(n) for n in qkv} == {n: seq.plan.ranks.get(n) for n in qkv}
    assert set(seq.plan.ranks) and seq.report["encoder_linear_params_compressed"] < seq.report["encoder_linear_params_dense"]
    save_compressed(seq, train_config, str(tmp_path / "seq"), source_config_file=str(exp / "config.yaml"))
    model, _ = load_compressed(str(tmp_path / "seq"))
    speech = 0.1 * torch.randn(1, 16000 * 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got, _ = model.encode(speech, torch.tensor([speech.shape[1]]))
        want, _ = seq.model.encode(speech, torch.tensor([speech.shape[1]]))
    assert (got - want).abs().max().item() < 1e-3 * want.abs().max().item()


def test_recovery_lowers_the_distillation_loss(dense_exp, librispeech):
    dense, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    utts = librispeech[:2]
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    result = compress(dense, utts, LowRankConfig(theta_attention=0.95, theta_feed_forward=0.98,
                                                 recovery_steps=4, recovery_lr=3e-4, batch_size=2))
    report = result.report
    assert report["recovery_steps"] == 4
    assert report["recovery_loss_after"] < 0.95 * report["recovery_loss_before"], report
    # Only the factors trained; the source model is untouched.
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    dense_keys = {k for k in result.model.state_dict() if ".down." not in k and ".up." not in k}
    for k in dense_keys:
        if k in before:
            assert torch.equal(before[k], result.model.state_dict()[k]), k
    # A diverging LR never makes things worse: the calibration factors are kept.
    kw = dict(theta_attention=0.95, theta_feed_forward=0.98, batch_size=2)
    plain = compress(dense, utts, LowRankConfig(**kw)).model.state_dict()
    diverged = compress(dense, utts, LowRankConfig(recovery_steps=2, recovery_lr=1.0, **kw))
    assert diverged.report["recovery_best_step"] == 0, diverged.report
    assert diverged.report["recovery_loss_after"] == diverged.report["recovery_loss_before"]
    got = diverged.model.state_dict()
    assert set(got) == set(plain)
    assert max((got[k] - plain[k]).abs().max().item() for k in plain) == 0.0
    with pytest.raises(ValueError, match="calibration audio"):
        compress(dense, config=LowRankConfig(recovery_steps=2),
                 stats=calibrate_model(dense, utts[:1]))


def test_group_statistics_stop_the_forward_and_stay_on_cpu_float64():
    """``calibrate(..., stop_after=True)``: the forward stops once the group ran
    (later layers never run), and the statistics are float64 on the CPU
    whatever the activations' dtype (bug 11: CUDA and CPU tensors mixed)."""
    from torch import nn

    from espnet_lowrank.calibration import calibrate

    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 5), nn.Linear(5, 4), nn.Linear(4, 3)).to(torch.float16)
    ran = []
    encoder[2].register_forward_hook(lambda *_: ran.append(True))
    batches = [(torch.randn(2, 7, 6, dtype=torch.float16), None) for _ in range(3)]
    stats = calibrate(lambda x, _n: encoder(x), encoder, batches, ["0", "1"], stop_after=True)
    assert not ran
    assert {n: (s.gram.device.type, s.gram.dtype, s.count) for n, s in stats.items()} == {
        "0": ("cpu", torch.float64, 42), "1": ("cpu", torch.float64, 42)}
    full = calibrate(lambda x, _n: encoder(x), encoder, batches, ["0", "1"])
    assert torch.equal(full["1"].gram, stats["1"].gram)


def _compress_tiny_en(dense_exp, utts, tmp_path, recovery):
    """Compress tiny.en with ``recovery``; check that the source stays as it was
    and that the result reloads with exactly its keys. Returns (dense, config, report)."""
    dense, train_config = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    before = {k: v.clone() for k, v in dense.state_dict().items()}
    config = LowRankConfig(theta_attention=0.95, theta_feed_forward=0.98, batch_size=2, recovery=recovery)
    result = compress(dense, utts, config)
    assert all(torch.equal(before[k], v) for k, v in dense.state_dict().items())
    save_compressed(result, train_config, str(tmp_path / "out"),
                    source_config_file=str(dense_exp / "config.yaml"))
    model, _ = load_compressed(str(tmp_path / "out"))
    assert set(model.state_dict()) == set(result.model.state_dict())
    return dense, config, result.report


def test_decoder_objective_on_tiny_en(dense_exp, librispeech, tmp_path):
    """Recovery on what Whisper's decoder reads (its cross-attention K/V): the
    loss falls, the source stays as it was and the result reloads exactly."""
    dense, config, report = _compress_tiny_en(dense_exp, librispeech[:2], tmp_path,
                                              {"steps": 4, "lr": 3e-4, "objective": "decoder"})
    assert report["recovery_objective"] == "decoder"
    assert report["recovery_loss_after"] < 0.95 * report["recovery_loss_before"], report
    # A model whose decoder reads nothing the objective knows is refused before any work.
    dense.decoder, dense.ctc = None, None
    with pytest.raises(ValueError, match="objective: decoder needs"):
        compress(dense, librispeech[:1], config)


def test_decoder_tokens_objective_on_tiny_en(dense_exp, librispeech, tmp_path):
    """Recovery on the cross-attention K/V plus the dense decoder's token
    distribution, teacher-forced on the dense model's own greedy transcript: the
    loss falls, the source stays as it was and the result reloads exactly."""
    dense, config, report = _compress_tiny_en(dense_exp, librispeech[:2], tmp_path,
                                              {"steps": 4, "lr": 3e-4, "objective": "decoder+tokens"})
    assert report["recovery_objective"] == "decoder+tokens"
    assert report["recovery_loss_after"] < 0.95 * report["recovery_loss_before"], report
    # the teacher transcript is the one decode.yaml gives: the reference words, here
    from espnet_lowrank.batches import iter_batches
    speech, lengths = next(iter_batches(librispeech[:1], 1))
    with torch.no_grad():
        tokens, mask = dense.decoder.greedy(dense.encode(speech, lengths)[0], 224)
    prefix, eot = dense.decoder.prompt()
    assert tokens[0, : len(prefix)].tolist() == prefix and int(tokens[0, -1]) == eot
    assert int(mask.sum()) == tokens.shape[1] - len(prefix)
    dense.decoder = None
    with pytest.raises(ValueError, match="objective: decoder\\+tokens needs a Whisper decoder"):
        compress(dense, librispeech[:1], config)


def test_chunked_token_kl_matches_the_direct_kl_and_its_gradient():
    """token_kl (chunked, analytic gradient) against autograd through the full
    (positions, vocabulary) log-softmax it replaces."""
    from espnet_lowrank.recovery import token_kl
    torch.manual_seed(0)
    vocabulary = torch.randn(5000, 24)
    teacher = torch.randn(150, 24)
    student = (teacher + 0.3 * torch.randn(150, 24)).requires_grad_(True)
    log_t = torch.log_softmax(teacher @ vocabulary.t(), -1)
    log_s = torch.log_softmax(student @ vocabulary.t(), -1)
    direct = (log_t.exp() * (log_t - log_s)).sum(-1).mean()
    (direct_grad,) = torch.autograd.grad(direct, student)
    chunked = token_kl(teacher, student, vocabulary, rows=64)
    (chunked_grad,) = torch.autograd.grad(chunked, student)
    assert float(direct) > 0.1
    assert abs(float(chunked) - float(direct)) < 1e-5 * float(direct)
    assert float((chunked_grad - direct_grad).abs().max()) < 1e-6 * (1 + float(direct_grad.abs().max()))


def test_blockwise_recovery_on_tiny_en(dense_exp, librispeech, tmp_path):
    """Block-wise recovery then a short end-to-end pass on the decoder's view:
    every block's loss falls from its cached inputs, the last block's output
    moves toward the dense one, the final pass lowers the cross-attention K/V
    loss, the source stays as it was and the result reloads with exactly its keys."""
    _, _, report = _compress_tiny_en(dense_exp, librispeech[:2], tmp_path,
                                     {"steps": 4, "lr": 3e-4, "scope": "block",
                                      "final_steps": 4, "objective": "decoder"})
    assert report["recovery_scope"] == "block"
    assert [b["block"] for b in report["recovery_blocks"]] == [0, 1, 2, 3]
    for b in report["recovery_blocks"]:
        assert b["loss_after"] < 0.95 * b["loss_before"], b
    assert report["recovery_loss_after"] < 0.9 * report["recovery_loss_before"], report
    final = report["recovery_final"]
    assert (final["recovery_steps"], final["recovery_objective"]) == (4, "decoder")
    assert final["recovery_loss_after"] < final["recovery_loss_before"], final
    with pytest.raises(ValueError, match="objective: decoder applies only to an end-to-end pass"):
        LowRankConfig(recovery={"steps": 4, "scope": "block", "objective": "decoder"})
    with pytest.raises(ValueError, match="final_steps follows block-wise recovery"):
        LowRankConfig(recovery={"steps": 4, "final_steps": 2})


def test_a_run_is_reproduced_from_its_reported_config(dense_exp, librispeech):
    """Lever 5: the config in report.json (seed included) rebuilds the same
    factors bit for bit, recovery included."""
    dense, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    utts = librispeech[:1]
    first = compress(dense, utts, LowRankConfig(theta_attention=0.95, theta_feed_forward=0.98,
                                                recovery_steps=2, recovery_lr=3e-4, seed=7))
    assert first.report["config"]["seed"] == 7
    again = compress(dense, utts, LowRankConfig.from_dict(first.report["config"]))
    a, b = first.model.state_dict(), again.model.state_dict()
    assert set(a) == set(b)
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel()) == 0.0


def test_recomputed_blocks_change_no_number(dense_exp, librispeech, tmp_path, monkeypatch):
    """``recovery.recompute_blocks``: each encoder block runs again in the
    backward pass instead of keeping its activations (memory: bench/DECISIONS.md);
    the factors are bit for bit those of keeping every activation, the blocks
    get their own forward back, the source is untouched, and the result reloads
    with exactly its keys. ``recovery.return_freed_memory`` on the same run asks
    for the allocator setting once (spied here: it would hold for the rest of
    the test process; its effect: the test below)."""
    from espnet_lowrank.config import Recovery
    from espnet_lowrank.families import family_for
    from espnet_lowrank.recovery import checkpointed

    dense, train_config = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    source = {k: v.clone() for k, v in dense.state_dict().items()}
    blocks = family_for(dense.encoder).blocks
    with checkpointed(dense.encoder, blocks):
        assert sum("forward" in m.__dict__ for m in dense.encoder.modules()) == 4  # tiny.en's 4 blocks
    assert not any("forward" in m.__dict__ for m in dense.encoder.modules())
    asked = []
    monkeypatch.setattr("espnet_lowrank.steps.recovery.return_freed_memory", lambda: asked.append(1) or True)
    results = {}
    for recompute in (False, True):
        config = LowRankConfig(theta_attention=0.95, theta_feed_forward=0.98, batch_size=2,
                               recovery=Recovery(steps=3, lr=3e-4, objective="decoder+tokens",
                                                 recompute_blocks=recompute, return_freed_memory=recompute))
        results[recompute] = compress(dense, librispeech[:2], config)
    assert asked == [1]
    kept, recomputed = results[False].report, results[True].report
    assert kept["recovery_best_step"] > 0
    assert recomputed["recovery_loss_after"] == kept["recovery_loss_after"] < kept["recovery_loss_before"]
    a, b = results[False].model.state_dict(), results[True].model.state_dict()
    assert set(a) == set(b)
    assert max((a[k] - b[k]).abs().max().item() for k in a) == 0.0
    assert all(torch.equal(source[k], v) for k, v in dense.state_dict().items())
    save_compressed(results[True], train_config, str(tmp_path / "recomputed"),
                    source_config_file=str(dense_exp / "config.yaml"))
    model, _ = load_compressed(str(tmp_path / "recomputed"))
    assert set(model.state_dict()) == set(b)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (mallopt, mallinfo2)")
def test_return_freed_memory_maps_large_buffers():
    """``recovery.return_freed_memory``: glibc's adaptive default serves a 12 MB
    buffer (base's activations are 12 MB) freed before from its heap, where it
    stays after the next free; after the setting the same request gets its own
    mapping, which goes back to the system on free. In a child process, since
    the setting holds for the process."""
    script = textwrap.dedent("""
        import ctypes, json
        from espnet_lowrank.recovery import return_freed_memory
        libc = ctypes.CDLL(None)
        class Info(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]
        libc.mallinfo2.restype = Info
        libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
        libc.free.argtypes = [ctypes.c_void_p]
        def mapped_by_second_buffer():
            libc.free(libc.malloc(12 << 20))
            start = libc.mallinfo2().hblkhd
            buffer = libc.malloc(12 << 20)
            mapped = libc.mallinfo2().hblkhd - start
            libc.free(buffer)
            return mapped
        before = mapped_by_second_buffer()
        done = return_freed_memory()
        print(json.dumps([before, done, mapped_by_second_buffer()]))
    """)
    out = run_cli([sys.executable, "-c", script], timeout=600).stdout
    before, done, after = json.loads(out.strip().splitlines()[-1])
    assert (before, done) == (0, True)
    assert after >= 12 << 20
