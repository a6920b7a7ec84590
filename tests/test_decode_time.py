"""Stage 13's end-to-end decoding time, read from the stock asr_inference logs
the way ESPnet's calculate_rtf.py does (a progress bar may share a log line)."""

from espnet_lowrank.results import decoding_seconds

LOG = """\
2026-12-07 06:14:42,266 (abs_task:2475) INFO: config file: exp/x/config.yaml
2026-12-07 06:14:42,383 (asr_inference:522) INFO: speech length: 62081
2026-12-07 06:14:42,426 (beam_search:428) INFO: decoder input length: 96
2026-12-07 06:14:42,576 (beam_search:483) INFO: best hypo: ONE TWO

decoding:   6%|▋       | 1/16 [00:01<00:20]2026-12-07 06:14:42,586 (asr_inference:522) INFO: speech length: 64321
2026-12-07 06:14:43,836 (beam_search:483) INFO: best hypo: THREE
"""


def test_decoding_seconds_sums_each_utterance_from_its_start_to_its_best_hypo(tmp_path):
    logdir = tmp_path / "decode_test" / "logdir"
    logdir.mkdir(parents=True)
    (logdir / "asr_inference.1.log").write_text(LOG)
    # a second job: one utterance of 2.5 s; the model loading before it is not counted
    (logdir / "asr_inference.2.log").write_text(
        "2026-12-07 06:14:40,000 (abs_task:2475) INFO: config file: exp/x/config.yaml\n"
        "2026-12-07 06:14:41,000 (asr_inference:522) INFO: speech length: 16000\n"
        "2026-12-07 06:14:43,500 (beam_search:483) INFO: best hypo: FOUR\n")
    assert abs(decoding_seconds(str(tmp_path / "decode_test")) - (0.193 + 1.250 + 2.5)) < 1e-9


def test_decoding_seconds_is_none_without_logs(tmp_path):
    assert decoding_seconds(str(tmp_path / "decode_test")) is None
    (tmp_path / "decode_test" / "logdir").mkdir(parents=True)
    (tmp_path / "decode_test" / "logdir" / "asr_inference.1.log").write_text("no utterance here\n")
    assert decoding_seconds(str(tmp_path / "decode_test")) is None
