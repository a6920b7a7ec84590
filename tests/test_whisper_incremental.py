"""Incremental Whisper decoding: the self-attention cache carried in
the beam-search states gives the same tokens as recomputing the whole prefix
(``LocalWhisperDecoder.batch_score_recompute``, the decoder before the cache),
and a step runs and projects onto the vocabulary one position per hypothesis."""

import contextlib
from pathlib import Path
from typing import Dict

import pytest
import torch
import yaml

from espnet_lowrank.espnet.registry import register
from espnet_lowrank.whisper.espnet_whisper import LocalWhisperDecoder

from test_whisper_checkpoints import read_utts

register()

PROMPT_LEN = 2  # tiny.en: <|startoftranscript|> <|notimestamps|>


@contextlib.contextmanager
def count_rows(dec: LocalWhisperDecoder):
    """Counts the positions that enter the decoder blocks (``block``: rows of
    the first self-attention query) and that reach the vocabulary projection
    (``vocab``: rows of the final LayerNorm, whose output is projected)."""
    counts = {"block": 0, "vocab": 0}

    def hook(name):
        def count(module, inputs, output):
            counts[name] += output.numel() // output.size(-1)
        return count

    handles = [dec.decoders.blocks[0].attn.query.register_forward_hook(hook("block")),
               dec.decoders.ln.register_forward_hook(hook("vocab"))]
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def _random_decoder(**kw) -> LocalWhisperDecoder:
    dec = LocalWhisperDecoder(51864, 16, n_ctx=64, n_state=16, n_head=2, n_layer=2, **kw).eval()
    torch.manual_seed(0)
    with torch.no_grad():
        for p in dec.parameters():
            p.normal_(0, 0.1)
    return dec


def _reference_greedy(dec: LocalWhisperDecoder, memory: torch.Tensor, max_len: int) -> torch.Tensor:
    """greedy() before the cache: the whole prefix through the blocks each step."""
    prefix, eot = dec.prompt()
    cross = dec.cross_kv(memory)
    ys = torch.tensor([prefix] * memory.size(0))
    done = torch.zeros(memory.size(0), dtype=torch.bool)
    for _ in range(max_len):
        nxt = dec._next_logp(dec.logits(ys, memory, cross)[:, -1], ys.size(1)).argmax(-1)
        ys = torch.cat([ys, torch.where(done, eot, nxt)[:, None]], dim=1)
        done |= nxt == eot
        if done.all():
            break
    return ys


# -- small random decoder ---------------------------------------------------------


def test_greedy_runs_one_position_per_step():
    dec = _random_decoder()
    memory = torch.randn(2, 30, 16)
    with torch.no_grad(), count_rows(dec) as counts:
        ys, _ = dec.greedy(memory, 12)
    steps = ys.size(1) - PROMPT_LEN
    assert steps == 12  # random weights never end early here
    assert counts == {"block": 2 * (PROMPT_LEN + steps - 1), "vocab": 2 * steps}
    with torch.no_grad():
        assert torch.equal(ys, _reference_greedy(dec, memory, 12))


def test_batch_score_cache_follows_reordered_hypotheses():
    """Hypotheses picked and reordered between steps, as beam search does, keep
    their own cache; a state of another prefix falls back to the full prefix."""
    dec = _random_decoder(sample_begin=PROMPT_LEN, suppress_tokens=[5], suppress_blank_tokens=[220])
    memory = torch.randn(1, 30, 16)
    torch.manual_seed(3)
    ys = torch.tensor([[50257, 50362]])
    states, ref_states = [None], [None]
    with torch.no_grad():
        for step, order in enumerate(([0], [0, 0, 0], [2, 0, 1], [1, 1, 0], [0, 2, 2])):
            ys = ys[order]
            if step:  # step 0 scores the prompt: the blank tokens are suppressed
                ys = torch.cat([ys, torch.randint(0, 50000, (len(order), 1))], dim=1)
            xs = memory.expand(len(order), -1, -1)
            with count_rows(dec) as counts:
                logp, new = dec.batch_score(ys, [states[i] for i in order], xs)
            assert counts == {"block": ys.numel() if step == 0 else len(order), "vocab": len(order)}
            ref, new_ref = dec.batch_score_recompute(ys, [ref_states[i] for i in order], xs)
            torch.testing.assert_close(logp, ref, rtol=1e-4, atol=1e-4)
            assert torch.equal(logp.isinf(), ref.isinf())
            assert torch.isinf(logp[:, 220]).all() == (step == 0)
            states, ref_states = new, new_ref
        # states of other prefixes (a token changed) are recomputed
        other = ys.clone()
        other[:, 3] += 1
        logp, _ = dec.batch_score(other, states, memory.expand(3, -1, -1))
        ref, _ = dec.batch_score_recompute(other, ref_states, memory.expand(3, -1, -1))
    torch.testing.assert_close(logp, ref, rtol=1e-4, atol=1e-4)


# -- tiny.en on real speech -------------------------------------------------------


