#!/usr/bin/env python3
"""Put PyTorch from the libtorch unpack and the test clients from the main
venv on the TorchScript venv's import path (see tests/python/torch-requirements.txt).

Run with the TorchScript venv's Python: stack-torch-venv.py LIBTORCH_SITE BASE_VENV.
Writes one .pth file into that venv, then imports torch to prove it works.
"""

import subprocess
import sys
import sysconfig
from pathlib import Path


def main() -> None:
    libtorch_site, base_venv = (Path(arg).resolve() for arg in sys.argv[1:3])
    if not (libtorch_site / "torch" / "__init__.py").is_file():
        sys.exit(f"no torch package in {libtorch_site}: run scripts/fetch-libtorch.sh")
    base_site = subprocess.run(
        [str(base_venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    # The venv's own packages stay first; addsitedir also runs the base venv's .pth files.
    pth = Path(sysconfig.get_paths()["purelib"]) / "switchyard-stack.pth"
    pth.write_text(f"{libtorch_site}\nimport site; site.addsitedir({base_site!r})\n")
    check = "import torch, tritonclient.grpc, numpy; print('torch', torch.__version__, 'from', torch.__file__)"
    subprocess.run([sys.executable, "-c", check], check=True)


if __name__ == "__main__":
    main()
