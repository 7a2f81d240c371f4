"""One rank of a ``--fsdp`` training run, started by tests/test_fsdp.py under torchrun.

argv[1]: JSON ``{"runs": [PruneConfig fields + optional "kill_after_epoch"]}``. Prints
``ROW <rank> <method> <fsdp> <json row>`` per epoch and ``SUMMARY <method> <fsdp> <json>`` (rank 0).
``kill_after_epoch``: the process ends abruptly (``os._exit``, no cleanup) once that epoch's
checkpoint is written, as a killed run does. Every rank first waits for the others to print their
row: the first rank to exit makes torchrun kill the rest, and rank 0 still writes the logs then.
"""
import json
import os
import sys

import torch
import torch.distributed as dist

from sparsekern.pruning.train.loop import PruneConfig, run_prune

KILLED = 17


def _emit(line: str) -> None:
    """One write(2) per line: the ranks share stdout, and a pipe keeps writes under PIPE_BUF whole,
    where print's separate text and newline writes could interleave with another rank's."""
    os.write(sys.stdout.fileno(), (line + "\n").encode())


def main() -> None:
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    # One group for all runs: run_prune then uses it (a group re-created under torchrun would wait
    # on the rendezvous keys of the first one).
    dist.init_process_group("gloo")
    for run in json.loads(sys.argv[1])["runs"]:
        kill = run.pop("kill_after_epoch", None)
        tag = f"{run['method']} {int(run.get('fsdp', False))}"

        def on_epoch_end(epoch, row, tag=tag, kill=kill):
            _emit(f"ROW {rank} {tag} {json.dumps(row)}")
            if epoch == kill:
                dist.barrier()
                os._exit(KILLED)

        summary = run_prune(PruneConfig(progress=False, **run), on_epoch_end=on_epoch_end)
        if rank == 0:
            _emit(f"SUMMARY {tag} {json.dumps(summary)}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
