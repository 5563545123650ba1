# Times the same training steps as `baton bench step` in PyTorch.
# argv[1]: JSON list of jobs {"input", "width", "layers", "batch", "threads",
# "warmup", "steps"}; prints {"torch": version, "ms": [median ms per job]}.
import json
import statistics
import sys
import time

import torch


def run(job):
    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    layers, width = [], job["input"]
    for i in range(job["layers"]):
        layers.append(torch.nn.Linear(width, job["width"]))
        width = job["width"]
        if i + 1 < job["layers"]:
            layers.append(torch.nn.ReLU())
    model = torch.nn.Sequential(*layers)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    x = torch.rand(job["batch"], job["input"]) * 2 - 1
    y = torch.rand(job["batch"], width) * 2 - 1
    times = []
    for i in range(job["warmup"] + job["steps"]):
        start = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        if i >= job["warmup"]:
            times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


jobs = json.loads(sys.argv[1])
print(json.dumps({"torch": torch.__version__, "ms": [run(job) for job in jobs]}))
