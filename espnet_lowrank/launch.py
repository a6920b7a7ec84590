"""Run any module with the plugin registered; usable as asr.sh's ``--python``.

    python -m espnet_lowrank.launch -m espnet2.bin.asr_inference ARGS...
"""

import runpy
import sys


def main(argv=None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) < 2 or argv[0] != "-m":
        sys.exit("usage: python -m espnet_lowrank.launch -m MODULE [ARGS...]")
    module = argv[1]
    from espnet_lowrank.espnet.import_hook import install

    install()
    sys.argv = [module] + argv[2:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
