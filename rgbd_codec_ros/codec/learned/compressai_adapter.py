"""The one place that reads CompressAI's private fields.

CompressAI's entropy models keep their rANS coder tables (``_quantized_cdf``, ``_cdf_length``,
``_offset``) and their likelihood function (``_likelihood``) behind underscore names. The codec
needs both: the tables are stored in the weights file and handed to the rANS coder, and the
likelihoods give the training rate and the rate estimates. Reading them here, and only here,
means a CompressAI upgrade that renames them breaks one module, with one test suite to show it.
"""
from __future__ import annotations

from typing import Tuple

import torch

#: names of the coder-table buffers of an EntropyBottleneck / GaussianConditional
TABLE_BUFFERS = ("_quantized_cdf", "_cdf_length", "_offset")


def coder_tables(entropy_model) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(quantized CDFs, CDF lengths, offsets) of a frozen entropy model."""
    return tuple(getattr(entropy_model, name) for name in TABLE_BUFFERS)


def gaussian_likelihood(conditional, values: torch.Tensor, scales: torch.Tensor, means=None) -> torch.Tensor:
    """A GaussianConditional's likelihood of ``values`` (before its lower bound)."""
    return conditional._likelihood(values, scales, means)
