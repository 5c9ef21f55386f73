"""Model presets: plain data, no TensorFlow.

Each entry maps a model name to the builder that makes it (`"module.function"`
inside `kqreg.models`), a one-line description, and the keyword arguments the
builder gets. `kqreg.models.build(name, ..., **overrides)` replaces any of
these kwargs; only the keys listed here may be overridden.
"""

MODELS: dict[str, dict] = {
    "mlp": {
        "builder": "small.mlp",
        "description": "Flatten -> Dense+ReLU x len(hidden) -> Dense head",
        "kwargs": {"hidden": (256, 128)},
    },
    "cnn": {
        "builder": "small.cnn",
        "description": "VGG-style [Conv3x3-BN-ReLU]x2 + MaxPool stages, GAP",
        "kwargs": {
            "widths": (32, 64, 128),
            "convs_per_stage": 2,
            "dropout": 0.0,
            "batch_norm": True,
            "bn_momentum": 0.8,
        },
    },
    "resnet20": {
        "builder": "resnet_cifar.resnet",
        "description": "CIFAR ResNet-20 (He et al. 2016), 1x1 projections",
        "kwargs": {"depth": 20, "base_width": 16, "bn_momentum": 0.8},
    },
    "mobilenetv2": {
        "builder": "applications.mobilenetv2",
        "description": "tf_keras.applications.MobileNetV2, alpha=0.35, "
                       "BN momentum 0.9",
        "kwargs": {"alpha": 0.35, "bn_momentum": 0.9},
    },
    "resnet50": {
        "builder": "applications.resnet50",
        "description": "tf_keras.applications.ResNet50, BN momentum 0.8",
        "kwargs": {"bn_momentum": 0.8},
    },
    "cnn1d": {
        "builder": "sequence.cnn1d",
        "description": "image rows as a sequence: [Conv1D-ReLU, MaxPool1D] "
                       "stages, GAP",
        "kwargs": {"widths": (32, 64), "kernel_size": 5},
    },
    "lstm": {
        "builder": "sequence.rnn",
        "description": "image rows as a sequence: LSTM (unrolled), last state",
        "kwargs": {"cell": "lstm", "units": 64, "unroll": True},
    },
    "gru": {
        "builder": "sequence.rnn",
        "description": "image rows as a sequence: GRU (unrolled), last state",
        "kwargs": {"cell": "gru", "units": 64, "unroll": True},
    },
    "vit": {
        "builder": "sequence.vit",
        "description": "small ViT: 4x4 patches, conv position encoding, "
                       "2 pre-norm blocks of dim 64",
        "kwargs": {"patch_size": 4, "dim": 64, "depth": 2, "heads": 4,
                   "mlp_ratio": 2},
    },
}
