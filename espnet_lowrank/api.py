"""Save and load compressed models as ESPnet exp dirs."""

from typing import Optional, Tuple

from espnet_lowrank.artifact import default_decode_config, load_asr_model, lowrank_train_config, save_exp_dir
from espnet_lowrank.pipeline import CompressionResult
from espnet_lowrank.report import compression_report_md, plot_ranks, plot_variance_spectra


def save_compressed(result: CompressionResult, train_config: dict, output_dir: str,
                    source_config_file: Optional[str] = None, source_files: Tuple[str, ...] = (),
                    overwrite: bool = False) -> None:
    """Write ``result`` of ``compress`` as an exp dir (must not exist, unless ``overwrite``) whose config.yaml
    says ``encoder: lowrank``; ``train_config`` is the dense model's, ``source_config_file``'s decode.yaml
    is reused, and ``source_files`` must never be inside ``output_dir``."""
    decisions = result.plan.decisions
    full = {d.name: min(d.d_in, d.d_out) for d in decisions}
    kept = {d.name: d.rank if d.rank is not None else full[d.name] for d in decisions}
    save_exp_dir(
        output_dir, result.model, lowrank_train_config(train_config, result.encoder_conf),
        default_decode_config(source_config_file, result.model), result.report,
        compression_report_md(result.report), source_files=source_files, overwrite=overwrite,
        figures={
            "variance_spectra.png": lambda path: plot_variance_spectra(result.spectra, path),
            "ranks.png": lambda path: plot_ranks(kept, full, path),
        },
    )


def load_compressed(exp_dir: str, device: str = "cpu"):
    """(model, train_config) of an exp dir, with the strict key check."""
    return load_asr_model(f"{exp_dir}/config.yaml", f"{exp_dir}/model.pth", device)
