"""Run an ESPnet CLI with the plugin registered; usable as asr.sh's ``--python``:
``python -m espnet_lowrank.launch -m espnet2.bin.asr_inference ARGS...``. Decoding also shows a tqdm bar
over the utterances (the stock CLI has none)."""

import functools
import importlib
import os
import runpy
import sys
from typing import List, Optional

from espnet_lowrank.espnet.import_hook import install
from espnet_lowrank.progress import progress


def _count_utterances(argv: List[str]) -> Optional[int]:
    """Lines of --key_file, else of the first --data_path_and_name_and_type file."""
    for flag in ("--key_file", "--data_path_and_name_and_type"):
        if flag in argv and argv.index(flag) + 1 < len(argv):
            path = argv[argv.index(flag) + 1].split(",")[0]
            if os.path.isfile(path):
                with open(path, encoding="utf-8") as f:
                    return sum(1 for line in f if line.strip())
    return None


def _show_decoding_progress(module, argv: List[str]) -> None:
    bar = progress(total=_count_utterances(argv), desc="decoding", unit="utt")
    call = module.Speech2Text.__call__

    @functools.wraps(call)
    def counted(self, *args, **kwargs):
        result = call(self, *args, **kwargs)
        bar.update(1)
        return result

    module.Speech2Text.__call__ = counted


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "-m":
        sys.exit("usage: python -m espnet_lowrank.launch -m MODULE [ARGS...]")
    module_name, args = argv[1], argv[2:]

    install()
    module = importlib.import_module(module_name) if module_name.startswith("espnet2.bin.") else None
    sys.argv = [module_name] + args
    if module is not None and hasattr(module, "main"):
        if module_name == "espnet2.bin.asr_inference":
            _show_decoding_progress(module, args)
        module.main(args)
    else:
        runpy.run_module(module_name, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
