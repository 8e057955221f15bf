# Fragment: imports shared by every assembled string (see families/moe/fragments/__init__.py).
import math

import torch

BLOCK = 128  # quantisation block: 128x128 for weights, 1x128 (along hidden) for activations
