"""Peak memory the allocator hands out while a function runs (CPU or CUDA), above what was live before.

CUDA: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus the bytes allocated
before the call. CPU has no peak counter, so the call runs under ``torch.profiler`` with
``profile_memory=True``: every allocation and free of torch's CPU allocator is an event with its byte
count (+/-) and timestamp; their running sum in time order is the memory the call holds at each
moment, and its maximum is the peak. It counts what torch allocates (tensors, autograd's saved
tensors, inductor's buffers), not the Python heap or allocator caching: the same quantity as
max_memory_allocated on a GPU. Frees of tensors allocated before the call can make the sum dip below
zero; the peak is still measured from the start.
"""
from __future__ import annotations

import torch


def peak_bytes(fn, device: str = "cpu") -> int:
    """Peak bytes held by allocations made during ``fn()`` (relative to the start of the call)."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU]
    events.sort(key=lambda e: e.start_ns())  # stable: same-timestamp events keep their recorded order
    held = peak = 0
    for e in events:
        held += e.nbytes()
        peak = max(peak, held)
    return peak


def check() -> None:
    """The method on a known pattern: 1 MB + 2 MB live together, then freed, then 1 MB: peak 3 MB."""
    def pattern():
        a = torch.empty(1 << 20, dtype=torch.uint8)
        b = torch.empty(2 << 20, dtype=torch.uint8)
        del a, b
        return torch.empty(1 << 20, dtype=torch.uint8)

    got = peak_bytes(pattern)
    assert got == 3 << 20, got


if __name__ == "__main__":
    check()
    print("cpu_memory: peak of a known allocation pattern measured exactly (3 MiB)")
