"""Conventions of the data that tasks hand to backbones, in one place both import (neither imports the
other): special token ids of the speech tokenizers, the shortest-path fill of graph encodings."""

from __future__ import annotations

# Speech tokenizers (gfsa.zoo.tasks.speech_data): padding doubles as CTC's blank.
PAD, BOS, EOS, UNK = 0, 1, 2, 3

# Graph encodings (gfsa.zoo.tasks.graph): shortest-path distance of disconnected pairs (uint8);
# longer paths are clipped to UNREACHABLE - 1.
UNREACHABLE = 255
