#!/usr/bin/env python3
"""Helpers for the Conformer recipe (run from recipes/conformer/asr1).

Subcommands:
  check_data DIR...            every DIR is a Kaldi dir (wav.scp, all audio present)
                               or a LibriSpeech tree; exit 1 with a clear message otherwise
  check_family CONFIG          print the low-rank family of CONFIG's ``encoder``
                               (a train config or an exp's config.yaml); exit 1 if unknown
  check_lowrank YAML...        parse low-rank method configs; print their batch sizes
  select_sentences ...         stage 1: disjoint train/test sentence lists for Piper
  combine ...                  stage 1: train/dev/test_real dirs from real + synthesized speech
  format DIR... --out_root D   stage 2: copy each Kaldi DIR to D/<its name>, adding utt2num_samples
  train_bpe TEXT PREFIX N       stage 5: a unigram sentencepiece model of N pieces
  filter DIR --min S --max S   stage 4: keep utterances with min <= duration <= max
  calib_split ...              stage 12: calibration subset of the training data, split
                               into batch-aligned parts (same batches for any --nj)
  sweep_configs ...            stage 12: one low-rank config per θ
"""

import argparse
import contextlib
import os
import random
import re
import sys
from typing import Dict, List

import yaml


def die(msg: str) -> None:
    print(f"ERROR: {msg}", file=sys.stderr)
    sys.exit(1)


def read_any(path: str):
    """Utterances of a Kaldi dir or a LibriSpeech tree (validated)."""
    from espnet_lowrank.data import import_librispeech, read_data_dir

    if not os.path.isdir(path):
        raise FileNotFoundError(f"data directory not found: {path}")
    if os.path.isfile(os.path.join(path, "wav.scp")):
        return read_data_dir(path)
    return import_librispeech(path)


def cmd_check_data(args) -> None:
    for path in args.dirs:
        try:
            utts = read_any(path)
        except (FileNotFoundError, ValueError) as e:
            die(f"bad data dir {path}: {e}")
        if args.require_text and any(u.text is None for u in utts):
            die(f"bad data dir {path}: no transcripts (text)")
        print(f"ok: {path} ({len(utts)} utterances)", file=sys.stderr)


def cmd_check_family(args) -> None:
    from espnet_lowrank.families import all_families

    if not os.path.isfile(args.config):
        die(f"config not found: {args.config}")
    with open(args.config, encoding="utf-8") as f:
        config = yaml.safe_load(f) or {}
    name = config.get("encoder")
    if name is None:
        die(f"{args.config}: no 'encoder' key")
    if name == "lowrank":
        family = (config.get("encoder_conf") or {}).get("family")
        print(family or "lowrank")
        return
    # stdout carries only the family name (run.sh reads it); ESPnet's imports print
    # notices ("Failed to import Flash Attention ...") there.
    with contextlib.redirect_stdout(sys.stderr):
        from espnet2.tasks.asr import encoder_choices

        try:
            cls = encoder_choices.get_class(name)
        except ValueError:
            die(f"{args.config}: unknown ESPnet encoder {name!r}; known: {sorted(encoder_choices.classes)}")
        families = all_families()
    for c in cls.__mro__:
        family = families.get(f"{c.__module__}.{c.__qualname__}")
        if family is not None:
            print(family.name)
            return
    known = sorted(f.name for f in families.values())
    die(f"{args.config}: encoder {name!r} ({cls.__name__}) has no low-rank adapter "
        f"(unknown encoder family); supported families: {known}")


def cmd_check_lowrank(args) -> None:
    from espnet_lowrank.config import LowRankConfig

    for path in args.configs:
        if not os.path.isfile(path):
            die(f"low-rank config not found: {path}")
        try:
            print(LowRankConfig.from_yaml(path).calibration.batch_size)
        except (ValueError, TypeError, yaml.YAMLError) as e:
            die(f"bad low-rank config {path}: {e}")


def cmd_needs_audio(args) -> None:
    """'yes' when the config calibrates in several passes (sequential) or
    trains on the audio (recovery): those can't be split into summed statistics."""
    from espnet_lowrank.config import LowRankConfig

    config = LowRankConfig.from_yaml(args.config)
    print("yes" if config.calibration.sequential or config.recovery.steps else "no")


# ---------------------------------------------------------------- stage 1
def _norm(text: str) -> str:
    from espnet_lowrank.scoring import basic_normalize

    return basic_normalize(text)


