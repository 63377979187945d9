"""The option schema of the learned backend, in a module of its own: reading it (the nodes
declare their typed parameters from it) must not import torch, which the backend needs."""
from __future__ import annotations

from typing import Tuple

from ..base import HARD_MAX_PIXELS, LEARNED_DEFAULT_MAX_PIXELS, OptionSpec

#: bounds of ``quality``: QUALITY_MIN of model.py (extrapolated below the lowest trained point)
#: up to the highest trained index of the model presets (each has 4 trained qualities). The
#: backend checks a value against its own model's range when it is set.
QUALITY_RANGE = (-1.0, 3.0)
#: CPU threads a backend may ask torch for (torch's setting is process-wide)
MAX_THREADS = 64
RUNTIMES = ("auto", "torch", "onnxruntime")
DEVICES = ("auto", "cpu", "cuda")

#: ``live``: a running backend takes it (``configure``); the others are constructor options (a
#: node that can make a new backend in the background, the encoder, still changes them live).
#: weights / model_path: '' = not given (the shipped weights; no extra search path).
OPTION_SCHEMA: Tuple[OptionSpec, ...] = (
    OptionSpec("weights", str, "",
               "Weights file the encoder codes with (a path, or a name in the package's models/ folder such as "
               "'lite'); '' = the shipped default", live=False),
    OptionSpec("quality", float, 1.0,
               "Coding quality: a trained index 0..Q-1 of the model, fractions in steps of 1/256 between them, "
               "down to -1 below the lowest (the model's own range is checked when set). Under rate control "
               "(target_kbps > 0) the controller chooses it per frame", range=QUALITY_RANGE),
    OptionSpec("device", str, "auto", "Where the model runs: auto (cuda if available), cpu, cuda",
               choices=DEVICES, live=False, decode=True),
    OptionSpec("threads", int, 0, "CPU threads for torch (process-wide); 0 = leave torch's setting",
               range=(0, MAX_THREADS), live=False, decode=True),
    OptionSpec("model_path", str, "",
               "More weights a decoder may be asked for: files or folders separated by ':'",
               live=False, encode=False, decode=True),
    OptionSpec("pixel_exact", bool, True,
               "Decoded pixels bit-identical whatever the thread setting (synthesis on one CPU thread); false: "
               "faster multi-threaded synthesis whose last bit may differ between machines",
               encode=False, decode=True),
    OptionSpec("max_pixels", int, LEARNED_DEFAULT_MAX_PIXELS,
               "Largest frame (width x height) a payload may declare to be decoded",
               range=(1, HARD_MAX_PIXELS), encode=False, decode=True),
    OptionSpec("runtime", str, "auto",
               "What runs the float transforms: auto (onnxruntime for weights files on the CPU where it is "
               "installed and agrees with torch, else torch), torch, onnxruntime", choices=RUNTIMES, decode=True),
)
