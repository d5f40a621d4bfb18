"""Quantization algorithms: they choose integer codes and scales; wavq.formats packs them.

recipe.py     Recipe (the settings) and the method syntax ("awq+clip+gptq")      no torch
rtn.py        round-to-nearest through the formats codecs
stats.py      input statistics (X^T X, mean |x|) accumulated with add_batch
gptq.py       GPTQ error compensation
awq.py        activation-aware scale search and folding
clip.py       per-group range clipping search
mixed.py      bits-per-weight measure and mixed-precision bit allocation
sequential.py block-sequential calibration engine (architecture-free)
pipeline.py   quantize_tensors(): the entry point the exporter calls

Importing this package imports nothing heavy; torch loads with the modules that need it.
"""
