"""The README's Python API block runs as written (it once imported the
``espnet_lowrank.compress`` module where it meant the function)."""

import re
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch


README = Path(__file__).resolve().parents[1] / "README.md"


def _python_api_block() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow
def test_python_api_block_runs_as_written(dense_exp, tmp_path, monkeypatch):
    (tmp_path / "exp").mkdir()
    (tmp_path / "exp" / "asr").symlink_to(dense_exp)
    data = tmp_path / "data" / "train"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    lines = []
    for i in range(2):
        wav = data / f"u{i}.wav"
        soundfile.write(str(wav), (0.1 * rng.standard_normal(32000)).astype("float32"), 16000)
        lines.append(f"u{i} {wav}\n")
    (data / "wav.scp").write_text("".join(lines))
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(_python_api_block(), str(README), "exec"), namespace)
    result, model = namespace["result"], namespace["model"]
    assert result.plan.ranks
    assert set(model.state_dict()) == set(result.model.state_dict())
    for key, value in result.model.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    assert namespace["saved_config"]["encoder"] == "lowrank"
