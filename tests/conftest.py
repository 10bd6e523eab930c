"""Suite-wide settings: tiny models run fastest on one thread (on a busy 2-core machine a tiny
matmul took 14 ms with two threads and 7 us with one), and the suite is full of tiny models."""

import torch

torch.set_num_threads(1)
