# Times the same training steps as `baton-bench step` in PyTorch, one job at
# a time, so the caller can alternate them with its own timings.
# argv[1] (optional): the device, "cpu" or "cuda:N". Prints
# {"torch": version} once, then reads one JSON job per line on stdin, each
# {"kind": "mlp", "input", "width", "layers"} or {"kind": "gpt", "vocab",
# "seq", "dim", "heads", "hidden", "blocks"}, plus "batch", "threads",
# "warmup", "steps", and answers each with {"ms": median ms per step}; exits
# at the end of stdin. On a GPU each timed step is bracketed by
# torch.cuda.synchronize(), and TF32 is off, so PyTorch does f32 math as
# baton does.
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn


class Block(nn.Module):
    """Pre-LN GPT-2 block as baton's transformer_block: x + proj(attn(ln1(x))),
    then x + fc2(gelu(fc1(ln2(x)))); heads are contiguous chunks of q, k, v."""

    def __init__(self, dim, heads, hidden, seq):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.register_buffer("future", torch.ones(seq, seq, dtype=torch.bool).triu(1), persistent=False)

    def attention(self, h):
        b, t, d = h.shape
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in self.qkv(h).split(d, -1))
        scores = (q @ k.transpose(-2, -1)) / math.sqrt(d // self.heads)
        probs = torch.softmax(scores.masked_fill(self.future[:t, :t], float("-inf")), -1)
        return (probs @ v).transpose(1, 2).reshape(b, t, d)

    def forward(self, x):
        x = x + self.proj(self.attention(self.ln1(x)))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class Gpt(nn.Module):
    def __init__(self, job):
        super().__init__()
        vocab, seq, dim = job["vocab"], job["seq"], job["dim"]
        self.tok = nn.Embedding(vocab, dim)
        self.pos = nn.Parameter(torch.randn(seq, dim))
        blocks = [Block(dim, job["heads"], job["hidden"], seq) for _ in range(job["blocks"])]
        self.body = nn.Sequential(*blocks, nn.LayerNorm(dim), nn.Linear(dim, vocab))

    def forward(self, ids):
        return self.body(self.tok(ids) + self.pos)


def mlp(job):
    """The model, its input, target and loss function for an MLP job."""
    layers, width = [], job["input"]
    for i in range(job["layers"]):
        layers.append(nn.Linear(width, job["width"]))
        width = job["width"]
        if i + 1 < job["layers"]:
            layers.append(nn.ReLU())
    x = torch.rand(job["batch"], job["input"]) * 2 - 1
    y = torch.rand(job["batch"], width) * 2 - 1
    return nn.Sequential(*layers), x, y, nn.MSELoss()


def gpt(job):
    """The model, token ids, next-token targets and loss function for a GPT job:
    cross-entropy averaged over every token, as baton's."""
    vocab = job["vocab"]
    ids = torch.randint(vocab, (job["batch"], job["seq"]))
    targets = torch.randint(vocab, (job["batch"], job["seq"]))
    loss = lambda logits, y: F.cross_entropy(logits.reshape(-1, vocab), y.reshape(-1))
    return Gpt(job), ids, targets, loss


def run(job, device):
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    model, x, y, loss_fn = {"mlp": mlp, "gpt": gpt}[job["kind"]](job)
    model, x, y = model.to(device), x.to(device), y.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    times = []
    for i in range(job["warmup"] + job["steps"]):
        sync()
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        sync()
        if i >= job["warmup"]:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


device = torch.device(sys.argv[1] if len(sys.argv) > 1 else "cpu")
if device.type == "cuda":
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
print(json.dumps({"torch": torch.__version__}), flush=True)
for line in iter(sys.stdin.readline, ""):
    if line.strip():
        print(json.dumps({"ms": run(json.loads(line), device)}), flush=True)
