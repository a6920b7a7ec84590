"""ESPnet encoder/decoder wrappers around openai-whisper modules, built from
dimensions given in the config and (optionally) local weights.

ESPnet's own ``OpenAIWhisperEncoder``/``OpenAIWhisperDecoder`` only accept hub
model names, assume 80 mel bins and import names that current openai-whisper
no longer has. These classes take every dimension from the config, so that an
exported experiment directory (config.yaml + model.pth) is self-contained.

The module names are those of ``whisper.model``: ``encoders.blocks.{i}.attn.
{query,key,value,out}``, ``encoders.blocks.{i}.mlp.{0,2}``, ... (the low-rank
code targets them).

Importing this module also installs :func:`install_tokenizer_compat`, which
lets ESPnet's Whisper tokenizer classes (written for the old Hugging Face
based openai-whisper tokenizer) run on the current tiktoken-based one.
"""

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet.nets.scorer_interface import BatchScorerInterface

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
HOP_LENGTH = 160
N_SAMPLES = 30 * SAMPLE_RATE  # whisper's 30 s window


def _reject_unknown(cls_name: str, kwargs: Dict[str, Any]) -> None:
    if kwargs:
        raise ValueError(f"{cls_name}: unknown arguments {sorted(kwargs)}")


def _load_part(module: torch.nn.Module, init_from: str, prefix: str) -> None:
    """Load the ``prefix`` part of a Whisper checkpoint into ``module``."""
    from espnet_lowrank.whisper.checkpoints import load_whisper_checkpoint

    sd, _ = load_whisper_checkpoint(init_from)
    part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    mine = module.state_dict()
    bad = [k for k in mine if k in part and tuple(part[k].shape) != tuple(mine[k].shape)]
    if bad:
        raise ValueError(
            f"{init_from}: shapes of {bad[:3]} do not match the configured "
            "dimensions; take the dimensions from the checkpoint"
        )
    module.load_state_dict(part, strict=True)
    logger.info("loaded %s weights from %s", prefix.rstrip("."), init_from)


