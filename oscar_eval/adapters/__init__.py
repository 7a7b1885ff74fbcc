"""Adapters that run oscar_core caches inside other harnesses (lm-eval; VLMEvalKit later).

Each adapter imports its harness lazily, so oscar_eval stays importable without them.
"""
