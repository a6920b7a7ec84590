"""ESPnet encoder/decoder wrappers around openai-whisper modules, every dimension from the config, so that
an exported exp dir is self-contained (ESPnet's own ``OpenAIWhisper*`` take hub names only and assume 80 mel
bins). Module names are those of ``whisper.model`` (plans target them). Importing this changes nothing."""

import logging
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from espnet2.asr.decoder.abs_decoder import AbsDecoder
from espnet2.asr.encoder.abs_encoder import AbsEncoder
from espnet.nets.scorer_interface import BatchScorerInterface

from espnet_lowrank.quantize import quantize_linears_, quantized_projection
from espnet_lowrank.whisper import kv_cache
from espnet_lowrank.whisper.checkpoints import load_whisper_checkpoint
from espnet_lowrank.whisper.loop_guard import LOOP_REPEATS, LOOP_TOKENS, ends_in_loop
from espnet_lowrank.whisper.tokenizer import get_whisper_tokenizer, install_tokenizer_compat

logger = logging.getLogger(__name__)

SAMPLE_RATE = 16000
N_SAMPLES = 30 * SAMPLE_RATE  # whisper's 30 s window
KVs = List[kv_cache.KV]


def _reject_unknown(cls_name: str, kwargs: Dict[str, Any]) -> None:
    if kwargs:
        raise ValueError(f"{cls_name}: unknown arguments {sorted(kwargs)}")


def _load_part(module: torch.nn.Module, init_from: str, prefix: str) -> None:
    sd, _ = load_whisper_checkpoint(init_from)
    part = {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}
    mine = module.state_dict()
    bad = [k for k in mine if k in part and tuple(part[k].shape) != tuple(mine[k].shape)]
    if bad:
        raise ValueError(f"{init_from}: shapes of {bad[:3]} do not match the configured "
                         "dimensions; take the dimensions from the checkpoint")
    module.load_state_dict(part, strict=True)
    logger.info("loaded %s weights from %s", prefix.rstrip("."), init_from)


