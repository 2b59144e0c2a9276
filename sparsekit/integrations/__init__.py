"""Trainer integrations: a recipe's pruning inside someone else's training loop.

- :mod:`sparsekit.integrations.lightning`: ``SparsekitCallback`` for ``lightning.pytorch.Trainer.fit``
  (``pip install 'sparsekit[lightning]'``);
- :mod:`sparsekit.integrations.transformers`: ``SparsekitTrainerCallback`` for ``transformers.Trainer``
  (``pip install 'sparsekit[transformers]'``).

Each module imports its trainer library on import (ImportError naming the extra when it is missing);
this package imports neither.
"""
