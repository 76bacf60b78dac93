"""Two-process DDP check (gloo, CPU): a torch.nn model and its poolops-converted
copy train side by side; their gradients must match on every rank."""
import os
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def worker(rank, world, out_dir, port):
    import poolops.nn as pnn

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    base = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(3, 2, 1),
                               torch.nn.AvgPool2d(2), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 3))
    converted = pnn.convert(base)
    ddp_t = torch.nn.parallel.DistributedDataParallel(base)
    ddp_p = torch.nn.parallel.DistributedDataParallel(converted)
    torch.manual_seed(1 + rank)  # each rank its own batch
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 3, (4,))
    for model in (ddp_t, ddp_p):
        torch.nn.functional.cross_entropy(model(x), y).backward()
    for a, b in zip(base.parameters(), converted.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-5, atol=1e-6)
    with open(os.path.join(out_dir, f"rank{rank}.ok"), "w") as f:
        f.write("ok")
    dist.barrier()  # neither rank tears gloo down while the other still talks to it
    del ddp_t, ddp_p
    dist.destroy_process_group()
    # Leave without the interpreter's teardown: now and then a joinable C++ thread
    # (gloo / c10d) is destroyed there and aborts the process after the checks passed.
    os._exit(0)


if __name__ == "__main__":
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(2, sys.argv[1], port), nprocs=2, join=True)
