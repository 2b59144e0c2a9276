"""Other pruning toolkits' words for what a sparsekit recipe writes: their keys (SparseML's ``final_sparsity``,
NNI's ``op_types``, Torch-Pruning's ``ignored_layers``, ...), method names (``L1NormPruner``,
``GlobalMagnitudePruningModifier``) and choices (``scope: local``, ``TaylorImportance``), each with the sparsekit
equivalent. Data only: :mod:`sparsekit.recipe` turns a recipe error on one of these words into "X is <toolkit>'s
word: write Y", and :mod:`sparsekit.recipe_docs` lists them in docs/recipe.md."""

from __future__ import annotations

# Keys other pruning toolkits use for what a sparsekit key does: ``key -> (whose key it is, where sparsekit takes it in
# a pruning entry, a note)``. A user arriving with a SparseML, NNI, Distiller, torch.nn.utils.prune or Torch-Pruning
# recipe writes these first, and a spelling guess sent some to the wrong key (`ignored_layers`: "did you mean
# 'layers'?", where `ignore` is meant). The path may depend on the method: SIZE is the key that sizes the entry's work.
SIZE = "<size>"
PER_LAYER = "<per-layer>"  # the key that takes one value per layer: layer_sparsity, or layer_ratio (structured)
LAYER_NAMES = "module names from named_modules(), like fc1, not parameter names like fc1.weight"
FOREIGN_KEYS: dict[str, tuple[str, str, str]] = {
    "final_sparsity": ("SparseML / Distiller", SIZE, ""),
    "amount": ("torch.nn.utils.prune", SIZE, ""),
    "pruning_ratio": ("Torch-Pruning", SIZE, ""),
    "ch_sparsity": ("Torch-Pruning", SIZE, ""),
    "sparsity_per_layer": ("NNI", SIZE, "with scope: layer"),
    "total_sparsity": ("NNI", SIZE, "with scope: global"),
    "initial_sparsity": ("Distiller", "schedule.init_sparsity", ""),
    "starting_epoch": ("Distiller", "schedule.start_epoch", ""),
    "ending_epoch": ("Distiller", "schedule.end_epoch", ""),
    "update_frequency": ("SparseML", "schedule.every", "in epochs; 0.25 updates four times an epoch"),
    "frequency": ("Distiller", "schedule.every", "in epochs"),
    "iterative_steps": ("Torch-Pruning", "steps", ""),
    "params": ("SparseML", "layers.include", f"{LAYER_NAMES}; __ALL_PRUNABLE__ is the default: leave it out"),
    "weights": ("Distiller", "layers.include", LAYER_NAMES),
    "op_names": ("NNI", "layers.include", LAYER_NAMES),
    "op_types": ("NNI", "layers.types", "e.g. [Linear, Conv2d]"),
    "exclude_op_names": ("NNI", "layers.exclude", LAYER_NAMES),
    "ignored_layers": ("Torch-Pruning", "layers.exclude", LAYER_NAMES),
    "global_pruning": ("Torch-Pruning", "scope", "global or layer"),
    "pruning_ratio_dict": ("Torch-Pruning", PER_LAYER, "{layer: fraction}, keyed by module name"),
    "max_sparsity_per_layer": ("NNI", "max_layer_sparsity", ""),
    # training settings, as Keras, Lightning and Hugging Face Trainer name them
    "learning_rate": ("Keras / Hugging Face", "lr", ""),
    "max_epochs": ("Lightning", "epochs", ""),
    "num_train_epochs": ("Hugging Face", "epochs", ""),
    "per_device_train_batch_size": ("Hugging Face", "batch_size", ""),
    # the lists that hold other toolkits' pruning steps, at a recipe's top
    "modifiers": ("SparseML", "pruning", "a list of entries, each {method: ..., ...}"),
    "config_list": ("NNI", "pruning", "a list of entries, each {method: ..., ...}"),
    "pruners": ("Distiller", "pruning", "a list of entries, each {method: ..., ...}; schedule: replaces policies"),
    "policies": ("Distiller", "pruning", "each entry's schedule: {start_epoch, end_epoch, every}"),
}
"""Keys of other pruning toolkits and their sparsekit equivalents; see :func:`sparsekit.recipe.foreign_home`."""

