"""Training data for the pruning pipeline: the small in-memory sets (``datasets``) and image folders
read through torchvision (``vision``). ``load_dataset(name_or_path) -> (train, test, info)``."""
from sparsekern.data.datasets import load_dataset

__all__ = ["load_dataset"]