@pytest.fixture(scope="module")
def speech(shared_data_dir):
    """3 of the first 10 LibriSpeech utterances whose beam-4 search ends after
    12, 25 and 65 steps (the reference's costs O(L²); the 3.6 s one runs the
    full 224)."""
    utts = read_utts(shared_data_dir, 10)
    return [utts[i] for i in (1, 9, 0)]


@pytest.fixture(scope="module")
def unguarded_exp(dense_exp, tmp_path_factory):
    """The dense tiny.en exp with the loop guard off (loop_repeats 0)."""
    out = tmp_path_factory.mktemp("exp") / "whisper_tiny.en_unguarded"
    out.mkdir()
    config = yaml.safe_load((dense_exp / "config.yaml").read_text(encoding="utf-8"))
    config["decoder_conf"]["loop_repeats"] = 0
    (out / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    for name in ("model.pth", "decode.yaml"):
        (out / name).symlink_to(dense_exp / name)
    return out


def _speech2text(exp: Path, beam: int):
    from espnet2.bin.asr_inference import Speech2Text

    decode = yaml.safe_load((exp / "decode.yaml").read_text())
    decode.pop("batch_size")
    decode.update(beam_size=beam, nbest=beam)
    return Speech2Text(asr_train_config=str(exp / "config.yaml"), asr_model_file=str(exp / "model.pth"),
                       device="cpu", **decode)


@pytest.mark.slow
@pytest.mark.parametrize("beam", [1, 4])
@pytest.mark.parametrize("guard", ["loop_guard", "no_loop_guard"])
def test_speech2text_matches_full_recompute(speech, dense_exp, unguarded_exp, beam, guard, monkeypatch):
    s2t = _speech2text(dense_exp if guard == "loop_guard" else unguarded_exp, beam)
    dec = s2t.asr_model.decoder
    assert dec.loop_repeats == (4 if guard == "loop_guard" else 0)
    calls = []
    score = dec.batch_score

    def counted(ys, states, xs):
        with count_rows(dec) as counts:
            out = score(ys, states, xs)
        calls.append((ys.shape, dict(counts)))
        return out

    def decode() -> Dict[str, list]:
        return {utt: [r[2] for r in s2t(audio)] for utt, audio in speech}

    with monkeypatch.context() as m:
        m.setattr(dec, "batch_score", counted)
        hyps = decode()
    # after the prompt, one position per hypothesis and step
    for (n, length), counts in calls:
        assert counts == {"block": n * length if length == PROMPT_LEN else n, "vocab": n}, length
    assert max(length for (_, length), _ in calls) > 10
    with monkeypatch.context() as m:
        m.setattr(dec, "batch_score", dec.batch_score_recompute)
        ref = decode()
    assert hyps == ref
    assert all(1 <= len(v) <= beam and len(v[0]) >= 5 for v in hyps.values())


@pytest.mark.slow
def test_greedy_matches_full_recompute_on_speech(speech, dense_exp):
    from espnet_lowrank.artifact import load_asr_model

    model, _ = load_asr_model(str(dense_exp / "config.yaml"), str(dense_exp / "model.pth"))
    model.eval()
    audio = [torch.from_numpy(a) for _, a in speech]
    lengths = torch.tensor([len(a) for a in audio])
    batch = torch.nn.utils.rnn.pad_sequence(audio, batch_first=True)
    with torch.no_grad():
        memory = model.encode(batch, lengths)[0]
        with count_rows(model.decoder) as counts:
            ys, mask = model.decoder.greedy(memory, 100)
        ref = _reference_greedy(model.decoder, memory, 100)
    steps = ys.size(1) - PROMPT_LEN
    assert 10 < steps < 100 and counts["vocab"] == len(audio) * steps
    assert counts["block"] == len(audio) * (PROMPT_LEN + steps - 1)
    assert torch.equal(ys, ref)


@pytest.mark.slow
def test_stage_profile_splits_one_decode_into_its_stages(shared_data_dir, dense_exp):
    """bench/stage_profile.py: the exclusive stage times add up to the decode's time, every stage took
    some, and a step of the int8 column reads a quarter of the float vocabulary's bytes."""
    from cli import bench_module  # tests/ is on sys.path

    profile = bench_module("stage_profile")
    audio = dict(read_utts(shared_data_dir, 1))
    (wav,) = audio.values()
    results = [profile.profile("dense", str(dense_exp), int8, wav, repeats=1) for int8 in (False, True)]
    for r in results:
        stages = r["stages"]
        assert set(stages) == {s for s, _ in profile.STAGES} and min(stages.values()) > 0, stages
        assert abs(sum(stages.values()) - r["total"]) < 0.02 * r["total"], (stages, r["total"])
        assert r["steps"] > 10 and r["text"]
    dense, int8 = results
    assert int8["megabytes"]["vocabulary"] == dense["megabytes"]["vocabulary"] / 4
    assert int8["megabytes"]["decoder_blocks"] < 0.7 * dense["megabytes"]["decoder_blocks"]
    table = profile.table(results)
    assert table.count("\n") == len(profile.STAGES) + 3 and "MB/step" in table