class LocalWhisperEncoder(AbsEncoder):
    """Whisper's audio encoder (log-mel front end included) from local weights.

    Input: raw 16 kHz audio (B, samples). Output: (B, n_ctx, n_state).
    """

    def __init__(
        self,
        input_size: int = 1,
        n_mels: int = 80,
        n_ctx: int = 1500,
        n_state: int = 384,
        n_head: int = 6,
        n_layer: int = 4,
        init_from: Optional[str] = None,
        do_pad_trim: bool = True,
        **kwargs,
    ):
        _reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        from whisper.model import AudioEncoder

        self.n_mels = n_mels
        self.n_ctx = n_ctx
        self.n_state = n_state
        self.do_pad_trim = do_pad_trim
        self.encoders = AudioEncoder(n_mels, n_ctx, n_state, n_head, n_layer)
        if init_from is not None:
            _load_part(self.encoders, init_from, "encoder.")

    def output_size(self) -> int:
        return self.n_state

    def log_mel(
        self, xs_pad: torch.Tensor, ilens: torch.Tensor
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-utterance log-mel (B, n_mels, frames) exactly as whisper computes it.

        The dynamic-range clamp of whisper's log-mel depends on the utterance's
        maximum, so each utterance is processed on its own, cut to its length
        (ESPnet pads batches) and, with ``do_pad_trim``, padded/trimmed to 30 s.
        """
        from whisper.audio import log_mel_spectrogram, pad_or_trim

        mels = []
        for audio, n in zip(xs_pad, ilens.tolist()):
            audio = audio[: int(n)].float()
            if self.do_pad_trim:
                audio = pad_or_trim(audio, N_SAMPLES)
            mels.append(log_mel_spectrogram(audio, self.n_mels))
        lens = torch.tensor([m.shape[-1] for m in mels], device=xs_pad.device)
        frames = int(lens.max())
        mels = [F.pad(m, (0, frames - m.shape[-1])) for m in mels]
        return torch.stack(mels), lens

    def encode_mel(self, mel: torch.Tensor) -> torch.Tensor:
        """Whisper's ``AudioEncoder.forward``, also for fewer than n_ctx frames."""
        enc = self.encoders
        x = F.gelu(enc.conv1(mel))
        x = F.gelu(enc.conv2(x))
        x = x.permute(0, 2, 1)
        if x.size(1) > self.n_ctx:
            raise ValueError(f"input too long: {x.size(1)} > {self.n_ctx} frames")
        x = (x + enc.positional_embedding[: x.size(1)]).to(x.dtype)
        for block in enc.blocks:
            x = block(x)
        return enc.ln_post(x)

    def forward(
        self,
        xs_pad: torch.Tensor,
        ilens: torch.Tensor,
        prev_states: torch.Tensor = None,
    ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        mel, mel_lens = self.log_mel(xs_pad, ilens)
        mel = mel.to(self.encoders.conv1.weight.dtype)
        xs = self.encode_mel(mel)
        if self.do_pad_trim:
            # the decoder attends to all 1500 frames, padding included
            olens = torch.full((xs.size(0),), xs.size(1), dtype=torch.long, device=xs.device)
        else:
            olens = (mel_lens + 1) // 2  # conv2 has stride 2
        return xs, olens, None


class LocalWhisperDecoder(AbsDecoder, BatchScorerInterface):
    """Whisper's text decoder as an ESPnet decoder and beam-search scorer.

    ``suppress_tokens`` get -inf at every step and ``suppress_blank_tokens`` at
    the first sampled step (when the prefix holds ``sample_begin`` tokens),
    like whisper's ``SuppressTokens``/``SuppressBlank`` logit filters.
    """

    def __init__(
        self,
        vocab_size: int,
        encoder_output_size: int,
        n_vocab: Optional[int] = None,
        n_ctx: int = 448,
        n_state: int = 384,
        n_head: int = 6,
        n_layer: int = 4,
        init_from: Optional[str] = None,
        suppress_tokens: Sequence[int] = (),
        suppress_blank_tokens: Sequence[int] = (),
        sample_begin: int = 0,
        **kwargs,
    ):
        _reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        from whisper.model import TextDecoder

        n_vocab = vocab_size if n_vocab is None else n_vocab
        if n_vocab != vocab_size:
            raise ValueError(
                f"token_list has {vocab_size} entries but the decoder has {n_vocab}"
            )
        if encoder_output_size != n_state:
            raise ValueError(
                f"encoder output size {encoder_output_size} != decoder n_state {n_state}"
            )
        self.n_ctx = n_ctx
        self.decoders = TextDecoder(n_vocab, n_ctx, n_state, n_head, n_layer)
        self.suppress_tokens = [int(t) for t in suppress_tokens]
        self.suppress_blank_tokens = [int(t) for t in suppress_blank_tokens]
        self.sample_begin = int(sample_begin)
        if init_from is not None:
            _load_part(self.decoders, init_from, "decoder.")

    # -- core ---------------------------------------------------------------

    def cross_kv(self, memory: torch.Tensor) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer cross-attention keys and values of ``memory`` (B, T, D)."""
        memory = memory.to(self.decoders.token_embedding.weight.dtype)
        return [
            (block.cross_attn.key(memory), block.cross_attn.value(memory))
            for block in self.decoders.blocks
        ]

    def logits(
        self,
        tokens: torch.Tensor,
        memory: torch.Tensor,
        cross: Optional[List[Tuple[torch.Tensor, torch.Tensor]]] = None,
    ) -> torch.Tensor:
        """Whisper's ``TextDecoder.forward`` (B, L) -> (B, L, n_vocab); with
        ``cross`` the cross-attention keys/values are not recomputed."""
        dec = self.decoders
        if tokens.size(1) > self.n_ctx:
            raise ValueError(f"token prefix longer than n_ctx={self.n_ctx}")
        x = dec.token_embedding(tokens) + dec.positional_embedding[: tokens.size(1)]
        x = x.to(memory.dtype)
        for i, block in enumerate(dec.blocks):
            cache = None
            if cross is not None:
                cache = {block.cross_attn.key: cross[i][0], block.cross_attn.value: cross[i][1]}
            x = block(x, memory, mask=dec.mask, kv_cache=cache)
        x = dec.ln(x)
        return (x @ dec.token_embedding.weight.to(x.dtype).t()).float()

    def forward(
        self,
        hs_pad: torch.Tensor,
        hlens: torch.Tensor,
        ys_in_pad: torch.Tensor,
        ys_in_lens: torch.Tensor,
    ) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.logits(ys_in_pad, hs_pad), ys_in_lens

    def _next_logp(self, logits: torch.Tensor, prefix_len: int) -> torch.Tensor:
        if self.suppress_tokens:
            logits[:, self.suppress_tokens] = -float("inf")
        if self.suppress_blank_tokens and prefix_len == self.sample_begin:
            logits[:, self.suppress_blank_tokens] = -float("inf")
        return torch.log_softmax(logits, dim=-1)

    # -- scorer interface -----------------------------------------------------

    def batch_score(
        self, ys: torch.Tensor, states: List[Any], xs: torch.Tensor
    ) -> Tuple[torch.Tensor, List[Any]]:
        """ys (n, L) prefixes, xs (n, T, D) -> log-probs (n, n_vocab), states.

        A hypothesis' state holds the cross-attention keys/values of its
        encoder output, so they are computed once per utterance.
        """
        if states is None or any(s is None for s in states):
            cross = self.cross_kv(xs)
        else:
            cross = [
                (
                    torch.stack([s[i][0] for s in states]),
                    torch.stack([s[i][1] for s in states]),
                )
                for i in range(len(self.decoders.blocks))
            ]
        logits = self.logits(ys, xs, cross)[:, -1]
        logp = self._next_logp(logits, ys.size(1))
        new_states = [[(k[j], v[j]) for k, v in cross] for j in range(ys.size(0))]
        return logp, new_states

    def score(self, ys: torch.Tensor, state: Any, x: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        logp, states = self.batch_score(ys.unsqueeze(0), [state], x.unsqueeze(0))
        return logp.squeeze(0), states[0]


# ---------------------------------------------------------------------------
# whisper tokenizer helpers
# ---------------------------------------------------------------------------


def get_whisper_tokenizer(n_vocab: int, language: Optional[str] = "en", task: str = "transcribe"):
    """The openai-whisper tokenizer that matches a model's vocabulary size."""
    from whisper.tokenizer import get_tokenizer

    multilingual = n_vocab >= 51865
    if not multilingual:
        return get_tokenizer(multilingual=False)
    return get_tokenizer(
        multilingual=True,
        num_languages=n_vocab - 51765 - 1,
        language=language,
        task=task,
    )


def whisper_decoding_filters(tokenizer) -> Dict[str, Any]:
    """``suppress_tokens``/``suppress_blank_tokens``/``sample_begin`` for
    :class:`LocalWhisperDecoder`, as whisper's default greedy decoding
    (``suppress_tokens="-1"``, ``suppress_blank=True``, no timestamps) uses."""
    suppress = list(tokenizer.non_speech_tokens) + [
        tokenizer.transcribe,
        tokenizer.translate,
        tokenizer.sot,
        tokenizer.sot_prev,
        tokenizer.sot_lm,
    ]
    if tokenizer.no_speech is not None:
        suppress.append(tokenizer.no_speech)
    return dict(
        suppress_tokens=sorted(set(int(t) for t in suppress)),
        suppress_blank_tokens=[int(t) for t in tokenizer.encode(" ")] + [int(tokenizer.eot)],
        sample_begin=len(tokenizer.sot_sequence_including_notimestamps),
    )


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's reversible byte -> printable character map (``Ġ`` is a space)."""
    bs = list(range(ord("!"), ord("~") + 1))
    bs += list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


_BYTE_TO_CHAR = _bytes_to_unicode()
_CHAR_TO_BYTE = {c: b for b, c in _BYTE_TO_CHAR.items()}


class HFStyleWhisperTokenizer:
    """The part of the Hugging Face tokenizer API that ESPnet's
    ``OpenAIWhisperTokenizer``/``OpenAIWhisperTokenIDConverter`` call, over a
    tiktoken encoding. Tokens are byte-level strings (``Ġ`` for a space)."""

    def __init__(self, encoding):
        self.encoding = encoding
        self._special = dict(encoding._special_tokens)  # token -> id
        self._added: Dict[str, int] = {}
        self._by_id: Dict[int, str] = {v: k for k, v in self._special.items()}
        self._special_ids = set(self._by_id)
        self._regular: Optional[Dict[str, int]] = None

    def _regular_token(self, i: int) -> str:
        return "".join(_BYTE_TO_CHAR[b] for b in self.encoding.decode_single_token_bytes(i))

    def _next_id(self) -> int:
        return max(self.encoding.n_vocab, max(self._by_id, default=-1) + 1)

    @property
    def vocab_size(self) -> int:
        return len(self.encoding._mergeable_ranks)

    def __len__(self) -> int:
        return self._next_id()

    @property
    def additional_special_tokens(self) -> List[str]:
        return [t for t, _ in sorted(self._special.items(), key=lambda kv: kv[1])]

    def get_added_vocab(self) -> Dict[str, int]:
        return {**self._special, **self._added}

    def add_special_tokens(self, tokens: Dict[str, List[str]]) -> int:
        n = 0
        for t in tokens.get("additional_special_tokens", []):
            if t not in self._special and t not in self._added:
                i = self._next_id()
                self._special[t] = i
                self._by_id[i] = t
                self._special_ids.add(i)
                n += 1
        return n

    def add_tokens(self, tokens: List[str]) -> int:
        n = 0
        for t in tokens:
            if t not in self._special and t not in self._added:
                i = self._next_id()
                self._added[t] = i
                self._by_id[i] = t
                n += 1
        return n

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._by_id.get(ids) or self._regular_token(ids)
        out = []
        for i in ids:
            i = int(i)
            if i in self._special_ids:
                if not skip_special_tokens:
                    out.append(self._by_id[i])
            elif i in self._by_id:
                out.append(self._by_id[i])
            else:
                out.append(self._regular_token(i))
        return out

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.convert_tokens_to_ids([tokens])[0]
        if self._regular is None:
            self._regular = {
                self._regular_token(i): i for i in range(self.encoding.n_vocab)
                if i not in self._special_ids
            }
        out = []
        for t in tokens:
            if t in self._special:
                out.append(self._special[t])
            elif t in self._added:
                out.append(self._added[t])
            else:
                out.append(self._regular[t])
        return out

    def tokenize(self, text: str, add_special_tokens: bool = False) -> List[str]:
        return [self._regular_token(i) for i in self.encoding.encode_ordinary(text)]

    def convert_tokens_to_string(self, tokens: List[str]) -> str:
        data = bytearray()
        for t in tokens:
            if t in self._special or t in self._added:
                data += t.encode("utf-8")
            else:
                data += bytes(_CHAR_TO_BYTE[c] for c in t)
        return data.decode("utf-8", errors="replace")


def _hf_view(self) -> HFStyleWhisperTokenizer:
    view = self.__dict__.get("_espnet_hf_tokenizer")
    if view is None:
        view = HFStyleWhisperTokenizer(self.encoding)
        self.__dict__["_espnet_hf_tokenizer"] = view
    return view


def install_tokenizer_compat() -> None:
    """Give ``whisper.tokenizer.Tokenizer`` the ``.tokenizer`` attribute (a
    Hugging Face style view) that ESPnet's Whisper text classes expect.
    Does nothing where openai-whisper already provides it."""
    from whisper.tokenizer import Tokenizer

    if "tokenizer" not in Tokenizer.__dict__ and not hasattr(Tokenizer, "tokenizer"):
        Tokenizer.tokenizer = property(_hf_view)


def whisper_token_list(tokenizer, n_vocab: int) -> List[str]:
    """ESPnet ``token_list`` for a Whisper vocabulary (as
    ``espnet2.bin.whisper_export_vocabulary`` writes it: ``Ġ`` -> space)."""
    view = HFStyleWhisperTokenizer(tokenizer.encoding)
    if tokenizer.encoding.n_vocab != n_vocab:
        raise ValueError(
            f"tokenizer has {tokenizer.encoding.n_vocab} tokens, model {n_vocab}"
        )
    return [view.convert_ids_to_tokens(i).replace("Ġ", " ") for i in range(n_vocab)]


install_tokenizer_compat()
