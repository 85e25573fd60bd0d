"""Metric3D v2 (ViT backbones): network, variants and checkpoint loading.

Lazy (lazy_loader): the config and the CLI's --help read `variants` without importing torch.
"""

import lazy_loader

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "model": ["Metric3D", "build_metric3d"],
        "variants": ["BACKBONES", "HF_REPO_ID", "VARIANTS", "get_variant"],
    },
)
