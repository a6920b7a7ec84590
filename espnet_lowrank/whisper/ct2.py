"""Read a CTranslate2 (faster-whisper) ``model.bin`` without ctranslate2, and map
its ``WhisperSpec`` variables to an openai-whisper state dict."""

import re
import struct
from pathlib import Path
from typing import Dict, List, Tuple, Union

import numpy as np
import torch

from espnet_lowrank.whisper.common import CheckpointError, StateDict, dims_from_dict

_CT2_DTYPES = {0: np.dtype("<f4"), 1: np.dtype("i1"), 2: np.dtype("<i2"), 3: np.dtype("<i4"),
               4: np.dtype("<f2"), 5: "bfloat16"}
_CT2_BINARY_VERSIONS = (6,)
_CT2_WHISPER_REVISIONS = (3,)


def read_ct2_model_bin(
    data: Union[bytes, memoryview],
) -> Tuple[str, int, Dict[str, np.ndarray], Dict[str, str]]:
    """``(spec_name, revision, variables, aliases)``; arrays keep their stored dtype (bfloat16 -> float32)."""
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
        raise CheckpointError(f"unsupported CTranslate2 binary version {version} "
                              f"(supported: {_CT2_BINARY_VERSIONS})")
    spec = string()
    revision = unpack("I")
    variables: Dict[str, np.ndarray] = {}
    for _ in range(unpack("I")):
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
        expected = int(np.prod(shape))  # 1 for a scalar
        if arr.size != expected:
            raise CheckpointError(f"variable {name}: {arr.size} values for shape {shape}")
        variables[name] = arr.reshape(shape)
    aliases: Dict[str, str] = {}
    for _ in range(unpack("I")):
        alias = string()
        aliases[alias] = string()
    if pos != len(buf):
        raise CheckpointError(f"{len(buf) - pos} trailing bytes after the CTranslate2 model data")
    return spec, revision, variables, aliases


def _f32(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def ct2_whisper_to_openai(variables: Dict[str, np.ndarray], aliases: Dict[str, str]):
    """Map the variables of a CT2 ``WhisperSpec`` to an openai-whisper state dict."""
    for name, arr in variables.items():
        if name.endswith("weight_scale") or (name.endswith("/weight") and arr.dtype == np.int8):
            raise CheckpointError("quantized (int8) CTranslate2 models are not supported; "
                                  "convert with --quantization float16 or float32")
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
        split_linear([dst + ".attn.query", dst + ".attn.key", dst + ".attn.value"], src + "/linear_0",
                     key_index=1)
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
        split_linear([dst + ".cross_attn.key", dst + ".cross_attn.value"], src + "/attention/linear_1",
                     key_index=0)
        linear(dst + ".cross_attn.out", src + "/attention/linear_2")
        ffn(dst, src + "/ffn")
    norm("decoder.ln", "decoder/layer_norm")

    # the output projection must be tied to the token embedding
    proj = "decoder/projection/weight"
    if proj in variables:
        used.add(proj)
        if not np.array_equal(variables[proj], variables["decoder/embeddings/weight"]):
            raise CheckpointError("untied decoder output projection is not supported")
    elif aliases.get(proj, "decoder/embeddings/weight") != "decoder/embeddings/weight":
        raise CheckpointError(f"unexpected alias for {proj}: {aliases[proj]}")

    leftovers = [n for n, a in variables.items() if n not in used and a.ndim > 0 and a.size > 1]
    if leftovers:
        raise CheckpointError(f"unmapped CTranslate2 variables: {sorted(leftovers)[:10]}")

    conv1_w = sd["encoder.conv1.weight"]
    n_vocab, n_text_state = sd["decoder.token_embedding.weight"].shape
    dims = dims_from_dict(dict(
        n_mels=conv1_w.shape[1], n_audio_ctx=sd["encoder.positional_embedding"].shape[0],
        n_audio_state=conv1_w.shape[0], n_audio_head=int(take("encoder/num_heads").reshape(-1)[0]),
        n_audio_layer=n_audio_layer, n_vocab=n_vocab, n_text_ctx=sd["decoder.positional_embedding"].shape[0],
        n_text_state=n_text_state, n_text_head=int(take("decoder/num_heads").reshape(-1)[0]),
        n_text_layer=n_text_layer,
    ))
    return sd, dims


def load_ct2_model_bin(data: Union[bytes, memoryview]):
    spec, revision, variables, aliases = read_ct2_model_bin(data)
    if spec != "WhisperSpec":
        raise CheckpointError(f"not a Whisper CTranslate2 model (spec {spec!r})")
    if revision not in _CT2_WHISPER_REVISIONS:
        raise CheckpointError(f"unsupported WhisperSpec revision {revision} "
                              f"(supported: {_CT2_WHISPER_REVISIONS})")
    return ct2_whisper_to_openai(variables, aliases)


def load_ct2_dir(path: str):
    return load_ct2_model_bin(Path(path, "model.bin").read_bytes())