def _corpus_sentences(corpora_dir: str) -> List[str]:
    out = []
    for name in ("ljspeech_vits_filelists.txt", "vctk_vits_filelists.txt"):
        path = os.path.join(corpora_dir, name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                out += [line.rstrip("\n").split("|")[-1].strip() for line in f if "|" in line]
    path = os.path.join(corpora_dir, "cmu_arctic_prompts_a.data")
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            out += [m.group(1) for m in (re.search(r'"(.*)"', line) for line in f) if m]
    return out


def cmd_select_sentences(args) -> None:
    """Sentences for Piper: test ones disjoint from every training text."""
    pool = _corpus_sentences(args.corpora)
    if not pool:
        die(f"no sentences found in {args.corpora}")
    real_texts = set()
    for path in args.real_dirs:
        real_texts |= {_norm(u.text) for u in read_any(path) if u.text}
    seen, sentences = set(), []
    for s in pool:
        n = _norm(s)
        words = n.split()
        if not (args.min_words <= len(words) <= args.max_words) or n in seen or n in real_texts:
            continue
        if not re.fullmatch(r"[A-Z' ]+", n):  # digits etc. would need number normalization
            continue
        seen.add(n)
        sentences.append(s.replace('"', ""))
    random.Random(args.seed).shuffle(sentences)
    need = args.num_test + args.num_train
    if len(sentences) < need:
        die(f"only {len(sentences)} usable sentences in {args.corpora}; need {need}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "synth_test.txt"), "w", encoding="utf-8") as f:
        f.write("".join(s + "\n" for s in sentences[: args.num_test]))
    train = sentences[args.num_test: need]
    groups = max(1, args.groups)
    for g in range(groups):
        with open(os.path.join(args.out, f"synth_train.{g}.txt"), "w", encoding="utf-8") as f:
            f.write("".join(s + "\n" for s in train[g::groups]))
    print(f"{args.num_test} test and {len(train)} training sentences in {args.out}", file=sys.stderr)


def cmd_combine(args) -> None:
    """data/train, data/dev (from the training pool), data/test_real (speakers never
    trained on) and data/test_real_seen (held-out utterances of trained speakers)."""
    from espnet_lowrank.data import Utterance, write_data_dir

    heldout = re.compile(args.heldout_speakers) if args.heldout_speakers else None
    heldout_utt = re.compile(args.heldout_utts) if args.heldout_utts else None
    test: List[Utterance] = []
    seen: List[Utterance] = []
    for path in args.real_test:
        test += read_any(path)
    train: List[Utterance] = []
    for path in args.real_train:
        utts = read_any(path)
        if args.max_per_dir:
            utts = utts[: args.max_per_dir]
        for u in utts:
            spk = u.speaker or u.utt_id
            if heldout is not None and heldout.search(spk):
                test.append(u)
            elif heldout_utt is not None and heldout_utt.search(u.utt_id):
                seen.append(u)
            else:
                train.append(u)
    if args.max_test and len(test) > args.max_test:
        test, seen = test[: args.max_test], seen[: args.max_test]
    test_texts = {_norm(u.text) for u in test + seen if u.text}
    synth_test_texts = set()
    if args.synth_test:
        synth_test_texts = {_norm(u.text) for u in read_any(args.synth_test)}
    for path in args.synth_train:
        train += read_any(path)
    before = len(train)
    train = [u for u in train if u.text and _norm(u.text) not in test_texts | synth_test_texts]
    dropped = before - len(train)
    if not train or not test:
        die(f"empty set: {len(train)} training and {len(test)} held-out utterances")
    ids = [u.utt_id for u in train + test + seen]
    if len(ids) != len(set(ids)):
        die("duplicate utterance ids across the source data dirs")
    order = list(range(len(train)))
    random.Random(args.seed).shuffle(order)
    dev_idx = set(order[: args.num_dev])
    dev = [u for i, u in enumerate(train) if i in dev_idx]
    train = [u for i, u in enumerate(train) if i not in dev_idx]
    sets = [("train", train), ("dev", dev), ("test_real", test)] + ([("test_real_seen", seen)] if seen else [])
    for name, utts in sets:
        write_data_dir(os.path.join(args.out, name), utts)
    print(f"train {len(train)}, dev {len(dev)}, test_real {len(test)}, test_real_seen {len(seen)} utterances "
          f"({dropped} training utterances dropped: same text as a test utterance)", file=sys.stderr)


# ---------------------------------------------------------------- stage 2
def cmd_format(args) -> None:
    import soundfile as sf

    from espnet_lowrank.data import read_data_dir, write_data_dir

    for src in args.dirs:
        out = os.path.join(args.out_root, os.path.basename(os.path.normpath(src)))
        utts = read_data_dir(src, require_text=True)
        write_data_dir(out, utts)
        with open(os.path.join(out, "utt2num_samples"), "w", encoding="utf-8") as f:
            f.writelines(f"{u.utt_id} {sf.info(u.wav_path).frames}\n" for u in utts)


# ---------------------------------------------------------------- stage 4
def cmd_filter(args) -> None:
    import soundfile as sf

    from espnet_lowrank.data import read_data_dir, write_data_dir

    utts = read_data_dir(args.dir)
    keep = [u for u in utts if args.min <= sf.info(u.wav_path).duration <= args.max]
    if not keep:
        die(f"{args.dir}: no utterance between {args.min} and {args.max} s")
    write_data_dir(args.dir, keep)
    for name in ("utt2num_samples",):
        path = os.path.join(args.dir, name)
        if os.path.isfile(path):
            os.remove(path)
    print(f"{args.dir}: kept {len(keep)} of {len(utts)} utterances", file=sys.stderr)


# ---------------------------------------------------------------- stage 5
def cmd_train_bpe(args) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(input=args.text, model_prefix=args.prefix, vocab_size=args.nbpe,
                                   model_type="unigram", character_coverage=1.0,
                                   input_sentence_size=100000000, hard_vocab_limit=False)


# ---------------------------------------------------------------- stage 12
def spread(utts: List, num: int) -> List:
    """``num`` utterances evenly spread over ``utts`` (sorted by id, as compress sorts)."""
    n = min(num, len(utts))
    return [utts[(i * len(utts)) // n] for i in range(n)]


def cmd_calib_split(args) -> None:
    """Spread num_calib utterances over the sorted training set; split into at
    most nj parts at multiples of batch_size, so that every job sees exactly
    the batches a single job would (padding, and so the statistics, are the same)."""
    from espnet_lowrank.data import read_data_dir, write_data_dir

    chosen = spread(read_data_dir(args.train), args.num)
    n = len(chosen)
    write_data_dir(args.out, chosen)
    batches = [chosen[i: i + args.batch_size] for i in range(0, n, args.batch_size)]
    nj = max(1, min(args.nj, len(batches)))
    size, extra = divmod(len(batches), nj)
    start = 0
    split_dir = os.path.join(args.out, f"split{nj}")
    for j in range(nj):
        end = start + size + (1 if j < extra else 0)
        write_data_dir(os.path.join(split_dir, str(j + 1)), [u for b in batches[start:end] for u in b])
        start = end
    print(nj)


def cmd_sweep_configs(args) -> None:
    from espnet_lowrank.config import LowRankConfig

    base = LowRankConfig.from_yaml(args.base).to_dict()
    os.makedirs(args.out, exist_ok=True)
    for theta in args.thetas:
        values = dict(base, theta_attention=float(theta), theta_feed_forward=float(theta))
        LowRankConfig.from_dict(values)
        path = os.path.join(args.out, f"theta{theta}.yaml")
        with open(path, "w", encoding="utf-8") as f:
            yaml.safe_dump(values, f, sort_keys=False)
        print(path)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("check_data")
    s.add_argument("dirs", nargs="+")
    s.add_argument("--require_text", action="store_true")
    s = sub.add_parser("check_family")
    s.add_argument("config")
    s = sub.add_parser("check_lowrank")
    s.add_argument("configs", nargs="+")
    s = sub.add_parser("needs_audio")
    s.add_argument("config")
    s = sub.add_parser("select_sentences")
    s.add_argument("--corpora", required=True)
    s.add_argument("--real_dirs", nargs="*", default=[])
    s.add_argument("--num_train", type=int, required=True)
    s.add_argument("--num_test", type=int, required=True)
    s.add_argument("--groups", type=int, default=4)
    s.add_argument("--min_words", type=int, default=4)
    s.add_argument("--max_words", type=int, default=25)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s = sub.add_parser("combine")
    s.add_argument("--real_train", nargs="*", default=[])
    s.add_argument("--real_test", nargs="*", default=[])
    s.add_argument("--heldout_speakers", default="")
    s.add_argument("--heldout_utts", default="")
    s.add_argument("--synth_train", nargs="*", default=[])
    s.add_argument("--synth_test", default="")
    s.add_argument("--max_per_dir", type=int, default=0)
    s.add_argument("--max_test", type=int, default=0)
    s.add_argument("--num_dev", type=int, default=100)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", required=True)
    s = sub.add_parser("format")
    s.add_argument("dirs", nargs="+")
    s.add_argument("--out_root", required=True)
    s = sub.add_parser("filter")
    s.add_argument("dir")
    s.add_argument("--min", type=float, default=0.1)
    s.add_argument("--max", type=float, default=20.0)
    s = sub.add_parser("train_bpe")
    s.add_argument("text")
    s.add_argument("prefix")
    s.add_argument("nbpe", type=int)
    s = sub.add_parser("calib_split")
    s.add_argument("--train", required=True)
    s.add_argument("--num", type=int, required=True)
    s.add_argument("--batch_size", type=int, required=True)
    s.add_argument("--nj", type=int, default=1)
    s.add_argument("--out", required=True)
    s = sub.add_parser("sweep_configs")
    s.add_argument("--base", required=True)
    s.add_argument("--thetas", nargs="+", required=True)
    s.add_argument("--out", required=True)
    args = p.parse_args(argv)
    globals()[f"cmd_{args.cmd}"](args)


if __name__ == "__main__":
    main()