class LocalWhisperEncoder(AbsEncoder):
    """Whisper's audio encoder and log-mel front end: 16 kHz audio (B, samples) -> (B, n_ctx, n_state)."""

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

    def log_mel(self, xs_pad: torch.Tensor, ilens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per-utterance log-mel (B, n_mels, frames) exactly as whisper computes it.

        Whisper's dynamic-range clamp depends on the utterance's maximum, so each utterance is cut to its
        length (ESPnet pads batches) and, with ``do_pad_trim``, padded/trimmed to 30 s on its own. Cuts are
        counted in ``num_cut``; only the first one is logged.
        """
        from whisper.audio import log_mel_spectrogram, pad_or_trim

        mels = []
        for audio, n in zip(xs_pad, ilens.tolist()):
            audio = audio[: int(n)].float()
            if self.do_pad_trim:
                if audio.shape[-1] > N_SAMPLES:
                    self.num_cut = getattr(self, "num_cut", 0) + 1
                    if self.num_cut == 1:
                        logger.warning("an utterance of %.1f s is cut to Whisper's 30 s window (further cuts "
                                       "are counted, not logged one by one)", audio.shape[-1] / SAMPLE_RATE)
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

    def forward(self, xs_pad: torch.Tensor, ilens: torch.Tensor, prev_states: torch.Tensor = None
                ) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
        mel, mel_lens = self.log_mel(xs_pad, ilens)
        xs = self.encode_mel(mel.to(self.encoders.conv1.weight.dtype))
        if self.do_pad_trim:
            # the decoder attends to all 1500 frames, padding included
            olens = torch.full((xs.size(0),), xs.size(1), dtype=torch.long, device=xs.device)
        else:
            olens = (mel_lens + 1) // 2  # conv2 has stride 2
        return xs, olens, None


class LocalWhisperDecoder(AbsDecoder, BatchScorerInterface):
    """Whisper's text decoder as an ESPnet decoder and beam-search scorer.

    ``suppress_tokens`` get -inf at every step and ``suppress_blank_tokens`` at the first sampled step (a
    prefix of ``sample_begin`` tokens), like whisper's ``SuppressTokens``/``SuppressBlank``. Decoding is
    incremental (:mod:`~espnet_lowrank.whisper.kv_cache`: only the newest token runs through the blocks and
    onto the vocabulary). :meth:`batch_score` applies the loop guard (``loop_repeats``/``loop_tokens``, see
    :mod:`~espnet_lowrank.whisper.loop_guard`; 0 turns it off).
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
        loop_repeats: int = LOOP_REPEATS,
        loop_tokens: int = LOOP_TOKENS,
        int8: bool = False,
        **kwargs,
    ):
        _reject_unknown(type(self).__name__, kwargs)
        super().__init__()
        from whisper.model import TextDecoder

        # Speech2Text and training build ESPnet's Whisper tokenizer after the model
        install_tokenizer_compat()
        n_vocab = vocab_size if n_vocab is None else n_vocab
        if n_vocab != vocab_size:
            raise ValueError(f"token_list has {vocab_size} entries but the decoder has {n_vocab}")
        if encoder_output_size != n_state:
            raise ValueError(f"encoder output size {encoder_output_size} != decoder n_state {n_state}")
        self.n_ctx = n_ctx
        self.decoders = TextDecoder(n_vocab, n_ctx, n_state, n_head, n_layer)
        self.suppress_tokens = [int(t) for t in suppress_tokens]
        self.suppress_blank_tokens = [int(t) for t in suppress_blank_tokens]
        self.sample_begin = int(sample_begin)
        if loop_repeats < 0 or (loop_repeats and loop_repeats < 2) or loop_tokens < 0:
            raise ValueError(f"loop_repeats must be 0 (off) or >= 2 and loop_tokens >= 0, "
                             f"got {loop_repeats} and {loop_tokens}")
        self.loop_repeats, self.loop_tokens = int(loop_repeats), int(loop_tokens)
        self._eot: Optional[int] = None
        self._vocabulary_t = kv_cache.TransposedVocabulary()
        self._vocabulary_int8: Optional[torch.nn.Module] = None
        if int8:  # model.pth holds float weights: quantize once they are loaded
            self.register_load_state_dict_post_hook(lambda module, _keys: module.quantize_())
        # what prompt() primes with; build_asr_model sets them from preprocessor_conf
        self.language, self.task = "en", "transcribe"
        if init_from is not None:
            _load_part(self.decoders, init_from, "decoder.")

    def cross_kv(self, memory: torch.Tensor) -> KVs:
        """Per-layer cross-attention keys and values of ``memory`` (B, T, D)."""
        memory = memory.to(self.decoders.token_embedding.weight.dtype)
        return [(b.cross_attn.key(memory), b.cross_attn.value(memory)) for b in self.decoders.blocks]

    def states(self, tokens: torch.Tensor, memory: torch.Tensor, cross: Optional[KVs] = None) -> torch.Tensor:
        """The final states (B, L, D) before the vocabulary projection; ``cross``: from :meth:`cross_kv`."""
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
        return dec.ln(x)

    @property
    def vocabulary(self) -> torch.Tensor:
        """(n_vocab, D): logits are ``states @ vocabulary.T`` (tied embedding)."""
        return self.decoders.token_embedding.weight

    def logits(self, tokens: torch.Tensor, memory: torch.Tensor, cross: Optional[KVs] = None) -> torch.Tensor:
        """Whisper's ``TextDecoder.forward`` (B, L) -> (B, L, n_vocab), see :meth:`states`."""
        x = self.states(tokens, memory, cross)
        return (x @ self.vocabulary.to(x.dtype).t()).float()

    def extend(self, tokens: torch.Tensor, cross: KVs,
               past: Optional[KVs] = None) -> Tuple[torch.Tensor, KVs]:
        """One decoding step: ``tokens`` (n, l) after the ``past`` cache (see ``kv_cache.run_blocks``; None:
        from position 0) -> the last position's logits (n, n_vocab) and the cache; ``cross`` from
        :meth:`_split_cross`, of batch n or 1."""
        dec = self.decoders
        start = 0 if past is None else past[0][0].size(2)
        if start + tokens.size(1) > self.n_ctx:
            raise ValueError(f"token prefix longer than n_ctx={self.n_ctx}")
        x = dec.token_embedding(tokens) + dec.positional_embedding[start : start + tokens.size(1)]
        x, past = kv_cache.run_blocks(dec.blocks, x.to(cross[0][0].dtype), cross, past)
        x = dec.ln(x[:, -1])
        if self._vocabulary_int8 is not None:
            return self._vocabulary_int8(x.float()), past
        return (x @ self._vocabulary_t(self.vocabulary, x.dtype)).float(), past

    def quantize_(self) -> None:
        """Dynamic int8 (CPU) on the blocks' linears and on the vocabulary
        projection of decoding steps (``deployment.int8``; ``decoder_conf.int8``)."""
        if self._vocabulary_int8 is None:
            quantize_linears_(self.decoders.blocks)
            self._vocabulary_int8 = quantized_projection(self.vocabulary)

    def _split_cross(self, memory: torch.Tensor) -> KVs:
        heads = self.decoders.blocks[0].cross_attn.n_head
        split = kv_cache.split_heads
        return [(split(k, heads), split(v, heads)) for k, v in self.cross_kv(memory)]

    def forward(self, hs_pad: torch.Tensor, hlens: torch.Tensor, ys_in_pad: torch.Tensor,
                ys_in_lens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        return self.logits(ys_in_pad, hs_pad), ys_in_lens

    def prompt(self) -> Tuple[List[int], int]:
        """The prefix that decoding primes with (start, [language, task,] no timestamps) and the end token."""
        n_vocab = self.decoders.token_embedding.num_embeddings
        tokenizer = get_whisper_tokenizer(n_vocab, self.language, self.task)
        return list(tokenizer.sot_sequence_including_notimestamps), tokenizer.eot

    @torch.no_grad()
    def greedy(self, memory: torch.Tensor, max_len: int) -> Tuple[torch.Tensor, torch.Tensor]:
        """Greedy transcripts of ``memory`` (B, T, D) as decode.yaml makes them (no loop guard, so that
        recovery's teacher transcripts stay those the shipped configs were measured with): tokens (B, L) up
        to each row's end token, and a (B, L) mask of the positions whose next token is in the transcript."""
        prefix, eot = self.prompt()
        cross = self._split_cross(memory)
        ys = torch.tensor([prefix] * memory.size(0), device=memory.device)
        done = torch.zeros(memory.size(0), dtype=torch.bool, device=memory.device)
        new, past = ys, None
        for _ in range(min(max_len, self.n_ctx - len(prefix))):
            logits, past = self.extend(new, cross, past)
            nxt = self._next_logp(logits, ys.size(1)).argmax(-1)
            new = torch.where(done, eot, nxt)[:, None]
            ys = torch.cat([ys, new], dim=1)
            done |= nxt == eot
            if done.all():
                break
        ended = torch.cumsum((ys[:, len(prefix):] == eot).long(), dim=1)
        # position t predicts token t + 1: from the last prefix token up to the end token
        mask = torch.zeros_like(ys, dtype=torch.bool)
        mask[:, len(prefix) - 1 : -1] = (ended - (ys[:, len(prefix):] == eot).long()) == 0
        return ys, mask

    def _next_logp(self, logits: torch.Tensor, prefix_len: int) -> torch.Tensor:
        if self.suppress_tokens:
            logits[:, self.suppress_tokens] = -float("inf")
        if self.suppress_blank_tokens and prefix_len == self.sample_begin:
            logits[:, self.suppress_blank_tokens] = -float("inf")
        return torch.log_softmax(logits, dim=-1)

    def batch_score(self, ys: torch.Tensor, states: List[Any],
                    xs: torch.Tensor) -> Tuple[torch.Tensor, List[Any]]:
        """ys (n, L) prefixes, xs (n, T, D) -> log-probs (n, n_vocab), states (``kv_cache.HypState``); when
        a state's cache is missing or holds another prefix than ``ys[:, :-1]``, the whole prefix is run."""
        cross = kv_cache.gather_cross(states)
        past = None if cross is None else kv_cache.gather_past(states, ys)
        if cross is None:
            # beam search expands one utterance's encoder output over its hypotheses
            cross = self._split_cross(xs[:1] if xs.size(0) > 1 and xs.stride(0) == 0 else xs)
        logits, past = self.extend(ys if past is None else ys[:, -1:], cross, past)
        return self._end_loops(ys, self._next_logp(logits, ys.size(1))), kv_cache.scatter(cross, past, ys)

    def batch_score_recompute(self, ys: torch.Tensor, states: List[Any],
                              xs: torch.Tensor) -> Tuple[torch.Tensor, List[Any]]:
        """:meth:`batch_score` before the self-attention cache (the whole prefix through every block, every
        position onto the vocabulary): the reference of the tests and of ``bench/decode_speed.py``."""
        cross = kv_cache.gather_cross(states) or self._split_cross(xs)
        # one copy per hypothesis, as the states were stacked then
        rows = [(k.expand(ys.size(0), -1, -1, -1).transpose(1, 2).flatten(2),
                 v.expand(ys.size(0), -1, -1, -1).transpose(1, 2).flatten(2)) for k, v in cross]
        logp = self._next_logp(self.logits(ys, xs, rows)[:, -1], ys.size(1))
        return self._end_loops(ys, logp), kv_cache.scatter(cross, None, ys)

    def _end_loops(self, ys: torch.Tensor, logp: torch.Tensor) -> torch.Tensor:
        """``logp`` with only the end token left to each hypothesis that loops (in place)."""
        if not self.loop_repeats:
            return logp
        for row, tokens in enumerate(ys[:, self.sample_begin:].tolist()):
            if ends_in_loop(tokens, self.loop_repeats, self.loop_tokens):
                if self._eot is None:
                    self._eot = self.prompt()[1]
                logp[row] = -float("inf")
                logp[row, self._eot] = 0.0
        return logp

    def score(self, ys: torch.Tensor, state: Any, x: torch.Tensor) -> Tuple[torch.Tensor, Any]:
        logp, states = self.batch_score(ys.unsqueeze(0), [state], x.unsqueeze(0))
        return logp.squeeze(0), states[0]
