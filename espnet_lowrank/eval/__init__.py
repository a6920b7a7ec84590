"""Evaluation shared by the benchmarks and recipes: real-speech items,
transcribers behind one call, timing in alternating rounds, tables."""
