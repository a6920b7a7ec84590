"""Sentences spoken by espeak-ng's British English voices, as a Kaldi-style data dir.

The one offline source of British phonology here (Piper's voice is US English):
sentence i is read by voice i mod 5 (en-gb, RP, Scotland, Lancaster, West Midlands).

    python bench/espeak_british.py --texts bench/results/piper_vctk/sentences.txt --output_dir DIR
"""
import argparse
import os
import subprocess
import tempfile

from espnet_lowrank.synthesize import (Utterance, atomic_output_dir, basic_normalize, load_audio,
                                       write_data_dir, write_wav16)

VOICES = ["en-gb", "en-gb-x-rp", "en-gb-scotland", "en-gb-x-gbclan", "en-gb-x-gbcwmd"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--texts", required=True, help="one sentence per line")
    p.add_argument("--output_dir", required=True)
    p.add_argument("--prefix", default="espeak_gb")
    args = p.parse_args()
    texts = [line.strip() for line in open(args.texts) if line.strip() and not line.startswith("#")]
    final = os.path.abspath(args.output_dir)
    utts = []
    with tempfile.TemporaryDirectory() as raw, atomic_output_dir(final, overwrite=False) as tmp:
        os.makedirs(os.path.join(tmp, "wav"))
        for i, text in enumerate(texts):
            src = os.path.join(raw, f"{i}.wav")
            subprocess.run(["espeak-ng", "-v", VOICES[i % len(VOICES)], "-s", "160", "-w", src, text], check=True)
            uid = f"{args.prefix}_{i:04d}"
            write_wav16(os.path.join(tmp, "wav", uid + ".wav"), load_audio(src, 16000), 16000)
            utts.append(Utterance(uid, os.path.join(final, "wav", uid + ".wav"), basic_normalize(text), args.prefix))
        write_data_dir(tmp, utts)
    print(f"wrote {len(utts)} utterances to {final}")


if __name__ == "__main__":
    main()
