"""The openai-whisper tokenizer: what the export writes into ``config.yaml``, and
:func:`install_tokenizer_compat`, which lets ESPnet's Whisper text classes (written for the old Hugging Face
based tokenizer) run on the tiktoken-based one; it patches, so it runs only when called."""

from collections import ChainMap
from typing import Any, Dict, List, Optional


def get_whisper_tokenizer(n_vocab: int, language: Optional[str] = "en", task: str = "transcribe"):
    """The openai-whisper tokenizer that matches a model's vocabulary size."""
    from whisper.tokenizer import get_tokenizer

    if n_vocab < 51865:
        return get_tokenizer(multilingual=False)
    return get_tokenizer(multilingual=True, num_languages=n_vocab - 51765 - 1, language=language, task=task)


def whisper_decoding_filters(tokenizer) -> Dict[str, Any]:
    """``suppress_tokens``/``suppress_blank_tokens``/``sample_begin`` for
    :class:`LocalWhisperDecoder`, as whisper's default greedy decoding
    (``suppress_tokens="-1"``, ``suppress_blank=True``, no timestamps) uses."""
    suppress = list(tokenizer.non_speech_tokens) + [
        tokenizer.transcribe, tokenizer.translate, tokenizer.sot, tokenizer.sot_prev, tokenizer.sot_lm,
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

    def _add(self, tokens: List[str], special: bool) -> int:
        new = [t for t in dict.fromkeys(tokens) if t not in self._special and t not in self._added]
        for t in new:
            i = self._next_id()
            (self._special if special else self._added)[t] = i
            self._by_id[i] = t
            if special:
                self._special_ids.add(i)
        return len(new)

    def add_special_tokens(self, tokens: Dict[str, List[str]]) -> int:
        return self._add(tokens.get("additional_special_tokens", []), special=True)

    def add_tokens(self, tokens: List[str]) -> int:
        return self._add(tokens, special=False)

    def _token(self, i: int) -> str:
        return self._by_id[i] if i in self._by_id else self._regular_token(i)

    def convert_ids_to_tokens(self, ids, skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self._token(ids)
        skipped = self._special_ids if skip_special_tokens else ()
        return [self._token(i) for i in map(int, ids) if i not in skipped]

    def convert_tokens_to_ids(self, tokens):
        if isinstance(tokens, str):
            return self.convert_tokens_to_ids([tokens])[0]
        if self._regular is None:
            self._regular = {self._regular_token(i): i for i in range(self.encoding.n_vocab)
                             if i not in self._special_ids}
        table = ChainMap(self._special, self._added, self._regular)
        return [table[t] for t in tokens]

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
    if "_espnet_hf_tokenizer" not in self.__dict__:
        self.__dict__["_espnet_hf_tokenizer"] = HFStyleWhisperTokenizer(self.encoding)
    return self.__dict__["_espnet_hf_tokenizer"]


def install_tokenizer_compat() -> None:
    """Give ``whisper.tokenizer.Tokenizer`` the Hugging Face style ``.tokenizer`` that ESPnet's Whisper text
    classes expect, unless openai-whisper already provides it."""
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
