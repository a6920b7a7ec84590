#!/usr/bin/env python3
"""Install (or remove) the import hook that registers the plugin with ESPnet whenever
``espnet2.tasks.asr`` is imported, so the stock CLIs accept ``encoder: lowrank``: one ``.pth``
line in site-packages that imports only ``espnet_lowrank.espnet.import_hook`` (no ESPnet).
"""

import argparse
import os
import sysconfig
from typing import List, Optional

from espnet_lowrank.utils import atomic_write_text

PTH_NAME = "espnet_lowrank_hook.pth"
PTH_LINE = "import espnet_lowrank.espnet.import_hook as _h; _h.install()\n"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--uninstall", action="store_true", help="remove the hook")
    return parser


def main(cmd: Optional[List[str]] = None) -> None:
    args = get_parser().parse_args(cmd)
    path = os.path.join(sysconfig.get_paths()["purelib"], PTH_NAME)
    if args.uninstall:
        if os.path.exists(path):
            os.remove(path)
        print(f"removed {path}")
        return
    atomic_write_text(path, PTH_LINE)
    print(f"installed {path}")


if __name__ == "__main__":
    main()
