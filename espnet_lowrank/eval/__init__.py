"""Evaluation shared by the benchmarks (``bench/``) and recipes, each step once:

- ``pool``: the calibration pool, the held-out sets outside it, the dense exp dir;
- ``decode``: an exp dir as deployed (``Speech2Text``), greedy decoding, WER, kept hypotheses;
- ``hyps``: kept hypotheses read back, paired with another row, cut by the loop guard;
- ``int8``: how far dynamic int8 moves an encoder's output;
- ``tables``: markdown cells and tables, the .md / .json / .png a run writes;
- ``plots``: the Pareto, held-out and front figures;
- ``ledger``: bench/ledger.jsonl rows read from committed result files;
- ``e2e``: end-to-end transcription time against the dense model and faster-whisper.
"""
