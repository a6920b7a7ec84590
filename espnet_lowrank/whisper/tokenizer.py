"""The openai-whisper tokenizer as ESPnet's Whisper text classes use it.

* ``get_whisper_tokenizer``, ``whisper_decoding_filters`` and
  ``whisper_token_list``: what the export writes into ``config.yaml``;
* :func:`install_tokenizer_compat`: lets ESPnet's ``OpenAIWhisperTokenizer``/
  ``OpenAIWhisperTokenIDConverter`` (written for the old Hugging Face based
  openai-whisper tokenizer) run on the current tiktoken-based one. It patches
  ``whisper.tokenizer.Tokenizer``, so it runs only when called:
  ``LocalWhisperDecoder`` calls it, which covers ``Speech2Text`` and training
  (both build the model before the tokenizer).
"""

from typing import Any, Dict, List, Optional


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
        raise ValueError(f"tokenizer has {tokenizer.encoding.n_vocab} tokens, model {n_vocab}")
    return [view.convert_ids_to_tokens(i).replace("Ġ", " ") for i in range(n_vocab)]
