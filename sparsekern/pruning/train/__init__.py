"""The training loop behind ``sparsekern prune`` (``loop.run_prune``) and the pieces it is built from:
``config`` (``PruneConfig``), ``distributed`` (process group, device), ``evaluation`` (accuracy, BN
recalibration, autocast), ``run_dir`` (config, logs, summary, resume checks), ``health`` (divergence
checks), ``lr_schedule``, ``checkpoint``, ``runlock``, ``batches``, ``ema``, ``batchnorm`` and ``progress``."""