# Where a method takes what FOREIGN_KEYS' paths name, where its key differs (structured removes channels).
FOREIGN_PATHS: dict[tuple[str, str], str] = {
    ("magnitude", SIZE): "sparsity",
    ("gradient", SIZE): "sparsity",
    ("l1", SIZE): "target",
    ("structured", SIZE): "ratio",
    ("magnitude", PER_LAYER): "layer_sparsity",
    ("gradient", PER_LAYER): "layer_sparsity",
    ("structured", PER_LAYER): "layer_ratio",
    ("structured", "layers.exclude"): "ignore",  # Torch-Pruning's ignored_layers: outputs never pruned
    ("magnitude", "steps"): "schedule.every",
    ("gradient", "steps"): "schedule.every",
}


# Method names of other pruning toolkits, as :func:`sparsekit.recipe.foreign_method` normalizes them: ``-> (whose,
# the sparsekit method that does that work, how to set it up)``. A spelling guess sent `l1_unstructured` and
# `global_unstructured` (torch.nn.utils.prune's magnitude pruning) to structured, the one method that makes no
# unstructured zeros.
FOREIGN_METHODS: dict[str, tuple[str, str, str]] = {
    "l1unstructured": ("torch.nn.utils.prune", "magnitude", "it ranks weights by |w|"),
    "globalunstructured": ("torch.nn.utils.prune", "magnitude", "with scope: global"),
    "unstructured": ("torch.nn.utils.prune", "magnitude", "it ranks weights by |w|"),
    "lnstructured": ("torch.nn.utils.prune", "structured", "with importance: l1 or l2; it removes the channels"),
    "globalmagnitude": ("SparseML", "magnitude", "with scope: global"),
    "gm": ("SparseML", "magnitude", "gradual: a schedule with start_epoch < end_epoch"),
    "gmp": ("SparseML", "magnitude", "gradual: a schedule with start_epoch < end_epoch"),
    "level": ("NNI", "magnitude", "with scope: layer"),
    "agp": ("NNI", "magnitude", "AGP: schedule: {start_epoch, end_epoch} (curve: cubic is the default)"),
    "automatedgradual": (
        "Distiller",
        "magnitude",
        "AGP: schedule: {start_epoch, end_epoch} (curve: cubic is the default)",
    ),
    "l1norm": ("NNI", "structured", "with importance: l1"),
    "l2norm": ("NNI", "structured", "with importance: l2"),
    "slim": ("NNI", "structured", "with importance: bn_scale"),
    "taylor": (
        "NNI / Torch-Pruning",
        "gradient",
        "with criterion: taylor; whole channels: structured, importance: taylor",
    ),
    "taylorfoweight": ("NNI", "structured", "with importance: taylor"),
    "movement": ("SparseML / NNI", "gradient", "with criterion: movement"),
    "lasso": ("", "l1", "with group: row or channel for group lasso"),
    "grouplasso": ("", "l1", "with group: row or channel"),
    "channel": ("", "structured", "it removes whole output channels"),
    "filter": ("", "structured", "it removes whole output channels (filters)"),
}
"""Other toolkits' pruning-method names and the sparsekit method that does their work; see
:func:`sparsekit.recipe.foreign_method`."""


# Values other toolkits give a setting that sparsekit spells its own way: ``value (lower case, letters and digits
# only) -> (whose word it is, the sparsekit choice)``; used only where that choice is one the field takes.
FOREIGN_CHOICES: dict[str, tuple[str, str]] = {
    "local": ("torch.nn.utils.prune / NNI", "layer"),  # each layer pruned on its own, as opposed to global
    "cosineannealinglr": ("torch.optim", "cosine"),
    "cosineannealing": ("torch.optim", "cosine"),
    "steplr": ("torch.optim", "step"),
    "constantlr": ("torch.optim", "constant"),
    "magnitudeimportance": ("Torch-Pruning", "l2"),  # its default p=2
    "groupmagnitudeimportance": ("Torch-Pruning", "l2"),
    "groupnormimportance": ("Torch-Pruning", "l2"),
    "taylorimportance": ("Torch-Pruning", "taylor"),
    "grouptaylorimportance": ("Torch-Pruning", "taylor"),
    "bnscaleimportance": ("Torch-Pruning", "bn_scale"),
    "l1norm": ("NNI", "l1"),
    "l2norm": ("NNI", "l2"),
    "l1normpruner": ("NNI", "l1"),
    "l2normpruner": ("NNI", "l2"),
    "taylorfo": ("NNI", "taylor"),
    "taylorpruner": ("NNI", "taylor"),
    "slim": ("NNI", "bn_scale"),
    "slimpruner": ("NNI", "bn_scale"),
}
