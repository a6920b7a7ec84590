#!/usr/bin/env python3
"""Helpers for the speaker-dependent setup (run.sh --setup speaker; local/speaker.sh),
run from recipes/conformer/asr1.

Subcommands:
  split SRC --dev A-B --test A-B --out DIR
        stage 1: one speaker's ARCTIC takes (ids ..._aNNNN_<take>) -> DIR/{train,dev,test_real_seen},
        holding out WHOLE prompts (every take of a dev/test prompt); training takes whose
        transcript equals a held-out one are dropped too
  check_heldout TRAIN HELDOUT...
        exit 1 if a prompt id or a transcript of a HELDOUT dir is in TRAIN (sp<f>- ids included)
  speed_perturb SRC --factors 0.9 1.1 --out DIR
        stage 3: DIR = SRC + one resampled copy per factor (ESPnet's sp<f>-<id>, speaker sp<f>-<spk>),
        audio written as FLAC under DIR/audio; utt2num_samples
  lm_text --corpora DIR --train_text FILE --exclude DIR... --out FILE
        stage 6: LM training text: the ASR training transcripts plus the VCTK and LJSpeech
        sentences of text_corpora, normalized (upper case, [A-Z' ] only), de-duplicated, without
        any sentence of the --exclude dirs (dev/test). The ARCTIC prompt list is never read:
        it holds the dev/test prompts.
  lm_unseen SRC --lm_text FILE --out DIR
        DIR = the utterances of SRC whose transcript is not in the LM text: a test set on
        which shallow fusion cannot recall a sentence it was trained on
  minutes DIR...  utterances, prompts and minutes of each Kaldi dir
"""

import argparse
import os
import re
import sys
from typing import List, Set

PROMPT = re.compile(r"_a(\d{4})(?:_|$)")


def die(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def norm(text: str) -> str:
    from espnet_lowrank.scoring import basic_normalize

    return basic_normalize(text)


def prompt_of(utt_id: str) -> int:
    m = PROMPT.search(utt_id)
    if not m:
        die(f"utterance id {utt_id!r} carries no ARCTIC prompt id (_aNNNN)")
    return int(m.group(1))


def parse_range(text: str):
    lo, hi = (int(x) for x in text.split("-"))
    if lo > hi:
        die(f"bad prompt range {text!r}")
    return lo, hi


def cmd_split(args) -> None:
    from espnet_lowrank.data import read_data_dir, write_data_dir

    utts = read_data_dir(args.src, require_text=True)
    dev_r, test_r = parse_range(args.dev), parse_range(args.test)
    if max(dev_r[0], test_r[0]) <= min(dev_r[1], test_r[1]):
        die(f"dev prompts {args.dev} and test prompts {args.test} overlap")
    inside = lambda p, r: r[0] <= p <= r[1]  # noqa: E731
    dev = [u for u in utts if inside(prompt_of(u.utt_id), dev_r)]
    test = [u for u in utts if inside(prompt_of(u.utt_id), test_r)]
    heldout_texts = {norm(u.text) for u in dev + test}
    rest = [u for u in utts if u not in dev and u not in test]
    train = [u for u in rest if norm(u.text) not in heldout_texts]
    if not (train and dev and test):
        die(f"empty set: train {len(train)}, dev {len(dev)}, test {len(test)}")
    for name, part in (("train", train), ("dev", dev), ("test_real_seen", test)):
        write_data_dir(os.path.join(args.out, name), part)
    print(f"train {len(train)}, dev {len(dev)}, test_real_seen {len(test)} takes "
          f"({len(rest) - len(train)} training takes dropped: same text as a held-out prompt)", file=sys.stderr)


def cmd_check_heldout(args) -> None:
    from espnet_lowrank.data import read_data_dir

    train = read_data_dir(args.train, require_text=True)
    prompts = {prompt_of(u.utt_id) for u in train}
    texts = {norm(u.text) for u in train}
    for path in args.heldout:
        for u in read_data_dir(path, require_text=True):
            if prompt_of(u.utt_id) in prompts:
                die(f"{args.train} holds prompt a{prompt_of(u.utt_id):04d} of {path} ({u.utt_id})")
            if norm(u.text) in texts:
                die(f"{args.train} holds the transcript of {u.utt_id} ({path})")
    print(f"ok: no prompt or transcript of {' '.join(args.heldout)} in {args.train}", file=sys.stderr)


def _resample(wav, sr: int, factor: float):
    """Speed perturbation as sox's ``speed``: tempo and pitch scale by ``factor``."""
    import torch
    import torchaudio.functional as AF

    x = torch.from_numpy(wav).float().unsqueeze(0)
    # Play at factor x: reinterpret as sampled at sr*factor, resample back to sr.
    orig = int(round(sr * factor))
    return AF.resample(x, orig_freq=orig, new_freq=sr).squeeze(0).numpy()


def cmd_speed_perturb(args) -> None:
    import soundfile as sf

    from espnet_lowrank.data import Utterance, read_data_dir, write_data_dir

    utts = read_data_dir(args.src, require_text=True)
    audio_dir = os.path.abspath(os.path.join(args.out, "audio"))
    os.makedirs(audio_dir, exist_ok=True)
    out: List[Utterance] = list(utts)
    samples = {u.utt_id: sf.info(u.wav_path).frames for u in utts}
    for f in args.factors:
        tag = f"sp{f:g}"
        for u in utts:
            path = os.path.join(audio_dir, f"{tag}-{u.utt_id}.flac")
            if not os.path.isfile(path):
                wav, sr = sf.read(u.wav_path, dtype="float32")
                y = _resample(wav, sr, f)
                sf.write(path + ".tmp.flac", y, sr, subtype="PCM_16")
                os.replace(path + ".tmp.flac", path)
            uid = f"{tag}-{u.utt_id}"
            out.append(Utterance(uid, path, u.text, f"{tag}-{u.speaker or u.utt_id}"))
            samples[uid] = sf.info(path).frames
    write_data_dir(args.out, out)
    with open(os.path.join(args.out, "utt2num_samples"), "w", encoding="utf-8") as fh:
        fh.writelines(f"{u.utt_id} {samples[u.utt_id]}\n" for u in sorted(out, key=lambda u: u.utt_id))
    print(f"{args.out}: {len(out)} utterances ({len(utts)} x {1 + len(args.factors)})", file=sys.stderr)


def _corpus_sentences(corpora: str) -> List[str]:
    out = []
    for name in ("vctk_vits_filelists.txt", "ljspeech_vits_filelists.txt"):
        path = os.path.join(corpora, name)
        if not os.path.isfile(path):
            die(f"text corpus not found: {path}")
        with open(path, encoding="utf-8") as f:
            out += [line.rstrip("\n").split("|")[-1] for line in f if "|" in line]
    return out


def cmd_lm_text(args) -> None:
    from espnet_lowrank.data import read_data_dir

    excluded: Set[str] = set()
    for path in args.exclude:
        excluded |= {norm(u.text) for u in read_data_dir(path, require_text=True)}
    with open(args.train_text, encoding="utf-8") as f:
        asr_texts = [line.split(" ", 1)[1] if " " in line.strip() else "" for line in f]
    seen: Set[str] = set()
    kept, dropped = [], 0
    for s in asr_texts + _corpus_sentences(args.corpora):
        n = norm(s)
        if not n or not re.fullmatch(r"[A-Z' ]+", n):  # digits would need number expansion
            continue
        if n in excluded:
            dropped += 1
            continue
        if n not in seen:
            seen.add(n)
            kept.append(n)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        f.writelines(f"lm{i:06d} {s}\n" for i, s in enumerate(kept))
    print(f"{args.out}: {len(kept)} sentences, {sum(len(s.split()) for s in kept)} words "
          f"({dropped} lines dropped: a dev/test transcript)", file=sys.stderr)


def cmd_lm_unseen(args) -> None:
    from espnet_lowrank.data import read_data_dir, write_data_dir

    if not os.path.isfile(args.lm_text):
        die(f"LM text not found: {args.lm_text} (local/speaker.sh stage 6 writes dump/sd/lm/train.txt)")
    with open(args.lm_text, encoding="utf-8") as f:
        lm = {norm(line.split(" ", 1)[1]) for line in f if " " in line.strip()}
    utts = read_data_dir(args.src, require_text=True)
    keep = [u for u in utts if norm(u.text) not in lm]
    if not keep:
        die(f"{args.src}: every transcript is in {args.lm_text}")
    write_data_dir(args.out, keep)
    print(f"{args.out}: {len(keep)} of {len(utts)} utterances of {args.src} "
          f"({len(utts) - len(keep)} read a sentence of the LM text)", file=sys.stderr)


def cmd_minutes(args) -> None:
    import soundfile as sf

    from espnet_lowrank.data import read_data_dir

    for path in args.dirs:
        utts = read_data_dir(path)
        secs = sum(sf.info(u.wav_path).duration for u in utts)
        prompts = {prompt_of(u.utt_id) for u in utts}
        print(f"{path}: {len(utts)} utterances, {len(prompts)} prompts, {secs / 60:.1f} min")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("split")
    s.add_argument("src")
    s.add_argument("--dev", required=True)
    s.add_argument("--test", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("check_heldout")
    s.add_argument("train")
    s.add_argument("heldout", nargs="+")
    s = sub.add_parser("speed_perturb")
    s.add_argument("src")
    s.add_argument("--factors", type=float, nargs="*", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("lm_text")
    s.add_argument("--corpora", required=True)
    s.add_argument("--train_text", required=True)
    s.add_argument("--exclude", nargs="+", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("lm_unseen")
    s.add_argument("src")
    s.add_argument("--lm_text", required=True)
    s.add_argument("--out", required=True)
    s = sub.add_parser("minutes")
    s.add_argument("dirs", nargs="+")
    args = p.parse_args(argv)
    globals()[f"cmd_{args.cmd}"](args)


if __name__ == "__main__":
    main()
